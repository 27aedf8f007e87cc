import { ThinError } from '../../base/errors.js';
import { readU64, writeU64 } from '../../base/le.js';
import { META_BLOCK_SIZE, type MetaBlock } from '../../base/units.js';

// Btree node, the kernel's dm-btree layout (drivers/md/persistent-data):
//
//   off  size  field
//     0     4  csum         CRC-32C ^ 121107 over bytes 4..4095
//     4     4  flags        1 = internal, 2 = leaf
//     8     8  blocknr      the node's own location
//    16     4  nr_entries
//    20     4  max_entries  3 * floor(floor(4064 / (8 + value_size)) / 3)
//    24     4  value_size   8 for internal nodes (child block numbers)
//    28     4  padding
//    32        keys[max_entries]        u64, strictly increasing
//  32+8*max    values[max_entries]      value_size bytes each
//
// Internal keys[i] is the lowest key stored under child i (it may be lower:
// inserting below keys[0] lowers keys[0]). Every node but the root holds at
// least max_entries / 3 entries. All integers little-endian.

export const INTERNAL = 1;
export const LEAF = 2;
const HEADER = 32;

export function maxEntriesFor(valueSize: number): number {
  return 3 * Math.floor(Math.floor((META_BLOCK_SIZE - HEADER) / (8 + valueSize)) / 3);
}

export function initNode(buf: Buffer, flags: number, valueSize: number): void {
  buf.fill(0, 4);
  buf.writeUInt32LE(flags, 4);
  buf.writeUInt32LE(0, 16);
  buf.writeUInt32LE(maxEntriesFor(valueSize), 20);
  buf.writeUInt32LE(valueSize, 24);
}

export const isLeaf = (buf: Buffer) => buf.readUInt32LE(4) === LEAF;
export const nrEntries = (buf: Buffer) => buf.readUInt32LE(16);
export const setNrEntries = (buf: Buffer, n: number) => buf.writeUInt32LE(n, 16);
export const maxEntries = (buf: Buffer) => buf.readUInt32LE(20);
export const valueSize = (buf: Buffer) => buf.readUInt32LE(24);

export function keyAt(buf: Buffer, i: number): number {
  return readU64(buf, HEADER + 8 * i);
}

export function setKey(buf: Buffer, i: number, key: number): void {
  writeU64(buf, HEADER + 8 * i, key);
}

export function valueOffset(buf: Buffer, i: number): number {
  return HEADER + 8 * maxEntries(buf) + valueSize(buf) * i;
}

export function valueAt(buf: Buffer, i: number): Buffer {
  const off = valueOffset(buf, i);
  return buf.subarray(off, off + valueSize(buf));
}

export function childAt(buf: Buffer, i: number): MetaBlock {
  return readU64(buf, valueOffset(buf, i)) as MetaBlock;
}

export function setChild(buf: Buffer, i: number, b: MetaBlock): void {
  writeU64(buf, valueOffset(buf, i), b);
}

/** First index whose key is >= key (nr_entries if none). */
export function lowerBound(buf: Buffer, key: number): number {
  let lo = 0;
  let hi = nrEntries(buf);
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (keyAt(buf, mid) < key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Last index whose key is <= key, or -1. */
export function lastAtOrBelow(buf: Buffer, key: number): number {
  const i = lowerBound(buf, key);
  return i < nrEntries(buf) && keyAt(buf, i) === key ? i : i - 1;
}

/** Opens a gap at i and fills it. The node must have room. */
export function insertAt(buf: Buffer, i: number, key: number, value: Buffer): void {
  const nr = nrEntries(buf);
  const vs = valueSize(buf);
  const k0 = HEADER + 8 * i;
  buf.copyWithin(k0 + 8, k0, HEADER + 8 * nr);
  const v0 = valueOffset(buf, i);
  buf.copyWithin(v0 + vs, v0, valueOffset(buf, nr));
  setKey(buf, i, key);
  value.copy(buf, v0, 0, vs);
  setNrEntries(buf, nr + 1);
}

export function removeAt(buf: Buffer, i: number): void {
  const nr = nrEntries(buf);
  const vs = valueSize(buf);
  const k0 = HEADER + 8 * i;
  buf.copyWithin(k0, k0 + 8, HEADER + 8 * nr);
  buf.fill(0, HEADER + 8 * (nr - 1), HEADER + 8 * nr);
  const v0 = valueOffset(buf, i);
  buf.copyWithin(v0, v0 + vs, valueOffset(buf, nr));
  buf.fill(0, valueOffset(buf, nr - 1), valueOffset(buf, nr));
  setNrEntries(buf, nr - 1);
}

/** Moves entries [from, nr) of `src` to the end of `dst`. */
export function moveTail(src: Buffer, from: number, dst: Buffer): void {
  const n = nrEntries(src) - from;
  const d = nrEntries(dst);
  const vs = valueSize(src);
  src.copy(dst, HEADER + 8 * d, HEADER + 8 * from, HEADER + 8 * (from + n));
  src.copy(dst, valueOffset(dst, d), valueOffset(src, from), valueOffset(src, from + n));
  src.fill(0, HEADER + 8 * from, HEADER + 8 * (from + n));
  src.fill(0, valueOffset(src, from), valueOffset(src, from) + vs * n);
  setNrEntries(src, from);
  setNrEntries(dst, d + n);
}

/** Moves the first n entries of `src` to the end of `dst`. */
export function moveHead(src: Buffer, n: number, dst: Buffer): void {
  const nr = nrEntries(src);
  const d = nrEntries(dst);
  const vs = valueSize(src);
  src.copy(dst, HEADER + 8 * d, HEADER, HEADER + 8 * n);
  src.copy(dst, valueOffset(dst, d), valueOffset(src, 0), valueOffset(src, n));
  src.copyWithin(HEADER, HEADER + 8 * n, HEADER + 8 * nr);
  src.fill(0, HEADER + 8 * (nr - n), HEADER + 8 * nr);
  src.copyWithin(valueOffset(src, 0), valueOffset(src, n), valueOffset(src, nr));
  src.fill(0, valueOffset(src, nr - n), valueOffset(src, nr - n) + vs * n);
  setNrEntries(src, nr - n);
  setNrEntries(dst, d + n);
}

/** Header sanity beyond the checksum: what thin_check also insists on. */
function badNode(b: MetaBlock, why: string): never {
  throw new ThinError('BAD_METADATA', `btree node ${b}: ${why}; run thinfuse check`, { block: b });
}

export function checkNodeHeader(buf: Buffer, b: MetaBlock, leafValueSize: number): void {
  const flags = buf.readUInt32LE(4);
  const vs = valueSize(buf);
  if (flags !== INTERNAL && flags !== LEAF) badNode(b, `bad flags ${flags}`);
  if (vs !== (flags === INTERNAL ? 8 : leafValueSize)) badNode(b, `value size ${vs}, expected ${flags === INTERNAL ? 8 : leafValueSize}`);
  if (maxEntries(buf) !== maxEntriesFor(vs)) badNode(b, `max_entries ${maxEntries(buf)}`);
  if (nrEntries(buf) > maxEntries(buf)) badNode(b, `nr_entries ${nrEntries(buf)} > max_entries`);
}

export function u64Value(v: number): Buffer {
  const b = Buffer.alloc(8);
  writeU64(b, 0, v);
  return b;
}
