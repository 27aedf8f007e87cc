import { MAX_DATA_BLOCKS, META_BLOCK_SIZE, MAX_BLOCK_SECTORS, MIN_BLOCK_SECTORS, META_SECTORS } from '../base/units.js';
import type { BackingFile } from '../io/backing-file.js';
import { type BlockKind, checksumMatches, SALT } from '../metadata/checksum.js';
import { INTERNAL, LEAF } from '../metadata/btree/node.js';
import {
  decodeBitmap, decodeIndexBlock, decodeSmRoot, ENTRIES_PER_BITMAP, type IndexEntry, MAX_METADATA_BITMAPS, type SmRoot,
} from '../metadata/space-map/format.js';
import { isAllZero, THIN_MAGIC } from './format.js';

// An independent checker of dm-thin metadata (what thin_check does, and what
// thin_check 0.9.0 leaves out). It reads the file itself, read-only, block by
// block; it shares only the on-disk format decoders with the engine, never its
// block manager, trees or space maps, so an engine bug cannot hide itself.
//
// Checked:
//   * superblock: checksum, block number, magic, metadata block size, data
//     block size, incompatible feature flags;
//   * every btree node reachable from anywhere (both space maps' trees, the
//     details tree, the two-level mapping tree, the held snapshot's trees):
//     checksum, block number, flags, value size for the tree, max_entries,
//     nr_entries, non-root nodes at least max_entries / 3 full, keys strictly
//     increasing, every child's first key >= its parent key and the whole
//     subtree below the parent's next key, all leaves at one depth;
//   * the device ids of the details tree and of the mapping tree's top level
//     are the same set, and each device's mapped_blocks equals the number of
//     mappings in its tree (thin_check 0.9.0 does not check this);
//   * every mapped data block lies below nr_data_blocks;
//   * metadata space map: the expected count of every metadata block is
//     recomputed from every reference (superblock, space-map roots, index
//     entries, parent nodes, top-level values, the held snapshot) and
//     compared with the bitmaps and the ref-count tree: too low = fatal, too
//     high = leak (non-fatal);
//   * data space map: the expected count of every data block is the number of
//     distinct physical mapping leaves holding it (a shared leaf counts once),
//     compared the same way (thin_check 0.9.0 skips this);
//   * index entries' nr_free / none_free_before and the roots' nr_allocated
//     (reported as non-fatal only).
//
// A shared subtree is read and validated once; each further reference adds
// one to its root's expected count and is checked against the bounds of the
// referencing parent.
//
// With `metadataSnap` only the held snapshot's devices and mappings are
// checked (like thin_check -m): no space maps.

export interface CheckOptions {
  /** Check the held metadata snapshot's trees only (thin_check -m). */
  metadataSnap?: boolean;
  /** Messages kept per kind of problem before the rest is summarised (default 20). */
  maxMessages?: number;
}

export interface CheckReport {
  /** No fatal errors (non-fatal ones, such as leaks, may remain). */
  ok: boolean;
  fatal: string[];
  nonFatal: string[];
  info: { transactionId: bigint; metadataFreeBlocks: number };
}

export function checkMetadata(file: BackingFile, opts: CheckOptions = {}): CheckReport {
  const c = new Checker(file, opts);
  try {
    c.run();
  } catch (e) {
    c.report.fatal('abort', `check aborted: ${(e as Error)?.message ?? String(e)}`);
  }
  return c.result();
}

//------------------------------------------------------------------------------
// messages

class Reporter {
  readonly fatals: string[] = [];
  readonly nonFatals: string[] = [];
  private readonly counts = new Map<string, { n: number; fatal: boolean }>();

  constructor(private readonly max: number) {}

  fatal(kind: string, msg: string): void {
    this.add(kind, msg, true);
  }

  nonFatal(kind: string, msg: string): void {
    this.add(kind, msg, false);
  }

  private add(kind: string, msg: string, fatal: boolean): void {
    const key = `${fatal ? 'F' : 'N'}:${kind}`;
    const c = this.counts.get(key) ?? { n: 0, fatal };
    c.n++;
    this.counts.set(key, c);
    if (c.n <= this.max) (fatal ? this.fatals : this.nonFatals).push(msg.replace(/\s*\n\s*/g, ' '));
  }

