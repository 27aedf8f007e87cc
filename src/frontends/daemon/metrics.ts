import http from 'node:http';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { ThinError } from '../../base/errors.js';
import { EVENT_KINDS } from '../../pool/events.js';
import type { Pool, PoolMode } from '../../pool/pool.js';
import type { FastPathStats } from '../fuse/fast-path.js';

// `serve --metrics HOST:PORT`: Prometheus text format over HTTP at /metrics
// (prom-client). Pool numbers, caches and the fast path's counters are read
// when scraped; requests that reach JS through FUSE and commits are
// observed as they finish. Nothing is measured without --metrics. No
// default Node metrics: some of their names fail promtool's lint.

const MODES: PoolMode[] = ['write', 'out_of_data_space', 'read_only', 'fail'];
const IO_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5];
const COMMIT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10];

export interface MetricsSources {
  pool: Pool;
  fastPath(): FastPathStats | null;
}

/** A counter whose value is read from elsewhere when scraped. */
function readCounter(reg: Registry, name: string, help: string, labelNames: string[], read: (set: (labels: Record<string, string>, v: number) => void) => void): void {
  new Counter({
    name, help, labelNames, registers: [reg],
    collect() {
      this.reset();
      read((labels, v) => this.inc(labels, v));
    },
  });
}

function gauge(reg: Registry, name: string, help: string, read: () => number): void {
  new Gauge({ name, help, registers: [reg], collect() { this.set(read()); } });
}

export class Metrics {
  readonly registry = new Registry();
  private readonly ioTotal: Counter;
  private readonly ioErrors: Counter;
  private readonly ioSeconds: Histogram;
  private readonly commitSeconds: Histogram;
  private server: http.Server | undefined;
  /** Reads and writes the engine answered (the fast path's misses). */
  private jsReadsWrites = 0;

  constructor(private readonly src: MetricsSources) {
    const reg = this.registry;
    this.ioTotal = new Counter({ name: 'thinfuse_io_requests_total', help: 'FUSE requests served by the engine (JS), by op', labelNames: ['op'], registers: [reg] });
    this.ioErrors = new Counter({ name: 'thinfuse_io_errors_total', help: 'FUSE requests the engine failed, by op', labelNames: ['op'], registers: [reg] });
    this.ioSeconds = new Histogram({ name: 'thinfuse_io_duration_seconds', help: 'Time the engine took for a FUSE request, by op', labelNames: ['op'], buckets: IO_BUCKETS, registers: [reg] });
    this.commitSeconds = new Histogram({ name: 'thinfuse_commit_duration_seconds', help: 'Time a metadata commit took (data flush included)', buckets: COMMIT_BUCKETS, registers: [reg] });
    for (const op of ['read', 'write', 'fsync', 'fallocate']) {
      this.ioTotal.inc({ op }, 0);
      this.ioErrors.inc({ op }, 0);
    }
    src.pool.eventStream.onCommit((s) => this.commitSeconds.observe(s));
    this.poolMetrics();
    this.cacheMetrics();
  }

  /** A FUSE request the engine answered. */
  observeIo(op: string, seconds: number, failed: boolean): void {
    this.ioTotal.inc({ op });
    if (op === 'read' || op === 'write') this.jsReadsWrites++;
    if (failed) this.ioErrors.inc({ op });
    this.ioSeconds.observe({ op }, seconds);
  }

