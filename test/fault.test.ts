// Fault injection (issue 5, items 2 and 3): FaultBacking's behaviour on its
// own, PoolFaults (persistence, device sectors to data ranges), and the
// reaction matrix: every applicable cell of the table in each
// context (idle, under concurrent I/O load, during a snapshot), each ending
// with the pool reopened, thin_check clean and committed data intact (see
// test/_helpers/fault-matrix.ts). scripts/fault-matrix.ts runs the same cases
// and prints the table for RELIABILITY.md.

import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { isThinError } from '../src/base/errors.js';
import { type Fault, FaultBacking, faultActive, validateFault } from '../src/io/fault-backing.js';
import { MemoryBacking } from '../src/io/memory-backing.js';
import { FAULTS_FILE, PoolFaults } from '../src/pool/faults.js';
import { specOf } from '../src/frontends/cli/fault-commands.js';
import { CELLS, CONTEXTS, runCase } from './_helpers/fault-matrix.js';
import { makePool, MiB, tempDir } from './_helpers/pool.js';

function fault(p: Partial<Fault>): Fault {
  return { id: 1, file: 'data', kind: 'error', ops: ['read'], ranges: [], up: 0, down: 0, since: 0, ...p };
}

async function filled(len: number): Promise<MemoryBacking> {
  const m = new MemoryBacking('mem', len);
  await m.write(Buffer.alloc(len, 0xaa), 0);
  return m;
}

test('FaultBacking: no faults forwards everything; error faults hit only their ranges and ops', async (t) => {
  const fb = new FaultBacking(await filled(64 * 1024));
  const buf = Buffer.alloc(4096);
  await fb.read(buf, 0);
  t.true(buf.every((b) => b === 0xaa));
  fb.setFaults([fault({ ops: ['read'], ranges: [[8192, 12288]] })]);
  await fb.read(buf, 0);
  await fb.write(buf, 8192);
  const e = await t.throwsAsync(fb.read(buf, 10000));
  t.true(isThinError(e, 'IO_ERROR'));
  t.regex(e!.message, /injected EIO \(fault 1\)/);
  t.throws(() => fb.readSync(buf, 12287), { message: /injected EIO/ });
  t.notThrows(() => fb.readSync(buf, 12288));
});

test('FaultBacking: nospace, drop, torn, bitflip, flush faults and copies through faults', async (t) => {
  const mem = await filled(64 * 1024);
  const fb = new FaultBacking(mem);
  fb.setFaults([fault({ kind: 'nospace', ops: ['write', 'flush'] })]);
  t.true(isThinError(await t.throwsAsync(fb.write(Buffer.alloc(512), 0)), 'HOST_NO_SPACE'));
  t.true(isThinError(await t.throwsAsync(fb.flush()), 'HOST_NO_SPACE'));

  fb.setFaults([fault({ kind: 'drop', ops: ['write'] })]);
  await fb.write(Buffer.alloc(4096, 1), 0);
  const b = Buffer.alloc(4096);
  await mem.read(b, 0);
  t.true(b.every((x) => x === 0xaa), 'a dropped write changes nothing');

  fb.setFaults([fault({ kind: 'torn', ops: ['write'], keepSectors: 2 })]);
  await t.throwsAsync(fb.write(Buffer.alloc(4096, 2), 256), { message: /injected EIO/ });
  await mem.read(b, 0);
  // Sectors 0 and 1 (absolute) are kept: bytes 256..1023 of the write.
  t.true(b.subarray(0, 256).every((x) => x === 0xaa) && b.subarray(256, 1024).every((x) => x === 2) && b.subarray(1024).every((x) => x === 0xaa));

  fb.setFaults([fault({ kind: 'bitflip', ops: ['read'], bit: 7, ranges: [[1024, 2048]] })]);
  await fb.read(b, 0);
  t.is(b[1024], 0xaa ^ 0x80);
  t.is(b[1536], 0xaa ^ 0x80);
  t.is(b[2048], 0xaa);
  t.is(b[1025], 0xaa);

  fb.setFaults([fault({ kind: 'error', ops: ['read'], ranges: [[0, 512]] })]);
  await t.throwsAsync(fb.copyWithin(0, 32768, 4096), { message: /injected EIO/ }, 'a copy reads through the faults');
  await fb.copyWithin(8192, 32768, 4096);

  fb.setFaults([fault({ kind: 'error', ops: ['flush'] })]);
  await t.throwsAsync(fb.flush());
  t.throws(() => fb.flushSync());
});

test('FaultBacking: delays, and dm-flakey up/down intervals', async (t) => {
  let now = 0;
  const fb = new FaultBacking(await filled(8192), () => now);
  fb.setFaults([fault({ kind: 'delay', ops: ['read'], delayMs: 30 })]);
  const start = Date.now();
  await fb.read(Buffer.alloc(512), 0);
  t.true(Date.now() - start >= 28);

  const flakey = fault({ ops: ['read'], up: 2, down: 1, since: 0 });
  t.false(faultActive(flakey, 0));
  t.false(faultActive(flakey, 1999));
  t.true(faultActive(flakey, 2000));
  t.true(faultActive(flakey, 2999));
  t.false(faultActive(flakey, 3000));
  fb.setFaults([flakey]);
  now = 500;
  await fb.read(Buffer.alloc(512), 0);
  now = 2500;
  await t.throwsAsync(fb.read(Buffer.alloc(512), 0));
});