  finish(): void {
    for (const [key, c] of this.counts) {
      if (c.n > this.max) {
        (c.fatal ? this.fatals : this.nonFatals).push(`... and ${c.n - this.max} more like these (${key.slice(2)})`);
      }
    }
  }
}

//------------------------------------------------------------------------------
// trees

const HEADER = 32;

interface Role {
  readonly name: string;
  readonly leafValueSize: number;
  /** Keep leaf entries for a logical walk afterwards. */
  readonly keep: boolean;
}

const DETAILS: Role = { name: 'device details tree', leafValueSize: 24, keep: true };
const TOP: Role = { name: 'mapping tree (top level)', leafValueSize: 8, keep: true };
const BOTTOM: Role = { name: 'mapping tree (device level)', leafValueSize: 8, keep: false };
const DATA_INDEX: Role = { name: 'data space map index tree', leafValueSize: 16, keep: true };
const META_REF: Role = { name: 'metadata space map ref-count tree', leafValueSize: 4, keep: true };
const DATA_REF: Role = { name: 'data space map ref-count tree', leafValueSize: 4, keep: true };

interface NodeInfo {
  role: Role;
  /** Unreadable or invalid: not descended into, its subtree is unknown. */
  bad: boolean;
  nr: number;
  max: number;
  height: number;
  /** keys[0] of the node itself. */
  firstKey: number;
  /** Smallest and largest key of the subtree's leaves (NaN when empty). */
  minKey: number;
  maxKey: number;
  /** Entries in the subtree's leaves. */
  entries: number;
  children?: number[];
  keys?: number[];
  values?: Buffer[];
}

type Use = { kind: 'node'; info: NodeInfo } | { kind: 'bitmap' | 'index' | 'superblock'; what: string };

const KIND_NAMES: Record<BlockKind, string> = { superblock: 'superblock', node: 'btree node', bitmap: 'bitmap', index: 'space map index' };

/** A u64 as a double: exact below 2^53, never throws. */
function u64(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off + 4) * 2 ** 32 + buf.readUInt32LE(off);
}

interface DeviceView {
  label: string;
  details: Map<number, Buffer>;
  top: Map<number, number>;
  /** Both trees were read whole (otherwise a missing device proves nothing). */
  detailsComplete: boolean;
  topComplete: boolean;
}

class Checker {
  readonly report: Reporter;
  private readonly fileBlocks: number;
  private transactionId = 0n;
  private metadataFreeBlocks = 0;
  private nrMeta = 0;
  private nrData = 0;
  /** Expected count of each metadata block. */
  private metaExpected = new Uint32Array(0);
  /** Expected count of each data block: a byte, overflow from 255 in a map. */
  private dataExpected: Uint8Array | undefined;
  private readonly dataExpectedBig = new Map<number, number>();
  private countData = true;
  private readonly uses = new Map<number, Use>();
  private readonly reported = new Set<string>();
  /**
   * Something reachable could not be read or used: expected counts are then
   * only lower bounds, so under-counts stand but leaks cannot be told.
   */
  private incomplete = false;

  constructor(
    private readonly file: BackingFile,
    private readonly opts: CheckOptions,
  ) {
    this.report = new Reporter(opts.maxMessages ?? 20);
    this.fileBlocks = Math.floor(file.size() / META_BLOCK_SIZE);
  }

  result(): CheckReport {
    this.report.finish();
    return {
      ok: this.report.fatals.length === 0,
      fatal: this.report.fatals,
      nonFatal: this.report.nonFatals,
      info: { transactionId: this.transactionId, metadataFreeBlocks: this.metadataFreeBlocks },
    };
  }

  //----------------------------------------------------------------------------
  // blocks

  private readBlock(b: number): Buffer {
    const buf = Buffer.alloc(META_BLOCK_SIZE);
    this.file.readSync(buf, b * META_BLOCK_SIZE);
    return buf;
  }

