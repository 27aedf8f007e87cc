import os from 'node:os';
import type { DataBlock, DevId, VirtBlock } from '../../base/units.js';
import { CachedBacking } from '../../io/cached-backing.js';
import { FaultBacking } from '../../io/fault-backing.js';
import { FileBacking } from '../../io/file-backing.js';
import type { MappingHooks, Pool } from '../../pool/pool.js';
import type { NamedDevice } from '../../pool/registry.js';
import type { FastPathBinding } from './fuse-native.js';

// The JS half of the FUSE fast path (the C half and the whole design are in
// native-deps/fastpath.h). The pool reports every mapping it looks up or
// inserts (MappingHooks.mapped) and every change of mappings before it makes
// it (revoke); this class copies the first into the native table and turns
// the second into native revocations, which wait for fast-path I/O on the
// revoked entries to finish.
//
// The data cache (CachedBacking) never sees fast-path writes. So a data block
// gets a bit in `writable` when it is first granted writable, its cached
// units are dropped then, and the cache admits none of it while the bit is
// set. The bit is cleared (and the cache range dropped again, which also
// stales loads in flight) only when a revocation reports it took that
// block's writable right away after draining. A writable entry that the
// table evicts keeps its bit: that block just stays uncached.
// Memory: the native table (3 MiB), plus one bit per data block of the pool
// here (2 MiB per TiB of pool at 64 KiB blocks).
//
// Sequential access: a device reads or writes through JS block after block
// only while the table does not know them yet, so when JS sees consecutive
// blocks it also copies the next PREFETCH mappings in (same synchronous step
// as the pool's own lookup, so just as exact).
//
// Provisioning ahead: when JS provisions a block right after the previous
// one of the same device (a sequential writer, or the writer reaching the
// end of what was provisioned ahead for it), the pool is asked to provision
// the next `window` blocks now (16, doubling while the writer keeps up, to
// MAX_AHEAD), so the writes that follow take the fast path. Those blocks are
// "speculative" until something writes them: the native table marks the
// slots its writes touch, JS writes report through wrote(). Before every
// commit and snapshot, settle() hands the pool the unwritten ones to unmap.
// An entry is `live` while the native table may write it; a revocation of a
// whole device (or a speculative entry evicted by another insert) settles
// it natively first and keeps it `cold` (only JS can write it from then on).
//
// fsync: after a JS fsync leaves the pool clean (Pool.isClean: nothing to
// commit, no data written through JS), the native side may answer fsyncs
// with one fdatasync of its own, until the pool reports any change
// (dirtied(), synchronous with the change, so before the request that made
// it is answered). A failed native fdatasync is handed to the pool by the
// next JS fsync (takeFlushError), which then fails as the pool's own would.
//
// Only a plain data file (FileBacking, optionally under the data cache and
// an injector with no faults) qualifies: delays and recording wrap the data
// file, and all their I/O must go through JS. While `thinfuse fault` has a
// fault set on the data file, the fast path is suspended (every entry
// revoked, nothing inserted), so each request meets the injector.

export interface FastPathStats {
  reads: number;
  writes: number;
  fallbacks: number;
  readBytes: number;
  writeBytes: number;
  /** Reads (or pieces of one) that went around the host page cache (O_DIRECT). */
  directReads: number;
  /** Large buffered reads (of shared blocks) copied by two threads at once. */
  splitReads: number;
  /** Early writebacks of POOL/data started after fast-path writes (one per 8 MiB written). */
  writebacks: number;
  /** Copies-on-write whose old block JS took from a FUSE thread's read-ahead. */
  cowReads: number;
}

/** Mappings copied ahead of a sequential JS-path access. */
const PREFETCH = 512;
/** A device's mappings copied into the table when it gets its record: per step (one tick), and at most. */
const WARM_STEP = 512;
const WARM_MAX = 65536;
/** The first and the largest number of blocks provisioned ahead of a sequential writer. */
const FIRST_AHEAD = 16;
const MAX_AHEAD = 512;

interface Speculative {
  dev: DevId;
  vb: VirtBlock;
  block: DataBlock;
  /** In the native table as a speculative entry (else only JS can write it). */
  live: boolean;
}

