// Pool modes and the edges of the engine: out of data space (error, queue,
// timeout), low water, corrupt metadata found during I/O, a full host
// filesystem, the lock, punching freed blocks after the commit, 1 GiB
// blocks in bounded memory, intent records, pools made by thin_restore, and
// written blocks leaving the host page cache after a flush.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { isThinError, ThinError } from '../src/base/errors.js';
import { type DevId, GiB, MiB } from '../src/base/units.js';
import { ForwardingBacking } from '../src/io/forwarding-backing.js';
import { FileBacking } from '../src/io/file-backing.js';
import { Pool } from '../src/pool/pool.js';
import { poolStatus, statusLines } from '../src/pool/status.js';
import { CLI, thinTool } from './_helpers/cli.js';
import { cachedBelow, cachedBytes } from './_helpers/page-cache.js';
import { makePool, openPool, oracle, tempDir } from './_helpers/pool.js';
import { genPoolXml } from './_helpers/xml-gen.js';

const BS = 64 * 1024;

function block(fill: number, len = BS): Buffer {
  return Buffer.alloc(len, fill);
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    return isThinError(e) ? e.code : String(e);
  }
}

function allocatedBytes(file: string): number {
  return fs.statSync(file).blocks * 512;
}

/** Fails writes (past offset 0: block 0 is already allocated on a full disk) with ENOSPC once armed. */
class FullDisk extends ForwardingBacking {
  armed = false;
  override writeSync(b: Buffer, o: number) { this.fail(o); this.inner.writeSync(b, o); }
  override async write(b: Buffer, o: number) { this.fail(o); return this.inner.write(b, o); }
  override async copyWithin(f: number, to: number, l: number) { this.fail(to); return this.inner.copyWithin(f, to, l); }
  private fail(offset: number): void {
    if (this.armed && offset > 0) throw new ThinError('HOST_NO_SPACE', `${this.inner.path}: the host filesystem is full`);
  }
}

test('error_if_no_space: a full pool fails writes at once, and growing it lets them in', async (t) => {
  const { pool, dir } = await makePool(t, { dataSize: 16 * BS, config: { features: { errorIfNoSpace: true } } });
  const d = await pool.createDevice('a', 32 * BS);
  for (let i = 0; i < 16; i++) await pool.write(d.devId, block(i + 1), i * BS, d.size);
  t.is(await code(pool.write(d.devId, block(99), 16 * BS, d.size)), 'NO_DATA_SPACE');
  t.is(pool.mode, 'out_of_data_space');
  t.regex(statusLines(poolStatus(pool))[0]!, / 16\/16 - out_of_data_space discard_passdown error_if_no_space - /);
  t.is(await code(pool.write(d.devId, block(7, 512), 3 * BS + 512, d.size)), 'ok', 'in-place writes still work');
  await pool.resizeData(32 * BS);
  t.is(pool.mode, 'write');
  await pool.write(d.devId, block(99), 16 * BS, d.size);
  const back = Buffer.alloc(BS);
  await pool.read(d.devId, back, 16 * BS, d.size);
  t.true(back.equals(block(99)));
  await pool.close();
  await oracle(t, dir);
});

test('queue_if_no_space: writes wait for space and go on when the pool grows', async (t) => {
  const { pool, dir } = await makePool(t, { dataSize: 4 * BS });
  const d = await pool.createDevice('a', 16 * BS);
  for (let i = 0; i < 4; i++) await pool.write(d.devId, block(1), i * BS, d.size);
  let done = false;
  const waiting = pool.write(d.devId, block(2), 5 * BS, d.size).then(() => (done = true));
  await new Promise((r) => setTimeout(r, 100));
  t.false(done);
  t.is(pool.mode, 'out_of_data_space');
  t.is(pool.noSpacePolicy, 'queue_if_no_space');
  await pool.resizeData(8 * BS);
  await waiting;
  t.true(done);
  t.is(pool.mode, 'write');
  await pool.close();
  await oracle(t, dir);
});

test('queue_if_no_space: the no-space timeout turns waiting writes into ENOSPC', async (t) => {
  const { pool, dir } = await makePool(t, { dataSize: 2 * BS, config: { noSpaceTimeout: 1 } });
  const d = await pool.createDevice('a', 16 * BS);
  await pool.write(d.devId, block(1), 0, d.size);
  await pool.write(d.devId, block(1), BS, d.size);
  const started = Date.now();
  t.is(await code(pool.write(d.devId, block(2), 2 * BS, d.size)), 'NO_DATA_SPACE');
  t.true(Date.now() - started >= 900);
  t.is(pool.noSpacePolicy, 'error_if_no_space', 'status shows the flipped policy, as the kernel does');
  await pool.close();
  await oracle(t, dir);
});

