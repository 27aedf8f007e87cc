import type { MetaBlock } from '../../base/units.js';
import type { TransactionManager } from '../transaction-manager.js';
import {
  checkNodeHeader, childAt, initNode, insertAt, INTERNAL, isLeaf, keyAt, lastAtOrBelow, LEAF, lowerBound,
  maxEntries, moveHead, moveTail, nrEntries, removeAt, setChild, setKey, u64Value, valueAt,
} from './node.js';

// Copy-on-write btree with u64 keys over the transaction manager, the shape
// of the kernel's dm-btree. It knows nothing of what values mean: a value
// type injects reference counting (inc when a shared leaf is copied, dec when
// a value is overwritten or removed). Every change shadows the path from the
// root and returns the new root; the caller stores it.

export interface ValueType {
  readonly size: number;
  inc?(value: Buffer): void;
  dec?(value: Buffer): void;
  equal?(a: Buffer, b: Buffer): boolean;
}

export interface BTree {
  readonly tm: TransactionManager;
  readonly vt: ValueType;
}

//------------------------------------------------------------------------------
// reading

/** Node buffers whose header was checked, with the leaf value size checked against. */
const checked = new WeakMap<Buffer, number>();

export function readNode(t: BTree, b: MetaBlock): Buffer {
  const buf = t.tm.read(b, 'node');
  if (checked.get(buf) !== t.vt.size) {
    checkNodeHeader(buf, b, t.vt.size);
    checked.set(buf, t.vt.size);
  }
  return buf;
}

export function emptyTree(t: BTree): MetaBlock {
  const { b, buf } = t.tm.newBlock('node');
  initNode(buf, LEAF, t.vt.size);
  return b;
}

/** The value stored under key (a view into a cached block: decode at once). */
export function lookup(t: BTree, root: MetaBlock, key: number): Buffer | undefined {
  let buf = readNode(t, root);
  while (!isLeaf(buf)) {
    const i = lastAtOrBelow(buf, key);
    if (i < 0) return undefined;
    buf = readNode(t, childAt(buf, i));
  }
  const i = lowerBound(buf, key);
  return i < nrEntries(buf) && keyAt(buf, i) === key ? valueAt(buf, i) : undefined;
}

/** The first entry whose key is >= key. */
export function findAtOrAfter(t: BTree, root: MetaBlock, key: number): { key: number; value: Buffer } | undefined {
  const buf = readNode(t, root);
  if (isLeaf(buf)) {
    const i = lowerBound(buf, key);
    return i < nrEntries(buf) ? { key: keyAt(buf, i), value: valueAt(buf, i) } : undefined;
  }
  for (let i = Math.max(0, lastAtOrBelow(buf, key)); i < nrEntries(buf); i++) {
    const r = findAtOrAfter(t, childAt(buf, i), key);
    if (r) return r;
  }
  return undefined;
}

export function highestKey(t: BTree, root: MetaBlock): number | undefined {
  let buf = readNode(t, root);
  while (!isLeaf(buf)) {
    if (nrEntries(buf) === 0) return undefined;
    buf = readNode(t, childAt(buf, nrEntries(buf) - 1));
  }
  const n = nrEntries(buf);
  return n === 0 ? undefined : keyAt(buf, n - 1);
}

/** Visits every entry in key order. Return false from fn to stop early. */
export function forEach(t: BTree, root: MetaBlock, fn: (key: number, value: Buffer) => boolean | void): boolean {
  const buf = readNode(t, root);
  const n = nrEntries(buf);
  if (isLeaf(buf)) {
    for (let i = 0; i < n; i++) if (fn(keyAt(buf, i), valueAt(buf, i)) === false) return false;
    return true;
  }
  for (let i = 0; i < n; i++) if (!forEach(t, childAt(buf, i), fn)) return false;
  return true;
}

/** Counts entries (walks the whole tree). */
export function countEntries(t: BTree, root: MetaBlock): number {
  let n = 0;
  forEach(t, root, () => {
    n++;
  });
  return n;
}

//------------------------------------------------------------------------------
// shadowing

