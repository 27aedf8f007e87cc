import { crc32c } from '@node-rs/crc32';
import { META_BLOCK_SIZE } from '../base/units.js';

// Every metadata block starts with a u32 checksum of bytes 4..4095 and
// carries its own block number. The checksum is CRC-32C seeded with ~0 and
// without the final inversion (the kernel's dm_bm_checksum), XORed with a
// salt per block kind, so a block's kind can be told from its checksum.

export const SALT = {
  superblock: 160774,
  node: 121107,
  bitmap: 240779,
  index: 160478,
} as const;

export type BlockKind = keyof typeof SALT;

export function blockChecksum(buf: Buffer, salt: number): number {
  // @node-rs/crc32 computes the standard (finally inverted) CRC-32C.
  return ((~crc32c(buf.subarray(4, META_BLOCK_SIZE)) >>> 0) ^ salt) >>> 0;
}

export function sealBlock(buf: Buffer, kind: BlockKind): void {
  buf.writeUInt32LE(blockChecksum(buf, SALT[kind]), 0);
}

export function checksumMatches(buf: Buffer, kind: BlockKind): boolean {
  return buf.readUInt32LE(0) === blockChecksum(buf, SALT[kind]);
}
