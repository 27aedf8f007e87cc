import { ThinError } from '../base/errors.js';
import { MAX_BLOCK_SECTORS, MAX_DATA_BLOCKS, MAX_DEV_ID, META_BLOCK_SIZE, MIN_BLOCK_SECTORS, SECTOR } from '../base/units.js';
import type { BackingFile } from '../io/backing-file.js';
import { checksumMatches } from '../metadata/checksum.js';
import { INTERNAL, LEAF, maxEntriesFor } from '../metadata/btree/node.js';
import { decodeBitmap, decodeSmRoot, ENTRIES_PER_BITMAP } from '../metadata/space-map/format.js';
import { decodeBlockTime, decodeDetails, type DeviceDetails, NEEDS_CHECK, THIN_MAGIC } from './format.js';
import { restoreMetadata } from './restore.js';
import { XmlDumpWriter } from './xml.js';

// What thin_repair does: rebuild consistent metadata from whatever of the old
// metadata can still be read, into a NEW file, and say what was lost. The
// input is only ever read (block by block, without the engine's block
// manager, so nothing corrupt can throw half-way through a walk).
//
// 1. The superblock. A valid block 0 gives everything. With a bad checksum
//    but the magic intact its fields are used as hints: each root is used
//    only if it reads as a node of the right tree, and nr_data_blocks only if
//    the data file holds that many blocks. Without a usable block 0, a held
//    metadata-snapshot copy (a superblock at its own block number) gives the
//    data block size, time and transaction; options override what cannot be
//    recovered.
// 2. The roots. When the superblock's roots are unusable, every metadata
//    block is scanned for valid btree nodes; roots are nodes no internal node
//    points at. A mapping-tree top level is a tree whose leaves hold 8-byte
//    values that are all block numbers of valid nodes, under keys below 2^24;
//    a details tree one with 24-byte leaf values. Candidates allocated in the
//    old metadata space map (when it can be read) win, then the one with the
//    most entries.
// 3. The walk. Trees are walked leniently: a node that fails its checksum,
//    block number or header, has keys out of order, or holds keys outside
//    what its parent promises is skipped with its whole subtree, and the walk
//    goes on. A device whose mapping tree root is unusable is dropped; a
//    device with a mapping tree but no details gets rebuilt details
//    (snapshotted_time = the pool's time, so every old mapping counts as
//    possibly shared and is copied before it is written); a device with
//    details but no mapping tree is dropped; mappings beyond the data space
//    are dropped.
// 4. The rebuild. The model is written out as thin_dump XML and restored onto
//    the output with the restore path: fresh trees, every device's own
//    mapping tree, mapped_blocks recounted, both space maps recomputed. The
//    held metadata snapshot is not carried over. The output's superblock has
//    needs_check set; the caller clears it once the result passes the checks.

export interface RepairOptions {
  /** Length of the pool's data file in bytes: bounds nr_data_blocks. */
  dataFileBytes?: number;
  /** Data block size in sectors, when the superblock cannot tell it. */
  dataBlockSize?: number;
  /** Transaction id, when the superblock cannot tell it. */
  transactionId?: bigint;
}

export interface DroppedDevice {
  devId: number;
  why: string;
}

export interface RepairReport {
  /** Where the superblock fields came from. */
  superblock: 'valid' | 'bad checksum, fields used' | 'metadata snapshot copy' | 'rebuilt';
  /** Where the details and mapping roots came from. */
  detailsRoot: 'superblock' | 'scan' | 'none';
  mappingRoot: 'superblock' | 'scan' | 'none';
  dataBlockSize: number;
  nrDataBlocks: number;
  transactionId: bigint;
  time: number;
  devicesKept: number[];
  devicesDropped: DroppedDevice[];
  /** Devices whose details were lost and rebuilt. */
  detailsRebuilt: number[];
  mappingsKept: number;
  /** Mappings the details promised but no readable tree holds, plus those dropped outright. */
  mappingsDropped: number;
  /** Unreadable or invalid nodes skipped with their subtrees. */
  badNodes: number;
  /** Devices whose stored mapped_blocks differed from what was recovered. */
  mappedBlocksFixed: number[];
  /** Data blocks counted in use that nothing refers to any more (now free). */
  dataBlocksFreed: number;
  /** Data blocks referred to that the old space map counted free. */
  dataBlocksUnderCounted: number;
  /** The old data space map could not be read, so the two figures above are unknown. */
  dataSpaceMapUnreadable: boolean;
  metadataSnapshotDropped: boolean;
  notes: string[];
}

