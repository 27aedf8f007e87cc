// Property tests: random command sequences run against the pool and against
// the in-memory model of dm-thin (test/_helpers/model.ts); every byte read
// back, usage() and the data blocks in use must agree after every command,
// and at every close thin_check must pass, thin_dump must equal our dump and
// the dump must match the model (times, snap_time, transaction ids, sharing).
//
// Reproduce a failure with the seed (and path) fast-check prints:
//   THINFUSE_FC_SEED=123 THINFUSE_FC_PATH="4:2:1" npx ava test/pool-property.test.ts
// THINFUSE_FC_RUNS overrides the number of runs.

import test from 'ava';
import fc from 'fast-check';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { DevId } from '../src/base/units.js';
import { defaultConfig } from '../src/pool/config.js';
import { Pool, type PoolOpenOptions } from '../src/pool/pool.js';
import { pattern, ThinModel } from './_helpers/model.js';
import {
  assertSameBytes, checkAccounting, checkContents, checkMetadataVsModel, JitterBacking, KiB, makePool, MiB, oracleVsModel, tempDir,
} from './_helpers/pool.js';

const B = 64 * KiB;
const DATA_SIZE = 16 * MiB;
const METADATA_SIZE = 8 * MiB;
const MAX_DEVICES = 5;
/** Device sizes: whole blocks, and sizes whose last block is partial. */
const SIZES = [2 * MiB, MiB, 2 * MiB - 12 * KiB, 640 * KiB + 512, 33 * KiB];

function params<T>(defaultRuns: number): fc.Parameters<T> {
  const p: fc.Parameters<T> = { numRuns: Number(process.env['THINFUSE_FC_RUNS'] ?? defaultRuns) };
  if (process.env['THINFUSE_FC_SEED']) p.seed = Number(process.env['THINFUSE_FC_SEED']);
  if (process.env['THINFUSE_FC_PATH']) p.path = process.env['THINFUSE_FC_PATH'];
  return p;
}

const devId = (n: number) => n as DevId;

//------------------------------------------------------------------------------
// byte ranges, resolved against the device size when the command runs

type Shape = 'aligned' | 'partial' | 'span' | 'tiny' | 'tail' | 'all';
interface RangeSpec {
  shape: Shape;
  pos: number;
  a: number;
  b: number;
  n: number;
}

const rangeArb: fc.Arbitrary<RangeSpec> = fc.record({
  shape: fc.constantFrom<Shape>('aligned', 'partial', 'span', 'tiny', 'tail', 'all'),
  pos: fc.nat(),
  a: fc.nat({ max: B - 1 }),
  b: fc.nat({ max: 2 * B }),
  n: fc.integer({ min: 1, max: 4 }),
});

function resolveRange(r: RangeSpec, size: number): { offset: number; length: number } {
  const nBlocks = Math.ceil(size / B);
  const vb = r.pos % nBlocks;
  const clamp = (offset: number, length: number) => {
    offset = Math.min(offset, size - 1);
    return { offset, length: Math.max(1, Math.min(length, size - offset)) };
  };
  switch (r.shape) {
    case 'aligned':
      return clamp(vb * B, r.n * B);
    case 'partial': {
      // Inside one block.
      const off = vb * B + r.a;
      return clamp(off, 1 + (r.b % (B - r.a)));
    }
    case 'span':
      // Starts inside a block, crosses at least one boundary.
      return clamp(vb * B + r.a, (r.n - 1) * B + (B - r.a) + 1 + (r.b % B));
    case 'tiny':
      return clamp(vb * B + r.a, 1 + (r.b % 512));
    case 'tail': {
      const len = Math.min(size, 1 + r.b);
      return { offset: size - len, length: len };
    }
    case 'all':
      return { offset: 0, length: size };
  }
}

//------------------------------------------------------------------------------
// commands

