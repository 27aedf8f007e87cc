import fs from 'node:fs';
import path from 'node:path';
import { ThinError } from '../base/errors.js';
import { type DevId, META_BLOCK_SIZE, SECTOR } from '../base/units.js';
import type { BackingFile } from '../io/backing-file.js';
import { CachedBacking, type DataCacheStats } from '../io/cached-backing.js';
import { FileBacking } from '../io/file-backing.js';
import { lockPool, type PoolLock } from '../io/lock.js';
import { realPoolFiles } from '../io/pool-files.js';
import { SuperblockFirstBacking } from './canary.js';
import { Transactions } from './commit.js';
import { CONFIG_FILE, type PoolConfig, readConfig, writeConfig } from './config.js';
import { PoolContext, type PoolOpenOptions } from './context.js';
import { Devices } from './devices.js';
import type { PoolEvents } from './events.js';
import type { MappingHooks } from './hooks.js';
import { IoPath } from './io-path.js';
import { type PoolMode, PoolModes } from './modes.js';
import { PoolMetadata } from './pool-metadata.js';
import { Provisioner } from './provision.js';
import { Quiesce } from './quiesce.js';
import { type NamedDevice, type NameOptions, Registry } from './registry.js';
import { Resizer } from './resize.js';
import { type DeviceUsage, deviceUsage } from './usage.js';

// A thin pool with dm-thin's semantics over POOL/metadata and POOL/data: the
// facade that opens, wires and closes the parts, each of which owns one job:
//
//   context.ts    the files, config, hooks and per-block state all parts share
//   modes.ts      the mode machine, the no-space policy, low water
//   commit.ts     transactions, commits, data flushes, deferred punches
//   provision.ts  allocation, provisioning ahead, the known-zero blocks
//   quiesce.ts    holding a device's writes (suspend/resume)
//   io-path.ts    read, write, discard, punch; zeroing, copy-on-write
//   devices.ts    pool messages and named devices
//   resize.ts     growing the data and metadata devices, trim
//
// Each part may call only those above it in this list (devices and resize
// skip io-path). Concurrency: metadata changes are synchronous and so atomic
// within a tick; see commit.ts for how commits overlap the next transaction.

export type { MappingHooks } from './hooks.js';
export type { PoolOpenOptions } from './context.js';
export type { PoolMode } from './modes.js';
export type { DeviceUsage } from './usage.js';

export interface PoolCreateOptions {
  dataSize: number;
  metadataSize: number;
  blockSize: number;
  config: PoolConfig;
  /**
   * Format the data and metadata files (or block devices) already in the
   * directory, as dm-thin formats a zeroed metadata device: the metadata's
   * first block must be all zeros, and dataSize must fit in the data file.
   * metadataSize is then the metadata file's own size.
   */
  existing?: boolean;
}

export const DATA_FILE = 'data';
export const METADATA_FILE = 'metadata';

/** opts.wrap, plus the metadata canary's wrapper when that canary is on. */
function wrapper(opts: PoolOpenOptions): (file: BackingFile, which: 'data' | 'metadata') => BackingFile {
  const wrap = opts.wrap ?? ((f) => f);
  if (opts.canary !== 'superblock-before-flush') return wrap;
  return (f, which) => (which === 'metadata' ? new SuperblockFirstBacking(wrap(f, which)) : wrap(f, which));
}

/** The data file as the pool uses it: wrapped, then cached if asked to. */
function dataFile(file: BackingFile, opts: PoolOpenOptions): BackingFile {
  const wrapped = wrapper(opts)(file, 'data');
  return opts.dataCacheBytes ? new CachedBacking(wrapped, opts.dataCacheBytes) : wrapped;
}

export class Pool {
  private readonly ctx: PoolContext;
  private readonly modes: PoolModes;
  private readonly tx: Transactions;
  private readonly provisioner: Provisioner;
  private readonly quiesce = new Quiesce();
  private readonly io: IoPath;
  private readonly devices: Devices;
  private readonly resizer: Resizer;

