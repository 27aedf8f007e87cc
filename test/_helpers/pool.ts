// Helpers shared by the pool tests: temporary pool directories, pools that
// are closed however a test ends, the thin-provisioning-tools oracle, and a
// structural comparison of thin_dump XML with the in-memory model.

import type { ExecutionContext } from 'ava';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BackingFile } from '../../src/io/backing-file.js';
import { DelayBacking } from '../../src/io/delay-backing.js';
import { defaultConfig, type PoolConfig, type PoolFeatures } from '../../src/pool/config.js';
import { dumpMetadata } from '../../src/pool/dump.js';
import { Pool, type PoolOpenOptions } from '../../src/pool/pool.js';
import { type DeviceIR, type DumpVisitor, type MappingIR, parseDumpXml, type SuperblockIR, XmlDumpWriter } from '../../src/pool/xml.js';
import type { ThinModel } from './model.js';
import { requireTool } from './tools.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;

//------------------------------------------------------------------------------
// directories and pools

/** A fresh directory under the system temp dir, removed when the test ends (pass or fail). */
export function tempDir(t: ExecutionContext, prefix = 'thinfuse-pool-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export interface MakePoolOptions {
  /** Where to create the pool; a new temp dir by default. */
  dir?: string;
  dataSize?: number;
  metadataSize?: number;
  blockSize?: number;
  config?: Partial<Omit<PoolConfig, 'features'>> & { features?: Partial<PoolFeatures> };
  wrap?: PoolOpenOptions['wrap'];
  cacheBlocks?: number;
  oneShot?: boolean;
}

export const DEFAULT_DATA_SIZE = 64 * MiB;
export const DEFAULT_METADATA_SIZE = 16 * MiB;
export const DEFAULT_BLOCK_SIZE = 64 * KiB;

/** Closes the pool when the test ends, unless the test already did (close is idempotent). */
export function trackPool(t: ExecutionContext, pool: Pool): Pool {
  t.teardown(async () => {
    try {
      await pool.close();
    } catch {
      // The test has failed already if this matters.
    }
  });
  return pool;
}

/** Pool.create in a temp dir with small defaults: 64 MiB data, 16 MiB metadata, 64 KiB blocks. */
export async function makePool(t: ExecutionContext, opts: MakePoolOptions = {}): Promise<{ pool: Pool; dir: string }> {
  const dir = opts.dir ?? tempDir(t);
  const d = defaultConfig();
  const config: PoolConfig = {
    ...d,
    ...opts.config,
    features: { ...d.features, ...(opts.config?.features ?? {}) },
  };
  const open: PoolOpenOptions = {};
  if (opts.wrap) open.wrap = opts.wrap;
  if (opts.cacheBlocks !== undefined) open.cacheBlocks = opts.cacheBlocks;
  if (opts.oneShot !== undefined) open.oneShot = opts.oneShot;
  const pool = await Pool.create(dir, {
    dataSize: opts.dataSize ?? DEFAULT_DATA_SIZE,
    metadataSize: opts.metadataSize ?? DEFAULT_METADATA_SIZE,
    blockSize: opts.blockSize ?? DEFAULT_BLOCK_SIZE,
    config,
  }, open);
  return { pool: trackPool(t, pool), dir };
}

/** Pool.open, closed at the end of the test if still open. */
export async function openPool(t: ExecutionContext, dir: string, opts: PoolOpenOptions = {}): Promise<Pool> {
  return trackPool(t, await Pool.open(dir, opts));
}

/** A wrap option that gives one of the backing files to `make`. */
export function wrapOnly(which: 'data' | 'metadata', make: (f: BackingFile) => BackingFile): NonNullable<PoolOpenOptions['wrap']> {
  return (f, w) => (w === which ? make(f) : f);
}

/**
 * Delays every asynchronous request of another backing file by a random 0-2
 * ms (0 = the next macrotask), so that concurrent requests complete out of
 * order. Deterministic per seed, though timers are not.
 */
export class JitterBacking extends DelayBacking {
  constructor(inner: BackingFile, seed = 1, maxMs = 2) {
    let x = (seed >>> 0) || 0x2545f491;
    super(inner, () => {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      return x % (maxMs + 1);
    });
  }
}

