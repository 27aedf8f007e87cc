import type { LayerStore } from '../layers/store.js';
import { LAYER_PREFIX, type SnapRecords } from './records.js';

// After a crash (and on Cleanup): the records and the layer store agree
// again, by the protocol in records.ts. Runs after LayerStore.open has
// reconciled the store itself, so every layer left is ready.

export async function reconcileSnapshots(store: LayerStore, records: SnapRecords): Promise<void> {
  let changed = false;
  for (const r of records.all()) {
    const have = store.data.layers[r.layer];
    if (r.state !== 'ready') {
      if (have) await store.removeLayers([r.layer]);
      records.drop(r);
      changed = true;
    } else if (!have) {
      process.stderr.write(`thinfuse snapshotter: snapshot ${JSON.stringify(r.key)} (namespace ${JSON.stringify(r.ns)}) lost its device ${r.layer}; dropping its record\n`);
      records.drop(r);
      changed = true;
    }
  }
  if (changed) records.save();
  const used = new Set(records.all().map((r) => r.layer));
  const orphans = Object.values(store.data.layers).filter((l) => l.id.startsWith(LAYER_PREFIX) && !used.has(l.id));
  // Children first: a layer goes before the layer it was snapshotted from.
  const ids = new Set(orphans.map((l) => l.id));
  while (ids.size > 0) {
    const leaves = [...ids].filter((id) => ![...ids].some((o) => store.data.layers[o]?.parent === id));
    if (leaves.length === 0) break;
    await store.removeLayers(leaves);
    for (const id of leaves) ids.delete(id);
  }
}
