// The metadata fuzzer (issue 5, item 5), shared by test/fuzz.test.ts and
// scripts/fuzz.ts. A base pool is built once on disk (devices, snapshots, a
// held metadata snapshot, enough mappings for internal nodes and for counts
// of 3+ in both space maps), its metadata blocks are classified by type, and
// each seeded case mutates a copy-on-write image of it:
//
//   flip     1-8 random bits of one block of a chosen type
//   garbage  random bytes over part or all of one block, or the block zeroed
//   field    a random u8/u32/u64 written into one block's header or entries,
//            then the checksum recomputed, so the engine's semantic checks
//            (not just the checksum) are what stands in the way
//   truncate the metadata or the data file cut short
//   registry POOL/devices or POOL/config garbled, truncated, or given
//            well-formed JSON of the wrong shape
//
// and then runs, in process: `check`, then open + dump + ls + status + close
// (these must leave every file byte-identical), then open again, read every
// device, write, snapshot, close; and, if the mutation left the metadata
// passing `check`, `check` again (a clean pool must stay clean); and repair
// into a new file, whose result must pass `check`, leaving the input as it was. Each step
// may succeed or fail with a ThinError; anything else (TypeError, RangeError,
// a stack overflow, a step over its time limit, a changed file) is a finding.

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { isThinError } from '../../src/base/errors.js';
import type { DevId } from '../../src/base/units.js';
import { runOp } from '../../src/frontends/ops.js';
import type { BackingFile } from '../../src/io/backing-file.js';
import { MemoryBacking } from '../../src/io/memory-backing.js';
import { OverlayBacking, PAGE } from '../../src/io/overlay-backing.js';
import { MemoryPoolFiles } from '../../src/io/pool-files.js';
import { type BlockKind, sealBlock } from '../../src/metadata/checksum.js';
import { checkMetadata } from '../../src/pool/check.js';
import { defaultConfig } from '../../src/pool/config.js';
import { dumpMetadata } from '../../src/pool/dump.js';
import { Pool } from '../../src/pool/pool.js';
import { repairMetadata } from '../../src/pool/repair.js';
import { XmlDumpWriter } from '../../src/pool/xml.js';

export const BLOCK_TYPES = [
  'superblock', 'snapshot superblock', 'details', 'top internal', 'top leaf', 'bottom internal', 'bottom leaf',
  'data sm index', 'data sm bitmap', 'data sm ref-count', 'metadata sm index', 'metadata sm bitmap', 'metadata sm ref-count',
] as const;
export type BlockType = (typeof BLOCK_TYPES)[number];

export const KIND_OF: Record<BlockType, BlockKind> = {
  superblock: 'superblock', 'snapshot superblock': 'superblock', details: 'node', 'top internal': 'node', 'top leaf': 'node',
  'bottom internal': 'node', 'bottom leaf': 'node', 'data sm index': 'node', 'data sm bitmap': 'bitmap', 'data sm ref-count': 'node',
  'metadata sm index': 'index', 'metadata sm bitmap': 'bitmap', 'metadata sm ref-count': 'node',
};

export interface FuzzBase {
  dir: string;
  meta: Map<number, Buffer>;
  metaSize: number;
  dataSize: number;
  devices: string;
  config: string;
  blocks: Map<BlockType, number[]>;
}

//------------------------------------------------------------------------------
// the base pool

const KiB = 1024;
const MiB = 1024 * KiB;

/** Builds the base pool in a new temp dir (the caller removes base.dir). */
export async function makeFuzzBase(): Promise<FuzzBase> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinfuse-fuzz-base-'));
  const blockSize = 64 * KiB;
  const pool = await Pool.create(path.join(dir, 'P'), { dataSize: 64 * MiB, metadataSize: 2 * MiB, blockSize, config: defaultConfig() });
  const chunk = Buffer.alloc(512, 0xab);
  const a = await pool.createDevice('a', 20 * MiB);
  for (let vb = 0; vb < 300; vb++) await pool.write(a.devId, chunk, vb * blockSize, a.size);
  for (const s of ['s1', 's2', 's3']) {
    const d = await pool.snapshot('a', s);
    for (let vb = 0; vb < 4; vb++) await pool.write(d.devId, chunk, vb * 80 * blockSize, d.size);
  }
  await pool.snapshot('a', 's4');
  await pool.snapshot('a', 's5');
  const b = await pool.createDevice('b', 4 * MiB);
  for (let vb = 0; vb < 10; vb++) await pool.write(b.devId, chunk, vb * blockSize, b.size);
  // Enough unnamed devices for internal nodes in the details tree and the top level.
  for (let id = 100; id < 360; id++) await pool.message(`create_thin ${id}`);
  await pool.message('reserve_metadata_snap');
  await pool.write(b.devId, chunk, 20 * blockSize, b.size);
  await pool.close();
  const P = path.join(dir, 'P');
  const raw = fs.readFileSync(path.join(P, 'metadata'));
  const meta = new Map<number, Buffer>();
  for (let p = 0; p < raw.length / PAGE; p++) {
    const page = raw.subarray(p * PAGE, (p + 1) * PAGE);
    if (page.some((x) => x !== 0)) meta.set(p, Buffer.from(page));
  }
  const base: FuzzBase = {
    dir, meta, metaSize: raw.length, dataSize: fs.statSync(path.join(P, 'data')).size,
    devices: fs.readFileSync(path.join(P, 'devices'), 'utf8'), config: fs.readFileSync(path.join(P, 'config'), 'utf8'),
    blocks: classify(meta),
  };
  return base;
}

