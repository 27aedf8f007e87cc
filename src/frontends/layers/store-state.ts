import { ThinError } from '../../base/errors.js';
import type { Served } from './daemon.js';
import type { LayerOptions } from './options.js';
import { type LayerRecord, type StoreData, writeStore } from './store-file.js';

// What every part of the layer store shares: the pool, its options, the
// records (saved whole to layers.json) and the serve once it is known.
// LayerStore extends it, so the modules doing the work take it as a
// parameter without importing store.ts back.

export class StoreState {
  /** Set by serving.ts (and reconcile) once the serve of this pool is known. */
  served: Served | undefined;

  protected constructor(readonly pool: string, readonly opts: LayerOptions, readonly data: StoreData) {}

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

  /** Layers an outside user keeps on a loop device (the containerd snapshotter's active snapshots and views). */
  heldLayers(): LayerRecord[] {
    return Object.values(this.data.layers).filter((l) => l.held === true);
  }
}
