// Paths from an archive, made safe to use under a root directory.
//
// Docker unpacks layers inside a chroot, so a symlink in the layer (or in
// the lower layers) can never lead outside the root. We unpack in-process,
// so we resolve paths the way the chroot would: every symlink met on the way
// is followed *within* root (an absolute target starts again at root, `..`
// stops at root), like Go's securejoin. The last component is never followed:
// callers create, replace or delete that name itself.

import fs from 'node:fs';
import path from 'node:path';

import { ThinError } from '../../../base/errors.js';

/** Linux's limit on symlinks followed while resolving one path. */
const MAX_SYMLINKS = 40;

/**
 * An entry name made relative and normalised ('' is the root itself).
 * Leading slashes are dropped, as Docker does; a name that climbs above the
 * root with `..` is refused.
 */
export function cleanName(name: string, what = 'entry'): string {
  if (name.includes('\0')) throw new ThinError('BAD_ARCHIVE', `${what} name contains a NUL byte: the archive is corrupt`);
  const lexical = path.posix.normalize(name.replace(/^\/+/, '') || '.');
  if (lexical === '..' || lexical.startsWith('../')) {
    throw new ThinError('BAD_ARCHIVE', `${what} ${JSON.stringify(name)} climbs out of the root with '..': refusing the archive`);
  }
  return lexical === '.' || lexical === './' ? '' : lexical.replace(/\/+$/, '');
}

/** Host path of `rel` (a cleanName result) under root, following every symlink on the way within root, the last one included. */
export function resolveInRoot(root: string, rel: string): string {
  let todo = rel.split('/').filter((p) => p !== '' && p !== '.');
  let done: string[] = [];
  let links = 0;
  while (todo.length > 0) {
    const part = todo.shift() as string;
    if (part === '..') {
      done.pop();
      continue;
    }
    const host = path.join(root, ...done, part);
    let target: string | null = null;
    try {
      if (fs.lstatSync(host).isSymbolicLink()) target = fs.readlinkSync(host);
    } catch (e) {
      if (!isMissing(e)) throw e;
    }
    if (target === null) {
      done.push(part);
      continue;
    }
    if (++links > MAX_SYMLINKS) {
      throw new ThinError('BAD_ARCHIVE', `too many levels of symlinks resolving ${JSON.stringify(rel)} in the layer root`);
    }
    if (target.startsWith('/')) done = [];
    todo = [...target.split('/').filter((p) => p !== '' && p !== '.'), ...todo];
  }
  return path.join(root, ...done);
}

/** Host path of `rel` under root: its parent resolved within root, the last component as it is (not followed). */
export function hostPath(root: string, rel: string): string {
  if (rel === '') return root;
  return path.join(resolveInRoot(root, path.posix.dirname(rel)), path.posix.basename(rel));
}

function isMissing(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}
