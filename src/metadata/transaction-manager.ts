import { ThinError } from '../base/errors.js';
import type { MetaBlock } from '../base/units.js';
import type { BlockManager } from './block-manager.js';
import type { BlockKind } from './checksum.js';

// The only source of writable metadata blocks. A block reachable from the
// committed superblock is never written in place: to change it, it is
// shadowed (copied to a newly allocated block). A block allocated in this
// transaction and referenced once is changed in place. Blocks freed in this
// transaction stay unallocatable until the commit (the space map's rule),
// so the committed tree survives a crash intact.

/** Reference counts of metadata blocks: the metadata space map. */
export interface MetaRefCounts {
  count(b: MetaBlock): number;
  inc(b: MetaBlock): void;
  /** Returns the new count. */
  dec(b: MetaBlock): number;
  /** A block free both now and in the last commit, or undefined when full. */
  alloc(): MetaBlock | undefined;
}

export interface Shadowed {
  b: MetaBlock;
  buf: Buffer;
  /** True when the original was shared, so the copy's children need +1. */
  incChildren: boolean;
}

export class TransactionManager {
  private readonly shadows = new Set<number>();
  sm!: MetaRefCounts;

  constructor(readonly bm: BlockManager) {}

  read(b: MetaBlock, kind: BlockKind = 'node'): Buffer {
    return this.bm.read(b, kind);
  }

  count(b: MetaBlock): number {
    return this.sm.count(b);
  }

  newBlock(kind: BlockKind = 'node'): { b: MetaBlock; buf: Buffer } {
    const b = this.sm.alloc();
    if (b === undefined) {
      throw new ThinError('NO_METADATA_SPACE', 'the metadata file is full; grow it with `thinfuse resize POOL --metadata-size S`');
    }
    this.sm.inc(b);
    this.shadows.add(b);
    return { b, buf: this.bm.writable(b, kind) };
  }

  shadow(orig: MetaBlock, kind: BlockKind = 'node'): Shadowed {
    const shared = this.sm.count(orig) > 1;
    if (!shared && this.shadows.has(orig)) {
      return { b: orig, buf: this.bm.dirtyBuffer(orig), incChildren: false };
    }
    const src = this.bm.read(orig, kind);
    const { b, buf } = this.newBlock(kind);
    src.copy(buf);
    this.dec(orig);
    return { b, buf, incChildren: shared };
  }

  inc(b: MetaBlock): void {
    this.sm.inc(b);
  }

  dec(b: MetaBlock): number {
    const n = this.sm.dec(b);
    if (n === 0) {
      this.bm.forget(b);
      this.shadows.delete(b);
    }
    return n;
  }

  isShadow(b: MetaBlock): boolean {
    return this.shadows.has(b);
  }

  /** Starts a new transaction: everything written so far is now committed. */
  endTransaction(): void {
    this.shadows.clear();
  }
}
