import fs from 'node:fs';
import { ThinError } from '../../base/errors.js';
import { parseSize } from '../../base/size.js';
import { type LayerOptions, loadOptions } from '../layers/options.js';

// The snapshotter's --config: a JSON file with the devmapper snapshotter's
// names for what it shares with the layer store,
//
//   { "base_image_size": "10GB", "fs_type": "ext4" | "xfs", "fs_options": "-O ^metadata_csum" }
//
// sizes binary as in devmapper (units.RAMInBytes: 10GB = 10 GiB). They go
// over the layer store's own options (POOL/layers.conf, dm.*): base size,
// filesystem and mkfs arguments of the base device made at first start.
// Other keys are errors, so a typo is not silently ignored.

export interface SnapshotterConfig {
  base_image_size?: string;
  fs_type?: string;
  fs_options?: string;
}

const KEYS = ['base_image_size', 'fs_type', 'fs_options'];

export function readConfig(file: string | undefined): SnapshotterConfig {
  if (!file) return {};
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new ThinError('EINVAL_ARG', `cannot read the snapshotter config ${file}: ${(e as Error).message.split('\n')[0]}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ThinError('EINVAL_ARG', `${file}: the snapshotter config must be a JSON object`);
  for (const [k, v] of Object.entries(raw)) {
    if (!KEYS.includes(k)) throw new ThinError('EINVAL_ARG', `${file}: unknown key '${k}'; known: ${KEYS.join(', ')}`);
    if (typeof v !== 'string') throw new ThinError('EINVAL_ARG', `${file}: ${k} must be a string`);
  }
  return raw as SnapshotterConfig;
}

/** The layer store's options for this pool, with the config's on top. */
export function storeOptions(pool: string, c: SnapshotterConfig): LayerOptions {
  const o = loadOptions(pool);
  if (c.base_image_size !== undefined) {
    o.baseSize = parseSize(c.base_image_size, 'base_image_size');
    o.baseSizeGiven = true;
  }
  if (c.fs_type !== undefined) {
    if (c.fs_type !== 'ext4' && c.fs_type !== 'xfs') throw new ThinError('EINVAL_ARG', `fs_type takes ext4 or xfs, not '${c.fs_type}'`);
    o.fs = c.fs_type;
  }
  if (c.fs_options !== undefined) o.mkfsArgs.push(...c.fs_options.split(/\s+/).filter(Boolean));
  return o;
}