//------------------------------------------------------------------------------
// the thin-provisioning-tools oracle



/** Our own dump of a closed pool, as thin_dump would print it. */
export async function ourDump(dir: string): Promise<string> {
  const pool = await Pool.open(dir);
  try {
    const chunks: string[] = [];
    const w = new XmlDumpWriter((s) => chunks.push(s));
    dumpMetadata(pool.md, w);
    w.flush();
    return chunks.join('');
  } finally {
    await pool.close();
  }
}

/** Where two texts first differ, as a few lines of each, for an error message. */
export function firstDifference(a: string, b: string, labelA = 'ours', labelB = 'theirs'): string {
  const la = a.split('\n');
  const lb = b.split('\n');
  let i = 0;
  while (i < la.length && i < lb.length && la[i] === lb[i]) i++;
  const from = Math.max(0, i - 2);
  const show = (l: string[]) => l.slice(from, i + 3).map((x, k) => `  ${from + k + 1}: ${x}`).join('\n');
  return `first difference at line ${i + 1} (${la.length} vs ${lb.length} lines)\n${labelA}:\n${show(la)}\n${labelB}:\n${show(lb)}`;
}

/**
 * Throws unless thin_check passes on `dir`/metadata and thin_dump prints
 * exactly what our dumper prints. The pool must be closed. Returns thin_dump's
 * XML. Usable inside fast-check properties (it throws rather than asserts).
 */
export async function checkMetadata(dir: string): Promise<string> {
  const metadata = join(dir, 'metadata');
  const check = spawnSync(requireTool('thin_check'), [metadata], { encoding: 'utf8' });
  if (check.error) throw check.error;
  if (check.status !== 0) throw new Error(`thin_check ${metadata} exited ${check.status}:\n${check.stdout}${check.stderr}`);
  const dump = spawnSync(requireTool('thin_dump'), [metadata], { encoding: 'utf8', maxBuffer: 256 * MiB });
  if (dump.error) throw dump.error;
  if (dump.status !== 0) throw new Error(`thin_dump ${metadata} exited ${dump.status}:\n${dump.stderr}`);
  const ours = await ourDump(dir);
  if (ours !== dump.stdout) throw new Error(`our dump differs from thin_dump: ${firstDifference(ours, dump.stdout, 'ours', 'thin_dump')}`);
  return dump.stdout;
}

/** checkMetadata() as an assertion of test `t`. Returns thin_dump's XML. */
export async function oracle(t: ExecutionContext, dir: string): Promise<string> {
  const xml = await checkMetadata(dir);
  t.pass('thin_check passes and thin_dump matches our dump');
  return xml;
}

//------------------------------------------------------------------------------
// comparing dumps structurally

export interface NormalizedDevice {
  devId: number;
  mappedBlocks: number;
  transaction: string;
  creationTime: number;
  snapTime: number;
  /** [virtual block, time, group]: the same group = the same data block. */
  mappings: Array<[number, number, number]>;
}

export interface NormalizedDump {
  time: number;
  transaction: string;
  flags: number;
  version: number;
  dataBlockSize: number;
  nrDataBlocks: number;
  devices: NormalizedDevice[];
}

/**
 * Parses thin_dump XML into what does not depend on the allocator: data block
 * numbers become groups numbered in order of first appearance (devices in
 * dev id order, mappings in virtual order), so two dumps compare equal iff
 * they share blocks the same way.
 */
export async function normalizeDump(xml: string): Promise<NormalizedDump> {
  let out: NormalizedDump | undefined;
  let dev: NormalizedDevice | undefined;
  const groups = new Map<number, number>();
  const visitor: DumpVisitor = {
    superblockBegin(sb: SuperblockIR) {
      out = {
        time: sb.time, transaction: String(sb.transaction), flags: sb.flags, version: sb.version,
        dataBlockSize: sb.dataBlockSize, nrDataBlocks: sb.nrDataBlocks, devices: [],
      };
    },
    deviceBegin(d: DeviceIR) {
      dev = {
        devId: d.devId, mappedBlocks: d.mappedBlocks, transaction: String(d.transaction),
        creationTime: d.creationTime, snapTime: d.snapTime, mappings: [],
      };
      out!.devices.push(dev);
    },
    mapping(m: MappingIR) {
      let g = groups.get(m.dataBlock);
      if (g === undefined) groups.set(m.dataBlock, (g = groups.size));
      dev!.mappings.push([m.originBlock, m.time, g]);
    },
    deviceEnd() {
      dev = undefined;
    },
    superblockEnd() {},
  };
  await parseDumpXml(xml, visitor);
  if (!out) throw new Error('normalizeDump: no superblock');
  return out;
}

