// The fault matrix of issue 5 (item 3's table), in-process: each applicable
// cell (fault kind x request x file) in each context (idle, under concurrent
// I/O load, during a snapshot). A case builds a pool with committed data,
// sets the fault through PoolFaults (as `thinfuse fault` does, under the data
// cache), triggers it, checks the table's reaction, clears the fault, and
// then reopens the pool without faults and checks that committed data is
// intact: thin_check + thin_dump against our dump (or, for dropped metadata
// writes, that our checker finds the damage), and every committed byte.
//
// Used by test/fault.test.ts and scripts/fault-matrix.ts. Everything throws
// (node:assert) rather than asserting through ava, so the script can use it.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isThinError } from '../../src/base/errors.js';
import type { DevId } from '../../src/base/units.js';
import { FileBacking } from '../../src/io/file-backing.js';
import { checkMetadata as ourCheck } from '../../src/pool/check.js';
import { defaultConfig } from '../../src/pool/config.js';
import { type FaultSpec, PoolFaults } from '../../src/pool/faults.js';
import { Pool } from '../../src/pool/pool.js';
import { pattern } from './model.js';
import { checkMetadata } from './pool.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
const BLOCK = 64 * KiB;
/** Committed blocks of `base` (the rest of it is unprovisioned). */
const BASE_BLOCKS = 16;
const BASE_SIZE = 2 * MiB;
const DELAY_MS = 40;

export type Context = 'idle' | 'load' | 'snapshot';
export const CONTEXTS: readonly Context[] = ['idle', 'load', 'snapshot'];

export type Reaction = 'rw' | 'ro-needs-check' | 'fail' | 'out-of-data-space';

/** What a trigger saw. */
export interface Outcome {
  error?: unknown;
  data?: Buffer;
  ms: number;
}

export interface Env {
  dir: string;
  pool: Pool;
  faults: PoolFaults;
  base: DevId;
  keep: DevId;
  ctx: Context;
}

export interface Cell {
  /** file/kind/op, as the table row reads. */
  name: string;
  file: 'data' | 'metadata';
  /** The fault, given the pool as set up. */
  spec(env: Env): FaultSpec;
  /** Pool config tweak (no-space policy). */
  errorIfNoSpace?: boolean;
  /** The requests that meet the fault. */
  trigger(env: Env): Promise<Outcome>;
  /** The table's reaction: checks the outcome and the pool right after the trigger. */
  expect(env: Env, o: Outcome): Promise<void> | void;
  /** Runs with the fault cleared, pool still open (stickiness, recovery). */
  afterClear?(env: Env, o: Outcome): Promise<void>;
  /** Load on other devices must run clean (the fault targets base's blocks only). */
  loadClean: boolean;
  /** Our checker must find damage after reopening (dropped metadata writes). */
  checkFinds?: boolean;
  /** Content of base block 0 after reopening, if the cell knows it. */
  block0?: 'old' | 'new' | 'torn';
}

//------------------------------------------------------------------------------
// data patterns

const OLD = pattern(1, BASE_BLOCKS * BLOCK);
const KEEP = pattern(2, MiB);
const NEW = pattern(3, BLOCK);
const TORN_SECTORS = 3;

async function timed(fn: () => Promise<Buffer | void>): Promise<Outcome> {
  const start = Date.now();
  try {
    const data = await fn();
    return data ? { data, ms: Date.now() - start } : { ms: Date.now() - start };
  } catch (error) {
    return { error, ms: Date.now() - start };
  }
}

async function readBlock0(env: Env): Promise<Buffer> {
  const buf = Buffer.alloc(BLOCK);
  await env.pool.read(env.base, buf, 0, BASE_SIZE);
  return buf;
}

