// Typed access to native-deps/thinfuse_native.node: fallocate (punch hole,
// zero range), copy_file_range and flock, which Node's fs module lacks.
//
// The addon is loaded at first use, not at import, so that code which never
// touches it (or a test that only type-checks) works without a compiler. A
// missing or broken build surfaces as ThinError('IO_ERROR') naming the fix.
//
// Errors from the calls themselves are plain Errors carrying the errno name in
// `code` ('ENOSPC', 'EOPNOTSUPP', ...), plus `errno` and `syscall`, like the
// errors of Node's fs module; see isErrnoError().

import { packageRoot } from '../base/package-root.js';
import { createRequire } from 'node:module';
import path from 'node:path';

import { ThinError } from '../base/errors.js';

export interface NativeAddon {
  /** fallocate(PUNCH_HOLE | KEEP_SIZE): the range reads back as zeros, the size is unchanged. A zero length does nothing. */
  punchHole(fd: number, offset: number, length: number): void;
  /** punchHole on the libuv threadpool. */
  punchHoleAsync(fd: number, offset: number, length: number): Promise<void>;
  /** fallocate(ZERO_RANGE | KEEP_SIZE). Not every filesystem has it (EOPNOTSUPP): fall back to punchHole. A zero length does nothing. */
  zeroRange(fd: number, offset: number, length: number): void;
  /** Where the first data at or after offset lies (lseek SEEK_DATA): [offset, result) reads as zeros. 2^53 if none; offset itself on any error. */
  dataFrom(fd: number, offset: number): number;
  /** fallocate(KEEP_SIZE) on the threadpool: holes in the range become allocated zero (unwritten) extents; data is untouched. */
  preallocateAsync(fd: number, offset: number, length: number): Promise<void>;
  /** posix_fadvise(DONTNEED) on the threadpool: the range's clean pages leave the host page cache. */
  dropCacheAsync(fd: number, offset: number, length: number): Promise<void>;
  /** The raw fallocate(2); `mode` is a mask of the FALLOC_FL_* constants. */
  fallocate(fd: number, mode: number, offset: number, length: number): void;
  /**
   * copy_file_range(2) on the libuv threadpool, repeated until `length` bytes
   * are copied or the input ends; resolves with the bytes copied. The file
   * positions of both fds are untouched. Ranges within one file must not
   * overlap (EINVAL). Rejects with e.g. EXDEV, EOPNOTSUPP
   * or ENOSYS where the kernel/filesystem cannot do it: fall back to read/write.
   */
  copyFileRange(fdIn: number, offIn: number, fdOut: number, offOut: number, length: number): Promise<number>;
  /**
   * flock(2) on the open file description of `fd`. Returns true when taken,
   * false when `nonBlocking` and someone else holds a conflicting lock.
   * Blocking mode blocks the whole thread.
   */
  flock(fd: number, exclusive: boolean, nonBlocking: boolean): boolean;
  /** SO_PEERCRED of a connected unix socket. */
  peerCred(fd: number): { pid: number; uid: number; gid: number };
  /** flock(LOCK_UN). Closing every fd of the open file description also unlocks. */
  funlock(fd: number): void;
  readonly FALLOC_FL_KEEP_SIZE: number;
  readonly FALLOC_FL_PUNCH_HOLE: number;
  readonly FALLOC_FL_ZERO_RANGE: number;
}

/** The error the addon throws or rejects with when a system call fails. */
export interface ErrnoError extends Error {
  /** errno name, e.g. 'ENOSPC', 'EOPNOTSUPP', 'EXDEV'. */
  code: string;
  /** Positive errno number. */
  errno: number;
  syscall: string;
}

/** True for a system-call error (from the addon or Node's fs), optionally with the given errno name. */
export function isErrnoError(e: unknown, code?: string): e is ErrnoError {
  return (
    e instanceof Error &&
    typeof (e as Partial<ErrnoError>).code === 'string' &&
    (code === undefined || (e as ErrnoError).code === code)
  );
}

const ADDON_RELATIVE = path.join('native-deps', 'build', 'thinfuse_native.node');


let loaded: NativeAddon | undefined;
let loadError: ThinError | undefined;

/** Loads the addon (once); throws ThinError('IO_ERROR') if it is not built or does not load. */
export function loadNative(): NativeAddon {
  if (loaded !== undefined) return loaded;
  if (loadError !== undefined) throw loadError;
  const file = path.join(packageRoot(), ADDON_RELATIVE);
  try {
    loaded = createRequire(import.meta.url)(file) as NativeAddon;
    return loaded;
  } catch (e) {
    loadError = new ThinError(
      'IO_ERROR',
      'native addon not built: run `npm run build` (needs g++)',
      { path: file, reason: e instanceof Error ? e.message : String(e) },
      e,
    );
    throw loadError;
  }
}

/** True if the addon loads; never throws. */
export function nativeAvailable(): boolean {
  try {
    loadNative();
    return true;
  } catch {
    return false;
  }
}

/** Promise-returning calls report every failure (load, bad argument) as a rejection. */
function rejectOnThrow<T>(call: () => Promise<T>): Promise<T> {
  try {
    return call();
  } catch (e) {
    return Promise.reject(e);
  }
}

/**
 * The addon, loaded on first use of any member. The async calls reject rather
 * than throw, also when the addon is missing or an argument is bad.
 */
export const native: NativeAddon = {
  punchHole: (fd, offset, length) => loadNative().punchHole(fd, offset, length),
  punchHoleAsync: (fd, offset, length) => rejectOnThrow(() => loadNative().punchHoleAsync(fd, offset, length)),
  zeroRange: (fd, offset, length) => loadNative().zeroRange(fd, offset, length),
  fallocate: (fd, mode, offset, length) => loadNative().fallocate(fd, mode, offset, length),
  dataFrom: (fd, offset) => loadNative().dataFrom(fd, offset),
  preallocateAsync: (fd, offset, length) => rejectOnThrow(() => loadNative().preallocateAsync(fd, offset, length)),
  dropCacheAsync: (fd, offset, length) => rejectOnThrow(() => loadNative().dropCacheAsync(fd, offset, length)),
  copyFileRange: (fdIn, offIn, fdOut, offOut, length) =>
    rejectOnThrow(() => loadNative().copyFileRange(fdIn, offIn, fdOut, offOut, length)),
  flock: (fd, exclusive, nonBlocking) => loadNative().flock(fd, exclusive, nonBlocking),
  funlock: (fd) => loadNative().funlock(fd),
  peerCred: (fd) => loadNative().peerCred(fd),
  get FALLOC_FL_KEEP_SIZE() {
    return loadNative().FALLOC_FL_KEEP_SIZE;
  },
  get FALLOC_FL_PUNCH_HOLE() {
    return loadNative().FALLOC_FL_PUNCH_HOLE;
  },
  get FALLOC_FL_ZERO_RANGE() {
    return loadNative().FALLOC_FL_ZERO_RANGE;
  },
};
