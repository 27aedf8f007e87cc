import type { MetaBlock } from '../../base/units.js';
import { type BTree, emptyTree, forEach, insert } from '../btree/btree.js';
import type { TransactionManager } from '../transaction-manager.js';
import { decodeIndexEntry, encodeBitmap, encodeIndexEntry, type IndexEntry, type SmRoot } from './format.js';
import { SpaceMap } from './space-map.js';

// The data file's space map (dm-space-map-disk): bitmaps indexed by a btree
// whose key is the bitmap number and whose value is a 16-byte index entry.
// Its own blocks are metadata blocks, counted by the metadata space map.

const indexType = { size: 16 };

export class DataSpaceMap extends SpaceMap {
  private readonly indexTree: BTree;
  private indexRoot: MetaBlock;

  private constructor(tm: TransactionManager, root: SmRoot, entries: IndexEntry[]) {
    super(tm, 'data', root, entries);
    this.indexTree = { tm, vt: indexType };
    this.indexRoot = root.bitmapRoot as MetaBlock;
  }

  static create(tm: TransactionManager, nrBlocks: number): DataSpaceMap {
    const tree = { tm, vt: indexType };
    const indexRoot = emptyTree(tree);
    const refRoot = emptyTree({ tm, vt: { size: 4 } });
    const sm = new DataSpaceMap(tm, { nrBlocks: 0, nrAllocated: 0, bitmapRoot: indexRoot, refCountRoot: refRoot }, []);
    sm.extend(nrBlocks);
    return sm;
  }

  static open(tm: TransactionManager, root: SmRoot): DataSpaceMap {
    const entries: IndexEntry[] = [];
    forEach({ tm, vt: indexType }, root.bitmapRoot as MetaBlock, (k, v) => {
      entries[k] = decodeIndexEntry(v);
    });
    const sm = new DataSpaceMap(tm, root, entries);
    sm.loadOverflow();
    return sm;
  }

  commit(): SmRoot {
    this.commitOverflow();
    for (const i of this.dirtyBitmaps) {
      const { b, buf } = this.tm.newBlock('bitmap');
      encodeBitmap(this.bitmapCounts(i), buf);
      const old = this.entries[i]?.blocknr ?? 0;
      if (old !== 0) this.tm.dec(old as MetaBlock);
      const e = this.entryFor(i, b);
      this.entries[i] = e;
      this.indexRoot = insert(this.indexTree, this.indexRoot, i, encodeIndexEntry(e));
      this.markClean(i);
    }
    this.dirtyBitmaps.length = 0;
    return this.root(this.indexRoot);
  }

  /** Index btree root and the bitmap blocks, for the checker's reference counts. */
  metadataBlocks(): { indexRoot: MetaBlock; refCountRoot: MetaBlock; bitmaps: MetaBlock[] } {
    return { indexRoot: this.indexRoot, refCountRoot: this.refCountRoot, bitmaps: this.entries.map((e) => e.blocknr as MetaBlock) };
  }
}
