import { failpoint } from '../layers/failpoints.js';
import { LayerStore } from '../layers/store.js';
import { type SnapshotterConfig, storeOptions } from './config.js';
import { exclusiveBytes, holdLoop, releaseLoop } from './devices.js';
import { alreadyExists, invalid, notFound, precondition } from './errors.js';
import { matcher } from './filters.js';
import { reconcileSnapshots } from './reconcile.js';
import { type SnapKind, type SnapRecord, SnapRecords } from './records.js';

// containerd's Snapshotter interface on the layer store, with the semantics
// of containerd's devmapper snapshotter: every snapshot is a thin snapshot
// (of the base device, or of its committed parent's device), active ones
// and views stay on a loop device that Mounts names, Commit lets the loop
// go and keeps the device under the committed name. Keys live in
// namespaces, which never see each other. One operation at a time: the
// store holds its lock for the life of the server (see server.ts).

export interface MountSpec {
  type: string;
  source: string;
  target: string;
  options: string[];
}

export interface Usage {
  size: number;
  inodes: number;
}

const MAX_LABEL = 4096;
const now = () => new Date().toISOString();

function checkKey(key: string, what = 'key'): void {
  if (typeof key !== 'string' || key === '') throw invalid(`the snapshot ${what} is empty; give one`);
}

function checkLabels(labels: Record<string, string>): void {
  for (const [k, v] of Object.entries(labels)) {
    if (k === '') throw invalid('a label has an empty key');
    if (Buffer.byteLength(k) + Buffer.byteLength(v) > MAX_LABEL) throw invalid(`label '${k.slice(0, 40)}' is over ${MAX_LABEL} bytes with its value`);
  }
}

export class SnapshotService {
  private tail: Promise<unknown> = Promise.resolve();

  private constructor(readonly store: LayerStore, readonly records: SnapRecords) {}

  /** Opens (or creates) the pool's layer store, makes the base device once, and reconciles the records with it. */
  static async open(pool: string, config: SnapshotterConfig): Promise<SnapshotService> {
    const store = await LayerStore.open(pool, storeOptions(pool, config), { createPool: true, wait: false });
    try {
      await store.base();
      const records = SnapRecords.load(store.pool);
      await reconcileSnapshots(store, records);
      return new SnapshotService(store, records);
    } catch (e) {
      await store.close().catch(() => undefined);
      throw e;
    }
  }

  async close(): Promise<void> {
    await this.serial(() => this.store.close());
  }

