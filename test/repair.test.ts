// `thinfuse check --repair` (issue 5, item 4): pools damaged in each of the
// ways repair handles are rebuilt into a new file that passes thin_check and
// thinfuse's own check, keeps what was readable (compared with thin_dump from
// before the damage), reports what was lost, and never touches the input.

import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { FileBacking } from '../src/io/file-backing.js';
import { sealBlock } from '../src/metadata/checksum.js';
import { checkMetadata as ourCheck } from '../src/pool/check.js';
import { defaultConfig } from '../src/pool/config.js';
import { Pool } from '../src/pool/pool.js';
import { cli, CLI, sha, thinTool } from './_helpers/cli.js';
import { classify, type BlockType } from './_helpers/fuzz.js';
import { checkMetadata, type NormalizedDump, normalizeDump, tempDir } from './_helpers/pool.js';
import { E2E } from './_helpers/serve.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 64 * KiB;

/** A closed pool: a (300 blocks, internal nodes), snapshot s of a with own writes, b (10 blocks). */
async function damagedPool(t: ExecutionContext): Promise<{ dir: string; before: string; blocks: Map<BlockType, number[]>; contents: Map<string, Buffer> }> {
  const dir = path.join(tempDir(t), 'P');
  const pool = await Pool.create(dir, { dataSize: 64 * MiB, metadataSize: 4 * MiB, blockSize: BLOCK, config: defaultConfig() });
  const a = await pool.createDevice('a', 20 * MiB);
  for (let vb = 0; vb < 300; vb++) await pool.write(a.devId, Buffer.alloc(BLOCK, vb & 0xff), vb * BLOCK, a.size);
  const s = await pool.snapshot('a', 's');
  for (let vb = 0; vb < 300; vb += 50) await pool.write(s.devId, Buffer.alloc(BLOCK, 0xee), vb * BLOCK, s.size);
  const b = await pool.createDevice('b', 4 * MiB);
  for (let vb = 0; vb < 10; vb++) await pool.write(b.devId, Buffer.alloc(BLOCK, 0x40 + vb), vb * BLOCK, b.size);
  const contents = new Map<string, Buffer>();
  for (const d of pool.registry.list()) {
    const buf = Buffer.alloc(d.size);
    await pool.read(d.devId, buf, 0, d.size);
    contents.set(d.name, buf);
  }
  await pool.close();
  const before = await checkMetadata(dir);
  const raw = fs.readFileSync(path.join(dir, 'metadata'));
  const pages = new Map<number, Buffer>();
  for (let p = 0; p < raw.length / 4096; p++) pages.set(p, raw.subarray(p * 4096, (p + 1) * 4096));
  return { dir, before, blocks: classify(pages), contents };
}

function patchBlock(dir: string, b: number, fn: (buf: Buffer) => void): void {
  const file = path.join(dir, 'metadata');
  const fd = fs.openSync(file, 'r+');
  const buf = Buffer.alloc(4096);
  fs.readSync(fd, buf, 0, 4096, b * 4096);
  fn(buf);
  fs.writeSync(fd, buf, 0, 4096, b * 4096);
  fs.closeSync(fd);
}

interface Repaired {
  out: string;
  report: Record<string, unknown> & { devicesKept: number[]; devicesDropped: Array<{ devId: number }>; mappingsDropped: number; consistent: boolean };
  dump: NormalizedDump;
}

/** Runs check --repair --json; asserts the input is unchanged and the output passes both checkers. */
async function repair(t: ExecutionContext, dir: string, extra: string[] = []): Promise<Repaired> {
  const meta = path.join(dir, 'metadata');
  const hash = sha(meta);
  const r = cli(['check', dir, '--repair', '--json', ...extra]);
  t.is(sha(meta), hash, 'the input metadata is unchanged');
  t.is(r.status, 0, r.stderr);
  const report = JSON.parse(r.stdout.toString()).result;
  const out = report.output as string;
  t.is(out, path.resolve(meta + '.repaired'));
  t.is(thinTool('thin_check', [out]).status, 0, 'thin_check passes on the repaired metadata');
  const f = FileBacking.open(out, false);
  const ours = ourCheck(f);
  await f.close();
  t.deepEqual(ours.fatal, [], 'thinfuse check passes on the repaired metadata');
  t.deepEqual(ours.nonFatal, []);
  const dump = thinTool('thin_dump', [out]);
  t.is(dump.status, 0);
  t.true(report.consistent);
  return { out, report, dump: await normalizeDump(dump.stdout) };
}

