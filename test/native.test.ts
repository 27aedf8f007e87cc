import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import test, { type ExecutionContext } from 'ava';

import { isErrnoError, native } from '../src/io/native.js';
import { cachedBytes } from './_helpers/page-cache.js';

const MiB = 1024 * 1024;

/** A fresh temp dir, removed when the test ends. */
function tempDir(t: ExecutionContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinfuse-native-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Opens `file`, closing the fd when the test ends (unless already closed). */
function openFd(t: ExecutionContext, file: string, flags: string): number {
  const fd = fs.openSync(file, flags);
  t.teardown(() => {
    try {
      fs.closeSync(fd);
    } catch {
      // already closed by the test
    }
  });
  return fd;
}

function pattern(length: number, seed: number): Buffer {
  const buf = Buffer.alloc(length);
  for (let i = 0; i < length; i++) buf[i] = ((i * 31 + seed) % 251) + 1; // never zero
  return buf;
}

test('constants are the Linux values', (t) => {
  t.is(native.FALLOC_FL_KEEP_SIZE, 1);
  t.is(native.FALLOC_FL_PUNCH_HOLE, 2);
  t.is(native.FALLOC_FL_ZERO_RANGE, 0x10);
});

test('punchHole deallocates a range: zeros read back, st_blocks drops, size unchanged', (t) => {
  const file = path.join(tempDir(t), 'data');
  const fd = openFd(t, file, 'w+');
  const data = pattern(4 * MiB, 7);
  fs.writeSync(fd, data, 0, data.length, 0);
  fs.fsyncSync(fd);
  const before = fs.fstatSync(fd);

  native.punchHole(fd, MiB, 2 * MiB);
  const after = fs.fstatSync(fd);

  t.is(after.size, before.size);
  t.true(after.blocks < before.blocks, `st_blocks ${before.blocks} -> ${after.blocks}`);
  // 2 MiB = 4096 512-byte sectors freed (allow filesystem slack)
  t.true(before.blocks - after.blocks >= 3500, `freed only ${before.blocks - after.blocks} sectors`);

  const back = Buffer.alloc(data.length);
  fs.readSync(fd, back, 0, back.length, 0);
  t.true(back.subarray(0, MiB).equals(data.subarray(0, MiB)));
  t.true(back.subarray(MiB, 3 * MiB).equals(Buffer.alloc(2 * MiB)));
  t.true(back.subarray(3 * MiB).equals(data.subarray(3 * MiB)));
});

test('punchHoleAsync deallocates too; zero length is a no-op', async (t) => {
  const file = path.join(tempDir(t), 'data');
  const fd = openFd(t, file, 'w+');
  const data = pattern(MiB, 3);
  fs.writeSync(fd, data, 0, data.length, 0);
  native.punchHole(fd, 0, 0);
  await native.punchHoleAsync(fd, 0, 0);
  await native.punchHoleAsync(fd, 64 * 1024, 128 * 1024);
  const back = fs.readFileSync(file);
  t.is(back.length, MiB);
  t.true(back.subarray(64 * 1024, 192 * 1024).equals(Buffer.alloc(128 * 1024)));
  t.true(back.subarray(192 * 1024).equals(data.subarray(192 * 1024)));
});

test('preallocateAsync allocates holes as zeros and keeps data; dataFrom finds the next data past holes', async (t) => {
  const file = path.join(tempDir(t), 'data');
  const fd = openFd(t, file, 'w+');
  fs.ftruncateSync(fd, 4 * MiB);
  const data = pattern(64 * 1024, 9);
  fs.writeSync(fd, data, 0, data.length, 2 * MiB);
  t.is(native.dataFrom(fd, 0), 2 * MiB, 'the hole before the data');
  t.is(native.dataFrom(fd, 2 * MiB + 100), 2 * MiB + 100, 'inside data: itself');
  t.is(native.dataFrom(fd, 3 * MiB), 2 ** 53, 'no data after: 2^53');
  const before = fs.fstatSync(fd).blocks;
  await native.preallocateAsync(fd, 0, 4 * MiB);
  t.true(fs.fstatSync(fd).blocks > before, 'host space allocated');
  t.is(fs.fstatSync(fd).size, 4 * MiB, 'size unchanged');
  // Before anything reads it: the filesystem then counts cached pages over unwritten extents as data.
  t.is(native.dataFrom(fd, 0), 2 * MiB, 'preallocated (unwritten) space still counts as a hole');
  const back = fs.readFileSync(file);
  t.true(back.subarray(0, 2 * MiB).equals(Buffer.alloc(2 * MiB)), 'preallocated space reads as zeros');
  t.true(back.subarray(2 * MiB, 2 * MiB + data.length).equals(data), 'data untouched');
});

test('dropCacheAsync takes a flushed range out of the page cache and leaves the data and the rest alone', async (t) => {
  // The temp dir's filesystem must keep a page cache (tmpfs pages cannot be dropped).
  const fsType = execFileSync('stat', ['-f', '-c', '%T', os.tmpdir()], { encoding: 'utf8' }).trim();
  t.not(fsType, 'tmpfs', `${os.tmpdir()} is tmpfs: point TMPDIR at a disk filesystem`);
  const file = path.join(tempDir(t), 'data');
  const fd = openFd(t, file, 'w+');
  const data = pattern(4 * MiB, 3);
  // In 64 KiB writes, as the pool writes blocks: the kernel drops a cached
  // folio only when the range covers all of it, and one 4 MiB write may be
  // cached in folios larger than the range.
  for (let at = 0; at < data.length; at += 64 * 1024) fs.writeSync(fd, data, at, 64 * 1024, at);
  fs.fdatasyncSync(fd);
  t.is(cachedBytes(file), 4 * MiB, 'written pages are cached');
  await native.dropCacheAsync(fd, MiB, 2 * MiB);
  t.is(cachedBytes(file), 2 * MiB, 'the dropped 2 MiB left the cache, the rest stayed');
  await native.dropCacheAsync(fd, 0, 0);
  t.true(fs.readFileSync(file).equals(data), 'the data reads back unchanged');
  await t.throwsAsync(native.dropCacheAsync(1_000_000, 0, MiB), { code: 'EBADF' }, 'a bad descriptor rejects with its errno');
});

test('zeroRange zeroes (or reports EOPNOTSUPP so callers can fall back)', (t) => {
  const file = path.join(tempDir(t), 'data');
  const fd = openFd(t, file, 'w+');
  const data = pattern(256 * 1024, 5);
  fs.writeSync(fd, data, 0, data.length, 0);
  try {
    native.zeroRange(fd, 4096, 8192);
  } catch (e) {
    t.true(isErrnoError(e, 'EOPNOTSUPP'), String(e));
    return;
  }
  const back = fs.readFileSync(file);
  t.is(back.length, data.length);
  t.true(back.subarray(4096, 12288).equals(Buffer.alloc(8192)));
  t.true(back.subarray(12288).equals(data.subarray(12288)));
});

test('raw fallocate with KEEP_SIZE preallocates without growing the file', (t) => {
  const file = path.join(tempDir(t), 'data');
  const fd = openFd(t, file, 'w+');
  native.fallocate(fd, native.FALLOC_FL_KEEP_SIZE, 0, MiB);
  const st = fs.fstatSync(fd);
  t.is(st.size, 0);
  t.true(st.blocks >= 2048);
});

test('errors carry the errno name in code', async (t) => {
  const file = path.join(tempDir(t), 'data');
  fs.writeFileSync(file, 'x');
  const fd = openFd(t, file, 'r'); // read-only: fallocate needs write access
  const e = t.throws(() => native.punchHole(fd, 0, 4096));
  t.true(isErrnoError(e, 'EBADF'), String(e));
  t.is((e as unknown as { syscall: string }).syscall, 'fallocate');
  const f = t.throws(() => native.fallocate(fd, native.FALLOC_FL_KEEP_SIZE, 0, 0));
  t.true(isErrnoError(f, 'EBADF') || isErrnoError(f, 'EINVAL'), String(f));
  await t.throwsAsync(native.punchHoleAsync(fd, 0, 4096), { code: 'EBADF' });
  await t.throwsAsync(native.copyFileRange(fd, 0, fd, 0, 1), { code: 'EBADF' });
  t.throws(() => native.punchHole(fd, -1, 4096), { instanceOf: RangeError });
  t.throws(() => native.punchHole(fd, 0.5, 4096), { instanceOf: RangeError });
  t.throws(() => native.punchHole(fd, 2 ** 53, 1), { instanceOf: RangeError });
  // async calls reject (not throw) on bad arguments
  await t.throwsAsync(native.copyFileRange(fd, -1, fd, 0, 1), { instanceOf: RangeError });
});

test('copyFileRange copies bytes between offsets and files', async (t) => {
  const dir = tempDir(t);
  const src = path.join(dir, 'src');
  const dst = path.join(dir, 'dst');
  const data = pattern(3 * MiB + 123, 11);
  fs.writeFileSync(src, data);
  const fdIn = openFd(t, src, 'r');
  const fdOut = openFd(t, dst, 'w+');

  const n = await native.copyFileRange(fdIn, 1000, fdOut, 5000, 2 * MiB);
  t.is(n, 2 * MiB);
  const out = fs.readFileSync(dst);
  t.is(out.length, 5000 + 2 * MiB);
  t.true(out.subarray(0, 5000).equals(Buffer.alloc(5000)));
  t.true(out.subarray(5000).equals(data.subarray(1000, 1000 + 2 * MiB)));

  // stops at the end of the input
  const tail = await native.copyFileRange(fdIn, data.length - 100, fdOut, 0, MiB);
  t.is(tail, 100);
  t.true(fs.readFileSync(dst).subarray(0, 100).equals(data.subarray(data.length - 100)));

  // inside one file, to a far offset (beyond 4 GiB: exercises 64-bit offsets; sparse)
  const fd = openFd(t, src, 'r+');
  const far = 5 * 1024 * MiB + 4096;
  t.is(await native.copyFileRange(fd, 0, fd, far, 65536), 65536);
  const back = Buffer.alloc(65536);
  fs.readSync(fd, back, 0, back.length, far);
  t.true(back.equals(data.subarray(0, 65536)));
  t.is(fs.fstatSync(fd).size, far + 65536);

  t.is(await native.copyFileRange(fdIn, 0, fdOut, 0, 0), 0);
});

test('flock: a second open file description cannot take the exclusive lock until the first lets go', (t) => {
  const file = path.join(tempDir(t), 'lock');
  fs.writeFileSync(file, '');
  const fd1 = openFd(t, file, 'r+');
  const fd2 = openFd(t, file, 'r+');

  t.true(native.flock(fd1, true, true));
  t.false(native.flock(fd2, true, true));
  t.false(native.flock(fd2, false, true)); // not even shared
  native.funlock(fd1);
  t.true(native.flock(fd2, true, true));
  native.funlock(fd2);

  // closing the holder releases the lock as well
  t.true(native.flock(fd1, true, true));
  t.false(native.flock(fd2, true, true));
  fs.closeSync(fd1);
  t.true(native.flock(fd2, true, false));
  native.funlock(fd2);
});

test('flock: shared locks coexist', (t) => {
  const file = path.join(tempDir(t), 'lock');
  fs.writeFileSync(file, '');
  const fd1 = openFd(t, file, 'r');
  const fd2 = openFd(t, file, 'r');
  t.true(native.flock(fd1, false, true));
  t.true(native.flock(fd2, false, true));
  const fd3 = openFd(t, file, 'r');
  t.false(native.flock(fd3, true, true));
});