function incChildren(t: BTree, buf: Buffer): void {
  const n = nrEntries(buf);
  if (!isLeaf(buf)) {
    for (let i = 0; i < n; i++) t.tm.inc(childAt(buf, i));
  } else if (t.vt.inc) {
    for (let i = 0; i < n; i++) t.vt.inc(valueAt(buf, i));
  }
}

function shadowNode(t: BTree, b: MetaBlock): { b: MetaBlock; buf: Buffer } {
  readNode(t, b);
  const s = t.tm.shadow(b, 'node');
  if (s.incChildren) incChildren(t, s.buf);
  return s;
}

//------------------------------------------------------------------------------
// insert

interface Split {
  key: number;
  b: MetaBlock;
}

/** Puts (key, value) at i of a writable node, splitting it when full. */
function placeEntry(t: BTree, buf: Buffer, i: number, key: number, value: Buffer): Split | undefined {
  const max = maxEntries(buf);
  if (nrEntries(buf) < max) {
    insertAt(buf, i, key, value);
    return undefined;
  }
  const right = t.tm.newBlock('node');
  initNode(right.buf, buf.readUInt32LE(4), buf.readUInt32LE(24));
  // Appending (sequential writes) leaves the left node two thirds full
  // instead of half, keeping the right one at the minimum a node may hold.
  const half = i >= max ? max - Math.floor(max / 3) : max >>> 1;
  moveTail(buf, half, right.buf);
  if (i <= half) insertAt(buf, i, key, value);
  else insertAt(right.buf, i - half, key, value);
  return { key: keyAt(right.buf, 0), b: right.b };
}

function insertInto(t: BTree, b: MetaBlock, key: number, value: Buffer): { b: MetaBlock; split?: Split } {
  const s = shadowNode(t, b);
  const buf = s.buf;
  if (isLeaf(buf)) {
    const i = lowerBound(buf, key);
    if (i < nrEntries(buf) && keyAt(buf, i) === key) {
      const old = valueAt(buf, i);
      if (!t.vt.equal?.(old, value)) t.vt.dec?.(Buffer.from(old));
      value.copy(old);
      return { b: s.b };
    }
    const split = placeEntry(t, buf, i, key, value);
    return split ? { b: s.b, split } : { b: s.b };
  }
  let i = lastAtOrBelow(buf, key);
  if (i < 0) {
    i = 0;
    setKey(buf, 0, key);
  }
  const r = insertInto(t, childAt(buf, i), key, value);
  setChild(buf, i, r.b);
  const split = r.split ? placeEntry(t, buf, i + 1, r.split.key, u64Value(r.split.b)) : undefined;
  return split ? { b: s.b, split } : { b: s.b };
}

/** Inserts or overwrites; returns the new root. */
export function insert(t: BTree, root: MetaBlock, key: number, value: Buffer): MetaBlock {
  const r = insertInto(t, root, key, value);
  if (!r.split) return r.b;
  const top = t.tm.newBlock('node');
  initNode(top.buf, INTERNAL, 8);
  const left = t.tm.read(r.b, 'node');
  insertAt(top.buf, 0, keyAt(left, 0), u64Value(r.b));
  insertAt(top.buf, 1, r.split.key, u64Value(r.split.b));
  return top.b;
}

/**
 * Changes the value under an existing key in place (no dec of the old
 * value): for values that are roots of other trees, which the caller has
 * already shadowed. Returns the new root.
 */
export function update(t: BTree, root: MetaBlock, key: number, fn: (value: Buffer) => void): MetaBlock {
  const s = shadowNode(t, root);
  const buf = s.buf;
  if (isLeaf(buf)) {
    const i = lowerBound(buf, key);
    if (i >= nrEntries(buf) || keyAt(buf, i) !== key) throw new Error(`btree update: key ${key} missing`);
    fn(valueAt(buf, i));
    return s.b;
  }
  const i = lastAtOrBelow(buf, key);
  if (i < 0) throw new Error(`btree update: key ${key} missing`);
  setChild(buf, i, update(t, childAt(buf, i), key, fn));
  return s.b;
}

//------------------------------------------------------------------------------
// remove

