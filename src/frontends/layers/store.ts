import fs from 'node:fs';
import path from 'node:path';
import { ThinError } from '../../base/errors.js';
import { Pool } from '../../pool/pool.js';
import { defaultConfig } from '../../pool/config.js';
import { checkBlockSize, checkDataSize, checkMetadataSize } from '../../pool/validate.js';
import { checkNewId, checkSpace, createLayer, initBase, newRecord, snapshotInto } from './create.js';
import { hostSpaceWarning } from './guards.js';
import { mount, unmount, withMounted } from './mounts.js';
import type { LayerOptions } from './options.js';
import { reconcile } from './reconcile.js';
import { children, deferredCount, removeLayers, usersOf } from './removal.js';
import { defaultDir, ensureServed, stopIdleDaemon } from './serving.js';
import { type LayerKind, type LayerRecord, lockStore, readStore, type StoreData } from './store-file.js';
import { StoreState } from './store-state.js';

// The layer store: Docker's devicemapper graph driver on a thinfuse pool.
// The base device carries an empty filesystem; every layer is a thin
// snapshot of its parent (or of the base), every container two more (its
// -init layer and its read-write layer). Layer devices are `layer/<id>` in
// the pool's registry and MNT/layer/<id> on the FUSE mount, attached to a
// loop device and mounted while in use. Bookkeeping: store-file.ts.
//
// This class opens and closes the store; the work is in create.ts (base and
// layers), removal.ts (remove, deferred removal), mounts.ts (mount counts),
// serving.ts (the serve, loop devices), reconcile.ts (after a crash), and
// images.ts (images and containers).

export { MNT_DIR } from './serving.js';

export class LayerStore extends StoreState {
  private constructor(pool: string, opts: LayerOptions, data: StoreData, private readonly unlock: () => void) {
    super(pool, opts, data);
  }

  /**
   * Locks the store and reconciles it with the pool (finishing or rolling
   * back what a crash interrupted). With `createPool`, makes the pool first
   * if there is none (dm.loopdatasize, dm.loopmetadatasize, dm.blocksize).
   * With `wait: false`, refuses (POOL_LOCKED) instead of waiting for the lock.
   */
  static async open(pool: string, opts: LayerOptions, o: { createPool?: boolean; wait?: boolean } = {}): Promise<LayerStore> {
    pool = path.resolve(pool);
    if (!fs.existsSync(path.join(pool, 'metadata'))) {
      if (!o.createPool) throw new ThinError('POOL_MISSING', `no pool in ${pool}; create one with thinfuse layer init ${pool} (or thinfuse pool create)`);
      await createPoolFor(pool, opts);
    }
    const unlock = lockStore(pool, o.wait ?? true);
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
      await stopIdleDaemon(this);
    } finally {
      this.unlock();
    }
  }

  /** See reconcile.ts; open runs it, and the CLI again after a failed command left an intent. */
  reconcile(): Promise<void> {
    return reconcile(this);
  }

  /** The FUSE mountpoint serving the pool, starting our own serve if none runs. */
  ensureServed(): Promise<string> {
    return ensureServed(this);
  }

  /** The default mountpoint of a layer: POOL/mnt/<id>. */
  defaultDir(id: string): string {
    return defaultDir(this, id);
  }

  mount(id: string, dirArg: string | undefined, temp = false): Promise<string> {
    return mount(this, id, dirArg, temp);
  }

  unmount(id: string, dirArg?: string, force = false): Promise<void> {
    return unmount(this, id, dirArg, force);
  }

  withMounted<T>(id: string, fn: (dir: string) => Promise<T>): Promise<T> {
    return withMounted(this, id, fn);
  }

  checkSpace(): Promise<void> {
    return checkSpace(this);
  }

  checkNewId(id: string): void {
    checkNewId(this, id);
  }

  newRecord(id: string, parent: string | null, kind: LayerKind): LayerRecord {
    return newRecord(this, id, parent, kind);
  }

  snapshotInto(rec: LayerRecord): Promise<void> {
    return snapshotInto(this, rec);
  }

  /** Makes the base device once (dm.basesize, dm.fs, dm.mkfsarg); grows it when dm.basesize was raised. */
  init(): Promise<LayerRecord> {
    return initBase(this);
  }

  /** The base, made now if there is none yet. */
  base(): Promise<LayerRecord> {
    return initBase(this);
  }

  createLayer(id: string, parent: string | null, kind: LayerKind = 'layer'): Promise<LayerRecord> {
    return createLayer(this, id, parent, kind);
  }

  children(id: string): LayerRecord[] {
    return children(this, id);
  }

  usersOf(id: string, except: Set<string> = new Set()): string[] {
    return usersOf(this, id, except);
  }

  removeLayers(ids: string[], o: { image?: string; container?: string } = {}): Promise<{ removed: string[]; deferred: string[] }> {
    return removeLayers(this, ids, o);
  }

  deferredCount(): number {
    return deferredCount(this);
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
