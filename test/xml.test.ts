import { findTool } from './_helpers/tools.js';
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, openSync, closeSync, ftruncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { isThinError } from '../src/base/errors.js';
import {
  parseDumpXml,
  XmlDumpWriter,
  type DeviceIR,
  type DumpVisitor,
  type MappingIR,
  type SuperblockIR,
} from '../src/pool/xml.js';
import { genLinearDeviceXml, genPoolXml } from './_helpers/xml-gen.js';

// --- helpers ---------------------------------------------------------------


function tmpDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'thinfuse-xml-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function rewrite(input: string | NodeJS.ReadableStream, opts?: { chunkSize?: number }): Promise<{ text: string; chunks: string[] }> {
  const chunks: string[] = [];
  await parseDumpXml(input, new XmlDumpWriter((c) => chunks.push(c), opts));
  return { text: chunks.join(''), chunks };
}

interface Model {
  sb?: SuperblockIR;
  devices: { d: DeviceIR; maps: MappingIR[] }[];
  ends: number;
}

/** Records every visitor call, to compare documents by meaning. */
async function model(input: string): Promise<Model> {
  const m: Model = { devices: [], ends: 0 };
  const v: DumpVisitor = {
    superblockBegin: (sb) => { m.sb = sb; },
    deviceBegin: (d) => { m.devices.push({ d, maps: [] }); },
    mapping: (x) => { m.devices[m.devices.length - 1]!.maps.push(x); },
    deviceEnd: () => { m.ends++; },
    superblockEnd: () => { m.ends++; },
  };
  await parseDumpXml(input, v);
  return m;
}

function thinTools(t: ExecutionContext): { restore: string; dump: string } | undefined {
  const restore = findTool('thin_restore');
  const dump = findTool('thin_dump');
  if (restore === undefined || dump === undefined) {
    t.fail('thin_dump/thin_restore not found: install thin-provisioning-tools (apt-get install thin-provisioning-tools)');
    return undefined;
  }
  return { restore, dump };
}

/** thin_restore the XML into a fresh sparse 64 MiB metadata file, then thin_dump it. */
function restoreAndDump(tools: { restore: string; dump: string }, dir: string, name: string, xml: string): string {
  const inPath = join(dir, `${name}.xml`);
  const meta = join(dir, `${name}.meta`);
  writeFileSync(inPath, xml);
  const fd = openSync(meta, 'w');
  ftruncateSync(fd, 64 * 1024 * 1024);
  closeSync(fd);
  execFileSync(tools.restore, ['-i', inPath, '-o', meta], { stdio: ['ignore', 'pipe', 'pipe'] });
  return execFileSync(tools.dump, [meta], { encoding: 'utf8', maxBuffer: 1 << 30, stdio: ['ignore', 'pipe', 'pipe'] });
}

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

// Singles that thin_dump must merge or must not merge; devices out of order; an empty device.
const MERGE_CASES = `<superblock uuid="" time="5" transaction="9" data_block_size="384" nr_data_blocks="5000">
  <!-- comments are allowed -->
  <device dev_id="9" mapped_blocks="0" transaction="4" creation_time="2" snap_time="3">
  </device>
  <device dev_id="2" mapped_blocks="123" transaction="1" creation_time="0" snap_time="5">
    <single_mapping origin_block="0" data_block="0" time="0"/>
    <single_mapping origin_block="1" data_block="1" time="0"/>
    <single_mapping origin_block="2" data_block="2" time="1"/>
    <single_mapping origin_block="3" data_block="3" time="1"/>
    <single_mapping origin_block="4" data_block="5" time="1"/>
    <single_mapping origin_block="6" data_block="6" time="1"/>
    <single_mapping origin_block="7" data_block="100" time="2"/>
    <single_mapping origin_block="8" data_block="99" time="2"/>
    <range_mapping origin_begin="9" data_begin="200" length="3" time="3"/>
    <range_mapping origin_begin="12" data_begin="203" length="2" time="3"/>
    <single_mapping origin_block="14" data_block="205" time="3"/>
    <range_mapping origin_begin="15" data_begin="206" length="1" time="4"/>
    <single_mapping origin_block="1000000" data_block="4999" time="5"/>
  </device>
  <device dev_id="3" mapped_blocks="1" transaction="2" creation_time="1" snap_time="1">
    <single_mapping origin_block="0" data_block="207" time="4"/>
  </device>
</superblock>
`;

