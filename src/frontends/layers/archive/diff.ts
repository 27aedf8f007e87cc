// A layer's changes against its parent, as a layer tar: Docker's naive diff
// driver (moby daemon/graphdriver/fsdiff.go over pkg/archive changes.go
// ChangesDirs + ExportChanges), for two mounted trees.
//
// Walk: both trees in step, names sorted, depth first, so a directory's
// entry precedes its contents. Per path:
//  - only in upper: added (a directory with everything under it);
//  - only in lower: deleted, written as the whiteout `DIR/.wh.NAME`, with
//    mode 0 and size 0 as Docker writes it (a deleted directory is one
//    whiteout, its contents are not listed);
//  - in both: modified when they differ (the rule below). A directory that
//    turned into something else takes its lower contents with it (applying
//    the entry replaces the whole tree), so those get no whiteouts;
//  - an unchanged directory with changes inside is written too, just
//    before them, so that its mode and owner come along (as Docker does);
//    the root itself never is.
//
// "Differ" (Docker compares stat fields and security.capability only; we
// compare more, and look at contents when metadata cannot tell):
//  - file type, permission bits, uid, gid, device number, all xattrs;
//  - for non-directories: size and mtime (ns); a directory's size and mtime
//    change with every create/delete inside and say nothing of its own
//    metadata (moby#9874), so they are ignored;
//  - symlink targets;
//  - regular files whose metadata all match: the same inode with the same
//    ctime (ns) is unchanged — a thin snapshot starts with its parent's
//    inodes, and any write or attribute change bumps ctime; otherwise
//    (different inode: a copied tree, or a rewrite that restored mtime)
//    the contents are compared byte for byte.
//
// Written entries: numeric uid/gid, mtimes truncated to whole seconds (as
// Docker's tar headers), xattrs as SCHILY.xattr.* PAX records, device
// numbers, and a regular file with several links as one full entry followed
// by hard-link entries for the others that are in the diff. Sockets are
// skipped (tar cannot carry them; Docker skips them too). The trees must not
// change while the diff runs.

import fs from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';

import tarStream from 'tar-stream';

import { ThinError } from '../../../base/errors.js';
import { devMajor, devMinor, fsNative } from '../../../io/fs-native.js';
import { WHITEOUT_PREFIX } from './apply.js';
import { writeEntry, type EntrySpec } from './tar.js';

export interface DiffStats {
  /** Paths added or modified, relative ('etc/hosts'), in tar order. */
  changed: string[];
  /** Paths deleted (each written as a whiteout). */
  deleted: string[];
  /** Unchanged directories written only because something inside them changed. */
  parents: string[];
}

export interface DiffOptions {
  /** End `out` when the tar is complete (default true). */
  end?: boolean;
}

type Kind = 'changed' | 'deleted' | 'parent';

interface Change {
  rel: string;
  kind: Kind;
}

const CHUNK = 1 << 16;

/** Writes the changes of tree `upper` against tree `lower` (null: against nothing) to `out` as a layer tar. */
export async function writeLayerDiff(
  lower: string | null,
  upper: string,
  out: NodeJS.WritableStream,
  opts: DiffOptions = {},
): Promise<DiffStats> {
  const changes: Change[] = [];
  await compareDir(lower, upper, '', changes);
  await exportChanges(upper, changes, out, opts.end ?? true);
  const pick = (kind: Kind): string[] => changes.filter((c) => c.kind === kind).map((c) => c.rel);
  return { changed: pick('changed'), deleted: pick('deleted'), parents: pick('parent') };
}

// ---------------------------------------------------------------- compare

/** Appends the changes under directory `rel` (present in both trees, or lower null). */
async function compareDir(lower: string | null, upper: string, rel: string, changes: Change[]): Promise<void> {
  const upperNames = listDir(path.join(upper, rel));
  const lowerNames = lower === null ? [] : listDir(path.join(lower, rel));
  const names = [...new Set([...upperNames, ...lowerNames])].sort();
  for (const name of names) {
    // ext4's mkfs-made lost+found belongs to the filesystem, not the image;
    // shipping it would plant it in every layer applied onto xfs.
    if (rel === '' && name === 'lost+found') continue;
    const child = rel === '' ? name : `${rel}/${name}`;
    const u = lstatOrNull(path.join(upper, child));
    const l = lower === null ? null : lstatOrNull(path.join(lower, child));
    if (u === null) {
      if (l !== null) changes.push({ rel: child, kind: 'deleted' });
      continue;
    }
    if (l === null) {
      changes.push({ rel: child, kind: 'changed' });
      if (u.isDirectory()) await compareDir(null, upper, child, changes);
      continue;
    }
    const mark = changes.length;
    const changed = await differs(path.join(lower as string, child), path.join(upper, child), l, u);
    if (changed) changes.push({ rel: child, kind: 'changed' });
    if (!u.isDirectory()) continue;
    await compareDir(l.isDirectory() ? lower : null, upper, child, changes);
    if (!changed && changes.length > mark) changes.splice(mark, 0, { rel: child, kind: 'parent' });
  }
}