type Cmd =
  | { k: 'create'; size: number; raw: boolean; id: number }
  | { k: 'snap'; dev: number; raw: boolean; id: number; size: number | null }
  | { k: 'delete'; dev: number; raw: boolean }
  | { k: 'write'; dev: number; range: RangeSpec; seed: number }
  | { k: 'discard'; dev: number; range: RangeSpec }
  | { k: 'read'; dev: number; range: RangeSpec }
  | { k: 'readAll' }
  | { k: 'commit' }
  | { k: 'resizeData'; add: number }
  | { k: 'resizeMetadata' }
  | { k: 'reopen' }
  | { k: 'setTransaction'; step: number }
  | { k: 'deactivate'; dev: number }
  | { k: 'activate'; dev: number; size: number };

const sizeArb = fc.nat({ max: SIZES.length - 1 });
const cmdArb: fc.Arbitrary<Cmd> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ k: fc.constant('create' as const), size: sizeArb, raw: fc.boolean(), id: fc.nat({ max: 15 }) }) },
  {
    weight: 4,
    arbitrary: fc.record({
      k: fc.constant('snap' as const), dev: fc.nat(), raw: fc.boolean(), id: fc.nat({ max: 15 }),
      size: fc.option(sizeArb, { nil: null, freq: 3 }),
    }),
  },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('delete' as const), dev: fc.nat(), raw: fc.boolean() }) },
  { weight: 12, arbitrary: fc.record({ k: fc.constant('write' as const), dev: fc.nat(), range: rangeArb, seed: fc.nat() }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('discard' as const), dev: fc.nat(), range: rangeArb }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('read' as const), dev: fc.nat(), range: rangeArb }) },
  { weight: 1, arbitrary: fc.constant({ k: 'readAll' as const }) },
  { weight: 2, arbitrary: fc.constant({ k: 'commit' as const }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('resizeData' as const), add: fc.integer({ min: 1, max: 16 }) }) },
  { weight: 1, arbitrary: fc.constant({ k: 'resizeMetadata' as const }) },
  { weight: 1, arbitrary: fc.constant({ k: 'reopen' as const }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('setTransaction' as const), step: fc.integer({ min: 1, max: 1000 }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('deactivate' as const), dev: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('activate' as const), dev: fc.nat(), size: sizeArb }) },
);

interface World {
  dir: string;
  pool: Pool;
  model: ThinModel;
  names: number;
  opts: PoolOpenOptions;
}

function pick<T>(xs: T[], sel: number): T | undefined {
  return xs.length === 0 ? undefined : xs[sel % xs.length];
}

function freeIdFrom(model: ThinModel, start: number): number {
  for (let i = 0; ; i++) {
    const id = (start + i) % 16;
    if (!model.devices.has(id)) return id;
  }
}