test('validateFault refuses kinds on requests they do not apply to, and bad ranges', (t) => {
  t.throws(() => validateFault(fault({ kind: 'bitflip', ops: ['write'] })), { message: /does not apply to write/ });
  t.throws(() => validateFault(fault({ kind: 'torn', ops: ['read'] })), { message: /does not apply to read/ });
  t.throws(() => validateFault(fault({ kind: 'nospace', ops: ['read'] })), { message: /does not apply to read/ });
  t.throws(() => validateFault(fault({ ranges: [[10, 5]] })), { message: /bad byte range/ });
  t.throws(() => validateFault(fault({ kind: 'delay', ops: ['read'] })), { message: /delayMs/ });
  t.notThrows(() => validateFault(fault({ kind: 'delay', ops: ['read', 'write', 'flush'], delayMs: 5 })));
});

test('the CLI spec: ranges FIRST-LAST and FIRST+COUNT, sizes, and refusals', (t) => {
  t.deepEqual(specOf('error', { file: 'data', bytes: '0-4095,1M+64k', ops: 'read,write' }), { kind: 'error', file: 'data', ranges: [[0, 4096], [MiB, MiB + 65536]], ops: ['read', 'write'] });
  t.deepEqual(specOf('error', { device: 'v', sectors: '8+8' }), { kind: 'error', device: 'v', sectors: [8, 16] });
  t.deepEqual(specOf('drop', { file: 'data', up: '5', down: '2' }), { kind: 'drop', file: 'data', up: 5, down: 2 });
  t.throws(() => specOf('error', {}), { message: /say where/ });
  t.throws(() => specOf('error', { device: 'v', file: 'data' }), { message: /not both/ });
  t.throws(() => specOf('delay', { file: 'data' }), { message: /--delay/ });
  t.throws(() => specOf('error', { file: 'data', bytes: '9-3' }), { message: /empty/ });
  t.throws(() => specOf('error', { file: 'data', up: '1' }), { message: /go together/ });
});

test('PoolFaults: device sectors become the data ranges of their blocks; faults persist until cleared', async (t) => {
  const { pool, dir } = await makePool(t);
  const v = await pool.createDevice('v', 4 * MiB);
  await pool.write(v.devId, Buffer.alloc(64 * 1024, 1), 64 * 1024, v.size); // block 1 only
  await pool.flush();
  const faults = PoolFaults.load(dir);
  t.throws(() => faults.set({ kind: 'error', device: 'v', sectors: [0, 128] }, pool), { message: /not provisioned/ });
  const f = faults.set({ kind: 'error', device: 'v', sectors: [64, 300] }, pool);
  const b1 = pool.md.lookup(v.devId, 1 as never)!.block;
  t.deepEqual(f.ranges, [[b1 * 65536, b1 * 65536 + 65536]], 'block 1 whole; blocks 0 and 2 are unprovisioned');
  t.deepEqual(f.device, { name: 'v', devId: v.devId, sectors: [64, 300], unmappedSectors: 300 - 64 - 128 });
  t.deepEqual(PoolFaults.load(dir).list(), [f], 'POOL/faults.json holds it');
  faults.set({ kind: 'delay', file: 'metadata', delayMs: 1 });
  t.deepEqual(PoolFaults.load(dir).list().map((x) => x.id), [1, 2]);
  t.throws(() => faults.clear([9]), { message: /no fault with id 9/ });
  t.deepEqual(faults.clear([1]).map((x) => x.id), [1]);
  faults.clear();
  t.deepEqual(PoolFaults.load(dir).list(), []);
  fs.writeFileSync(path.join(dir, FAULTS_FILE), '{"version":1,"nextId":1,"faults":[{"kind":"nope"}]}');
  t.throws(() => PoolFaults.load(dir), { message: /not a valid fault list/ });
});

test('a pool opened with faults from POOL/faults.json meets them; the data cache never hides one', async (t) => {
  const dir = tempDir(t);
  const { pool } = await makePool(t, { dir: path.join(dir, 'P') });
  const v = await pool.createDevice('v', MiB);
  await pool.write(v.devId, Buffer.alloc(MiB, 5), 0, v.size);
  await pool.close();
  PoolFaults.load(pool.dir).set({ kind: 'error', file: 'data', ops: ['read'] });
  const faults = PoolFaults.load(pool.dir);
  const { Pool } = await import('../src/pool/pool.js');
  const p2 = await Pool.open(pool.dir, { wrap: faults.wrap, dataCacheBytes: MiB });
  t.teardown(() => p2.close());
  await t.throwsAsync(p2.read(v.devId, Buffer.alloc(4096), 0, v.size), { message: /injected EIO/ });
  faults.clear([], p2);
  const buf = Buffer.alloc(4096);
  await p2.read(v.devId, buf, 0, v.size);
  t.true(buf.every((x) => x === 5));
  // Now cached: a new fault must still be met.
  faults.set({ kind: 'error', file: 'data', ops: ['read'] }, p2);
  await t.throwsAsync(p2.read(v.devId, buf, 0, v.size), { message: /injected EIO/ });
  faults.clear([], p2);
});

// The matrix: every cell in every context.
for (const cell of CELLS) {
  for (const ctx of CONTEXTS) {
    test.serial(`fault matrix: ${cell.name}, ${ctx}`, async (t) => {
      t.timeout(60_000);
      const r = await runCase(cell, ctx);
      t.log(`${r.reaction} | ${r.detail} (${r.ms} ms)`);
      t.true(r.ok, r.detail);
    });
  }
}
