import fs from 'node:fs';
import path from 'node:path';
import { ThinError } from '../../base/errors.js';
import { writeFileAtomic } from '../../io/pool-files.js';

// The containerd snapshotter's bookkeeping, POOL/snapshots.json, replaced
// whole and atomically (writeFileAtomic) like the layer store's layers.json:
//
//   { "version": 1,
//     "next": N,                  the number of the next layer id, ctd-N
//     "snapshots": [ Snap ] }
//
//   Snap = { ns, key, layer: "ctd-N" (a layer in layers.json), kind: active|view|committed,
//            parent (a committed key in the same namespace, "" for none), labels, created, updated,
//            state: creating|ready|removing, size? (committed: exclusive bytes at commit, for Usage) }
//
// Protocol against the layer store (whose own intents cover each device):
// Prepare/View write the record as `creating`, then make the layer, then
// write it `ready`; Remove writes `removing`, removes the layer, then drops
// the record. At start (reconcile.ts), after the layer store reconciled
// itself: `creating` and `removing` records lose their layer and go;
// ctd-* layers without a record are removed; a record whose layer is gone is
// dropped. So no device outlives its record and no record points at a
// missing device, wherever a crash falls.

export const SNAP_FILE = 'snapshots.json';
export const LAYER_PREFIX = 'ctd-';

export type SnapKind = 'active' | 'view' | 'committed';

export interface SnapRecord {
  ns: string;
  key: string;
  layer: string;
  kind: SnapKind;
  parent: string;
  labels: Record<string, string>;
  created: string;
  updated: string;
  state: 'creating' | 'ready' | 'removing';
  /** Committed snapshots: the bytes it added over its parent, measured at commit (Usage). */
  size?: number;
}

interface SnapFile {
  version: 1;
  next: number;
  snapshots: SnapRecord[];
}

/** The records in memory, by namespace and key (a Map: keys are arbitrary strings, '__proto__' included). */
export class SnapRecords {
  private readonly byKey = new Map<string, SnapRecord>();

  private constructor(readonly pool: string, public next: number, list: SnapRecord[]) {
    for (const r of list) this.byKey.set(slot(r.ns, r.key), r);
  }

  /** Reads POOL/snapshots.json, writing an empty one at first start (call with the store locked). */
  static load(pool: string): SnapRecords {
    const file = path.join(pool, SNAP_FILE);
    if (!fs.existsSync(file)) {
      const fresh = new SnapRecords(pool, 1, []);
      fresh.save();
      return fresh;
    }
    let data: SnapFile;
    try {
      data = JSON.parse(fs.readFileSync(file, 'utf8')) as SnapFile;
    } catch (e) {
      throw new ThinError('EINVAL_ARG', `${file} is not valid JSON (${(e as Error).message}); restore it from a backup (the devices are layers ctd-* in layers.json)`);
    }
    return new SnapRecords(pool, data.next, data.snapshots);
  }

  save(): void {
    const data: SnapFile = { version: 1, next: this.next, snapshots: [...this.byKey.values()] };
    writeFileAtomic(path.join(this.pool, SNAP_FILE), JSON.stringify(data, null, 2) + '\n');
  }

  get(ns: string, key: string): SnapRecord | undefined {
    return this.byKey.get(slot(ns, key));
  }

  put(r: SnapRecord): void {
    this.byKey.set(slot(r.ns, r.key), r);
  }

  drop(r: SnapRecord): void {
    this.byKey.delete(slot(r.ns, r.key));
  }

  all(): SnapRecord[] {
    return [...this.byKey.values()];
  }

  inNamespace(ns: string): SnapRecord[] {
    return this.all().filter((r) => r.ns === ns);
  }

  children(r: SnapRecord): SnapRecord[] {
    return this.all().filter((c) => c.ns === r.ns && c.parent === r.key);
  }

  /** A fresh layer id; the counter is saved with the record that uses it. */
  newLayerId(): string {
    return `${LAYER_PREFIX}${this.next++}`;
  }
}

function slot(ns: string, key: string): string {
  return `${ns}\u0000${key}`;
}