  /** Reads and validates a block of a given kind, or reports why not. */
  private readValid(b: number, kind: BlockKind, what: string): Buffer | undefined {
    if (b >= this.fileBlocks) {
      this.incomplete = true;
      this.report.fatal('range', `${what}: block ${b} lies past the end of the metadata file (${this.fileBlocks} blocks)`);
      return undefined;
    }
    const buf = this.readBlock(b);
    if (!checksumMatches(buf, kind)) {
      this.incomplete = true;
      const other = (Object.keys(SALT) as BlockKind[]).find((k) => k !== kind && checksumMatches(buf, k));
      const hint = isAllZero(buf) ? ' (the block is all zeros)' : other ? ` (it checksums as a ${KIND_NAMES[other]})` : '';
      this.report.fatal('checksum', `${what}: block ${b} has a bad ${KIND_NAMES[kind]} checksum${hint}`);
      return undefined;
    }
    const at = u64(buf, 8);
    if (at !== b) {
      this.incomplete = true;
      this.report.fatal('blocknr', `${what}: block ${b} claims to be block ${at}`);
      return undefined;
    }
    return buf;
  }

  /** Counts one reference to metadata block b; false if b is outside the space map. */
  private refMeta(b: number, what: string): boolean {
    if (!Number.isSafeInteger(b) || b < 0 || b >= this.nrMeta) {
      this.incomplete = true;
      this.report.fatal('range', `${what}: refers to metadata block ${Number.isSafeInteger(b) ? b : '(above 2^53)'}, outside the metadata space map (${this.nrMeta} blocks)`);
      return false;
    }
    this.metaExpected[b]!++;
    return true;
  }

  /** Claims block b for a non-node use; reports a block used twice. */
  private claim(b: number, kind: 'bitmap' | 'index' | 'superblock', what: string): boolean {
    const u = this.uses.get(b);
    if (u) {
      this.incomplete = true;
      const prev = u.kind === 'node' ? `a node of the ${u.info.role.name}` : u.what;
      this.report.fatal('shared', `metadata block ${b} is used both as ${prev} and as ${what}`);
      return false;
    }
    this.uses.set(b, { kind, what });
    return true;
  }

  private once(key: string): boolean {
    if (this.reported.has(key)) return false;
    this.reported.add(key);
    return true;
  }

  //----------------------------------------------------------------------------
  // btree walking

  /**
   * One reference to a node of a tree with the given role. Reads and checks
   * the node the first time only; returns undefined when it is unusable.
   */
  private refNode(b: number, role: Role, ctx: string, isRoot: boolean): NodeInfo | undefined {
    if (!this.refMeta(b, ctx)) return undefined;
    const u = this.uses.get(b);
    let info: NodeInfo;
    if (u) {
      if (u.kind !== 'node' || u.info.role !== role) {
        this.incomplete = true;
        if (this.once(`role:${b}:${role.name}`)) {
          const prev = u.kind === 'node' ? `a node of the ${u.info.role.name}` : u.what;
          this.report.fatal('shared', `${ctx}: metadata block ${b} is used both as ${prev} and as a node of the ${role.name}`);
        }
        return undefined;
      }
      info = u.info;
    } else {
      info = this.visitNode(b, role, ctx);
      this.uses.set(b, { kind: 'node', info });
    }
    if (info.bad) {
      this.incomplete = true;
      return undefined;
    }
    if (!isRoot && info.nr < Math.floor(info.max / 3) && this.once(`underfull:${b}`)) {
      this.report.fatal('node', `${ctx}: btree node ${b} is not a root but holds only ${info.nr} of ${info.max} entries (minimum ${Math.floor(info.max / 3)})`);
    }
    return info;
  }

