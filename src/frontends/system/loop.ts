import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { ThinError } from '../../base/errors.js';

// Loop devices and mounts, through util-linux. Every command names exactly
// the device or mountpoint it acts on.

function run(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    throw runError(cmd, args, e);
  }
}

function runError(cmd: string, args: string[], e: unknown): ThinError {
  const err = e as { stderr?: string; message: string; code?: string };
  if (err.code === 'ENOENT') return new ThinError('IO_ERROR', `${cmd} not found: install util-linux`);
  const why = (err.stderr ?? err.message).trim().split('\n')[0];
  return new ThinError('IO_ERROR', `${cmd} ${args.join(' ')}: ${why}`);
}

/**
 * Runs cmd without blocking the event loop: the FUSE daemon must run what
 * touches its own files this way, since the kernel may need JS to answer
 * FUSE requests (the file's size, writes of dirty pages) before the command
 * can finish.
 */
function runAsync(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { encoding: 'utf8' }, (e, stdout, stderr) => (e ? reject(runError(cmd, args, Object.assign(e, { stderr }))) : resolve(stdout)));
  });
}

export function attachLoop(file: string, directIo?: boolean, readOnly = false): string {
  const args = ['--find', '--show'];
  if (directIo !== undefined) args.push(`--direct-io=${directIo ? 'on' : 'off'}`);
  if (readOnly) args.push('--read-only');
  return run('losetup', [...args, file]).trim();
}

export function detachLoop(dev: string): void {
  run('losetup', ['-d', dev]);
}

/** Loop devices whose backing file is `file`, from sysfs (losetup would stat the file: a FUSE request). */
export function loopsOf(file: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync('/sys/block').filter((n) => n.startsWith('loop'));
  } catch {
    return [];
  }
  return names.filter((n) => loopBackingFile(`/dev/${n}`) === file).map((n) => `/dev/${n}`);
}

/** The kernel re-reads a loop device's size from its backing file (a FUSE getattr: see runAsync). */
export async function refreshLoop(dev: string): Promise<void> {
  await runAsync('losetup', ['-c', dev]);
}

/** Writes back and drops a block device's page cache (writes to a served file: see runAsync). */
export async function flushBuffers(dev: string): Promise<void> {
  await runAsync('blockdev', ['--flushbufs', dev]);
}

export function loopBackingFile(dev: string): string | undefined {
  const name = dev.replace(/^\/dev\//, '');
  try {
    return fs.readFileSync(`/sys/block/${name}/loop/backing_file`, 'utf8').trim();
  } catch {
    return undefined;
  }
}

export interface MountEntry {
  mountpoint: string;
  fstype: string;
  source: string;
  /** The st_dev of the mount, MAJOR:MINOR. */
  device: string;
}

/** /proc/self/mountinfo, with octal escapes undone. */
export function mounts(): MountEntry[] {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter(Boolean).map((line) => {
    const [left, right] = line.split(' - ');
    const f = left!.split(' ');
    const r = right!.split(' ');
    return { mountpoint: unescape(f[4]!), fstype: r[0]!, source: unescape(r[1]!), device: f[2]! };
  });
}

/** The mount that holds `path` (longest mountpoint prefix). */
export function mountOf(path: string): MountEntry | undefined {
  let best: MountEntry | undefined;
  for (const m of mounts()) {
    const inside = path === m.mountpoint || path.startsWith(m.mountpoint.endsWith('/') ? m.mountpoint : `${m.mountpoint}/`);
    if (inside && (!best || m.mountpoint.length >= best.mountpoint.length)) best = m;
  }
  return best;
}

export function unmountFuse(mountpoint: string): void {
  run('fusermount', ['-u', mountpoint]);
}

export function fsfreeze(dir: string, freeze: boolean): void {
  run('fsfreeze', [freeze ? '--freeze' : '--unfreeze', dir]);
}
