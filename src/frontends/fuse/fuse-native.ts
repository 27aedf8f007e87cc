// Typed access to fuse-native, as patched and built by native-deps/build.mjs
// into native-deps/build/fuse-native (never node_modules/fuse-native, whose
// prebuilt binary has no fallocate and unmounts lazily).
//
// The patched copy adds ops.fallocate(path, fd, mode, offset, length, cb) and
// makes unmount run `fusermount -u` (not -uz): unmounting a busy mount fails,
// the callback gets the error and the mount stays served.
//
// fuse-native's conventions, which the types below spell out:
//  - every op callback takes a result first: 0 or a negative errno (the static
//    constants: Fuse.ENOENT is -2); read and write pass the byte count there;
//  - offsets, lengths and sizes are numbers (exact below 2^53);
//  - each op runs on the main thread while a libfuse thread waits for its
//    callback, so a handler must not block: a synchronous fs call on the
//    mount from this process deadlocks. An op not answered within
//    `opts.timeout` (default 15 s) fails with ETIMEDOUT.

import fs from 'node:fs';
import { packageRoot } from '../../base/package-root.js';
import { createRequire } from 'node:module';
import path from 'node:path';

import { ThinError } from '../../base/errors.js';

/** The attributes of a file, as fuse-native takes them. Omitted fields are 0 (nlink 1, times now). */
export interface FuseStat {
  mode: number;
  uid?: number;
  gid?: number;
  size?: number;
  dev?: number;
  nlink?: number;
  ino?: number;
  rdev?: number;
  blksize?: number;
  /** In 512-byte units. */
  blocks?: number;
  /** A Date, or milliseconds since the epoch. */
  atime?: Date | number;
  mtime?: Date | number;
  ctime?: Date | number;
}

/** statvfs fields. fuse-native carries each as an unsigned 32-bit integer (so block counts wrap at 2^32). */
export interface FuseStatfs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail: number;
  fsid: number;
  flag: number;
  namemax: number;
}

/** A callback taking only the result: 0 or a negative errno. */
export type FuseDone = (result: number) => void;

/**
 * The operations thinfuse implements; fuse-native registers with libfuse only
 * those present (getattr always). Paths are absolute within the mount ('/' is
 * the root). `fd` is whatever open() answered (0 if it answered none).
 */
export interface FuseOps {
  init?(cb: FuseDone): void;
  readdir?(path: string, cb: (result: number, names?: string[], stats?: FuseStat[]) => void): void;
  getattr?(path: string, cb: (result: number, stat?: FuseStat) => void): void;
  /**
   * Its presence registers the op, but fuse-native 2.2.6 answers it with
   * ops.getattr(path, cb): this function itself is never called.
   */
  fgetattr?(path: string, fd: number, cb: (result: number, stat?: FuseStat) => void): void;
  /** `flags` are open(2)'s. Answer a file handle (non-zero int32) to get it back as `fd` later. */
  open?(path: string, flags: number, cb: (result: number, fd?: number) => void): void;
  release?(path: string, fd: number, cb: FuseDone): void;
  /** Fill buf[0, len) from `position`; answer the byte count read (short only at the end of the file) or a negative errno. */
  read?(path: string, fd: number, buf: Buffer, len: number, position: number, cb: (bytesOrErrno: number) => void): void;
  /** Write buf[0, len) at `position`; answer the byte count written or a negative errno. Do not keep `buf` past cb. */
  write?(path: string, fd: number, buf: Buffer, len: number, position: number, cb: (bytesOrErrno: number) => void): void;
  flush?(path: string, fd: number, cb: FuseDone): void;
  /** Note the order: datasync (0 or 1) comes before fd. */
  fsync?(path: string, datasync: number, fd: number, cb: FuseDone): void;
  statfs?(path: string, cb: (result: number, statfs?: FuseStatfs) => void): void;
  truncate?(path: string, size: number, cb: FuseDone): void;
  ftruncate?(path: string, fd: number, size: number, cb: FuseDone): void;
  /**
   * fallocate(2) on an open file (patched in). `mode` is a mask of the
   * FALLOC_FL_* constants below: the loop driver sends PUNCH_HOLE|KEEP_SIZE (3)
   * for a discard (blkdiscard, fstrim, mkfs); fallocate(1) -p sends the same,
   * -z ZERO_RANGE (| KEEP_SIZE with -n), no option mode 0. Never answer
   * ENOSYS: the kernel would then refuse fallocate on the whole mount with
   * EOPNOTSUPP without asking again.
   */
  fallocate?(path: string, fd: number, mode: number, offset: number, length: number, cb: FuseDone): void;
}

