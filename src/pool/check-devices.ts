import { BOTTOM, DETAILS, entriesOf, refNode, TOP } from './check-btree.js';
import { type CheckContext, u64 } from './check-context.js';

// The device checks: the details tree and the mapping tree's top level name
// the same devices, and each device's mapped_blocks matches its mapping tree.
// Calls the btree walker to read both trees.

export interface DeviceView {
  label: string;
  details: Map<number, Buffer>;
  top: Map<number, number>;
  /** Both trees were read whole (otherwise a missing device proves nothing). */
  detailsComplete: boolean;
  topComplete: boolean;
}

/** Walks a details tree and a mapping tree; returns what devices they name. */
export function devicesOf(ck: CheckContext, prefix: string, detailsRoot: number, mappingRoot: number): DeviceView {
  const d = refNode(ck, detailsRoot, DETAILS, `${prefix}${DETAILS.name}`, true);
  const t = refNode(ck, mappingRoot, TOP, `${prefix}${TOP.name}`, true);
  const de = entriesOf(ck, d);
  const te = entriesOf(ck, t);
  const details = new Map<number, Buffer>();
  for (const [k, v] of de) details.set(k, v);
  const top = new Map<number, number>();
  for (const [k, v] of te) top.set(k, u64(v, 0));
  return { label: prefix, details, top, detailsComplete: de.complete, topComplete: te.complete };
}

export function compareDevices(ck: CheckContext, view: DeviceView): void {
  const p = view.label;
  for (const dev of view.details.keys()) {
    if (!view.top.has(dev) && view.topComplete) ck.report.fatal('devices', `${p}device ${dev} is in the details tree but has no mapping tree`);
  }
  for (const [dev, root] of view.top) {
    const dv = view.details.get(dev);
    if (!dv) {
      if (view.detailsComplete) ck.report.fatal('devices', `${p}device ${dev} has a mapping tree but is not in the details tree`);
      continue;
    }
    const u = ck.uses.get(root);
    if (u?.kind !== 'node' || u.info.role !== BOTTOM || u.info.bad || Number.isNaN(u.info.entries)) continue;
    const mapped = u64(dv, 0);
    if (mapped !== u.info.entries) {
      ck.report.fatal('mapped', `${p}device ${dev}: details say mapped_blocks ${mapped}, but its mapping tree holds ${u.info.entries} mappings`);
    }
  }
}
