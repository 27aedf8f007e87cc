// Unpacks an OCI/Docker image layer (a tar, plain or gzip) onto a directory
// that holds the lower layers' content, with Docker's semantics (moby
// pkg/archive UnpackLayer and createTarFile):
//
//  - `.wh.NAME` deletes NAME (file or whole tree) from what lies below;
//    `.wh..wh.opq` empties its directory of everything not unpacked from
//    this same layer so far; other `.wh..wh.*` names (AUFS bookkeeping) are
//    skipped;
//  - an existing path is replaced, except that a directory over a directory
//    merges (only the metadata is applied);
//  - missing parent directories are made with mode 0755;
//  - metadata order per entry: lchown, then xattrs (SCHILY.xattr.* PAX
//    records), then chmod (chown clears setuid bits and security.capability,
//    so both come after it), then times; directories get their times last,
//    after their contents stopped changing them;
//  - hard links name their target by its path in the layer (earlier in this
//    layer, or already in root).
//
// Safety: names that climb out with `..` are refused, leading '/' is dropped,
// and every path is resolved with symlinks followed within root (see
// safe-path.ts), so nothing is ever written outside root.

import fs from 'node:fs';
import path from 'node:path';

import { ThinError } from '../../../base/errors.js';
import { fsNative } from '../../../io/fs-native.js';
import { cleanName, hostPath, resolveInRoot } from './safe-path.js';
import { decompressed, entryId, entryMtimeNs, entryXattrs, tarEntries, type TarEntry, type TarHeader } from './tar.js';

export interface ApplyStats {
  /** Entries created or updated (whiteouts not included). */
  entries: number;
  /** Whiteouts and opaque markers honoured. */
  whiteouts: number;
  /** Bytes of regular-file data written. */
  bytes: number;
  /** xattrs the filesystem refused (EOPNOTSUPP), one line each; Docker logs and skips them too. */
  warnings: string[];
}

export interface ApplyOptions {
  /** Called with each warning as it happens (they are also returned in ApplyStats.warnings). */
  onWarning?: (line: string) => void;
}

export const WHITEOUT_PREFIX = '.wh.';
export const WHITEOUT_META_PREFIX = '.wh..wh.';
export const WHITEOUT_OPAQUE = '.wh..wh..opq';

interface Unpack {
  root: string;
  stats: ApplyStats;
  opts: ApplyOptions;
  /** Host paths unpacked from this layer so far: an opaque marker keeps them. */
  unpacked: Set<string>;
  /** Directories whose times are set at the end. */
  dirs: Array<{ host: string; mtimeNs: bigint }>;
}

/** Unpacks the layer tar `input` (plain or gzip) onto directory `root`. */
export async function applyLayer(input: NodeJS.ReadableStream, root: string, opts: ApplyOptions = {}): Promise<ApplyStats> {
  const realRoot = fs.realpathSync(root);
  if (!fs.statSync(realRoot).isDirectory()) throw new ThinError('EINVAL_ARG', `layer root ${root} is not a directory`);
  const u: Unpack = {
    root: realRoot,
    stats: { entries: 0, whiteouts: 0, bytes: 0, warnings: [] },
    opts,
    unpacked: new Set(),
    dirs: [],
  };
  const tar = await decompressed(input, 'the layer');
  for await (const entry of tarEntries(tar)) await applyEntry(u, entry);
  for (const d of u.dirs) setTimes(d.host, d.mtimeNs, false);
  return u.stats;
}

async function applyEntry(u: Unpack, entry: TarEntry): Promise<void> {
  const { header } = entry;
  const rel = cleanName(header.name);
  if (rel.startsWith(WHITEOUT_META_PREFIX)) return; // AUFS metadata (.wh..wh.plnk, .wh..wh.aufs)
  const base = path.posix.basename(rel);
  try {
    if (base.startsWith(WHITEOUT_PREFIX)) {
      whiteout(u, rel, base);
      return;
    }
    const host = hostPath(u.root, rel);
    await place(u, rel, host, entry);
    u.unpacked.add(host);
    u.stats.entries++;
  } catch (e) {
    throw asThinError(e, header.name);
  }
}

function whiteout(u: Unpack, rel: string, base: string): void {
  const dir = resolveInRoot(u.root, path.posix.dirname(rel));
  u.stats.whiteouts++;
  if (base === WHITEOUT_OPAQUE) {
    emptyExcept(dir, u.unpacked);
    return;
  }
  const name = base.slice(WHITEOUT_PREFIX.length);
  if (name === '' || name === '.' || name === '..') {
    throw new ThinError('BAD_ARCHIVE', `whiteout ${JSON.stringify(rel)} names no file: refusing the archive`);
  }
  fs.rmSync(path.join(dir, name), { recursive: true, force: true });
}

/** Removes everything under dir that this layer did not unpack (an opaque directory hides the lower content). */
function emptyExcept(dir: string, keep: Set<string>): void {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return;
    throw e;
  }
  for (const name of names) {
    const child = path.join(dir, name);
    if (!keep.has(child)) fs.rmSync(child, { recursive: true, force: true });
    else if (fs.lstatSync(child).isDirectory()) emptyExcept(child, keep);
  }
}