interface DeviceRecord {
  name: string;
  size: number;
  /** The last block JS reported, and the end of what was copied ahead. */
  last: number;
  ahead: number;
  /** The last block JS provisioned, the end of the last speculative run, the current window. */
  provisioned: number;
  speculatedEnd: number;
  window: number;
}

export class FastPath implements MappingHooks {
  /** Devices with a native record (name and size), by dev id. */
  private readonly records = new Map<DevId, DeviceRecord>();
  private prefetching = false;
  private suspended = false;
  private writable: Uint8Array;
  private closed = false;
  private readonly speculative = new Map<string, Speculative>();
  /** What the native side was last told: an fsync may be a lone fdatasync. */
  private clean = false;

  private constructor(
    private readonly pool: Pool,
    private readonly native: FastPathBinding,
    private readonly cache: CachedBacking | undefined,
    fd: number,
  ) {
    this.writable = new Uint8Array(Math.ceil(pool.md.nrDataBlocks / 8));
    native.configure(fd, pool.blockBytes, pool.md.nrDataBlocks);
    if (cache) cache.admit = (offset) => !this.isWritable(Math.floor(offset / pool.blockBytes));
  }

  /** A fast path for the pool, or undefined when its data file is not a plain file. */
  static attach(pool: Pool, native: FastPathBinding): FastPath | undefined {
    const cache = pool.data instanceof CachedBacking ? pool.data : undefined;
    const outer = cache ? cache.inner : pool.data;
    const faults = outer instanceof FaultBacking ? outer : undefined;
    const file = faults ? faults.file : outer;
    if (!(file instanceof FileBacking)) return undefined;
    const fp = new FastPath(pool, native, cache, file.descriptor);
    pool.setMappingHooks(fp);
    if (faults) {
      fp.suspend(faults.list().length > 0);
      faults.onChange = (list) => fp.suspend(list.length > 0);
    }
    return fp;
  }

  /** Gives the device a native record with its current name and size (before each JS request). */
  ensure(d: NamedDevice): void {
    if (this.closed) return;
    const r = this.records.get(d.devId);
    if (r && r.name === d.name && r.size === d.size) return;
    if (this.native.enable(d.devId, d.name, d.size)) {
      const record = { name: d.name, size: d.size, last: -2, ahead: 0, provisioned: -2, speculatedEnd: -1, window: 0 };
      this.records.set(d.devId, record);
      this.warm(d.devId, record, 0, WARM_MAX);
    }
    else this.records.delete(d.devId);
  }

  /**
   * Copies the device's mappings into the table, WARM_STEP per tick (each
   * step looks its mappings up in the tick it inserts them, so they are as
   * exact as any other insert), until WARM_MAX or the record changes. Why:
   * a device read or written at random otherwise takes the JS path once per
   * block before the fast path knows it, and a write to a shared block the
   * table does not know cannot have its copy read ahead (native-deps/fp_helpers.h).
   */
  private warm(dev: DevId, record: DeviceRecord, from: number, budget: number): void {
    setImmediate(() => {
      if (this.closed || this.suspended || this.records.get(dev) !== record) return;
      let vb = from;
      let n = 0;
      try {
        const md = this.pool.md;
        for (let m = md.nextMapped(dev, vb as VirtBlock); m && n < WARM_STEP; m = md.nextMapped(dev, (m.vb + 1) as VirtBlock)) {
          this.insert(dev, m.vb, m.block, !md.isShared(dev, m));
          vb = m.vb + 1;
          n++;
        }
      } catch {
        // The pool's own lookups will meet and report the error.
        return;
      }
      if (n === WARM_STEP && budget > n) this.warm(dev, record, vb, budget - n);
    });
  }

  mapped(dev: DevId, vb: VirtBlock, block: DataBlock, exclusive: boolean): void {
    const r = this.records.get(dev);
    if (this.closed || !r) return;
    this.insert(dev, vb, block, exclusive);
    const sequential = vb > r.last && vb <= r.last + 2;
    r.last = vb;
    if (sequential && vb + 8 >= r.ahead && !this.prefetching) this.prefetch(dev, r, vb);
  }

