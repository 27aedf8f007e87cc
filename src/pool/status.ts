import { SECTOR } from '../base/units.js';
import type { Pool } from './pool.js';

// `dmsetup status` lines (dm-thin.c pool_status and thin_status):
//   NAME: 0 LEN thin-pool TRANS META_USED/META_TOTAL DATA_USED/DATA_TOTAL HELD|- MODE DISCARD NOSPACE NEEDS_CHECK|- META_LOW_WATER
// with the kernel's trailing space on the pool line, and for each named thin
//   NAME: 0 SECTORS thin MAPPED_SECTORS HIGHEST_SECTOR|-

export interface PoolStatus {
  name: string;
  transactionId: string;
  metadata: { used: number; total: number };
  data: { used: number; total: number };
  heldRoot: number | null;
  mode: 'rw' | 'ro' | 'out_of_data_space' | 'fail';
  discard: 'ignore_discard' | 'discard_passdown' | 'no_discard_passdown';
  noSpace: 'error_if_no_space' | 'queue_if_no_space';
  needsCheck: boolean;
  metadataLowWater: number;
  lowWaterMark: number;
  lowWaterEvents: number;
  /** dm's event number (low water, mode changes). */
  events: number;
  blockSize: number;
  cache: ReturnType<Pool['md']['bm']['cacheStats']>;
  dataCache: ReturnType<Pool['dataCacheStats']>;
  devices: Array<{ name: string; devId: number; sectors: number; mappedSectors: number; highestSector: number | null; suspended: boolean; error?: string }>;
}

export function poolStatus(pool: Pool): PoolStatus {
  const md = pool.md;
  const f = pool.config.features;
  const sectorsPerBlock = md.dataBlockSize;
  const dsm = md.dsm;
  const metaFileBlocks = Math.floor(md.file.size() / 4096);
  return {
    name: pool.name,
    transactionId: String(md.sb.transId),
    metadata: md.metadataUsage(),
    data: { used: dsm.nrAllocated, total: dsm.nrBlocks },
    heldRoot: md.sb.heldRoot === 0 ? null : md.sb.heldRoot,
    mode: pool.mode === 'write' ? 'rw' : pool.mode === 'read_only' ? 'ro' : pool.mode,
    discard: f.ignoreDiscard ? 'ignore_discard' : f.noDiscardPassdown ? 'no_discard_passdown' : 'discard_passdown',
    noSpace: pool.noSpacePolicy,
    needsCheck: md.needsCheck,
    metadataLowWater: Math.min(1024, Math.floor(metaFileBlocks / 4)),
    lowWaterMark: pool.config.lowWaterMark,
    lowWaterEvents: pool.lowWaterEvents,
    events: pool.events,
    blockSize: pool.blockBytes,
    cache: md.bm.cacheStats(),
    dataCache: pool.dataCacheStats(),
    devices: pool.registry.list().filter((d) => md.hasDevice(d.devId)).map((d) => {
      const mapped = md.getDetails(d.devId).mappedBlocks;
      let highest: number | undefined;
      try {
        highest = md.highestMapped(d.devId);
      } catch (e) {
        // dm prints "Error" for a thin whose status cannot be read.
        return { name: d.name, devId: d.devId, sectors: d.size / SECTOR, mappedSectors: 0, highestSector: null, suspended: pool.isSuspended(d.devId), error: (e as Error).message };
      }
      return {
        name: d.name,
        devId: d.devId,
        sectors: d.size / SECTOR,
        mappedSectors: mapped * sectorsPerBlock,
        highestSector: highest === undefined ? null : (highest + 1) * sectorsPerBlock - 1,
        suspended: pool.isSuspended(d.devId),
      };
    }),
  };
}

/** What dm prints after `0 LEN thin-pool ` for the pool (the kernel's trailing space included). */
export function poolStatusText(s: PoolStatus): string {
  if (s.mode === 'fail') return 'Fail';
  return `${s.transactionId} ${s.metadata.used}/${s.metadata.total} ${s.data.used}/${s.data.total} ` +
    `${s.heldRoot ?? '-'} ${s.mode} ${s.discard} ${s.noSpace} ${s.needsCheck ? 'needs_check' : '-'} ${s.metadataLowWater} `;
}

/** What dm prints after `0 LEN thin ` for a thin device of the pool; undefined status: not in the pool. */
export function thinStatusText(s: PoolStatus, d: PoolStatus['devices'][number] | undefined): string {
  if (s.mode === 'fail') return 'Fail';
  if (!d || d.error) return 'Error';
  return `${d.mappedSectors} ${d.highestSector ?? '-'}`;
}

export function statusLines(s: PoolStatus): string[] {
  const len = (s.data.total * s.blockSize) / SECTOR;
  const pool = `${s.name}: 0 ${len} thin-pool ${poolStatusText(s)}`;
  const thins = s.devices.map((d) => `${d.name}: 0 ${d.sectors} thin ${thinStatusText(s, d)}`);
  return [pool, ...thins];
}