  private visitNode(b: number, role: Role, ctx: string): NodeInfo {
    const info: NodeInfo = { role, bad: true, nr: 0, max: 0, height: 0, firstKey: NaN, minKey: NaN, maxKey: NaN, entries: 0 };
    const where = `${ctx}: btree node ${b}`;
    const buf = this.readValid(b, 'node', ctx);
    if (!buf) return info;
    const flags = buf.readUInt32LE(4);
    const nr = buf.readUInt32LE(16);
    const max = buf.readUInt32LE(20);
    const vs = buf.readUInt32LE(24);
    const fail = (why: string): NodeInfo => {
      this.report.fatal('node', `${where}: ${why}`);
      return info;
    };
    if (flags !== INTERNAL && flags !== LEAF) return fail(`bad flags ${flags} (expected 1 = internal or 2 = leaf)`);
    const leaf = flags === LEAF;
    const wantVs = leaf ? role.leafValueSize : 8;
    if (vs !== wantVs) return fail(`value size ${vs}, expected ${wantVs} for ${leaf ? 'a leaf' : 'an internal node'} of this tree`);
    if (max === 0 || max % 3 !== 0 || HEADER + (8 + vs) * max > META_BLOCK_SIZE) return fail(`bad max_entries ${max}`);
    if (nr > max) return fail(`nr_entries ${nr} exceeds max_entries ${max}`);
    if (!leaf && nr === 0) return fail('an internal node with no entries');
    info.nr = nr;
    info.max = max;
    info.bad = false;

    const keys: number[] = new Array(nr);
    for (let i = 0; i < nr; i++) keys[i] = u64(buf, HEADER + 8 * i);
    for (let i = 1; i < nr; i++) {
      if (!(keys[i]! > keys[i - 1]!)) {
        this.report.fatal('node', `${where}: keys out of order (${keys[i - 1]} then ${keys[i]} at entry ${i})`);
        info.bad = true;
        return info;
      }
    }
    info.firstKey = nr > 0 ? keys[0]! : NaN;
    const vbase = HEADER + 8 * max;

    if (leaf) {
      info.entries = nr;
      info.minKey = info.firstKey;
      info.maxKey = nr > 0 ? keys[nr - 1]! : NaN;
      if (role === BOTTOM) {
        this.mappingLeaf(buf, nr, vbase, keys, ctx);
      } else if (role === TOP) {
        info.keys = keys;
        info.values = [];
        for (let i = 0; i < nr; i++) {
          const v = Buffer.from(buf.subarray(vbase + 8 * i, vbase + 8 * i + 8));
          info.values.push(v);
          const dev = keys[i]!;
          this.refNode(u64(v, 0), BOTTOM, `${ctx.replace(/ \(top level\)$/, '')} of device ${dev}`, true);
        }
      } else if (role.keep) {
        info.keys = keys;
        info.values = [];
        for (let i = 0; i < nr; i++) info.values.push(Buffer.from(buf.subarray(vbase + vs * i, vbase + vs * (i + 1))));
      }
      return info;
    }

    // internal
    const children: number[] = [];
    let height = -1;
    for (let i = 0; i < nr; i++) {
      const child = u64(buf, vbase + 8 * i);
      children.push(child);
      const ci = this.refNode(child, role, ctx, false);
      if (!ci) {
        info.entries = NaN;
        continue;
      }
      if (height < 0) height = ci.height;
      else if (ci.height !== height && this.once(`height:${b}`)) {
        this.report.fatal('node', `${where}: children at different depths (child ${i}, block ${child})`);
      }
      if (ci.firstKey < keys[i]!) {
        this.report.fatal('node', `${where}: child ${child} starts at key ${ci.firstKey}, below the parent's key ${keys[i]}`);
      }
      if (i + 1 < nr && ci.maxKey >= keys[i + 1]!) {
        this.report.fatal('node', `${where}: child ${child} holds key ${ci.maxKey}, not below the parent's next key ${keys[i + 1]}`);
      }
      info.entries += ci.entries;
      if (!Number.isNaN(ci.minKey) && !(info.minKey <= ci.minKey)) info.minKey = ci.minKey;
      if (!Number.isNaN(ci.maxKey) && !(info.maxKey >= ci.maxKey)) info.maxKey = ci.maxKey;
    }
    info.height = height + 1;
    if (role.keep) info.children = children;
    return info;
  }

  /** A physical mapping leaf, seen once: data block range and expected data counts. */
  private mappingLeaf(buf: Buffer, nr: number, vbase: number, keys: number[], ctx: string): void {
    const nrData = this.nrData;
    const counts = this.dataExpected;
    for (let i = 0; i < nr; i++) {
      const off = vbase + 8 * i;
      const block = buf.readUInt32LE(off + 4) * 256 + (buf.readUInt32LE(off) >>> 24);
      if (block >= nrData) {
        this.report.fatal('data-range', `${ctx}: virtual block ${keys[i]} maps to data block ${block}, beyond the end of the data device (${nrData} blocks)`);
        continue;
      }
      if (!this.countData) continue;
      if (counts) {
        const c = counts[block]!;
        if (c < 255) counts[block] = c + 1;
        else this.dataExpectedBig.set(block, (this.dataExpectedBig.get(block) ?? 255) + 1);
      } else {
        this.dataExpectedBig.set(block, (this.dataExpectedBig.get(block) ?? 0) + 1);
      }
    }
  }

