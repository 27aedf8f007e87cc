import { readU64, writeU64 } from '../../base/le.js';

// Space-map formats (drivers/md/persistent-data/dm-space-map-common.h).
//
// Space-map root, 32 bytes at the start of a 128-byte superblock slot:
//   0 u64 nr_blocks   8 u64 nr_allocated   16 u64 bitmap_root   24 u64 ref_count_root
//
// Index entry, 16 bytes: u64 blocknr (of a bitmap), u32 nr_free,
// u32 none_free_before (first slot that may be free).
// The data space map keeps its index entries in a btree (key = bitmap
// number, 16-byte values); the metadata space map keeps up to 255 of them
// in one index block (salt 160478): csum u32, padding u32, blocknr u64,
// then entries[255].
//
// Bitmap block (salt 240779): csum u32, not_used u32, blocknr u64, then 510
// little-endian u64 words of 32 two-bit counts each (16320 per bitmap).
// Entry j of a word uses bit 2j as the high bit and bit 2j+1 as the low bit.
// A count of 3 means "3 or more: see the ref-count btree" (u32 values).

export const ENTRIES_PER_BITMAP = 16320;
export const MAX_METADATA_BITMAPS = 255;
const BITMAP_HEADER = 16;
const INDEX_HEADER = 16;

export interface SmRoot {
  nrBlocks: number;
  nrAllocated: number;
  bitmapRoot: number;
  refCountRoot: number;
}

export interface IndexEntry {
  blocknr: number;
  nrFree: number;
  noneFreeBefore: number;
}

export function decodeSmRoot(buf: Buffer, off: number): SmRoot {
  return {
    nrBlocks: readU64(buf, off),
    nrAllocated: readU64(buf, off + 8),
    bitmapRoot: readU64(buf, off + 16),
    refCountRoot: readU64(buf, off + 24),
  };
}

export function encodeSmRoot(root: SmRoot, buf: Buffer, off: number): void {
  writeU64(buf, off, root.nrBlocks);
  writeU64(buf, off + 8, root.nrAllocated);
  writeU64(buf, off + 16, root.bitmapRoot);
  writeU64(buf, off + 24, root.refCountRoot);
}

export function decodeIndexEntry(buf: Buffer, off = 0): IndexEntry {
  return { blocknr: readU64(buf, off), nrFree: buf.readUInt32LE(off + 8), noneFreeBefore: buf.readUInt32LE(off + 12) };
}

export function encodeIndexEntry(e: IndexEntry, buf: Buffer = Buffer.alloc(16), off = 0): Buffer {
  writeU64(buf, off, e.blocknr);
  buf.writeUInt32LE(e.nrFree, off + 8);
  buf.writeUInt32LE(e.noneFreeBefore, off + 12);
  return buf;
}

export function decodeIndexBlock(buf: Buffer, count: number): IndexEntry[] {
  const out: IndexEntry[] = [];
  for (let i = 0; i < count; i++) out.push(decodeIndexEntry(buf, INDEX_HEADER + 16 * i));
  return out;
}

export function encodeIndexBlock(entries: IndexEntry[], buf: Buffer): void {
  buf.fill(0, 4);
  entries.forEach((e, i) => encodeIndexEntry(e, buf, INDEX_HEADER + 16 * i));
}

// two-bit field value (bit 2j + 2 * bit 2j+1) -> count, and back
const FIELD_TO_COUNT = [0, 2, 1, 3];

export function decodeBitmap(buf: Buffer): Uint8Array {
  const counts = new Uint8Array(ENTRIES_PER_BITMAP);
  for (let w = 0; w < ENTRIES_PER_BITMAP / 16; w++) {
    const v = buf.readUInt32LE(BITMAP_HEADER + 4 * w);
    if (v === 0) continue;
    for (let j = 0; j < 16; j++) counts[w * 16 + j] = FIELD_TO_COUNT[(v >>> (2 * j)) & 3]!;
  }
  return counts;
}

export function encodeBitmap(counts: Uint8Array, buf: Buffer): void {
  buf.fill(0, 4);
  for (let w = 0; w < ENTRIES_PER_BITMAP / 16; w++) {
    let v = 0;
    for (let j = 0; j < 16; j++) v |= FIELD_TO_COUNT[counts[w * 16 + j]!]! << (2 * j);
    buf.writeUInt32LE(v >>> 0, BITMAP_HEADER + 4 * w);
  }
}