async function runCmd(w: World, c: Cmd): Promise<void> {
  const { model } = w;
  const ids = model.ids();
  const named = ids.filter((id) => model.dev(id).name !== undefined);
  const unnamed = ids.filter((id) => model.dev(id).name === undefined);
  const newName = () => `dev${w.names++}`;
  switch (c.k) {
    case 'create': {
      if (ids.length >= MAX_DEVICES) return;
      const size = SIZES[c.size]!;
      const name = newName();
      if (c.raw) {
        const id = freeIdFrom(model, c.id);
        await w.pool.message(`create_thin ${id}`);
        model.createThin(id, size);
        await w.pool.activate(name, devId(id), size);
        model.dev(id).name = name;
      } else {
        const d = await w.pool.createDevice(name, size);
        assert.equal(d.devId, model.lowestFreeId(), 'createDevice picks the lowest free id');
        model.createThin(d.devId, size, name);
      }
      return;
    }
    case 'snap': {
      const origin = pick(ids, c.dev);
      if (origin === undefined || ids.length >= MAX_DEVICES) return;
      const o = model.dev(origin);
      const name = newName();
      const size = c.size === null ? o.size : SIZES[c.size]!;
      if (c.raw || o.name === undefined) {
        const id = freeIdFrom(model, c.id);
        await w.pool.message(`create_snap ${id} ${origin}`);
        model.createSnap(id, origin, size);
        await w.pool.activate(name, devId(id), size);
        model.dev(id).name = name;
      } else {
        const d = await w.pool.snapshot(o.name, name, c.size === null ? undefined : size);
        assert.equal(d.devId, model.lowestFreeId(), 'snapshot picks the lowest free id');
        model.createSnap(d.devId, origin, size, name);
      }
      return;
    }
    case 'delete': {
      const id = pick(ids, c.dev);
      if (id === undefined) return;
      const name = model.dev(id).name;
      if (c.raw || name === undefined) await w.pool.message(`delete ${id}`);
      else await w.pool.remove(name);
      model.delete(id);
      return;
    }
    case 'write': {
      const id = pick(ids, c.dev);
      if (id === undefined) return;
      const d = model.dev(id);
      const { offset, length } = resolveRange(c.range, d.size);
      const data = pattern(c.seed, length);
      await w.pool.write(devId(id), data, offset, d.size);
      model.write(id, offset, data);
      return;
    }
    case 'discard': {
      const id = pick(ids, c.dev);
      if (id === undefined) return;
      const d = model.dev(id);
      const { offset, length } = resolveRange(c.range, d.size);
      const n = await w.pool.discard(devId(id), offset, length, d.size);
      assert.equal(n, model.discard(id, offset, length), `discard ${offset}+${length} unmapped count`);
      return;
    }
    case 'read': {
      const id = pick(ids, c.dev);
      if (id === undefined) return;
      const d = model.dev(id);
      const { offset, length } = resolveRange(c.range, d.size);
      const buf = Buffer.alloc(length);
      await w.pool.read(devId(id), buf, offset, d.size);
      assertSameBytes(buf, model.read(id, offset, length), `read of device ${id} at ${offset}+${length}`);
      return;
    }
    case 'readAll':
      await checkContents(w.pool, model);
      return;
    case 'commit':
      await w.pool.commit();
      return;
    case 'resizeData': {
      const nr = model.nrDataBlocks + c.add;
      await w.pool.resizeData(nr * B);
      model.resizeData(nr);
      return;
    }
    case 'resizeMetadata':
      await w.pool.resizeMetadata(w.pool.md.file.size() + MiB);
      return;
    case 'reopen':
      await w.pool.close();
      await checkMetadataVsModel(w.dir, model);
      w.pool = await Pool.open(w.dir, w.opts);
      return;
    case 'setTransaction': {
      const next = model.transaction + BigInt(c.step);
      await w.pool.message(`set_transaction_id ${model.transaction} ${next}`);
      model.setTransactionId(model.transaction, next);
      return;
    }
    case 'deactivate': {
      const id = pick(named, c.dev);
      if (id === undefined) return;
      await w.pool.deactivate(model.dev(id).name!);
      model.dev(id).name = undefined;
      return;
    }
    case 'activate': {
      const id = pick(unnamed, c.dev);
      if (id === undefined) return;
      const name = newName();
      const size = SIZES[c.size]!;
      await w.pool.activate(name, devId(id), size);
      model.dev(id).name = name;
      model.dev(id).size = size;
      return;
    }
  }
}

test('random command sequences match the model, thin_check and thin_dump', async (t) => {
  const base = tempDir(t);
  let runs = 0;
  let commands = 0;
  const started = performance.now();
  await fc.assert(
    fc.asyncProperty(fc.array(cmdArb, { minLength: 1, maxLength: 40, size: 'max' }), fc.boolean(), async (cmds, jitter) => {
      runs++;
      const dir = mkdtempSync(join(base, 'run-'));
      const opts: PoolOpenOptions = { oneShot: true };
      if (jitter) opts.wrap = (f, which) => (which === 'data' ? new JitterBacking(f, cmds.length) : f);
      const pool = await Pool.create(dir, { dataSize: DATA_SIZE, metadataSize: METADATA_SIZE, blockSize: B, config: defaultConfig() }, opts);
      const w: World = { dir, pool, model: new ThinModel(B, DATA_SIZE / B), names: 0, opts };
      try {
        // One device to start with, so that early I/O commands have a target.
        const d = await w.pool.createDevice('base', 2 * MiB);
        w.model.createThin(d.devId, 2 * MiB, 'base');
        for (const [i, c] of cmds.entries()) {
          try {
            await runCmd(w, c);
            checkAccounting(w.pool, w.model);
          } catch (e) {
            (e as Error).message = `command ${i} ${JSON.stringify(c)}: ${(e as Error).message}`;
            throw e;
          }
          commands++;
        }
        await checkContents(w.pool, w.model);
        checkAccounting(w.pool, w.model);
        await w.pool.close();
        await checkMetadataVsModel(dir, w.model);
      } finally {
        await w.pool.close().catch(() => {});
        rmSync(dir, { recursive: true, force: true });
      }
    }),
    params(25),
  );
  t.log(`${runs} runs, ${commands} commands in ${Math.round(performance.now() - started)} ms`);
  t.pass();
});