  private expectedData(b: number): number {
    if (this.dataExpected) {
      const c = this.dataExpected[b]!;
      return c < 255 ? c : this.dataExpectedBig.get(b) ?? 255;
    }
    return this.dataExpectedBig.get(b) ?? 0;
  }

  /** Leaf entries of a kept tree in key order (skips what could not be read). */
  private entriesOf(root: NodeInfo | undefined): Array<[number, Buffer]> & { complete: boolean } {
    const out = Object.assign([] as Array<[number, Buffer]>, { complete: true });
    const walk = (info: NodeInfo | undefined, depth: number): void => {
      if (!info || info.bad || depth > 64) {
        out.complete = false;
        return;
      }
      if (info.values) {
        for (let i = 0; i < info.values.length; i++) out.push([info.keys![i]!, info.values[i]!]);
        return;
      }
      for (const c of info.children ?? []) {
        const u = this.uses.get(c);
        walk(u?.kind === 'node' && u.info.role === info.role ? u.info : undefined, depth + 1);
      }
    };
    walk(root, 0);
    return out;
  }

  //----------------------------------------------------------------------------
  // the check

  run(): void {
    const raw = this.readBlock(0);
    if (this.fileBlocks === 0) {
      this.report.fatal('superblock', 'superblock: the metadata file is shorter than one block');
      return;
    }
    if (isAllZero(raw)) {
      this.report.fatal('superblock', 'superblock: block 0 is all zeros (unformatted metadata)');
      return;
    }
    if (!checksumMatches(raw, 'superblock')) {
      this.report.fatal('superblock', 'superblock: bad checksum');
      return;
    }
    if (raw.readUInt32LE(32) !== THIN_MAGIC || raw.readUInt32LE(36) !== 0) {
      this.report.fatal('superblock', `superblock: bad magic ${u64(raw, 32)} (expected ${THIN_MAGIC})`);
      return;
    }
    if (u64(raw, 8) !== 0) this.report.fatal('superblock', `superblock: claims to be block ${u64(raw, 8)}`);
    this.transactionId = raw.readBigUInt64LE(48);
    const metaSm = decodeSmRoot(raw, 192);
    const dataSm = decodeSmRoot(raw, 64);
    this.metadataFreeBlocks = Math.max(0, metaSm.nrBlocks - metaSm.nrAllocated);
    this.checkSuperblockFields(raw, 'superblock');
    const held = u64(raw, 56);

    this.nrMeta = Math.min(metaSm.nrBlocks, MAX_METADATA_BITMAPS * ENTRIES_PER_BITMAP);
    if (metaSm.nrBlocks > MAX_METADATA_BITMAPS * ENTRIES_PER_BITMAP) {
      this.report.fatal('sm', `metadata space map: ${metaSm.nrBlocks} blocks, more than one index block can describe (${MAX_METADATA_BITMAPS * ENTRIES_PER_BITMAP})`);
    }
    if (metaSm.nrBlocks > this.fileBlocks) {
      this.report.fatal('sm', `metadata space map: ${metaSm.nrBlocks} blocks, but the metadata file holds only ${this.fileBlocks}`);
    }
    this.metaExpected = new Uint32Array(this.nrMeta);
    this.nrData = dataSm.nrBlocks;

    if (this.opts.metadataSnap) {
      this.countData = false;
      if (held === 0) {
        this.report.fatal('snap', 'metadata snapshot: none is held (held_root is 0)');
        return;
      }
      // The live superblock's reference to the copy, for the bookkeeping only.
      this.refMeta(0, 'superblock');
      this.uses.set(0, { kind: 'superblock', what: 'the superblock' });
      this.checkSnapshot(held);
      return;
    }

    if (dataSm.nrBlocks > MAX_DATA_BLOCKS) this.report.fatal('sm', `data space map: ${dataSm.nrBlocks} blocks, more than dm-thin allows (2^40)`);
    this.dataExpected = dataSm.nrBlocks <= 2 ** 26 ? new Uint8Array(dataSm.nrBlocks) : undefined;
    this.refMeta(0, 'superblock');
    this.uses.set(0, { kind: 'superblock', what: 'the superblock' });

    const metaActual = this.metadataSpaceMap(metaSm);
    const dataActual = this.dataSpaceMap(dataSm);

    const view = this.devicesOf('', u64(raw, 328), u64(raw, 320));
    if (held !== 0) this.checkSnapshot(held);
    this.compareDevices(view);

    if (metaActual) this.compareMetadataCounts(metaActual);
    if (dataActual) this.compareDataCounts(dataActual, dataSm);
    if (this.incomplete) {
      this.report.nonFatal('incomplete', 'parts of the metadata could not be read: reference counts were checked for under-counts only, not for leaks');
    }
  }

