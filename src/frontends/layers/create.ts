import fs from 'node:fs';
import path from 'node:path';
import { ThinError } from '../../base/errors.js';
import { formatBytes } from '../../base/size.js';
import { checkName } from '../../pool/registry.js';
import { callOp } from '../cli/session.js';
import { fsfreeze } from '../system/loop.js';
import { failpoint } from './failpoints.js';
import { withMounted } from './mounts.js';
import { withLoop } from './serving.js';
import { BASE_ID, deviceName, type LayerKind, type LayerRecord } from './store-file.js';
import type { StoreState } from './store-state.js';
import { defaultFs, growFs, mkfs } from './system.js';

// Making devices: the base device (mkfs once, grown when dm.basesize is
// raised) and layers as snapshots of it, each under a create intent that
// reconcile.ts rolls back after a crash. images.ts builds images and
// containers from the same pieces (checkNewId, newRecord, snapshotInto).

const now = () => new Date().toISOString();

/** Refuses a new layer while free data or metadata space is under dm.min_free_space. */
export async function checkSpace(st: StoreState): Promise<void> {
  const pct = st.opts.minFreeSpace;
  if (pct === 0) return;
  const s = await callOp(st.pool, 'info', {});
  const free = (u: { used: number; total: number }) => ((u.total - u.used) * 100) / u.total;
  if (free(s.data) < pct) {
    throw new ThinError('NO_DATA_SPACE', `pool ${st.pool} has ${free(s.data).toFixed(1)}% data space free, under dm.min_free_space=${pct}%; grow it (thinfuse resize ${st.pool} --data-size SIZE) or remove images and containers`);
  }
  if (free(s.metadata) < pct) {
    throw new ThinError('NO_METADATA_SPACE', `pool ${st.pool} has ${free(s.metadata).toFixed(1)}% metadata space free, under dm.min_free_space=${pct}%; grow it (thinfuse resize ${st.pool} --metadata-size SIZE)`);
  }
}

export function checkNewId(st: StoreState, id: string): void {
  checkName(id);
  if (id === BASE_ID) throw new ThinError('EINVAL_ARG', `'${BASE_ID}' is the base device's id; pick another layer id`);
  if (st.data.layers[id]) throw new ThinError('DEV_EXISTS', `a layer '${id}' already exists; pick another id`);
}

export function newRecord(st: StoreState, id: string, parent: string | null, kind: LayerKind): LayerRecord {
  const rec: LayerRecord = { id, device: deviceName(id), devId: null, size: 0, parent, kind, state: 'creating', mounts: [], created: now() };
  st.data.layers[id] = rec;
  return rec;
}

/** create_snap of the parent (the base when null): freezes a mounted parent around it, as Docker suspended it. */
export async function snapshotInto(st: StoreState, rec: LayerRecord): Promise<void> {
  const parent = st.layer(rec.parent ?? BASE_ID);
  const frozen = parent.mounts[0]?.dir;
  if (frozen) fsfreeze(frozen, true);
  try {
    const d = await callOp(st.pool, 'layerSnapshot', { origin: parent.device, name: rec.device });
    rec.devId = d.devId;
    rec.size = d.size;
  } finally {
    if (frozen) fsfreeze(frozen, false);
  }
}

/** Makes the base device once (dm.basesize, dm.fs, dm.mkfsarg); grows it when dm.basesize was raised. */
export async function initBase(st: StoreState): Promise<LayerRecord> {
  const have = st.data.layers[BASE_ID];
  if (have) {
    await growBase(st, have);
    return have;
  }
  await checkSpace(st);
  const kind = st.opts.fs ?? defaultFs();
  const rec = newRecord(st, BASE_ID, null, 'base');
  st.data.intent = { op: 'create', layers: [BASE_ID] };
  st.save();
  failpoint('create.intent');
  const d = await callOp(st.pool, 'layerCreate', { name: rec.device, size: st.opts.baseSize });
  rec.devId = d.devId;
  rec.size = d.size;
  failpoint('create.device');
  await withLoop(st, BASE_ID, (dev) => mkfs(kind, dev, st.opts.mkfsArgs));
  st.data.fs = kind;
  if (kind === 'ext4') await withMounted(st, BASE_ID, async (dir) => fs.rmSync(path.join(dir, 'lost+found'), { recursive: true, force: true }));
  rec.state = 'ready';
  st.data.intent = null;
  st.save();
  return rec;
}

async function growBase(st: StoreState, base: LayerRecord): Promise<void> {
  if (st.opts.fs && st.data.fs && st.opts.fs !== st.data.fs) {
    process.stderr.write(`thinfuse: warning: dm.fs=${st.opts.fs} ignored: the base device already has ${st.data.fs}\n`);
  }
  if (!st.opts.baseSizeGiven || st.opts.baseSize === base.size) return;
  if (st.opts.baseSize < base.size) {
    throw new ThinError('EINVAL_ARG', `dm.basesize=${formatBytes(st.opts.baseSize)} is smaller than the base device (${formatBytes(base.size)}); it can only grow`);
  }
  await callOp(st.pool, 'resizeDevice', { name: base.device, size: st.opts.baseSize });
  if (st.data.fs === 'xfs') await withMounted(st, BASE_ID, async (dir) => growFs('xfs', '', dir));
  else {
    await withLoop(st, BASE_ID, (dev) => growFs('ext4', dev, undefined));
    await withMounted(st, BASE_ID, async (dir) => fs.rmSync(path.join(dir, 'lost+found'), { recursive: true, force: true }));
  }
  base.size = st.opts.baseSize;
  st.save();
}

export async function createLayer(st: StoreState, id: string, parent: string | null, kind: LayerKind = 'layer'): Promise<LayerRecord> {
  checkNewId(st, id);
  if (parent !== null) st.readyLayer(parent);
  else await initBase(st);
  await checkSpace(st);
  const rec = newRecord(st, id, parent, kind);
  st.data.intent = { op: 'create', layers: [id] };
  st.save();
  failpoint('create.intent');
  await snapshotInto(st, rec);
  failpoint('create.device');
  rec.state = 'ready';
  st.data.intent = null;
  st.save();
  return rec;
}