  private constructor(
    readonly dir: string,
    readonly md: PoolMetadata,
    readonly data: BackingFile,
    readonly config: PoolConfig,
    readonly registry: Registry,
    private readonly lock: PoolLock,
    opts: PoolOpenOptions,
    fresh: boolean,
  ) {
    const ctx = new PoolContext(dir, md, data, config, registry, opts, fresh);
    this.ctx = ctx;
    this.modes = new PoolModes(ctx);
    this.tx = new Transactions(ctx, this.modes);
    this.provisioner = new Provisioner(ctx, this.modes, this.tx);
    this.io = new IoPath(ctx, this.modes, this.tx, this.provisioner, this.quiesce);
    this.devices = new Devices(ctx, this.modes, this.tx, this.quiesce);
    this.resizer = new Resizer(ctx, this.modes, this.tx);
    md.onTouch = () => ctx.hooks?.dirtied?.();
    if (md.needsCheck || config.features.readOnly) this.mode = 'read_only';
  }

  get name(): string {
    return this.ctx.name;
  }

  get blockBytes(): number {
    return this.ctx.blockBytes;
  }

  get mode(): PoolMode {
    return this.modes.mode;
  }

  set mode(m: PoolMode) {
    this.modes.mode = m;
  }

  get lowWaterEvents(): number {
    return this.modes.lowWaterEvents;
  }

  /** dm's event number: low-water crossings and mode changes. */
  get events(): number {
    return this.modes.events;
  }

  get noSpacePolicy(): 'error_if_no_space' | 'queue_if_no_space' {
    return this.modes.noSpacePolicy;
  }

  /** Low water, no space, mode changes, aborts (events.ts); front ends add their own. */
  get eventStream(): PoolEvents {
    return this.ctx.events;
  }

  /** Front ends drop their copies of mappings, so the next lookups read the metadata (a fault set under it must be seen). */
  forgetMappingCopies(): void {
    this.ctx.hooks?.revoke(undefined, 'all');
  }

  /** Installs the hooks of a front end that copies mappings (one at a time). */
  setMappingHooks(hooks: MappingHooks | undefined): void {
    this.ctx.hooks = hooks;
  }

  //----------------------------------------------------------------------------
  // create, open, close

  static async create(dir: string, o: PoolCreateOptions, opts: PoolOpenOptions = {}): Promise<Pool> {
    const metaPath = path.join(dir, METADATA_FILE);
    const dataPath = path.join(dir, DATA_FILE);
    if (o.existing) return Pool.formatExisting(dir, o, opts);
    if (fs.existsSync(metaPath) || fs.existsSync(dataPath)) {
      throw new ThinError('POOL_EXISTS', `a pool already exists in ${dir}; remove it first or pick another directory`);
    }
    const madeDir = !fs.existsSync(dir);
    fs.mkdirSync(dir, { recursive: true });
    const lock = lockPool(dir);
    const made: string[] = [];
    try {
      const meta = FileBacking.create(metaPath, o.metadataSize);
      made.push(metaPath);
      const data = FileBacking.create(dataPath, o.dataSize);
      made.push(dataPath);
      const files = opts.files ?? realPoolFiles;
      const md = PoolMetadata.format(wrapper(opts)(meta, 'metadata'), o.blockSize / SECTOR, o.dataSize / o.blockSize, opts);
      await md.commit(async () => {});
      writeConfig(dir, o.config, files);
      made.push(path.join(dir, CONFIG_FILE));
      return new Pool(dir, md, dataFile(data, opts), o.config, Registry.load(dir, files), lock, opts, true);
    } catch (e) {
      for (const f of made) fs.rmSync(f, { force: true });
      lock.release();
      fs.rmSync(path.join(dir, 'lock'), { force: true });
      if (madeDir) fs.rmSync(dir, { recursive: true, force: true });
      throw e;
    }
  }