  private checkSuperblockFields(raw: Buffer, what: string): void {
    const mbs = raw.readUInt32LE(340);
    if (mbs !== META_SECTORS) this.report.fatal('superblock', `${what}: metadata_block_size ${mbs}, expected ${META_SECTORS}`);
    const dbs = raw.readUInt32LE(336);
    if (dbs < MIN_BLOCK_SECTORS || dbs > MAX_BLOCK_SECTORS || dbs % MIN_BLOCK_SECTORS !== 0) {
      this.report.fatal('superblock', `${what}: data_block_size ${dbs} sectors is not a multiple of ${MIN_BLOCK_SECTORS} between ${MIN_BLOCK_SECTORS} and ${MAX_BLOCK_SECTORS}`);
    }
    const incompat = raw.readUInt32LE(360);
    if (incompat !== 0) this.report.fatal('superblock', `${what}: unknown incompatible feature flags ${incompat}`);
  }

  private checkSnapshot(held: number): void {
    const what = 'metadata snapshot';
    if (!this.refMeta(held, `${what} (held_root)`)) return;
    if (!this.claim(held, 'superblock', `the ${what} superblock copy`)) return;
    const buf = this.readValid(held, 'superblock', what);
    if (!buf) return;
    if (buf.readUInt32LE(32) !== THIN_MAGIC || buf.readUInt32LE(36) !== 0) {
      this.report.fatal('superblock', `${what}: block ${held} has a bad magic ${u64(buf, 32)}`);
      return;
    }
    this.checkSuperblockFields(buf, what);
    const view = this.devicesOf(`${what}: `, u64(buf, 328), u64(buf, 320));
    this.compareDevices(view);
  }

  /** Walks a details tree and a mapping tree; returns what devices they name. */
  private devicesOf(prefix: string, detailsRoot: number, mappingRoot: number): DeviceView {
    const d = this.refNode(detailsRoot, DETAILS, `${prefix}${DETAILS.name}`, true);
    const t = this.refNode(mappingRoot, TOP, `${prefix}${TOP.name}`, true);
    const de = this.entriesOf(d);
    const te = this.entriesOf(t);
    const details = new Map<number, Buffer>();
    for (const [k, v] of de) details.set(k, v);
    const top = new Map<number, number>();
    for (const [k, v] of te) top.set(k, u64(v, 0));
    return { label: prefix, details, top, detailsComplete: de.complete, topComplete: te.complete };
  }

  private compareDevices(view: DeviceView): void {
    const p = view.label;
    for (const dev of view.details.keys()) {
      if (!view.top.has(dev) && view.topComplete) this.report.fatal('devices', `${p}device ${dev} is in the details tree but has no mapping tree`);
    }
    for (const [dev, root] of view.top) {
      const dv = view.details.get(dev);
      if (!dv) {
        if (view.detailsComplete) this.report.fatal('devices', `${p}device ${dev} has a mapping tree but is not in the details tree`);
        continue;
      }
      const u = this.uses.get(root);
      if (u?.kind !== 'node' || u.info.role !== BOTTOM || u.info.bad || Number.isNaN(u.info.entries)) continue;
      const mapped = u64(dv, 0);
      if (mapped !== u.info.entries) {
        this.report.fatal('mapped', `${p}device ${dev}: details say mapped_blocks ${mapped}, but its mapping tree holds ${u.info.entries} mappings`);
      }
    }
  }

  //----------------------------------------------------------------------------
  // space maps

  /** Decodes a bitmap block referenced by an index entry (null = unreadable). */
  private bitmap(b: number, what: string): Uint8Array | null {
    if (!this.refMeta(b, what)) return null;
    if (!this.claim(b, 'bitmap', what)) return null;
    const buf = this.readValid(b, 'bitmap', what);
    return buf ? decodeBitmap(buf) : null;
  }