const trigRead = (env: Env) => timed(() => readBlock0(env));
const trigWrite = (env: Env) => timed(() => env.pool.write(env.base, NEW, 0, BASE_SIZE));
const trigWriteFlush = (env: Env) => timed(async () => {
  await env.pool.write(env.base, NEW, 0, BASE_SIZE);
  await env.pool.flush();
});
/** A metadata change (a new block of base) and its commit. */
const trigMetaChange = (env: Env) => timed(async () => {
  await env.pool.write(env.base, NEW, (BASE_BLOCKS + 2) * BLOCK, BASE_SIZE);
  await env.pool.flush();
});

//------------------------------------------------------------------------------
// reactions

function errCode(o: Outcome): string | undefined {
  return isThinError(o.error) ? o.error.code : o.error === undefined ? undefined : `non-ThinError: ${String(o.error)}`;
}

/**
 * Under load or during a snapshot another request may meet the fault first;
 * this one then gets the mode's error (read-only, failed, flushes refused
 * after an abort) instead.
 */
function mustFail(env: Env, o: Outcome, ...codes: string[]): void {
  // IO_ERROR: a flush after another request's failure aborted the transaction.
  if (env.ctx !== 'idle') codes.push('READ_ONLY', 'POOL_FAILED', 'IO_ERROR');
  assert.ok(o.error !== undefined, 'the request succeeded; it should have failed');
  assert.ok(codes.includes(errCode(o)!), `the request failed with ${errCode(o)} (${(o.error as Error).message}), expected ${codes.join(' or ')}`);
}

function mustSucceed(o: Outcome): void {
  assert.equal(o.error, undefined, `the request failed: ${(o.error as Error)?.message}`);
}

function mode(env: Env, ...want: Reaction[]): void {
  const p = env.pool;
  const got: Reaction = p.mode === 'fail' ? 'fail'
    : p.mode === 'read_only' ? (p.md.needsCheck ? 'ro-needs-check' : 'rw')
      : p.mode === 'out_of_data_space' ? 'out-of-data-space' : 'rw';
  assert.ok(want.includes(got), `pool mode ${p.mode}${p.md.needsCheck ? ' (needs_check)' : ''}, expected ${want.join(' or ')}`);
}

//------------------------------------------------------------------------------
// targets

/** base's committed blocks' bytes in POOL/data, by device sectors (block 0 only). */
const block0OfBase = (): Pick<FaultSpec, 'device' | 'sectors'> => ({ device: 'base', sectors: [0, BLOCK / 512] });

/** Every metadata block but the superblock. */
function allButSuperblock(env: Env): Array<[number, number]> {
  return [[4096, env.pool.md.file.size()]];
}

/** The leaf of base's mapping tree (lookups read it; an abort does not). */
function baseLeaf(env: Env): Array<[number, number]> {
  const b = env.pool.md.subtreeRoot(env.base);
  return [[b * 4096, (b + 1) * 4096]];
}

//------------------------------------------------------------------------------
// the cells

