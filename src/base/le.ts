// Little-endian u64 fields held in JS numbers. Values above 2^53 cannot be
// represented, so reading one is an error rather than a silent rounding.

export function readU64(buf: Buffer, off: number): number {
  const lo = buf.readUInt32LE(off);
  const hi = buf.readUInt32LE(off + 4);
  if (hi >= 0x200000) throw new RangeError(`u64 at offset ${off} exceeds 2^53`);
  return hi * 0x100000000 + lo;
}

export function writeU64(buf: Buffer, off: number, v: number): void {
  buf.writeUInt32LE(v >>> 0, off);
  buf.writeUInt32LE(Math.floor(v / 0x100000000), off + 4);
}
