// Typed access to native-deps/build/thinfuse_fs.node (native-deps/fs_extra.c):
// xattrs that never follow a final symlink, and mknod for device nodes and
// FIFOs — what unpacking and diffing image layers needs and Node's fs lacks.
//
// Loaded at first use, like src/io/native.ts: a missing build surfaces as
// ThinError('IO_ERROR') naming the fix. Failing calls throw plain Errors with
// the errno name in `code` (see isErrnoError in native.ts).

import { createRequire } from 'node:module';
import path from 'node:path';

import { ThinError } from '../base/errors.js';
import { packageRoot } from '../base/package-root.js';

export interface FsAddon {
  /** Sets xattr `name` of `file` (a symlink itself, not its target). */
  lsetxattr(file: string, name: string, value: Buffer): void;
  /** The value of xattr `name`, or null when the file has none. */
  lgetxattr(file: string, name: string): Buffer | null;
  /** The names of the file's xattrs, in the filesystem's order. */
  llistxattr(file: string): string[];
  /** mknod(2): `mode` includes the type bits (fs.constants.S_IFCHR, S_IFBLK, S_IFIFO). */
  mknod(file: string, mode: number, major: number, minor: number): void;
}

const ADDON_RELATIVE = path.join('native-deps', 'build', 'thinfuse_fs.node');

let loaded: FsAddon | undefined;

/** Loads the addon (once); throws ThinError('IO_ERROR') if it is not built or does not load. */
export function loadFsNative(): FsAddon {
  if (loaded !== undefined) return loaded;
  const file = path.join(packageRoot(), ADDON_RELATIVE);
  try {
    loaded = createRequire(import.meta.url)(file) as FsAddon;
    return loaded;
  } catch (e) {
    throw new ThinError(
      'IO_ERROR',
      'native file-system addon not built: run `npm run build` (needs gcc)',
      { path: file, reason: e instanceof Error ? e.message : String(e) },
      e,
    );
  }
}

/** The addon, loaded on first use of any member. */
export const fsNative: FsAddon = {
  lsetxattr: (file, name, value) => loadFsNative().lsetxattr(file, name, value),
  lgetxattr: (file, name) => loadFsNative().lgetxattr(file, name),
  llistxattr: (file) => loadFsNative().llistxattr(file),
  mknod: (file, mode, major, minor) => loadFsNative().mknod(file, mode, major, minor),
};

// Linux's dev_t encoding (glibc gnu_dev_major/minor/makedev), on the bigint
// st_rdev of a bigint lstat, since a dev_t can exceed 2^53.

/** Major number of a dev_t. */
export function devMajor(rdev: bigint): number {
  return Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
}

/** Minor number of a dev_t. */
export function devMinor(rdev: bigint): number {
  return Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
}