const MERGE_CASES_DUMP = `<superblock uuid="" time="5" transaction="9" flags="0" version="1" data_block_size="384" nr_data_blocks="5000">
  <device dev_id="2" mapped_blocks="16" transaction="1" creation_time="0" snap_time="5">
    <range_mapping origin_begin="0" data_begin="0" length="2" time="0"/>
    <range_mapping origin_begin="2" data_begin="2" length="2" time="1"/>
    <single_mapping origin_block="4" data_block="5" time="1"/>
    <single_mapping origin_block="6" data_block="6" time="1"/>
    <single_mapping origin_block="7" data_block="100" time="2"/>
    <single_mapping origin_block="8" data_block="99" time="2"/>
    <range_mapping origin_begin="9" data_begin="200" length="6" time="3"/>
    <single_mapping origin_block="15" data_block="206" time="4"/>
    <single_mapping origin_block="1000000" data_block="4999" time="5"/>
  </device>
  <device dev_id="3" mapped_blocks="1" transaction="2" creation_time="1" snap_time="1">
    <single_mapping origin_block="0" data_block="207" time="4"/>
  </device>
  <device dev_id="9" mapped_blocks="0" transaction="4" creation_time="2" snap_time="3">
  </device>
</superblock>
`;

const EMPTY_POOL = '<superblock uuid="" time="0" transaction="0" data_block_size="2097152" nr_data_blocks="100"></superblock>';
const EMPTY_POOL_DUMP =
  '<superblock uuid="" time="0" transaction="0" flags="0" version="1" data_block_size="2097152" nr_data_blocks="100">\n</superblock>\n';

interface OracleCase {
  name: string;
  xml: string;
  /** The input is already canonical apart from merging (devices sorted, mapped_blocks right, uuid ""). */
  sortedInput: boolean;
}

function oracleCases(): OracleCase[] {
  return [
    { name: 'reference-example', xml: REFERENCE_EXAMPLE, sortedInput: true },
    { name: 'merge-cases', xml: MERGE_CASES, sortedInput: false },
    { name: 'empty-pool', xml: EMPTY_POOL, sortedInput: true },
    { name: 'gen-1', xml: genPoolXml({ seed: 1, devices: 12, maxMappings: 3000, dataBlockSize: 128, nrDataBlocks: 100_000 }), sortedInput: true },
    { name: 'gen-2', xml: genPoolXml({ seed: 2, devices: 40, maxMappings: 200, dataBlockSize: 384, nrDataBlocks: 20_000, snapshotChains: 6 }), sortedInput: true },
    { name: 'gen-3', xml: genPoolXml({ seed: 3, devices: 5, maxMappings: 20_000, dataBlockSize: 2097152, nrDataBlocks: 60_000 }), sortedInput: true },
    { name: 'gen-4-full', xml: genPoolXml({ seed: 4, devices: 10, maxMappings: 500, dataBlockSize: 1024, nrDataBlocks: 700, snapshotChains: 2 }), sortedInput: true },
    { name: 'gen-5-nosnap', xml: genPoolXml({ seed: 5, devices: 6, maxMappings: 1000, dataBlockSize: 128, nrDataBlocks: 10_000, snapshotChains: 0 }), sortedInput: true },
    { name: 'gen-6-no-devices', xml: genPoolXml({ seed: 6, devices: 0, maxMappings: 100, dataBlockSize: 256, nrDataBlocks: 1000 }), sortedInput: true },
    { name: 'linear-seq', xml: genLinearDeviceXml(100_000, 128, 200_000), sortedInput: true },
    { name: 'linear-random', xml: genLinearDeviceXml(30_000, 384, 30_000, { random: true, seed: 7 }), sortedInput: true },
  ];
}

// --- the oracle ------------------------------------------------------------

test('ORACLE: thin_dump 0.9.0 output re-written through parseDumpXml + XmlDumpWriter is byte-identical', async (t) => {
  const tools = thinTools(t);
  if (tools === undefined) return;
  const dir = tmpDir(t);
  let sawEmptyDevice = false;
  let sawRange = false;
  let sawSingle = false;
  let sawMultipleTimes = false;
  for (const c of oracleCases()) {
    const dumped = restoreAndDump(tools, dir, c.name, c.xml);
    const { text } = await rewrite(dumped);
    t.is(text, dumped, `${c.name}: re-written dump differs from thin_dump`);

    // Writer's merge rule on its own: re-merging the (non-canonical) input gives thin_dump's text.
    if (c.sortedInput) t.is((await rewrite(c.xml)).text, dumped, `${c.name}: merging the input differs from thin_dump`);

    // Same meaning: restore kept every mapping the parser expanded.
    const a = await model(c.xml);
    const b = await model(dumped);
    const byId = (m: Model) => [...m.devices].sort((x, y) => x.d.devId - y.d.devId);
    t.deepEqual(byId(b).map((x) => x.maps), byId(a).map((x) => x.maps), `${c.name}: mappings differ`);
    t.deepEqual(byId(b).map((x) => x.d.mappedBlocks), byId(b).map((x) => x.maps.length), `${c.name}: mapped_blocks`);
    if (c.sortedInput) t.deepEqual(b.devices.map((x) => x.d), a.devices.map((x) => x.d), `${c.name}: device details`);
    t.is(b.ends, b.devices.length + 1);

    sawEmptyDevice ||= /">\n {2}<\/device>/.test(dumped);
    sawRange ||= dumped.includes('<range_mapping');
    sawSingle ||= dumped.includes('<single_mapping');
    sawMultipleTimes ||= new Set(b.devices.flatMap((x) => x.maps.map((m) => m.time))).size > 2;
  }
  t.true(sawEmptyDevice && sawRange && sawSingle && sawMultipleTimes, 'cases cover empty devices, ranges, singles, varied times');
});