export interface FuseOptions {
  /**
   * Passed verbatim as `-o fsname=<fsname>`, so further mount options can
   * follow after commas: 'thinfuse-x,big_writes,max_write=131072'.
   */
  fsname?: string;
  /** Unmount (non-lazily) a dead mount (ENOTCONN) at the mountpoint before mounting. */
  force?: boolean;
  /** Create the mountpoint if missing. */
  mkdir?: boolean;
  debug?: boolean;
  allowOther?: boolean;
  allowRoot?: boolean;
  autoUnmount?: boolean;
  defaultPermissions?: boolean;
  maxRead?: number;
  kernelCache?: boolean;
  autoCache?: boolean;
  uid?: number;
  gid?: number;
  umask?: number;
  entryTimeout?: number;
  attrTimeout?: number;
  acAttrTimeout?: number;
  /** Per-op answer timeout in ms (default 15000), false for none, or per op name. */
  timeout?: number | false | { default?: number; [op: string]: number | false | undefined };
}

/** What mount/unmount callbacks get on failure. */
export interface FuseError extends Error {
  /** Set when `fusermount -u` failed (e.g. busy); the mount is still there and served. */
  unmountFailure?: boolean;
  /** The exit status of fusermount, for unmount failures. */
  code?: number | string;
}

export interface FuseInstance {
  /** The mountpoint, resolved to an absolute path. */
  readonly mnt: string;
  /**
   * Mounts; cb(null) once the kernel's INIT has been answered (the mount is
   * live), or cb(error). (A call on an already mounted instance gets
   * cb(undefined).)
   */
  mount(cb: (err: FuseError | null) => void): void;
  /**
   * `fusermount -u` on the mountpoint, never lazy. If the mount is busy (open
   * files, a loop device on one of its files, a mount below it), cb gets an
   * error with unmountFailure set and everything stays as it was; unmount may
   * be called again later. cb(null) once unmounted (undefined if it already was).
   */
  unmount(cb: (err: FuseError | null) => void): void;
  /** The negative errno for an errno name ('ENOENT' -> -2), -1 if unknown. */
  errno(code: string): number;
}

/**
 * The native fast path's table (patched in; design in native-deps/fastpath.h).
 * Call only from the main thread. Handles: the JS open must answer dev + 1.
 */
export interface FastPathBinding {
  /** The data file's fd, block size and blocks (for the written bitmap); fd -1 turns the fast path off (waits for its I/O, empties the table). */
  configure(fd: number, blockBytes: number, nrBlocks: number): void;
  /** (Re)sets a device's record; false if its record slot holds another device (then it stays on the JS path). */
  enable(dev: number, name: string, size: number): boolean;
  /**
   * The pool saw dev:vblock -> dblock; writable: exclusive and the pool
   * writes; speculative: provisioned ahead of a writer (fresh: reset the
   * slot's write mark first). Answers [dev, vblock, written] when the insert
   * evicted another speculative entry (drained first), else null.
   */
  insert(dev: number, vblock: number, dblock: number, writable: boolean, speculative: boolean, fresh: boolean): [number, number, number] | null;
  /**
   * For pairs [dev, vblock, ...] of speculative entries: 1 = unwritten (now
   * removed, drained), 0 = written (kept), 2 = not in the table as one.
   */
  settle(pairs: number[]): number[];
  /**
   * Drops entries of dev (-1: all devices) with from <= vblock < end (both -1:
   * all), or only their writable bit; waits for fast-path I/O in flight.
   * Answers the data blocks whose writable bit it cleared.
   */
  revoke(dev: number, from: number, end: number, writesOnly: boolean): number[];
  takeDirty(): boolean;
  /** Data blocks fast-path writes landed in since the last call, as [first, count, ...] runs (then cleared). */
  takeWritten(): number[];
  /** Bytes written to the data file through JS, counted toward the native early writeback. */
  countWritten(bytes: number): void;
  /** Fills dst with data block `block` if a FUSE thread read it ahead for a copy-on-write of dev:vblock (nothing revoked since). */
  cowData(dev: number, vblock: number, block: number, dst: Buffer): boolean;
  /** Whether an fsync may be one fdatasync of the data file done in the FUSE thread (refused after a failed one). */
  setClean(on: boolean): void;
  /** The errno of a failed fast-path fdatasync since the last call (0: none). */
  takeFlushError(): number;
  /** [reads, writes, fallbacks, readBytes, writeBytes, directReads, splitReads, writebacks, cowReads] since load. */
  stats(): number[];
}

