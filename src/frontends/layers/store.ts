import fs from 'node:fs';
import path from 'node:path';
import { isThinError, ThinError } from '../../base/errors.js';
import { formatBytes } from '../../base/size.js';
import { Pool } from '../../pool/pool.js';
import { checkName } from '../../pool/registry.js';
import { defaultConfig } from '../../pool/config.js';
import { checkBlockSize, checkDataSize, checkMetadataSize } from '../../pool/validate.js';
import { callOp } from '../cli/session.js';
import { attachLoop, detachLoop, fsfreeze, mounts } from '../system/loop.js';
import { processAlive } from '../system/process.js';
import { type Served, servedBy, startDaemon, stopDaemon } from './daemon.js';
import { failpoint } from './failpoints.js';
import type { LayerOptions } from './options.js';
import { hostSpaceWarning } from './guards.js';
import {
  BASE_ID, type ContainerRecord, deviceName, type Intent, type LayerKind, type LayerRecord, lockStore, readStore, type StoreData, writeStore,
} from './store-file.js';
import { defaultFs, growFs, isMounted, loopTable, mkfs, mountDev, umountDir } from './system.js';

// The layer store: Docker's devicemapper graph driver on a thinfuse pool.
// The base device carries an empty filesystem; every layer is a thin
// snapshot of its parent (or of the base), every container two more (its
// -init layer and its read-write layer). Layer devices are `layer/<id>` in
// the pool's registry and MNT/layer/<id> on the FUSE mount, attached to a
// loop device and mounted while in use. Bookkeeping: store-file.ts.

export const MNT_DIR = 'mnt';

const now = () => new Date().toISOString();

export class LayerStore {
  private served: Served | undefined;

  private constructor(readonly pool: string, readonly opts: LayerOptions, readonly data: StoreData, private readonly unlock: () => void) {}

  /**
   * Locks the store and reconciles it with the pool (finishing or rolling
   * back what a crash interrupted). With `createPool`, makes the pool first
   * if there is none (dm.loopdatasize, dm.loopmetadatasize, dm.blocksize).
   */
  static async open(pool: string, opts: LayerOptions, o: { createPool?: boolean } = {}): Promise<LayerStore> {
    pool = path.resolve(pool);
    if (!fs.existsSync(path.join(pool, 'metadata'))) {
      if (!o.createPool) throw new ThinError('POOL_MISSING', `no pool in ${pool}; create one with thinfuse layer init ${pool} (or thinfuse pool create)`);
      await createPoolFor(pool, opts);
    }
    const unlock = lockStore(pool);
    const store = new LayerStore(pool, opts, readStore(pool), unlock);
    try {
      await store.reconcile();
    } catch (e) {
      unlock();
      throw e;
    }
    return store;
  }

  /** Stops the daemon this store started if nothing is mounted, and unlocks. */
  async close(): Promise<void> {
    try {
      await this.stopIdleDaemon();
    } finally {
      this.unlock();
    }
  }

  save(): void {
    writeStore(this.pool, this.data);
  }

  layer(id: string): LayerRecord {
    const l = this.data.layers[id];
    if (!l) throw new ThinError('DEV_MISSING', `no layer '${id}' in ${this.pool}; see thinfuse layer ls ${this.pool}`);
    return l;
  }

  readyLayer(id: string): LayerRecord {
    const l = this.layer(id);
    if (l.state !== 'ready') throw new ThinError('DEV_BUSY', `layer '${id}' is ${l.state === 'deferred' ? 'being removed (deferred until it is unmounted)' : l.state}; wait for it or see thinfuse layer ls`);
    return l;
  }

  mountedLayers(): LayerRecord[] {
    return Object.values(this.data.layers).filter((l) => l.mounts.length > 0);
  }

  //----------------------------------------------------------------------------
  // the daemon

  /** The FUSE mountpoint serving the pool, starting our own serve if none runs. */
  async ensureServed(): Promise<string> {
    if (this.served) return this.served.mountpoint;
    this.served = await servedBy(this.pool);
    if (!this.served) {
      this.served = startDaemon(this.pool);
      this.data.daemon = { pid: this.served.pid, mountpoint: this.served.mountpoint };
      this.save();
    }
    return this.served.mountpoint;
  }

  private async stopIdleDaemon(): Promise<void> {
    const d = this.data.daemon;
    if (!d || this.mountedLayers().length > 0) return;
    const s = await servedBy(this.pool);
    // Only the very serve we started: never one started by hand since.
    if (s && s.pid === d.pid) await stopDaemon(s);
    this.data.daemon = null;
    this.served = undefined;
    this.save();
  }

