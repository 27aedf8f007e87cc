import fs from 'node:fs';
import path from 'node:path';
import { ThinError } from '../../base/errors.js';
import { native } from '../../io/native.js';
import { writeFileAtomic } from '../../io/pool-files.js';
import type { Table } from './table.js';

// What `thinfuse dmsetup` has made, kept where the kernel would keep it in
// memory: STATE/state.json (default /var/lib/thinfuse/dmsetup, or
// THINFUSE_DM_STATE). It survives a restart of the machine, as device
// activations in a udev-less host's boot scripts do: the next command finds
// the pool daemons gone and starts them again (see lifecycle.ts).
//
//   STATE/state.json   {"version": 1, "devices": {NAME: DmDevice}}
//   STATE/lock         flock(2): one dmsetup command changes the state at a time
//   STATE/pools/NAME/  a pool's directory: `metadata` and `data` are symlinks
//                      to the table's devices; config and names as any pool's
//   STATE/mnt/NAME/    where the pool's daemon serves its thin devices (FUSE)

export interface DmDevice {
  name: string;
  /** The live table. */
  table: Table;
  /** A table loaded by reload, live at the next resume. */
  inactive?: Table;
  suspended: boolean;
  /** Mountpoints this device's suspend froze (fsfreeze), thawed by resume. */
  frozen?: string[];
  /** A thin device: the loop device over its served file. */
  loop?: string;
  /** A pool: the loop device that stands for the pool device when the data device is a regular file. */
  poolLoop?: string;
  /** A pool: its serving daemon. */
  pid?: number;
  /** A pool on loop devices: their backing files at create, checked before the pool is served again (after a reboot a loop number may name another file). */
  backing?: { metadata?: string; data?: string };
  /** Event number offset: events seen by earlier daemons of this pool (a restart starts the pool's own count at 0). */
  eventBase?: number;
}

export interface DmState {
  version: 1;
  devices: Record<string, DmDevice>;
}

export const DEFAULT_STATE_DIR = '/var/lib/thinfuse/dmsetup';

export class StateDir {
  constructor(readonly dir: string) {}

  static fromEnv(dir?: string): StateDir {
    return new StateDir(path.resolve(dir ?? process.env.THINFUSE_DM_STATE ?? DEFAULT_STATE_DIR));
  }

  poolDir(name: string): string {
    return path.join(this.dir, 'pools', name);
  }

  mountpoint(name: string): string {
    return path.join(this.dir, 'mnt', name);
  }

  read(): DmState {
    const file = path.join(this.dir, 'state.json');
    if (!fs.existsSync(file)) return { version: 1, devices: {} };
    try {
      const s = JSON.parse(fs.readFileSync(file, 'utf8')) as DmState;
      if (s.version !== 1 || typeof s.devices !== 'object') throw new Error('not a version 1 state');
      return s;
    } catch (e) {
      throw new ThinError('EINVAL_ARG', `${file} is damaged (${(e as Error).message}); remove it and create the devices again`);
    }
  }

  write(s: DmState): void {
    writeFileAtomic(path.join(this.dir, 'state.json'), `${JSON.stringify(s, null, 1)}\n`);
  }

  /** Runs fn holding STATE/lock (waits for another dmsetup command to finish). */
  async locked<T>(fn: () => Promise<T>): Promise<T> {
    fs.mkdirSync(this.dir, { recursive: true });
    const fd = fs.openSync(path.join(this.dir, 'lock'), fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
    try {
      native.flock(fd, true, false);
      return await fn();
    } finally {
      fs.closeSync(fd);
    }
  }
}
