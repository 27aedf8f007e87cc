import { decodeBitmap, decodeIndexBlock, ENTRIES_PER_BITMAP, type IndexEntry, type SmRoot } from '../metadata/space-map/format.js';
import { DATA_INDEX, DATA_REF, entriesOf, META_REF, refNode } from './check-btree.js';
import { type CheckContext, type NodeInfo, u64 } from './check-context.js';
import type { Reporter } from './check-report.js';

// The space-map checks: reads both maps as they stand on disk (index,
// bitmaps, ref-count tree), checks their own bookkeeping, then compares each
// block's recorded count with the one the walk expects: too low is fatal, too
// high a leak. Calls the btree walker for the index and ref-count trees.

export interface ActualCounts {
  bitmaps: Array<Uint8Array | null>;
  /** The on-disk count, or undefined where the bitmap could not be read. */
  count(b: number): number | undefined;
}

/** Decodes a bitmap block referenced by an index entry (null = unreadable). */
function bitmap(ck: CheckContext, b: number, what: string): Uint8Array | null {
  if (!ck.refMeta(b, what)) return null;
  if (!ck.claim(b, 'bitmap', what)) return null;
  const buf = ck.readValid(b, 'bitmap', what);
  return buf ? decodeBitmap(buf) : null;
}

export function metadataSpaceMap(ck: CheckContext, root: SmRoot): ActualCounts | undefined {
  const name = 'metadata space map';
  const nrBitmaps = Math.ceil(ck.nrMeta / ENTRIES_PER_BITMAP);
  const ib = root.bitmapRoot;
  let entries: IndexEntry[] = [];
  if (ck.refMeta(ib, `${name} index`) && ck.claim(ib, 'index', `the ${name} index block`)) {
    const buf = ck.readValid(ib, 'index', `${name} index`);
    if (buf) entries = decodeIndexBlock(buf, nrBitmaps);
  }
  const ref = refNode(ck, root.refCountRoot, META_REF, META_REF.name, true);
  if (entries.length === 0) return undefined;
  const bitmaps = entries.map((e, i) => bitmap(ck, e.blocknr, `${name} bitmap ${i}`));
  return actualCounts(ck, name, root, entries, bitmaps, ref);
}

export function dataSpaceMap(ck: CheckContext, root: SmRoot): ActualCounts | undefined {
  const name = 'data space map';
  const nrBitmaps = Math.ceil(root.nrBlocks / ENTRIES_PER_BITMAP);
  const idx = refNode(ck, root.bitmapRoot, DATA_INDEX, DATA_INDEX.name, true);
  const ref = refNode(ck, root.refCountRoot, DATA_REF, DATA_REF.name, true);
  if (!idx) return undefined;
  const byKey = new Map<number, IndexEntry>();
  for (const [k, v] of entriesOf(ck, idx)) {
    byKey.set(k, { blocknr: u64(v, 0), nrFree: v.readUInt32LE(8), noneFreeBefore: v.readUInt32LE(12) });
  }
  const entries: IndexEntry[] = [];
  let complete = true;
  // A garbage nr_blocks must not make the check loop over billions of bitmaps.
  if (nrBitmaps > 2 * byKey.size + 1024) {
    ck.report.fatal('sm', `${name}: ${root.nrBlocks} blocks need ${nrBitmaps} bitmaps, but the index tree has only ${byKey.size} entries`);
    return undefined;
  }
  for (let i = 0; i < nrBitmaps; i++) {
    const e = byKey.get(i);
    if (!e) {
      ck.report.fatal('sm', `${name}: the index tree has no entry for bitmap ${i}`);
      complete = false;
      entries.push({ blocknr: 0, nrFree: 0, noneFreeBefore: 0 });
    } else {
      entries.push(e);
    }
  }
  for (const [k, e] of byKey) {
    if (k >= nrBitmaps) {
      ck.report.nonFatal('sm', `${name}: index entry for bitmap ${k} lies beyond the map's ${nrBitmaps} bitmaps`);
      bitmap(ck, e.blocknr, `${name} bitmap ${k} (beyond the end)`);
    }
  }
  const bitmaps = entries.map((e, i) => (byKey.has(i) ? bitmap(ck, e.blocknr, `${name} bitmap ${i}`) : null));
  const counts = actualCounts(ck, name, root, entries, bitmaps, ref);
  return complete || counts ? counts : undefined;
}