  private poolMetrics(): void {
    const reg = this.registry;
    const { pool } = this.src;
    gauge(reg, 'thinfuse_data_block_size_bytes', 'Size of one data block', () => pool.blockBytes);
    gauge(reg, 'thinfuse_data_blocks_used', 'Data blocks in use', () => pool.md.dsm.nrAllocated);
    gauge(reg, 'thinfuse_data_blocks', 'Data blocks in the pool (its size)', () => pool.md.dsm.nrBlocks);
    gauge(reg, 'thinfuse_data_used_bytes', 'Data in use, in bytes', () => pool.md.dsm.nrAllocated * pool.blockBytes);
    gauge(reg, 'thinfuse_data_size_bytes', 'Size of the data device', () => pool.md.dsm.nrBlocks * pool.blockBytes);
    gauge(reg, 'thinfuse_metadata_blocks_used', 'Metadata blocks in use (with the reserve, as dmsetup status counts)', () => pool.md.metadataUsage().used);
    gauge(reg, 'thinfuse_metadata_blocks', 'Metadata blocks in the pool (its size)', () => pool.md.metadataUsage().total);
    gauge(reg, 'thinfuse_resident_memory_bytes', 'Resident memory of the serving process', () => process.memoryUsage.rss());
    gauge(reg, 'thinfuse_needs_check', '1 when needs_check is set', () => (pool.md.needsCheck ? 1 : 0));
    new Gauge({
      name: 'thinfuse_mode', help: 'The pool mode: 1 for the current one', labelNames: ['mode'], registers: [reg],
      collect() {
        for (const m of MODES) this.set({ mode: m }, pool.mode === m ? 1 : 0);
      },
    });
    readCounter(reg, 'thinfuse_events_total', 'Pool events since serve started, by kind (POOL/events.jsonl)', ['kind'], (set) => {
      for (const k of EVENT_KINDS) set({ kind: k }, pool.eventStream.counts.get(k) ?? 0);
    });
  }

  private cacheMetrics(): void {
    const reg = this.registry;
    const { pool } = this.src;
    readCounter(reg, 'thinfuse_metadata_cache_hits_total', 'Metadata block cache hits', [], (set) => set({}, pool.md.bm.cacheStats().hits));
    readCounter(reg, 'thinfuse_metadata_cache_misses_total', 'Metadata block cache misses', [], (set) => set({}, pool.md.bm.cacheStats().misses));
    readCounter(reg, 'thinfuse_data_cache_hits_total', 'Data block read cache hits (4 KiB units)', [], (set) => set({}, pool.dataCacheStats()?.hits ?? 0));
    readCounter(reg, 'thinfuse_data_cache_misses_total', 'Data block read cache misses (4 KiB units)', [], (set) => set({}, pool.dataCacheStats()?.misses ?? 0));
    gauge(reg, 'thinfuse_metadata_cache_hit_ratio', 'Metadata cache hits / lookups since serve started', () => ratio(pool.md.bm.cacheStats().hits, pool.md.bm.cacheStats().misses));
    gauge(reg, 'thinfuse_data_cache_hit_ratio', 'Data cache hits / lookups since serve started', () => ratio(pool.dataCacheStats()?.hits ?? 0, pool.dataCacheStats()?.misses ?? 0));
    const fast = () => this.src.fastPath();
    readCounter(reg, 'thinfuse_fast_path_requests_total', 'Reads and writes served in the FUSE threads without JS, by op', ['op'], (set) => {
      set({ op: 'read' }, fast()?.reads ?? 0);
      set({ op: 'write' }, fast()?.writes ?? 0);
    });
    readCounter(reg, 'thinfuse_fast_path_bytes_total', 'Bytes read and written by the fast path, by op', ['op'], (set) => {
      set({ op: 'read' }, fast()?.readBytes ?? 0);
      set({ op: 'write' }, fast()?.writeBytes ?? 0);
    });
    readCounter(reg, 'thinfuse_fast_path_fallbacks_total', 'Requests the fast path handed to JS', [], (set) => set({}, fast()?.fallbacks ?? 0));
    gauge(reg, 'thinfuse_fast_path_hit_ratio', 'Reads and writes served by the fast path / all reads and writes', () => {
      const f = fast();
      const hits = (f?.reads ?? 0) + (f?.writes ?? 0);
      return ratio(hits, this.jsReadsWrites);
    });
  }

  /** Serves /metrics; resolves with the address bound (port 0 picks one). */
  async listen(host: string, port: number): Promise<{ host: string; port: number }> {
    const server = http.createServer((req, res) => void this.answer(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e) => reject(new ThinError('EINVAL_ARG', `--metrics ${host}:${port}: cannot listen (${(e as Error).message})`)));
      server.listen(port, host, () => resolve());
    });
    this.server = server;
    const a = server.address() as { address: string; port: number };
    return { host: a.address, port: a.port };
  }

  private async answer(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: the metrics are at /metrics\n');
      return;
    }
    try {
      const body = await this.registry.metrics();
      res.writeHead(200, { 'content-type': this.registry.contentType }).end(body);
    } catch (e) {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(`${(e as Error).message}\n`);
    }
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
}

function ratio(hits: number, misses: number): number {
  return hits + misses === 0 ? 0 : hits / (hits + misses);
}
