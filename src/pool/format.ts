import { ThinError } from '../base/errors.js';
import { readU64, writeU64 } from '../base/le.js';
import { META_BLOCK_SIZE, META_SECTORS, type DataBlock, type MetaBlock } from '../base/units.js';
import { checksumMatches, sealBlock } from '../metadata/checksum.js';
import { decodeSmRoot, encodeSmRoot, type SmRoot } from '../metadata/space-map/format.js';

// dm-thin's own on-disk structures (drivers/md/dm-thin-metadata.c).
//
// Superblock, metadata block 0 (salt 160774), little-endian:
//   off size field
//     0   4  csum
//     4   4  flags              bit 0 = NEEDS_CHECK
//     8   8  blocknr            0
//    16  16  uuid               zeros; not used
//    32   8  magic              27022010
//    40   4  version            2 (thin_restore 0.9.0 writes 1 when the XML has none)
//    44   4  time               snapshot epoch, +1 per create_snap
//    48   8  trans_id           userspace transaction id (set_transaction_id only)
//    56   8  held_root          metadata snapshot (copy of this block), 0 = none
//    64 128  data_space_map_root      32-byte space-map root, then zeros
//   192 128  metadata_space_map_root
//   320   8  data_mapping_root        top level of the two-level mapping tree
//   328   8  device_details_root
//   336   4  data_block_size          sectors: 128..2097152, multiple of 128
//   340   4  metadata_block_size      sectors: always 8
//   344   8  metadata_nr_blocks       metadata size at format time (not updated on resize)
//   352   4  compat_flags
//   356   4  compat_ro_flags          unknown bits refuse a read-write open
//   360   4  incompat_flags           unknown bits refuse any open
// The structure stays inside the first sector, so its write is atomic.
//
// Device details (details btree value, 24 bytes):
//   0 u64 mapped_blocks   8 u64 transaction_id   16 u32 creation_time   20 u32 snapshotted_time
//
// Mapping value (bottom level of the mapping tree, 8 bytes):
//   (data_block << 24) | (time & 0xffffff)   data block: 40 bits, time: 24 bits

export const THIN_MAGIC = 27022010;
export const THIN_VERSION = 2;
export const NEEDS_CHECK = 1;

export interface Superblock {
  flags: number;
  uuid: Buffer;
  version: number;
  time: number;
  transId: bigint;
  heldRoot: MetaBlock;
  dataSm: SmRoot;
  metadataSm: SmRoot;
  mappingRoot: MetaBlock;
  detailsRoot: MetaBlock;
  dataBlockSize: number;
  metadataNrBlocks: number;
  compatFlags: number;
  compatRoFlags: number;
  incompatFlags: number;
}

export function isAllZero(buf: Buffer): boolean {
  for (let i = 0; i < buf.length; i += 8) if (buf.readBigUInt64LE(i) !== 0n) return false;
  return true;
}

/** Decodes and validates block 0 as read from `path`. */
export function decodeSuperblock(buf: Buffer, path: string, at: MetaBlock = 0 as MetaBlock): Superblock {
  const bad = (why: string): never => {
    throw new ThinError('BAD_SUPERBLOCK', `${path}: ${why}; the files were left untouched (inspect with thinfuse check)`);
  };
  if (at === 0 && isAllZero(buf)) bad('the superblock is all zeros (unformatted metadata)');
  if (!checksumMatches(buf, 'superblock')) bad('the superblock checksum is wrong');
  if (buf.readUInt32LE(32) !== THIN_MAGIC || buf.readUInt32LE(36) !== 0) bad('the superblock magic is wrong: this is not dm-thin metadata');
  if (readU64(buf, 8) !== at) bad(`the superblock claims to be block ${readU64(buf, 8)}`);
  const sb: Superblock = {
    flags: buf.readUInt32LE(4),
    uuid: Buffer.from(buf.subarray(16, 32)),
    version: buf.readUInt32LE(40),
    time: buf.readUInt32LE(44),
    transId: buf.readBigUInt64LE(48),
    heldRoot: readU64(buf, 56) as MetaBlock,
    dataSm: decodeSmRoot(buf, 64),
    metadataSm: decodeSmRoot(buf, 192),
    mappingRoot: readU64(buf, 320) as MetaBlock,
    detailsRoot: readU64(buf, 328) as MetaBlock,
    dataBlockSize: buf.readUInt32LE(336),
    metadataNrBlocks: readU64(buf, 344),
    compatFlags: buf.readUInt32LE(352),
    compatRoFlags: buf.readUInt32LE(356),
    incompatFlags: buf.readUInt32LE(360),
  };
  if (buf.readUInt32LE(340) !== META_SECTORS) bad(`metadata block size is ${buf.readUInt32LE(340)} sectors, not 8`);
  if (sb.dataBlockSize < 128 || sb.dataBlockSize > 2097152 || sb.dataBlockSize % 128 !== 0) bad(`data block size ${sb.dataBlockSize} sectors is invalid`);
  if (sb.incompatFlags !== 0) bad(`unknown incompatible feature flags ${sb.incompatFlags}`);
  return sb;
}