  private fileOf(id: string, mountpoint: string): string {
    return path.join(mountpoint, 'layer', id);
  }

  /** Waits until the daemon has seen these layer files closed (losetup -d returns before FUSE's release). */
  private async waitClosed(ids: string[]): Promise<void> {
    if (!this.served || ids.length === 0) return;
    const names = ids.map(deviceName);
    const end = Date.now() + 10_000;
    while (Date.now() < end) {
      const info = await callOp(this.pool, 'info', {});
      if (!names.some((n) => info.openDevices.includes(n))) return;
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  //----------------------------------------------------------------------------
  // mounts

  /** The default mountpoint of a layer: POOL/mnt/<id>. */
  defaultDir(id: string): string {
    return path.join(this.pool, MNT_DIR, id);
  }

  /** Attaches (if needed) and mounts; a second mount at the same dir only counts up. */
  async mount(id: string, dirArg: string | undefined, temp = false): Promise<string> {
    const rec = this.layer(id);
    const dir = path.resolve(dirArg ?? this.defaultDir(id));
    const m = rec.mounts.find((x) => x.dir === dir);
    if (m) {
      m.count++;
      this.save();
      return dir;
    }
    if (isMounted(dir)) throw new ThinError('DEV_BUSY', `${dir} already has a filesystem mounted on it; unmount it or pick another directory`);
    const file = this.fileOf(id, await this.ensureServed());
    const had = loopTable().find((l) => l.file === file)?.dev;
    const dev = had ?? attachLoop(file);
    try {
      mountDev(this.data.fs ?? 'xfs', dev, dir, this.opts.mountOpts);
    } catch (e) {
      if (!had) {
        detachLoop(dev);
        await this.waitClosed([id]);
      }
      throw e;
    }
    rec.mounts.push({ dir, count: 1, temp });
    this.save();
    return dir;
  }

  /** Counts down one mount (DIR, or the layer's only one); the last unmounts, detaches, and finishes a deferred removal. */
  async unmount(id: string, dirArg?: string, force = false): Promise<void> {
    const rec = this.layer(id);
    const dir = dirArg === undefined ? undefined : path.resolve(dirArg);
    const m = dir ? rec.mounts.find((x) => x.dir === dir) : rec.mounts.length === 1 ? rec.mounts[0] : undefined;
    if (!m) {
      if (rec.mounts.length === 0) throw new ThinError('EINVAL_ARG', `layer '${id}' is not mounted`);
      throw new ThinError('EINVAL_ARG', `layer '${id}' is mounted at ${rec.mounts.map((x) => x.dir).join(', ')}${dir ? `, not at ${dir}` : ''}; name the directory`);
    }
    m.count = force ? 0 : m.count - 1;
    if (m.count > 0) {
      this.save();
      return;
    }
    umountDir(m.dir);
    this.removeMountDir(m.dir);
    rec.mounts = rec.mounts.filter((x) => x !== m);
    if (rec.mounts.length === 0) await this.detach([id]);
    this.save();
    if (rec.state === 'deferred' && rec.mounts.length === 0) await this.finishDeferred(rec);
  }

  /** Only the directories we make under POOL/mnt go away with their mount (Docker rmdirs too). */
  private removeMountDir(dir: string): void {
    if (path.dirname(dir) !== path.join(this.pool, MNT_DIR)) return;
    try {
      fs.rmdirSync(dir);
    } catch {
      // not empty or already gone: leave it
    }
  }

  /** Detaches every loop device over these layers' files. */
  private async detach(ids: string[]): Promise<void> {
    const mountpoint = this.served?.mountpoint ?? (await servedBy(this.pool))?.mountpoint;
    if (!mountpoint) return;
    const files = new Map(ids.map((id) => [this.fileOf(id, mountpoint), id]));
    const done: string[] = [];
    for (const l of loopTable()) {
      const id = files.get(l.file);
      if (id === undefined) continue;
      detachLoop(l.dev);
      done.push(id);
    }
    await this.waitClosed(done);
  }

  /** Runs fn with the layer mounted (its existing mount, or a temporary one at POOL/mnt/<id>). */
  async withMounted<T>(id: string, fn: (dir: string) => Promise<T>): Promise<T> {
    const rec = this.layer(id);
    const user = rec.mounts.find((m) => !m.temp);
    if (user) return fn(user.dir);
    const dir = await this.mount(id, undefined, true);
    let ok = false;
    try {
      const r = await fn(dir);
      ok = true;
      return r;
    } finally {
      if (ok || this.data.layers[id]?.mounts.some((m) => m.dir === dir)) await this.unmount(id, dir, true);
    }
  }

  /** Runs fn with the layer's file on a loop device but not mounted. */
  private async withLoop<T>(id: string, fn: (dev: string) => Promise<T> | T): Promise<T> {
    const dev = attachLoop(this.fileOf(id, await this.ensureServed()));
    try {
      return await fn(dev);
    } finally {
      detachLoop(dev);
      await this.waitClosed([id]);
    }
  }

  //----------------------------------------------------------------------------
  // devices

  /** Refuses a new layer while free data or metadata space is under dm.min_free_space. */
  async checkSpace(): Promise<void> {
    const pct = this.opts.minFreeSpace;
    if (pct === 0) return;
    const s = await callOp(this.pool, 'info', {});
    const free = (u: { used: number; total: number }) => ((u.total - u.used) * 100) / u.total;
    if (free(s.data) < pct) {
      throw new ThinError('NO_DATA_SPACE', `pool ${this.pool} has ${free(s.data).toFixed(1)}% data space free, under dm.min_free_space=${pct}%; grow it (thinfuse resize ${this.pool} --data-size SIZE) or remove images and containers`);
    }
    if (free(s.metadata) < pct) {
      throw new ThinError('NO_METADATA_SPACE', `pool ${this.pool} has ${free(s.metadata).toFixed(1)}% metadata space free, under dm.min_free_space=${pct}%; grow it (thinfuse resize ${this.pool} --metadata-size SIZE)`);
    }
  }

  checkNewId(id: string): void {
    checkName(id);
    if (id === BASE_ID) throw new ThinError('EINVAL_ARG', `'${BASE_ID}' is the base device's id; pick another layer id`);
    if (this.data.layers[id]) throw new ThinError('DEV_EXISTS', `a layer '${id}' already exists; pick another id`);
  }

  newRecord(id: string, parent: string | null, kind: LayerKind): LayerRecord {
    const rec: LayerRecord = { id, device: deviceName(id), devId: null, size: 0, parent, kind, state: 'creating', mounts: [], created: now() };
    this.data.layers[id] = rec;
    return rec;
  }

  /** create_snap of the parent (the base when null): freezes a mounted parent around it, as Docker suspended it. */
  async snapshotInto(rec: LayerRecord): Promise<void> {
    const parent = this.layer(rec.parent ?? BASE_ID);
    const frozen = parent.mounts[0]?.dir;
    if (frozen) fsfreeze(frozen, true);
    try {
      const d = await callOp(this.pool, 'layerSnapshot', { origin: parent.device, name: rec.device });
      rec.devId = d.devId;
      rec.size = d.size;
    } finally {
      if (frozen) fsfreeze(frozen, false);
    }
  }

  /** Deletes a layer's device (if it exists), after clearing any mount and loop device left over it. */
  private async deleteDevice(id: string): Promise<void> {
    const served = this.served ?? (await servedBy(this.pool));
    if (served) {
      const file = this.fileOf(id, served.mountpoint);
      const loops = loopTable().filter((l) => l.file === file).map((l) => l.dev);
      for (const m of mounts().filter((x) => loops.includes(x.source))) {
        umountDir(m.mountpoint);
        this.removeMountDir(m.mountpoint);
      }
      if (loops.length > 0) {
        this.served = served;
        await this.detach([id]);
      }
    }
    failpoint('remove.unmounted');
    try {
      if (this.opts.blkdiscard) await callOp(this.pool, 'discard', { name: deviceName(id), offset: 0 });
      await callOp(this.pool, 'remove', { name: deviceName(id) });
    } catch (e) {
      if (!isThinError(e, 'DEV_MISSING')) throw e;
    }
  }

  //----------------------------------------------------------------------------
  // base device

  /** Makes the base device once (dm.basesize, dm.fs, dm.mkfsarg); grows it when dm.basesize was raised. */
  async init(): Promise<LayerRecord> {
    const have = this.data.layers[BASE_ID];
    if (have) {
      await this.growBase(have);
      return have;
    }
    await this.checkSpace();
    const kind = this.opts.fs ?? defaultFs();
    const rec = this.newRecord(BASE_ID, null, 'base');
    this.data.intent = { op: 'create', layers: [BASE_ID] };
    this.save();
    failpoint('create.intent');
    const d = await callOp(this.pool, 'layerCreate', { name: rec.device, size: this.opts.baseSize });
    rec.devId = d.devId;
    rec.size = d.size;
    failpoint('create.device');
    await this.withLoop(BASE_ID, (dev) => mkfs(kind, dev, this.opts.mkfsArgs));
    this.data.fs = kind;
    if (kind === 'ext4') await this.withMounted(BASE_ID, async (dir) => fs.rmSync(path.join(dir, 'lost+found'), { recursive: true, force: true }));
    rec.state = 'ready';
    this.data.intent = null;
    this.save();
    return rec;
  }

  /** The base, made now if there is none yet. */
  async base(): Promise<LayerRecord> {
    return this.init();
  }

  private async growBase(base: LayerRecord): Promise<void> {
    if (this.opts.fs && this.data.fs && this.opts.fs !== this.data.fs) {
      process.stderr.write(`thinfuse: warning: dm.fs=${this.opts.fs} ignored: the base device already has ${this.data.fs}\n`);
    }
    if (!this.opts.baseSizeGiven || this.opts.baseSize === base.size) return;
    if (this.opts.baseSize < base.size) {
      throw new ThinError('EINVAL_ARG', `dm.basesize=${formatBytes(this.opts.baseSize)} is smaller than the base device (${formatBytes(base.size)}); it can only grow`);
    }
    await callOp(this.pool, 'resizeDevice', { name: base.device, size: this.opts.baseSize });
    if (this.data.fs === 'xfs') await this.withMounted(BASE_ID, async (dir) => growFs('xfs', '', dir));
    else {
      await this.withLoop(BASE_ID, (dev) => growFs('ext4', dev, undefined));
      await this.withMounted(BASE_ID, async (dir) => fs.rmSync(path.join(dir, 'lost+found'), { recursive: true, force: true }));
    }
    base.size = this.opts.baseSize;
    this.save();
  }

  //----------------------------------------------------------------------------
  // layers

  async createLayer(id: string, parent: string | null, kind: LayerKind = 'layer'): Promise<LayerRecord> {
    this.checkNewId(id);
    if (parent !== null) this.readyLayer(parent);
    else await this.base();
    await this.checkSpace();
    const rec = this.newRecord(id, parent, kind);
    this.data.intent = { op: 'create', layers: [id] };
    this.save();
    failpoint('create.intent');
    await this.snapshotInto(rec);
    failpoint('create.device');
    rec.state = 'ready';
    this.data.intent = null;
    this.save();
    return rec;
  }

  children(id: string): LayerRecord[] {
    return Object.values(this.data.layers).filter((l) => l.parent === id);
  }

  /** What keeps a layer from being removed on its own: children, images, containers. */
  usersOf(id: string, except: Set<string> = new Set()): string[] {
    const users: string[] = [];
    for (const c of this.children(id)) if (!except.has(c.id)) users.push(`layer ${c.id}`);
    for (const i of Object.values(this.data.images)) if (i.layers.includes(id) && !except.has(`image:${i.name}`)) users.push(`image ${i.name}`);
    for (const c of Object.values(this.data.containers)) if ((c.init === id || c.rw === id) && !except.has(`container:${c.name}`)) users.push(`container ${c.name}`);
    return users;
  }

  /**
   * Removes layers (children before parents): unmounted ones now, mounted
   * ones when their last mount goes (deferred removal), or refuses when
   * deferral is off. The image or container record goes with them.
   */
  async removeLayers(ids: string[], o: { image?: string; container?: string } = {}): Promise<{ removed: string[]; deferred: string[] }> {
    const recs = ids.map((id) => this.layer(id));
    const mounted = recs.filter((l) => l.mounts.length > 0);
    const deferOk = this.opts.deferredRemoval || this.opts.deferredDeletion;
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
    this.data.intent = intent;
    this.save();
    failpoint('remove.intent');
    await this.finishRemove();
    return { removed: now.map((l) => l.id), deferred: mounted.map((l) => l.id) };
  }

  /** Carries out a remove intent (also after a crash): devices, records, then the image/container record. */
  private async finishRemove(): Promise<void> {
    const intent = this.data.intent!;
    for (const id of intent.layers) {
      await this.deleteDevice(id);
      failpoint('remove.device-deleted');
      delete this.data.layers[id];
    }
    failpoint('remove.record');
    if (intent.image) delete this.data.images[intent.image];
    if (intent.container) this.settleContainer(intent.container);
    this.data.intent = null;
    this.save();
  }

  /** A removed container's record goes once none of its layers is left (deferred ones may linger). */
  private settleContainer(name: string): void {
    const c: ContainerRecord | undefined = this.data.containers[name];
    if (!c) return;
    if (this.data.layers[c.rw] || this.data.layers[c.init]) c.state = 'deferred';
    else delete this.data.containers[name];
  }

  private async finishDeferred(rec: LayerRecord): Promise<void> {
    const c = Object.values(this.data.containers).find((x) => x.state === 'deferred' && (x.rw === rec.id || x.init === rec.id));
    await this.removeLayers([rec.id], c ? { container: c.name } : {});
  }

  deferredCount(): number {
    return Object.values(this.data.layers).filter((l) => l.state === 'deferred').length;
  }

  //----------------------------------------------------------------------------
  // reconcile

  /**
   * Makes the store and the system agree after whatever happened since the
   * last command: a dead auto-started daemon forgotten, leftover mounts and
   * loop devices cleared, an interrupted operation rolled back (create) or
   * finished (remove), orphan devices deleted, deferred removals finished.
   */
  async reconcile(): Promise<void> {
    const d = this.data.daemon;
    if (d && !processAlive(d.pid)) this.data.daemon = null;
    const served = await servedBy(this.pool);
    if (served) {
      this.served = served;
      await this.reconcileMounts(served.mountpoint);
    } else {
      for (const l of Object.values(this.data.layers)) l.mounts = [];
    }
    this.clearTmp();
    const intent = this.data.intent;
    if (intent?.op === 'create') await this.rollBack(intent);
    if (intent?.op === 'remove') await this.finishRemove();
    await this.sweepOrphans();
    for (const l of Object.values(this.data.layers)) {
      if (l.state === 'deferred' && l.mounts.length === 0) await this.finishDeferred(l);
    }
    this.save();
  }

  private clearTmp(): void {
    fs.rmSync(path.join(this.pool, 'tmp'), { recursive: true, force: true });
  }

  /** Keeps the recorded non-temporary mounts that still exist; unmounts and detaches everything else over layer files. */
  private async reconcileMounts(mountpoint: string): Promise<void> {
    const prefix = path.join(mountpoint, 'layer') + '/';
    const loops = loopTable().filter((l) => l.file.startsWith(prefix));
    const table = mounts();
    const loopsOfId = (id: string) => loops.filter((l) => l.file === prefix + id).map((l) => l.dev);
    for (const l of Object.values(this.data.layers)) {
      const mine = loopsOfId(l.id);
      l.mounts = l.mounts.filter((m) => !m.temp && table.some((t) => t.mountpoint === m.dir && mine.includes(t.source)));
    }
    const detached: string[] = [];
    for (const loop of loops) {
      const id = loop.file.slice(prefix.length);
      const want = this.data.layers[id]?.mounts.map((m) => m.dir) ?? [];
      let kept = false;
      for (const t of table.filter((x) => x.source === loop.dev)) {
        if (want.includes(t.mountpoint)) kept = true;
        else {
          umountDir(t.mountpoint);
          this.removeMountDir(t.mountpoint);
        }
      }
      if (!kept) {
        detachLoop(loop.dev);
        detached.push(id);
      }
    }
    await this.waitClosed(detached);
  }

  private async rollBack(intent: Intent): Promise<void> {
    for (const id of [...intent.layers].reverse()) {
      await this.deleteDevice(id);
      delete this.data.layers[id];
    }
    if (intent.image) delete this.data.images[intent.image];
    if (intent.container) delete this.data.containers[intent.container];
    if (intent.layers.includes(BASE_ID)) this.data.fs = null;
    this.data.intent = null;
    this.save();
  }

  /** Devices in the layer namespace without a record, and records a crash left half-way, are deleted. */
  private async sweepOrphans(): Promise<void> {
    const devices = await callOp(this.pool, 'layerDevices', {});
    const have = new Set(devices.map((x) => x.name));
    for (const dev of devices) {
      const id = dev.name.slice('layer/'.length);
      const rec = this.data.layers[id];
      if (!rec) await this.deleteDevice(id);
    }
    for (const l of Object.values(this.data.layers)) {
      if (l.state === 'creating' || l.state === 'deleting') {
        if (have.has(l.device)) await this.deleteDevice(l.id);
        delete this.data.layers[l.id];
      }
    }
    for (const c of Object.values(this.data.containers)) {
      if (c.state === 'creating') delete this.data.containers[c.name];
      else if (c.state === 'deferred') this.settleContainer(c.name);
    }
  }
}

/** `pool create` for the layer store: Docker's loop sizes and block size, and the host-space warning. */
async function createPoolFor(pool: string, o: LayerOptions): Promise<void> {
  checkBlockSize(o.blockSize);
  checkDataSize(o.loopDataSize, o.blockSize);
  checkMetadataSize(o.loopMetadataSize);
  fs.mkdirSync(pool, { recursive: true });
  hostSpaceWarning(pool, o.loopDataSize, o.loopMetadataSize);
  const p = await Pool.create(pool, { dataSize: o.loopDataSize, metadataSize: o.loopMetadataSize, blockSize: o.blockSize, config: defaultConfig() });
  await p.close();
}