  /** Runs fn after every earlier operation; after a failure, undoes what it left half-made. */
  serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn).catch(async (e: unknown) => {
      if (this.store.data.intent) await this.store.reconcile().catch(() => undefined);
      await reconcileSnapshots(this.store, this.records).catch(() => undefined);
      throw e;
    });
    this.tail = run.catch(() => undefined);
    return run;
  }

  private find(ns: string, key: string): SnapRecord {
    checkKey(key);
    const r = this.records.get(ns, key);
    if (!r || r.state !== 'ready') throw notFound(`snapshot ${JSON.stringify(key)} does not exist in namespace ${JSON.stringify(ns)}`);
    return r;
  }

  private mountsOf(r: SnapRecord, dev: string): MountSpec[] {
    const fs = this.store.data.fs ?? 'ext4';
    const options = [...(fs === 'xfs' ? ['nouuid'] : []), ...(r.kind === 'view' ? ['ro'] : [])];
    return [{ type: fs, source: dev, target: '', options }];
  }

  /** Prepare (kind active) and View: a thin snapshot of the parent's device (the base's without one), on a loop device. */
  create(ns: string, key: string, parent: string, labels: Record<string, string>, kind: Exclude<SnapKind, 'committed'>): Promise<MountSpec[]> {
    return this.serial(async () => {
      checkKey(key);
      checkLabels(labels);
      if (this.records.get(ns, key)) throw alreadyExists(`snapshot ${JSON.stringify(key)} already exists`);
      let parentLayer: string | null = null;
      if (parent !== '') {
        const p = this.records.get(ns, parent);
        if (!p || p.state !== 'ready') throw notFound(`parent snapshot ${JSON.stringify(parent)} does not exist`);
        if (p.kind !== 'committed') throw invalid(`parent ${JSON.stringify(parent)} is not a committed snapshot`);
        parentLayer = p.layer;
      }
      const at = now();
      const r: SnapRecord = { ns, key, layer: this.records.newLayerId(), kind, parent, labels, created: at, updated: at, state: 'creating' };
      this.records.put(r);
      this.records.save();
      await this.store.createLayer(r.layer, parentLayer);
      const dev = await holdLoop(this.store, r.layer);
      failpoint('snap.prepare-made');
      r.state = 'ready';
      this.records.save();
      return this.mountsOf(r, dev);
    });
  }

  mounts(ns: string, key: string): Promise<MountSpec[]> {
    return this.serial(async () => {
      const r = this.find(ns, key);
      if (r.kind === 'committed') throw precondition(`snapshot ${JSON.stringify(key)} is committed: only active snapshots and views have mounts`);
      return this.mountsOf(r, await holdLoop(this.store, r.layer));
    });
  }

  /** The active snapshot `key` becomes the committed snapshot `name`, on the same device, read-only from now on. */
  commit(ns: string, name: string, key: string, labels: Record<string, string>): Promise<void> {
    return this.serial(async () => {
      checkKey(name, 'name');
      const r = this.find(ns, key);
      checkLabels(labels);
      if (this.records.get(ns, name)) throw alreadyExists(`snapshot ${JSON.stringify(name)} already exists`);
      if (r.kind !== 'active') throw precondition(`snapshot ${JSON.stringify(key)} is not active (it is a ${r.kind === 'view' ? 'view' : 'committed snapshot'}); only an active snapshot can be committed`);
      await releaseLoop(this.store, r.layer, `cannot commit ${JSON.stringify(key)}`);
      failpoint('snap.commit-released');
      // Measured now, as devmapper does: once children share its blocks, none is exclusive to it.
      const size = await exclusiveBytes(this.store, r.layer);
      const at = now();
      this.records.drop(r);
      this.records.put({ ...r, key: name, kind: 'committed', labels, created: at, updated: at, size });
      this.records.save();
    });
  }

  remove(ns: string, key: string): Promise<void> {
    return this.serial(async () => {
      const r = this.find(ns, key);
      const kids = this.records.children(r);
      if (kids.length > 0) throw precondition(`cannot remove snapshot ${JSON.stringify(key)}: ${kids.length} snapshot(s) have it as parent; remove them first`);
      await releaseLoop(this.store, r.layer, `cannot remove ${JSON.stringify(key)}`);
      r.state = 'removing';
      this.records.save();
      failpoint('snap.remove-marked');
      await this.store.removeLayers([r.layer]);
      this.records.drop(r);
      this.records.save();
    });
  }

  stat(ns: string, key: string): Promise<SnapRecord> {
    return this.serial(async () => this.find(ns, key));
  }

  /** Labels only, as containerd: mask "labels" replaces them all, "labels.K" sets (or, empty, drops) one, no mask replaces all. */
  update(ns: string, key: string, labels: Record<string, string>, paths: string[]): Promise<SnapRecord> {
    return this.serial(async () => {
      const r = this.find(ns, key);
      checkLabels(labels);
      let next = { ...r.labels };
      if (paths.length === 0) next = { ...labels };
      for (const p of paths) {
        if (p === 'labels') next = { ...labels };
        else if (p.startsWith('labels.') && p.length > 'labels.'.length) {
          const k = p.slice('labels.'.length);
          if (Object.hasOwn(labels, k) && labels[k] !== '') next[k] = labels[k]!;
          else delete next[k];
        } else throw invalid(`cannot update field ${JSON.stringify(p)} of snapshot ${JSON.stringify(key)}: only labels and labels.KEY can change`);
      }
      checkLabels(next);
      r.labels = next;
      r.updated = now();
      this.records.save();
      return r;
    });
  }

  list(ns: string, filters: string[]): Promise<SnapRecord[]> {
    return this.serial(async () => {
      const match = matcher(filters);
      return this.records.inNamespace(ns).filter((r) => r.state === 'ready' && match(r));
    });
  }

  /** Exclusive bytes: live for active snapshots and views, as measured at commit for committed ones; inodes unknown (0). */
  usage(ns: string, key: string): Promise<Usage> {
    return this.serial(async () => {
      const r = this.find(ns, key);
      return { size: r.size ?? (await exclusiveBytes(this.store, r.layer)), inodes: 0 };
    });
  }

  /** Removes devices and records that a crash left half-made (what start-up does too). */
  cleanup(): Promise<void> {
    return this.serial(() => reconcileSnapshots(this.store, this.records));
  }
}
