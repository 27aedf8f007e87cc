import path from 'node:path';
import { ThinError } from '../../base/errors.js';
import { attachLoop, detachLoop } from '../system/loop.js';
import { finishDeferred } from './removal.js';
import { defaultDir, detach, ensureServed, layerFile, removeMountDir, waitClosed } from './serving.js';
import type { StoreState } from './store-state.js';
import { isMounted, loopTable, mountDev, umountDir } from './system.js';

// Mounting layers with counts: a second mount at the same directory only
// counts up, the last unmount detaches the loop device and finishes a
// removal that was deferred while the layer was mounted (removal.ts).

/** Attaches (if needed) and mounts; a second mount at the same dir only counts up. */
export async function mount(st: StoreState, id: string, dirArg: string | undefined, temp = false): Promise<string> {
  const rec = st.layer(id);
  const dir = path.resolve(dirArg ?? defaultDir(st, id));
  const m = rec.mounts.find((x) => x.dir === dir);
  if (m) {
    m.count++;
    st.save();
    return dir;
  }
  if (isMounted(dir)) throw new ThinError('DEV_BUSY', `${dir} already has a filesystem mounted on it; unmount it or pick another directory`);
  const file = layerFile(id, await ensureServed(st));
  const had = loopTable().find((l) => l.file === file)?.dev;
  const dev = had ?? attachLoop(file);
  try {
    mountDev(st.data.fs ?? 'xfs', dev, dir, st.opts.mountOpts);
  } catch (e) {
    if (!had) {
      detachLoop(dev);
      await waitClosed(st, [id]);
    }
    throw e;
  }
  rec.mounts.push({ dir, count: 1, temp });
  st.save();
  return dir;
}

/** Counts down one mount (DIR, or the layer's only one); the last unmounts, detaches, and finishes a deferred removal. */
export async function unmount(st: StoreState, id: string, dirArg?: string, force = false): Promise<void> {
  const rec = st.layer(id);
  const dir = dirArg === undefined ? undefined : path.resolve(dirArg);
  const m = dir ? rec.mounts.find((x) => x.dir === dir) : rec.mounts.length === 1 ? rec.mounts[0] : undefined;
  if (!m) {
    if (rec.mounts.length === 0) throw new ThinError('EINVAL_ARG', `layer '${id}' is not mounted`);
    throw new ThinError('EINVAL_ARG', `layer '${id}' is mounted at ${rec.mounts.map((x) => x.dir).join(', ')}${dir ? `, not at ${dir}` : ''}; name the directory`);
  }
  m.count = force ? 0 : m.count - 1;
  if (m.count > 0) {
    st.save();
    return;
  }
  umountDir(m.dir);
  removeMountDir(st, m.dir);
  rec.mounts = rec.mounts.filter((x) => x !== m);
  if (rec.mounts.length === 0) await detach(st, [id]);
  st.save();
  if (rec.state === 'deferred' && rec.mounts.length === 0) await finishDeferred(st, rec);
}

/** Runs fn with the layer mounted (its existing mount, or a temporary one at POOL/mnt/<id>). */
export async function withMounted<T>(st: StoreState, id: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const rec = st.layer(id);
  const user = rec.mounts.find((m) => !m.temp);
  if (user) return fn(user.dir);
  const dir = await mount(st, id, undefined, true);
  let ok = false;
  try {
    const r = await fn(dir);
    ok = true;
    return r;
  } finally {
    if (ok || st.data.layers[id]?.mounts.some((m) => m.dir === dir)) await unmount(st, id, dir, true);
  }
}