//------------------------------------------------------------------------------
// reading blocks leniently

const HEADER = 32;

function u64(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off + 4) * 2 ** 32 + buf.readUInt32LE(off);
}

interface Node {
  leaf: boolean;
  valueSize: number;
  keys: number[];
  values: Buffer[];
}

class Reader {
  readonly fileBlocks: number;
  private readonly nodes = new Map<number, Node | null>();

  constructor(readonly file: BackingFile) {
    this.fileBlocks = Math.floor(file.size() / META_BLOCK_SIZE);
  }

  raw(b: number): Buffer | undefined {
    if (!Number.isSafeInteger(b) || b < 0 || b >= this.fileBlocks) return undefined;
    const buf = Buffer.alloc(META_BLOCK_SIZE);
    this.file.readSync(buf, b * META_BLOCK_SIZE);
    return buf;
  }

  /** A block of a kind that passes its checksum and carries its own number. */
  valid(b: number, kind: 'superblock' | 'bitmap' | 'index' | 'node'): Buffer | undefined {
    const buf = this.raw(b);
    if (!buf || !checksumMatches(buf, kind) || u64(buf, 8) !== b) return undefined;
    return buf;
  }

  /** A btree node with a sane header and strictly increasing keys, or null. */
  node(b: number): Node | null {
    if (this.nodes.has(b)) return this.nodes.get(b)!;
    const n = this.decodeNode(b);
    this.nodes.set(b, n);
    return n;
  }

  private decodeNode(b: number): Node | null {
    if (b === 0) return null;
    const buf = this.valid(b, 'node');
    if (!buf) return null;
    const flags = buf.readUInt32LE(4);
    const nr = buf.readUInt32LE(16);
    const max = buf.readUInt32LE(20);
    const vs = buf.readUInt32LE(24);
    if (flags !== INTERNAL && flags !== LEAF) return null;
    if (vs === 0 || vs > 64 || (flags === INTERNAL && vs !== 8) || max !== maxEntriesFor(vs) || nr > max) return null;
    const keys: number[] = [];
    const values: Buffer[] = [];
    const vbase = HEADER + 8 * max;
    for (let i = 0; i < nr; i++) {
      const k = u64(buf, HEADER + 8 * i);
      if (i > 0 && !(k > keys[i - 1]!)) return null;
      keys.push(k);
      values.push(Buffer.from(buf.subarray(vbase + vs * i, vbase + vs * (i + 1))));
    }
    return { leaf: flags === LEAF, valueSize: vs, keys, values };
  }

  /**
   * Visits the leaf entries of a tree in key order, skipping bad subtrees and
   * any key outside [lo, hi). Returns the number of bad nodes met.
   */
  walk(root: number, leafVs: number, fn: (key: number, value: Buffer) => void, lo = 0, hi = Infinity): number {
    let bad = 0;
    const seen = new Set<number>();
    const visit = (b: number, lo: number, hi: number, depth: number): void => {
      const n = this.node(b);
      if (!n || seen.has(b) || depth > 16 || (n.leaf && n.valueSize !== leafVs)) {
        bad++;
        return;
      }
      seen.add(b);
      for (let i = 0; i < n.keys.length; i++) {
        const k = n.keys[i]!;
        const next = i + 1 < n.keys.length ? Math.min(n.keys[i + 1]!, hi) : hi;
        if (n.leaf) {
          if (k >= lo && k < hi) fn(k, n.values[i]!);
        } else if (next > lo) {
          visit(u64(n.values[i]!, 0), Math.max(k, lo), next, depth + 1);
        }
      }
    };
    visit(root, lo, hi, 0);
    return bad;
  }
}

//------------------------------------------------------------------------------
// the superblock and the roots