  private metadataSpaceMap(root: SmRoot): ActualCounts | undefined {
    const name = 'metadata space map';
    const nrBitmaps = Math.ceil(this.nrMeta / ENTRIES_PER_BITMAP);
    const ib = root.bitmapRoot;
    let entries: IndexEntry[] = [];
    if (this.refMeta(ib, `${name} index`) && this.claim(ib, 'index', `the ${name} index block`)) {
      const buf = this.readValid(ib, 'index', `${name} index`);
      if (buf) entries = decodeIndexBlock(buf, nrBitmaps);
    }
    const ref = this.refNode(root.refCountRoot, META_REF, META_REF.name, true);
    if (entries.length === 0) return undefined;
    const bitmaps = entries.map((e, i) => this.bitmap(e.blocknr, `${name} bitmap ${i}`));
    return this.actualCounts(name, root, entries, bitmaps, ref);
  }

  private dataSpaceMap(root: SmRoot): ActualCounts | undefined {
    const name = 'data space map';
    const nrBitmaps = Math.ceil(root.nrBlocks / ENTRIES_PER_BITMAP);
    const idx = this.refNode(root.bitmapRoot, DATA_INDEX, DATA_INDEX.name, true);
    const ref = this.refNode(root.refCountRoot, DATA_REF, DATA_REF.name, true);
    if (!idx) return undefined;
    const byKey = new Map<number, IndexEntry>();
    for (const [k, v] of this.entriesOf(idx)) {
      byKey.set(k, { blocknr: u64(v, 0), nrFree: v.readUInt32LE(8), noneFreeBefore: v.readUInt32LE(12) });
    }
    const entries: IndexEntry[] = [];
    let complete = true;
    // A garbage nr_blocks must not make the check loop over billions of bitmaps.
    if (nrBitmaps > 2 * byKey.size + 1024) {
      this.report.fatal('sm', `${name}: ${root.nrBlocks} blocks need ${nrBitmaps} bitmaps, but the index tree has only ${byKey.size} entries`);
      return undefined;
    }
    for (let i = 0; i < nrBitmaps; i++) {
      const e = byKey.get(i);
      if (!e) {
        this.report.fatal('sm', `${name}: the index tree has no entry for bitmap ${i}`);
        complete = false;
        entries.push({ blocknr: 0, nrFree: 0, noneFreeBefore: 0 });
      } else {
        entries.push(e);
      }
    }
    for (const [k, e] of byKey) {
      if (k >= nrBitmaps) {
        this.report.nonFatal('sm', `${name}: index entry for bitmap ${k} lies beyond the map's ${nrBitmaps} bitmaps`);
        this.bitmap(e.blocknr, `${name} bitmap ${k} (beyond the end)`);
      }
    }
    const bitmaps = entries.map((e, i) => (byKey.has(i) ? this.bitmap(e.blocknr, `${name} bitmap ${i}`) : null));
    const counts = this.actualCounts(name, root, entries, bitmaps, ref);
    return complete || counts ? counts : undefined;
  }

