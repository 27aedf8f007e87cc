import { ThinError } from '../base/errors.js';
import type { MetaBlock } from '../base/units.js';
import { forEach } from '../metadata/btree/btree.js';
import { decodeBlockTime, decodeDetails, decodeSuperblock, type DeviceDetails, type Superblock } from './format.js';
import type { PoolMetadata } from './pool-metadata.js';
import type { DumpVisitor } from './xml.js';

// Walks a pool's metadata in thin_dump order and hands the IR to a visitor
// (an XmlDumpWriter prints it byte-for-byte as thin_dump 0.9.0 would):
//
//   superblock: uuid "" (not persisted), time, transaction, flags, version,
//               data_block_size, nr_data_blocks (the data space map's size);
//   devices:    in increasing dev id order, the order of the top level of the
//               mapping tree, each with its details as stored (mapped_blocks
//               is not recounted);
//   mappings:   per device in increasing virtual block order, one visitor
//               call per block (the writer merges runs).
//
// With `metadataSnap` the held superblock copy (md.sb.heldRoot) is dumped:
// its time, transaction, flags, version and trees. The copy's space-map roots
// are zeroed, so nr_data_blocks is 0, as `thin_dump -m` prints.
//
// Live dumps use the in-memory state: when the transaction has uncommitted
// changes, device details come from PoolMetadata (the details tree is only
// written at commit); otherwise from the details tree itself.
//
// A node that fails validation (checksum, block number, header), keys out of
// order or a device present in only one of the two trees throws ThinError
// BAD_METADATA; nothing is repaired or skipped.

export interface DumpOptions {
  /** Dump the held metadata snapshot instead of the live metadata. */
  metadataSnap?: boolean;
}

export function dumpMetadata(md: PoolMetadata, visitor: DumpVisitor, opts: DumpOptions = {}): void {
  const bad = (why: string): never => {
    throw new ThinError('BAD_METADATA', `dump: ${why}; run thinfuse check`);
  };
  let sb: Superblock;
  let nrDataBlocks: number;
  let details: Map<number, DeviceDetails>;
  if (opts.metadataSnap) {
    const held = md.sb.heldRoot;
    if (held === 0) throw new ThinError('SNAP_NOT_HELD', 'dump: no metadata snapshot is held (reserve_metadata_snap first)');
    sb = guard(() => decodeSuperblock(md.tm.read(held, 'superblock'), md.file.path, held));
    nrDataBlocks = sb.dataSm.nrBlocks;
    details = readDetails(md, sb.detailsRoot);
  } else {
    sb = md.sb;
    nrDataBlocks = md.nrDataBlocks;
    details = md.hasChanges() ? liveDetails(md) : readDetails(md, sb.detailsRoot);
  }

  // The top level first, so a bad node fails before anything is printed.
  const devices: Array<[number, MetaBlock]> = [];
  guard(() =>
    forEach(md.top, sb.mappingRoot, (dev, v) => {
      const root = v.readUInt32LE(0) + v.readUInt32LE(4) * 2 ** 32;
      if (!Number.isSafeInteger(root)) bad(`device ${dev} has an impossible mapping tree root`);
      devices.push([dev, root as MetaBlock]);
    }),
  );
  let prev = -1;
  for (const [dev] of devices) {
    if (dev <= prev) bad(`the top level of the mapping tree is out of order at device ${dev}`);
    prev = dev;
    if (!details.has(dev)) bad(`device ${dev} has a mapping tree but no details`);
  }
  if (details.size !== devices.length) {
    const inTop = new Set(devices.map(([d]) => d));
    const missing = [...details.keys()].find((d) => !inTop.has(d));
    bad(`device ${missing} has details but no mapping tree`);
  }

  visitor.superblockBegin({
    uuid: '',
    time: sb.time,
    transaction: sb.transId,
    flags: sb.flags,
    version: sb.version,
    dataBlockSize: sb.dataBlockSize,
    nrDataBlocks,
  });
  for (const [dev, root] of devices) {
    const d = details.get(dev)!;
    visitor.deviceBegin({
      devId: dev,
      mappedBlocks: d.mappedBlocks,
      transaction: d.transId,
      creationTime: d.creationTime,
      snapTime: d.snapshottedTime,
    });
    let last = -1;
    guard(() =>
      forEach(md.bottom, root, (vb, v) => {
        if (vb <= last) bad(`device ${dev}: mapping keys out of order at virtual block ${vb}`);
        last = vb;
        const m = decodeBlockTime(v);
        visitor.mapping({ originBlock: vb, dataBlock: m.block, time: m.time });
      }),
    );
    visitor.deviceEnd();
  }
  visitor.superblockEnd();
}

function readDetails(md: PoolMetadata, root: MetaBlock): Map<number, DeviceDetails> {
  const out = new Map<number, DeviceDetails>();
  let prev = -1;
  guard(() =>
    forEach(md.detailsTree, root, (dev, v) => {
      if (dev <= prev) throw new ThinError('BAD_METADATA', `dump: the device details tree is out of order at device ${dev}; run thinfuse check`);
      prev = dev;
      out.set(dev, decodeDetails(v));
    }),
  );
  return out;
}

function liveDetails(md: PoolMetadata): Map<number, DeviceDetails> {
  const out = new Map<number, DeviceDetails>();
  for (const dev of md.devices()) out.set(dev, md.getDetails(dev));
  return out;
}

/** Turns what garbage can make the decoders throw (u64 past 2^53, ...) into BAD_METADATA. */
function guard<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof ThinError) {
      if (e.code === 'BAD_SUPERBLOCK') throw new ThinError('BAD_METADATA', `dump: metadata snapshot: ${e.message}`, e.data, e);
      throw e;
    }
    if (e instanceof RangeError) throw new ThinError('BAD_METADATA', `dump: ${e.message}; run thinfuse check`, {}, e);
    throw e;
  }
}
