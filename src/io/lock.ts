import fs from 'node:fs';
import path from 'node:path';
import { ThinError } from '../base/errors.js';
import { native } from './native.js';

// One process opens a pool read-write. The lock is flock(2) on POOL/lock,
// held by the kernel for the open file description: a dead holder releases
// it, and a reused pid cannot inherit it. The pid written inside is only for
// the error message.

export const LOCK_FILE = 'lock';

export interface PoolLock {
  release(): void;
}

export function lockPool(dir: string): PoolLock {
  const file = path.join(dir, LOCK_FILE);
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
  let taken = false;
  try {
    taken = native.flock(fd, true, true);
  } catch (e) {
    fs.closeSync(fd);
    throw new ThinError('IO_ERROR', `cannot lock ${file}: ${(e as Error).message}`);
  }
  if (!taken) {
    const holder = fs.readFileSync(file, 'utf8').trim() || 'unknown';
    fs.closeSync(fd);
    throw new ThinError('POOL_LOCKED', `pool ${dir} is in use by process ${holder}; stop it or send the command through it`, { pid: Number(holder) || undefined });
  }
  fs.ftruncateSync(fd, 0);
  fs.writeSync(fd, `${process.pid}\n`, 0);
  return {
    release() {
      try {
        fs.ftruncateSync(fd, 0);
      } finally {
        fs.closeSync(fd);
      }
    },
  };
}
