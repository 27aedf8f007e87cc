// The patched fuse-native (native-deps/fuse-native.patch, built by
// native-deps/build.mjs): discards on a loop device reach ops.fallocate, and
// unmount is never lazy, so a busy mount refuses to go.
//
// This process is the FUSE daemon: every request is answered on its main
// thread. So nothing here touches the mount synchronously (that would
// deadlock); commands run as child processes, file access is async.
//
// Needs root, /dev/fuse, loop devices, util-linux (losetup, blkdiscard,
// fallocate) and fuse (fusermount): scripts/setup.sh installs them.

import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

import test from 'ava';

import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  type FuseError,
  type FuseInstance,
  type FuseOps,
  type FuseStat,
  loadFuse,
} from '../src/frontends/fuse/fuse-native.js';
import { isErrnoError, native } from '../src/io/native.js';

const run = promisify(execFile);

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const SIZE = 64 * MiB;
const NAME = 'disk.img';
const FILE = `/${NAME}`;
const PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE; // 3

interface FallocateCall {
  path: string;
  fd: number;
  mode: number;
  offset: number;
  length: number;
}

function pattern(length: number, seed: number): Buffer {
  const buf = Buffer.alloc(length);
  for (let i = 0; i < length; i++) buf[i] = ((i * 31 + seed) % 251) + 1; // never zero
  return buf;
}

/** Whether `mnt` is a mountpoint now (/proc/self/mountinfo; reading it does not touch the mount). */
function isMounted(mnt: string): boolean {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((line) => line.split(' ')[4] === mnt);
}

/** The backing file of a loop device, or undefined once it is detached. */
function loopBacking(dev: string): string | undefined {
  try {
    return fs.readFileSync(`/sys/block/${path.basename(dev)}/loop/backing_file`, 'utf8').trim();
  } catch {
    return undefined;
  }
}

