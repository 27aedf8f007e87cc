import { isThinError, ThinError } from '../../base/errors.js';
import { callOp } from '../cli/session.js';
import { mounts } from '../system/loop.js';
import { servedBy } from './daemon.js';
import { failpoint } from './failpoints.js';
import { deviceName, type ContainerRecord, type Intent, type LayerRecord } from './store-file.js';
import type { StoreState } from './store-state.js';
import { detach, layerFile, removeMountDir } from './serving.js';
import { loopTable, umountDir } from './system.js';

// Removing layers: who still uses a layer, the remove intent, deleting the
// devices (now, or on the last unmount when deferred) and settling the
// image or container record that goes with them. reconcile.ts finishes an
// interrupted removal with the same finishRemove.

export function children(st: StoreState, id: string): LayerRecord[] {
  return Object.values(st.data.layers).filter((l) => l.parent === id);
}

/** What keeps a layer from being removed on its own: children, images, containers. */
export function usersOf(st: StoreState, id: string, except: Set<string> = new Set()): string[] {
  const users: string[] = [];
  for (const c of children(st, id)) if (!except.has(c.id)) users.push(`layer ${c.id}`);
  for (const i of Object.values(st.data.images)) if (i.layers.includes(id) && !except.has(`image:${i.name}`)) users.push(`image ${i.name}`);
  for (const c of Object.values(st.data.containers)) if ((c.init === id || c.rw === id) && !except.has(`container:${c.name}`)) users.push(`container ${c.name}`);
  return users;
}

/**
 * Removes layers (children before parents): unmounted ones now, mounted
 * ones when their last mount goes (deferred removal), or refuses when
 * deferral is off. The image or container record goes with them.
 */
export async function removeLayers(st: StoreState, ids: string[], o: { image?: string; container?: string } = {}): Promise<{ removed: string[]; deferred: string[] }> {
  const recs = ids.map((id) => st.layer(id));
  const mounted = recs.filter((l) => l.mounts.length > 0);
  const deferOk = st.opts.deferredRemoval || st.opts.deferredDeletion;
  if (mounted.length > 0 && !deferOk) {
    const l = mounted[0]!;
    throw new ThinError('DEV_BUSY', `layer '${l.id}' is mounted at ${l.mounts.map((m) => m.dir).join(', ')}; unmount it first (or enable dm.use_deferred_removal)`);
  }
  for (const l of mounted) l.state = 'deferred';
  const now = recs.filter((l) => l.mounts.length === 0);
  for (const l of now) l.state = 'deleting';
  const intent: Intent = { op: 'remove', layers: now.map((l) => l.id) };
  if (o.image) intent.image = o.image;
  if (o.container) intent.container = o.container;
  st.data.intent = intent;
  st.save();
  failpoint('remove.intent');
  await finishRemove(st);
  return { removed: now.map((l) => l.id), deferred: mounted.map((l) => l.id) };
}

/** Carries out a remove intent (also after a crash): devices, records, then the image/container record. */
export async function finishRemove(st: StoreState): Promise<void> {
  const intent = st.data.intent!;
  for (const id of intent.layers) {
    await deleteDevice(st, id);
    failpoint('remove.device-deleted');
    delete st.data.layers[id];
  }
  failpoint('remove.record');
  if (intent.image) delete st.data.images[intent.image];
  if (intent.container) settleContainer(st, intent.container);
  st.data.intent = null;
  st.save();
}

/** A removed container's record goes once none of its layers is left (deferred ones may linger). */
export function settleContainer(st: StoreState, name: string): void {
  const c: ContainerRecord | undefined = st.data.containers[name];
  if (!c) return;
  if (st.data.layers[c.rw] || st.data.layers[c.init]) c.state = 'deferred';
  else delete st.data.containers[name];
}

export async function finishDeferred(st: StoreState, rec: LayerRecord): Promise<void> {
  const c = Object.values(st.data.containers).find((x) => x.state === 'deferred' && (x.rw === rec.id || x.init === rec.id));
  await removeLayers(st, [rec.id], c ? { container: c.name } : {});
}

export function deferredCount(st: StoreState): number {
  return Object.values(st.data.layers).filter((l) => l.state === 'deferred').length;
}

/** Deletes a layer's device (if it exists), after clearing any mount and loop device left over it. */
export async function deleteDevice(st: StoreState, id: string): Promise<void> {
  const served = st.served ?? (await servedBy(st.pool));
  if (served) {
    const file = layerFile(id, served.mountpoint);
    const loops = loopTable().filter((l) => l.file === file).map((l) => l.dev);
    for (const m of mounts().filter((x) => loops.includes(x.source))) {
      umountDir(m.mountpoint);
      removeMountDir(st, m.mountpoint);
    }
    if (loops.length > 0) {
      st.served = served;
      await detach(st, [id]);
    }
  }
  failpoint('remove.unmounted');
  try {
    if (st.opts.blkdiscard) await callOp(st.pool, 'discard', { name: deviceName(id), offset: 0 });
    await callOp(st.pool, 'remove', { name: deviceName(id) });
  } catch (e) {
    if (!isThinError(e, 'DEV_MISSING')) throw e;
  }
}