export const CELLS: Cell[] = [
  // data file
  {
    name: 'data/error/read', file: 'data', loadClean: true, block0: 'old',
    spec: () => ({ kind: 'error', ops: ['read'], ...block0OfBase() }),
    trigger: trigRead,
    expect: (env, o) => { mustFail(env, o, 'IO_ERROR'); mode(env, 'rw'); },
    afterClear: async (env) => { assert.ok((await readBlock0(env)).equals(OLD.subarray(0, BLOCK)), 'block 0 reads back after the clear'); },
  },
  {
    name: 'data/error/write', file: 'data', loadClean: true, block0: 'old',
    spec: () => ({ kind: 'error', ops: ['write'], ...block0OfBase() }),
    trigger: trigWrite,
    expect: (env, o) => { mustFail(env, o, 'IO_ERROR'); mode(env, 'rw'); },
  },
  {
    name: 'data/error/flush', file: 'data', loadClean: false,
    spec: () => ({ kind: 'error', ops: ['flush'], file: 'data' }),
    trigger: trigWriteFlush,
    expect: (env, o) => { mustFail(env, o, 'IO_ERROR'); mode(env, 'ro-needs-check'); },
    afterClear: async (env) => {
      await assert.rejects(env.pool.flush(), /every later flush fails/, 'a flush after the fault is cleared must still fail (sticky)');
    },
  },
  {
    name: 'data/nospace/write (error_if_no_space)', file: 'data', loadClean: true, errorIfNoSpace: true, block0: 'old',
    spec: () => ({ kind: 'nospace', ops: ['write'], ...block0OfBase() }),
    trigger: trigWrite,
    // Out of data space until a write succeeds or a commit finds free blocks:
    // with other I/O going on, that can be at once.
    expect: (env, o) => { mustFail(env, o, 'NO_DATA_SPACE'); mode(env, 'out-of-data-space', ...(env.ctx === 'idle' ? [] : ['rw' as const])); },
    afterClear: async (env) => {
      await env.pool.write(env.base, NEW, 0, BASE_SIZE);
      mode(env, 'rw');
      await env.pool.write(env.base, OLD.subarray(0, BLOCK), 0, BASE_SIZE);
    },
  },
  {
    name: 'data/nospace/write (queue_if_no_space)', file: 'data', loadClean: true, block0: 'new',
    spec: () => ({ kind: 'nospace', ops: ['write'], ...block0OfBase() }),
    // The write waits; the fault is cleared 1.5 s later and the write goes through.
    trigger: (env) => timed(async () => {
      const w = env.pool.write(env.base, NEW, 0, BASE_SIZE);
      await new Promise((r) => setTimeout(r, 1500));
      mode(env, 'out-of-data-space');
      env.faults.clear([], env.pool);
      await w;
      await env.pool.flush();
    }),
    expect: (env, o) => { mustSucceed(o); assert.ok(o.ms >= 1400, `the write waited ${o.ms} ms`); mode(env, 'rw'); },
  },
  {
    name: 'data/nospace/flush', file: 'data', loadClean: false,
    spec: () => ({ kind: 'nospace', ops: ['flush'], file: 'data' }),
    trigger: trigWriteFlush,
    expect: (env, o) => { mustFail(env, o, 'IO_ERROR', 'HOST_NO_SPACE'); mode(env, 'ro-needs-check'); },
    afterClear: async (env) => { await assert.rejects(env.pool.flush(), /every later flush fails/); },
  },
  {
    name: 'data/drop/write', file: 'data', loadClean: true, block0: 'old',
    spec: () => ({ kind: 'drop', ops: ['write'], ...block0OfBase() }),
    trigger: trigWriteFlush,
    expect: (env, o) => { mustSucceed(o); mode(env, 'rw'); },
    // Silent by design: the write is simply not there.
    afterClear: async (env) => { assert.ok((await readBlock0(env)).equals(OLD.subarray(0, BLOCK)), 'the dropped write must not be there'); },
  },
  {
    name: 'data/drop/flush', file: 'data', loadClean: true,
    spec: () => ({ kind: 'drop', ops: ['flush'], file: 'data' }),
    trigger: trigWriteFlush,
    expect: (env, o) => { mustSucceed(o); mode(env, 'rw'); },
  },
  ...(['read', 'write', 'flush'] as const).map((op): Cell => ({
    name: `data/delay/${op}`, file: 'data', loadClean: true,
    spec: () => (op === 'flush' ? { kind: 'delay', ops: [op], file: 'data', delayMs: DELAY_MS } : { kind: 'delay', ops: [op], delayMs: DELAY_MS, ...block0OfBase() }),
    trigger: op === 'read' ? trigRead : trigWriteFlush,
    // Under load another request's flush may have done this one's work.
    expect: (env, o) => { mustSucceed(o); mode(env, 'rw'); if (env.ctx !== 'load') assert.ok(o.ms >= DELAY_MS - 2, `took ${o.ms} ms, less than the ${DELAY_MS} ms delay`); },
    ...(op === 'read' ? { block0: 'old' as const } : { block0: 'new' as const }),
  })),
  {
    name: 'data/bitflip/read', file: 'data', loadClean: true, block0: 'old',
    spec: () => ({ kind: 'bitflip', ops: ['read'], bit: 3, ...block0OfBase() }),
    trigger: trigRead,
    expect: (env, o) => {
      mustSucceed(o);
      mode(env, 'rw');
      const want = Buffer.from(OLD.subarray(0, BLOCK));
      for (let s = 0; s < BLOCK; s += 512) want[s]! ^= 1 << 3;
      assert.ok(o.data!.equals(want), 'the reader gets the data with bit 3 of every sector\'s first byte flipped');
    },
    afterClear: async (env) => { assert.ok((await readBlock0(env)).equals(OLD.subarray(0, BLOCK)), 'after the clear no cache keeps the flipped bytes'); },
  },
  {
    name: 'data/torn/write', file: 'data', loadClean: true, block0: 'torn',
    spec: () => ({ kind: 'torn', ops: ['write'], keepSectors: TORN_SECTORS, ...block0OfBase() }),
    trigger: trigWrite,
    expect: (env, o) => { mustFail(env, o, 'IO_ERROR'); mode(env, 'rw'); },
  },

  // metadata file
  {
    name: 'metadata/error/read', file: 'metadata', loadClean: false,
    spec: (env) => ({ kind: 'error', ops: ['read'], file: 'metadata', ranges: baseLeaf(env) }),
    trigger: trigRead,
    expect: (env, o) => { mustFail(env, o, 'IO_ERROR'); mode(env, 'ro-needs-check'); },
  },
  {
    name: 'metadata/error/write', file: 'metadata', loadClean: false,
    spec: (env) => ({ kind: 'error', ops: ['write'], file: 'metadata', ranges: allButSuperblock(env) }),
    trigger: trigMetaChange,
    expect: (env, o) => { mustFail(env, o, 'IO_ERROR'); mode(env, 'ro-needs-check'); },
  },
  {
    name: 'metadata/error/write incl. superblock', file: 'metadata', loadClean: false,
    spec: () => ({ kind: 'error', ops: ['write'], file: 'metadata' }),
    trigger: trigMetaChange,
    expect: (env, o) => { mustFail(env, o, 'IO_ERROR'); mode(env, 'fail'); },
  },
  {
    // The needs_check write is flushed too, and fails: fail mode.
    name: 'metadata/error/flush', file: 'metadata', loadClean: false,
    spec: () => ({ kind: 'error', ops: ['flush'], file: 'metadata' }),
    trigger: trigMetaChange,
    expect: (env, o) => { mustFail(env, o, 'IO_ERROR'); mode(env, 'fail'); },
  },
  {
    name: 'metadata/nospace/write', file: 'metadata', loadClean: false,
    spec: (env) => ({ kind: 'nospace', ops: ['write'], file: 'metadata', ranges: allButSuperblock(env) }),
    trigger: trigMetaChange,
    expect: (env, o) => { mustFail(env, o, 'HOST_NO_SPACE'); mode(env, 'ro-needs-check'); },
  },
  {
    name: 'metadata/drop/write', file: 'metadata', loadClean: true, checkFinds: true,
    spec: (env) => ({ kind: 'drop', ops: ['write'], file: 'metadata', ranges: allButSuperblock(env) }),
    trigger: trigMetaChange,
    // Silent, unless something reads a block whose write was dropped (under
    // load): its checksum fails, and that is as a failed read.
    expect: (env, o) => {
      if (env.ctx === 'idle') return void (mustSucceed(o), mode(env, 'rw'));
      mode(env, 'rw', 'ro-needs-check');
    },
  },
  ...(['read', 'write', 'flush'] as const).map((op): Cell => ({
    name: `metadata/delay/${op}`, file: 'metadata', loadClean: true,
    spec: () => ({ kind: 'delay', ops: [op], file: 'metadata', delayMs: DELAY_MS }),
    trigger: trigMetaChange,
    expect: (env, o) => { mustSucceed(o); mode(env, 'rw'); assert.ok(o.ms >= DELAY_MS - 2, `took ${o.ms} ms, less than the ${DELAY_MS} ms delay`); },
  })),
  {
    name: 'metadata/bitflip/read', file: 'metadata', loadClean: false,
    spec: (env) => ({ kind: 'bitflip', ops: ['read'], file: 'metadata', ranges: baseLeaf(env) }),
    trigger: trigRead,
    expect: (env, o) => { mustFail(env, o, 'BAD_METADATA'); mode(env, 'ro-needs-check'); },
  },
  {
    name: 'metadata/torn/write', file: 'metadata', loadClean: false,
    spec: (env) => ({ kind: 'torn', ops: ['write'], file: 'metadata', keepSectors: 1, ranges: allButSuperblock(env) }),
    trigger: trigMetaChange,
    expect: (env, o) => { mustFail(env, o, 'IO_ERROR'); mode(env, 'ro-needs-check'); },
  },
];