/** The on-disk counts of a space map: bitmaps plus the ref-count tree. */
function actualCounts(ck: CheckContext, name: string, root: SmRoot, entries: IndexEntry[], bitmaps: Array<Uint8Array | null>, ref: NodeInfo | undefined): ActualCounts {
  const report = ck.report;
  const overflow = new Map<number, number>();
  for (const [k, v] of entriesOf(ck, ref)) overflow.set(k, v.readUInt32LE(0));
  const nrBlocks = root.nrBlocks;
  let allocated = 0;
  for (let i = 0; i < bitmaps.length; i++) {
    const bm = bitmaps[i];
    if (bm) allocated += checkBitmap(report, name, i, bm, entries[i]!, nrBlocks);
  }
  checkOverflow(report, name, overflow, bitmaps, nrBlocks);
  if (bitmaps.every((b) => b !== null) && allocated !== root.nrAllocated) {
    report.nonFatal('nr_allocated', `${name}: the root says ${root.nrAllocated} blocks are allocated, the bitmaps have ${allocated}`);
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
        report.fatal('sm', `${name}: block ${b} has count 3+ in its bitmap but no entry in the ref-count tree`);
        return 3;
      }
      return o;
    },
  };
}

/** Checks bitmap i against its index entry; returns how many of its blocks are allocated. */
function checkBitmap(report: Reporter, name: string, i: number, bm: Uint8Array, e: IndexEntry, nrBlocks: number): number {
  const limit = Math.min(ENTRIES_PER_BITMAP, nrBlocks - i * ENTRIES_PER_BITMAP);
  let allocated = 0;
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
      report.nonFatal('sm-tail', `${name} bitmap ${i}: slot ${s} past the end of the map has count ${bm[s]}`);
      break;
    }
  }
  // The kernel counts the slots past the end of the last bitmap as free.
  const kernelFree = free + (ENTRIES_PER_BITMAP - limit);
  if (e.nrFree !== free && e.nrFree !== kernelFree) {
    report.nonFatal('nr_free', `${name}: index entry ${i} says nr_free ${e.nrFree}, but bitmap ${e.blocknr} has ${free} free blocks`);
  }
  if (firstFree >= 0 && e.noneFreeBefore > firstFree) {
    report.nonFatal('nr_free', `${name}: index entry ${i} says none_free_before ${e.noneFreeBefore}, but slot ${firstFree} is free`);
  }
  return allocated;
}

/** The ref-count tree holds the counts of 3 and above, and nothing else. */
function checkOverflow(report: Reporter, name: string, overflow: Map<number, number>, bitmaps: Array<Uint8Array | null>, nrBlocks: number): void {
  for (const [b, c] of overflow) {
    const i = Math.floor(b / ENTRIES_PER_BITMAP);
    const bm = bitmaps[i];
    if (b >= nrBlocks) {
      report.nonFatal('sm', `${name}: the ref-count tree holds block ${b}, beyond the map's ${nrBlocks} blocks`);
    } else if (bm && bm[b % ENTRIES_PER_BITMAP] !== 3) {
      report.nonFatal('sm', `${name}: the ref-count tree holds count ${c} for block ${b}, but its bitmap says ${bm[b % ENTRIES_PER_BITMAP]} (stale entry)`);
    } else if (c < 3) {
      report.nonFatal('sm', `${name}: the ref-count tree holds count ${c} for block ${b}; counts below 3 belong in the bitmap`);
    }
  }
}

export function compareMetadataCounts(ck: CheckContext, actual: ActualCounts): void {
  const exp = ck.metaExpected;
  let under = 0;
  let leaked = 0;
  for (let b = 0; b < ck.nrMeta; b++) {
    const a = actual.count(b);
    if (a === undefined) continue;
    const e = exp[b]!;
    if (a < e) {
      under++;
      ck.report.fatal('meta-count', `metadata block ${b}: reference count ${a} on disk, ${e} expected (under-counted)`);
    } else if (a > e && !ck.incomplete) {
      leaked++;
      ck.report.nonFatal('meta-leak', `metadata block ${b}: reference count ${a} on disk, ${e} expected (leaked)`);
    }
  }
  if (under > 0) ck.report.fatal('meta-sum', `${under} metadata blocks have reference counts below their references`);
  if (leaked > 0) ck.report.nonFatal('meta-sum', `${leaked} metadata blocks leaked (counted but not referenced as often)`);
}

export function compareDataCounts(ck: CheckContext, actual: ActualCounts, root: SmRoot): void {
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
      const e = ck.data.expected(b);
      // Most blocks agree in the bitmap alone; only 3+ needs the ref-count tree.
      if (raw === e && raw !== 3) continue;
      const a = actual.count(b)!;
      if (a < e) {
        under++;
        ck.report.fatal('data-count', `data block ${b}: reference count ${a} on disk, ${e} mapping leaves refer to it (under-counted)`);
      } else if (a > e && !ck.incomplete) {
        leaked++;
        ck.report.nonFatal('data-leak', `data block ${b}: reference count ${a} on disk, ${e} mapping leaves refer to it (leaked)`);
      }
    }
  }
  if (under > 0) ck.report.fatal('data-sum', `${under} data blocks have reference counts below their references`);
  if (leaked > 0) ck.report.nonFatal('data-sum', `${leaked} data blocks leaked (counted but not referenced as often)`);
}