function u64(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off + 4) * 2 ** 32 + buf.readUInt32LE(off);
}

/** Every block of the base metadata by type, found by walking from the superblock. */
export function classify(meta: Map<number, Buffer>): Map<BlockType, number[]> {
  const out = new Map<BlockType, number[]>(BLOCK_TYPES.map((t) => [t, []]));
  const seen = new Set<string>();
  const add = (t: BlockType, b: number) => {
    if (seen.has(`${t}:${b}`)) return;
    seen.add(`${t}:${b}`);
    out.get(t)!.push(b);
  };
  const get = (b: number) => meta.get(b) ?? Buffer.alloc(PAGE);
  const tree = (root: number, internal: BlockType, leaf: BlockType, onValue?: (v: Buffer) => void): void => {
    const n = get(root);
    const nr = n.readUInt32LE(16);
    const max = n.readUInt32LE(20);
    const vs = n.readUInt32LE(24);
    const isLeaf = n.readUInt32LE(4) === 2;
    add(isLeaf ? leaf : internal, root);
    for (let i = 0; i < nr; i++) {
      const v = n.subarray(32 + 8 * max + vs * i, 32 + 8 * max + vs * (i + 1));
      if (isLeaf) onValue?.(v);
      else tree(u64(v, 0), internal, leaf, onValue);
    }
  };
  const sbTrees = (sb: Buffer) => {
    tree(u64(sb, 328), 'details', 'details');
    tree(u64(sb, 320), 'top internal', 'top leaf', (v) => tree(u64(v, 0), 'bottom internal', 'bottom leaf'));
  };
  const sb = get(0);
  add('superblock', 0);
  sbTrees(sb);
  const held = u64(sb, 56);
  if (held) {
    add('snapshot superblock', held);
    sbTrees(get(held));
  }
  tree(u64(sb, 64 + 16), 'data sm index', 'data sm index', (v) => add('data sm bitmap', u64(v, 0)));
  tree(u64(sb, 64 + 24), 'data sm ref-count', 'data sm ref-count');
  const mIndex = u64(sb, 192 + 16);
  add('metadata sm index', mIndex);
  const nrBitmaps = Math.ceil(u64(sb, 192) / 16320);
  for (let i = 0; i < nrBitmaps; i++) add('metadata sm bitmap', u64(get(mIndex), 16 + 16 * i));
  tree(u64(sb, 192 + 24), 'metadata sm ref-count', 'metadata sm ref-count');
  return out;
}

//------------------------------------------------------------------------------
// random numbers and mutations

