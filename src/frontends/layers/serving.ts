import fs from 'node:fs';
import path from 'node:path';
import { callOp } from '../cli/session.js';
import { attachLoop, detachLoop } from '../system/loop.js';
import { servedBy, startDaemon, stopDaemon } from './daemon.js';
import { deviceName } from './store-file.js';
import type { StoreState } from './store-state.js';
import { loopTable } from './system.js';

// The serve behind the layer files and what the system hangs on those
// files: the serve this store starts and stops, loop devices over
// MNT/layer/<id>, and the mount directories under POOL/mnt. Calls the
// daemon and the system tools, never the rest of the store.

export const MNT_DIR = 'mnt';

/** The FUSE mountpoint serving the pool, starting our own serve if none runs. */
export async function ensureServed(st: StoreState): Promise<string> {
  if (st.served) return st.served.mountpoint;
  st.served = await servedBy(st.pool);
  if (!st.served) {
    st.served = startDaemon(st.pool);
    st.data.daemon = { pid: st.served.pid, mountpoint: st.served.mountpoint };
    st.save();
  }
  return st.served.mountpoint;
}

export async function stopIdleDaemon(st: StoreState): Promise<void> {
  const d = st.data.daemon;
  if (!d || st.mountedLayers().length > 0 || st.heldLayers().length > 0) return;
  const s = await servedBy(st.pool);
  // Only the very serve we started: never one started by hand since.
  if (s && s.pid === d.pid) await stopDaemon(s);
  st.data.daemon = null;
  st.served = undefined;
  st.save();
}

export function layerFile(id: string, mountpoint: string): string {
  return path.join(mountpoint, 'layer', id);
}

/** Waits until the daemon has seen these layer files closed (losetup -d returns before FUSE's release). */
export async function waitClosed(st: StoreState, ids: string[]): Promise<void> {
  if (!st.served || ids.length === 0) return;
  const names = ids.map(deviceName);
  const end = Date.now() + 10_000;
  while (Date.now() < end) {
    const info = await callOp(st.pool, 'info', {});
    if (!names.some((n) => info.openDevices.includes(n))) return;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Detaches every loop device over these layers' files. */
export async function detach(st: StoreState, ids: string[]): Promise<void> {
  const mountpoint = st.served?.mountpoint ?? (await servedBy(st.pool))?.mountpoint;
  if (!mountpoint) return;
  const files = new Map(ids.map((id) => [layerFile(id, mountpoint), id]));
  const done: string[] = [];
  for (const l of loopTable()) {
    const id = files.get(l.file);
    if (id === undefined) continue;
    detachLoop(l.dev);
    done.push(id);
  }
  await waitClosed(st, done);
}

/** Runs fn with the layer's file on a loop device but not mounted. */
export async function withLoop<T>(st: StoreState, id: string, fn: (dev: string) => Promise<T> | T): Promise<T> {
  const dev = attachLoop(layerFile(id, await ensureServed(st)));
  try {
    return await fn(dev);
  } finally {
    detachLoop(dev);
    await waitClosed(st, [id]);
  }
}

/** The default mountpoint of a layer: POOL/mnt/<id>. */
export function defaultDir(st: StoreState, id: string): string {
  return path.join(st.pool, MNT_DIR, id);
}

/** Only the directories we make under POOL/mnt go away with their mount (Docker rmdirs too). */
export function removeMountDir(st: StoreState, dir: string): void {
  if (path.dirname(dir) !== path.join(st.pool, MNT_DIR)) return;
  try {
    fs.rmdirSync(dir);
  } catch {
    // not empty or already gone: leave it
  }
}