async function differs(lowerPath: string, upperPath: string, l: fs.BigIntStats, u: fs.BigIntStats): Promise<boolean> {
  if (l.mode !== u.mode || l.uid !== u.uid || l.gid !== u.gid || l.rdev !== u.rdev) return true;
  if (!u.isDirectory() && (l.size !== u.size || l.mtimeNs !== u.mtimeNs)) return true;
  if (u.isSymbolicLink() && fs.readlinkSync(lowerPath) !== fs.readlinkSync(upperPath)) return true;
  if (!sameXattrs(readXattrs(lowerPath), readXattrs(upperPath))) return true;
  if (!u.isFile() || (l.ino === u.ino && l.ctimeNs === u.ctimeNs)) return false;
  return !(await sameContent(lowerPath, upperPath));
}

async function sameContent(a: string, b: string): Promise<boolean> {
  const [fa, fb] = await Promise.all([fs.promises.open(a, 'r'), fs.promises.open(b, 'r')]);
  try {
    const ba = Buffer.alloc(CHUNK);
    const bb = Buffer.alloc(CHUNK);
    for (;;) {
      const [ra, rb] = await Promise.all([fa.read(ba, 0, CHUNK, null), fb.read(bb, 0, CHUNK, null)]);
      if (ra.bytesRead !== rb.bytesRead) return false;
      if (ra.bytesRead === 0) return true;
      if (!ba.subarray(0, ra.bytesRead).equals(bb.subarray(0, rb.bytesRead))) return false;
    }
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
}

/** A file's xattrs (empty where the filesystem has none). */
export function readXattrs(file: string): Map<string, Buffer> {
  const xattrs = new Map<string, Buffer>();
  let names: string[];
  try {
    names = fsNative.llistxattr(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EOPNOTSUPP') return xattrs;
    throw e;
  }
  for (const name of names.sort()) {
    const value = fsNative.lgetxattr(file, name);
    if (value !== null) xattrs.set(name, value);
  }
  return xattrs;
}

function sameXattrs(a: Map<string, Buffer>, b: Map<string, Buffer>): boolean {
  if (a.size !== b.size) return false;
  for (const [name, value] of a) {
    const other = b.get(name);
    if (other === undefined || !other.equals(value)) return false;
  }
  return true;
}

function listDir(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return [];
    throw e;
  }
}

function lstatOrNull(p: string): fs.BigIntStats | null {
  try {
    return fs.lstatSync(p, { bigint: true });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

// ----------------------------------------------------------------- export

async function exportChanges(upper: string, changes: Change[], out: NodeJS.WritableStream, end: boolean): Promise<void> {
  const pack = tarStream.pack();
  const piping = pipeline(pack, out as NodeJS.WritableStream, { end });
  // Rejects when the output fails, so a stuck entry write gives up too.
  const outFailed = new Promise<never>((_, reject) => piping.catch(reject));
  const firstLink = new Map<string, string>(); // "dev:ino" -> first path written
  try {
    for (const change of changes) {
      const spec = change.kind === 'deleted' ? whiteoutSpec(change.rel) : entrySpec(upper, change.rel, firstLink);
      if (spec === null) continue;
      const body = spec.type === 'file' && spec.size ? fs.createReadStream(path.join(upper, change.rel)) : undefined;
      await Promise.race([writeEntry(pack, spec, body), outFailed]);
    }
    pack.finalize();
    await piping;
  } catch (e) {
    pack.destroy(e instanceof Error ? e : new Error(String(e)));
    if (e instanceof ThinError) throw e;
    const msg = e instanceof Error ? e.message : String(e);
    throw new ThinError('IO_ERROR', `writing the layer diff of ${upper}: ${msg}`, {}, e);
  }
}

function whiteoutSpec(rel: string): EntrySpec {
  const name = path.posix.join(path.posix.dirname(rel), WHITEOUT_PREFIX + path.posix.basename(rel));
  return { name, type: 'file', mode: 0, uid: 0, gid: 0, mtime: new Date(), size: 0 };
}

/** The tar entry for upper/rel, or null for what tar cannot carry (sockets). */
function entrySpec(upper: string, rel: string, firstLink: Map<string, string>): EntrySpec | null {
  const file = path.join(upper, rel);
  const st = fs.lstatSync(file, { bigint: true });
  const base: EntrySpec = {
    name: rel,
    type: 'file',
    mode: Number(st.mode) & 0o7777,
    uid: Number(st.uid),
    gid: Number(st.gid),
    mtime: new Date(Number(st.mtimeNs / 1_000_000_000n) * 1000),
    xattrs: readXattrs(file),
  };
  if (st.isDirectory()) return { ...base, type: 'directory' };
  if (st.isSymbolicLink()) return { ...base, type: 'symlink', linkname: fs.readlinkSync(file) };
  if (st.isFIFO()) return { ...base, type: 'fifo' };
  if (st.isCharacterDevice() || st.isBlockDevice()) {
    const type = st.isCharacterDevice() ? 'character-device' : 'block-device';
    return { ...base, type, devmajor: devMajor(st.rdev), devminor: devMinor(st.rdev) };
  }
  if (!st.isFile()) return null;
  if (st.nlink > 1n) {
    const key = `${st.dev}:${st.ino}`;
    const first = firstLink.get(key);
    if (first !== undefined) return { ...base, type: 'link', linkname: first, size: 0 };
    firstLink.set(key, rel);
  }
  return { ...base, size: Number(st.size) };
}