async function waitFor(what: string, cond: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function unmount(fuse: FuseInstance): Promise<FuseError | null> {
  return new Promise((resolve) => fuse.unmount((err) => resolve(err ?? null)));
}

/** Reads [offset, offset + length) of a file without blocking this thread. */
async function readAt(file: string, offset: number, length: number): Promise<Buffer> {
  const fh = await fs.promises.open(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** A 64 MiB file backed by a sparse file; fallocate punches holes in (or zeroes) the backing file. */
function diskOps(backingFd: number, calls: FallocateCall[], E: { ENOENT: number; EIO: number; EOPNOTSUPP: number; EPERM: number; ENOSPC: number }): FuseOps {
  const now = new Date();
  const dirStat: FuseStat = { mode: 0o40755, nlink: 2, size: 4096, uid: 0, gid: 0, atime: now, mtime: now, ctime: now };
  const fileStat: FuseStat = { mode: 0o100644, nlink: 1, size: SIZE, uid: 0, gid: 0, atime: now, mtime: now, ctime: now };
  const errno = (e: unknown) => (isErrnoError(e) && typeof e.errno === 'number' ? -Math.abs(e.errno) : E.EIO);
  const getattr: NonNullable<FuseOps['getattr']> = (p, cb) => {
    if (p === '/') return cb(0, dirStat);
    if (p === FILE) return cb(0, fileStat);
    return cb(E.ENOENT);
  };
  return {
    readdir: (p, cb) => (p === '/' ? cb(0, [NAME]) : cb(E.ENOENT)),
    getattr,
    fgetattr: (p, _fd, cb) => getattr(p, cb),
    open: (p, _flags, cb) => (p === FILE ? cb(0, 42) : cb(E.ENOENT)),
    release: (_p, _fd, cb) => cb(0),
    flush: (_p, _fd, cb) => cb(0),
    fsync: (_p, _datasync, _fd, cb) => fs.fdatasync(backingFd, (err) => cb(err ? E.EIO : 0)),
    truncate: (_p, size, cb) => cb(size === SIZE ? 0 : E.EPERM),
    ftruncate: (_p, _fd, size, cb) => cb(size === SIZE ? 0 : E.EPERM),
    read: (_p, _fd, buf, len, pos, cb) => {
      if (pos >= SIZE) return cb(0);
      const n = Math.min(len, SIZE - pos);
      fs.read(backingFd, buf, 0, n, pos, (err, got) => {
        if (err) return cb(E.EIO);
        if (got < n) buf.fill(0, got, n);
        cb(n);
      });
    },
    write: (_p, _fd, buf, len, pos, cb) => {
      if (pos >= SIZE) return cb(E.ENOSPC);
      const n = Math.min(len, SIZE - pos);
      fs.write(backingFd, buf, 0, n, pos, (err, put) => cb(err ? E.EIO : put));
    },
    statfs: (_p, cb) =>
      cb(0, { bsize: 4096, frsize: 4096, blocks: SIZE / 4096, bfree: SIZE / 4096, bavail: SIZE / 4096, files: 8, ffree: 7, favail: 7, fsid: 1, flag: 0, namemax: 255 }),
    fallocate: (p, fd, mode, offset, length, cb) => {
      calls.push({ path: p, fd, mode, offset, length });
      if (p !== FILE) return cb(E.ENOENT);
      // Punching or zeroing only; the file has a fixed size, so nothing past it.
      if ((mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) !== 0) return cb(E.EOPNOTSUPP);
      if ((mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) === 0) return cb(E.EOPNOTSUPP);
      const end = Math.min(offset + length, SIZE);
      if (offset >= end) return cb(0);
      try {
        if (mode & FALLOC_FL_PUNCH_HOLE) {
          native.punchHole(backingFd, offset, end - offset);
        } else {
          try {
            native.zeroRange(backingFd, offset, end - offset);
          } catch (e) {
            if (!isErrnoError(e, 'EOPNOTSUPP')) throw e;
            native.punchHole(backingFd, offset, end - offset);
          }
        }
        return cb(0);
      } catch (e) {
        return cb(errno(e));
      }
    },
  };
}

test('patched fuse-native: loop discards arrive as fallocate; a busy mount refuses to unmount', async (t) => {
  if (process.getuid?.() !== 0) {
    t.fail('needs root (FUSE mount, losetup): run as root after scripts/setup.sh');
    return;
  }
  const Fuse = loadFuse();

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinfuse-fusenative-'));
  const mnt = path.join(dir, 'mnt');
  const backing = path.join(dir, 'backing.img');
  const image = path.join(mnt, NAME);
  fs.mkdirSync(mnt);
  const backingFd = fs.openSync(backing, 'w+');
  fs.ftruncateSync(backingFd, SIZE);
  const data = pattern(2 * MiB, 5);
  fs.writeSync(backingFd, data, 0, data.length, 0);
  fs.fsyncSync(backingFd);

  const calls: FallocateCall[] = [];
  const fuse = new Fuse(mnt, diskOps(backingFd, calls, Fuse), { fsname: 'thinfuse-test,big_writes,max_write=131072' });
  let mounted = false;
  let dev: string | undefined;

  // Undo whatever got done, also after a failure: our loop device, our mount, our files.
  t.teardown(async () => {
    if (dev !== undefined && loopBacking(dev) === image) {
      await run('losetup', ['-d', dev]).catch((e: unknown) => t.log(`teardown: losetup -d ${dev}: ${String(e)}`));
      await waitFor(`${dev} to let go of ${image}`, () => loopBacking(dev!) !== image).catch((e: unknown) => t.log(`teardown: ${String(e)}`));
    }
    if (mounted && isMounted(mnt)) {
      const err = await unmount(fuse);
      if (err && isMounted(mnt)) {
        t.log(`teardown: unmount ${mnt}: ${err.message}`);
        // The daemon (this process's FUSE thread) gone: the kernel answers ENOTCONN; umount clears it.
        const gone = await fs.promises.stat(mnt).then(
          () => false,
          (e: unknown) => isErrnoError(e, 'ENOTCONN'),
        );
        await run(gone ? 'umount' : 'fusermount', gone ? [mnt] : ['-u', mnt]).catch((e: unknown) => t.log(`teardown: ${String(e)}`));
      }
    }
    fs.closeSync(backingFd);
    if (!isMounted(mnt)) fs.rmSync(dir, { recursive: true, force: true });
    else t.log(`teardown: ${mnt} is still mounted; left ${dir} in place`);
  });

  await new Promise<void>((resolve, reject) => fuse.mount((err) => (err ? reject(err) : resolve())));
  mounted = true;
  t.true(isMounted(mnt), 'mounted');
  t.is((await fs.promises.stat(image)).size, SIZE);

  // A loop device on the image: blkdiscard becomes fallocate(PUNCH_HOLE|KEEP_SIZE).
  dev = (await run('losetup', ['--find', '--show', image])).stdout.trim();
  t.regex(dev, /^\/dev\/loop\d+$/);
  t.is(loopBacking(dev), image);
  const blocksBefore = fs.fstatSync(backingFd).blocks;

  await run('blkdiscard', ['-o', '0', '-l', String(MiB), dev]);
  const discards = calls.splice(0);
  t.true(discards.length > 0, 'blkdiscard reached ops.fallocate');
  for (const c of discards) {
    t.like(c, { path: FILE, fd: 42, mode: PUNCH });
  }
  // The block layer may split a discard: together the calls cover exactly [0, 1 MiB).
  discards.sort((a, b) => a.offset - b.offset);
  let covered = 0;
  for (const c of discards) {
    t.is(c.offset, covered, 'contiguous discard ranges');
    covered = c.offset + c.length;
  }
  t.is(covered, MiB);
  t.deepEqual(fs.readFileSync(backing).subarray(0, 2 * MiB), Buffer.concat([Buffer.alloc(MiB), data.subarray(MiB)]));
  t.true(fs.fstatSync(backingFd).blocks < blocksBefore, 'the backing file gave the space back');

  // fallocate(1) on the file itself; 64-bit offsets and lengths arrive whole (the op clamps to the file).
  await run('fallocate', ['-p', '-o', '0', '-l', String(64 * KiB), image]);
  await run('fallocate', ['-p', '-o', String(5 * GiB + 4 * KiB), '-l', String(5 * GiB + 8 * KiB), image]);
  t.deepEqual(
    calls.splice(0).map(({ mode, offset, length }) => ({ mode, offset, length })),
    [
      { mode: PUNCH, offset: 0, length: 64 * KiB },
      { mode: PUNCH, offset: 5 * GiB + 4 * KiB, length: 5 * GiB + 8 * KiB },
    ],
  );
  // ZERO_RANGE|KEEP_SIZE passes through as well.
  await run('fallocate', ['-z', '-n', '-o', String(MiB), '-l', String(64 * KiB), image]);
  t.deepEqual(
    calls.splice(0).map(({ mode, offset, length }) => ({ mode, offset, length })),
    [{ mode: FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset: MiB, length: 64 * KiB }],
  );
  t.deepEqual(await readAt(image, MiB - 4 * KiB, 72 * KiB), Buffer.concat([Buffer.alloc(68 * KiB), data.subarray(MiB + 64 * KiB, MiB + 68 * KiB)]));

  // Busy: the loop device holds the image open. The unmount fails, nothing is detached.
  const busy = await unmount(fuse);
  t.truthy(busy, 'unmount of a busy mount fails');
  t.true(busy?.unmountFailure, 'flagged as an unmount failure');
  t.regex(busy?.message ?? '', /busy/i);
  t.true(isMounted(mnt), 'still mounted');
  t.is(loopBacking(dev), image);
  t.deepEqual(await readAt(dev, MiB + 128 * KiB, 64 * KiB), data.subarray(MiB + 128 * KiB, MiB + 192 * KiB), 'the loop device still reads through the mount');
  t.deepEqual(await fs.promises.readdir(mnt), [NAME]);

  // Detached (the kernel lets go of the file asynchronously), the unmount goes through.
  await run('losetup', ['-d', dev]);
  await waitFor(`${dev} to let go of ${image}`, () => loopBacking(dev!) !== image);
  dev = undefined;
  let err = await unmount(fuse);
  for (let i = 0; err && /busy/i.test(err.message) && i < 20; i++) {
    await new Promise((r) => setTimeout(r, 100)); // udev may still hold the loop device for a moment
    err = await unmount(fuse);
  }
  t.is(err, null);
  t.false(isMounted(mnt), 'unmounted');
});
