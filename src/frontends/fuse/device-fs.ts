import os from 'node:os';
import { type ErrorCode, isThinError } from '../../base/errors.js';
import type { Pool } from '../../pool/pool.js';
import type { NamedDevice } from '../../pool/registry.js';
import { FastPath, type FastPathStats } from './fast-path.js';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, type FastPathBinding, type FuseOps } from './fuse-native.js';

// The FUSE view of a pool: one regular file per named thin device, sized as
// the device, whose bytes are the device's. Errors become errno here and
// nowhere else. With the fast path (fast-path.ts), reads and writes of
// blocks the native table knows never reach these ops; the file handle
// that open answers (dev id + 1) is what the native side keys devices by.

const E = os.constants.errno;

const ERRNO: Partial<Record<ErrorCode, number>> = {
  NO_DATA_SPACE: E.ENOSPC,
  HOST_NO_SPACE: E.ENOSPC,
  NO_METADATA_SPACE: E.ENOSPC,
  READ_ONLY: E.EROFS,
  DEV_MISSING: E.ENOENT,
  DEV_BUSY: E.EBUSY,
  OUT_OF_RANGE: E.EINVAL,
  EINVAL_ARG: E.EINVAL,
  NOT_SUPPORTED: E.EOPNOTSUPP,
};

