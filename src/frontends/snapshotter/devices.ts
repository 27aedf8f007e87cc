import { callOp } from '../cli/session.js';
import { attachLoop } from '../system/loop.js';
import { detach, layerFile } from '../layers/serving.js';
import type { LayerStore } from '../layers/store.js';
import { loopTable, mountsOf } from '../layers/system.js';
import { precondition } from './errors.js';

// What a snapshot's device needs besides the layer store's create and
// remove: a loop device kept attached (the layer is "held", see
// store-file.ts) for containerd to mount, let go on commit and remove, and
// the device's exclusive bytes for Usage.

function loopOf(store: LayerStore, id: string, mountpoint: string): string | undefined {
  const file = layerFile(id, mountpoint);
  return loopTable().find((l) => l.file === file)?.dev;
}

/** The layer's loop device, attached now if it has none (after a reboot, say). */
export async function holdLoop(store: LayerStore, id: string): Promise<string> {
  const mountpoint = await store.ensureServed();
  const rec = store.layer(id);
  const dev = loopOf(store, id, mountpoint) ?? attachLoop(layerFile(id, mountpoint));
  if (!rec.held) {
    rec.held = true;
    store.save();
  }
  return dev;
}

/** Detaches the layer's loop device; refuses while something is mounted from it. */
export async function releaseLoop(store: LayerStore, id: string, what: string): Promise<void> {
  const rec = store.layer(id);
  const mountpoint = await store.ensureServed();
  const dev = loopOf(store, id, mountpoint);
  if (dev) {
    const at = mountsOf(dev);
    if (at.length > 0) throw precondition(`${what}: its device ${dev} is still mounted at ${at.join(', ')}; unmount it first`);
    await detach(store, [id]);
  }
  if (rec.held) {
    delete rec.held;
    store.save();
  }
}

/** Bytes of data only this device maps (its own writes since the snapshot). */
export async function exclusiveBytes(store: LayerStore, id: string): Promise<number> {
  const rows = await callOp(store.pool, 'ls', {});
  return rows.find((r) => r.name === store.layer(id).device)?.exclusiveBytes ?? 0;
}
