import type { DevId } from '../base/units.js';
import type { PoolMetadata } from './pool-metadata.js';
import type { OriginRecord } from './registry.js';

// The snapshot tree: which device each snapshot was taken of. dm-thin's
// metadata does not say. A device's details hold only mapped_blocks,
// transaction_id, creation_time and snapshotted_time, and create_snap
// copies the origin's mapping-tree root and forgets where it came from. So
// the tree comes from two sources, in this order:
//
// 1. Recorded: thinfuse writes the origin of every snapshot it makes
//    (`snapshot`, `create_snap` messages, layer snapshots) to POOL/devices
//    (registry.ts). A record is used only while the metadata agrees with it:
//    the device still has the creation_time the record names, and the
//    origin exists and was created before it.
//
// 2. Inferred, for devices without a usable record (pools made by
//    thin_restore or the kernel, records lost to a crash). dm-thin's times
//    tell when each snapshot was made: create_snap adds 1 to the pool's time
//    and gives the snapshot creation_time = snapshotted_time = the new time
//    T, and sets the origin's snapshotted_time to T. snapshotted_time only
//    grows after that, and no other message changes either time. So the
//    origin of a device created at T is a device created before T whose
//    snapshotted_time is T or later. Such a candidate is taken only when
//    there is evidence the two share: at least one data block both map, or
//    the same mapping-tree root (a snapshot nobody wrote to since). Of
//    several candidates, the one sharing the most data blocks wins, then one
//    with the same root, then the latest created, then the lowest dev id.
//    This is a guess, and is shown as one: a snapshot whose blocks have all
//    been overwritten since, or whose origin was deleted, is shown as a
//    root; where two candidates share equally, the pick may be wrong.
//
// A device made by create_thin shares nothing and stays a root. Origins are
// always created before their snapshots, so the result is a forest.

export interface TreeDevice {
  devId: DevId;
  creationTime: number;
  snapshottedTime: number;
}

export type OriginSource = 'recorded' | 'inferred';

export interface TreeLink {
  devId: DevId;
  origin: DevId | null;
  how: OriginSource | null;
}

/** What inference may ask about two devices. */
export interface ShareEvidence {
  /** Data blocks both devices map. */
  sharedBlocks(dev: DevId, other: DevId): number;
  /** Whether both devices' mapping trees have the same root. */
  sameRoot(dev: DevId, other: DevId): boolean;
}

/** Each device's origin, recorded or inferred (null for a root). */
export function snapshotOrigins(devices: TreeDevice[], records: OriginRecord[], evidence: ShareEvidence): TreeLink[] {
  const byId = new Map(devices.map((d) => [d.devId as number, d]));
  const recorded = new Map(records.map((r) => [r.devId as number, r]));
  return devices.map((d) => {
    const r = recorded.get(d.devId);
    if (r && recordHolds(r, d, byId.get(r.origin))) return { devId: d.devId, origin: r.origin, how: 'recorded' };
    const origin = inferOrigin(d, devices, evidence);
    return { devId: d.devId, origin, how: origin === null ? null : 'inferred' };
  });
}

function recordHolds(r: OriginRecord, d: TreeDevice, origin: TreeDevice | undefined): boolean {
  return origin !== undefined && origin.devId !== d.devId && d.creationTime === r.time && origin.creationTime < r.time;
}

function inferOrigin(d: TreeDevice, devices: TreeDevice[], evidence: ShareEvidence): DevId | null {
  let best: { dev: TreeDevice; shared: number; sameRoot: boolean } | undefined;
  for (const c of devices) {
    if (c.devId === d.devId || c.creationTime >= d.creationTime || c.snapshottedTime < d.creationTime) continue;
    const shared = evidence.sharedBlocks(d.devId, c.devId);
    const sameRoot = evidence.sameRoot(d.devId, c.devId);
    if (shared === 0 && !sameRoot) continue;
    const cand = { dev: c, shared, sameRoot };
    if (!best || better(cand, best)) best = cand;
  }
  return best ? best.dev.devId : null;
}

function better(a: { dev: TreeDevice; shared: number; sameRoot: boolean }, b: typeof a): boolean {
  if (a.shared !== b.shared) return a.shared > b.shared;
  if (a.sameRoot !== b.sameRoot) return a.sameRoot;
  if (a.dev.creationTime !== b.dev.creationTime) return a.dev.creationTime > b.dev.creationTime;
  return a.dev.devId < b.dev.devId;
}

/** Devices in tree order (depth first, siblings oldest first), with their depth. */
export function treeOrder(devices: TreeDevice[], links: TreeLink[]): Array<{ devId: DevId; depth: number }> {
  const origin = new Map(links.map((l) => [l.devId as number, l.origin]));
  const children = new Map<number | null, TreeDevice[]>();
  for (const d of devices) {
    const o = origin.get(d.devId) ?? null;
    children.set(o, [...(children.get(o) ?? []), d]);
  }
  for (const list of children.values()) list.sort((a, b) => a.creationTime - b.creationTime || a.devId - b.devId);
  // A stack, not recursion: chains of thousands of snapshots are legal.
  const out: Array<{ devId: DevId; depth: number }> = [];
  const stack = (children.get(null) ?? []).map((d) => ({ d, depth: 0 })).reverse();
  for (let top = stack.pop(); top; top = stack.pop()) {
    out.push({ devId: top.d.devId, depth: top.depth });
    const kids = children.get(top.d.devId) ?? [];
    for (let i = kids.length - 1; i >= 0; i--) stack.push({ d: kids[i]!, depth: top.depth + 1 });
  }
  return out;
}

/** Evidence read from the metadata; each device's block set is built once. */
export function metadataEvidence(md: PoolMetadata): ShareEvidence {
  const blocks = new Map<number, Set<number>>();
  const blocksOf = (dev: DevId) => {
    let s = blocks.get(dev);
    if (!s) {
      s = new Set();
      const add = s;
      md.forEachMapping(dev, (_vb, m) => add.add(m.block));
      blocks.set(dev, s);
    }
    return s;
  };
  return {
    sharedBlocks(dev, other) {
      const mine = blocksOf(dev);
      let n = 0;
      for (const b of blocksOf(other)) if (mine.has(b)) n++;
      return n;
    },
    sameRoot: (dev, other) => md.subtreeRoot(dev) === md.subtreeRoot(other),
  };
}

/** The pool's tree: its devices' details, the registry's records, evidence from the mappings. */
export function poolSnapshotTree(md: PoolMetadata, records: OriginRecord[]): { devices: TreeDevice[]; links: TreeLink[] } {
  const devices = md.devices().map((devId) => {
    const d = md.getDetails(devId);
    return { devId, creationTime: d.creationTime, snapshottedTime: d.snapshottedTime };
  });
  return { devices, links: snapshotOrigins(devices, records, metadataEvidence(md)) };
}