  private static async formatExisting(dir: string, o: PoolCreateOptions, opts: PoolOpenOptions): Promise<Pool> {
    const lock = lockPool(dir);
    let meta: FileBacking | undefined;
    let data: FileBacking | undefined;
    try {
      meta = FileBacking.open(path.join(dir, METADATA_FILE), true);
      data = FileBacking.open(path.join(dir, DATA_FILE), true);
      const first = Buffer.alloc(META_BLOCK_SIZE);
      meta.readSync(first, 0);
      if (!first.equals(Buffer.alloc(META_BLOCK_SIZE))) throw new ThinError('POOL_EXISTS', `${meta.path} already holds metadata (its superblock is not zeroed); open the pool instead`);
      if (data.size() < o.dataSize) throw new ThinError('EINVAL_ARG', `${data.path} has ${data.size()} bytes, less than the pool's ${o.dataSize}; give a shorter pool or a bigger data device`);
      const files = opts.files ?? realPoolFiles;
      const md = PoolMetadata.format(wrapper(opts)(meta, 'metadata'), o.blockSize / SECTOR, o.dataSize / o.blockSize, opts);
      await md.commit(async () => {});
      writeConfig(dir, o.config, files);
      return new Pool(dir, md, dataFile(data, opts), o.config, Registry.load(dir, files), lock, opts, true);
    } catch (e) {
      await meta?.close();
      await data?.close();
      lock.release();
      throw e;
    }
  }

  static async open(dir: string, opts: PoolOpenOptions = {}): Promise<Pool> {
    const metaPath = path.join(dir, METADATA_FILE);
    if (!fs.existsSync(metaPath)) {
      throw new ThinError('POOL_MISSING', `no pool in ${dir} (no metadata file); create one with thinfuse pool create`);
    }
    const files = opts.files ?? realPoolFiles;
    const config = readConfig(dir, files);
    const lock = lockPool(dir);
    let meta: BackingFile | undefined;
    let data: BackingFile | undefined;
    try {
      meta = wrapper(opts)(FileBacking.open(metaPath, true), 'metadata');
      const md = PoolMetadata.open(meta, opts);
      data = dataFile(FileBacking.open(path.join(dir, DATA_FILE), true), opts);
      if (data.size() < md.nrDataBlocks * md.dataBlockSize * SECTOR) {
        throw new ThinError('BAD_SUPERBLOCK', `${dir}/data is shorter than the pool's ${md.nrDataBlocks} blocks; restore its length (truncate -s) before opening`);
      }
      const pool = new Pool(dir, md, data, config, Registry.load(dir, files), lock, opts, false);
      pool.devices.reconcile();
      return pool;
    } catch (e) {
      await meta?.close();
      await data?.close();
      lock.release();
      throw e;
    }
  }

  async close(): Promise<void> {
    if (this.ctx.closed) return;
    try {
      if (this.mode !== 'fail' && this.mode !== 'read_only') await this.commit();
    } finally {
      this.ctx.closed = true;
      this.ctx.hooks?.closing();
      this.modes.stop();
      await this.tx.punches();
      await this.provisioner.idle();
      await this.md.file.close();
      await this.data.close();
      this.lock.release();
    }
  }

  //----------------------------------------------------------------------------
  // commits and flushes (commit.ts)

  /** Commits if anything changed (concurrent callers share one commit), then waits for the freed blocks' punches. */
  commit(): Promise<void> {
    return this.tx.commit();
  }

  /** A FLUSH; alsoData: the data file has writes the pool did not see (the fast path's). */
  flush(alsoData = false): Promise<void> {
    return this.tx.flush(alsoData);
  }

  /** A flush would be only an fdatasync of the data file. */
  isClean(): boolean {
    return this.tx.isClean();
  }

  /** An fdatasync of the data file done outside the pool failed: as if ours had (sticky, abort, read-only). */
  dataFlushFailed(e: Error): Promise<never> {
    return this.tx.dataFlushFailed(e);
  }

  /** Unmaps the speculative blocks nothing wrote, now: a front end whose hooks go away first. */
  settleSpeculation(): Promise<void> {
    return this.tx.settleSpeculation();
  }