interface Hints {
  source: RepairReport['superblock'];
  dataBlockSize?: number;
  nrDataBlocks?: number;
  time?: number;
  transId?: bigint;
  mappingRoot?: number;
  detailsRoot?: number;
  metaSmIndex?: number;
  metaSmBlocks?: number;
  dataSmIndex?: number;
  dataSmRef?: number;
  dataSmBlocks?: number;
  held: boolean;
}

/** A decoder's result, or undefined where a field is impossible (u64 beyond 2^53). */
function lenient<T>(fn: () => T): T | undefined {
  try {
    return fn();
  } catch {
    return undefined;
  }
}

function validBlockSize(s: number): boolean {
  return s >= MIN_BLOCK_SECTORS && s <= MAX_BLOCK_SECTORS && s % MIN_BLOCK_SECTORS === 0;
}

function fieldsOf(raw: Buffer, source: RepairReport['superblock'], withSpaceMaps: boolean): Hints {
  const h: Hints = { source, time: raw.readUInt32LE(44), transId: raw.readBigUInt64LE(48), held: u64(raw, 56) !== 0 };
  const dbs = raw.readUInt32LE(336);
  if (validBlockSize(dbs)) h.dataBlockSize = dbs;
  h.mappingRoot = u64(raw, 320);
  h.detailsRoot = u64(raw, 328);
  const data = withSpaceMaps ? lenient(() => decodeSmRoot(raw, 64)) : undefined;
  const meta = withSpaceMaps ? lenient(() => decodeSmRoot(raw, 192)) : undefined;
  if (data) {
    h.nrDataBlocks = data.nrBlocks;
    h.dataSmIndex = data.bitmapRoot;
    h.dataSmRef = data.refCountRoot;
    h.dataSmBlocks = data.nrBlocks;
  }
  if (meta) {
    h.metaSmIndex = meta.bitmapRoot;
    h.metaSmBlocks = meta.nrBlocks;
  }
  return h;
}

function superblockHints(r: Reader): Hints {
  const raw = r.raw(0);
  if (raw && checksumMatches(raw, 'superblock') && raw.readUInt32LE(32) === THIN_MAGIC && raw.readUInt32LE(36) === 0 && u64(raw, 8) === 0) {
    return fieldsOf(raw, 'valid', true);
  }
  if (raw && raw.readUInt32LE(32) === THIN_MAGIC && raw.readUInt32LE(36) === 0) {
    return fieldsOf(raw, 'bad checksum, fields used', true);
  }
  // A held metadata snapshot is a superblock copy at its own block number.
  for (let b = 1; b < r.fileBlocks; b++) {
    const copy = r.valid(b, 'superblock');
    if (copy && copy.readUInt32LE(32) === THIN_MAGIC) {
      const h = fieldsOf(copy, 'metadata snapshot copy', false);
      delete h.mappingRoot;
      delete h.detailsRoot;
      return h;
    }
  }
  return { source: 'rebuilt', held: false };
}

/** Metadata blocks the old metadata space map counts as in use (undefined if unreadable). */
function allocatedMeta(r: Reader, h: Hints): ((b: number) => boolean) | undefined {
  if (h.metaSmIndex === undefined || h.metaSmBlocks === undefined) return undefined;
  const index = r.valid(h.metaSmIndex, 'index');
  if (!index) return undefined;
  const nr = Math.min(255, Math.ceil(Math.min(h.metaSmBlocks, r.fileBlocks) / ENTRIES_PER_BITMAP));
  const bitmaps: Array<Uint8Array | undefined> = [];
  for (let i = 0; i < nr; i++) {
    const bm = r.valid(u64(index, 16 + 16 * i), 'bitmap');
    bitmaps.push(bm ? decodeBitmap(bm) : undefined);
  }
  return (b) => {
    const bm = bitmaps[Math.floor(b / ENTRIES_PER_BITMAP)];
    return bm === undefined || bm[b % ENTRIES_PER_BITMAP] !== 0;
  };
}

interface Candidate {
  root: number;
  entries: number;
  allocated: boolean;
}

