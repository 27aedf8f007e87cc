import fs from 'node:fs';
import path from 'node:path';
import { isThinError, ThinError } from '../../base/errors.js';
import { PoolFaults } from '../../pool/faults.js';
import { Pool } from '../../pool/pool.js';
import { DeviceFs } from '../fuse/device-fs.js';
import { type FuseInstance, loadFuse } from '../fuse/fuse-native.js';
import { DEFAULT_POLL_US, MAX_READ, MAX_WRITE } from '../fuse/transport.js';
import { runOp, type ServeHooks } from '../ops.js';
import { flushBuffers, loopBackingFile, loopsOf, mountOf, mounts, refreshLoop, unmountFuse } from '../system/loop.js';
import { AutoExtender } from './autoextend.js';
import { ControlServer } from './control.js';
import { sendEvents } from './event-sinks.js';
import type { Metrics } from './metrics.js';

// `thinfuse serve`: the pool held open, its named devices served as files
// through FUSE, pool commands taken over the control socket, a commit every
// second and on every fsync. It stops only when no device file is open, and
// never unmounts lazily (that would cut filesystems mounted on top loose).
// The pool's events go to POOL/events.jsonl and the log (event-sinks.ts);
// auto-extend checks the pool's use every AUTOEXTEND_MS and whenever it
// runs low or out of space; --metrics serves Prometheus metrics.

/** How long a stop waits for device files closed just before it to be released. */
const STOP_GRACE_MS = 1000;
const STOP_GRACE_STEP_MS = 50;
/** How often auto-extend looks at the pool's use (a few divisions; cheap). */
const AUTOEXTEND_MS = 250;

export interface ServeOptions {
  /** Metadata block cache, in 4 KiB blocks. */
  cacheBlocks: number;
  /** Data block (read) cache, in bytes. */
  dataCacheBytes: number;
  /** The native fast path for mapped reads and writes (default on; off with --fast-path off). */
  fastPath?: boolean;
  /** Read-ahead of the FUSE mount, in bytes (its bdi's read_ahead_kb); undefined leaves the kernel's 128 KiB. */
  readAheadBytes?: number;
  /** How long FUSE threads and the JS thread poll before they sleep, in microseconds (default DEFAULT_POLL_US; 0: never). */
  pollMicros?: number;
  /** Where to serve Prometheus metrics (serve --metrics HOST:PORT); none: no metrics. */
  metrics?: { host: string; port: number };
  log: (line: string) => void;
}

/**
 * Mount options: no page cache of our own. The kernel also caps a direct-I/O
 * write at max_write, so an unaligned write longer than about 124 KiB arrives
 * as two requests (and a snapshot may fall between them, as between two bios
 * of one split write on dm-thin).
 */
export function mountOptions(poolName: string): string {
  const safe = poolName.replace(/[^A-Za-z0-9_.-]/g, '_');
  return `thinfuse-${safe},big_writes,max_write=${MAX_WRITE},max_read=${MAX_READ},direct_io,attr_timeout=0,entry_timeout=0,negative_timeout=0,default_permissions`;
}

function isOurs(fstype: string, source: string): boolean {
  return fstype.startsWith('fuse') && source.startsWith('thinfuse-');
}

/** Refuses a missing or busy mountpoint; clears our own stale mount (ENOTCONN). */
function prepareMountpoint(mountpoint: string, log: (s: string) => void): void {
  const mount = mounts().find((m) => m.mountpoint === mountpoint);
  let stale = false;
  try {
    const st = fs.statSync(mountpoint);
    if (!st.isDirectory()) throw new ThinError('EINVAL_ARG', `mountpoint ${mountpoint} is not a directory`);
  } catch (e) {
    if (isThinError(e)) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new ThinError('EINVAL_ARG', `mountpoint ${mountpoint} does not exist; create it first (mkdir -p)`);
    if (code !== 'ENOTCONN') throw new ThinError('IO_ERROR', `cannot use mountpoint ${mountpoint}: ${(e as Error).message}`);
    stale = true;
  }
  if (!mount) return;
  if (stale && isOurs(mount.fstype, mount.source)) {
    log(`clearing the stale mount a dead thinfuse left at ${mountpoint}`);
    unmountFuse(mountpoint);
    return;
  }
  throw new ThinError('DEV_BUSY', `mountpoint ${mountpoint} is busy (${mount.fstype} from ${mount.source} is mounted there); unmount it or pick another`);
}

