import { META_BLOCK_SIZE } from '../base/units.js';
import { INTERNAL, LEAF } from '../metadata/btree/node.js';
import { type CheckContext, type NodeInfo, type Role, u64, useName } from './check-context.js';

// The btree walker: reads and validates every node reachable from a root
// once, counts each reference to it, and keeps the leaf entries of the trees
// that are walked again by key. Calls only the check context, which also
// takes each physical mapping leaf's data counts.

const HEADER = 32;

export const DETAILS: Role = { name: 'device details tree', leafValueSize: 24, keep: true };
export const TOP: Role = { name: 'mapping tree (top level)', leafValueSize: 8, keep: true };
export const BOTTOM: Role = { name: 'mapping tree (device level)', leafValueSize: 8, keep: false };
export const DATA_INDEX: Role = { name: 'data space map index tree', leafValueSize: 16, keep: true };
export const META_REF: Role = { name: 'metadata space map ref-count tree', leafValueSize: 4, keep: true };
export const DATA_REF: Role = { name: 'data space map ref-count tree', leafValueSize: 4, keep: true };

interface NodeHeader {
  flags: number;
  nr: number;
  max: number;
  vs: number;
}

/**
 * One reference to a node of a tree with the given role. Reads and checks
 * the node the first time only; returns undefined when it is unusable.
 */
export function refNode(ck: CheckContext, b: number, role: Role, ctx: string, isRoot: boolean): NodeInfo | undefined {
  if (!ck.refMeta(b, ctx)) return undefined;
  const u = ck.uses.get(b);
  let info: NodeInfo;
  if (u) {
    if (u.kind !== 'node' || u.info.role !== role) {
      ck.incomplete = true;
      if (ck.once(`role:${b}:${role.name}`)) {
        ck.report.fatal('shared', `${ctx}: metadata block ${b} is used both as ${useName(u)} and as a node of the ${role.name}`);
      }
      return undefined;
    }
    info = u.info;
  } else {
    info = visitNode(ck, b, role, ctx);
    ck.uses.set(b, { kind: 'node', info });
  }
  if (info.bad) {
    ck.incomplete = true;
    return undefined;
  }
  if (!isRoot && info.nr < Math.floor(info.max / 3) && ck.once(`underfull:${b}`)) {
    ck.report.fatal('node', `${ctx}: btree node ${b} is not a root but holds only ${info.nr} of ${info.max} entries (minimum ${Math.floor(info.max / 3)})`);
  }
  return info;
}

function visitNode(ck: CheckContext, b: number, role: Role, ctx: string): NodeInfo {
  const info: NodeInfo = { role, bad: true, nr: 0, max: 0, height: 0, firstKey: NaN, minKey: NaN, maxKey: NaN, entries: 0 };
  const where = `${ctx}: btree node ${b}`;
  const buf = ck.readValid(b, 'node', ctx);
  if (!buf) return info;
  const h: NodeHeader = { flags: buf.readUInt32LE(4), nr: buf.readUInt32LE(16), max: buf.readUInt32LE(20), vs: buf.readUInt32LE(24) };
  const why = headerProblem(h, role);
  if (why) {
    ck.report.fatal('node', `${where}: ${why}`);
    return info;
  }
  const { nr, max, vs } = h;
  info.nr = nr;
  info.max = max;
  info.bad = false;

  const keys: number[] = new Array(nr);
  for (let i = 0; i < nr; i++) keys[i] = u64(buf, HEADER + 8 * i);
  for (let i = 1; i < nr; i++) {
    if (!(keys[i]! > keys[i - 1]!)) {
      ck.report.fatal('node', `${where}: keys out of order (${keys[i - 1]} then ${keys[i]} at entry ${i})`);
      info.bad = true;
      return info;
    }
  }
  info.firstKey = nr > 0 ? keys[0]! : NaN;
  const vbase = HEADER + 8 * max;
  if (h.flags === LEAF) visitLeaf(ck, info, buf, keys, vbase, vs, ctx);
  else visitInternal(ck, b, info, buf, keys, vbase, ctx);
  return info;
}

