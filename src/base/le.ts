import { ThinError } from './errors.js';

// Little-endian u64 fields held in JS numbers. Values above 2^53 cannot be
// represented, so reading one is an error rather than a silent rounding. The
// fields read here are metadata (block numbers, counts), so such a value
// means corrupt metadata: BAD_METADATA, which the pool handles like any other
// corrupt block.

export function readU64(buf: Buffer, off: number): number {
  const lo = buf.readUInt32LE(off);
  const hi = buf.readUInt32LE(off + 4);
  if (hi >= 0x200000) throw new ThinError('BAD_METADATA', `a 64-bit metadata field (offset ${off}) exceeds 2^53: the metadata is corrupt; run thinfuse check`);
  return hi * 0x100000000 + lo;
}

export function writeU64(buf: Buffer, off: number, v: number): void {
  buf.writeUInt32LE(v >>> 0, off);
  buf.writeUInt32LE(Math.floor(v / 0x100000000), off + 4);
}