  /** The on-disk counts of a space map: bitmaps plus the ref-count tree. */
  private actualCounts(name: string, root: SmRoot, entries: IndexEntry[], bitmaps: Array<Uint8Array | null>, ref: NodeInfo | undefined): ActualCounts {
    const overflow = new Map<number, number>();
    const refEntries = this.entriesOf(ref);
    for (const [k, v] of refEntries) overflow.set(k, v.readUInt32LE(0));
    const nrBlocks = root.nrBlocks;
    let allocated = 0;
    for (let i = 0; i < bitmaps.length; i++) {
      const bm = bitmaps[i];
      if (!bm) continue;
      const limit = Math.min(ENTRIES_PER_BITMAP, nrBlocks - i * ENTRIES_PER_BITMAP);
      let free = 0;
      let firstFree = -1;
      for (let s = 0; s < limit; s++) {
        if (bm[s] === 0) {
          free++;
          if (firstFree < 0) firstFree = s;
        } else {
          allocated++;
        }
      }
      for (let s = limit; s < ENTRIES_PER_BITMAP; s++) {
        if (bm[s] !== 0) {
          this.report.nonFatal('sm-tail', `${name} bitmap ${i}: slot ${s} past the end of the map has count ${bm[s]}`);
          break;
        }
      }
      const e = entries[i]!;
      const kernelFree = free + (ENTRIES_PER_BITMAP - limit);
      if (e.nrFree !== free && e.nrFree !== kernelFree) {
        this.report.nonFatal('nr_free', `${name}: index entry ${i} says nr_free ${e.nrFree}, but bitmap ${e.blocknr} has ${free} free blocks`);
      }
      if (firstFree >= 0 && e.noneFreeBefore > firstFree) {
        this.report.nonFatal('nr_free', `${name}: index entry ${i} says none_free_before ${e.noneFreeBefore}, but slot ${firstFree} is free`);
      }
    }
    for (const [b, c] of overflow) {
      const i = Math.floor(b / ENTRIES_PER_BITMAP);
      const bm = bitmaps[i];
      if (b >= nrBlocks) {
        this.report.nonFatal('sm', `${name}: the ref-count tree holds block ${b}, beyond the map's ${nrBlocks} blocks`);
      } else if (bm && bm[b % ENTRIES_PER_BITMAP] !== 3) {
        this.report.nonFatal('sm', `${name}: the ref-count tree holds count ${c} for block ${b}, but its bitmap says ${bm[b % ENTRIES_PER_BITMAP]} (stale entry)`);
      } else if (c < 3) {
        this.report.nonFatal('sm', `${name}: the ref-count tree holds count ${c} for block ${b}; counts below 3 belong in the bitmap`);
      }
    }
    if (bitmaps.every((b) => b !== null) && allocated !== root.nrAllocated) {
      this.report.nonFatal('nr_allocated', `${name}: the root says ${root.nrAllocated} blocks are allocated, the bitmaps have ${allocated}`);
    }
    return {
      bitmaps,
      count: (b: number): number | undefined => {
        const bm = bitmaps[Math.floor(b / ENTRIES_PER_BITMAP)];
        if (!bm) return undefined;
        const c = bm[b % ENTRIES_PER_BITMAP]!;
        if (c !== 3) return c;
        const o = overflow.get(b);
        if (o === undefined) {
          this.report.fatal('sm', `${name}: block ${b} has count 3+ in its bitmap but no entry in the ref-count tree`);
          return 3;
        }
        return o;
      },
    };
  }

  private compareMetadataCounts(actual: ActualCounts): void {
    const exp = this.metaExpected;
    let under = 0;
    let leaked = 0;
    for (let b = 0; b < this.nrMeta; b++) {
      const a = actual.count(b);
      if (a === undefined) continue;
      const e = exp[b]!;
      if (a < e) {
        under++;
        this.report.fatal('meta-count', `metadata block ${b}: reference count ${a} on disk, ${e} expected (under-counted)`);
      } else if (a > e && !this.incomplete) {
        leaked++;
        this.report.nonFatal('meta-leak', `metadata block ${b}: reference count ${a} on disk, ${e} expected (leaked)`);
      }
    }
    if (under > 0) this.report.fatal('meta-sum', `${under} metadata blocks have reference counts below their references`);
    if (leaked > 0) this.report.nonFatal('meta-sum', `${leaked} metadata blocks leaked (counted but not referenced as often)`);
  }

  private compareDataCounts(actual: ActualCounts, root: SmRoot): void {
    let under = 0;
    let leaked = 0;
    for (let i = 0; i < actual.bitmaps.length; i++) {
      const bm = actual.bitmaps[i];
      if (!bm) continue;
      const base = i * ENTRIES_PER_BITMAP;
      const limit = Math.min(ENTRIES_PER_BITMAP, root.nrBlocks - base);
      for (let s = 0; s < limit; s++) {
        const b = base + s;
        const raw = bm[s]!;
        const e = this.expectedData(b);
        if (raw === e && raw !== 3) continue;
        const a = actual.count(b)!;
        if (a < e) {
          under++;
          this.report.fatal('data-count', `data block ${b}: reference count ${a} on disk, ${e} mapping leaves refer to it (under-counted)`);
        } else if (a > e && !this.incomplete) {
          leaked++;
          this.report.nonFatal('data-leak', `data block ${b}: reference count ${a} on disk, ${e} mapping leaves refer to it (leaked)`);
        }
      }
    }
    if (under > 0) this.report.fatal('data-sum', `${under} data blocks have reference counts below their references`);
    if (leaked > 0) this.report.nonFatal('data-sum', `${leaked} data blocks leaked (counted but not referenced as often)`);
  }
}

interface ActualCounts {
  bitmaps: Array<Uint8Array | null>;
  /** The on-disk count, or undefined where the bitmap could not be read. */
  count(b: number): number | undefined;
}