test('space freed by a discard is reused after the commit the allocator asks for', async (t) => {
  const { pool, dir } = await makePool(t, { dataSize: 4 * BS, oneShot: true });
  const d = await pool.createDevice('a', 16 * BS);
  for (let i = 0; i < 4; i++) await pool.write(d.devId, block(i + 1), i * BS, d.size);
  t.is(await pool.discard(d.devId, 0, 2 * BS, d.size), 2);
  await pool.write(d.devId, block(9), 8 * BS, d.size);
  await pool.write(d.devId, block(9), 9 * BS, d.size);
  t.is(pool.md.dsm.nrAllocated, 4);
  await pool.close();
  await oracle(t, dir);
});

test('the low-water event fires once per open', async (t) => {
  const { pool, dir } = await makePool(t, { dataSize: 16 * BS, config: { lowWaterMark: 4 } });
  const d = await pool.createDevice('a', 16 * BS);
  for (let i = 0; i < 11; i++) await pool.write(d.devId, block(1), i * BS, d.size);
  t.is(pool.lowWaterEvents, 0);
  await pool.write(d.devId, block(1), 11 * BS, d.size);
  t.is(pool.lowWaterEvents, 1);
  await pool.write(d.devId, block(1), 12 * BS, d.size);
  t.is(pool.lowWaterEvents, 1);
  t.is(poolStatus(pool).lowWaterEvents, 1);
  await pool.close();
  await oracle(t, dir);
});

test('a corrupt node found during I/O aborts, sets needs_check and goes read-only', async (t) => {
  const { pool, dir } = await makePool(t);
  const d = await pool.createDevice('a', 64 * BS);
  for (let i = 0; i < 8; i++) await pool.write(d.devId, block(i + 1), i * BS, d.size);
  const leaf = pool.md.subtreeRoot(d.devId);
  await pool.close();
  const fd = fs.openSync(path.join(dir, 'metadata'), 'r+');
  fs.writeSync(fd, Buffer.from([0x5a]), 0, 1, leaf * 4096 + 200);
  fs.closeSync(fd);
  const p2 = await openPool(t, dir);
  t.is(await code(p2.read(d.devId, Buffer.alloc(BS), 0, d.size)), 'BAD_METADATA');
  t.is(p2.mode, 'read_only');
  t.true(p2.md.needsCheck);
  t.is(await code(p2.message('create_thin 9')), 'NOT_SUPPORTED');
  await p2.close();
  const p3 = await openPool(t, dir);
  t.is(p3.mode, 'read_only');
  t.regex(statusLines(poolStatus(p3))[0]!, / ro discard_passdown queue_if_no_space needs_check \d+ $/);
  await p3.close();
  const check = thinTool('thin_check', [path.join(dir, 'metadata')]);
  t.not(check.status, 0, 'thin_check sees the corruption too');
});

test('a full host filesystem: data writes act as out of data space, metadata writes abort with needs_check', async (t) => {
  let dataDisk: FullDisk | undefined;
  let metaDisk: FullDisk | undefined;
  const { pool, dir } = await makePool(t, {
    wrap: (f, which) => (which === 'data' ? (dataDisk = new FullDisk(f)) : (metaDisk = new FullDisk(f))),
  });
  const d = await pool.createDevice('a', 64 * BS);
  await pool.write(d.devId, block(1), 0, d.size);
  await pool.commit();
  dataDisk!.armed = true;
  t.is(await code(pool.write(d.devId, block(2), BS, d.size)), 'NO_DATA_SPACE');
  t.is(pool.mode, 'out_of_data_space');
  dataDisk!.armed = false;
  pool.mode = 'write';
  await pool.write(d.devId, block(3), 2 * BS, d.size);
  metaDisk!.armed = true;
  t.is(await code(pool.commit()), 'HOST_NO_SPACE');
  t.is(pool.mode as string, 'read_only');
  t.true(pool.md.needsCheck);
  metaDisk!.armed = false;
  await pool.close();
  await oracle(t, dir);
  const p2 = await openPool(t, dir);
  t.true(p2.md.needsCheck);
  const back = Buffer.alloc(BS);
  await p2.read(d.devId, back, 0, d.size);
  t.true(back.equals(block(1)), 'the last commit survives');
  await p2.close();
});