/** A pool kept on a filesystem that this daemon itself backs would deadlock. */
function refuseSelfBacked(poolDir: string, mountpoint: string): void {
  const real = fs.realpathSync(poolDir);
  const inside = (p: string) => p === mountpoint || p.startsWith(`${mountpoint}/`);
  if (inside(real)) throw new ThinError('EINVAL_ARG', `pool ${poolDir} lies inside the mountpoint ${mountpoint}; that would deadlock`);
  const m = mountOf(real);
  const backing = m?.source.startsWith('/dev/loop') ? loopBackingFile(m.source) : undefined;
  if (backing && inside(backing)) {
    throw new ThinError('EINVAL_ARG', `pool ${poolDir} lies on ${m!.source}, which is backed by ${backing} from this very mount; that would deadlock`);
  }
}

function lowerOomScore(log: (s: string) => void): void {
  try {
    fs.writeFileSync('/proc/self/oom_score_adj', '-900');
  } catch (e) {
    log(`could not lower oom_score_adj: ${(e as Error).message}`);
  }
}

/**
 * Sets the FUSE mount's read-ahead (/sys/class/bdi/MAJ:MIN/read_ahead_kb, as
 * `blockdev --setra` does for a disk). libfuse 2 cannot ask for requests
 * larger than 128 KiB, and the kernel's default window is one such request,
 * so a sequential reader through a loop device waits for each in turn; a
 * wider window keeps several in flight in the FUSE threads. The device
 * number comes from mountinfo: a stat of the mountpoint would be a FUSE
 * request that this (the JS) thread must answer.
 */
function setReadAhead(mountpoint: string, bytes: number, log: (s: string) => void): void {
  const mount = mounts().filter((m) => m.mountpoint === mountpoint).pop();
  if (!mount) return log(`could not set the mount's read-ahead: ${mountpoint} is not in /proc/self/mountinfo`);
  const bdi = `/sys/class/bdi/${mount.device}/read_ahead_kb`;
  try {
    fs.writeFileSync(bdi, String(Math.max(4, Math.round(bytes / 1024))));
  } catch (e) {
    log(`could not set the mount's read-ahead (${bdi}): ${(e as Error).message}`);
  }
}

/** The metrics endpoint, listening before FUSE mounts (a taken port fails the start cleanly). */
async function startMetrics(pool: Pool, fastPath: () => ReturnType<DeviceFs['fastPathStats']>, at: { host: string; port: number }, log: (s: string) => void): Promise<{ metrics: Metrics; at: string }> {
  // Loaded only with --metrics: prom-client is not free to import.
  const { Metrics: MetricsClass } = await import('./metrics.js');
  const m = new MetricsClass({ pool, fastPath });
  const a = await m.listen(at.host, at.port);
  const where = `${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
  log(`metrics at http://${where}/metrics`);
  return { metrics: m, at: where };
}

function callback(fn: (cb: (err: Error | null) => void) => void): Promise<void> {
  return new Promise((resolve, reject) => fn((err) => (err ? reject(err) : resolve())));
}

/** The daemon's parts besides FUSE and the control socket. */
interface Operations {
  extender: AutoExtender;
  stopEvents: () => void;
  metrics: Metrics | undefined;
}

export class Server {
  private timer: NodeJS.Timeout | undefined;
  private extendTimer: NodeJS.Timeout | undefined;
  private stopping = false;
  private done!: () => void;
  readonly finished = new Promise<void>((r) => (this.done = r));

  private constructor(
    readonly pool: Pool,
    readonly faults: PoolFaults,
    readonly mountpoint: string,
    private readonly devices: DeviceFs,
    private readonly fuse: FuseInstance,
    private control: ControlServer | undefined,
    private readonly log: (s: string) => void,
    private readonly ops: Operations,
  ) {}

