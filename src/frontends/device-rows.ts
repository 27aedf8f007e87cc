import type { DevId } from '../base/units.js';
import type { Pool } from '../pool/pool.js';
import type { OriginSource } from '../pool/snapshot-tree.js';

// The rows `ls` prints (and `ls --tree` and `show` draw): each device's
// name, size and block counts, as Pool.usage() counts them (thin_ls's
// mapped, exclusive and shared), in blocks and in bytes.

export interface LsRow {
  name: string | null;
  devId: DevId;
  size: number | null;
  mappedBytes: number;
  exclusiveBytes: number;
  sharedBytes: number;
  mappedBlocks: number;
  exclusiveBlocks: number;
  sharedBlocks: number;
}

/** An ls row in snapshot-tree order: its origin (src/pool/snapshot-tree.ts explains how it is known) and depth. */
export interface TreeRow extends LsRow {
  origin: DevId | null;
  originSource: OriginSource | null;
  depth: number;
  creationTime: number;
  snapshottedTime: number;
}

export function lsRows(pool: Pool): LsRow[] {
  const bs = pool.blockBytes;
  return pool.usage().map((u) => ({
    name: u.name ?? null,
    devId: u.devId,
    size: u.size ?? null,
    mappedBytes: u.mappedBlocks * bs,
    exclusiveBytes: u.exclusiveBlocks * bs,
    sharedBytes: u.sharedBlocks * bs,
    mappedBlocks: u.mappedBlocks,
    exclusiveBlocks: u.exclusiveBlocks,
    sharedBlocks: u.sharedBlocks,
  }));
}

export async function treeRows(pool: Pool): Promise<TreeRow[]> {
  // Loaded here: most commands never draw a tree.
  const { poolSnapshotTree, treeOrder } = await import('../pool/snapshot-tree.js');
  const rows = new Map(lsRows(pool).map((r) => [r.devId as number, r]));
  const { devices, links } = poolSnapshotTree(pool.md, pool.registry.origins());
  const linkOf = new Map(links.map((l) => [l.devId as number, l]));
  const details = new Map(devices.map((d) => [d.devId as number, d]));
  return treeOrder(devices, links).map(({ devId, depth }) => ({
    ...rows.get(devId)!,
    origin: linkOf.get(devId)!.origin,
    originSource: linkOf.get(devId)!.how,
    depth,
    creationTime: details.get(devId)!.creationTime,
    snapshottedTime: details.get(devId)!.snapshottedTime,
  }));
}