/** The lines of one device's element, open tag to close tag. */
function deviceSection(xml: string, devId: number): string {
  const m = new RegExp(`\\n( {2}<device dev_id="${devId}"[^]*?</device>\\n)`).exec(xml);
  return m?.[1] ?? '';
}

test('ORACLE: merge rule cases and empty pool match the thin_dump text recorded here', async (t) => {
  // The writer merges exactly as thin_dump did (devices keep input order and mapped_blocks, as given).
  const merged = (await rewrite(MERGE_CASES)).text;
  for (const id of [2, 3, 9]) {
    t.is(deviceSection(merged, id).replace(/ mapped_blocks="\d+"/, ''), deviceSection(MERGE_CASES_DUMP, id).replace(/ mapped_blocks="\d+"/, ''));
  }
  t.is((await rewrite(EMPTY_POOL)).text, EMPTY_POOL_DUMP);
  const tools = thinTools(t);
  if (tools === undefined) return;
  const dir = tmpDir(t);
  t.is(restoreAndDump(tools, dir, 'merge', MERGE_CASES), MERGE_CASES_DUMP);
  t.is(restoreAndDump(tools, dir, 'empty', EMPTY_POOL), EMPTY_POOL_DUMP);
});

// --- writer ----------------------------------------------------------------

test('writer: output goes out in ~64 KiB chunks and superblockEnd flushes', (t) => {
  const chunks: string[] = [];
  const w = new XmlDumpWriter((c) => chunks.push(c));
  w.superblockBegin({ uuid: '', time: 0, transaction: 0n, flags: 0, version: 1, dataBlockSize: 128, nrDataBlocks: 1 << 20 });
  w.deviceBegin({ devId: 0, mappedBlocks: 20000, transaction: 0n, creationTime: 0, snapTime: 0 });
  for (let i = 0; i < 20000; i++) w.mapping({ originBlock: i, dataBlock: 3 * i, time: 0 });
  w.deviceEnd();
  t.true(chunks.length > 1);
  for (const c of chunks) t.true(c.length >= 64 * 1024 && c.length < 64 * 1024 + 200);
  const before = chunks.length;
  w.superblockEnd();
  t.is(chunks.length, before + 1);
  const text = chunks.join('');
  t.true(text.endsWith('  </device>\n</superblock>\n'));
  t.is(text.split('\n').length - 1, 20000 + 4);
});

test('writer: escapes the uuid, omits metadata_snap unless asked', async (t) => {
  const xml = '<superblock uuid="a&amp;&quot;&lt;" time="0" transaction="0" data_block_size="128" nr_data_blocks="1" metadata_snap="12"></superblock>';
  t.is((await rewrite(xml)).text,
    '<superblock uuid="a&amp;&quot;&lt;" time="0" transaction="0" flags="0" version="1" data_block_size="128" nr_data_blocks="1">\n</superblock>\n');
  const out: string[] = [];
  await parseDumpXml(xml, new XmlDumpWriter((c) => out.push(c), { emitMetadataSnap: true }));
  t.regex(out.join(''), / nr_data_blocks="1" metadata_snap="12">\n/);
});

