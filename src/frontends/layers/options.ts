import fs from 'node:fs';
import path from 'node:path';
import { ThinError } from '../../base/errors.js';
import { parseSize } from '../../base/size.js';

// The layer store's options, under Docker's devicemapper names (dm.*). They
// come from POOL/layers.conf, a JSON file shaped like the part of Docker's
// daemon.json that carried them:
//
//   { "storage-opts": ["dm.basesize=20G", "dm.fs=ext4", "dm.mountopt=nodiscard"] }
//
// and from `--storage-opt dm.x=y` on the command line, which come after the
// file's and so win (repeatable options add up instead). As in Docker, keys
// are matched case-insensitively, sizes are binary (10G = 10 GiB), and an
// unknown dm. key is an error.

export const CONF_FILE = 'layers.conf';

export type FsType = 'xfs' | 'ext4';

export interface LayerOptions {
  /** Virtual size of the base device, so the largest filesystem of a new layer. */
  baseSize: number;
  /** dm.basesize was given (only then does a larger value grow the base). */
  baseSizeGiven: boolean;
  /** Filesystem of the base; undefined = xfs if mkfs.xfs exists, else ext4. */
  fs: FsType | undefined;
  mkfsArgs: string[];
  mountOpts: string[];
  /** Discard a layer's whole device before deleting it (re-sparsifies). */
  blkdiscard: boolean;
  /** Percent of data and metadata space that must stay free for a new layer. */
  minFreeSpace: number;
  deferredRemoval: boolean;
  deferredDeletion: boolean;
  /** Only when the layer store creates the pool. */
  loopDataSize: number;
  loopMetadataSize: number;
  blockSize: number;
}

export function defaultOptions(): LayerOptions {
  return {
    baseSize: 10 * 1024 ** 3,
    baseSizeGiven: false,
    fs: undefined,
    mkfsArgs: [],
    mountOpts: [],
    blkdiscard: false,
    minFreeSpace: 10,
    deferredRemoval: true,
    deferredDeletion: true,
    loopDataSize: 100 * 1024 ** 3,
    loopMetadataSize: 2 * 1024 ** 3,
    blockSize: 64 * 1024,
  };
}

function bool(key: string, v: string): boolean {
  if (/^(1|t|true)$/i.test(v)) return true;
  if (/^(0|f|false)$/i.test(v)) return false;
  throw new ThinError('EINVAL_ARG', `${key} takes true or false, not '${v}'`);
}

function percent(key: string, v: string): number {
  const m = /^(\d{1,2})%$/.exec(v);
  if (!m) throw new ThinError('EINVAL_ARG', `${key} takes a percentage from 0% to 99%, not '${v}'`);
  return Number(m[1]);
}

const SETTERS: Record<string, (o: LayerOptions, v: string, key: string) => void> = {
  'dm.basesize': (o, v, k) => {
    o.baseSize = parseSize(v, k);
    o.baseSizeGiven = true;
  },
  'dm.fs': (o, v, k) => {
    if (v !== 'xfs' && v !== 'ext4') throw new ThinError('EINVAL_ARG', `${k} takes xfs or ext4, not '${v}'`);
    o.fs = v;
  },
  'dm.mkfsarg': (o, v) => void o.mkfsArgs.push(v),
  'dm.mountopt': (o, v) => void o.mountOpts.push(...v.split(',').filter(Boolean)),
  'dm.blkdiscard': (o, v, k) => (o.blkdiscard = bool(k, v)),
  'dm.min_free_space': (o, v, k) => (o.minFreeSpace = percent(k, v)),
  'dm.use_deferred_removal': (o, v, k) => (o.deferredRemoval = bool(k, v)),
  'dm.use_deferred_deletion': (o, v, k) => (o.deferredDeletion = bool(k, v)),
  'dm.loopdatasize': (o, v, k) => (o.loopDataSize = parseSize(v, k)),
  'dm.loopmetadatasize': (o, v, k) => (o.loopMetadataSize = parseSize(v, k)),
  'dm.blocksize': (o, v, k) => (o.blockSize = parseSize(v, k)),
};

export const OPTION_NAMES = Object.keys(SETTERS);

function apply(o: LayerOptions, opt: string, where: string): void {
  const eq = opt.indexOf('=');
  if (eq < 0) throw new ThinError('EINVAL_ARG', `storage option '${opt}' (${where}) is not of the form dm.key=value`);
  const key = opt.slice(0, eq).trim().toLowerCase();
  const set = SETTERS[key];
  if (!set) throw new ThinError('EINVAL_ARG', `unknown storage option '${key}' (${where}); known: ${OPTION_NAMES.join(', ')}`);
  set(o, opt.slice(eq + 1).trim(), key);
}

function fileOptions(pool: string): string[] {
  const file = path.join(pool, CONF_FILE);
  if (!fs.existsSync(file)) return [];
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new ThinError('EINVAL_ARG', `${file} is not valid JSON (${(e as Error).message}); fix it or remove it`);
  }
  const opts = (raw as { 'storage-opts'?: unknown })['storage-opts'] ?? [];
  if (!Array.isArray(opts) || opts.some((x) => typeof x !== 'string')) {
    throw new ThinError('EINVAL_ARG', `${file}: "storage-opts" must be a list of "dm.key=value" strings`);
  }
  return opts as string[];
}

/** Defaults, then POOL/layers.conf, then the command line's --storage-opt values. */
export function loadOptions(pool: string, cli: string[] = []): LayerOptions {
  const o = defaultOptions();
  for (const opt of fileOptions(pool)) apply(o, opt, path.join(pool, CONF_FILE));
  for (const opt of cli) apply(o, opt, '--storage-opt');
  return o;
}