//------------------------------------------------------------------------------
// concurrent batches

// Within one batch the operations on one device cover disjoint byte ranges
// (so their outcome does not depend on their order), but several of them may
// fall in the same block, and devices that share data blocks (an origin and
// its snapshots, a snapshot of a snapshot) are written, read and discarded at
// the same time, which breaks sharing concurrently. A commit may run in the
// middle of a batch.

type Op = 'write' | 'read' | 'discard';
interface Segment {
  gap: number;
  len: number;
  op: Op;
  seed: number;
}
interface Batch {
  perDevice: Segment[][];
  commitAt: number | null;
  order: number;
  /** Between batches: snapshot this device (index), delete one, or nothing. */
  after: { k: 'snap'; dev: number } | { k: 'delete'; dev: number } | { k: 'none' };
}

const segmentArb: fc.Arbitrary<Segment> = fc.record({
  gap: fc.oneof(fc.constant(0), fc.nat({ max: B }), fc.nat({ max: 4 * B })),
  len: fc.oneof(fc.integer({ min: 1, max: 4096 }), fc.integer({ min: 1, max: B }), fc.constant(B), fc.integer({ min: B, max: 3 * B })),
  op: fc.constantFrom<Op>('write', 'write', 'write', 'read', 'discard'),
  seed: fc.nat(),
});

const batchArb: fc.Arbitrary<Batch> = fc.record({
  perDevice: fc.array(fc.array(segmentArb, { maxLength: 10, size: 'max' }), { minLength: 6, maxLength: 6 }),
  commitAt: fc.option(fc.nat({ max: 60 }), { nil: null }),
  order: fc.nat(),
  after: fc.oneof(
    fc.constant({ k: 'none' as const }),
    fc.record({ k: fc.constant('snap' as const), dev: fc.nat() }),
    fc.record({ k: fc.constant('delete' as const), dev: fc.nat() }),
  ),
});

const scenarioArb = fc.record({
  initial: fc.array(fc.record({ range: rangeArb, seed: fc.nat() }), { minLength: 1, maxLength: 12 }),
  between: fc.array(fc.record({ range: rangeArb, seed: fc.nat() }), { maxLength: 6 }),
  batches: fc.array(batchArb, { minLength: 1, maxLength: 6 }),
});

function shuffle<T>(xs: T[], seed: number): T[] {
  const r = pattern(seed, xs.length * 4);
  for (let i = xs.length - 1; i > 0; i--) {
    const j = r.readUInt32LE(i * 4) % (i + 1);
    [xs[i], xs[j]] = [xs[j]!, xs[i]!];
  }
  return xs;
}