  ahead(dev: DevId, vb: VirtBlock): number {
    const r = this.records.get(dev);
    if (this.closed || this.suspended || !r) return 0;
    const follows = (vb > r.provisioned && vb <= r.provisioned + 2) || (vb >= r.speculatedEnd - 2 && vb <= r.speculatedEnd + 2);
    r.provisioned = vb;
    r.window = follows ? Math.min(Math.max(2 * r.window, FIRST_AHEAD), MAX_AHEAD) : 0;
    return r.window;
  }

  speculated(dev: DevId, vb: VirtBlock, block: DataBlock): void {
    const r = this.records.get(dev);
    if (this.closed || !r) return;
    this.speculative.set(`${dev}:${vb}`, { dev, vb, block, live: false });
    r.speculatedEnd = Math.max(r.speculatedEnd, vb + 1);
    this.insert(dev, vb, block, true);
  }

  wrote(dev: DevId, vb: VirtBlock): void {
    this.speculative.delete(`${dev}:${vb}`);
  }

  settle(): Array<{ dev: DevId; vb: VirtBlock; block: DataBlock }> {
    if (this.speculative.size === 0) return [];
    const unwritten = this.settleNative([...this.speculative.values()]);
    this.speculative.clear();
    return unwritten;
  }

  /**
   * Settles live entries in the native table: written ones leave the map,
   * unwritten ones turn cold (and their blocks may be cached again). Answers
   * the unwritten ones, cold ones included.
   */
  private settleNative(list: Speculative[]): Speculative[] {
    const live = list.filter((s) => s.live);
    const codes = live.length > 0 ? this.native.settle(live.flatMap((s) => [s.dev, s.vb])) : [];
    live.forEach((s, i) => {
      if (codes[i] === 1) {
        s.live = false;
        this.setWritable(s.block, false);
        this.cache?.invalidate(s.block * this.pool.blockBytes, this.pool.blockBytes);
      } else {
        this.speculative.delete(`${s.dev}:${s.vb}`);
      }
    });
    return list.filter((s) => !s.live && this.speculative.has(`${s.dev}:${s.vb}`));
  }

  /** Copies the mappings of the next PREFETCH blocks after vb (a metadata error just stops it). */
  private prefetch(dev: DevId, r: DeviceRecord, vb: number): void {
    this.prefetching = true;
    const bb = this.pool.blockBytes;
    const end = Math.min(Math.max(vb + 1, r.ahead) + PREFETCH, Math.ceil(r.size / bb));
    try {
      for (let b = Math.max(vb + 1, r.ahead); b < end; b++) {
        const m = this.pool.md.lookup(dev, b as VirtBlock);
        if (m) this.insert(dev, b as VirtBlock, m.block, !this.pool.md.isShared(dev, m));
      }
    } catch {
      // The pool's own lookups will meet and report the error.
    } finally {
      this.prefetching = false;
    }
    r.ahead = end;
  }

  /** While suspended (faults on the data file), the table stays empty and every fsync goes through JS. */
  suspend(on: boolean): void {
    if (on) this.dirtied();
    if (on && !this.suspended) this.revoke(undefined, 'all');
    this.suspended = on;
  }

  dirtied(): void {
    if (!this.clean) return;
    this.clean = false;
    this.native.setClean(false);
  }

  /** After a JS fsync: lets the native side answer the next ones while the pool stays clean. */
  offerClean(): void {
    if (this.clean || this.closed || this.suspended || !this.pool.isClean()) return;
    this.clean = true;
    this.native.setClean(true);
  }

  /** A failed native fdatasync since the last call, as an Error (undefined: none). */
  takeFlushError(): Error | undefined {
    const errno = this.native.takeFlushError();
    if (errno === 0) return undefined;
    this.clean = false;
    return Object.assign(new Error(`fdatasync: ${errnoName(errno)}`), { errno });
  }

  private insert(dev: DevId, vb: VirtBlock, block: DataBlock, exclusive: boolean): void {
    const mode = this.pool.mode;
    if (mode === 'fail' || this.suspended) return;
    const writable = exclusive && (mode === 'write' || mode === 'out_of_data_space');
    if (writable && !this.isWritable(block)) {
      this.setWritable(block, true);
      this.cache?.invalidate(block * this.pool.blockBytes, this.pool.blockBytes);
    }
    const spec = this.speculative.get(`${dev}:${vb}`);
    const fresh = spec !== undefined && !spec.live;
    if (spec) spec.live = true;
    const evicted = this.native.insert(dev, vb, block, writable, spec !== undefined, fresh);
    if (evicted) this.evicted(evicted[0], evicted[1], evicted[2] !== 0);
  }