function mappingsOf(d: NormalizedDump, dev: number): Array<[number, number]> {
  return (d.devices.find((x) => x.devId === dev)?.mappings ?? []).map(([vb, time]) => [vb, time]);
}

test('a bad superblock checksum with intact trees loses nothing', async (t) => {
  const { dir, before } = await damagedPool(t);
  patchBlock(dir, 0, (b) => (b[1000]! ^= 0x10));
  t.not(cli(['check', dir]).status, 0, 'check sees the damage');
  const { report, dump } = await repair(t, dir);
  t.is(report.superblock, 'bad checksum, fields used');
  t.deepEqual(report.devicesDropped, []);
  t.is(report.mappingsDropped, 0);
  t.deepEqual(dump, await normalizeDump(before));
});

test('a zeroed superblock: roots found by scanning; the data block size must be given', async (t) => {
  const { dir, before } = await damagedPool(t);
  patchBlock(dir, 0, (b) => b.fill(0));
  const hash = sha(path.join(dir, 'metadata'));
  const r = cli(['check', dir, '--repair']);
  t.is(r.status, 1);
  t.regex(r.stderr, /^thinfuse: .*--data-block-size\n$/);
  t.is(sha(path.join(dir, 'metadata')), hash);
  t.false(fs.existsSync(path.join(dir, 'metadata.repaired')), 'no output is left behind on failure');
  const { report, dump } = await repair(t, dir, ['--data-block-size', '64K', '--transaction-id', '0']);
  t.is(report.superblock, 'rebuilt');
  t.is(report.mappingRoot, 'scan');
  t.is(report.detailsRoot, 'scan');
  const want = await normalizeDump(before);
  t.deepEqual(dump.devices, want.devices, 'every device and mapping is recovered');
});

test('a corrupt leaf of the mapping tree: its mappings are dropped, everything else is kept', async (t) => {
  const { dir, before, blocks } = await damagedPool(t);
  const want = await normalizeDump(before);
  const leaf = blocks.get('bottom leaf')!.find((b) => b > 0)!;
  patchBlock(dir, leaf, (b) => b.fill(0xaa, 100, 200));
  const { report, dump } = await repair(t, dir);
  t.true(report.mappingsDropped > 0, 'the lost mappings are reported');
  t.true((report.badNodes as number) > 0);
  let kept = 0;
  let total = 0;
  for (const d of want.devices) {
    const got = new Set(mappingsOf(dump, d.devId).map(([vb]) => vb));
    const had = mappingsOf(want, d.devId);
    total += had.length;
    for (const [vb] of had) if (got.has(vb)) kept++;
    t.true(mappingsOf(dump, d.devId).every(([vb, time]) => had.some(([v, tm]) => v === vb && tm === time)), 'nothing new appears');
  }
  t.is(total - kept, report.mappingsDropped, 'the report counts exactly what was lost');
  t.deepEqual(mappingsOf(dump, 2), mappingsOf(want, 2), 'device b, which shares nothing, is intact');
});

test('a corrupt internal node of a device tree: the subtree is dropped', async (t) => {
  const { dir, before, blocks } = await damagedPool(t);
  const internal = blocks.get('bottom internal')![0]!;
  patchBlock(dir, internal, (b) => {
    b.writeUInt32LE(77, 16); // nr_entries, resealed: a semantic error, not a checksum one
    sealBlock(b, 'node');
  });
  const { report, dump } = await repair(t, dir);
  const want = await normalizeDump(before);
  t.true(report.mappingsDropped > 0);
  t.deepEqual(mappingsOf(dump, 2), mappingsOf(want, 2));
});

test('a corrupt details tree: devices are kept with rebuilt details', async (t) => {
  const { dir, before, blocks } = await damagedPool(t);
  patchBlock(dir, blocks.get('details')![0]!, (b) => b.fill(0));
  const { report, dump } = await repair(t, dir);
  const want = await normalizeDump(before);
  t.deepEqual(report.devicesKept, [0, 1, 2]);
  t.is(report.mappingsDropped, 0);
  for (const d of want.devices) t.deepEqual(mappingsOf(dump, d.devId), mappingsOf(want, d.devId));
  for (const d of dump.devices) t.is(d.snapTime, dump.time, 'rebuilt details treat every mapping as possibly shared');
});

