import fs from 'node:fs';
import path from 'node:path';
import { type DevNo, devNoText, splitDevNo } from '../../base/devno.js';
import { fsNative } from '../../io/fs-native.js';
import { mounts } from '../system/loop.js';
import { dmError } from './errors.js';

// The block devices behind dmsetup's names: a table's devices resolved to
// their numbers, the /dev/mapper/NAME nodes thinfuse makes (a block special
// file with the loop device's numbers, so mount, mkfs and /proc/mounts see a
// real device), and what dmsetup info counts as the device's openers.

/** The dev dir dmsetup uses: --dev-dir, else $DM_DEV_DIR/mapper, else /dev/mapper. */
export function devDir(option?: string): string {
  if (option) return path.resolve(option);
  return path.join(process.env.DM_DEV_DIR ?? '/dev', 'mapper');
}

export function nodePath(dir: string, name: string): string {
  return path.join(dir, name);
}

/** A table's device argument (a path or MAJ:MIN) as a path, its numbers and whether it is a block device. */
export interface ResolvedDevice {
  path: string;
  devNo: DevNo | undefined;
  isBlock: boolean;
}

export function resolveDevice(arg: string, ioctl: string, name: string): ResolvedDevice {
  let p = arg;
  const mm = /^(\d+):(\d+)$/.exec(arg);
  if (mm) p = `/sys/dev/block/${arg}`;
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch {
    throw dmError('DEV_MISSING', ioctl, name, 'ENODEV', `device ${arg} not found`);
  }
  if (mm) {
    const dev = fs.realpathSync(p).split('/').pop()!;
    return { path: `/dev/${dev}`, devNo: { major: Number(mm[1]), minor: Number(mm[2]) }, isBlock: true };
  }
  if (st.isBlockDevice()) return { path: path.resolve(p), devNo: splitDevNo(st.rdev), isBlock: true };
  if (st.isFile()) return { path: path.resolve(p), devNo: undefined, isBlock: false };
  throw dmError('EINVAL_ARG', ioctl, name, 'ENOTBLK', `${arg} is neither a block device nor a regular file`);
}

export function devNoOf(devPath: string): DevNo {
  return splitDevNo(fs.statSync(devPath).rdev);
}

/** Makes DIR/NAME a block special file with the numbers of `target`. */
export function makeNode(dir: string, name: string, target: DevNo): void {
  fs.mkdirSync(dir, { recursive: true });
  const p = nodePath(dir, name);
  fs.rmSync(p, { force: true });
  fsNative.mknod(p, fs.constants.S_IFBLK | 0o660, target.major, target.minor);
}

export function removeNode(dir: string, name: string): void {
  fs.rmSync(nodePath(dir, name), { force: true });
}

/** Mountpoints of filesystems on the device (by its numbers, as /proc/self/mountinfo names them). */
export function mountsOn(d: DevNo): string[] {
  const text = devNoText(d);
  return mounts().filter((m) => m.device === text).map((m) => m.mountpoint);
}

/** /sys/dev/block/MAJ:MIN/holders: devices built on this one (a loop, another dm device). */
function holders(d: DevNo): number {
  try {
    return fs.readdirSync(`/sys/dev/block/${devNoText(d)}/holders`).length;
  } catch {
    return 0;
  }
}

/** What dmsetup info shows as Open count for a device thinfuse serves: its mounts and holders (the kernel counts opens; these are the ones that keep it busy). */
export function openers(d: DevNo): number {
  // A filesystem mounted twice (bind mounts) holds the device once.
  return (mountsOn(d).length > 0 ? 1 : 0) + holders(d);
}

/** The device's read-ahead in sectors (dmsetup info's Read Ahead). */
export function readAheadSectors(d: DevNo): number {
  try {
    return Number(fs.readFileSync(`/sys/dev/block/${devNoText(d)}/queue/read_ahead_kb`, 'utf8').trim()) * 2;
  } catch {
    return 256;
  }
}

/** The control node of a real device-mapper, where libdm looks for it ($DM_DEV_DIR/mapper/control), if there is one: thinfuse must not pretend to be it. */
export function kernelDeviceMapper(): string | undefined {
  for (const p of new Set([path.join(devDir(), 'control'), '/dev/mapper/control'])) {
    try {
      if (fs.statSync(p).isCharacterDevice()) return p;
    } catch {
      // Not there.
    }
  }
  return undefined;
}