//------------------------------------------------------------------------------
// running one case

async function setup(dir: string, cell: Cell): Promise<Env> {
  const config = defaultConfig();
  config.features.errorIfNoSpace = Boolean(cell.errorIfNoSpace);
  const faults = PoolFaults.load(dir);
  const pool = await Pool.create(dir, { dataSize: 32 * MiB, metadataSize: 8 * MiB, blockSize: BLOCK, config }, { wrap: faults.wrap, dataCacheBytes: MiB });
  const base = (await pool.createDevice('base', BASE_SIZE)).devId;
  const keep = (await pool.createDevice('keep', MiB)).devId;
  await pool.createDevice('load', 4 * MiB);
  await pool.write(base, OLD, 0, BASE_SIZE);
  await pool.write(keep, KEEP, 0, MiB);
  await pool.flush();
  // Warm the data cache over block 0: setting the fault must drop it.
  await readBlock0({ dir, pool, faults, base, keep, ctx: 'idle' });
  return { dir, pool, faults, base, keep, ctx: 'idle' };
}

/** Random 4 KiB writes and reads on `load`, a flush every 8, until stopped; counts failures. */
function startLoad(env: Env): { stop: () => Promise<{ ops: number; errors: string[] }> } {
  const dev = env.pool.device('load');
  let running = true;
  let ops = 0;
  const errors: string[] = [];
  let x = 12345;
  const worker = async () => {
    const buf = Buffer.alloc(4096, 7);
    while (running) {
      x = (x * 1103515245 + 12345) >>> 0;
      const at = (x % (dev.size / 4096)) * 4096;
      try {
        if (x & 1) await env.pool.write(dev.devId, buf, at, dev.size, 'load');
        else await env.pool.read(dev.devId, Buffer.alloc(4096), at, dev.size, 'load');
        if (++ops % 8 === 0) await env.pool.flush();
      } catch (e) {
        errors.push((e as Error).message);
        await new Promise((r) => setTimeout(r, 5));
      }
    }
  };
  const workers = [worker(), worker(), worker()];
  return {
    stop: async () => {
      await new Promise((r) => setTimeout(r, 30));
      running = false;
      await Promise.all(workers);
      return { ops, errors };
    },
  };
}