test('writer: 1M mappings dump in a couple of seconds', (t) => {
  let bytes = 0;
  const start = performance.now();
  const w = new XmlDumpWriter((c) => { bytes += Buffer.byteLength(c); });
  w.superblockBegin({ uuid: '', time: 3, transaction: 7n, flags: 0, version: 2, dataBlockSize: 128, nrDataBlocks: 1 << 22 });
  w.deviceBegin({ devId: 1, mappedBlocks: 1_000_000, transaction: 0n, creationTime: 0, snapTime: 0 });
  for (let i = 0; i < 1_000_000; i++) w.mapping({ originBlock: i, dataBlock: (i * 7919) % 1_000_003, time: i & 3 });
  w.deviceEnd();
  w.superblockEnd();
  const ms = performance.now() - start;
  t.log(`1M single mappings: ${ms.toFixed(0)} ms, ${(bytes / 1e6).toFixed(1)} MB`);
  t.true(bytes > 60e6);
  t.true(ms < 4000, `took ${ms} ms`);
});

// --- parser ----------------------------------------------------------------

test('parser: range_mapping expands per block; flags/version default to 0 and 1; metadata_snap read', async (t) => {
  const m = await model(`<?xml version="1.0"?>
<superblock uuid="u" time="2" transaction="18446744073709551615" data_block_size="128" nr_data_blocks="1099511627776" metadata_snap="5">
  <device dev_id="4294967295" mapped_blocks="3" transaction="1" creation_time="4294967295" snap_time="2">
    <range_mapping origin_begin="10" data_begin="1099511627773" length="3" time="16777215"/>
  </device>
</superblock>`);
  t.deepEqual(m.sb, {
    uuid: 'u', time: 2, transaction: 18446744073709551615n, flags: 0, version: 1,
    dataBlockSize: 128, nrDataBlocks: 2 ** 40, metadataSnap: 5,
  });
  t.deepEqual(m.devices[0]?.d, { devId: 2 ** 32 - 1, mappedBlocks: 3, transaction: 1n, creationTime: 2 ** 32 - 1, snapTime: 2 });
  t.deepEqual(m.devices[0]?.maps, [
    { originBlock: 10, dataBlock: 2 ** 40 - 3, time: 2 ** 24 - 1 },
    { originBlock: 11, dataBlock: 2 ** 40 - 2, time: 2 ** 24 - 1 },
    { originBlock: 12, dataBlock: 2 ** 40 - 1, time: 2 ** 24 - 1 },
  ]);
});

test('parser: a stream split at awkward places (inside tags and UTF-8 characters) reads like the string', async (t) => {
  const xml = genPoolXml({ seed: 11, devices: 5, maxMappings: 300, dataBlockSize: 128, nrDataBlocks: 5000 })
    .replace('<device', '<!-- ünïcödé ✓ -->\n  <device');
  const buf = Buffer.from(xml, 'utf8');
  const pieces: Buffer[] = [];
  for (let i = 0; i < buf.length; i += 7) pieces.push(buf.subarray(i, i + 7));
  const fromStream = await rewrite(Readable.from(pieces));
  t.is(fromStream.text, (await rewrite(xml)).text);
  t.deepEqual(await model(fromStream.text), await model(xml));
});

const SB = '<superblock uuid="" time="1" transaction="1" data_block_size="128" nr_data_blocks="100">';
const DEV = '<device dev_id="1" mapped_blocks="1" transaction="1" creation_time="0" snap_time="0">';

