import path from 'node:path';
import { ThinError } from '../base/errors.js';
import { formatBytes } from '../base/size.js';
import { type PoolFiles, realPoolFiles, writeFileAtomic } from '../io/pool-files.js';

export { writeFileAtomic };

// What dm-thin keeps in its table line rather than in the metadata lives in
// POOL/config (JSON). A pool directory without one (made by thin_restore, or
// copied from a host with dm-thin) opens with the defaults.

export interface PoolFeatures {
  skipBlockZeroing: boolean;
  ignoreDiscard: boolean;
  noDiscardPassdown: boolean;
  errorIfNoSpace: boolean;
  readOnly: boolean;
}

/**
 * LVM's thin_pool_autoextend_threshold / _percent, for data and metadata:
 * while served, once use reaches threshold percent, the pool grows by
 * percent of its size. threshold 100 turns it off (LVM's default).
 */
export interface AutoextendConfig {
  threshold: number;
  percent: number;
  metadataThreshold: number;
  metadataPercent: number;
  /** The data size auto-extend never grows past, in bytes; 0: no limit but the host's. */
  max: number;
}

export interface PoolConfig {
  features: PoolFeatures;
  autoextend: AutoextendConfig;
  /** In data blocks. */
  lowWaterMark: number;
  /** Seconds a write waits for space under queue_if_no_space; 0 = forever. */
  noSpaceTimeout: number;
}

export const CONFIG_FILE = 'config';

export function defaultConfig(): PoolConfig {
  return {
    features: { skipBlockZeroing: false, ignoreDiscard: false, noDiscardPassdown: false, errorIfNoSpace: false, readOnly: false },
    autoextend: { threshold: 100, percent: 20, metadataThreshold: 100, metadataPercent: 20, max: 0 },
    lowWaterMark: 0,
    noSpaceTimeout: 60,
  };
}

/**
 * Refuses settings LVM would refuse (a threshold under 50 or over 100, a
 * percent of 0) and a max below the pool's data size now: one line naming
 * the option and what it takes.
 */
export function checkAutoextend(a: AutoextendConfig, dataBytes: number): void {
  const bad = (why: string): never => {
    throw new ThinError('EINVAL_ARG', why);
  };
  for (const [flag, v] of [['--autoextend-threshold', a.threshold], ['--metadata-autoextend-threshold', a.metadataThreshold]] as const) {
    if (!Number.isInteger(v) || v < 50 || v > 100) bad(`${flag} takes a whole percent from 50 to 100 (100 turns auto-extend off), not ${v}`);
  }
  for (const [flag, v] of [['--autoextend-percent', a.percent], ['--metadata-autoextend-percent', a.metadataPercent]] as const) {
    if (!Number.isInteger(v) || v < 1 || v > 1000) bad(`${flag} takes a whole percent from 1 to 1000 (of the size at the time), not ${v}`);
  }
  if (!Number.isSafeInteger(a.max) || a.max < 0) bad(`--autoextend-max takes a size, not ${a.max}`);
  if (a.max !== 0 && a.max < dataBytes) bad(`--autoextend-max ${formatBytes(a.max)} is below the pool's data size now (${formatBytes(dataBytes)}); give a larger size, or 0 for no limit`);
}

export function readConfig(dir: string, files: PoolFiles = realPoolFiles): PoolConfig {
  const file = path.join(dir, CONFIG_FILE);
  if (!files.exists(file)) return defaultConfig();
  let raw: unknown;
  try {
    raw = JSON.parse(files.readText(file));
  } catch (e) {
    throw new ThinError('EINVAL_ARG', `${file} is not valid JSON (${(e as Error).message}); fix or remove it`);
  }
  const d = defaultConfig();
  checkConfigShape(file, raw, d);
  const r = raw as Partial<PoolConfig>;
  return {
    features: { ...d.features, ...(r.features ?? {}) },
    autoextend: { ...d.autoextend, ...(r.autoextend ?? {}) },
    lowWaterMark: r.lowWaterMark ?? d.lowWaterMark,
    noSpaceTimeout: r.noSpaceTimeout ?? d.noSpaceTimeout,
  };
}

export function writeConfig(dir: string, config: PoolConfig, files: PoolFiles = realPoolFiles): void {
  writeFileAtomic(path.join(dir, CONFIG_FILE), JSON.stringify(config, null, 2) + '\n', files);
}

/** A config that parsed as JSON but holds the wrong types is refused, naming the field. */
function checkConfigShape(file: string, raw: unknown, d: PoolConfig): void {
  const bad = (why: string): never => {
    throw new ThinError('EINVAL_ARG', `${file}: ${why}; fix or remove it`);
  };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) bad('not a JSON object');
  const r = raw as Record<string, unknown>;
  if (r.features !== undefined) {
    if (typeof r.features !== 'object' || r.features === null || Array.isArray(r.features)) bad('"features" is not an object');
    for (const [k, v] of Object.entries(r.features as object)) {
      if (!(k in d.features)) bad(`unknown feature "${k}"`);
      if (typeof v !== 'boolean') bad(`feature "${k}" is not true or false`);
    }
  }
  if (r.autoextend !== undefined) {
    if (typeof r.autoextend !== 'object' || r.autoextend === null || Array.isArray(r.autoextend)) bad('"autoextend" is not an object');
    for (const [k, v] of Object.entries(r.autoextend as object)) {
      if (!(k in d.autoextend)) bad(`unknown autoextend setting "${k}"`);
      if (!Number.isSafeInteger(v) || (v as number) < 0) bad(`autoextend "${k}" is not a whole number >= 0`);
    }
  }
  for (const k of ['lowWaterMark', 'noSpaceTimeout'] as const) {
    const v = r[k];
    if (v !== undefined && (!Number.isSafeInteger(v) || (v as number) < 0)) bad(`"${k}" is not a whole number >= 0`);
  }
}
