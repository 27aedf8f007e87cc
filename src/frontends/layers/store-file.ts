import fs from 'node:fs';
import path from 'node:path';
import { ThinError } from '../../base/errors.js';
import { native } from '../../io/native.js';
import { writeFileAtomic } from '../../io/pool-files.js';
import type { FsType } from './options.js';

// The layer store's bookkeeping, POOL/layers.json (JSON, replaced atomically
// by writeFileAtomic: temp file, fsync, rename, fsync of the directory):
//
//   { "version": 1,
//     "fs": "xfs" | "ext4" | null,          the base's filesystem, once made
//     "layers": { ID: Layer },              every layer, the base as "base"
//     "images": { NAME: Image },
//     "containers": { NAME: Container },
//     "intent": Intent | null,              the operation under way
//     "daemon": { pid, mountpoint } | null  a serve this store started itself }
//
//   Layer = { id, device: "layer/ID", devId (null until made), size, parent (layer id, null for the
//             base), kind: base|layer|init|container, state, mounts: [{dir, count, temp}], diffId?, created,
//             held? (true while the containerd snapshotter keeps it on a loop device for containerd to mount) }
//   state: creating (device may or may not exist yet) | ready | deleting | deferred (removed while
//          mounted; deleted on the last unmount)
//   Image = { name, top, layers: [ids bottom first], config, created }
//   Container = { name, image, init, rw, state: creating|ready|deferred, created }
//   Intent = { op: "create" | "remove", layers: [ids], image?, container? }
//
// Protocol: before an operation changes the pool it writes its intent and
// its new records (state creating) or marks the layers it deletes
// (deleting); after the last pool change it writes the outcome and clears
// the intent in one replacement. On open (LayerStore.reconcile) an intent
// left by a crash is rolled back (create: its layers' devices deleted, its
// records dropped) or finished (remove), and the pool's layer/* devices are
// matched against the records: a device without a record is deleted.
//
// The store is serialised between processes by flock(2) on POOL/layers.lock,
// held for a whole command.

export const STORE_FILE = 'layers.json';
export const STORE_LOCK = 'layers.lock';

export type LayerKind = 'base' | 'layer' | 'init' | 'container';
export type LayerState = 'creating' | 'ready' | 'deleting' | 'deferred';

export interface MountRecord {
  dir: string;
  count: number;
  /** Made by an operation for its own use (apply, init files, diff); never survives it. */
  temp: boolean;
}

export interface LayerRecord {
  id: string;
  device: string;
  devId: number | null;
  size: number;
  parent: string | null;
  kind: LayerKind;
  state: LayerState;
  mounts: MountRecord[];
  diffId?: string;
  created: string;
  /** Kept on a loop device for an outside user (the containerd snapshotter) between commands; reconcile leaves its loop and mounts alone. */
  held?: boolean;
}

export interface ImageRecord {
  name: string;
  top: string;
  layers: string[];
  config: unknown;
  created: string;
}

export interface ContainerRecord {
  name: string;
  image: string;
  init: string;
  rw: string;
  state: 'creating' | 'ready' | 'deferred';
  created: string;
}

export interface Intent {
  op: 'create' | 'remove';
  layers: string[];
  image?: string;
  container?: string;
}

export interface StoreData {
  version: 1;
  fs: FsType | null;
  layers: Record<string, LayerRecord>;
  images: Record<string, ImageRecord>;
  containers: Record<string, ContainerRecord>;
  intent: Intent | null;
  daemon: { pid: number; mountpoint: string } | null;
}

export const BASE_ID = 'base';

export function deviceName(id: string): string {
  return `layer/${id}`;
}

export function emptyStore(): StoreData {
  return { version: 1, fs: null, layers: {}, images: {}, containers: {}, intent: null, daemon: null };
}

export function readStore(pool: string): StoreData {
  const file = path.join(pool, STORE_FILE);
  if (!fs.existsSync(file)) return emptyStore();
  try {
    return { ...emptyStore(), ...(JSON.parse(fs.readFileSync(file, 'utf8')) as StoreData) };
  } catch (e) {
    throw new ThinError('EINVAL_ARG', `${file} is not valid JSON (${(e as Error).message}); restore it from a backup (the layers' devices are still in the pool: thinfuse ls)`);
  }
}

export function writeStore(pool: string, data: StoreData): void {
  writeFileAtomic(path.join(pool, STORE_FILE), JSON.stringify(data, null, 2) + '\n');
}

/** Takes POOL/layers.lock, waiting for another command that holds it (or, with wait false, refusing). */
export function lockStore(pool: string, wait = true): () => void {
  const file = path.join(pool, STORE_LOCK);
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
  let taken: boolean;
  try {
    taken = native.flock(fd, true, !wait);
  } catch (e) {
    fs.closeSync(fd);
    throw new ThinError('IO_ERROR', `cannot lock ${file}: ${(e as Error).message}`);
  }
  if (!taken) {
    fs.closeSync(fd);
    throw new ThinError('POOL_LOCKED', `the layer store of ${pool} is in use (a thinfuse snapshotter, or a layer command); stop it or wait for it`);
  }
  return () => fs.closeSync(fd);
}