export function encodeSuperblock(sb: Superblock, at: MetaBlock = 0 as MetaBlock, zeroSpaceMaps = false): Buffer {
  const buf = Buffer.alloc(META_BLOCK_SIZE);
  buf.writeUInt32LE(sb.flags, 4);
  writeU64(buf, 8, at);
  sb.uuid.copy(buf, 16, 0, 16);
  buf.writeUInt32LE(THIN_MAGIC, 32);
  buf.writeUInt32LE(sb.version, 40);
  buf.writeUInt32LE(sb.time, 44);
  buf.writeBigUInt64LE(sb.transId, 48);
  writeU64(buf, 56, sb.heldRoot);
  if (!zeroSpaceMaps) {
    encodeSmRoot(sb.dataSm, buf, 64);
    encodeSmRoot(sb.metadataSm, buf, 192);
  }
  writeU64(buf, 320, sb.mappingRoot);
  writeU64(buf, 328, sb.detailsRoot);
  buf.writeUInt32LE(sb.dataBlockSize, 336);
  buf.writeUInt32LE(META_SECTORS, 340);
  writeU64(buf, 344, sb.metadataNrBlocks);
  buf.writeUInt32LE(sb.compatFlags, 352);
  buf.writeUInt32LE(sb.compatRoFlags, 356);
  buf.writeUInt32LE(sb.incompatFlags, 360);
  sealBlock(buf, 'superblock');
  return buf;
}

export interface DeviceDetails {
  mappedBlocks: number;
  transId: bigint;
  creationTime: number;
  snapshottedTime: number;
}

export const DETAILS_SIZE = 24;

export function decodeDetails(v: Buffer): DeviceDetails {
  return {
    mappedBlocks: readU64(v, 0),
    transId: v.readBigUInt64LE(8),
    creationTime: v.readUInt32LE(16),
    snapshottedTime: v.readUInt32LE(20),
  };
}

export function encodeDetails(d: DeviceDetails): Buffer {
  const v = Buffer.alloc(DETAILS_SIZE);
  writeU64(v, 0, d.mappedBlocks);
  v.writeBigUInt64LE(d.transId, 8);
  v.writeUInt32LE(d.creationTime, 16);
  v.writeUInt32LE(d.snapshottedTime, 20);
  return v;
}

export interface BlockTime {
  block: DataBlock;
  time: number;
}

export function decodeBlockTime(v: Buffer): BlockTime {
  const lo = v.readUInt32LE(0);
  const hi = v.readUInt32LE(4);
  return { block: (hi * 256 + (lo >>> 24)) as DataBlock, time: lo & 0xffffff };
}

export function encodeBlockTime(block: number, time: number, v: Buffer = Buffer.alloc(8)): Buffer {
  v.writeUInt32LE((((block & 0xff) << 24) | (time & 0xffffff)) >>> 0, 0);
  v.writeUInt32LE(Math.floor(block / 256), 4);
  return v;
}

export function blockOf(v: Buffer): DataBlock {
  return (v.readUInt32LE(4) * 256 + (v.readUInt32LE(0) >>> 24)) as DataBlock;
}
