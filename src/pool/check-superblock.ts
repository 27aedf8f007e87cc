import { MAX_BLOCK_SECTORS, META_SECTORS, MIN_BLOCK_SECTORS } from '../base/units.js';
import { checksumMatches } from '../metadata/checksum.js';
import { type CheckContext, u64 } from './check-context.js';
import { compareDevices, devicesOf } from './check-devices.js';
import { isAllZero, THIN_MAGIC } from './format.js';

// The superblock checks: block 0 before anything else is trusted, the fields
// both it and the held snapshot's copy must get right, and the snapshot copy
// with its trees. Calls the device checks for the snapshot's trees.

/** Block 0 when it is a superblock at all; undefined when the check cannot go on. */
export function readSuperblock(ck: CheckContext): Buffer | undefined {
  const raw = ck.readBlock(0);
  if (ck.fileBlocks === 0) {
    ck.report.fatal('superblock', 'superblock: the metadata file is shorter than one block');
    return undefined;
  }
  if (isAllZero(raw)) {
    ck.report.fatal('superblock', 'superblock: block 0 is all zeros (unformatted metadata)');
    return undefined;
  }
  if (!checksumMatches(raw, 'superblock')) {
    ck.report.fatal('superblock', 'superblock: bad checksum');
    return undefined;
  }
  if (raw.readUInt32LE(32) !== THIN_MAGIC || raw.readUInt32LE(36) !== 0) {
    ck.report.fatal('superblock', `superblock: bad magic ${u64(raw, 32)} (expected ${THIN_MAGIC})`);
    return undefined;
  }
  if (u64(raw, 8) !== 0) ck.report.fatal('superblock', `superblock: claims to be block ${u64(raw, 8)}`);
  return raw;
}

export function checkSuperblockFields(ck: CheckContext, raw: Buffer, what: string): void {
  const mbs = raw.readUInt32LE(340);
  if (mbs !== META_SECTORS) ck.report.fatal('superblock', `${what}: metadata_block_size ${mbs}, expected ${META_SECTORS}`);
  const dbs = raw.readUInt32LE(336);
  if (dbs < MIN_BLOCK_SECTORS || dbs > MAX_BLOCK_SECTORS || dbs % MIN_BLOCK_SECTORS !== 0) {
    ck.report.fatal('superblock', `${what}: data_block_size ${dbs} sectors is not a multiple of ${MIN_BLOCK_SECTORS} between ${MIN_BLOCK_SECTORS} and ${MAX_BLOCK_SECTORS}`);
  }
  const incompat = raw.readUInt32LE(360);
  if (incompat !== 0) ck.report.fatal('superblock', `${what}: unknown incompatible feature flags ${incompat}`);
}

/** Counts block 0's own reference and marks it as the superblock. */
export function refLiveSuperblock(ck: CheckContext): void {
  ck.refMeta(0, 'superblock');
  ck.uses.set(0, { kind: 'superblock', what: 'the superblock' });
}

export function checkSnapshot(ck: CheckContext, held: number): void {
  const what = 'metadata snapshot';
  if (!ck.refMeta(held, `${what} (held_root)`)) return;
  if (!ck.claim(held, 'superblock', `the ${what} superblock copy`)) return;
  const buf = ck.readValid(held, 'superblock', what);
  if (!buf) return;
  if (buf.readUInt32LE(32) !== THIN_MAGIC || buf.readUInt32LE(36) !== 0) {
    ck.report.fatal('superblock', `${what}: block ${held} has a bad magic ${u64(buf, 32)}`);
    return;
  }
  checkSuperblockFields(ck, buf, what);
  const view = devicesOf(ck, `${what}: `, u64(buf, 328), u64(buf, 320));
  compareDevices(ck, view);
}