  static async start(poolDir: string, mountpointArg: string, o: ServeOptions): Promise<Server> {
    const mountpoint = path.resolve(mountpointArg);
    if (!fs.existsSync(path.join(poolDir, 'metadata'))) {
      throw new ThinError('POOL_MISSING', `no pool in ${poolDir} (no metadata file); create one with thinfuse pool create`);
    }
    // The pool lock first: a second serve of this pool is told who holds it.
    // Faults set with thinfuse fault persist until cleared (POOL/faults.json); they sit under the data cache.
    const faults = PoolFaults.load(poolDir);
    const pool = await Pool.open(poolDir, { cacheBlocks: o.cacheBlocks, dataCacheBytes: o.dataCacheBytes, wrap: faults.wrap });
    const events = sendEvents(pool, o.log);
    let devices: DeviceFs | undefined;
    let metrics: Metrics | undefined;
    let metricsAt: string | null = null;
    try {
      prepareMountpoint(mountpoint, o.log);
      refuseSelfBacked(poolDir, mountpoint);
      lowerOomScore(o.log);
      if (o.metrics) ({ metrics, at: metricsAt } = await startMetrics(pool, () => devices?.fastPathStats() ?? null, o.metrics, o.log));
      const Fuse = loadFuse();
      const done = metrics ? metrics.observeIo.bind(metrics) : undefined;
      devices = new DeviceFs(pool, { error: (op, name, e) => o.log(`${op} ${name}: ${(e as Error).message}`), done }, { fastPath: o.fastPath === false ? undefined : Fuse.fastPath });
      Fuse.transport(1, MAX_READ / 4096, (o.pollMicros ?? DEFAULT_POLL_US) * 1000);
      const fuse = new Fuse(mountpoint, devices.ops(), { fsname: mountOptions(pool.name), force: false, mkdir: false, timeout: false });
      await callback((cb) => fuse.mount(cb));
      if (o.readAheadBytes !== undefined) setReadAhead(mountpoint, o.readAheadBytes, o.log);
      const extender = new AutoExtender(pool);
      const server = new Server(pool, faults, mountpoint, devices, fuse, undefined, o.log, { extender, stopEvents: events.stop, metrics });
      await server.listen();
      pool.eventStream.emit('daemon_start', { pid: process.pid, mountpoint, metrics: metricsAt });
      pool.eventStream.on((e) => {
        if (e.kind === 'low_water' || e.kind === 'out_of_data_space') setImmediate(() => void extender.check());
      });
      server.startTimers();
      return server;
    } catch (e) {
      await metrics?.close();
      await devices?.close();
      await pool.close();
      events.stop();
      throw e;
    }
  }

  private startTimers(): void {
    this.timer = setInterval(() => void this.tick(), 1000);
    this.extendTimer = setInterval(() => void this.ops.extender.check(), AUTOEXTEND_MS);
  }

  private stopTimers(): void {
    clearInterval(this.timer);
    clearInterval(this.extendTimer);
  }

  private async listen(): Promise<void> {
    this.control = await ControlServer.listen(this.pool.dir, (op, args) => runOp({ pool: this.pool, serve: this.hooks(), faults: this.faults }, op, args));
  }

  private hooks(): ServeHooks {
    const file = (name: string) => path.join(this.mountpoint, name);
    return {
      mountpoint: this.mountpoint,
      openDevices: () => this.devices.openDevices(),
      fastPathStats: () => this.devices.fastPathStats(),
      changed: async (name) => {
        for (const dev of loopsOf(file(name))) await flushBuffers(dev);
      },
      resized: async (name) => {
        for (const dev of loopsOf(file(name))) await refreshLoop(dev);
      },
    };
  }

  private async tick(): Promise<void> {
    try {
      await this.pool.commit();
    } catch (e) {
      this.log(`commit failed: ${(e as Error).message}`);
    }
  }

  /**
   * The device files still open after a short grace: the kernel sends a
   * file's RELEASE after close(2) (or `losetup -d`) has returned, so a stop
   * right behind a detach would otherwise find the file still open.
   */
  private async openAfterGrace(): Promise<string[]> {
    for (let waited = 0; ; waited += STOP_GRACE_STEP_MS) {
      const open = this.devices.openDevices();
      if (open.length === 0 || waited >= STOP_GRACE_MS) return open;
      await new Promise((r) => setTimeout(r, STOP_GRACE_STEP_MS));
    }
  }

  /**
   * Stops unless a device file is open: finishes running requests, commits,
   * unmounts (never lazily) and closes the pool. Returns false if it refused.
   */
  async stop(): Promise<boolean> {
    if (this.stopping) return false;
    const open = await this.openAfterGrace();
    if (this.stopping) return false;
    if (open.length > 0) {
      this.log(`refusing to stop: device files open: ${open.join(', ')} (detach them first: thinfuse detach POOL NAME)`);
      return false;
    }
    this.stopping = true;
    this.stopTimers();
    await this.ops.extender.pause();
    await this.control?.close();
    await this.devices.drain();
    try {
      await this.pool.commit();
      await callback((cb) => this.fuse.unmount(cb));
    } catch (e) {
      this.log(`cannot stop yet: ${(e as Error).message}`);
      this.stopping = false;
      await this.listen();
      this.ops.extender.resume();
      this.startTimers();
      return false;
    }
    await this.ops.metrics?.close();
    await this.devices.close();
    this.pool.eventStream.emit('daemon_stop', { pid: process.pid });
    await this.pool.close();
    this.ops.stopEvents();
    this.done();
    return true;
  }
}
