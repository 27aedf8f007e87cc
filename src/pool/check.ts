import { MAX_DATA_BLOCKS } from '../base/units.js';
import type { BackingFile } from '../io/backing-file.js';
import { decodeSmRoot, ENTRIES_PER_BITMAP, MAX_METADATA_BITMAPS, type SmRoot } from '../metadata/space-map/format.js';
import { CheckContext, u64 } from './check-context.js';
import { ExpectedDataRefs } from './check-data-refs.js';
import { compareDevices, devicesOf } from './check-devices.js';
import { compareDataCounts, compareMetadataCounts, dataSpaceMap, metadataSpaceMap } from './check-space-maps.js';
import { checkSnapshot, checkSuperblockFields, readSuperblock, refLiveSuperblock } from './check-superblock.js';

// An independent checker of dm-thin metadata (what thin_check does, and what
// thin_check 0.9.0 leaves out). It reads the file itself, read-only, block by
// block; it shares only the on-disk format decoders with the engine, never its
// block manager, trees or space maps, so an engine bug cannot hide itself.
//
// Checked:
//   * superblock: checksum, block number, magic, metadata block size, data
//     block size, incompatible feature flags;
//   * every btree node reachable from anywhere (both space maps' trees, the
//     details tree, the two-level mapping tree, the held snapshot's trees):
//     checksum, block number, flags, value size for the tree, max_entries,
//     nr_entries, non-root nodes at least max_entries / 3 full, keys strictly
//     increasing, every child's first key >= its parent key and the whole
//     subtree below the parent's next key, all leaves at one depth;
//   * the device ids of the details tree and of the mapping tree's top level
//     are the same set, and each device's mapped_blocks equals the number of
//     mappings in its tree (thin_check 0.9.0 does not check this);
//   * every mapped data block lies below nr_data_blocks;
//   * metadata space map: the expected count of every metadata block is
//     recomputed from every reference (superblock, space-map roots, index
//     entries, parent nodes, top-level values, the held snapshot) and
//     compared with the bitmaps and the ref-count tree: too low = fatal, too
//     high = leak (non-fatal);
//   * data space map: the expected count of every data block is the number of
//     distinct physical mapping leaves holding it (a shared leaf counts once),
//     compared the same way (thin_check 0.9.0 skips this);
//   * index entries' nr_free / none_free_before and the roots' nr_allocated
//     (reported as non-fatal only).
//
// A shared subtree is read and validated once; each further reference adds
// one to its root's expected count and is checked against the bounds of the
// referencing parent.
//
// With `metadataSnap` only the held snapshot's devices and mappings are
// checked (like thin_check -m): no space maps.

// Where each part lives:
//   check-superblock.ts   block 0, the fields every superblock copy must get right, the held snapshot;
//   check-space-maps.ts   both space maps as on disk, then their counts against the expected ones;
//   check-btree.ts        every reachable btree node, once, and the leaf entries kept for a walk by key;
//   check-data-refs.ts    the expected data counts, from each physical mapping leaf;
//   check-devices.ts      the details tree against the mapping tree's top level;
//   check-context.ts      the state they share; check-report.ts the messages.

export interface CheckOptions {
  /** Check the held metadata snapshot's trees only (thin_check -m). */
  metadataSnap?: boolean;
  /** Messages kept per kind of problem before the rest is summarised (default 20). */
  maxMessages?: number;
}

export interface CheckReport {
  /** No fatal errors (non-fatal ones, such as leaks, may remain). */
  ok: boolean;
  fatal: string[];
  nonFatal: string[];
  info: { transactionId: bigint; metadataFreeBlocks: number };
}

export function checkMetadata(file: BackingFile, opts: CheckOptions = {}): CheckReport {
  const ck = new CheckContext(file, opts.maxMessages ?? 20);
  const info: Info = { transactionId: 0n, metadataFreeBlocks: 0 };
  try {
    run(ck, opts, info);
  } catch (e) {
    ck.report.fatal('abort', `check aborted: ${(e as Error)?.message ?? String(e)}`);
  }
  ck.report.finish();
  return { ok: ck.report.fatals.length === 0, fatal: ck.report.fatals, nonFatal: ck.report.nonFatals, info };
}

type Info = CheckReport['info'];

const MAX_METADATA_BLOCKS = MAX_METADATA_BITMAPS * ENTRIES_PER_BITMAP;

function run(ck: CheckContext, opts: CheckOptions, info: Info): void {
  const raw = readSuperblock(ck);
  if (!raw) return;
  info.transactionId = raw.readBigUInt64LE(48);
  const metaSm = decodeSmRoot(raw, 192);
  const dataSm = decodeSmRoot(raw, 64);
  info.metadataFreeBlocks = Math.max(0, metaSm.nrBlocks - metaSm.nrAllocated);
  checkSuperblockFields(ck, raw, 'superblock');
  const held = u64(raw, 56);
  sizeMetadataSpaceMap(ck, metaSm);
  if (opts.metadataSnap) checkSnapshotOnly(ck, dataSm, held);
  else checkLive(ck, raw, metaSm, dataSm, held);
}

function sizeMetadataSpaceMap(ck: CheckContext, metaSm: SmRoot): void {
  ck.nrMeta = Math.min(metaSm.nrBlocks, MAX_METADATA_BLOCKS);
  if (metaSm.nrBlocks > MAX_METADATA_BLOCKS) {
    ck.report.fatal('sm', `metadata space map: ${metaSm.nrBlocks} blocks, more than one index block can describe (${MAX_METADATA_BLOCKS})`);
  }
  if (metaSm.nrBlocks > ck.fileBlocks) {
    ck.report.fatal('sm', `metadata space map: ${metaSm.nrBlocks} blocks, but the metadata file holds only ${ck.fileBlocks}`);
  }
  ck.metaExpected = new Uint32Array(ck.nrMeta);
}

function checkSnapshotOnly(ck: CheckContext, dataSm: SmRoot, held: number): void {
  ck.data = ExpectedDataRefs.rangeOnly(ck.report, dataSm.nrBlocks);
  if (held === 0) {
    ck.report.fatal('snap', 'metadata snapshot: none is held (held_root is 0)');
    return;
  }
  // The live superblock's reference to the copy, for the bookkeeping only.
  refLiveSuperblock(ck);
  checkSnapshot(ck, held);
}

function checkLive(ck: CheckContext, raw: Buffer, metaSm: SmRoot, dataSm: SmRoot, held: number): void {
  if (dataSm.nrBlocks > MAX_DATA_BLOCKS) ck.report.fatal('sm', `data space map: ${dataSm.nrBlocks} blocks, more than dm-thin allows (2^40)`);
  ck.data = ExpectedDataRefs.counting(ck.report, dataSm.nrBlocks);
  refLiveSuperblock(ck);

  const metaActual = metadataSpaceMap(ck, metaSm);
  const dataActual = dataSpaceMap(ck, dataSm);

  const view = devicesOf(ck, '', u64(raw, 328), u64(raw, 320));
  if (held !== 0) checkSnapshot(ck, held);
  compareDevices(ck, view);

  if (metaActual) compareMetadataCounts(ck, metaActual);
  if (dataActual) compareDataCounts(ck, dataActual, dataSm);
  if (ck.incomplete) {
    ck.report.nonFatal('incomplete', 'parts of the metadata could not be read: reference counts were checked for under-counts only, not for leaks');
  }
}