/** The negative errno fuse-native expects for an error. */
export function toErrno(e: unknown): number {
  return -(isThinError(e) ? ERRNO[e.code] ?? E.EIO : E.EIO);
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- fuse-native's callbacks take op-specific extras
type Cb = (code: number, ...rest: any[]) => void;

export interface DeviceFsEvents {
  /** A request failed; for the daemon's log. */
  error?(op: string, name: string, e: unknown): void;
  /** A request the engine answered, and how long it took (serve --metrics). */
  done?(op: string, seconds: number, failed: boolean): void;
}

export class DeviceFs {
  private readonly opened = new Map<string, number>();
  private readonly started = new Date();
  private inFlight = 0;
  private idle: Array<() => void> = [];
  private readonly fast: FastPath | undefined;

  /** opts.fastPath: the patched fuse-native's table; used when the pool's data file is a plain file. */
  constructor(private readonly pool: Pool, private readonly events: DeviceFsEvents = {}, opts: { fastPath?: FastPathBinding } = {}) {
    this.fast = opts.fastPath ? FastPath.attach(pool, opts.fastPath) : undefined;
  }

  /** Fast-path counters, or null when it is off. */
  fastPathStats(): FastPathStats | null {
    return this.fast?.stats() ?? null;
  }

  /**
   * Turns the fast path off, waiting for its I/O, and makes its writes durable
   * (the pool's close commits, but knows nothing of them); call before the pool closes.
   */
  async close(): Promise<void> {
    if (!this.fast) return;
    await this.pool.settleSpeculation();
    this.fast.close();
    if (this.fast.takeDirty()) await this.pool.data.flush();
  }

  /** Names of device files open now (a loop device holds its file open). */
  openDevices(): string[] {
    return [...this.opened.keys()].sort();
  }

  /** Resolves when no request is running. */
  async drain(): Promise<void> {
    if (this.inFlight > 0) await new Promise<void>((r) => this.idle.push(r));
  }

  /**
   * A directory's entries, or undefined if path is no directory. Namespaced
   * names (`layer/<id>`, the layer store's) appear as files in a directory
   * named after their namespace, which exists while it holds a device.
   */
  private entries(path: string): string[] | undefined {
    const names = this.pool.registry.list().filter((d) => this.pool.md.hasDevice(d.devId)).map((d) => d.name);
    if (path === '/') return [...new Set(names.map((n) => n.split('/')[0]!))];
    const prefix = `${path.slice(1)}/`;
    const inside = names.filter((n) => n.startsWith(prefix)).map((n) => n.slice(prefix.length));
    return inside.length > 0 ? inside : undefined;
  }

  private device(path: string): NamedDevice | undefined {
    const name = path.slice(1);
    const d = this.pool.registry.find(name);
    return d && this.pool.md.hasDevice(d.devId) ? d : undefined;
  }

  /** Runs a request, answering cb with its result or an errno. */
  private track(op: string, name: string, cb: Cb, fn: () => Promise<number>): void {
    this.inFlight++;
    const done = this.events.done;
    const start = done ? process.hrtime.bigint() : 0n;
    const took = () => Number(process.hrtime.bigint() - start) / 1e9;
    fn().then(
      (r) => {
        done?.(op, took(), false);
        cb(r);
      },
      (e) => {
        done?.(op, took(), true);
        this.events.error?.(op, name, e);
        cb(toErrno(e));
      },
    ).finally(() => {
      if (--this.inFlight === 0) for (const r of this.idle.splice(0)) r();
    });
  }

  private stat(d: NamedDevice) {
    const t = this.started;
    return { mtime: t, atime: t, ctime: t, nlink: 1, size: d.size, mode: 0o100600, uid: 0, gid: 0, blocks: Math.ceil(d.size / 512), blksize: this.pool.blockBytes };
  }

  ops(): FuseOps {
    const dirStat = { mtime: this.started, atime: this.started, ctime: this.started, nlink: 2, size: 4096, mode: 0o40755, uid: 0, gid: 0 };
    return {
      readdir: (path: string, cb: Cb) => {
        const names = this.entries(path);
        return names ? cb(0, names) : cb(this.device(path) ? -E.ENOTDIR : -E.ENOENT);
      },
      getattr: (path: string, cb: Cb) => {
        if (path === '/' || this.entries(path)) return cb(0, dirStat);
        const d = this.device(path);
        return d ? cb(0, this.stat(d)) : cb(-E.ENOENT);
      },
      fgetattr: (path: string, _fd: number, cb: Cb) => {
        const d = this.device(path);
        return d ? cb(0, this.stat(d)) : cb(-E.ENOENT);
      },
      open: (path: string, _flags: number, cb: Cb) => {
        const d = this.device(path);
        if (!d) return cb(-E.ENOENT);
        this.opened.set(d.name, (this.opened.get(d.name) ?? 0) + 1);
        return cb(0, d.devId + 1);
      },
      release: (path: string, _fd: number, cb: Cb) => {
        const name = path.slice(1);
        const n = (this.opened.get(name) ?? 1) - 1;
        if (n > 0) this.opened.set(name, n);
        else this.opened.delete(name);
        return cb(0);
      },
      read: (path: string, _fd: number, buf: Buffer, len: number, pos: number, cb: Cb) => {
        const d = this.device(path);
        if (!d) return cb(-E.ENOENT);
        if (pos >= d.size) return cb(0);
        const n = Math.min(len, d.size - pos);
        this.fast?.ensure(d);
        this.track('read', d.name, cb, async () => {
          await this.pool.read(d.devId, buf.subarray(0, n), pos, d.size, d.name);
          return n;
        });
      },
      write: (path: string, _fd: number, buf: Buffer, len: number, pos: number, cb: Cb) => {
        const d = this.device(path);
        if (!d) return cb(-E.ENOENT);
        if (pos >= d.size) return cb(-E.ENOSPC);
        const n = Math.min(len, d.size - pos);
        this.fast?.ensure(d);
        this.track('write', d.name, cb, async () => {
          await this.pool.write(d.devId, buf.subarray(0, n), pos, d.size, d.name);
          return n;
        });
      },
      flush: (_path: string, _fd: number, cb: Cb) => cb(0),
      fsync: (path: string, _datasync: number, _fd: number, cb: Cb) => {
        this.track('fsync', path.slice(1), cb, async () => {
          const failed = this.fast?.takeFlushError();
          if (failed) await this.pool.dataFlushFailed(failed);
          // Taken first: fast-path writes that completed before this fsync set it.
          const fastWrites = this.fast?.takeDirty() ?? false;
          await this.pool.flush(fastWrites);
          this.fast?.offerClean();
          return 0;
        });
      },
      truncate: (path: string, size: number, cb: Cb) => this.truncate(path, size, cb),
      ftruncate: (path: string, _fd: number, size: number, cb: Cb) => this.truncate(path, size, cb),
      fallocate: (path: string, _fd: number, mode: number, offset: number, length: number, cb: Cb) => this.fallocate(path, mode, offset, length, cb),
      statfs: (_path: string, cb: Cb) => {
        const dsm = this.pool.md.dsm;
        const bs = this.pool.blockBytes;
        return cb(0, { bsize: bs, frsize: bs, blocks: dsm.nrBlocks, bfree: dsm.nrFree, bavail: dsm.nrFree, files: 1024, ffree: 1024, favail: 1024, fsid: 0x7468696e, flag: 0, namemax: 255 });
      },
    };
  }

  /** Device files have the device's size; the size changes with `resize`. */
  private truncate(path: string, size: number, cb: Cb): void {
    const d = this.device(path);
    if (!d) return cb(-E.ENOENT);
    return cb(size === d.size ? 0 : -E.EPERM);
  }

  /**
   * As on a regular file: PUNCH_HOLE and ZERO_RANGE leave zeros (whole blocks
   * are discarded), mode 0 reserves nothing (thin devices allocate on write)
   * but fails past the end, since the file cannot grow. Never ENOSYS: the
   * kernel would turn fallocate off for the whole mount.
   */
  private fallocate(path: string, mode: number, offset: number, length: number, cb: Cb): void {
    const d = this.device(path);
    if (!d) return cb(-E.ENOENT);
    const zeroing = (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) !== 0;
    if ((mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) !== 0) return cb(-E.EOPNOTSUPP);
    const end = Math.min(offset + length, d.size);
    if (!zeroing) return cb(offset + length > d.size && !(mode & FALLOC_FL_KEEP_SIZE) ? -E.EFBIG : 0);
    if (offset >= end) return cb(0);
    this.track('fallocate', d.name, cb, async () => {
      await this.pool.punch(d.devId, offset, end - offset, d.size, d.name);
      return 0;
    });
  }
}