async function triggerIn(env: Env, cell: Cell, ctx: Context): Promise<{ o: Outcome; note: string }> {
  if (ctx === 'idle') return { o: await cell.trigger(env), note: '' };
  if (ctx === 'load') {
    const load = startLoad(env);
    await new Promise((r) => setTimeout(r, 20));
    const o = await cell.trigger(env);
    const l = await load.stop();
    if (cell.loadClean) assert.deepEqual(l.errors.slice(0, 3), [], 'the load on another device must not see the fault');
    return { o, note: `load: ${l.ops} ops, ${l.errors.length} failed` };
  }
  // The trigger's requests start first; the snapshot quiesces base behind them.
  const t = cell.trigger(env);
  const s = env.pool.snapshot('base', 'snap').then(() => 'snapshot taken', (e) => `snapshot failed: ${isThinError(e) ? e.code : String(e)}`);
  const [o, note] = await Promise.all([t, s]);
  return { o, note };
}

/** After the case: reopen without faults, check metadata, read committed data. */
async function verify(dir: string, cell: Cell): Promise<string> {
  if (cell.checkFinds) {
    const file = FileBacking.open(join(dir, 'metadata'), false);
    try {
      const r = ourCheck(file);
      assert.ok(!r.ok, 'thinfuse check must find the damage dropped metadata writes left');
      return `check finds: ${r.fatal[0]}`;
    } finally {
      await file.close();
    }
  }
  await checkMetadata(dir);
  const pool = await Pool.open(dir);
  try {
    const base = pool.device('base');
    const got = Buffer.alloc(BASE_BLOCKS * BLOCK);
    await pool.read(base.devId, got, 0, base.size);
    assert.ok(got.subarray(BLOCK).equals(OLD.subarray(BLOCK)), 'base blocks 1.. (committed, untouched) read back intact');
    const b0 = got.subarray(0, BLOCK);
    if (cell.block0 === 'old') assert.ok(b0.equals(OLD.subarray(0, BLOCK)), 'base block 0 holds its committed contents');
    if (cell.block0 === 'new') assert.ok(b0.equals(NEW), 'base block 0 holds the flushed write');
    if (cell.block0 === 'torn') {
      const cut = TORN_SECTORS * 512;
      assert.ok(b0.subarray(0, cut).equals(NEW.subarray(0, cut)) && b0.subarray(cut).equals(OLD.subarray(cut, BLOCK)), 'base block 0 holds the torn prefix, then the old contents');
    }
    const keep = pool.device('keep');
    const k = Buffer.alloc(MiB);
    await pool.read(keep.devId, k, 0, keep.size);
    assert.ok(k.equals(KEEP), 'keep (committed, untouched) reads back intact');
    const snap = pool.registry.find('snap');
    if (snap && pool.md.hasDevice(snap.devId)) {
      const s = Buffer.alloc(BASE_BLOCKS * BLOCK);
      await pool.read(snap.devId, s, 0, snap.size);
      assert.ok(s.subarray(BLOCK).equals(OLD.subarray(BLOCK)), 'the snapshot reads base\'s committed blocks');
    }
    return `reopened ${pool.mode}${pool.md.needsCheck ? ' needs_check' : ''}, thin_check clean, data intact`;
  } finally {
    await pool.close();
  }
}

