import { LRUCache } from 'lru-cache';
import type { BackingFile } from './backing-file.js';

// An LRU read cache over the data file, in 4 KiB units keyed by their place
// in the file: a data block is cached once, however many thin devices
// (snapshots of one image) map it. Every change goes through this wrapper,
// so it stays exact: a write, punch or copy drops the units it touched, and
// a read that was loading a unit while it changed does not keep its copy.
// A miss reads each run of missing units with one request; evicted unit
// buffers are reused, so a scan does not churn the allocator.

export const CACHE_UNIT = 4096;
const SPARE_LIMIT = 1024;
/** Reads up to this size are kept in the cache; larger ones are scans. */
const KEEP_READS_UP_TO = 32 * 1024;

export interface DataCacheStats {
  hits: number;
  misses: number;
  evictions: number;
  bytes: number;
  maxBytes: number;
}

export class CachedBacking implements BackingFile {
  private readonly lru: LRUCache<number, Buffer>;
  /** Loads in flight per unit; marked stale when the unit changes meanwhile. */
  private readonly loading = new Map<number, { stale: boolean }[]>();
  private readonly spare: Buffer[] = [];
  readonly stats = { hits: 0, misses: 0, evictions: 0 };
  /**
   * Whether a unit at this file offset may be kept. A writer that bypasses
   * this wrapper (the FUSE fast path) refuses its blocks here and calls
   * invalidate() when it starts and stops writing them.
   */
  admit: (offset: number) => boolean = () => true;

  constructor(readonly inner: BackingFile, readonly maxBytes: number) {
    this.lru = new LRUCache<number, Buffer>({
      max: Math.max(1, Math.floor(maxBytes / CACHE_UNIT)),
      dispose: (v, _k, reason) => {
        if (reason === 'evict') this.stats.evictions++;
        if (this.spare.length < SPARE_LIMIT) this.spare.push(v);
      },
    });
  }

  get path(): string {
    return this.inner.path;
  }

  size(): number {
    return this.inner.size();
  }

  cacheStats(): DataCacheStats {
    return { ...this.stats, bytes: this.lru.size * CACHE_UNIT, maxBytes: this.maxBytes };
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    const first = Math.floor(offset / CACHE_UNIT);
    const last = Math.floor((offset + buf.length - 1) / CACHE_UNIT);
    const jobs: Promise<void>[] = [];
    let runStart = -1;
    for (let u = first; u <= last + 1; u++) {
      const hit = u <= last ? this.lru.get(u) : undefined;
      if (hit) {
        this.stats.hits++;
        this.copyOut(hit, u, buf, offset);
      }
      if (!hit && u <= last && runStart < 0) runStart = u;
      if ((hit || u > last) && runStart >= 0) {
        jobs.push(this.load(runStart, u, buf, offset));
        runStart = -1;
      }
    }
    await Promise.all(jobs);
  }

  /** Copies the part of unit u that [offset, offset+buf.length) covers. */
  private copyOut(unit: Buffer, u: number, buf: Buffer, offset: number): void {
    const from = Math.max(offset, u * CACHE_UNIT);
    const to = Math.min(offset + buf.length, (u + 1) * CACHE_UNIT);
    unit.copy(buf, from - offset, from - u * CACHE_UNIT, to - u * CACHE_UNIT);
  }

  /**
   * Reads units [first, end) with one request, straight into the caller's
   * buffer when it covers them, and keeps them unless the request is large:
   * big reads are scans (a sequential read, a copy), which would only push
   * out the small reads the cache is for.
   */
  private async load(first: number, end: number, buf: Buffer, offset: number): Promise<void> {
    this.stats.misses += end - first;
    const keep = buf.length <= KEEP_READS_UP_TO;
    const states: Array<{ stale: boolean }> = [];
    for (let u = first; keep && u < end; u++) {
      const st = { stale: false };
      states.push(st);
      const list = this.loading.get(u);
      if (list) list.push(st);
      else this.loading.set(u, [st]);
    }
    const from = first * CACHE_UNIT;
    const to = end * CACHE_UNIT;
    const direct = from >= offset && to <= offset + buf.length;
    const run = direct ? buf.subarray(from - offset, to - offset) : Buffer.allocUnsafe(to - from);
    try {
      await this.inner.read(run, from);
    } finally {
      for (let u = first; keep && u < end; u++) {
        const list = this.loading.get(u)!;
        list.splice(list.indexOf(states[u - first]!), 1);
        if (list.length === 0) this.loading.delete(u);
      }
    }
    for (let u = first; u < end; u++) {
      const part = run.subarray((u - first) * CACHE_UNIT, (u - first + 1) * CACHE_UNIT);
      if (!direct) this.copyOut(part, u, buf, offset);
      if (!keep || states[u - first]!.stale || !this.admit(u * CACHE_UNIT)) continue;
      const unit = this.spare.pop() ?? Buffer.allocUnsafeSlow(CACHE_UNIT);
      part.copy(unit);
      this.lru.set(u, unit);
    }
  }

  private drop(offset: number, length: number): void {
    if (length <= 0) return;
    const first = Math.floor(offset / CACHE_UNIT);
    const last = Math.floor((offset + length - 1) / CACHE_UNIT);
    for (let u = first; u <= last; u++) {
      this.lru.delete(u);
      for (const st of this.loading.get(u) ?? []) st.stale = true;
    }
  }

  /**
   * Forgets the cached units a range touches, including loads of it in
   * flight: a fault was set or cleared there, or the fast path wrote it.
   */
  invalidate(offset: number, length: number): void {
    const first = Math.floor(offset / CACHE_UNIT);
    const end = Math.ceil((offset + length) / CACHE_UNIT);
    if (end - first <= this.lru.size + this.loading.size) return this.drop(offset, length);
    // A range larger than the cache: visit what is cached instead of every unit.
    for (const u of [...this.lru.keys()]) if (u >= first && u < end) this.lru.delete(u);
    for (const [u, list] of this.loading) if (u >= first && u < end) for (const st of list) st.stale = true;
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    try {
      await this.inner.write(buf, offset);
    } finally {
      this.drop(offset, buf.length);
    }
  }

  dataFrom(offset: number): number {
    return this.inner.dataFrom?.(offset) ?? offset;
  }

  async preallocate(offset: number, length: number): Promise<void> {
    await this.inner.preallocate?.(offset, length);
  }

  /** The host's page cache only: this cache's own units stay. */
  async dropCache(offset: number, length: number): Promise<void> {
    await this.inner.dropCache?.(offset, length);
  }

  async punchHole(offset: number, length: number): Promise<void> {
    try {
      await this.inner.punchHole(offset, length);
    } finally {
      this.drop(offset, length);
    }
  }

  async copyWithin(from: number, to: number, length: number): Promise<void> {
    try {
      await this.inner.copyWithin(from, to, length);
    } finally {
      this.drop(to, length);
    }
  }

  async truncate(length: number): Promise<void> {
    await this.inner.truncate(length);
    this.lru.clear();
  }

  readSync(buf: Buffer, offset: number): void {
    this.inner.readSync(buf, offset);
  }

  writeSync(buf: Buffer, offset: number): void {
    try {
      this.inner.writeSync(buf, offset);
    } finally {
      this.drop(offset, buf.length);
    }
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  flushSync(): void {
    this.inner.flushSync();
  }

  close(): Promise<void> {
    this.lru.clear();
    return this.inner.close();
  }
}