test('concurrent batches on devices that share blocks match the model', async (t) => {
  const base = tempDir(t);
  let runs = 0;
  let ops = 0;
  const started = performance.now();
  await fc.assert(
    fc.asyncProperty(scenarioArb, async (scn) => {
      runs++;
      const dir = mkdtempSync(join(base, 'run-'));
      const opts: PoolOpenOptions = { oneShot: true, wrap: (f, which) => (which === 'data' ? new JitterBacking(f, runs) : f) };
      let pool = await Pool.create(dir, { dataSize: DATA_SIZE, metadataSize: METADATA_SIZE, blockSize: B, config: defaultConfig() }, opts);
      const model = new ThinModel(B, DATA_SIZE / B);
      const size = 2 * MiB;
      let names = 0;
      try {
        // origin, a snapshot of it, a snapshot of that snapshot, a raw snapshot of the origin
        const o = await pool.createDevice('origin', size);
        model.createThin(o.devId, size, 'origin');
        for (const x of scn.initial) {
          const { offset, length } = resolveRange(x.range, size);
          const data = pattern(x.seed, length);
          await pool.write(o.devId, data, offset, size);
          model.write(o.devId, offset, data);
        }
        const s1 = await pool.snapshot('origin', 'snap1');
        model.createSnap(s1.devId, o.devId, undefined, 'snap1');
        for (const x of scn.between) {
          const { offset, length } = resolveRange(x.range, size);
          const data = pattern(x.seed, length);
          await pool.write(o.devId, data, offset, size);
          model.write(o.devId, offset, data);
        }
        const s2 = await pool.snapshot('snap1', 'snap2');
        model.createSnap(s2.devId, s1.devId, undefined, 'snap2');
        await pool.message(`create_snap 9 ${o.devId}`);
        model.createSnap(9, o.devId, size);
        await pool.activate('snap9', devId(9), size);
        model.dev(9).name = 'snap9';

        for (const [bi, batch] of scn.batches.entries()) {
          const ids = model.ids();
          const jobs: Array<() => Promise<void>> = [];
          const reads: Array<{ id: number; offset: number; buf: Buffer }> = [];
          ids.forEach((id, di) => {
            const d = model.dev(id);
            let at = 0;
            for (const s of batch.perDevice[di % batch.perDevice.length]!) {
              const offset = at + s.gap;
              if (offset >= d.size) break;
              const length = Math.min(s.len, d.size - offset);
              at = offset + length;
              if (s.op === 'write') {
                const data = pattern(s.seed, length);
                model.write(id, offset, data);
                jobs.push(() => pool.write(devId(id), data, offset, d.size));
              } else if (s.op === 'discard') {
                const want = model.discard(id, offset, length);
                jobs.push(async () => {
                  const n = await pool.discard(devId(id), offset, length, d.size);
                  assert.equal(n, want, `discard of device ${id} at ${offset}+${length}`);
                });
              } else {
                const buf = Buffer.alloc(length);
                reads.push({ id, offset, buf });
                jobs.push(() => pool.read(devId(id), buf, offset, d.size));
              }
            }
          });
          if (batch.commitAt !== null) jobs.splice(batch.commitAt % (jobs.length + 1), 0, () => pool.commit());
          ops += jobs.length;
          await Promise.all(shuffle(jobs, batch.order).map((j) => j()));
          // Reads never overlap a write or discard of their device in the same
          // batch, so they must see what the model holds after the batch.
          for (const r of reads) assertSameBytes(r.buf, model.read(r.id, r.offset, r.buf.length), `batch ${bi}: read of device ${r.id} at ${r.offset}+${r.buf.length}`);
          await checkContents(pool, model);
          checkAccounting(pool, model);

          const after = batch.after;
          if (after.k === 'snap' && ids.length < 6) {
            const origin = ids[after.dev % ids.length]!;
            const name = `s${names++}`;
            const snap = await pool.snapshot(model.dev(origin).name!, name);
            model.createSnap(snap.devId, origin, undefined, name);
          } else if (after.k === 'delete' && ids.length > 2) {
            const id = ids[after.dev % ids.length]!;
            await pool.remove(model.dev(id).name!);
            model.delete(id);
          }
        }
        await checkContents(pool, model);
        checkAccounting(pool, model);
        await pool.close();
        await checkMetadataVsModel(dir, model);
        // And once more after reopening: the committed state is the same.
        pool = await Pool.open(dir);
        await checkContents(pool, model);
        checkAccounting(pool, model);
      } finally {
        await pool.close().catch(() => {});
        rmSync(dir, { recursive: true, force: true });
      }
    }),
    params(10),
  );
  t.log(`${runs} runs, ${ops} concurrent operations in ${Math.round(performance.now() - started)} ms`);
  t.pass();
});

// The helpers on the smallest case: an empty pool against an empty model.
test('makePool/oracle on an empty pool', async (t) => {
  const { pool, dir } = await makePool(t);
  await pool.close();
  await oracleVsModel(t, dir, new ThinModel(B, 64 * MiB / B));
});
