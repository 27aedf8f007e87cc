import { META_BLOCK_SIZE } from '../../base/units.js';
import type { Pool } from '../../pool/pool.js';
import type { TreeRow } from '../device-rows.js';

// What `thinfuse show` draws, computed from an open pool (in the serving
// daemon when there is one, so only this summary crosses the socket):
//
//   * devices: ls --tree's rows (snapshot tree order, origin, depth, mapped,
//     exclusive and shared blocks);
//   * map: the data device's blocks in order, each coloured by the set of
//     devices mapping it. At most `maxCells` cells are drawn: a larger pool
//     puts `group` consecutive blocks in a cell. A cell's set is the one that
//     maps the most of its mapped blocks (ties: the set with more blocks in
//     the whole pool), and `cellMapped` says how many of its blocks any
//     device maps, which the picture shows as how much of the cell is filled;
//   * sets: every distinct set of devices, most blocks first. Only the first
//     `maxSets` get a colour of their own; the rest are one entry, "other
//     sets", with their number in `otherSets`;
//   * pool: data and metadata usage, as dmsetup status counts them.
//
// Blocks a device maps are found by walking every device's mappings once.
// Blocks in use that no device maps (held only by a metadata snapshot, or in
// flight) are counted in `unmappedInUse` and drawn as free.

export const MAX_CELLS = 2048;
export const MAX_SETS = 11;

export interface DeviceSet {
  devIds: number[];
  blocks: number;
}

export interface BlockMap {
  /** Data blocks per cell. */
  group: number;
  /** Per cell: the index in `sets` of the set that maps most of its blocks; -1 when none are mapped. */
  cellSet: number[];
  /** Per cell: how many of its blocks are mapped (a cell has `group` blocks, the last perhaps fewer). */
  cellMapped: number[];
  /** Distinct device sets, most blocks first; an entry with devIds [] stands for the other sets together. */
  sets: DeviceSet[];
  /** How many sets the "other sets" entry stands for (0: there is none). */
  otherSets: number;
  unmappedInUse: number;
}

export interface PoolPicture {
  name: string;
  blockBytes: number;
  nrDataBlocks: number;
  dataUsed: number;
  metadataBlockBytes: number;
  /** Metadata blocks allocated; dmsetup status adds the kernel's reserve to this. */
  metadataAllocated: number;
  metadataReserve: number;
  metadataTotal: number;
  transactionId: string;
  time: number;
}

export interface ShowModel {
  pool: PoolPicture;
  devices: TreeRow[];
  map: BlockMap;
}

export function showModel(pool: Pool, devices: TreeRow[], maxCells = MAX_CELLS, maxSets = MAX_SETS): ShowModel {
  const md = pool.md;
  const total = md.msm.nrBlocks;
  const picture: PoolPicture = {
    name: pool.name,
    blockBytes: pool.blockBytes,
    nrDataBlocks: md.nrDataBlocks,
    dataUsed: md.dsm.nrAllocated,
    metadataBlockBytes: META_BLOCK_SIZE,
    metadataAllocated: md.msm.nrAllocated,
    metadataReserve: Math.min(4096, Math.floor(total / 10)),
    metadataTotal: total,
    transactionId: String(md.sb.transId),
    time: md.sb.time,
  };
  const sharers = blockSharers(pool);
  return { pool: picture, devices, map: blockMap(sharers, md.nrDataBlocks, md.dsm.nrAllocated, maxCells, maxSets) };
}

/** For every mapped data block, the set of devices mapping it (interned: an id into `members`). */
export interface Sharers {
  setOf: Map<number, number>;
  members: number[][];
}

function blockSharers(pool: Pool): Sharers {
  // Sets are built one device at a time, in increasing dev id order: the set
  // {a, b, c} is reached as {} -> {a} -> {a, b} -> {a, b, c}, each step
  // interned once, so a block costs one map lookup per device mapping it.
  const members: number[][] = [[]];
  const step = new Map<string, number>();
  const setOf = new Map<number, number>();
  for (const dev of pool.md.devices()) {
    pool.md.forEachMapping(dev, (_vb, m) => {
      const from = setOf.get(m.block) ?? 0;
      if (members[from]!.at(-1) === dev) return; // a second mapping of one block by one device
      const key = `${from}:${dev}`;
      let to = step.get(key);
      if (to === undefined) {
        to = members.length;
        members.push([...members[from]!, dev]);
        step.set(key, to);
      }
      setOf.set(m.block, to);
    });
  }
  return { setOf, members };
}

/** The grouped block map (pure: from the sharers and the pool's size). */
export function blockMap(sharers: Sharers, nrDataBlocks: number, dataUsed: number, maxCells: number, maxSets: number): BlockMap {
  const counts = new Map<number, number>();
  for (const s of sharers.setOf.values()) counts.set(s, (counts.get(s) ?? 0) + 1);
  const ranked = [...counts.entries()].sort((a, b) => b[1] - a[1] || compareSets(sharers.members[a[0]]!, sharers.members[b[0]]!));
  const rankOf = new Map<number, number>();
  const sets: DeviceSet[] = [];
  ranked.forEach(([id, blocks], i) => {
    if (i < maxSets) {
      rankOf.set(id, i);
      sets.push({ devIds: sharers.members[id]!, blocks });
    } else {
      rankOf.set(id, maxSets);
    }
  });
  const otherSets = Math.max(0, ranked.length - maxSets);
  if (otherSets > 0) sets.push({ devIds: [], blocks: ranked.slice(maxSets).reduce((n, [, b]) => n + b, 0) });

  const group = Math.max(1, Math.ceil(nrDataBlocks / maxCells));
  const cells = Math.ceil(nrDataBlocks / group);
  const perCell = new Uint32Array(cells * sets.length);
  for (const [block, id] of sharers.setOf) {
    const cell = Math.floor(block / group);
    if (cell < cells) perCell[cell * sets.length + rankOf.get(id)!]!++;
  }
  const cellSet: number[] = [];
  const cellMapped: number[] = [];
  for (let c = 0; c < cells; c++) {
    let best = -1;
    let mapped = 0;
    for (let r = 0; r < sets.length; r++) {
      const n = perCell[c * sets.length + r]!;
      mapped += n;
      if (n > 0 && (best < 0 || n > perCell[c * sets.length + best]!)) best = r;
    }
    cellSet.push(best);
    cellMapped.push(mapped);
  }
  return { group, cellSet, cellMapped, sets, otherSets, unmappedInUse: Math.max(0, dataUsed - sharers.setOf.size) };
}

/** Smaller sets first, then by their dev ids: a stable order for sets of equal size. */
function compareSets(a: number[], b: number[]): number {
  if (a.length !== b.length) return a.length - b.length;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return 0;
}
