import path from 'node:path';
import { ThinError } from '../base/errors.js';
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

export interface PoolConfig {
  features: PoolFeatures;
  /** In data blocks. */
  lowWaterMark: number;
  /** Seconds a write waits for space under queue_if_no_space; 0 = forever. */
  noSpaceTimeout: number;
}

export const CONFIG_FILE = 'config';

export function defaultConfig(): PoolConfig {
  return {
    features: { skipBlockZeroing: false, ignoreDiscard: false, noDiscardPassdown: false, errorIfNoSpace: false, readOnly: false },
    lowWaterMark: 0,
    noSpaceTimeout: 60,
  };
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
  return { features: { ...d.features, ...(r.features ?? {}) }, lowWaterMark: r.lowWaterMark ?? d.lowWaterMark, noSpaceTimeout: r.noSpaceTimeout ?? d.noSpaceTimeout };
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
  for (const k of ['lowWaterMark', 'noSpaceTimeout'] as const) {
    const v = r[k];
    if (v !== undefined && (!Number.isSafeInteger(v) || (v as number) < 0)) bad(`"${k}" is not a whole number >= 0`);
  }
}