export interface FuseConstructor {
  new (mnt: string, ops: FuseOps, opts?: FuseOptions): FuseInstance;
  readonly fastPath: FastPathBinding;
  /**
   * What the next mount asks the kernel for: async direct I/O, and pages per
   * request (32 = libfuse2's own); and how long, in ns, FUSE threads spin and
   * the JS thread polls for an answer or the next request before sleeping.
   */
  transport(asyncDio: number, maxPages: number, pollNs: number): void;
  /** `fusermount -u MNT` (non-lazy) for any FUSE mount. */
  unmount(mnt: string, cb: (err: Error | null) => void): void;
  // Negative errno values (Linux), as fuse-native defines them.
  readonly EPERM: number;
  readonly ENOENT: number;
  readonly EINTR: number;
  readonly EIO: number;
  readonly ENXIO: number;
  readonly EBADF: number;
  readonly EAGAIN: number;
  readonly ENOMEM: number;
  readonly EACCES: number;
  readonly EBUSY: number;
  readonly EEXIST: number;
  readonly EXDEV: number;
  readonly ENODEV: number;
  readonly ENOTDIR: number;
  readonly EISDIR: number;
  readonly EINVAL: number;
  readonly EFBIG: number;
  readonly ENOSPC: number;
  readonly ESPIPE: number;
  readonly EROFS: number;
  readonly ERANGE: number;
  readonly ENAMETOOLONG: number;
  readonly ENOSYS: number;
  readonly ENOTEMPTY: number;
  readonly ENODATA: number;
  readonly EOVERFLOW: number;
  readonly EOPNOTSUPP: number;
  readonly ENOTCONN: number;
  readonly ETIMEDOUT: number;
  readonly EDQUOT: number;
}

/** fallocate(2) mode bits (Linux), for FuseOps.fallocate. */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

const BUILD_RELATIVE = path.join('native-deps', 'build', 'fuse-native');


let loaded: FuseConstructor | undefined;

/**
 * The patched fuse-native's Fuse class, loaded once. Throws
 * ThinError('IO_ERROR') if native-deps/build.mjs has not built it or it does
 * not load.
 */
export function loadFuse(): FuseConstructor {
  if (loaded !== undefined) return loaded;
  const dir = path.join(packageRoot(), BUILD_RELATIVE);
  const binary = path.join(dir, 'build', 'Release', 'fuse.node');
  if (!fs.existsSync(binary) || !fs.existsSync(path.join(dir, 'index.js'))) {
    throw new ThinError('IO_ERROR', `patched fuse-native not built (no ${binary}): run \`npm run build\``, { path: binary });
  }
  try {
    loaded = createRequire(import.meta.url)(dir) as FuseConstructor;
    return loaded;
  } catch (e) {
    const reason = e instanceof Error ? e.message.split('\n')[0] : String(e);
    throw new ThinError('IO_ERROR', `patched fuse-native in ${dir} does not load (${reason}): run \`npm run build\``, { path: dir, reason }, e);
  }
}