  /** Another insert pushed a speculative entry out of the table (drained). */
  private evicted(dev: number, vb: number, written: boolean): void {
    const key = `${dev}:${vb}`;
    const s = this.speculative.get(key);
    if (!s) return;
    if (written) this.speculative.delete(key);
    else s.live = false;
  }

  revoke(dev: DevId | undefined, what: { from: number; end: number } | 'all' | 'writes'): void {
    if (this.closed) return;
    const range = typeof what === 'object' ? what : { from: -1, end: -1 };
    this.revokeSpeculative(dev, what);
    const cleared = this.native.revoke(dev ?? -1, range.from, range.end, what === 'writes');
    for (const b of cleared) {
      this.setWritable(b, false);
      this.cache?.invalidate(b * this.pool.blockBytes, this.pool.blockBytes);
    }
    for (const [id, r] of this.records) if (dev === undefined || id === dev) r.ahead = 0;
    if (what !== 'all') return;
    if (dev === undefined) this.records.clear();
    else this.records.delete(dev);
  }

  /** A range is about to be unmapped: forget it; a whole device loses the table: settle it first. */
  private revokeSpeculative(dev: DevId | undefined, what: { from: number; end: number } | 'all' | 'writes'): void {
    if (what === 'writes' || this.speculative.size === 0) return;
    const mine = [...this.speculative.values()].filter((s) => dev === undefined || s.dev === dev);
    if (what === 'all') {
      this.settleNative(mine);
      return;
    }
    for (const s of mine) if (s.vb >= what.from && s.vb < what.end) this.speculative.delete(`${s.dev}:${s.vb}`);
  }

  closing(): void {
    this.close();
  }

  /** Turns the fast path off for good (waits for its I/O): before the data file closes. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.clean = false;
    this.speculative.clear();
    this.native.configure(-1, 0, 0);
    this.records.clear();
    this.pool.setMappingHooks(undefined);
    if (this.cache) this.cache.admit = () => true;
  }

  copySource(dev: DevId, vb: VirtBlock, block: DataBlock, dst: Buffer): boolean {
    return !this.closed && !this.suspended && this.native.cowData(dev, vb, block, dst);
  }

  wroteBytes(bytes: number): void {
    if (!this.closed) this.native.countWritten(bytes);
  }

  takeWritten(): number[] {
    return this.closed ? [] : this.native.takeWritten();
  }

  /** Whether fast-path writes landed since the last call (so an fsync must flush the data file). */
  takeDirty(): boolean {
    return this.native.takeDirty();
  }

  stats(): FastPathStats {
    const [reads, writes, fallbacks, readBytes, writeBytes, directReads, splitReads, writebacks, cowReads] = this.native.stats();
    return {
      reads: reads!, writes: writes!, fallbacks: fallbacks!, readBytes: readBytes!, writeBytes: writeBytes!,
      directReads: directReads ?? 0, splitReads: splitReads ?? 0, writebacks: writebacks ?? 0, cowReads: cowReads ?? 0,
    };
  }

  private isWritable(b: number): boolean {
    return b < this.writable.length * 8 && (this.writable[b >> 3]! & (1 << (b & 7))) !== 0;
  }

  private setWritable(b: number, on: boolean): void {
    if (b >= this.writable.length * 8) {
      // The pool grew (resize --data-size).
      const grown = new Uint8Array(Math.max(Math.ceil((b + 1) / 8), this.writable.length * 2));
      grown.set(this.writable);
      this.writable = grown;
    }
    const byte = this.writable[b >> 3]!;
    this.writable[b >> 3] = on ? byte | (1 << (b & 7)) : byte & ~(1 << (b & 7));
  }
}

function errnoName(errno: number): string {
  const name = Object.entries(os.constants.errno).find(([, v]) => v === errno)?.[0];
  return name ?? `errno ${errno}`;
}