/** The thin_dump XML the model expects, with the model's physical ids as data blocks. */
export function modelXml(model: ThinModel, opts: { flags?: number; version?: number } = {}): string {
  const chunks: string[] = [];
  const w = new XmlDumpWriter((s) => chunks.push(s));
  w.superblockBegin({
    uuid: '', time: model.time, transaction: model.transaction, flags: opts.flags ?? 0, version: opts.version ?? 2,
    dataBlockSize: model.dataBlockSectors, nrDataBlocks: model.nrDataBlocks,
  });
  for (const id of model.ids()) {
    const d = model.dev(id);
    w.deviceBegin({ devId: id, mappedBlocks: d.map.size, transaction: d.transaction, creationTime: d.creationTime, snapTime: d.snapTime });
    for (const vb of [...d.map.keys()].sort((a, b) => a - b)) {
      const m = d.map.get(vb)!;
      w.mapping({ originBlock: vb, dataBlock: m.phys, time: m.time });
    }
    w.deviceEnd();
  }
  w.superblockEnd();
  return chunks.join('');
}

/** oracle(), then the dump compared with the model: times, transactions, mapped_blocks, sharing. */
export async function oracleVsModel(t: ExecutionContext, dir: string, model: ThinModel): Promise<void> {
  const xml = await oracle(t, dir);
  t.deepEqual(await normalizeDump(xml), await normalizeDump(modelXml(model)), 'thin_dump differs from the model');
}

/** checkMetadata() and the model comparison, throwing (for properties). */
export async function checkMetadataVsModel(dir: string, model: ThinModel): Promise<void> {
  const xml = await checkMetadata(dir);
  assert.deepStrictEqual(await normalizeDump(xml), await normalizeDump(modelXml(model)), 'thin_dump differs from the model');
}

//------------------------------------------------------------------------------
// comparing a live pool with the model (throwing, for properties)

/** Throws, naming the first differing byte, unless `actual` equals `expected`. */
export function assertSameBytes(actual: Buffer, expected: Buffer, what: string): void {
  if (actual.equals(expected)) return;
  let i = 0;
  while (i < actual.length && i < expected.length && actual[i] === expected[i]) i++;
  throw new Error(`${what}: differs at byte ${i} (got ${actual[i]}, want ${expected[i]}; lengths ${actual.length}/${expected.length})`);
}

/** Reads every device whole and compares with the model. */
export async function checkContents(pool: Pool, model: ThinModel): Promise<void> {
  for (const id of model.ids()) {
    const d = model.dev(id);
    const buf = Buffer.alloc(d.size);
    await pool.read(id as never, buf, 0, d.size);
    assertSameBytes(buf, model.read(id, 0, d.size), `device ${id} (${d.name ?? 'unnamed'}) contents`);
  }
}

/** usage() per device, the data blocks in use, and the device names, against the model. */
export function checkAccounting(pool: Pool, model: ThinModel): void {
  const usage = pool.usage().map((u) => ({ devId: u.devId as number, mappedBlocks: u.mappedBlocks, exclusiveBlocks: u.exclusiveBlocks, sharedBlocks: u.sharedBlocks }));
  assert.deepStrictEqual(usage, model.usage(), 'usage() differs from the model');
  assert.equal(pool.md.dsm.nrAllocated, model.dataUsed(), 'data blocks in use differ from the model');
  assert.equal(pool.md.nrDataBlocks, model.nrDataBlocks, 'data size differs from the model');
  const names = pool.registry.list().map((n) => [n.name, n.devId as number, n.size]).sort();
  const want = model.ids().flatMap((id) => {
    const d = model.dev(id);
    return d.name === undefined ? [] : [[d.name, id, d.size]];
  }).sort();
  assert.deepStrictEqual(names, want, 'device names differ from the model');
}
