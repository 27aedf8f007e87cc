import fs from 'node:fs';
import { promisify } from 'node:util';
import { devNoText, splitDevNo } from '../base/devno.js';
import { ThinError } from '../base/errors.js';
import { IO_CHUNK } from '../base/units.js';
import type { BackingFile } from './backing-file.js';
import { native } from './native.js';

// The BackingFile of a real sparse file on the host filesystem: positional
// reads and writes (sync and on the threadpool), fdatasync, and the native
// addon for holes, hole lookups, host space allocated ahead, page-cache drops
// and in-file copies.
//
// A block device (a loop device over a sparse file, a partition: dm-thin's
// pools on real devices) works as the file does, with three differences: its
// size is the device's (sysfs), it cannot be resized, and in-device copies
// go through a buffer (copy_file_range takes regular files only).

const preadAsync = promisify(fs.read);
const pwriteAsync = promisify(fs.write);
const fdatasyncAsync = promisify(fs.fdatasync);
const ftruncateAsync = promisify(fs.ftruncate);
const closeAsync = promisify(fs.close);

/** Turns a system error into a ThinError; a full host filesystem gets its own code. */
export function ioError(path: string, op: string, e: unknown): ThinError {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new ThinError('HOST_NO_SPACE', `${op} ${path}: the host filesystem is full; free space on it and retry`, { errno: code }, e);
  }
  return new ThinError('IO_ERROR', `${op} ${path}: ${(e as Error)?.message ?? String(e)}`, { errno: code }, e);
}

/** A sparse file on the host filesystem. */
export class FileBacking implements BackingFile {
  private length: number;
  readonly isBlockDevice: boolean;

  private constructor(readonly path: string, private readonly fd: number) {
    const st = fs.fstatSync(fd);
    this.isBlockDevice = st.isBlockDevice();
    this.length = this.isBlockDevice ? blockDeviceBytes(path, st.rdev) : st.size;
  }

  static open(path: string, writable: boolean): FileBacking {
    try {
      return new FileBacking(path, fs.openSync(path, writable ? 'r+' : 'r'));
    } catch (e) {
      throw ioError(path, 'open', e);
    }
  }

  /** Creates a new sparse file of `length` bytes; fails if it exists. */
  static create(path: string, length: number): FileBacking {
    let fd: number;
    try {
      fd = fs.openSync(path, 'wx+');
      fs.ftruncateSync(fd, length);
    } catch (e) {
      throw ioError(path, 'create', e);
    }
    return new FileBacking(path, fd);
  }

  get descriptor(): number {
    return this.fd;
  }

  size(): number {
    return this.length;
  }

  readSync(buf: Buffer, offset: number): void {
    let done = 0;
    try {
      while (done < buf.length) {
        const n = fs.readSync(this.fd, buf, done, buf.length - done, offset + done);
        if (n === 0) break;
        done += n;
      }
    } catch (e) {
      throw ioError(this.path, 'read', e);
    }
    if (done < buf.length) buf.fill(0, done);
  }

  writeSync(buf: Buffer, offset: number): void {
    let done = 0;
    try {
      while (done < buf.length) done += fs.writeSync(this.fd, buf, done, buf.length - done, offset + done);
    } catch (e) {
      throw ioError(this.path, 'write', e);
    }
    this.length = Math.max(this.length, offset + buf.length);
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    let done = 0;
    try {
      while (done < buf.length) {
        const { bytesRead } = await preadAsync(this.fd, buf, done, buf.length - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
    } catch (e) {
      throw ioError(this.path, 'read', e);
    }
    if (done < buf.length) buf.fill(0, done);
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    let done = 0;
    try {
      while (done < buf.length) {
        const { bytesWritten } = await pwriteAsync(this.fd, buf, done, buf.length - done, offset + done);
        done += bytesWritten;
      }
    } catch (e) {
      throw ioError(this.path, 'write', e);
    }
    this.length = Math.max(this.length, offset + buf.length);
  }

  async flush(): Promise<void> {
    try {
      await fdatasyncAsync(this.fd);
    } catch (e) {
      throw ioError(this.path, 'fdatasync', e);
    }
  }

  flushSync(): void {
    try {
      fs.fdatasyncSync(this.fd);
    } catch (e) {
      throw ioError(this.path, 'fdatasync', e);
    }
  }

  async punchHole(offset: number, length: number): Promise<void> {
    try {
      await native.punchHoleAsync(this.fd, offset, length);
    } catch (e) {
      throw ioError(this.path, 'punch hole in', e);
    }
  }

  dataFrom(offset: number): number {
    return native.dataFrom(this.fd, offset);
  }

  async preallocate(offset: number, length: number): Promise<void> {
    // A device's space is all there already.
    if (this.isBlockDevice) return;
    try {
      await native.preallocateAsync(this.fd, offset, length);
    } catch (e) {
      throw ioError(this.path, 'preallocate', e);
    }
  }

  async dropCache(offset: number, length: number): Promise<void> {
    try {
      await native.dropCacheAsync(this.fd, offset, length);
    } catch (e) {
      throw ioError(this.path, 'drop the page cache of', e);
    }
  }

  async copyWithin(from: number, to: number, length: number): Promise<void> {
    if (this.isBlockDevice) return this.copyThroughBuffer(from, to, length);
    try {
      for (let done = 0; done < length; done += IO_CHUNK) {
        const n = Math.min(IO_CHUNK, length - done);
        await native.copyFileRange(this.fd, from + done, this.fd, to + done, n);
      }
    } catch (e) {
      throw ioError(this.path, 'copy within', e);
    }
    this.length = Math.max(this.length, to + length);
  }

  private async copyThroughBuffer(from: number, to: number, length: number): Promise<void> {
    const buf = Buffer.allocUnsafe(Math.min(IO_CHUNK, length));
    for (let done = 0; done < length; done += buf.length) {
      const piece = buf.subarray(0, Math.min(buf.length, length - done));
      await this.read(piece, from + done);
      await this.write(piece, to + done);
    }
  }

  async truncate(length: number): Promise<void> {
    if (this.isBlockDevice) {
      if (length <= this.length) return;
      throw new ThinError('NOT_SUPPORTED', `${this.path} is a block device of ${this.length} bytes: it cannot grow to ${length}; grow the device itself first`);
    }
    try {
      await ftruncateAsync(this.fd, length);
    } catch (e) {
      throw ioError(this.path, 'resize', e);
    }
    this.length = length;
  }

  async close(): Promise<void> {
    await closeAsync(this.fd);
  }
}

/** The size of a file, or of a block device (which stat gives as 0). */
export function fileBytes(path: string): number {
  const st = fs.statSync(path);
  return st.isBlockDevice() ? blockDeviceBytes(path, st.rdev) : st.size;
}

/** A block device's size in bytes, from /sys/dev/block/MAJ:MIN/size (512-byte sectors). */
function blockDeviceBytes(path: string, rdev: number): number {
  try {
    return Number(fs.readFileSync(`/sys/dev/block/${devNoText(splitDevNo(rdev))}/size`, 'utf8').trim()) * 512;
  } catch (e) {
    throw ioError(path, 'find the size of block device', e);
  }
}