  //----------------------------------------------------------------------------
  // device I/O (io-path.ts, quiesce.ts)

  read(dev: DevId, buf: Buffer, offset: number, size: number, name = `device ${dev}`): Promise<void> {
    return this.io.read(dev, buf, offset, size, name);
  }

  write(dev: DevId, buf: Buffer, offset: number, size: number, name = `device ${dev}`): Promise<void> {
    return this.io.write(dev, buf, offset, size, name);
  }

  /** Unmaps the whole blocks inside the range; partial blocks are left alone. */
  discard(dev: DevId, offset: number, length: number, size: number, name = `device ${dev}`): Promise<number> {
    return this.io.discard(dev, offset, length, size, name);
  }

  /** Makes a range read back as zeros, as punching a hole in a file does. */
  punch(dev: DevId, offset: number, length: number, size: number, name = `device ${dev}`): Promise<void> {
    return this.io.punch(dev, offset, length, size, name);
  }

  /** Holds new writes to dev, waits for the running ones, runs fn, then lets writes go on. */
  quiesced<T>(dev: DevId, fn: () => Promise<T>): Promise<T> {
    return this.quiesce.quiesced(dev, fn);
  }

  /**
   * dm's suspend of a thin device: holds its new writes and discards, waits
   * for the running ones, takes its copies' right to write in place, and
   * commits with a data flush, so what was written is on disk and a
   * snapshot now is a consistent point. resume() lets the writes go.
   */
  async suspend(dev: DevId): Promise<void> {
    await this.quiesce.hold(dev);
    this.ctx.hooks?.revoke(dev, 'writes');
    await this.flush(true);
  }

  resume(dev: DevId): void {
    this.quiesce.release(dev);
  }

  isSuspended(dev: DevId): boolean {
    return this.quiesce.held(dev);
  }

  //----------------------------------------------------------------------------
  // messages and devices (devices.ts)

  /** Runs a dm-thin pool message; every successful message is committed. */
  message(text: string): Promise<void> {
    return this.devices.message(text);
  }

  device(name: string): NamedDevice {
    return this.devices.device(name);
  }

  lowestFreeDevId(): DevId {
    return this.devices.lowestFreeDevId();
  }

  /** Names and sizes an existing device (dmsetup create ... thin POOL ID). */
  activate(name: string, devId: DevId, size: number): Promise<NamedDevice> {
    return this.devices.activate(name, devId, size);
  }

  createDevice(name: string, size: number, devId?: DevId, o: NameOptions = {}): Promise<NamedDevice> {
    return this.devices.createDevice(name, size, devId, o);
  }

  snapshot(originName: string, name: string, size?: number, o: NameOptions = {}): Promise<NamedDevice> {
    return this.devices.snapshot(originName, name, size, o);
  }

  /** Deletes the device and its name (lvremove). */
  remove(name: string): Promise<void> {
    return this.devices.remove(name);
  }

  /** Drops the name and size only (dmsetup remove); the data stays. */
  deactivate(name: string): Promise<void> {
    return this.devices.deactivate(name);
  }

  resizeDevice(name: string, size: number): Promise<NamedDevice> {
    return this.devices.resizeDevice(name, size);
  }

  //----------------------------------------------------------------------------
  // pool size (resize.ts)

  resizeData(bytes: number): Promise<void> {
    return this.resizer.resizeData(bytes);
  }

  resizeMetadata(bytes: number): Promise<void> {
    return this.resizer.resizeMetadata(bytes);
  }

  /** Punches every free data block (space a crash or no_discard_passdown left behind). */
  trim(): Promise<number> {
    return this.resizer.trim();
  }

  //----------------------------------------------------------------------------
  // reporting

  dataCacheStats(): DataCacheStats | null {
    return this.data instanceof CachedBacking ? this.data.cacheStats() : null;
  }

  /** Mapped, exclusive and shared block counts of every device, as thin_ls counts them. */
  usage(): DeviceUsage[] {
    return deviceUsage(this.md, this.registry);
  }
}