/** Why a node's header does not fit a node of this tree, if it does not. */
function headerProblem(h: NodeHeader, role: Role): string | undefined {
  const { flags, nr, max, vs } = h;
  if (flags !== INTERNAL && flags !== LEAF) return `bad flags ${flags} (expected 1 = internal or 2 = leaf)`;
  const leaf = flags === LEAF;
  const wantVs = leaf ? role.leafValueSize : 8;
  if (vs !== wantVs) return `value size ${vs}, expected ${wantVs} for ${leaf ? 'a leaf' : 'an internal node'} of this tree`;
  if (max === 0 || max % 3 !== 0 || HEADER + (8 + vs) * max > META_BLOCK_SIZE) return `bad max_entries ${max}`;
  if (nr > max) return `nr_entries ${nr} exceeds max_entries ${max}`;
  if (!leaf && nr === 0) return 'an internal node with no entries';
  return undefined;
}

function visitLeaf(ck: CheckContext, info: NodeInfo, buf: Buffer, keys: number[], vbase: number, vs: number, ctx: string): void {
  const nr = info.nr;
  const role = info.role;
  info.entries = nr;
  info.minKey = info.firstKey;
  info.maxKey = nr > 0 ? keys[nr - 1]! : NaN;
  if (role === BOTTOM) {
    ck.data.addMappingLeaf(buf, nr, vbase, keys, ctx);
  } else if (role === TOP) {
    info.keys = keys;
    info.values = [];
    for (let i = 0; i < nr; i++) {
      const v = Buffer.from(buf.subarray(vbase + 8 * i, vbase + 8 * i + 8));
      info.values.push(v);
      const dev = keys[i]!;
      refNode(ck, u64(v, 0), BOTTOM, `${ctx.replace(/ \(top level\)$/, '')} of device ${dev}`, true);
    }
  } else if (role.keep) {
    info.keys = keys;
    info.values = [];
    for (let i = 0; i < nr; i++) info.values.push(Buffer.from(buf.subarray(vbase + vs * i, vbase + vs * (i + 1))));
  }
}

function visitInternal(ck: CheckContext, b: number, info: NodeInfo, buf: Buffer, keys: number[], vbase: number, ctx: string): void {
  const where = `${ctx}: btree node ${b}`;
  const nr = info.nr;
  const children: number[] = [];
  let height = -1;
  for (let i = 0; i < nr; i++) {
    const child = u64(buf, vbase + 8 * i);
    children.push(child);
    const ci = refNode(ck, child, info.role, ctx, false);
    if (!ci) {
      info.entries = NaN;
      continue;
    }
    if (height < 0) height = ci.height;
    else if (ci.height !== height && ck.once(`height:${b}`)) {
      ck.report.fatal('node', `${where}: children at different depths (child ${i}, block ${child})`);
    }
    if (ci.firstKey < keys[i]!) {
      ck.report.fatal('node', `${where}: child ${child} starts at key ${ci.firstKey}, below the parent's key ${keys[i]}`);
    }
    if (i + 1 < nr && ci.maxKey >= keys[i + 1]!) {
      ck.report.fatal('node', `${where}: child ${child} holds key ${ci.maxKey}, not below the parent's next key ${keys[i + 1]}`);
    }
    info.entries += ci.entries;
    if (!Number.isNaN(ci.minKey) && !(info.minKey <= ci.minKey)) info.minKey = ci.minKey;
    if (!Number.isNaN(ci.maxKey) && !(info.maxKey >= ci.maxKey)) info.maxKey = ci.maxKey;
  }
  info.height = height + 1;
  if (info.role.keep) info.children = children;
}

/** Leaf entries of a kept tree in key order (skips what could not be read). */
export function entriesOf(ck: CheckContext, root: NodeInfo | undefined): Array<[number, Buffer]> & { complete: boolean } {
  const out = Object.assign([] as Array<[number, Buffer]>, { complete: true });
  const walk = (info: NodeInfo | undefined, depth: number): void => {
    if (!info || info.bad || depth > 64) {
      out.complete = false;
      return;
    }
    if (info.values) {
      for (let i = 0; i < info.values.length; i++) out.push([info.keys![i]!, info.values[i]!]);
      return;
    }
    for (const c of info.children ?? []) {
      const u = ck.uses.get(c);
      walk(u?.kind === 'node' && u.info.role === info.role ? u.info : undefined, depth + 1);
    }
  };
  walk(root, 0);
  return out;
}