/** Roots of trees found by scanning every block; `accept` scores a tree (-1 = not this kind). */
function scanRoots(r: Reader, accept: (root: number) => number, allocated?: (b: number) => boolean): Candidate[] {
  const pointedAt = new Set<number>();
  const nodes: number[] = [];
  for (let b = 1; b < r.fileBlocks; b++) {
    const n = r.node(b);
    if (!n) continue;
    nodes.push(b);
    if (!n.leaf) for (const v of n.values) pointedAt.add(u64(v, 0));
  }
  const out: Candidate[] = [];
  for (const b of nodes) {
    if (pointedAt.has(b)) continue;
    const entries = accept(b);
    if (entries >= 0) out.push({ root: b, entries, allocated: allocated ? allocated(b) : false });
  }
  return out.sort((a, b) => Number(b.allocated) - Number(a.allocated) || b.entries - a.entries || b.root - a.root);
}

function isTopLevel(r: Reader, root: number): number {
  const n = r.node(root);
  if (!n) return -1;
  // Every value must be a metadata block number (device-level leaves hold
  // data_block << 24 values, far beyond the file); a damaged device tree
  // does not disqualify the top level, but most roots must read.
  let ok = true;
  let count = 0;
  let valid = 0;
  r.walk(root, 8, (k, v) => {
    const sub = u64(v, 0);
    if (k > MAX_DEV_ID || sub >= r.fileBlocks) ok = false;
    if (r.node(sub)) valid++;
    count++;
  });
  return ok && count > 0 && valid * 2 >= count ? valid : -1;
}

function isDetails(r: Reader, root: number): number {
  const n = r.node(root);
  if (!n) return -1;
  let count = 0;
  r.walk(root, 24, () => count++);
  return count > 0 || (n.leaf && n.valueSize === 24) ? count : -1;
}

//------------------------------------------------------------------------------
// the repair

interface Device {
  details: DeviceDetails | undefined;
  root: number;
  mappings: Array<[number, number, number]>;
}