/** Merges or redistributes child i of a writable internal node with a neighbour. */
function rebalance(t: BTree, parent: Buffer, i: number): void {
  if (nrEntries(parent) < 2) return;
  const l = i > 0 ? i - 1 : i;
  const r = l + 1;
  const left = shadowNode(t, childAt(parent, l));
  const right = shadowNode(t, childAt(parent, r));
  setChild(parent, l, left.b);
  setChild(parent, r, right.b);
  const nl = nrEntries(left.buf);
  const nr = nrEntries(right.buf);
  if (nl + nr <= maxEntries(left.buf)) {
    moveHead(right.buf, nr, left.buf);
    removeAt(parent, r);
    t.tm.dec(right.b); // its entries, and the references they hold, moved left
    return;
  }
  const target = (nl + nr) >>> 1;
  if (nl > target) {
    const oldRight = Buffer.from(right.buf);
    initLike(right.buf, oldRight);
    moveTail(left.buf, target, right.buf);
    moveHead(oldRight, nrEntries(oldRight), right.buf);
  } else if (nl < target) {
    moveHead(right.buf, target - nl, left.buf);
  }
  setKey(parent, r, keyAt(right.buf, 0));
}

function initLike(dst: Buffer, src: Buffer): void {
  initNode(dst, src.readUInt32LE(4), src.readUInt32LE(24));
}

function removeFrom(t: BTree, b: MetaBlock, key: number): MetaBlock {
  const s = shadowNode(t, b);
  const buf = s.buf;
  if (isLeaf(buf)) {
    const i = lowerBound(buf, key);
    t.vt.dec?.(Buffer.from(valueAt(buf, i)));
    removeAt(buf, i);
    return s.b;
  }
  const i = lastAtOrBelow(buf, key);
  const child = removeFrom(t, childAt(buf, i), key);
  setChild(buf, i, child);
  const cb = t.tm.read(child, 'node');
  if (nrEntries(cb) < Math.floor(maxEntries(cb) / 3)) rebalance(t, buf, i);
  return s.b;
}

/** Removes key if present; returns the (possibly unchanged) root. */
export function remove(t: BTree, root: MetaBlock, key: number): MetaBlock {
  if (!lookup(t, root, key)) return root;
  let b = removeFrom(t, root, key);
  for (;;) {
    const buf = t.tm.read(b, 'node');
    if (isLeaf(buf) || nrEntries(buf) !== 1) return b;
    const only = childAt(buf, 0);
    t.tm.dec(b); // the root's one reference to its child passes to the caller
    b = only;
  }
}

//------------------------------------------------------------------------------
// delete

/** Drops one reference to a whole tree, freeing what is no longer shared. */
export function deleteTree(t: BTree, root: MetaBlock): void {
  if (t.tm.count(root) > 1) {
    t.tm.dec(root);
    return;
  }
  const buf = readNode(t, root);
  const n = nrEntries(buf);
  if (!isLeaf(buf)) {
    const children: MetaBlock[] = [];
    for (let i = 0; i < n; i++) children.push(childAt(buf, i));
    for (const c of children) deleteTree(t, c);
  } else if (t.vt.dec) {
    const values: Buffer[] = [];
    for (let i = 0; i < n; i++) values.push(Buffer.from(valueAt(buf, i)));
    for (const v of values) t.vt.dec(v);
  }
  t.tm.dec(root);
}

//------------------------------------------------------------------------------
// walking nodes (check, space accounting)

export interface NodeVisit {
  b: MetaBlock;
  buf: Buffer;
  depth: number;
  /** The parent's key for this node, if any. */
  parentKey: number | undefined;
}

/** Visits every node, depth first, parents before children. */
export function walkNodes(t: BTree, root: MetaBlock, fn: (v: NodeVisit) => boolean | void, depth = 0, parentKey?: number): void {
  const buf = readNode(t, root);
  if (fn({ b: root, buf, depth, parentKey }) === false) return;
  if (isLeaf(buf)) return;
  for (let i = 0; i < nrEntries(buf); i++) walkNodes(t, childAt(buf, i), fn, depth + 1, keyAt(buf, i));
}
