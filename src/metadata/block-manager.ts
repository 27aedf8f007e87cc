import { LRUCache } from 'lru-cache';
import { ThinError } from '../base/errors.js';
import { readU64 } from '../base/le.js';
import { META_BLOCK_SIZE, type MetaBlock } from '../base/units.js';
import type { BackingFile } from '../io/backing-file.js';
import { type BlockKind, checksumMatches, sealBlock } from './checksum.js';

// 4 KiB metadata blocks over a backing file. Clean blocks live in an LRU
// cache; blocks written in the current transaction are pinned in `dirty`
// until the commit writes them. Every read is validated (checksum with the
// kind's salt, and the block number stored at offset 8 of every kind), and
// every write is sealed, so no unchecked block crosses this seam.

export const BLOCKNR_OFFSET = 8;

interface DirtyBlock {
  buf: Buffer;
  kind: BlockKind;
}

export interface CacheStats {
  hits: number;
  misses: number;
  evictions: number;
  size: number;
  max: number;
}

export class BlockManager {
  private readonly clean: LRUCache<number, Buffer>;
  private readonly dirty = new Map<number, DirtyBlock>();
  readonly stats = { hits: 0, misses: 0, evictions: 0 };

  constructor(readonly file: BackingFile, cacheBlocks: number) {
    this.clean = new LRUCache<number, Buffer>({
      max: Math.max(16, cacheBlocks),
      dispose: (_v, _k, reason) => {
        if (reason === 'evict') this.stats.evictions++;
      },
    });
  }

  /** Blocks the metadata file holds (its length in 4 KiB blocks). */
  fileBlocks(): number {
    return Math.floor(this.file.size() / META_BLOCK_SIZE);
  }

  /** A validated block. The buffer is shared: callers must not change it. */
  read(b: MetaBlock, kind: BlockKind): Buffer {
    const d = this.dirty.get(b);
    if (d) return d.buf;
    const cached = this.clean.get(b);
    if (cached) {
      this.stats.hits++;
      return cached;
    }
    this.stats.misses++;
    const buf = this.readRaw(b);
    this.validate(buf, b, kind);
    this.clean.set(b, buf);
    return buf;
  }

  readRaw(b: MetaBlock): Buffer {
    if (b >= this.fileBlocks()) {
      throw new ThinError('BAD_METADATA', `metadata block ${b} lies past the end of the metadata file; run thinfuse check`);
    }
    const buf = Buffer.allocUnsafe(META_BLOCK_SIZE);
    this.file.readSync(buf, b * META_BLOCK_SIZE);
    return buf;
  }

  validate(buf: Buffer, b: MetaBlock, kind: BlockKind): void {
    if (!checksumMatches(buf, kind)) {
      throw new ThinError('BAD_METADATA', `metadata block ${b} (${kind}) has a bad checksum; run thinfuse check`, { block: b, kind });
    }
    if (readU64(buf, BLOCKNR_OFFSET) !== b) {
      throw new ThinError('BAD_METADATA', `metadata block ${b} (${kind}) claims to be block ${readU64(buf, BLOCKNR_OFFSET)}; run thinfuse check`, { block: b, kind });
    }
  }

  /** Forgets clean copies of blocks [first, end): a fault was set there, so reads must reach the file. */
  dropClean(first: number, end: number): void {
    for (const b of [...this.clean.keys()]) if (b >= first && b < end) this.clean.delete(b);
  }

  isDirty(b: MetaBlock): boolean {
    return this.dirty.has(b);
  }

  /** A new writable block for this transaction, zeroed or copied from `from`. */
  writable(b: MetaBlock, kind: BlockKind, from?: Buffer): Buffer {
    const buf = Buffer.alloc(META_BLOCK_SIZE);
    if (from) from.copy(buf);
    this.clean.delete(b);
    this.dirty.set(b, { buf, kind });
    return buf;
  }

  /** The writable buffer of a block already written in this transaction. */
  dirtyBuffer(b: MetaBlock): Buffer {
    const d = this.dirty.get(b);
    if (!d) throw new Error(`block ${b} is not writable in this transaction`);
    return d.buf;
  }

  /** A block freed in this transaction need not be written. */
  forget(b: MetaBlock): void {
    this.dirty.delete(b);
  }

  /**
   * Seals and hands over every dirty block, in block order, and moves them to
   * the clean cache: from here on they belong to the committing transaction.
   */
  takeDirty(): Array<[MetaBlock, Buffer]> {
    const out: Array<[MetaBlock, Buffer]> = [];
    for (const [b, d] of this.dirty) {
      d.buf.writeUInt32LE(b >>> 0, BLOCKNR_OFFSET);
      d.buf.writeUInt32LE(Math.floor(b / 2 ** 32), BLOCKNR_OFFSET + 4);
      sealBlock(d.buf, d.kind);
      out.push([b as MetaBlock, d.buf]);
    }
    this.dirty.clear();
    out.sort((a, b) => a[0] - b[0]);
    for (const [b, buf] of out) this.clean.set(b, buf);
    return out;
  }

  /** Drops every unwritten change and all cached blocks (abort, reopen). */
  reset(): void {
    this.dirty.clear();
    this.clean.clear();
  }

  dirtyCount(): number {
    return this.dirty.size;
  }

  cacheStats(): CacheStats {
    return { ...this.stats, size: this.clean.size, max: this.clean.max };
  }
}

/** Writes sealed blocks, joining neighbours into one request each. */
export async function writeBlocks(file: BackingFile, blocks: Array<[MetaBlock, Buffer]>): Promise<void> {
  const pending: Promise<void>[] = [];
  for (let i = 0; i < blocks.length;) {
    let j = i + 1;
    while (j < blocks.length && blocks[j]![0] === blocks[j - 1]![0] + 1 && j - i < 256) j++;
    const run = blocks.slice(i, j);
    const buf = run.length === 1 ? run[0]![1] : Buffer.concat(run.map((r) => r[1]));
    pending.push(file.write(buf, run[0]![0] * META_BLOCK_SIZE));
    i = j;
    if (pending.length >= 16) await Promise.all(pending.splice(0));
  }
  await Promise.all(pending);
}
