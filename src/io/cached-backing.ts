import { LRUCache } from 'lru-cache';
import type { BackingFile } from './backing-file.js';

// An LRU read cache over the data file, in 64 KiB units keyed by their place
// in the file: a data block is cached once, however many thin devices
// (snapshots of one image) map it. Every change goes through this wrapper,
// so it stays exact: a write, punch or copy drops the units it touched, and
// a read that was loading a unit while it changed does not keep its copy.

export const CACHE_UNIT = 64 * 1024;

export interface DataCacheStats {
  hits: number;
  misses: number;
  evictions: number;
  bytes: number;
  maxBytes: number;
}

export class CachedBacking implements BackingFile {
  private readonly lru: LRUCache<number, Buffer>;
  /** Units being loaded; set to stale when the unit changes meanwhile. */
  private readonly loading = new Map<number, { stale: boolean; done: Promise<Buffer> }>();
  readonly stats = { hits: 0, misses: 0, evictions: 0 };

  constructor(private readonly inner: BackingFile, readonly maxBytes: number) {
    this.lru = new LRUCache<number, Buffer>({
      maxSize: Math.max(CACHE_UNIT, maxBytes),
      sizeCalculation: (b) => b.length,
      dispose: (_v, _k, reason) => {
        if (reason === 'evict') this.stats.evictions++;
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
    return { ...this.stats, bytes: this.lru.calculatedSize ?? 0, maxBytes: this.maxBytes };
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    const first = Math.floor(offset / CACHE_UNIT);
    const last = Math.floor((offset + buf.length - 1) / CACHE_UNIT);
    const jobs: Promise<void>[] = [];
    for (let u = first; u <= last; u++) {
      const from = Math.max(offset, u * CACHE_UNIT);
      const to = Math.min(offset + buf.length, (u + 1) * CACHE_UNIT);
      const hit = this.lru.get(u);
      if (hit) {
        this.stats.hits++;
        hit.copy(buf, from - offset, from - u * CACHE_UNIT, to - u * CACHE_UNIT);
        continue;
      }
      jobs.push(this.unit(u).then((data) => {
        data.copy(buf, from - offset, from - u * CACHE_UNIT, to - u * CACHE_UNIT);
      }));
    }
    await Promise.all(jobs);
  }

  /** Loads one unit, sharing the load with concurrent readers of it. */
  private unit(u: number): Promise<Buffer> {
    const running = this.loading.get(u);
    if (running && !running.stale) return running.done;
    this.stats.misses++;
    const state = { stale: false, done: undefined as unknown as Promise<Buffer> };
    state.done = (async () => {
      const data = Buffer.allocUnsafe(CACHE_UNIT);
      try {
        await this.inner.read(data, u * CACHE_UNIT);
        if (!state.stale) this.lru.set(u, data);
        return data;
      } finally {
        if (this.loading.get(u) === state) this.loading.delete(u);
      }
    })();
    this.loading.set(u, state);
    return state.done;
  }

  private drop(offset: number, length: number): void {
    if (length <= 0) return;
    const first = Math.floor(offset / CACHE_UNIT);
    const last = Math.floor((offset + length - 1) / CACHE_UNIT);
    for (let u = first; u <= last; u++) {
      this.lru.delete(u);
      const l = this.loading.get(u);
      if (l) l.stale = true;
    }
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    try {
      await this.inner.write(buf, offset);
    } finally {
      this.drop(offset, buf.length);
    }
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