/** Creates (or for a directory over a directory, merges) one entry at host, then applies its metadata. */
async function place(u: Unpack, rel: string, host: string, entry: TarEntry): Promise<void> {
  const { header } = entry;
  // tar-stream gives null for a typeflag it does not know.
  const type = header.type as TarHeader['type'] | null;
  if (rel === '' && type !== 'directory') {
    throw new ThinError('BAD_ARCHIVE', `entry ${JSON.stringify(header.name)} is the layer root but not a directory`);
  }
  if (rel !== '') fs.mkdirSync(path.dirname(host), { recursive: true, mode: 0o755 });
  const existing = lstatOrNull(host);
  if (existing !== null && !(existing.isDirectory() && type === 'directory')) fs.rmSync(host, { recursive: true, force: true });

  const mode = header.mode & 0o7777;
  let linkIsSymlink = false;
  switch (type) {
    case 'file':
    case 'contiguous-file':
      u.stats.bytes += await writeFile(host, mode, entry.body);
      break;
    case 'directory':
      if (existing === null || !existing.isDirectory()) fs.mkdirSync(host, { mode });
      break;
    case 'symlink':
      checkSymlink(u.root, host, header);
      fs.symlinkSync(header.linkname, host);
      break;
    case 'link': {
      const source = hostPath(u.root, cleanName(header.linkname ?? '', `hard link target of ${header.name}`));
      fs.linkSync(source, host);
      linkIsSymlink = fs.lstatSync(source).isSymbolicLink();
      break;
    }
    case 'character-device':
      fsNative.mknod(host, fs.constants.S_IFCHR | mode, header.devmajor ?? 0, header.devminor ?? 0);
      break;
    case 'block-device':
      fsNative.mknod(host, fs.constants.S_IFBLK | mode, header.devmajor ?? 0, header.devminor ?? 0);
      break;
    case 'fifo':
      fsNative.mknod(host, fs.constants.S_IFIFO | mode, 0, 0);
      break;
    default:
      throw new ThinError('BAD_ARCHIVE', `entry ${JSON.stringify(header.name)} has a tar type thinfuse cannot unpack (${String(type)})`);
  }
  applyMetadata(u, host, header, type === 'symlink' || linkIsSymlink);
  if (type === 'directory') u.dirs.push({ host, mtimeNs: entryMtimeNs(header) });
}

function applyMetadata(u: Unpack, host: string, header: TarHeader, isSymlink: boolean): void {
  fs.lchownSync(host, entryId(header, 'uid'), entryId(header, 'gid'));
  for (const [name, value] of entryXattrs(header)) {
    try {
      fsNative.lsetxattr(host, name, value);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EOPNOTSUPP') throw e;
      const line = `ignoring xattr ${name} of ${header.name}: the filesystem does not support it`;
      u.stats.warnings.push(line);
      u.opts.onWarning?.(line);
    }
  }
  if (isSymlink) {
    setTimes(host, entryMtimeNs(header), true);
    return;
  }
  fs.chmodSync(host, header.mode & 0o7777);
  if (header.type !== 'directory') setTimes(host, entryMtimeNs(header), false);
}

/** atime = mtime: tar headers carry only the mtime (Docker uses mtime when atime is older or absent). */
function setTimes(host: string, mtimeNs: bigint, symlink: boolean): void {
  const secs = Number(mtimeNs) / 1e9;
  if (symlink) fs.lutimesSync(host, secs, secs);
  else fs.utimesSync(host, secs, secs);
}

/** Docker refuses a symlink whose target, taken lexically from the link's directory, leaves the root. */
function checkSymlink(root: string, host: string, header: TarHeader): void {
  const linkname = header.linkname ?? '';
  if (linkname === '') throw new ThinError('BAD_ARCHIVE', `symlink ${JSON.stringify(header.name)} has an empty target`);
  const resolved = path.resolve(path.dirname(host), linkname.startsWith('/') ? path.join(root, linkname) : linkname);
  if (resolved !== root && !resolved.startsWith(root + path.sep)) {
    throw new ThinError('BAD_ARCHIVE', `symlink ${JSON.stringify(header.name)} -> ${JSON.stringify(linkname)} points outside the layer root: refusing the archive`);
  }
}

async function writeFile(host: string, mode: number, body: AsyncIterable<Buffer>): Promise<number> {
  const fh = await fs.promises.open(host, 'wx', mode);
  let bytes = 0;
  try {
    for await (const chunk of body) {
      await fh.write(chunk, 0, chunk.length, null);
      bytes += chunk.length;
    }
  } finally {
    await fh.close();
  }
  return bytes;
}

function lstatOrNull(p: string): fs.Stats | null {
  try {
    return fs.lstatSync(p);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

/** A system-call failure while unpacking, as one line naming the entry. */
function asThinError(e: unknown, name: string): ThinError {
  if (e instanceof ThinError) return e;
  const err = e as NodeJS.ErrnoException;
  return new ThinError('IO_ERROR', `unpacking ${JSON.stringify(name)}: ${err.message ?? String(e)}`, { entry: name, errno: err.code }, e);
}