export async function repairMetadata(input: BackingFile, output: BackingFile, opts: RepairOptions = {}): Promise<RepairReport> {
  const r = new Reader(input);
  if (r.fileBlocks === 0) throw new ThinError('BAD_SUPERBLOCK', `${input.path}: shorter than one metadata block; there is nothing to repair from`);
  const h = superblockHints(r);
  const notes: string[] = [];

  const dataBlockSize = opts.dataBlockSize ?? h.dataBlockSize;
  if (dataBlockSize === undefined || !validBlockSize(dataBlockSize)) {
    throw new ThinError('BAD_SUPERBLOCK', `${input.path}: the data block size cannot be recovered from the metadata; give it with --data-block-size`);
  }
  const blockBytes = dataBlockSize * SECTOR;
  const inFile = opts.dataFileBytes === undefined ? undefined : Math.floor(opts.dataFileBytes / blockBytes);
  let nrDataBlocks = h.nrDataBlocks;
  if (nrDataBlocks === undefined || nrDataBlocks > MAX_DATA_BLOCKS || (inFile !== undefined && nrDataBlocks > inFile)) {
    if (inFile === undefined) throw new ThinError('BAD_SUPERBLOCK', `${input.path}: the number of data blocks cannot be recovered and no data file was given`);
    if (nrDataBlocks !== undefined) notes.push(`nr_data_blocks ${nrDataBlocks} does not fit the data file; using its length (${inFile} blocks)`);
    nrDataBlocks = inFile;
  }

  const allocated = allocatedMeta(r, h);
  let mappingSource: RepairReport['mappingRoot'] = 'superblock';
  let mappingRoot = h.mappingRoot;
  if (mappingRoot === undefined || (isTopLevel(r, mappingRoot) < 0 && !emptyLeaf(r, mappingRoot, 8))) {
    const c = scanRoots(r, (b) => isTopLevel(r, b), allocated)[0];
    mappingRoot = c?.root;
    mappingSource = c ? 'scan' : 'none';
  }
  let detailsSource: RepairReport['detailsRoot'] = 'superblock';
  let detailsRoot = h.detailsRoot;
  if (detailsRoot === undefined || isDetails(r, detailsRoot) < 0) {
    const c = scanRoots(r, (b) => isDetails(r, b), allocated)[0];
    detailsRoot = c?.root;
    detailsSource = c ? 'scan' : 'none';
  }

  let badNodes = 0;
  const details = new Map<number, DeviceDetails>();
  if (detailsRoot !== undefined) {
    badNodes += r.walk(detailsRoot, 24, (k, v) => {
      const d = lenient(() => decodeDetails(v));
      if (d) details.set(k, d);
      else notes.push(`device ${k}: its details hold impossible values; rebuilt`);
    });
  }
  const devices = new Map<number, Device>();
  if (mappingRoot !== undefined) {
    badNodes += r.walk(mappingRoot, 8, (k, v) => devices.set(k, { details: undefined, root: u64(v, 0), mappings: [] }));
  }

  const dropped: DroppedDevice[] = [];
  let mappingsDropped = 0;
  let maxTime = h.time ?? 0;
  for (const [dev, d] of devices) {
    d.details = details.get(dev);
    if (dev > MAX_DEV_ID) {
      dropped.push({ devId: dev, why: 'dev id above 2^24 - 1' });
      devices.delete(dev);
      continue;
    }
    if (!r.node(d.root)) {
      dropped.push({ devId: dev, why: `its mapping tree root (block ${d.root}) is unreadable` });
      mappingsDropped += d.details?.mappedBlocks ?? 0;
      devices.delete(dev);
      continue;
    }
    badNodes += r.walk(d.root, 8, (vb, v) => {
      const bt = decodeBlockTime(v);
      if (bt.block >= nrDataBlocks!) {
        mappingsDropped++;
        return;
      }
      d.mappings.push([vb, bt.block, bt.time]);
      if (bt.time > maxTime) maxTime = bt.time;
    });
  }
  for (const dev of details.keys()) {
    if (!devices.has(dev) && !dropped.some((x) => x.devId === dev)) {
      dropped.push({ devId: dev, why: mappingRoot === undefined ? 'no mapping tree was found' : 'it has details but no mapping tree' });
      mappingsDropped += details.get(dev)!.mappedBlocks;
    }
  }
  for (const d of details.values()) maxTime = Math.max(maxTime, d.creationTime, d.snapshottedTime);
  const time = maxTime;
  let transId = opts.transactionId ?? h.transId;
  if (transId === undefined) {
    transId = [...details.values()].reduce((m, d) => (d.transId > m ? d.transId : m), 0n);
    notes.push(`transaction id not recoverable; using the highest a device records (${transId}); override with --transaction-id`);
  }

  const rebuilt: number[] = [];
  const fixed: number[] = [];
  let kept = 0;
  for (const [dev, d] of devices) {
    kept += d.mappings.length;
    if (!d.details) {
      rebuilt.push(dev);
      d.details = { mappedBlocks: d.mappings.length, transId, creationTime: 0, snapshottedTime: time };
    } else {
      if (d.details.mappedBlocks > d.mappings.length) mappingsDropped += d.details.mappedBlocks - d.mappings.length;
      if (d.details.mappedBlocks !== d.mappings.length) fixed.push(dev);
    }
  }

  const xml = toXml(devices, { time, transId, dataBlockSize, nrDataBlocks });
  const md = await restoreMetadata(output, xml);
  const counts = oldDataCounts(r, h, nrDataBlocks);
  let freed = 0;
  let under = 0;
  if (counts) {
    for (let b = 0; b < nrDataBlocks; b++) {
      const was = counts(b);
      const now = md.dataCount(b as never);
      if (was > 0 && now === 0) freed++;
      else if (was === 0 && now > 0) under++;
    }
  }

  return {
    superblock: h.source,
    detailsRoot: detailsSource,
    mappingRoot: mappingSource,
    dataBlockSize,
    nrDataBlocks,
    transactionId: transId,
    time,
    devicesKept: [...devices.keys()].sort((a, b) => a - b),
    devicesDropped: dropped.sort((a, b) => a.devId - b.devId),
    detailsRebuilt: rebuilt.sort((a, b) => a - b),
    mappingsKept: kept,
    mappingsDropped,
    badNodes,
    mappedBlocksFixed: fixed.sort((a, b) => a - b),
    dataBlocksFreed: freed,
    dataBlocksUnderCounted: under,
    dataSpaceMapUnreadable: counts === undefined,
    metadataSnapshotDropped: h.held,
    notes,
  };
}

