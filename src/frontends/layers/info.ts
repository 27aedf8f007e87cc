import fs from 'node:fs';
import path from 'node:path';
import { formatBytes } from '../../base/size.js';
import { META_BLOCK_SIZE } from '../../base/units.js';
import { loadOptions } from './options.js';
import { BASE_ID, readStore } from './store-file.js';

// `thinfuse info`: the fields `docker info` printed for the devicemapper
// driver, computed from the pool and the layer store (read without taking
// the store's lock: a report, not an operation).

export interface PoolFacts {
  name: string;
  blockSize: number;
  data: { used: number; total: number };
  metadata: { used: number; total: number };
}

export interface DockerInfo {
  poolName: string;
  poolBlocksize: number;
  baseDeviceSize: number | null;
  backingFilesystem: string | null;
  dataFile: string;
  metadataFile: string;
  dataSpaceUsed: number;
  dataSpaceTotal: number;
  dataSpaceAvailable: number;
  metadataSpaceUsed: number;
  metadataSpaceTotal: number;
  metadataSpaceAvailable: number;
  thinPoolMinimumFreeSpace: number;
  deferredRemovalEnabled: boolean;
  deferredDeletionEnabled: boolean;
  deferredDeletedDeviceCount: number;
}

/** As Docker: available = total - used, but never more than the host filesystem under the files has free. */
export function dockerInfo(pool: string, s: PoolFacts, storageOpts: string[] = []): DockerInfo {
  const opts = loadOptions(pool, storageOpts);
  const store = readStore(pool);
  const st = fs.statfsSync(pool);
  const hostFree = st.bavail * st.bsize;
  const bs = s.blockSize;
  const dataTotal = s.data.total * bs;
  const metaTotal = s.metadata.total * META_BLOCK_SIZE;
  const base = store.layers[BASE_ID];
  return {
    poolName: s.name,
    poolBlocksize: bs,
    baseDeviceSize: base?.size ?? null,
    backingFilesystem: store.fs,
    dataFile: path.resolve(pool, 'data'),
    metadataFile: path.resolve(pool, 'metadata'),
    dataSpaceUsed: s.data.used * bs,
    dataSpaceTotal: dataTotal,
    dataSpaceAvailable: Math.min(dataTotal - s.data.used * bs, hostFree),
    metadataSpaceUsed: s.metadata.used * META_BLOCK_SIZE,
    metadataSpaceTotal: metaTotal,
    metadataSpaceAvailable: Math.min(metaTotal - s.metadata.used * META_BLOCK_SIZE, hostFree),
    thinPoolMinimumFreeSpace: Math.floor((dataTotal * opts.minFreeSpace) / 100),
    deferredRemovalEnabled: opts.deferredRemoval,
    deferredDeletionEnabled: opts.deferredDeletion,
    deferredDeletedDeviceCount: Object.values(store.layers).filter((l) => l.state === 'deferred').length,
  };
}

export function dockerInfoLines(d: DockerInfo): string[] {
  const size = (n: number | null) => (n === null ? '-' : formatBytes(n));
  return [
    `Pool Name: ${d.poolName}`,
    `Pool Blocksize: ${formatBytes(d.poolBlocksize)}`,
    `Base Device Size: ${size(d.baseDeviceSize)}`,
    `Backing Filesystem: ${d.backingFilesystem ?? '-'}`,
    `Data file: ${d.dataFile}`,
    `Metadata file: ${d.metadataFile}`,
    `Data Space Used: ${formatBytes(d.dataSpaceUsed)}`,
    `Data Space Total: ${formatBytes(d.dataSpaceTotal)}`,
    `Data Space Available: ${formatBytes(d.dataSpaceAvailable)}`,
    `Metadata Space Used: ${formatBytes(d.metadataSpaceUsed)}`,
    `Metadata Space Total: ${formatBytes(d.metadataSpaceTotal)}`,
    `Metadata Space Available: ${formatBytes(d.metadataSpaceAvailable)}`,
    `Thin Pool Minimum Free Space: ${formatBytes(d.thinPoolMinimumFreeSpace)}`,
    `Deferred Removal Enabled: ${d.deferredRemovalEnabled}`,
    `Deferred Deletion Enabled: ${d.deferredDeletionEnabled}`,
    `Deferred Deleted Device Count: ${d.deferredDeletedDeviceCount}`,
  ];
}