test('a second process opening the pool is told the holder pid', async (t) => {
  const { pool, dir } = await makePool(t);
  const r = spawnSync(process.execPath, [CLI, 'status', dir]);
  t.not(r.status, 0);
  t.regex(r.stderr.toString(), new RegExp(`in use by process ${process.pid}`));
  t.is(r.stderr.toString().trim().split('\n').length, 1);
  t.is(await code(Pool.open(dir)), 'POOL_LOCKED');
  await pool.close();
  await oracle(t, dir);
});

test('freed blocks are punched only after the commit, and never with no_discard_passdown', async (t) => {
  for (const noDiscardPassdown of [false, true]) {
    const { pool, dir } = await makePool(t, { config: { features: { noDiscardPassdown } } });
    const data = path.join(dir, 'data');
    const d = await pool.createDevice('a', 64 * BS);
    for (let i = 0; i < 16; i++) await pool.write(d.devId, block(i + 1), i * BS, d.size);
    await pool.snapshot('a', 's');
    await pool.commit();
    const full = allocatedBytes(data);
    t.true(full >= 16 * BS);
    await pool.discard(d.devId, 0, 8 * BS, d.size);
    t.is(allocatedBytes(data), full, 'shared blocks are not punched');
    await pool.remove('s'); // commits: the blocks only 's' still held are freed
    const afterRemove = allocatedBytes(data);
    if (noDiscardPassdown) t.is(afterRemove, full);
    else t.true(afterRemove <= full - 8 * BS, `${afterRemove} vs ${full}`);
    await pool.discard(d.devId, 12 * BS, 4 * BS, d.size);
    t.is(allocatedBytes(data), afterRemove, 'nothing is punched before the commit');
    await pool.commit();
    const after = allocatedBytes(data);
    if (noDiscardPassdown) {
      t.is(after, full);
      t.is(await pool.trim(), pool.md.nrDataBlocks - 4);
      t.true(allocatedBytes(data) <= full - 12 * BS);
    } else {
      t.true(after <= afterRemove - 4 * BS, `${after} vs ${afterRemove}`);
    }
    const back = Buffer.alloc(BS);
    await pool.read(d.devId, back, 9 * BS, d.size);
    t.true(back.equals(block(10)));
    await pool.close();
    await oracle(t, dir);
  }
});

test('1 GiB blocks: zeroing and copy-on-write stay within bounded memory', async (t) => {
  const { pool, dir } = await makePool(t, { blockSize: GiB, dataSize: 3 * GiB, metadataSize: 4 * MiB });
  const d = await pool.createDevice('a', 2 * GiB);
  const rss0 = process.memoryUsage().rss;
  await pool.write(d.devId, Buffer.from('origin'), 100, d.size);
  const s = await pool.snapshot('a', 's');
  await pool.write(s.devId, Buffer.from('snapshot'), 200, s.size);
  const grown = process.memoryUsage().rss - rss0;
  t.true(grown < 128 * MiB, `rss grew by ${grown} bytes`);
  const a = Buffer.alloc(300);
  const b = Buffer.alloc(300);
  await pool.read(d.devId, a, 0, d.size);
  await pool.read(s.devId, b, 0, s.size);
  t.is(a.subarray(100, 106).toString(), 'origin');
  t.is(a.subarray(200, 208).toString('hex'), '00'.repeat(8));
  t.is(b.subarray(100, 106).toString(), 'origin');
  t.is(b.subarray(200, 208).toString(), 'snapshot');
  t.is(pool.md.dsm.nrAllocated, 2);
  await pool.close();
  await oracle(t, dir);
});