function emptyLeaf(r: Reader, b: number, vs: number): boolean {
  const n = r.node(b);
  return n !== null && n.leaf && n.valueSize === vs && n.keys.length === 0;
}

function toXml(devices: Map<number, Device>, sb: { time: number; transId: bigint; dataBlockSize: number; nrDataBlocks: number }): string {
  const chunks: string[] = [];
  const w = new XmlDumpWriter((s) => chunks.push(s));
  w.superblockBegin({
    uuid: '', time: sb.time, transaction: sb.transId, flags: NEEDS_CHECK, version: 2,
    dataBlockSize: sb.dataBlockSize, nrDataBlocks: sb.nrDataBlocks,
  });
  for (const dev of [...devices.keys()].sort((a, b) => a - b)) {
    const d = devices.get(dev)!;
    const det = d.details!;
    w.deviceBegin({ devId: dev, mappedBlocks: d.mappings.length, transaction: det.transId, creationTime: det.creationTime, snapTime: det.snapshottedTime });
    for (const [vb, block, time] of d.mappings) w.mapping({ originBlock: vb, dataBlock: block, time });
    w.deviceEnd();
  }
  w.superblockEnd();
  w.flush();
  return chunks.join('');
}

/** The old data space map's counts (bitmaps and ref-count tree), or undefined if unreadable. */
function oldDataCounts(r: Reader, h: Hints, nrDataBlocks: number): ((b: number) => number) | undefined {
  if (h.dataSmIndex === undefined || h.dataSmBlocks !== nrDataBlocks) return undefined;
  const bitmaps = new Map<number, Uint8Array>();
  let unreadable = 0;
  const badNodes = r.walk(h.dataSmIndex, 16, (k, v) => {
    const bm = r.valid(u64(v, 0), 'bitmap');
    if (bm) bitmaps.set(k, decodeBitmap(bm));
    else unreadable++;
  });
  if (badNodes + unreadable > 0 || bitmaps.size !== Math.ceil(nrDataBlocks / ENTRIES_PER_BITMAP)) return undefined;
  const overflow = new Map<number, number>();
  if (h.dataSmRef !== undefined) r.walk(h.dataSmRef, 4, (k, v) => overflow.set(k, v.readUInt32LE(0)));
  return (b) => {
    const c = bitmaps.get(Math.floor(b / ENTRIES_PER_BITMAP))?.[b % ENTRIES_PER_BITMAP] ?? 0;
    return c === 3 ? overflow.get(b) ?? 3 : c;
  };
}

/** One line per finding, for people. */
export function describeRepair(rep: RepairReport): string[] {
  const lines = [
    `superblock: ${rep.superblock}; details tree from ${rep.detailsRoot}, mapping tree from ${rep.mappingRoot}`,
    `data block size ${rep.dataBlockSize} sectors, ${rep.nrDataBlocks} data blocks, transaction ${rep.transactionId}, time ${rep.time}`,
    `devices kept: ${rep.devicesKept.length ? rep.devicesKept.join(' ') : 'none'}`,
  ];
  for (const d of rep.devicesDropped) lines.push(`device ${d.devId} dropped: ${d.why}`);
  if (rep.detailsRebuilt.length) lines.push(`details rebuilt for devices ${rep.detailsRebuilt.join(' ')} (creation time 0, treated as snapshotted now)`);
  lines.push(`mappings kept: ${rep.mappingsKept}; mappings lost: ${rep.mappingsDropped}; unreadable nodes skipped: ${rep.badNodes}`);
  if (rep.mappedBlocksFixed.length) lines.push(`mapped_blocks recounted for devices ${rep.mappedBlocksFixed.join(' ')}`);
  lines.push(rep.dataSpaceMapUnreadable
    ? 'data space map: the old one was unreadable; rebuilt from the mappings'
    : `data space map rebuilt: ${rep.dataBlocksFreed} blocks freed (no longer referenced), ${rep.dataBlocksUnderCounted} under-counted blocks fixed`);
  lines.push('metadata space map rebuilt');
  if (rep.metadataSnapshotDropped) lines.push('the held metadata snapshot was not carried over');
  for (const n of rep.notes) lines.push(`note: ${n}`);
  return lines;
}
