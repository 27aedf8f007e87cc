import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ThinError } from '../../base/errors.js';
import { mounts } from '../system/loop.js';
import type { FsType } from './options.js';

// The host tools the layer store runs: mkfs, mount/umount, growfs, and a
// view of which loop devices back onto which layer files. Every command
// names exactly the device or directory it acts on; nothing is unmounted
// lazily.

const SBIN = ['/usr/local/sbin', '/usr/sbin', '/sbin'];
const ENV = { ...process.env, PATH: [process.env.PATH ?? '/usr/bin:/bin', ...SBIN].join(':') };

function run(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', env: ENV, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as { stderr?: string; message: string; code?: string };
    if (err.code === 'ENOENT') throw new ThinError('IO_ERROR', `${cmd} not found: install it (xfsprogs, e2fsprogs or util-linux)`);
    const why = (err.stderr || err.message).trim().split('\n')[0];
    throw new ThinError('IO_ERROR', `${cmd} ${args.join(' ')}: ${why}`);
  }
}

export function haveTool(cmd: string): boolean {
  return [...(process.env.PATH ?? '').split(':'), ...SBIN].some((d) => d !== '' && fs.existsSync(path.join(d, cmd)));
}

/**
 * dm.fs unset: xfs when mkfs.xfs exists (Docker 1.10+ also asked the
 * kernel; here mount loads the module on demand), else ext4.
 */
export function defaultFs(): FsType {
  return haveTool('mkfs.xfs') ? 'xfs' : 'ext4';
}

/** Docker's mkfs: plain mkfs.xfs; ext4 with its tables written now and no periodic fsck. User args last. */
export function mkfs(kind: FsType, dev: string, extra: string[]): void {
  if (kind === 'xfs') {
    run('mkfs.xfs', ['-q', '-f', ...extra, dev]);
    return;
  }
  run('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard,lazy_itable_init=0,lazy_journal_init=0', ...extra, dev]);
  run('tune2fs', ['-c', '-1', '-i', '0', dev]);
}

/** Grows the filesystem to its (grown) device: xfs online at its mount, ext4 offline on the device. */
export function growFs(kind: FsType, dev: string, dir: string | undefined): void {
  if (kind === 'xfs') run('xfs_growfs', [dir!]);
  else {
    // resize2fs wants a freshly checked filesystem. e2fsck exits 1 when it
    // fixed something: it recreates the lost+found the store removed.
    const r = spawnSync('e2fsck', ['-f', '-y', dev], { encoding: 'utf8', env: ENV });
    if (r.status !== 0 && r.status !== 1) throw new ThinError('IO_ERROR', `e2fsck -f -y ${dev} exited ${r.status ?? r.signal}: ${(r.stdout + r.stderr).trim().split('\n').pop()}`);
    run('resize2fs', [dev]);
  }
}

export function mountOptionsFor(kind: FsType, extra: string[]): string[] {
  return [...(kind === 'xfs' ? ['nouuid'] : []), ...extra];
}

export function mountDev(kind: FsType, dev: string, dir: string, opts: string[]): void {
  fs.mkdirSync(dir, { recursive: true });
  const o = mountOptionsFor(kind, opts);
  run('mount', ['-t', kind, ...(o.length ? ['-o', o.join(',')] : []), dev, dir]);
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** umount DIR, retrying while it is busy for a few seconds (a process may be leaving it). Never lazy. */
export function umountDir(dir: string): void {
  let last: unknown;
  for (let i = 0; i < 25; i++) {
    try {
      run('umount', [dir]);
      return;
    } catch (e) {
      last = e;
      if (!isMounted(dir)) return;
      if (!/busy/i.test((e as Error).message)) break;
      sleepSync(200);
    }
  }
  throw new ThinError('DEV_BUSY', `cannot unmount ${dir}: ${(last as Error).message}; stop what uses it and retry`);
}

export function isMounted(dir: string): boolean {
  return mounts().some((m) => m.mountpoint === dir);
}

/** Mountpoints whose source is `dev`. */
export function mountsOf(dev: string): string[] {
  return mounts().filter((m) => m.source === dev).map((m) => m.mountpoint);
}

/** Every loop device, with its backing file as the kernel names it (without " (deleted)"). */
export function loopTable(): Array<{ dev: string; file: string }> {
  const out = run('losetup', ['--list', '--noheadings', '--raw', '--output', 'NAME,BACK-FILE']);
  return out.split('\n').filter(Boolean).map((l) => {
    const sp = l.indexOf(' ');
    const file = l.slice(sp + 1).replace(/\\x20/g, ' ').replace(/ \(deleted\)$/, '');
    return { dev: l.slice(0, sp), file };
  });
}