test('corrupt space maps are rebuilt from the mapping trees', async (t) => {
  const { dir, before, blocks } = await damagedPool(t);
  for (const type of ['data sm bitmap', 'metadata sm bitmap', 'metadata sm index', 'data sm index'] as const) {
    patchBlock(dir, blocks.get(type)![0]!, (b) => b.fill(0x5a, 16));
  }
  const { report, dump } = await repair(t, dir);
  t.true(report.dataSpaceMapUnreadable as boolean);
  t.deepEqual(dump, await normalizeDump(before));
});

test('--in-place needs --backup; with it the old metadata is kept and the pool reopens', async (t) => {
  const { dir, before, contents } = await damagedPool(t);
  patchBlock(dir, 0, (b) => (b[2000]! ^= 1));
  const meta = path.join(dir, 'metadata');
  const hash = sha(meta);
  const r = cli(['check', dir, '--repair', '--in-place']);
  t.is(r.status, 2);
  t.regex(r.stderr, /^thinfuse: --in-place needs --backup/);
  t.is(sha(meta), hash);
  const backup = path.join(path.dirname(dir), 'meta.bak');
  const ok = cli(['check', dir, '--repair', '--in-place', '--backup', backup]);
  t.is(ok.status, 0, ok.stderr);
  t.is(sha(backup), hash, 'the backup is the old metadata');
  t.false(fs.existsSync(path.join(dir, 'metadata.repair-tmp')));
  t.is(cli(['check', dir]).status, 0);
  t.deepEqual(await normalizeDump(await checkMetadata(dir)), await normalizeDump(before));
  const pool = await Pool.open(dir);
  try {
    t.is(pool.mode, 'write');
    for (const d of pool.registry.list()) {
      const buf = Buffer.alloc(d.size);
      await pool.read(d.devId, buf, 0, d.size);
      t.true(buf.equals(contents.get(d.name)!), `${d.name} reads as before`);
    }
  } finally {
    await pool.close();
  }
  t.is(cli(['check', dir, '--repair', '--in-place', '--backup', backup]).status, 2, 'an existing backup is never overwritten');
});

test('needs_check is cleared only when the result passes both checkers', async (t) => {
  const { dir } = await damagedPool(t);
  patchBlock(dir, 0, (b) => {
    b.writeUInt32LE(1, 4); // needs_check
    sealBlock(b, 'superblock');
  });
  const r = cli(['check', dir, '--repair'], undefined);
  t.is(r.status, 0, r.stderr);
  const out = path.join(dir, 'metadata.repaired');
  t.is(fs.readFileSync(out).readUInt32LE(4), 0, 'needs_check cleared: consistent');
  fs.rmSync(out);
  const failing = spawnSync(process.execPath, [CLI, 'check', dir, '--repair'], { env: { ...process.env, THINFUSE_THIN_CHECK: '/bin/false' }, encoding: 'utf8' });
  t.is(failing.status, 1);
  t.regex(failing.stderr, /^thinfuse: .*needs_check stays set\n$/);
  t.is(fs.readFileSync(out).readUInt32LE(4) & 1, 1, 'needs_check left set when thin_check does not pass');
  t.is(cli(['check', dir, '--repair']).status, 2, 'an existing output is never overwritten');
});

test.serial('repair is refused while the pool is served; a repaired pool serves', async (t) => {
  const e = await E2E.start(t, 'thinfuse-repair-');
  fs.rmSync(e.pool, { recursive: true, force: true });
  const src = await damagedPool(t);
  fs.cpSync(src.dir, e.pool, { recursive: true });
  patchBlock(e.pool, 0, (b) => (b[3000]! ^= 4));
  const backup = e.path('meta.bak');
  t.is(cli(['check', e.pool, '--repair', '--in-place', '--backup', backup]).status, 0);
  const s = await e.serve();
  const r = cli(['check', e.pool, '--repair']);
  t.is(r.status, 1);
  t.regex(r.stderr, new RegExp(`^thinfuse: pool .* is being served by thinfuse serve \\(pid ${s.pid}\\); stop the daemon before repairing its metadata\\n$`));
  t.false(fs.existsSync(path.join(e.pool, 'metadata.repaired')));
  for (const [name, want] of src.contents) t.true(fs.readFileSync(path.join(e.mnt, name)).equals(want), `${name} reads as before through FUSE`);
  const exit = await s.stop();
  t.is(exit.code, 0);
});
