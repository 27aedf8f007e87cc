import { ThinError } from '../../base/errors.js';
import type { MetaBlock } from '../../base/units.js';
import { emptyTree } from '../btree/btree.js';
import type { MetaRefCounts, TransactionManager } from '../transaction-manager.js';
import { decodeIndexBlock, encodeBitmap, encodeIndexBlock, ENTRIES_PER_BITMAP, type IndexEntry, MAX_METADATA_BITMAPS, type SmRoot } from './format.js';
import { SpaceMap } from './space-map.js';

// The metadata file's space map (dm-space-map-metadata). It counts its own
// blocks, so its commit is a fixed point: the ref-count btree is updated
// first (its nodes only ever hold counts 0 or 1, so this cannot add
// overflow entries), then the index block moves to a new block, then every
// changed bitmap moves to a new block, repeating while moving bitmaps
// changes further bitmaps. Only then are the bitmaps encoded.

export class MetadataSpaceMap extends SpaceMap implements MetaRefCounts {
  private indexBlock: MetaBlock;

  private constructor(tm: TransactionManager, root: SmRoot, entries: IndexEntry[]) {
    super(tm, 'metadata', root, entries);
    this.indexBlock = root.bitmapRoot as MetaBlock;
    tm.sm = this;
  }

  /** A fresh map of nrBlocks with block 0 (the superblock) taken. */
  static create(tm: TransactionManager, nrBlocks: number): MetadataSpaceMap {
    const sm = new MetadataSpaceMap(tm, { nrBlocks: 0, nrAllocated: 0, bitmapRoot: 0, refCountRoot: 0 }, []);
    sm.extend(nrBlocks);
    sm.inc(0);
    sm.refCountRoot = emptyTree({ tm, vt: { size: 4 } });
    return sm;
  }

  static open(tm: TransactionManager, root: SmRoot): MetadataSpaceMap {
    const nr = Math.ceil(root.nrBlocks / ENTRIES_PER_BITMAP);
    if (nr > MAX_METADATA_BITMAPS) throw new ThinError('BAD_METADATA', `metadata space map claims ${root.nrBlocks} blocks, more than one index block can hold`);
    const entries = decodeIndexBlock(tm.read(root.bitmapRoot as MetaBlock, 'index'), nr);
    const sm = new MetadataSpaceMap(tm, root, entries);
    sm.loadOverflow();
    return sm;
  }

  override alloc(): MetaBlock | undefined {
    return super.alloc() as MetaBlock | undefined;
  }

  override extend(newNrBlocks: number): void {
    if (Math.ceil(newNrBlocks / ENTRIES_PER_BITMAP) > MAX_METADATA_BITMAPS) {
      throw new ThinError('EINVAL_ARG', `metadata space map cannot exceed ${MAX_METADATA_BITMAPS * ENTRIES_PER_BITMAP} blocks`);
    }
    super.extend(newNrBlocks);
  }

  commit(): SmRoot {
    this.commitOverflow();
    const index = this.tm.newBlock('index');
    if (this.indexBlock !== 0) this.tm.dec(this.indexBlock);
    this.indexBlock = index.b;
    const moved = new Map<number, Buffer>();
    for (let pending = this.unmoved(moved); pending.length > 0; pending = this.unmoved(moved)) {
      for (const i of pending) {
        const { b, buf } = this.tm.newBlock('bitmap');
        const old = this.entries[i]?.blocknr ?? 0;
        if (old !== 0) this.tm.dec(old as MetaBlock);
        this.entries[i] = { blocknr: b, nrFree: 0, noneFreeBefore: 0 };
        moved.set(i, buf);
      }
    }
    if (this.overflowDirty.size > 0) throw new Error('metadata space map: overflow changed while committing');
    for (const [i, buf] of moved) {
      encodeBitmap(this.bitmapCounts(i), buf);
      this.entries[i] = this.entryFor(i, this.entries[i]!.blocknr);
      this.markClean(i);
    }
    this.dirtyBitmaps.length = 0;
    encodeIndexBlock(this.entries.slice(0, this.nrBitmaps), index.buf);
    this.cursor = 0;
    return this.root(this.indexBlock);
  }

  private unmoved(moved: Map<number, Buffer>): number[] {
    return this.dirtyBitmaps.filter((i) => !moved.has(i));
  }

  metadataBlocks(): { indexBlock: MetaBlock; refCountRoot: MetaBlock; bitmaps: MetaBlock[] } {
    return { indexBlock: this.indexBlock, refCountRoot: this.refCountRoot, bitmaps: this.entries.slice(0, this.nrBitmaps).map((e) => e.blocknr as MetaBlock) };
  }
}