export interface CaseResult {
  cell: string;
  context: Context;
  ok: boolean;
  reaction: string;
  detail: string;
  ms: number;
}

/** Runs one case in a fresh temp dir; never throws (failures are in the result). */
export async function runCase(cell: Cell, ctx: Context): Promise<CaseResult> {
  const dir = mkdtempSync(join(tmpdir(), 'thinfuse-fault-'));
  const start = Date.now();
  let env: Env | undefined;
  let reaction = '';
  try {
    env = await setup(dir, cell);
    env.ctx = ctx;
    env.faults.set(cell.spec(env), env.pool);
    const { o, note } = await triggerIn(env, cell, ctx);
    // In fail mode needs_check may be set in memory only (its write failed).
    const flag = env.pool.md.needsCheck && env.pool.mode !== 'fail' ? ' needs_check' : '';
    reaction = `${o.error ? `${errCode(o)}` : 'ok'}, ${env.pool.mode}${flag}`;
    await cell.expect(env, o);
    env.faults.clear([], env.pool);
    await cell.afterClear?.(env, o);
    // Closing commits; over dropped metadata writes that may find the damage.
    await env.pool.close().catch((e) => {
      if (!cell.checkFinds) throw e;
    });
    const after = await verify(dir, cell);
    return { cell: cell.name, context: ctx, ok: true, reaction, detail: [note, after].filter(Boolean).join('; '), ms: Date.now() - start };
  } catch (e) {
    return { cell: cell.name, context: ctx, ok: false, reaction, detail: (e as Error).message.split('\n')[0]!, ms: Date.now() - start };
  } finally {
    try {
      await env?.pool.close();
    } catch {
      // closed already, or the case failed before
    }
    rmSync(dir, { recursive: true, force: true });
  }
}
