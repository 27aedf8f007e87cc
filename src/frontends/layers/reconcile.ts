import fs from 'node:fs';
import path from 'node:path';
import { callOp } from '../cli/session.js';
import { detachLoop, mounts } from '../system/loop.js';
import { processAlive } from '../system/process.js';
import { servedBy } from './daemon.js';
import { deleteDevice, finishDeferred, finishRemove, settleContainer } from './removal.js';
import { removeMountDir, waitClosed } from './serving.js';
import { BASE_ID, type Intent } from './store-file.js';
import type { StoreState } from './store-state.js';
import { loopTable, umountDir } from './system.js';

// Crash reconciliation, run by LayerStore.open under the store lock: the
// protocol in store-file.ts says what each intent left behind means; this
// undoes a create, finishes a remove, and clears mounts, loop devices and
// devices that no record accounts for.

/**
 * Makes the store and the system agree after whatever happened since the
 * last command: a dead auto-started daemon forgotten, leftover mounts and
 * loop devices cleared, an interrupted operation rolled back (create) or
 * finished (remove), orphan devices deleted, deferred removals finished.
 */
export async function reconcile(st: StoreState): Promise<void> {
  const d = st.data.daemon;
  if (d && !processAlive(d.pid)) st.data.daemon = null;
  const served = await servedBy(st.pool);
  if (served) {
    st.served = served;
    await reconcileMounts(st, served.mountpoint);
  } else {
    // No serve: no loop device can be over a layer file, held or not.
    for (const l of Object.values(st.data.layers)) {
      l.mounts = [];
      delete l.held;
    }
  }
  clearTmp(st);
  const intent = st.data.intent;
  if (intent?.op === 'create') await rollBack(st, intent);
  if (intent?.op === 'remove') await finishRemove(st);
  await sweepOrphans(st);
  for (const l of Object.values(st.data.layers)) {
    if (l.state === 'deferred' && l.mounts.length === 0) await finishDeferred(st, l);
  }
  st.save();
}

function clearTmp(st: StoreState): void {
  fs.rmSync(path.join(st.pool, 'tmp'), { recursive: true, force: true });
}

/** Keeps the recorded non-temporary mounts that still exist; unmounts and detaches everything else over layer files. */
async function reconcileMounts(st: StoreState, mountpoint: string): Promise<void> {
  const prefix = path.join(mountpoint, 'layer') + '/';
  const loops = loopTable().filter((l) => l.file.startsWith(prefix));
  const table = mounts();
  const loopsOfId = (id: string) => loops.filter((l) => l.file === prefix + id).map((l) => l.dev);
  for (const l of Object.values(st.data.layers)) {
    const mine = loopsOfId(l.id);
    l.mounts = l.mounts.filter((m) => !m.temp && table.some((t) => t.mountpoint === m.dir && mine.includes(t.source)));
  }
  const detached: string[] = [];
  for (const loop of loops) {
    const id = loop.file.slice(prefix.length);
    // A held layer's loop and whatever containerd mounted from it are not ours to clear.
    if (st.data.layers[id]?.held) continue;
    const want = st.data.layers[id]?.mounts.map((m) => m.dir) ?? [];
    let kept = false;
    for (const t of table.filter((x) => x.source === loop.dev)) {
      if (want.includes(t.mountpoint)) kept = true;
      else {
        umountDir(t.mountpoint);
        removeMountDir(st, t.mountpoint);
      }
    }
    if (!kept) {
      detachLoop(loop.dev);
      detached.push(id);
    }
  }
  await waitClosed(st, detached);
}

async function rollBack(st: StoreState, intent: Intent): Promise<void> {
  for (const id of [...intent.layers].reverse()) {
    await deleteDevice(st, id);
    delete st.data.layers[id];
  }
  if (intent.image) delete st.data.images[intent.image];
  if (intent.container) delete st.data.containers[intent.container];
  if (intent.layers.includes(BASE_ID)) st.data.fs = null;
  st.data.intent = null;
  st.save();
}

/** Devices in the layer namespace without a record, and records a crash left half-way, are deleted. */
async function sweepOrphans(st: StoreState): Promise<void> {
  const devices = await callOp(st.pool, 'layerDevices', {});
  const have = new Set(devices.map((x) => x.name));
  for (const dev of devices) {
    const id = dev.name.slice('layer/'.length);
    const rec = st.data.layers[id];
    if (!rec) await deleteDevice(st, id);
  }
  for (const l of Object.values(st.data.layers)) {
    if (l.state === 'creating' || l.state === 'deleting') {
      if (have.has(l.device)) await deleteDevice(st, l.id);
      delete st.data.layers[l.id];
    }
  }
  for (const c of Object.values(st.data.containers)) {
    if (c.state === 'creating') delete st.data.containers[c.name];
    else if (c.state === 'deferred') settleContainer(st, c.name);
  }
}
