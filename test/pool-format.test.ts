import { requireTool } from './_helpers/tools.js';
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { closeSync, createReadStream, ftruncateSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isThinError } from '../src/base/errors.js';
import { type DataBlock, type DevId, type VirtBlock } from '../src/base/units.js';
import { FileBacking } from '../src/io/file-backing.js';
import { sealBlock } from '../src/metadata/checksum.js';
import { checkMetadata, type CheckReport } from '../src/pool/check.js';
import { dumpMetadata } from '../src/pool/dump.js';
import { PoolMetadata } from '../src/pool/pool-metadata.js';
import { restoreMetadata } from '../src/pool/restore.js';
import { type DumpVisitor, parseDumpXml, XmlDumpWriter } from '../src/pool/xml.js';
import { genLinearDeviceXml, genPoolXml, Rng } from './_helpers/xml-gen.js';

// The metadata format against thin-provisioning-tools 0.9.0:
//   * files written by thin_restore, read by PoolMetadata + dumpMetadata,
//     print exactly what thin_dump prints;
//   * files written by restoreMetadata pass thin_check and thin_dump the same
//     as thin_restore's;
//   * files written by the engine (PoolMetadata changes, metadata snapshots)
//     pass thin_check / thin_check -m, dump the same through both dumpers and
//     match a model of what was mapped;
//   * checkMetadata agrees with thin_check where thin_check looks, and finds
//     what thin_check 0.9.0 does not (data reference counts, mapped_blocks).

const MiB = 1024 * 1024;

//------------------------------------------------------------------------------
// tools


interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function run(tool: string, args: string[]): Run {
  const r = spawnSync(requireTool(tool), args, { encoding: 'utf8', maxBuffer: 1 << 30 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function thinDump(path: string, args: string[] = []): string {
  const r = run('thin_dump', [...args, path]);
  if (r.status !== 0) throw new Error(`thin_dump ${args.join(' ')} ${path} failed (${r.status}): ${r.stderr.trim()}`);
  return r.stdout;
}

function thinRestore(xmlPath: string, metaPath: string): void {
  const r = run('thin_restore', ['-i', xmlPath, '-o', metaPath]);
  if (r.status !== 0) throw new Error(`thin_restore failed (${r.status}): ${r.stderr.trim()}`);
}

function tmpDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'thinfuse-pool-format-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function sparseFile(path: string, size = 64 * MiB): void {
  const fd = openSync(path, 'w');
  ftruncateSync(fd, size);
  closeSync(fd);
}

/** thin_restore's metadata for `xml` at dir/name.meta. */
function toolRestore(dir: string, name: string, xml: string): string {
  const xmlPath = join(dir, `${name}.xml`);
  const meta = join(dir, `${name}.meta`);
  writeFileSync(xmlPath, xml);
  sparseFile(meta);
  thinRestore(xmlPath, meta);
  return meta;
}

function ourDump(md: PoolMetadata, metadataSnap = false): string {
  const chunks: string[] = [];
  dumpMetadata(md, new XmlDumpWriter((c) => chunks.push(c)), { metadataSnap });
  return chunks.join('');
}

/** Opens a metadata file read-only, dumps it, closes it. */
async function dumpFile(path: string, metadataSnap = false): Promise<string> {
  const f = FileBacking.open(path, false);
  try {
    return ourDump(PoolMetadata.open(f), metadataSnap);
  } finally {
    await f.close();
  }
}

async function checkFile(path: string, opts: { metadataSnap?: boolean } = {}): Promise<CheckReport> {
  const f = FileBacking.open(path, false);
  try {
    return checkMetadata(f, opts);
  } finally {
    await f.close();
  }
}

function assertClean(t: ExecutionContext, r: CheckReport, label: string): void {
  t.deepEqual(r.fatal, [], `${label}: checkMetadata fatal`);
  t.deepEqual(r.nonFatal, [], `${label}: checkMetadata non-fatal`);
  t.true(r.ok, `${label}: checkMetadata ok`);
}

/**
 * thin_restore 0.9.0 frees a scratch metadata block after writing the
 * metadata space map's index and root, so nr_free / none_free_before of index
 * entry 0 and the root's nr_allocated are off by that one block. Those
 * (non-fatal, report-only) messages are expected on its files.
 */
const THIN_RESTORE_QUIRKS = [
  /^metadata space map: index entry 0 says nr_free \d+, but bitmap \d+ has \d+ free blocks$/,
  /^metadata space map: index entry 0 says none_free_before \d+, but slot \d+ is free$/,
  /^metadata space map: the root says \d+ blocks are allocated, the bitmaps have \d+$/,
];

function withoutQuirks(msgs: string[]): string[] {
  return msgs.filter((m) => !THIN_RESTORE_QUIRKS.some((q) => q.test(m)));
}

function assertCleanThinRestore(t: ExecutionContext, r: CheckReport, label: string): void {
  t.deepEqual(r.fatal, [], `${label}: checkMetadata fatal`);
  t.deepEqual(withoutQuirks(r.nonFatal), [], `${label}: checkMetadata non-fatal`);
  t.true(r.ok, `${label}: checkMetadata ok`);
}

function assertThinCheck(t: ExecutionContext, path: string, label: string, args: string[] = []): Run {
  const r = run('thin_check', [...args, path]);
  t.is(r.status, 0, `${label}: thin_check ${args.join(' ')} failed: ${r.stderr.trim()} ${r.stdout.trim()}`);
  return r;
}

//------------------------------------------------------------------------------
// inputs

const REFERENCE_EXAMPLE = `<superblock uuid="" time="1" transaction="3" flags="0" version="2" data_block_size="128" nr_data_blocks="1024">
  <device dev_id="0" mapped_blocks="6" transaction="0" creation_time="0" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="4" time="0"/>
    <single_mapping origin_block="10" data_block="20" time="0"/>
    <single_mapping origin_block="11" data_block="30" time="1"/>
  </device>
  <device dev_id="1" mapped_blocks="5" transaction="1" creation_time="1" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="4" time="0"/>
    <single_mapping origin_block="10" data_block="20" time="0"/>
  </device>
</superblock>
`;

interface Case {
  name: string;
  xml: () => string;
}

const CASES: Case[] = [
  { name: 'reference-example', xml: () => REFERENCE_EXAMPLE },
  { name: 'empty-pool', xml: () => '<superblock uuid="" time="0" transaction="0" data_block_size="128" nr_data_blocks="100"></superblock>' },
  {
    name: 'needs-check-flag',
    xml: () => '<superblock uuid="" time="7" transaction="12345678901" flags="1" version="2" data_block_size="256" nr_data_blocks="10">\n' +
      '  <device dev_id="16777215" mapped_blocks="0" transaction="3" creation_time="2" snap_time="7">\n  </device>\n</superblock>\n',
  },
  // > 126 devices: internal nodes in the details tree and the top level.
  { name: 'many-devices', xml: () => genPoolXml({ seed: 11, devices: 300, maxMappings: 60, dataBlockSize: 128, nrDataBlocks: 100_000, snapshotChains: 3 }) },
  { name: 'long-chains-384', xml: () => genPoolXml({ seed: 12, devices: 40, maxMappings: 2000, dataBlockSize: 384, nrDataBlocks: 200_000, snapshotChains: 30 }) },
  { name: 'big-blocks-2097152', xml: () => genPoolXml({ seed: 13, devices: 10, maxMappings: 5000, dataBlockSize: 2097152, nrDataBlocks: 60_000, snapshotChains: 5 }) },
  { name: 'nearly-full-pool', xml: () => genPoolXml({ seed: 14, devices: 12, maxMappings: 600, dataBlockSize: 1024, nrDataBlocks: 900, snapshotChains: 4 }) },
  { name: 'linear-range-384', xml: () => genLinearDeviceXml(100_000, 384, 120_000) },
  { name: 'linear-singles-2097152', xml: () => genLinearDeviceXml(30_000, 2097152, 40_000, { random: true, seed: 5 }) },
];

//------------------------------------------------------------------------------
// 1. thin_restore -> PoolMetadata.open + dumpMetadata == thin_dump

test('thin_restore output dumps through dumpMetadata exactly as thin_dump prints it, and checks clean', async (t) => {
  const dir = tmpDir(t);
  for (const c of CASES) {
    const meta = toolRestore(dir, c.name, c.xml());
    const expected = thinDump(meta);
    t.is(await dumpFile(meta), expected, `${c.name}: dumpMetadata differs from thin_dump`);
    assertCleanThinRestore(t, await checkFile(meta), c.name);
  }
});

//------------------------------------------------------------------------------
// 2. restoreMetadata -> thin_check, thin_dump == thin_dump of thin_restore's file

test('restoreMetadata writes metadata that thin_check accepts and thin_dump prints like thin_restore output', async (t) => {
  const dir = tmpDir(t);
  for (const [i, c] of CASES.entries()) {
    const xml = c.xml();
    const reference = thinDump(toolRestore(dir, `${c.name}-tools`, xml));
    const meta = join(dir, `${c.name}-ours.meta`);
    const f = FileBacking.create(meta, 64 * MiB);
    // Every other case is read from a stream.
    let input: string | NodeJS.ReadableStream = xml;
    if (i % 2 === 1) {
      const xmlPath = join(dir, `${c.name}-ours.xml`);
      writeFileSync(xmlPath, xml);
      input = createReadStream(xmlPath, { highWaterMark: 4096 });
    }
    const md = await restoreMetadata(f, input);
    t.is(ourDump(md), reference, `${c.name}: dump of the restored metadata (in memory)`);
    await f.close();
    const r = assertThinCheck(t, meta, c.name);
    t.regex(r.stdout, /^TRANSACTION_ID=\d+$/m);
    t.is(thinDump(meta), reference, `${c.name}: thin_dump of our restore differs from thin_dump of thin_restore's`);
    t.is(await dumpFile(meta), reference, `${c.name}: dumpMetadata after reopening`);
    const report = await checkFile(meta);
    assertClean(t, report, c.name);
    t.is(String(report.info.transactionId), /^TRANSACTION_ID=(\d+)$/m.exec(r.stdout)![1]!);
  }
});

test('restoreMetadata rejects bad input and leaves block 0 untouched', async (t) => {
  const dir = tmpDir(t);
  const meta = join(dir, 'target.meta');
  const f = FileBacking.create(meta, 16 * MiB);
  t.teardown(() => f.close());
  // An existing pool in the file: a failed restore must not disturb its superblock.
  await restoreMetadata(f, REFERENCE_EXAMPLE);
  const before = readFileSync(meta);

  const bad: Array<[string, string, string, RegExp]> = [
    [
      'beyond the data device',
      '<superblock uuid="" time="0" transaction="0" data_block_size="128" nr_data_blocks="64">\n' +
        '  <device dev_id="0" mapped_blocks="1" transaction="0" creation_time="0" snap_time="0">\n' +
        '    <range_mapping origin_begin="0" data_begin="0" length="10" time="0"/>\n' +
        '    <single_mapping origin_block="100" data_block="100" time="0"/>\n  </device>\n</superblock>\n',
      'BAD_XML', /mapping beyond end of data device \(100 >= 64\)/,
    ],
    [
      'duplicate device',
      '<superblock uuid="" time="0" transaction="0" data_block_size="128" nr_data_blocks="64">\n' +
        '  <device dev_id="3" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0">\n  </device>\n' +
        '  <device dev_id="3" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0">\n  </device>\n</superblock>\n',
      'DEV_EXISTS', /device 3 appears twice/,
    ],
    [
      'duplicate virtual block',
      '<superblock uuid="" time="0" transaction="0" data_block_size="128" nr_data_blocks="64">\n' +
        '  <device dev_id="0" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0">\n' +
        '    <range_mapping origin_begin="5" data_begin="0" length="10" time="0"/>\n' +
        '    <single_mapping origin_block="7" data_block="40" time="0"/>\n  </device>\n</superblock>\n',
      'BAD_XML', /maps virtual block 7 twice/,
    ],
    [
      'data block size',
      '<superblock uuid="" time="0" transaction="0" data_block_size="100" nr_data_blocks="64"></superblock>',
      'BAD_XML', /data_block_size 100/,
    ],
    [
      'dev id above 24 bits',
      '<superblock uuid="" time="0" transaction="0" data_block_size="128" nr_data_blocks="64">\n' +
        '  <device dev_id="16777216" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0">\n  </device>\n</superblock>\n',
      'BAD_XML', /dev_id 16777216/,
    ],
    ['truncated XML', REFERENCE_EXAMPLE.slice(0, 300), 'BAD_XML', /XML/],
  ];
  for (const [name, xml, code, msg] of bad) {
    const e = await t.throwsAsync(restoreMetadata(f, xml), undefined, name);
    t.true(isThinError(e), `${name}: ${String(e)}`);
    t.is((e as { code?: string }).code, code, `${name}: ${e?.message}`);
    t.regex(e!.message, msg, name);
    t.false(e!.message.includes('\n'), `${name}: one-line message`);
    t.true(readFileSync(meta).equals(before), `${name}: the file changed`);
  }
  t.is(thinDump(meta), REFERENCE_EXAMPLE);

  // Out-of-order (but distinct) mappings are fine.
  const unordered =
    '<superblock uuid="" time="0" transaction="0" data_block_size="128" nr_data_blocks="64">\n' +
    '  <device dev_id="0" mapped_blocks="9" transaction="0" creation_time="0" snap_time="0">\n' +
    '    <single_mapping origin_block="9" data_block="9" time="0"/>\n' +
    '    <single_mapping origin_block="1" data_block="1" time="0"/>\n' +
    '    <single_mapping origin_block="5" data_block="5" time="0"/>\n  </device>\n</superblock>\n';
  const md = await restoreMetadata(f, unordered);
  t.is(ourDump(md), '<superblock uuid="" time="0" transaction="0" flags="0" version="1" data_block_size="128" nr_data_blocks="64">\n' +
    '  <device dev_id="0" mapped_blocks="3" transaction="0" creation_time="0" snap_time="0">\n' +
    '    <single_mapping origin_block="1" data_block="1" time="0"/>\n' +
    '    <single_mapping origin_block="5" data_block="5" time="0"/>\n' +
    '    <single_mapping origin_block="9" data_block="9" time="0"/>\n  </device>\n</superblock>\n');
  assertThinCheck(t, meta, 'unordered');
});

//------------------------------------------------------------------------------
// 3. the engine's own changes

type Model = Map<number, Map<number, number>>;

function cloneModel(m: Model): Model {
  return new Map([...m].map(([d, maps]) => [d, new Map(maps)]));
}

/** Device -> (virtual block -> data block) of a dump. */
async function modelOfDump(xml: string): Promise<Model> {
  const m: Model = new Map();
  let cur: Map<number, number> | undefined;
  const v: DumpVisitor = {
    superblockBegin: () => {},
    deviceBegin: (d) => {
      cur = new Map();
      m.set(d.devId, cur);
    },
    mapping: (x) => cur!.set(x.originBlock, x.dataBlock),
    deviceEnd: () => {},
    superblockEnd: () => {},
  };
  await parseDumpXml(xml, v);
  return m;
}

function sortedModel(m: Model): Array<[number, Array<[number, number]>]> {
  return [...m].sort((a, b) => a[0] - b[0]).map(([d, maps]) => [d, [...maps].sort((a, b) => a[0] - b[0])]);
}

/** thin_ls's DEV MAPPED EXCLUSIVE SHARED computed from a model of the dump. */
function lsOfModel(m: Model): string[] {
  const users = new Map<number, number>();
  for (const maps of m.values()) for (const b of maps.values()) users.set(b, (users.get(b) ?? 0) + 1);
  return [...m].sort((a, b) => a[0] - b[0]).map(([d, maps]) => {
    let excl = 0;
    for (const b of maps.values()) if (users.get(b) === 1) excl++;
    return `${d} ${maps.size} ${excl} ${maps.size - excl}`;
  });
}

interface EngineState {
  md: PoolMetadata;
  path: string;
  model: Model;
  snapModel: Model | undefined;
}

/** Commits, then checks the file from every side. */
async function commitAndVerify(t: ExecutionContext, s: EngineState, label: string): Promise<void> {
  await s.md.commit(async () => {});
  const { md, path } = s;
  assertThinCheck(t, path, label);
  const dumped = thinDump(path);
  t.is(ourDump(md), dumped, `${label}: dumpMetadata (live) differs from thin_dump`);
  t.is(await dumpFile(path), dumped, `${label}: dumpMetadata (reopened) differs from thin_dump`);
  const seen = await modelOfDump(dumped);
  t.deepEqual(sortedModel(seen), sortedModel(s.model), `${label}: mappings differ from the model`);
  for (const dev of md.devices()) t.is(md.getDetails(dev).mappedBlocks, s.model.get(dev)!.size, `${label}: mapped_blocks of ${dev}`);

  if (md.sb.heldRoot !== 0) {
    assertThinCheck(t, path, `${label} (-m)`, ['-m']);
    const snapDump = thinDump(path, ['-m']);
    t.is(ourDump(md, true), snapDump, `${label}: dumpMetadata -m differs from thin_dump -m`);
    t.regex(snapDump, /nr_data_blocks="0"/);
    t.deepEqual(sortedModel(await modelOfDump(snapDump)), sortedModel(s.snapModel!), `${label}: the metadata snapshot changed`);
    assertClean(t, await checkFile(path, { metadataSnap: true }), `${label} (snapshot)`);
  } else {
    const e = t.throws(() => ourDump(md, true));
    t.is((e as { code?: string }).code, 'SNAP_NOT_HELD');
  }
  assertClean(t, await checkFile(path), label);

  const ls = run('thin_ls', ['-o', 'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS', '--no-headers', path]);
  t.is(ls.status, 0, `${label}: thin_ls failed: ${ls.stderr}`);
  const rows = ls.stdout.split('\n').filter((l) => l.trim() !== '').map((l) => l.trim().split(/\s+/).join(' '));
  t.deepEqual(rows, lsOfModel(s.model), `${label}: thin_ls`);
}

test('PoolMetadata changes pass thin_check, dump like thin_dump and check clean', async (t) => {
  const dir = tmpDir(t);
  const path = join(dir, 'engine.meta');
  const file = FileBacking.create(path, 64 * MiB);
  t.teardown(() => file.close());
  const md = PoolMetadata.format(file, 128, 60_000);
  const s: EngineState = { md, path, model: new Map(), snapModel: undefined };
  const rng = new Rng(42);
  const dev = (n: number) => n as DevId;

  const thin = (d: number): void => {
    md.createThin(dev(d));
    s.model.set(d, new Map());
  };
  const snap = (d: number, origin: number): void => {
    md.createSnap(dev(d), dev(origin));
    s.model.set(d, new Map(s.model.get(origin)!));
  };
  const write = (d: number, vb: number): boolean => {
    const b = md.allocData();
    if (b === undefined) return false;
    md.insertMapping(dev(d), vb as VirtBlock, b);
    s.model.get(d)!.set(vb, b);
    return true;
  };
  const unmap = (d: number, vb: number): void => {
    const got = md.removeMapping(dev(d), vb as VirtBlock);
    const want = s.model.get(d)!.get(vb);
    t.is(got, want as DataBlock | undefined, `removeMapping(${d}, ${vb})`);
    s.model.get(d)!.delete(vb);
  };
  const del = (d: number): void => {
    md.deleteDevice(dev(d));
    s.model.delete(d);
  };

  // A fresh pool with one empty device.
  thin(0);
  await commitAndVerify(t, s, 'empty thin');

  // Sequential writes (ranges), then scattered ones (singles).
  for (let vb = 0; vb < 3000; vb++) write(0, vb);
  thin(1);
  for (let i = 0; i < 2000; i++) write(1, rng.int(100_000));
  await commitAndVerify(t, s, 'writes');

  // A snapshot, then overwrites of shared blocks on the origin and on the snapshot.
  snap(2, 0);
  for (let vb = 0; vb < 3000; vb += 3) write(0, vb);
  for (let vb = 1; vb < 3000; vb += 7) write(2, vb);
  await commitAndVerify(t, s, 'snapshot + overwrite');

  // A long snapshot chain with divergence at every link.
  let origin = 2;
  for (let d = 10; d < 30; d++) {
    snap(d, origin);
    for (let i = 0; i < 50; i++) write(d, rng.int(3500));
    for (let i = 0; i < 20; i++) write(origin, rng.int(3500));
    origin = d;
    if (d % 5 === 0) await commitAndVerify(t, s, `chain ${d}`);
  }
  await commitAndVerify(t, s, 'chain');

  // Unmapping: from a snapshot (shared leaves), whole ranges (rebalancing).
  for (let vb = 0; vb < 3000; vb++) if (vb % 5 !== 0) unmap(2, vb);
  for (let vb = 500; vb < 2500; vb++) unmap(0, vb);
  await commitAndVerify(t, s, 'unmap');

  // A metadata snapshot, then changes while it is held.
  md.reserveMetadataSnap();
  s.snapModel = cloneModel(s.model);
  await commitAndVerify(t, s, 'reserve');
  for (let vb = 0; vb < 600; vb++) write(0, vb);
  for (const vb of [...s.model.get(1)!.keys()].slice(0, 1500)) unmap(1, vb);
  del(15);
  thin(40);
  for (let vb = 0; vb < 700; vb++) write(40, vb * 2);
  snap(41, 40);
  await commitAndVerify(t, s, 'changes while held');
  del(0);
  del(41);
  await commitAndVerify(t, s, 'deletes while held');
  md.releaseMetadataSnap();
  s.snapModel = undefined;
  await commitAndVerify(t, s, 'release');

  // Random operations, committed and verified round by round, with metadata
  // snapshots reserved and released along the way.
  let nextDev = 100;
  for (let round = 0; round < 10; round++) {
    for (let op = 0; op < 400; op++) {
      const devs = [...s.model.keys()];
      const k = rng.int(100);
      if (devs.length === 0 || k < 3) {
        thin(nextDev++);
      } else if (k < 5) {
        snap(nextDev++, devs[rng.int(devs.length)]!);
      } else if (k < 9 && devs.length > 10) {
        del(devs[rng.int(devs.length)]!);
      } else if (k < 70) {
        const d = devs[rng.int(devs.length)]!;
        const base = rng.int(4000);
        const n = 1 + rng.int(40);
        for (let i = 0; i < n; i++) if (!write(d, base + i)) break;
      } else {
        const d = devs[rng.int(devs.length)]!;
        const keys = [...s.model.get(d)!.keys()];
        const n = 1 + rng.int(60);
        const from = rng.int(Math.max(1, keys.length));
        for (let i = 0; i < n && from + i < keys.length; i++) unmap(d, keys[from + i]!);
      }
    }
    if (round % 3 === 1) {
      if (md.sb.heldRoot === 0) {
        // Reserve straight after uncommitted changes: the copy must still be consistent.
        md.reserveMetadataSnap();
        s.snapModel = cloneModel(s.model);
      } else {
        md.releaseMetadataSnap();
        s.snapModel = undefined;
      }
    }
    await commitAndVerify(t, s, `random round ${round}`);
  }
  t.log(`engine: ${md.devices().length} devices, ${md.dsm.nrAllocated} data blocks in use, metadata ${JSON.stringify(md.metadataUsage())}`);
});

// ENGINE BUG (kept as a known failure; ava will say so once it is fixed):
// reserveMetadataSnap copies the in-memory superblock, whose mapping root
// includes the open transaction's changes, but whose details root does not
// (changed details reach the details tree only at commit). The kernel commits
// first (__reserve_metadata_snap), so its copy is consistent. Here the
// snapshot's details disagree with its mapping tree: thin_check -m 0.9.0
// passes, thin_dump -m fails ("metadata contains errors").
test('metadata snapshot reserved with uncommitted changes is consistent', async (t) => {
  const dir = tmpDir(t);
  const path = join(dir, 'reserve.meta');
  const file = FileBacking.create(path, 16 * MiB);
  t.teardown(() => file.close());
  const md = PoolMetadata.format(file, 128, 1000);
  md.createThin(0 as DevId);
  await md.commit(async () => {});
  md.insertMapping(0 as DevId, 0 as VirtBlock, md.allocData()!);
  md.createThin(1 as DevId);
  md.reserveMetadataSnap();
  await md.commit(async () => {});
  assertThinCheck(t, path, 'reserve', ['-m']);
  t.deepEqual((await checkFile(path, { metadataSnap: true })).fatal, []);
  t.is(run('thin_dump', ['-m', path]).status, 0, 'thin_dump -m');
  t.is(ourDump(md, true), ourDump(md).replace(/nr_data_blocks="\d+"/, 'nr_data_blocks="0"'));
});

//------------------------------------------------------------------------------
// 4. corruption thin_check 0.9.0 misses, and some it finds

interface Layout {
  dataBitmap: number;
  metaBitmap: number;
  detailsRoot: number;
  mappingRoot: number;
}

function readBlock(path: string, b: number): Buffer {
  const buf = Buffer.alloc(4096);
  const fd = openSync(path, 'r');
  readSync(fd, buf, 0, 4096, b * 4096);
  closeSync(fd);
  return buf;
}

function writeBlock(path: string, b: number, buf: Buffer): void {
  const fd = openSync(path, 'r+');
  writeSync(fd, buf, 0, 4096, b * 4096);
  closeSync(fd);
}

/** Finds the first bitmaps and the tree roots straight from the bytes (small pools only). */
function layout(path: string): Layout {
  const sb = readBlock(path, 0);
  const u64 = (buf: Buffer, off: number) => Number(buf.readBigUInt64LE(off));
  // Data space map: its bitmap_root is a btree leaf (index entries, 16 bytes).
  const index = readBlock(path, u64(sb, 64 + 16));
  if (index.readUInt32LE(4) !== 2 || index.readUInt32LE(24) !== 16) throw new Error('data sm index root is not a 16-byte leaf');
  const dataBitmap = u64(index, 32 + 8 * index.readUInt32LE(20));
  // Metadata space map: an index block, entries from offset 16.
  const metaIndex = readBlock(path, u64(sb, 192 + 16));
  const metaBitmap = u64(metaIndex, 16);
  return { dataBitmap, metaBitmap, detailsRoot: u64(sb, 328), mappingRoot: u64(sb, 320) };
}

/** Count of slot s in a bitmap block: bit 2j high, bit 2j+1 low. */
function bitmapCount(buf: Buffer, s: number): number {
  const w = buf.readUInt32LE(16 + 4 * Math.floor(s / 16));
  const j = s % 16;
  return ((w >>> (2 * j)) & 1) * 2 + ((w >>> (2 * j + 1)) & 1);
}

function setBitmapCount(buf: Buffer, s: number, count: number): void {
  const off = 16 + 4 * Math.floor(s / 16);
  const j = s % 16;
  let w = buf.readUInt32LE(off) & ~(3 << (2 * j));
  w |= ((count >> 1) & 1) << (2 * j);
  w |= (count & 1) << (2 * j + 1);
  buf.writeUInt32LE(w >>> 0, off);
}

function patchBitmap(path: string, b: number, slot: number, from: number, to: number): void {
  const buf = readBlock(path, b);
  if (bitmapCount(buf, slot) !== from) throw new Error(`bitmap ${b} slot ${slot} holds ${bitmapCount(buf, slot)}, not ${from}`);
  setBitmapCount(buf, slot, to);
  sealBlock(buf, 'bitmap');
  writeBlock(path, b, buf);
}

/** A fresh thin_restore'd copy of the reference example (dev 0 and 1 share data blocks 0-3 and 20; 30 is dev 0's alone). */
function fixture(dir: string, name: string): string {
  return toolRestore(dir, name, REFERENCE_EXAMPLE);
}

test('checkMetadata finds data reference counts and mapped_blocks that thin_check 0.9.0 lets pass', async (t) => {
  const dir = tmpDir(t);

  // Sanity: the fixture as thin_restore wrote it.
  const clean = fixture(dir, 'clean');
  assertThinCheck(t, clean, 'clean');
  assertCleanThinRestore(t, await checkFile(clean), 'clean');
  const L = layout(clean);
  const dbm = readBlock(clean, L.dataBitmap);
  t.deepEqual([0, 1, 2, 3, 20, 30, 31].map((s) => bitmapCount(dbm, s)), [2, 2, 2, 2, 2, 1, 0]);

  // (a1) data block 0: count 2 -> 1 (under-counted: freeing one device's copy would free the other's data).
  const under = fixture(dir, 'data-under');
  patchBitmap(under, L.dataBitmap, 0, 2, 1);
  assertThinCheck(t, under, 'data under-count (0.9.0 does not look)');
  let r = await checkFile(under);
  t.false(r.ok);
  t.true(r.fatal.some((m) => /^data block 0: reference count 1 on disk, 2 .*under-counted/.test(m)), r.fatal.join(' | '));
  t.deepEqual(withoutQuirks(r.nonFatal), []);

  // (a2) data block 30: count 1 -> 2 (a leak: non-fatal).
  const leak = fixture(dir, 'data-leak');
  patchBitmap(leak, L.dataBitmap, 30, 1, 2);
  assertThinCheck(t, leak, 'data leak (0.9.0 does not look)');
  r = await checkFile(leak);
  t.true(r.ok, r.fatal.join(' | '));
  t.deepEqual(r.fatal, []);
  t.true(r.nonFatal.some((m) => /^data block 30: reference count 2 on disk, 1 .*leaked/.test(m)), r.nonFatal.join(' | '));

  // (a3) a free data block marked in use: also a leak.
  const leak2 = fixture(dir, 'data-leak-free');
  patchBitmap(leak2, L.dataBitmap, 500, 0, 1);
  assertThinCheck(t, leak2, 'data leak of a free block');
  r = await checkFile(leak2);
  t.true(r.ok);
  t.true(r.nonFatal.some((m) => /^data block 500: reference count 1 on disk, 0/.test(m)), r.nonFatal.join(' | '));

  // (b) device 0's mapped_blocks 6 -> 7 in the details leaf.
  const mapped = fixture(dir, 'mapped-blocks');
  const details = readBlock(mapped, L.detailsRoot);
  t.is(details.readUInt32LE(4), 2);
  t.is(Number(details.readBigUInt64LE(32)), 0, 'first key is device 0');
  const v0 = 32 + 8 * details.readUInt32LE(20);
  t.is(Number(details.readBigUInt64LE(v0)), 6);
  details.writeBigUInt64LE(7n, v0);
  sealBlock(details, 'node');
  writeBlock(mapped, L.detailsRoot, details);
  assertThinCheck(t, mapped, 'mapped_blocks (0.9.0 does not look)');
  t.regex(thinDump(mapped), /dev_id="0" mapped_blocks="7"/);
  r = await checkFile(mapped);
  t.false(r.ok);
  t.true(r.fatal.some((m) => /device 0: details say mapped_blocks 7, but its mapping tree holds 6 mappings/.test(m)), r.fatal.join(' | '));
  t.deepEqual(withoutQuirks(r.nonFatal), []);
});

test('checkMetadata agrees with thin_check on metadata corruption', async (t) => {
  const dir = tmpDir(t);
  const L = layout(fixture(dir, 'probe'));

  // A free metadata block marked in use: thin_check 0.9.0 fails on metadata leaks; ours calls it non-fatal.
  const leak = fixture(dir, 'meta-leak');
  patchBitmap(leak, L.metaBitmap, 100, 0, 1);
  t.not(run('thin_check', [leak]).status, 0, 'thin_check should fail on a metadata leak');
  t.is(run('thin_check', ['--ignore-non-fatal-errors', leak]).status, 0);
  let r = await checkFile(leak);
  t.true(r.ok);
  t.true(r.nonFatal.some((m) => /^metadata block 100: reference count 1 on disk, 0 expected \(leaked\)/.test(m)), r.nonFatal.join(' | '));

  // The details root's count 1 -> 0: under-counted, fatal for both.
  const under = fixture(dir, 'meta-under');
  patchBitmap(under, L.metaBitmap, L.detailsRoot, 1, 0);
  t.not(run('thin_check', [under]).status, 0);
  r = await checkFile(under);
  t.false(r.ok);
  t.true(r.fatal.some((m) => m.startsWith(`metadata block ${L.detailsRoot}: reference count 0 on disk, 1 expected`)), r.fatal.join(' | '));

  // A mapping leaf with a broken checksum.
  const csum = fixture(dir, 'bad-checksum');
  const top = readBlock(csum, L.mappingRoot);
  const leafBlock = Number(top.readBigUInt64LE(32 + 8 * top.readUInt32LE(20)));
  const leaf = readBlock(csum, leafBlock);
  leaf[40] = leaf[40]! ^ 0xff;
  writeBlock(csum, leafBlock, leaf);
  t.not(run('thin_check', [csum]).status, 0);
  r = await checkFile(csum);
  t.false(r.ok);
  t.true(r.fatal.some((m) => m.includes(`block ${leafBlock} has a bad btree node checksum`)), r.fatal.join(' | '));
  await t.throwsAsync(dumpFile(csum), { code: 'BAD_METADATA' }, 'dumpMetadata on a bad node');

  // Keys out of order in a mapping leaf (resealed, so only the order is wrong).
  const order = fixture(dir, 'key-order');
  const leaf2 = readBlock(order, leafBlock);
  const k0 = leaf2.readBigUInt64LE(32);
  leaf2.writeBigUInt64LE(leaf2.readBigUInt64LE(40), 32);
  leaf2.writeBigUInt64LE(k0, 40);
  sealBlock(leaf2, 'node');
  writeBlock(order, leafBlock, leaf2);
  t.not(run('thin_check', [order]).status, 0);
  r = await checkFile(order);
  t.false(r.ok);
  t.true(r.fatal.some((m) => /keys out of order/.test(m)), r.fatal.join(' | '));
  await t.throwsAsync(dumpFile(order), { code: 'BAD_METADATA', message: /out of order/ }, 'dumpMetadata on unordered keys');

  // A non-root leaf with fewer than max_entries / 3 entries (thin_restore builds 126-entry leaves).
  const few = toolRestore(dir, 'underfull', genLinearDeviceXml(1000, 128, 2000, { random: true, seed: 9 }));
  const fewTop = readBlock(few, layout(few).mappingRoot);
  const fewRoot = Number(fewTop.readBigUInt64LE(32 + 8 * fewTop.readUInt32LE(20)));
  const internal = readBlock(few, fewRoot);
  t.is(internal.readUInt32LE(4), 1, 'a 1000-mapping device has an internal root');
  const firstLeaf = Number(internal.readBigUInt64LE(32 + 8 * internal.readUInt32LE(20)));
  const leaf3 = readBlock(few, firstLeaf);
  t.true(leaf3.readUInt32LE(16) >= 84);
  leaf3.writeUInt32LE(60, 16);
  sealBlock(leaf3, 'node');
  writeBlock(few, firstLeaf, leaf3);
  t.not(run('thin_check', [few]).status, 0);
  r = await checkFile(few);
  t.false(r.ok);
  t.true(r.fatal.some((m) => m.includes(`btree node ${firstLeaf} is not a root but holds only 60 of 252 entries`)), r.fatal.join(' | '));
  t.true(r.fatal.some((m) => /device 0: details say mapped_blocks 1000, but its mapping tree holds \d+ mappings/.test(m)), r.fatal.join(' | '));

  // A bad superblock checksum.
  const sbad = fixture(dir, 'sb');
  const sb = readBlock(sbad, 0);
  sb[100] = sb[100]! ^ 1;
  writeBlock(sbad, 0, sb);
  t.not(run('thin_check', [sbad]).status, 0);
  r = await checkFile(sbad);
  t.false(r.ok);
  t.deepEqual(r.fatal, ['superblock: bad checksum']);

  // A data block beyond the data device: shrink nr_data_blocks in the superblock's data space map root.
  const beyond = fixture(dir, 'beyond');
  const sb2 = readBlock(beyond, 0);
  sb2.writeBigUInt64LE(25n, 64);
  sealBlock(sb2, 'superblock');
  writeBlock(beyond, 0, sb2);
  r = await checkFile(beyond);
  t.false(r.ok);
  t.true(r.fatal.some((m) => /virtual block 11 maps to data block 30, beyond the end of the data device \(25 blocks\)/.test(m)), r.fatal.join(' | '));
  t.log(`thin_check 0.9.0 on a mapping beyond nr_data_blocks: exit ${run('thin_check', [beyond]).status}`);
});

//------------------------------------------------------------------------------
// 5. scale

test('one device with 1M mappings: restore, dump and check times', async (t) => {
  const dir = tmpDir(t);
  const N = 1_000_000;
  const xml = genLinearDeviceXml(N, 128, N + 1000);
  const meta = join(dir, 'big.meta');
  const f = FileBacking.create(meta, 256 * MiB);
  let t0 = performance.now();
  await restoreMetadata(f, xml);
  const restoreMs = performance.now() - t0;
  await f.close();

  t0 = performance.now();
  const ours = await dumpFile(meta);
  const dumpMs = performance.now() - t0;
  t0 = performance.now();
  const report = await checkFile(meta);
  const checkMs = performance.now() - t0;
  assertClean(t, report, '1M');
  assertThinCheck(t, meta, '1M');
  t.is(ours, thinDump(meta));
  t.log(`1M mappings: restoreMetadata ${restoreMs.toFixed(0)} ms, dumpMetadata ${dumpMs.toFixed(0)} ms, checkMetadata ${checkMs.toFixed(0)} ms`);
});