test('unfinished intents are finished or dropped on open, by dev id only', async (t) => {
  const { pool, dir } = await makePool(t);
  await pool.createDevice('a', 16 * BS);
  await pool.message('create_thin 6');
  await pool.message('create_thin 8');
  await pool.close();
  const reg = path.join(dir, 'devices');
  const cases: Array<[unknown, string[]]> = [
    [{ op: 'add', device: { name: 'ghost', devId: 5, size: BS } }, ['a']],
    [{ op: 'add', device: { name: 'six', devId: 6, size: BS } }, ['a', 'six']],
    [{ op: 'remove', device: { name: 'six', devId: 6, size: BS } }, ['a', 'six']],
  ];
  for (const [intent, names] of cases) {
    const body = JSON.parse(fs.readFileSync(reg, 'utf8'));
    body.intent = intent;
    fs.writeFileSync(reg, JSON.stringify(body));
    const p = await openPool(t, dir);
    t.deepEqual(p.registry.list().map((x) => x.name), names);
    t.is(p.registry.intent, null);
    t.true(p.md.hasDevice(8 as DevId), 'unnamed devices are never touched');
    await p.close();
  }
  await oracle(t, dir);
});

test('a directory made by thin_restore opens with the default features', async (t) => {
  const dir = tempDir(t);
  const xml = path.join(dir, 'in.xml');
  fs.writeFileSync(xml, genPoolXml({ seed: 4, devices: 5, maxMappings: 200, dataBlockSize: 128, nrDataBlocks: 4096 }));
  const meta = path.join(dir, 'metadata');
  (await FileBacking.create(meta, 16 * MiB).close());
  t.is(thinTool('thin_restore', ['-i', xml, '-o', meta]).status, 0);
  fs.rmSync(xml);
  fs.writeFileSync(path.join(dir, 'data'), '');
  fs.truncateSync(path.join(dir, 'data'), 4096 * BS);
  const pool = await openPool(t, dir);
  t.deepEqual(pool.config.features, { skipBlockZeroing: false, ignoreDiscard: false, noDiscardPassdown: false, errorIfNoSpace: false, readOnly: false });
  const first = pool.md.devices()[0]!;
  const named = await pool.activate('restored', first, 400 * BS);
  await pool.write(named.devId, block(5), 0, named.size);
  t.is(pool.usage().length, 5);
  await pool.close();
  await oracle(t, dir);
});

test('a partial first write never shows stale bytes of a reused block, punched or not', async (t) => {
  for (const noDiscardPassdown of [false, true]) {
    const { pool, dir } = await makePool(t, { dataSize: 4 * BS, config: { features: { noDiscardPassdown } } });
    const a = await pool.createDevice('a', 4 * BS);
    for (let i = 0; i < 4; i++) await pool.write(a.devId, block(0xab), i * BS, a.size);
    await pool.remove('a');
    const b = await pool.createDevice('b', 4 * BS);
    for (let i = 0; i < 4; i++) await pool.write(b.devId, Buffer.from('new'), i * BS + 100, b.size);
    for (let i = 0; i < 4; i++) {
      const back = Buffer.alloc(BS);
      await pool.read(b.devId, back, i * BS, b.size);
      const expected = Buffer.alloc(BS);
      expected.write('new', 100);
      t.true(back.equals(expected), `block ${i} (passdown ${!noDiscardPassdown})`);
    }
    await pool.remove('b');
    await pool.close();
    const again = await openPool(t, dir);
    const c = await again.createDevice('c', 4 * BS);
    await again.write(c.devId, block(0xcd), 0, c.size);
    await again.remove('c');
    const d = await again.createDevice('d', 4 * BS);
    await again.write(d.devId, Buffer.from('x'), 7, d.size);
    const back = Buffer.alloc(BS);
    await again.read(d.devId, back, 0, d.size);
    t.is(back.indexOf(0xcd), -1, 'a reopened pool zeroes too');
    await again.close();
    await oracle(t, dir);
  }
});

test('blocks written through the pool leave the host page cache once a flush made them durable, and read back', async (t) => {
  const { pool, dir } = await makePool(t, { dataSize: 256 * BS });
  const d = await pool.createDevice('a', 128 * BS);
  const data = Buffer.alloc(64 * BS);
  for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);
  for (let i = 0; i < 64; i++) await pool.write(d.devId, data.subarray(i * BS, (i + 1) * BS), i * BS, d.size);
  const dataFile = path.join(dir, 'data');
  t.true(cachedBytes(dataFile) >= data.length / 2, 'the writes are in the page cache before the flush');
  await pool.flush();
  const cached = await cachedBelow(dataFile, data.length / 8);
  t.true(cached < data.length / 8, `${cached} of ${data.length} written bytes still cached after the flush`);
  const back = Buffer.alloc(data.length);
  await pool.read(d.devId, back, 0, d.size);
  t.true(back.equals(data), 'the data reads back from the disk');
  await pool.close();
  await oracle(t, dir);
});
