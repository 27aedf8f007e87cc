import { ThinError } from '../../base/errors.js';
import type { MetaBlock } from '../../base/units.js';
import { type BTree, forEach, insert, remove } from '../btree/btree.js';
import type { TransactionManager } from '../transaction-manager.js';
import { decodeBitmap, ENTRIES_PER_BITMAP, type IndexEntry, type SmRoot } from './format.js';

// Reference counts of every block of one device (data or metadata file).
// Counts are held per bitmap in memory, loaded on first touch; a bitmap
// changed in this transaction keeps a copy of its committed counts, because
// a block may be handed out only if it is free both now and in the last
// commit. Counts of 3 and more live in `overflow` and, on disk, in the
// ref-count btree. Subclasses say where the index entries are stored.

interface Bitmap {
  counts: Uint8Array;
  committed: Uint8Array | undefined;
  dirty: boolean;
  nrFree: number;
}

const u32Type = { size: 4 };

export function u32Value(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

export abstract class SpaceMap {
  protected readonly bitmaps: Array<Bitmap | undefined> = [];
  protected readonly dirtyBitmaps: number[] = [];
  protected readonly overflow = new Map<number, number>();
  protected readonly overflowDirty = new Set<number>();
  protected readonly refTree: BTree;
  nrBlocks: number;
  nrAllocated: number;
  refCountRoot: MetaBlock;
  protected cursor = 0;

  constructor(protected readonly tm: TransactionManager, readonly name: string, root: SmRoot, protected entries: IndexEntry[]) {
    this.refTree = { tm, vt: u32Type };
    this.nrBlocks = root.nrBlocks;
    this.nrAllocated = root.nrAllocated;
    this.refCountRoot = root.refCountRoot as MetaBlock;
  }

  /** Reads the ref-count btree into memory. */
  protected loadOverflow(): void {
    forEach(this.refTree, this.refCountRoot, (k, v) => {
      this.overflow.set(k, v.readUInt32LE(0));
    });
  }

  get nrBitmaps(): number {
    return Math.ceil(this.nrBlocks / ENTRIES_PER_BITMAP);
  }

  get nrFree(): number {
    return this.nrBlocks - this.nrAllocated;
  }

  private slotLimit(i: number): number {
    return Math.min(ENTRIES_PER_BITMAP, this.nrBlocks - i * ENTRIES_PER_BITMAP);
  }

  private bitmap(i: number): Bitmap {
    let bm = this.bitmaps[i];
    if (bm) return bm;
    const e = this.entries[i];
    const counts = e && e.blocknr !== 0 ? decodeBitmap(this.tm.read(e.blocknr as MetaBlock, 'bitmap')) : new Uint8Array(ENTRIES_PER_BITMAP);
    let nrFree = 0;
    const limit = this.slotLimit(i);
    for (let s = 0; s < limit; s++) if (counts[s] === 0) nrFree++;
    bm = { counts, committed: undefined, dirty: false, nrFree };
    this.bitmaps[i] = bm;
    return bm;
  }

  private check(b: number): void {
    if (!(b >= 0 && b < this.nrBlocks)) {
      throw new ThinError('BAD_METADATA', `${this.name} block ${b} is outside the space map (${this.nrBlocks} blocks); run thinfuse check`);
    }
  }

  count(b: number): number {
    this.check(b);
    const c = this.bitmap(Math.floor(b / ENTRIES_PER_BITMAP)).counts[b % ENTRIES_PER_BITMAP]!;
    return c === 3 ? this.overflow.get(b) ?? 3 : c;
  }

  protected setCount(b: number, c: number): void {
    this.check(b);
    const i = Math.floor(b / ENTRIES_PER_BITMAP);
    const s = b % ENTRIES_PER_BITMAP;
    const bm = this.bitmap(i);
    if (!bm.dirty) {
      bm.committed = bm.counts.slice();
      bm.dirty = true;
      this.dirtyBitmaps.push(i);
    }
    const old = bm.counts[s]!;
    bm.counts[s] = Math.min(c, 3);
    if (old === 0 && c > 0) {
      bm.nrFree--;
      this.nrAllocated++;
    } else if (old > 0 && c === 0) {
      bm.nrFree++;
      this.nrAllocated--;
    }
    if (c >= 3) {
      this.overflow.set(b, c);
      this.overflowDirty.add(b);
    } else if (old === 3) {
      this.overflow.delete(b);
      this.overflowDirty.add(b);
    }
  }

  inc(b: number, by = 1): void {
    this.setCount(b, this.count(b) + by);
  }

  /** Returns the new count. */
  dec(b: number): number {
    const c = this.count(b);
    if (c === 0) throw new ThinError('BAD_METADATA', `${this.name} block ${b} freed twice (reference count already 0); run thinfuse check`);
    this.setCount(b, c - 1);
    return c - 1;
  }

  /** True if the block is free now and was free in the last commit. */
  isFreeInBoth(b: number): boolean {
    const bm = this.bitmap(Math.floor(b / ENTRIES_PER_BITMAP));
    const s = b % ENTRIES_PER_BITMAP;
    return bm.counts[s] === 0 && (bm.committed === undefined || bm.committed[s] === 0);
  }

  /** Finds a block free now and in the last commit; does not take it. */
  findFree(skip?: (b: number) => boolean): number | undefined {
    const nb = this.nrBitmaps;
    if (nb === 0) return undefined;
    const start = Math.min(this.cursor, this.nrBlocks - 1);
    const first = Math.floor(start / ENTRIES_PER_BITMAP);
    for (let k = 0; k <= nb; k++) {
      const i = (first + k) % nb;
      const free = this.bitmaps[i]?.nrFree ?? this.entries[i]?.nrFree ?? ENTRIES_PER_BITMAP;
      if (free === 0) continue;
      const from = k === 0 ? start % ENTRIES_PER_BITMAP : 0;
      const to = k === nb ? start % ENTRIES_PER_BITMAP : this.slotLimit(i);
      const s = this.scan(this.bitmap(i), from, to, i * ENTRIES_PER_BITMAP, skip);
      if (s >= 0) return i * ENTRIES_PER_BITMAP + s;
    }
    return undefined;
  }

  private scan(bm: Bitmap, from: number, to: number, base: number, skip?: (b: number) => boolean): number {
    for (let s = bm.counts.indexOf(0, from); s >= 0 && s < to; s = bm.counts.indexOf(0, s + 1)) {
      if (bm.committed !== undefined && bm.committed[s] !== 0) continue;
      if (skip?.(base + s)) continue;
      return s;
    }
    return -1;
  }

  /** Where the next search for a free block starts. */
  get nextHint(): number {
    return this.cursor;
  }

  /** Takes a free block (count 0 -> 1 is the caller's inc). */
  alloc(skip?: (b: number) => boolean): number | undefined {
    const b = this.findFree(skip);
    if (b !== undefined) this.cursor = b + 1;
    return b;
  }

  /** Grows the map; new blocks are free. */
  extend(newNrBlocks: number): void {
    if (newNrBlocks < this.nrBlocks) throw new ThinError('EINVAL_ARG', `${this.name} space map cannot shrink`);
    const oldBitmaps = this.nrBitmaps;
    const lastOld = oldBitmaps - 1;
    if (lastOld >= 0) this.bitmap(lastOld);
    this.nrBlocks = newNrBlocks;
    if (lastOld >= 0) {
      const bm = this.bitmap(lastOld);
      let nrFree = 0;
      const limit = this.slotLimit(lastOld);
      for (let s = 0; s < limit; s++) if (bm.counts[s] === 0) nrFree++;
      bm.nrFree = nrFree;
      if (!bm.dirty) {
        // Keep the committed counts: a block freed later in this
        // transaction must not be handed out before the commit.
        bm.committed = bm.counts.slice();
        bm.dirty = true;
        this.dirtyBitmaps.push(lastOld);
      }
    }
    for (let i = oldBitmaps; i < this.nrBitmaps; i++) {
      this.entries[i] = { blocknr: 0, nrFree: this.slotLimit(i), noneFreeBefore: 0 };
      this.bitmaps[i] = { counts: new Uint8Array(ENTRIES_PER_BITMAP), committed: undefined, dirty: true, nrFree: this.slotLimit(i) };
      this.dirtyBitmaps.push(i);
    }
  }

  /** Writes changed counts of 3+ into the ref-count btree. */
  protected commitOverflow(): void {
    for (const b of this.overflowDirty) {
      const c = this.count(b);
      this.refCountRoot = c >= 3 ? insert(this.refTree, this.refCountRoot, b, u32Value(c)) : remove(this.refTree, this.refCountRoot, b);
    }
    this.overflowDirty.clear();
  }

  /** The index entry of a changed bitmap, now stored at `blocknr`. */
  protected entryFor(i: number, blocknr: number): IndexEntry {
    const bm = this.bitmap(i);
    const first = bm.counts.indexOf(0);
    return { blocknr, nrFree: bm.nrFree, noneFreeBefore: first < 0 ? ENTRIES_PER_BITMAP : first };
  }

  protected bitmapCounts(i: number): Uint8Array {
    return this.bitmap(i).counts;
  }

  protected markClean(i: number): void {
    const bm = this.bitmap(i);
    bm.dirty = false;
    bm.committed = undefined;
  }

  root(bitmapRoot: number): SmRoot {
    return { nrBlocks: this.nrBlocks, nrAllocated: this.nrAllocated, bitmapRoot, refCountRoot: this.refCountRoot };
  }

  /** Every block with a non-zero count, in order (for checks and trim). */
  *allocatedBlocks(): Generator<[number, number]> {
    for (let i = 0; i < this.nrBitmaps; i++) {
      const counts = this.bitmap(i).counts;
      const limit = this.slotLimit(i);
      for (let s = 0; s < limit; s++) {
        if (counts[s] !== 0) yield [i * ENTRIES_PER_BITMAP + s, this.count(i * ENTRIES_PER_BITMAP + s)];
      }
    }
  }

  abstract commit(): SmRoot;
}