const BAD: [string, string, RegExp][] = [
  ['missing superblock attribute', '<superblock uuid="" time="1" data_block_size="128" nr_data_blocks="100"></superblock>', /line 1: <superblock> is missing required attribute "transaction"/],
  ['missing uuid', '<superblock time="1" transaction="1" data_block_size="128" nr_data_blocks="100"></superblock>', /missing required attribute "uuid"/],
  ['missing device attribute', `${SB}\n  <device dev_id="1" mapped_blocks="1" transaction="1" creation_time="0">\n  </device>\n</superblock>`, /line 2: <device> is missing required attribute "snap_time"/],
  ['missing mapping attribute', `${SB}\n${DEV}\n\n<single_mapping origin_block="1" time="0"/></device></superblock>`, /line 4: <single_mapping> is missing required attribute "data_block"/],
  ['missing range attribute', `${SB}\n${DEV}\n<range_mapping origin_begin="1" data_begin="2" time="0"/></device></superblock>`, /line 3: <range_mapping> is missing required attribute "length"/],
  ['non-numeric', `${SB}\n${DEV}\n<single_mapping origin_block="1" data_block="x7" time="0"/></device></superblock>`, /line 3: <single_mapping> data_block="x7" is not a non-negative decimal integer/],
  ['negative', `${SB}\n${DEV}\n<single_mapping origin_block="1" data_block="7" time="-1"/></device></superblock>`, /time="-1" is not a non-negative decimal integer/],
  ['plus sign', `${SB}\n${DEV}\n<single_mapping origin_block="+1" data_block="7" time="1"/></device></superblock>`, /origin_block="\+1" is not/],
  ['hex', `${SB.replace('time="1"', 'time="0x1"')}</superblock>`, /<superblock> time="0x1" is not a non-negative decimal integer/],
  ['fraction', `${SB}\n${DEV.replace('dev_id="1"', 'dev_id="1.5"')}</device></superblock>`, /line 2: <device> dev_id="1.5" is not/],
  ['empty number', `${SB.replace('nr_data_blocks="100"', 'nr_data_blocks=""')}</superblock>`, /nr_data_blocks="" is not/],
  ['bad bigint', `${SB.replace('transaction="1"', 'transaction="1e3"')}</superblock>`, /transaction="1e3" is not/],
  ['transaction > u64', `${SB.replace('transaction="1"', 'transaction="18446744073709551616"')}</superblock>`, /out of range/],
  ['time >= 2^24', `${SB}\n${DEV}\n<single_mapping origin_block="1" data_block="7" time="16777216"/></device></superblock>`, /time="16777216" is out of range \(max 16777215\)/],
  ['data block >= 2^40', `${SB}\n${DEV}\n<single_mapping origin_block="1" data_block="1099511627776" time="1"/></device></superblock>`, /out of range/],
  ['range past 2^40', `${SB}\n${DEV}\n<range_mapping origin_begin="1" data_begin="1099511627775" length="2" time="1"/></device></superblock>`, /runs past data block/],
  ['zero-length range', `${SB}\n${DEV}\n<range_mapping origin_begin="1" data_begin="2" length="0" time="1"/></device></superblock>`, /line 3: <range_mapping> has length="0"/],
  ['ref', `${SB}\n${DEV}\n    <ref name="a"/>\n</device></superblock>`, /line 3: unknown element <ref>/],
  ['def', `${SB}\n<def name="a"></def></superblock>`, /line 2: unknown element <def>/],
  ['unknown tag', `${SB}\n${DEV}\n</device>\n<volume/>\n</superblock>`, /line 4: unknown element <volume>/],
  ['unknown attribute', `${SB}\n${DEV}\n<single_mapping origin_block="1" data_block="7" time="1" extra="2"/></device></superblock>`, /unknown attribute "extra"/],
  ['mapping outside device', `${SB}\n<single_mapping origin_block="1" data_block="7" time="1"/></superblock>`, /line 2: <single_mapping> must be directly inside <device>/],
  ['device outside superblock', `${DEV}</device>`, /<device> must be directly inside <superblock>/],
  ['nested device', `${SB}\n${DEV}\n${DEV}</device></device></superblock>`, /line 3: <device> must be directly inside <superblock>, found in <device>/],
  ['mapping in mapping', `${SB}\n${DEV}\n<single_mapping origin_block="1" data_block="7" time="1"><single_mapping origin_block="2" data_block="8" time="1"/></single_mapping></device></superblock>`, /found in <single_mapping>/],
  ['two superblocks', `${SB}</superblock>\n${SB}</superblock>`, /line 2: <superblock> must be the one top-level element/],
  ['text content', `${SB}\n${DEV}\nhello\n</device></superblock>`, /line 3: unexpected text "hello"/],
  ['malformed: unclosed', `${SB}\n${DEV}\n`, /malformed XML/],
  ['malformed: mismatched close', `${SB}\n${DEV}\n</superblock>\n</device>`, /line 3: malformed XML: Unexpected close tag/],
  ['malformed: bad attribute syntax', `${SB}\n<device dev_id=1>\n</device></superblock>`, /line 2: malformed XML/],
  ['malformed: garbage', 'not xml at all', /line 1: malformed XML/],
  ['empty document', '', /no <superblock> element/],
  ['only a comment', '<!-- nothing -->\n', /no <superblock> element/],
];

for (const [name, xml, re] of BAD) {
  test(`parser rejects: ${name}`, async (t) => {
    const err = await t.throwsAsync(parseDumpXml(xml, new XmlDumpWriter(() => {})));
    t.true(isThinError(err, 'BAD_XML'), `not a BAD_XML ThinError: ${String(err)}`);
    t.regex(err?.message ?? '', re);
    t.regex(err?.message ?? '', /^thin_dump XML line \d+: /);
    t.false((err?.message ?? '').includes('\n'), 'one line');
  });
}

test('parser rejects bad XML from a stream too', async (t) => {
  const err = await t.throwsAsync(parseDumpXml(Readable.from([Buffer.from(`${SB}\n${DEV}\n<ref name="x"/>`)]), new XmlDumpWriter(() => {})));
  t.true(isThinError(err, 'BAD_XML'));
  t.regex(err?.message ?? '', /line 3: unknown element <ref>/);
});