export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = (seed >>> 0) ^ 0x9e3779b9 || 1;
  }
  u32(): number {
    // mulberry32
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  int(n: number): number {
    return this.u32() % n;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}

export interface FuzzCase {
  seed: number;
  /** What was done, for the report. */
  what: string[];
  meta: Map<number, Buffer>;
  metaSize: number;
  dataSize: number;
  devices: string | undefined;
  config: string | undefined;
}

const MUTATIONS = ['flip', 'garbage', 'field', 'field', 'field', 'truncate', 'registry', 'config'] as const;

/** Interesting numbers for header fields. */
function edgeValue(rng: Rng, blocks: number): number {
  return rng.pick([0, 1, 2, 3, 0xff, 0xffff, 0x7fffffff, 0xffffffff, 2 ** 53 - 1, 2 ** 53, 2 ** 64 - 1, blocks - 1, blocks, blocks + 1, rng.int(blocks), rng.u32(), 252, 253, 126, 127, 24, 16, 8, 4]);
}

function writeNum(buf: Buffer, off: number, width: number, v: number): void {
  if (width === 1) buf[off] = v & 0xff;
  else if (width === 4) buf.writeUInt32LE(v >>> 0, off);
  else buf.writeBigUInt64LE(BigInt.asUintN(64, BigInt(Math.floor(v))), off);
}

function mutateBlock(c: FuzzCase, base: FuzzBase, rng: Rng, how: 'flip' | 'garbage' | 'field'): void {
  const types = BLOCK_TYPES.filter((t) => base.blocks.get(t)!.length > 0);
  const type = rng.pick(types);
  const b = rng.pick(base.blocks.get(type)!);
  const buf = Buffer.from(c.meta.get(b) ?? Buffer.alloc(PAGE));
  const blocks = base.metaSize / PAGE;
  if (how === 'flip') {
    const n = 1 + rng.int(8);
    for (let i = 0; i < n; i++) {
      const bit = rng.int(PAGE * 8);
      buf[bit >>> 3]! ^= 1 << (bit & 7);
    }
    c.what.push(`flip ${n} bits of ${type} block ${b}`);
  } else if (how === 'garbage') {
    const style = rng.int(4);
    if (style === 0) buf.fill(0);
    else if (style === 1) rng.bytes(PAGE).copy(buf);
    else {
      const off = rng.int(PAGE);
      const len = 1 + rng.int(Math.min(512, PAGE - off));
      rng.bytes(len).copy(buf, off);
    }
    c.what.push(`garbage (${['zeroed', 'all random', 'random run', 'random run'][style]}) in ${type} block ${b}`);
  } else {
    // Mostly the header and the first entries, where meaning is densest.
    const width = rng.pick([1, 4, 4, 8, 8]);
    const area = rng.int(3) === 0 ? PAGE : type.includes('superblock') ? 368 : 32 + 16 * 8;
    const off = Math.min(4 + rng.int(area), PAGE - width);
    const v = edgeValue(rng, blocks);
    writeNum(buf, off, width, v);
    sealBlock(buf, KIND_OF[type]);
    c.what.push(`field: u${width * 8} ${v} at ${off} of ${type} block ${b}, resealed`);
  }
  c.meta.set(b, buf);
}

const JSON_GARBAGE = [
  'null', '5', '"x"', '[]', '{}', '{"devices":5}', '{"devices":null}', '{"devices":[5]}', '{"devices":[null]}', '{"devices":[{}]}',
  '{"devices":[{"name":5,"devId":0,"size":1048576}]}', '{"devices":[{"name":"a","devId":-1,"size":1048576}]}',
  '{"devices":[{"name":"a","devId":"0","size":1048576}]}', '{"devices":[{"name":"a","devId":0,"size":-5}]}',
  '{"devices":[{"name":"a","devId":0,"size":1e300}]}', '{"devices":[{"name":"a","devId":99,"size":1048576}]}',
  '{"devices":[{"name":"../x","devId":0,"size":1048576}]}', '{"devices":[{"name":"a","devId":0,"size":1048577}]}',
  '{"devices":[{"name":"a","devId":0,"size":1048576},{"name":"a","devId":1,"size":1048576}]}',
  '{"devices":[],"intent":5}', '{"devices":[],"intent":{"op":"add"}}', '{"devices":[],"intent":{"op":"zap","device":{"name":"q","devId":7,"size":4096}}}',
  '{"devices":[],"intent":{"op":"remove","device":{"name":"a","devId":0,"size":20971520}}}',
  '{"devices":[],"intent":{"op":"add","device":{"name":"q","devId":null,"size":4096}}}',
  '{"features":5}', '{"features":null}', '{"features":{"readOnly":"yes"}}', '{"lowWaterMark":"x"}', '{"lowWaterMark":-1}',
  '{"noSpaceTimeout":-1}', '{"noSpaceTimeout":"forever"}', '{"features":{"skipBlockZeroing":1}}', '{"features":[]}',
  '{"__proto__":{"readOnly":true}}',
];

function mutateText(text: string, rng: Rng): { text: string | undefined; how: string } {
  switch (rng.int(5)) {
    case 0: return { text: undefined, how: 'removed' };
    case 1: {
      const n = rng.int(text.length);
      return { text: text.slice(0, n), how: `truncated to ${n} bytes` };
    }
    case 2: {
      const b = Buffer.from(text);
      const off = rng.int(b.length);
      rng.bytes(1 + rng.int(16)).copy(b, off);
      return { text: b.toString('latin1'), how: `garbage at ${off}` };
    }
    default: {
      const g = rng.pick(JSON_GARBAGE);
      return { text: g, how: `replaced by ${g}` };
    }
  }
}

export function makeCase(base: FuzzBase, seed: number): FuzzCase {
  const rng = new Rng(seed);
  const c: FuzzCase = { seed, what: [], meta: new Map(base.meta), metaSize: base.metaSize, dataSize: base.dataSize, devices: base.devices, config: base.config };
  const n = rng.int(5) === 0 ? 2 + rng.int(2) : 1;
  for (let i = 0; i < n; i++) {
    const m = rng.pick(MUTATIONS);
    if (m === 'flip' || m === 'garbage' || m === 'field') mutateBlock(c, base, rng, m);
    else if (m === 'truncate') {
      if (rng.int(3) === 0) {
        c.dataSize = rng.pick([0, rng.int(base.dataSize), base.dataSize - 512, base.dataSize - 64 * KiB]);
        c.what.push(`data file truncated to ${c.dataSize}`);
      } else {
        c.metaSize = rng.pick([0, 1 + rng.int(4095), 512 * rng.int(129), PAGE * rng.int(base.metaSize / PAGE), base.metaSize - PAGE]);
        c.what.push(`metadata file truncated to ${c.metaSize}`);
      }
    } else if (m === 'registry') {
      const r = mutateText(c.devices ?? base.devices, rng);
      c.devices = r.text;
      c.what.push(`devices ${r.how}`);
    } else {
      const r = mutateText(c.config ?? base.config, rng);
      c.config = r.text;
      c.what.push(`config ${r.how}`);
    }
  }
  return c;
}

//------------------------------------------------------------------------------
// running a case

/** A data file that holds nothing: the fuzzer targets metadata, and reads stay cheap. */
class NullData extends OverlayBacking {
  constructor(p: string, length: number, onClose: () => Promise<void>) {
    super(p, new Map(), new Map(), length, onClose);
  }
  override readSync(): void {}
  override async read(): Promise<void> {}
  override writeSync(): void {}
  override async write(): Promise<void> {}
}

export interface Finding {
  seed: number;
  what: string[];
  step: string;
  error: string;
}

export interface CaseResult {
  findings: Finding[];
  /** Outcome of the first open: ok / mode / error code. */
  open: string;
}

function hashImage(img: OverlayBacking): string {
  const h = createHash('sha256');
  h.update(String(img.size()));
  for (const p of img.pageNumbers().sort((a, b) => a - b)) {
    const page = img.page(p);
    if (page.some((x) => x !== 0)) h.update(String(p)).update(page);
  }
  return h.digest('hex');
}

function textsOf(files: MemoryPoolFiles): string {
  return JSON.stringify([files.files.get('devices'), files.files.get('config')]);
}

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`TIMEOUT: ${what} took over ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}

/** A stand-in pool directory: empty metadata and data files (Pool.open wants them) and the lock. */
export function makeRunDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinfuse-fuzz-'));
  fs.writeFileSync(path.join(dir, 'metadata'), '');
  fs.writeFileSync(path.join(dir, 'data'), '');
  return dir;
}

export async function runCase(c: FuzzCase, runDir: string, timeoutMs = 10_000): Promise<CaseResult> {
  const findings: Finding[] = [];
  const own = new Map<number, Buffer>();
  const meta = new OverlayBacking(path.join(runDir, 'metadata'), c.meta, own, c.metaSize);
  const small = new MemoryPoolFiles([...(c.devices !== undefined ? [['devices', c.devices]] : []), ...(c.config !== undefined ? [['config', c.config]] : [])] as Array<[string, string]>);
  const opts = {
    files: small,
    oneShot: true,
    cacheBlocks: 256,
    wrap: (f: BackingFile, which: 'data' | 'metadata'): BackingFile =>
      which === 'metadata'
        ? new OverlayBacking(f.path, c.meta, own, c.metaSize, () => f.close())
        : new NullData(f.path, c.dataSize, () => f.close()),
  };
  const finding = (step: string, e: unknown) => {
    findings.push({ seed: c.seed, what: c.what, step, error: e instanceof Error ? `${e.name}: ${e.message}` : String(e) });
  };
  const step = async <T>(name: string, fn: () => Promise<T>): Promise<T | undefined> => {
    try {
      return await withTimeout(fn(), timeoutMs, name);
    } catch (e) {
      if (!isThinError(e)) finding(name, e);
      return undefined;
    }
  };

  // Read-only: check, then open + dump + ls + status; every file unchanged.
  const before = [hashImage(meta), textsOf(small)];
  const first = await step('check', async () => checkMetadata(meta));
  let open = 'error';
  await step('open (read-only commands)', async () => {
    let pool: Pool;
    try {
      pool = await Pool.open(runDir, opts);
    } catch (e) {
      open = isThinError(e) ? `error ${e.code}` : 'crash';
      throw e;
    }
    open = pool.mode;
    try {
      await step('dump', async () => {
        const w = new XmlDumpWriter(() => {});
        dumpMetadata(pool.md, w);
        w.flush();
      });
      await step('ls', () => runOp({ pool }, 'ls', {}));
      await step('status', () => runOp({ pool }, 'status', {}));
    } finally {
      await pool.close();
    }
  });
  // No mutation removes the stand-in files: this is the harness's own failure.
  if (open === 'error POOL_MISSING') throw new Error(`fuzz: the run directory ${runDir} is gone`);
  const after = [hashImage(meta), textsOf(small)];
  if (before[0] !== after[0]) finding('read-only commands', new Error('the metadata file changed'));
  // Finishing a crashed operation's intent is recovery, not a change by the command.
  if (before[1] !== after[1] && !/"intent": ?\{/.test(c.devices ?? '')) finding('read-only commands', new Error('POOL/devices or POOL/config changed'));

  // Read every device, write, snapshot.
  await step('open (read-write)', async () => {
    const pool = await Pool.open(runDir, opts);
    try {
      const buf = Buffer.alloc(MiB);
      for (const d of pool.registry.list()) {
        await step(`read ${d.name}`, async () => {
          const size = Number.isSafeInteger(d.size) && d.size > 0 ? Math.min(d.size, 64 * MiB) : MiB;
          for (let off = 0; off < size; off += MiB) await pool.read(d.devId, buf.subarray(0, Math.min(MiB, size - off)), off, d.size);
        });
      }
      for (const dev of pool.md.devices()) {
        if (pool.registry.byId(dev)) continue;
        await step(`read unnamed ${dev}`, async () => {
          const top = pool.md.highestMapped(dev as DevId);
          const size = Math.min(((top ?? 0) + 1) * pool.blockBytes, 64 * MiB);
          for (let off = 0; off < size; off += MiB) await pool.read(dev as DevId, buf.subarray(0, Math.min(MiB, size - off)), off, size);
        });
      }
      const named = pool.registry.list()[0];
      if (named) {
        await step('write', () => pool.write(named.devId, Buffer.alloc(4096, 7), 0, named.size));
        await step('snapshot', () => pool.snapshot(named.name, 'fuzz-snap'));
      }
    } finally {
      await pool.close();
    }
  });
  // Repair into a fresh file: a ThinError, or metadata that passes check.
  const beforeRepair = hashImage(meta);
  await step('repair', async () => {
    const out = new MemoryBacking(path.join(runDir, 'metadata.repaired'), Math.max(2 * MiB, Math.floor(c.metaSize / PAGE) * PAGE));
    await repairMetadata(meta, out, { dataFileBytes: c.dataSize });
    const rep = checkMetadata(out);
    if (!rep.ok) finding('repair', new Error(`the repaired metadata fails check: ${rep.fatal[0]}`));
  });
  if (hashImage(meta) !== beforeRepair) finding('repair', new Error('repair changed its input'));
  if (first?.ok) {
    const again = await step('check after use', async () => checkMetadata(meta));
    if (again && !again.ok) finding('check after use', new Error(`a clean pool became inconsistent: ${again.fatal[0]}`));
  }
  return { findings, open };
}

export interface FuzzFigures {
  cases: number;
  findings: Finding[];
  opens: Record<string, number>;
  mutations: Record<string, number>;
  ms: number;
}

/** Case i of a run with this seed; its mutation kinds are counted into f. */
export function nthCase(base: FuzzBase, seed: number, i: number, f: FuzzFigures): FuzzCase {
  const c = makeCase(base, seed * 1_000_003 + i);
  for (const w of c.what) {
    const k = w.split(/[ :(]/)[0]!;
    f.mutations[k] = (f.mutations[k] ?? 0) + 1;
  }
  return c;
}

export async function runFuzz(base: FuzzBase, seed: number, cases: number, progress?: (f: FuzzFigures) => void): Promise<FuzzFigures> {
  const runDir = makeRunDir();
  const f: FuzzFigures = { cases: 0, findings: [], opens: {}, mutations: {}, ms: 0 };
  const start = Date.now();
  try {
    for (let i = 0; i < cases; i++) {
      const c = nthCase(base, seed, i, f);
      const r = await runCase(c, runDir);
      f.cases++;
      f.opens[r.open] = (f.opens[r.open] ?? 0) + 1;
      f.findings.push(...r.findings);
      f.ms = Date.now() - start;
      progress?.(f);
    }
  } finally {
    fs.rmSync(runDir, { recursive: true, force: true });
  }
  return f;
}
