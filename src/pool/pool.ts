import fs from 'node:fs';
import path from 'node:path';
import { isThinError, ThinError } from '../base/errors.js';
import { Counter, KeyedLock } from '../base/keyed-lock.js';
import { type DataBlock, type DevId, IO_CHUNK, META_BLOCK_SIZE, MAX_META_BLOCKS, SECTOR, type VirtBlock } from '../base/units.js';
import type { BackingFile } from '../io/backing-file.js';
import { CachedBacking, type DataCacheStats } from '../io/cached-backing.js';
import { FileBacking } from '../io/file-backing.js';
import { lockPool, type PoolLock } from '../io/lock.js';
import { type PoolFiles, realPoolFiles } from '../io/pool-files.js';
import { type Canary, SuperblockFirstBacking } from './canary.js';
import { CONFIG_FILE, type PoolConfig, readConfig, writeConfig } from './config.js';
import { parseMessage, type PoolMessage } from './messages.js';
import { type Mapping, PoolMetadata } from './pool-metadata.js';
import { type NamedDevice, type NameOptions, Registry } from './registry.js';
import { ZeroBlocks } from './zero-blocks.js';

// A thin pool with dm-thin's semantics over POOL/metadata and POOL/data.
//
// Concurrency: metadata changes are synchronous and so atomic within a tick.
// Requests that touch one virtual block are ordered by a per-block lock (the
// bio prison's role); everything else runs at once. A commit takes its
// transaction in one synchronous step (prepareCommit), then writes it while
// the next transaction goes on: as in dm-thin, allocation, data writes and
// mapping inserts do not wait for the data file's flush. Data blocks freed
// by a commit in flight are not handed out again until it is durable and
// their holes are punched (`settling`).
//
// Speculative provisioning: when a front end that copies mappings (the
// FUSE fast path) sees a device written sequentially through unprovisioned
// blocks, it asks for the blocks ahead to be provisioned now (known-zero
// blocks only), so the writes that follow land in mapped blocks without
// waking JS. Before every commit and snapshot the front end reports which
// of those blocks nothing wrote, and they are unmapped again in the same
// step: a commit never records a block the device did not write.

/** Blocks up to this size are copied on write in one synchronous read and write (copyMerged). */
const SMALL_COPY = 256 * 1024;
/** Host space kept allocated ahead of the allocation cursor, in blocks, refilled when fewer than PREALLOC_LOW are left. */
const PREALLOC_CHUNK = 64;
const PREALLOC_LOW = 32;
/** The most free blocks one hole lookup marks as known zero. */
const HOLE_RUN = 4096;
/** The most blocks written through the pool between two data flushes that are tracked for dropWritten. */
const DROP_MAX = 65536;

export type PoolMode = 'write' | 'out_of_data_space' | 'read_only' | 'fail';

/**
 * What a front end that keeps its own copy of mappings (the FUSE fast path)
 * is told. Each call comes in the same synchronous step as the metadata
 * access or change it reports, so a copy updated here is never behind.
 */
export interface MappingHooks {
  /** A lookup found, or an insert made, dev:vb -> block; exclusive: not shared with another device. */
  mapped(dev: DevId, vb: VirtBlock, block: DataBlock, exclusive: boolean): void;
  /**
   * Called just before mappings (or their sharing) change: drop the copies of
   * dev's blocks [from, end) / all of them / only their right to be written
   * in place (dev undefined: every device). Must not return while I/O that
   * used those copies is still running.
   */
  revoke(dev: DevId | undefined, what: { from: number; end: number } | 'all' | 'writes'): void;
  /** The pool is closing its files: forget them. */
  closing(): void;
  /** How many blocks after vb to provision speculatively (vb was just provisioned by a write). */
  ahead?(dev: DevId, vb: VirtBlock): number;
  /** dev:vb -> block was provisioned speculatively (instead of mapped() for it). */
  speculated?(dev: DevId, vb: VirtBlock, block: DataBlock): void;
  /** A write through the pool is about to land in dev:vb's mapped block. */
  wrote?(dev: DevId, vb: VirtBlock): void;
  /**
   * The speculative blocks nothing wrote, already made unreachable for
   * writes outside the pool; the pool unmaps them. Forgets them all.
   */
  settle?(): Array<{ dev: DevId; vb: VirtBlock; block: DataBlock }>;
  /** Metadata changed or data was written through the pool: a flush is more than an fdatasync now. */
  dirtied?(): void;
  /** Data blocks written outside the pool since the last call, as [first, count, ...] runs (for dropWritten). */
  takeWritten?(): number[];
  /** The pool wrote this many bytes of data (the front end may start writeback early). */
  wroteBytes?(bytes: number): void;
  /**
   * Copy-on-write of dev:vb from `block` (shared) is about to read it whole:
   * fills dst with it and answers true if the front end has already read it
   * for that write, else false (the pool reads it).
   */
  copySource?(dev: DevId, vb: VirtBlock, block: DataBlock, dst: Buffer): boolean;
}

export interface PoolOpenOptions {
  /** Metadata block cache, in 4 KiB blocks. */
  cacheBlocks?: number;
  /** One-shot commands cannot wait for space: fail at once when full. */
  oneShot?: boolean;
  /** Wraps the backing files (fault injection, latency). */
  wrap?: (file: BackingFile, which: 'data' | 'metadata') => BackingFile;
  /** LRU read cache of the data file, in bytes (0: none). */
  dataCacheBytes?: number;
  /** The pool directory's small files (config, devices); the host filesystem by default. */
  files?: PoolFiles;
  /**
   * TEST HOOK for the crash-replay harness only: one deliberately broken
   * behaviour (see canary.ts). Never set it outside tests.
   */
  canary?: Canary;
}

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

export interface PoolCreateOptions {
  dataSize: number;
  metadataSize: number;
  blockSize: number;
  config: PoolConfig;
}

export const DATA_FILE = 'data';
/** Blocks unmapped per metadata step of a discard (dm-thin's bio prison range is 1024). */
const DISCARD_BATCH = 1024;
export const METADATA_FILE = 'metadata';

export interface DeviceUsage {
  devId: DevId;
  name: string | undefined;
  size: number | undefined;
  mappedBlocks: number;
  exclusiveBlocks: number;
  sharedBlocks: number;
  highestMapped: number | undefined;
}

export class Pool {
  readonly name: string;
  readonly blockBytes: number;
  private currentMode: PoolMode = 'write';
  private hooks: MappingHooks | undefined;
  lowWaterEvents = 0;
  private lowWaterArmed = true;
  private commitRunning: Promise<void> | undefined;
  /** Punches of blocks freed by commits, running after them (see settling). */
  private punching: Promise<void> = Promise.resolve();
  /** Data blocks freed by a commit still in flight: not allocated until it is durable and punched. */
  private readonly settling = new Set<number>();
  private readonly cells = new KeyedLock();
  /** Serializes changes to device names: the registry has one intent slot. */
  private readonly naming = new KeyedLock();
  private readonly reading = new Counter<number>();
  private readonly writing = new Map<number, number>();
  private readonly suspended = new Map<number, Promise<void>>();
  private readonly drained = new Map<number, () => void>();
  private spaceWaiters: Array<() => void> = [];
  private noSpaceExpired = false;
  private noSpaceTimer: NodeJS.Timeout | undefined;
  private closed = false;
  /** Data written since the last flush; a commit with none skips the data flush. */
  private dataDirty = false;
  /** Blocks known to read as zeros (a fresh pool, or punched since open). */
  private readonly zeros: ZeroBlocks;
  /**
   * Why flushes fail from now on: the first failed fdatasync of the data
   * file (after a failed writeback the host may mark dirty pages clean, so a
   * later fsync could succeed without the data: fsyncgate), or an aborted
   * transaction (acknowledged writes since the last commit are gone). Sticky:
   * every later flush fails until the pool is reopened.
   */
  private flushError: ThinError | undefined;
  private dataFlushing: Promise<void> | undefined;
  /** Data blocks [start, end) whose host space preallocAhead has allocated; its job in flight. */
  private prealloc = { start: 0, end: 0, off: false };
  private preallocJob: Promise<void> | undefined;
  /** copyMerged's block buffer. */
  private copyBuffer: Buffer | undefined;
  /** Data blocks written through the pool since the last data flush: dropped from the host page cache once it made them durable (dropWritten). */
  private writtenBlocks = new Set<number>();
  /** Writes are waiting because the host filesystem under POOL/data is full. */
  private hostFull = false;

  private constructor(
    readonly dir: string,
    readonly md: PoolMetadata,
    readonly data: BackingFile,
    readonly config: PoolConfig,
    readonly registry: Registry,
    private readonly lock: PoolLock,
    private readonly opts: PoolOpenOptions,
    fresh: boolean,
  ) {
    this.name = path.basename(path.resolve(dir));
    this.blockBytes = md.dataBlockSize * SECTOR;
    this.zeros = new ZeroBlocks(fresh ? 0 : Math.ceil(data.size() / this.blockBytes));
    md.onTouch = () => this.hooks?.dirtied?.();
    if (md.needsCheck || config.features.readOnly) this.mode = 'read_only';
  }

  get mode(): PoolMode {
    return this.currentMode;
  }

  /** read_only takes away writes in place, fail all I/O: copies of mappings are told first. */
  set mode(m: PoolMode) {
    if (m === 'read_only' || m === 'fail') {
      this.hooks?.dirtied?.();
      this.hooks?.revoke(undefined, m === 'fail' ? 'all' : 'writes');
    }
    this.currentMode = m;
  }

  /** Installs the hooks of a front end that copies mappings (one at a time). */
  setMappingHooks(hooks: MappingHooks | undefined): void {
    this.hooks = hooks;
  }

  //----------------------------------------------------------------------------
  // create, open, close

  static async create(dir: string, o: PoolCreateOptions, opts: PoolOpenOptions = {}): Promise<Pool> {
    const metaPath = path.join(dir, METADATA_FILE);
    const dataPath = path.join(dir, DATA_FILE);
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
      await pool.reconcile();
      return pool;
    } catch (e) {
      await meta?.close();
      await data?.close();
      lock.release();
      throw e;
    }
  }

  /** Finishes or drops an intent a crash left behind: only its dev id is looked at. */
  private async reconcile(): Promise<void> {
    const intent = this.registry.intent;
    if (!intent) return;
    const inMetadata = this.md.hasDevice(intent.device.devId);
    if ((intent.op === 'add') === inMetadata) this.registry.finish();
    else this.registry.cancel();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    try {
      if (this.mode !== 'fail' && this.mode !== 'read_only') await this.commit();
    } finally {
      this.closed = true;
      this.hooks?.closing();
      clearTimeout(this.noSpaceTimer);
      this.failWaiters();
      await this.punching;
      await this.preallocJob;
      await this.md.file.close();
      await this.data.close();
      this.lock.release();
    }
  }

  //----------------------------------------------------------------------------
  // modes and errors

  private requireWritable(): void {
    if (this.mode === 'fail') throw new ThinError('POOL_FAILED', 'the pool has failed; close it and run thinfuse check');
    if (this.mode === 'read_only') {
      throw new ThinError('READ_ONLY', this.md.needsCheck
        ? 'the pool is read-only with needs_check set; run thinfuse check and repair it'
        : 'the pool is read-only');
    }
  }

  /** Metadata may be changed right after this returns (a running commit has already taken its transaction). */
  private async metadataReady(): Promise<void> {
    this.requireWritable();
  }

  /**
   * A metadata operation failed: roll back to the last commit, set
   * needs_check and go read-only, as dm-thin's metadata_operation_failed.
   */
  private async metadataFailed(e: unknown): Promise<never> {
    this.flushError ??= new ThinError('IO_ERROR', `pool ${this.name} aborted its transaction (${(e as Error)?.message}); writes since the last commit may be lost, so flushes fail: close the pool, run thinfuse check`);
    // A commit in flight would write its superblock over the abort's needs_check.
    while (this.commitRunning) await this.commitRunning.catch(() => {});
    if (this.mode !== 'fail') {
      try {
        this.hooks?.revoke(undefined, 'all');
        this.settling.clear();
        this.md.abort();
        await this.md.writeNeedsCheck();
        this.mode = 'read_only';
      } catch {
        this.mode = 'fail';
      }
    }
    throw e;
  }

  /** Runs a synchronous metadata change; a failure aborts the transaction. */
  private async change<T>(fn: () => T): Promise<T> {
    await this.metadataReady();
    return this.guard(fn);
  }

  /** Runs a metadata read or change; a corrupt block or failed metadata I/O aborts. */
  private async guard<T>(fn: () => T): Promise<T> {
    try {
      return fn();
    } catch (e) {
      if (isThinError(e) && (e.code === 'BAD_METADATA' || e.code === 'NO_METADATA_SPACE' || e.code === 'IO_ERROR' || e.code === 'HOST_NO_SPACE')) {
        return this.metadataFailed(e);
      }
      throw e;
    }
  }

  /** error_if_no_space, as the feature says or because the no-space timeout ran out. */
  get noSpacePolicy(): 'error_if_no_space' | 'queue_if_no_space' {
    return this.errorIfNoSpace() ? 'error_if_no_space' : 'queue_if_no_space';
  }

  //----------------------------------------------------------------------------
  // commit

  /** Commits if anything changed (concurrent callers share one commit), then waits for the freed blocks' punches. */
  async commit(): Promise<void> {
    await this.commitTransaction();
    await this.punching;
  }

  /** The commit alone: a flush does not wait for space to go back to the host. */
  private async commitTransaction(): Promise<void> {
    while (this.commitRunning) await this.commitRunning;
    if (!this.md.hasChanges() || this.mode === 'read_only' || this.mode === 'fail') return;
    const run = this.runCommit();
    this.commitRunning = run.finally(() => {
      this.commitRunning = undefined;
    });
    await this.commitRunning;
  }

  /**
   * A FLUSH: commits if metadata changed, else makes completed data writes
   * durable. alsoData: writes the pool did not see (the FUSE fast path's)
   * need the data file flushed too.
   */
  async flush(alsoData = false): Promise<void> {
    if (this.flushError) throw this.flushError;
    await this.commitTransaction();
    // A commit that another request ran meanwhile may have failed with our writes in it.
    if (this.flushError) throw this.flushError;
    if (this.dataDirty || alsoData) {
      this.dataDirty = false;
      const written = this.takeWritten();
      try {
        await this.flushDataFile();
        void this.dropWritten(written);
      } catch (e) {
        // As a failed commit would: abort, needs_check, read-only.
        while (this.commitRunning) await this.commitRunning.catch(() => {});
        if (this.mode === 'write' || this.mode === 'out_of_data_space') await this.metadataFailed(e);
        throw e;
      }
    }
    // Another request's data flush, still running, may hold our writes: its outcome is ours.
    if (this.dataFlushing) await this.dataFlushing.catch(() => {});
    if (this.flushError) throw this.flushError;
  }

  /**
   * Nothing but writes the pool did not see since the last durable point: a
   * flush is one fdatasync of the data file (the fast path may do it itself
   * until dirtied() is called).
   */
  isClean(): boolean {
    return (this.mode === 'write' || this.mode === 'out_of_data_space') && !this.md.hasChanges() && !this.dataDirty &&
      !this.commitRunning && !this.flushError;
  }

  /** An fdatasync of the data file done outside the pool failed: as if ours had (sticky, abort, read-only). */
  async dataFlushFailed(e: Error): Promise<never> {
    this.flushError ??= new ThinError('IO_ERROR', `flushing ${this.dir}/data failed (${e.message}); every later flush fails too: close the pool, run thinfuse check, reopen`, {}, e);
    if (this.mode === 'write' || this.mode === 'out_of_data_space') await this.metadataFailed(this.flushError);
    throw this.flushError;
  }

  /** fdatasync of the data file; a failure is remembered (see flushError). */
  private flushDataFile(): Promise<void> {
    const run = this.flushDataFileNow();
    this.dataFlushing = run;
    run.then(() => {}, () => {}).finally(() => {
      if (this.dataFlushing === run) this.dataFlushing = undefined;
    });
    return run;
  }

  private async flushDataFileNow(): Promise<void> {
    if (this.flushError) throw this.flushError;
    try {
      await this.data.flush();
    } catch (e) {
      this.flushError = new ThinError('IO_ERROR', `flushing ${this.dir}/data failed (${(e as Error).message}); every later flush fails too: close the pool, run thinfuse check, reopen`, {}, e);
      this.hooks?.dirtied?.();
      throw this.flushError;
    }
  }

  /** Everything up to md.commit's prepareCommit runs in one synchronous step. */
  private async runCommit(): Promise<void> {
    let freed: DataBlock[] = [];
    let written: number[] = [];
    try {
      this.settleSpeculative();
      freed = this.md.freedData;
      this.md.freedData = [];
      for (const b of freed) this.settling.add(b);
      const flushData = this.dataDirty;
      this.dataDirty = false;
      // Only what this commit's data flush makes durable; the rest waits for a later flush.
      if (flushData) written = this.takeWritten();
      await this.md.commit(() => (flushData ? this.flushDataFile() : Promise.resolve()));
    } catch (e) {
      const err = isThinError(e) ? e : new ThinError('IO_ERROR', `commit failed: ${(e as Error).message}`);
      this.commitRunning = undefined;
      for (const b of freed) this.settling.delete(b);
      return this.metadataFailed(err);
    }
    // In the background: the commit is durable; its freed blocks stay out of
    // allocation until their holes are punched.
    const job = this.punchFreed(freed).catch(() => {}).finally(() => {
      for (const b of freed) this.settling.delete(b);
    });
    this.punching = Promise.all([this.punching, job]).then(() => {});
    void this.dropWritten(written);
    if (this.mode === 'out_of_data_space' && this.md.dsm.nrFree > 0) this.leaveNoSpace();
  }

  /** Unmaps the speculative blocks nothing wrote, now: a front end whose hooks go away first. */
  async settleSpeculation(): Promise<void> {
    if (this.mode === 'read_only' || this.mode === 'fail' || this.closed) return;
    await this.guard(() => this.settleSpeculative());
  }

  /** Unmaps the speculatively provisioned blocks that nothing wrote (synchronous). */
  private settleSpeculative(): void {
    const unwritten = this.hooks?.settle?.() ?? [];
    for (const s of unwritten) {
      if (this.md.hasDevice(s.dev) && this.md.lookup(s.dev, s.vb)?.block === s.block) {
        this.md.removeMapping(s.dev, s.vb);
        // Nothing wrote it: it still reads as zeros.
        this.zeros.punchedRun(s.block, 1);
      }
    }
  }

  /** Block b's data changed through the pool (so it no longer reads as zeros). */
  private wroteBlock(b: number): void {
    this.zeros.written(b);
    if (this.writtenBlocks.size < DROP_MAX && this.data.dropCache) this.writtenBlocks.add(b);
  }

  /** Blocks written since the last call, through the pool or (hooks) outside it, as [first, count, ...] runs. */
  private takeWritten(): number[] {
    const runs = [...runsOf(this.writtenBlocks), ...(this.hooks?.takeWritten?.() ?? [])];
    this.writtenBlocks = new Set();
    return runs;
  }

  /**
   * Drops blocks a flush made durable from the host page cache, in the
   * background. Why: what a device writes is cached again above us (the
   * filesystem on the loop device), and keeping a second copy makes the
   * host's page cache grow with every write, and growing it is what costs:
   * on the VMs measured, a 64 KiB buffered write took 12-14 us until about
   * 1.2 GB of page cache had been added, then 140-185 us for every later
   * one, even with each 256 MiB fdatasync'd; dropping each range after its
   * fdatasync kept every write at 12-14 us (4 GiB written both ways). Blocks
   * written again since the flush began are dirty, and the kernel skips
   * them, as it skips a cached folio the range does not wholly cover.
   * Errors are ignored: it is only a hint.
   */
  private async dropWritten(runs: number[]): Promise<void> {
    for (let i = 0; i + 1 < runs.length; i += 2) {
      await this.data.dropCache?.(runs[i]! * this.blockBytes, runs[i + 1]! * this.blockBytes).catch(() => {});
    }
  }

  /** Returns freed blocks to the host filesystem, now that no commit points at them. */
  private async punchFreed(freed: DataBlock[]): Promise<void> {
    if (this.config.features.noDiscardPassdown || this.config.features.ignoreDiscard) return;
    const free = freed.filter((b) => this.md.dataCount(b) === 0).sort((a, b) => a - b);
    for (let i = 0; i < free.length;) {
      let j = i + 1;
      while (j < free.length && free[j]! <= free[j - 1]! + 1) j++;
      try {
        await this.data.punchHole(free[i]! * this.blockBytes, (free[j - 1]! - free[i]! + 1) * this.blockBytes);
        this.zeros.punchedRun(free[i]!, free[j - 1]! - free[i]! + 1);
      } catch {
        // Passdown errors are ignored, as dm-thin does: the blocks are free either way.
      }
      i = j;
    }
  }

  //----------------------------------------------------------------------------
  // data space

  private async allocate(): Promise<DataBlock> {
    for (;;) {
      const b = await this.change(() => this.canaryReuse() ?? this.md.allocData(this.skipAlloc));
      if (b !== undefined) {
        this.preallocAhead();
        this.checkLowWater();
        return b;
      }
      // A commit (ours, or one already running) may free blocks: retry after it.
      if (this.md.freedData.length > 0 || this.commitRunning || this.settling.size > 0) {
        await this.commit();
        continue;
      }
      await this.waitForSpace();
    }
  }

  private markDataDirty(): void {
    this.dataDirty = true;
    this.hooks?.dirtied?.();
  }

  /**
   * Keeps the host space of the next blocks the allocator will hand out
   * allocated, in the background (fallocate KEEP_SIZE: zero-reading extents,
   * data untouched). A write into a hole of the data file makes the host
   * filesystem allocate on the write path (100+ us a 64 KiB block on ext4
   * here, against ~10 us into allocated space). The data file grows on the
   * host by at most PREALLOC_CHUNK blocks more than the pool uses; freed
   * blocks are punched as before. Any failure (EOPNOTSUPP, a full host)
   * turns it off until the pool is reopened.
   */
  private preallocAhead(): void {
    const p = this.prealloc;
    if (this.preallocJob || p.off || !this.data.preallocate || this.closed) return;
    const next = this.md.dsm.nextHint;
    if (next >= p.start && next + PREALLOC_LOW <= p.end) return;
    const start = next >= p.start && next < p.end ? p.end : next;
    const end = Math.min(start + PREALLOC_CHUNK, this.md.nrDataBlocks);
    if (start >= end) return;
    this.preallocJob = this.data.preallocate(start * this.blockBytes, (end - start) * this.blockBytes).then(
      () => {
        this.prealloc = { start: next < p.start || next >= p.end ? start : p.start, end, off: false };
      },
      () => {
        p.off = true;
      },
    ).finally(() => {
      this.preallocJob = undefined;
    });
  }

  /** Blocks a new allocation must not take: being read (a freed block in use), or freed by a commit in flight. */
  private readonly skipAlloc = (b: number): boolean => this.reading.has(b) || this.settling.has(b);

  /**
   * Provisions the blocks after vb that the hooks ask for, synchronously, in
   * the step that mapped vb: only unmapped blocks whose cell no request
   * holds, only known-zero data blocks (or any, without block zeroing), and
   * never into the low-water reserve.
   */
  private provisionAhead(dev: DevId, vb: VirtBlock, size: number): void {
    const n = this.hooks?.ahead?.(dev, vb) ?? 0;
    if (n <= 0 || this.mode !== 'write') return;
    const zeroing = !this.config.features.skipBlockZeroing;
    const end = Math.min(vb + 1 + n, Math.ceil(size / this.blockBytes));
    for (let v = vb + 1; v < end; v++) {
      if (this.md.dsm.nrFree <= this.config.lowWaterMark + n) return;
      if (this.cells.isHeld(`${dev}:${v}`) || this.md.lookup(dev, v as VirtBlock)) continue;
      const candidate = this.md.dsm.findFree(this.skipAlloc);
      if (candidate === undefined || (zeroing && !this.knownZero(candidate))) return;
      const b = this.md.allocData(this.skipAlloc)!;
      this.zeros.written(b);
      this.md.insertMapping(dev, v as VirtBlock, b);
      if (this.hooks!.speculated) this.hooks!.speculated(dev, v as VirtBlock, b);
      else this.hooks!.mapped(dev, v as VirtBlock, b, true);
      // The next commit flushes the data file: a punched block's hole must be durable before a mapping to it is.
      this.markDataDirty();
    }
    this.preallocAhead();
  }

  /** TEST HOOK (canary 'reuse-before-commit'): a block freed in this transaction, taken again. */
  private canaryReuse(): DataBlock | undefined {
    if (this.opts.canary !== 'reuse-before-commit') return undefined;
    const i = this.md.freedData.findIndex((x) => this.md.dataCount(x) === 0);
    if (i < 0) return undefined;
    const [b] = this.md.freedData.splice(i, 1) as [DataBlock];
    this.md.dsm.inc(b);
    return b;
  }

  /** TEST HOOK (canary 'punch-before-commit'): punches blocks freed in this transaction now. */
  private async canaryPunch(): Promise<void> {
    if (this.opts.canary === 'punch-before-commit') await this.punchFreed([...this.md.freedData]);
  }

  private checkLowWater(): void {
    if (this.lowWaterArmed && this.md.dsm.nrFree <= this.config.lowWaterMark) {
      this.lowWaterArmed = false;
      this.lowWaterEvents++;
    }
  }

  private noSpaceError(): ThinError {
    return new ThinError('NO_DATA_SPACE', `pool ${this.name} is out of data space; grow it with thinfuse resize POOL --data-size S, or free blocks (discard, remove)`);
  }

  private errorIfNoSpace(): boolean {
    return this.config.features.errorIfNoSpace || this.noSpaceExpired;
  }

  private async waitForSpace(): Promise<void> {
    if (this.mode === 'write') this.mode = 'out_of_data_space';
    if (this.errorIfNoSpace() || this.opts.oneShot) throw this.noSpaceError();
    if (!this.noSpaceTimer && this.config.noSpaceTimeout > 0) {
      this.noSpaceTimer = setTimeout(() => {
        this.noSpaceExpired = true;
        this.failWaiters();
      }, this.config.noSpaceTimeout * 1000);
    }
    await new Promise<void>((resolve) => this.spaceWaiters.push(resolve));
    if (this.mode === 'out_of_data_space' && this.errorIfNoSpace()) throw this.noSpaceError();
  }

  private failWaiters(): void {
    const w = this.spaceWaiters;
    this.spaceWaiters = [];
    for (const r of w) r();
  }

  private leaveNoSpace(): void {
    this.mode = 'write';
    this.noSpaceExpired = false;
    clearTimeout(this.noSpaceTimer);
    this.noSpaceTimer = undefined;
    this.failWaiters();
  }

  //----------------------------------------------------------------------------
  // device I/O, one data block at a time

  private checkRange(size: number, offset: number, length: number, name: string): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
      throw new ThinError('OUT_OF_RANGE', `I/O at ${offset}+${length} is past the end of ${name} (${size} bytes)`, { offset, length, size });
    }
  }

  /** Splits [offset, offset+length) at data block boundaries. */
  private *pieces(offset: number, length: number): Generator<{ vb: VirtBlock; within: number; at: number; len: number }> {
    for (let at = 0; at < length;) {
      const pos = offset + at;
      const vb = Math.floor(pos / this.blockBytes) as VirtBlock;
      const within = pos - vb * this.blockBytes;
      const len = Math.min(this.blockBytes - within, length - at);
      yield { vb, within, at, len };
      at += len;
    }
  }

  async read(dev: DevId, buf: Buffer, offset: number, size: number, name = `device ${dev}`): Promise<void> {
    this.checkRange(size, offset, buf.length, name);
    if (this.mode === 'fail') throw new ThinError('POOL_FAILED', 'the pool has failed; reads are refused');
    const vb = Math.floor(offset / this.blockBytes);
    const within = offset - vb * this.blockBytes;
    if (within + buf.length <= this.blockBytes) return this.readBlock(dev, vb as VirtBlock, within, buf);
    const jobs: Promise<void>[] = [];
    for (const p of this.pieces(offset, buf.length)) jobs.push(this.readBlock(dev, p.vb, p.within, buf.subarray(p.at, p.at + p.len)));
    await Promise.all(jobs);
  }

  private async readBlock(dev: DevId, vb: VirtBlock, within: number, dst: Buffer): Promise<void> {
    let m: Mapping | undefined;
    try {
      m = this.md.lookup(dev, vb);
    } catch (e) {
      return this.guard(() => {
        throw e;
      });
    }
    if (!m) {
      dst.fill(0);
      return;
    }
    this.hooks?.mapped(dev, vb, m.block, !this.md.isShared(dev, m));
    this.reading.inc(m.block);
    try {
      await this.data.read(dst, m.block * this.blockBytes + within);
    } finally {
      this.reading.dec(m.block);
    }
  }

  async write(dev: DevId, buf: Buffer, offset: number, size: number, name = `device ${dev}`): Promise<void> {
    this.checkRange(size, offset, buf.length, name);
    await this.enterDevice(dev);
    try {
      const jobs: Promise<void>[] = [];
      for (const p of this.pieces(offset, buf.length)) jobs.push(this.writeBlock(dev, p.vb, p.within, buf.subarray(p.at, p.at + p.len), size));
      await Promise.all(jobs);
    } finally {
      this.leaveDevice(dev);
    }
  }

  private async writeBlock(dev: DevId, vb: VirtBlock, within: number, src: Buffer, size: number): Promise<void> {
    const release = await this.cells.acquire(`${dev}:${vb}`);
    try {
      if (this.mode === 'fail') throw new ThinError('POOL_FAILED', 'the pool has failed; writes are refused');
      const m = await this.guard(() => this.lookupSeen(dev, vb));
      if (m && !this.md.isShared(dev, m)) {
        this.hooks?.wrote?.(dev, vb);
        await this.writeData(src, m.block * this.blockBytes + within);
        return;
      }
      this.requireWritable();
      const nb = await this.allocate();
      try {
        const whole = within === 0 && src.length === this.blockBytes;
        const merged = m !== undefined && !whole && this.blockBytes <= SMALL_COPY && this.copyMerged(dev, vb, m.block, nb, within, src);
        if (!merged) {
          await this.prepareBlock(nb, m?.block, whole);
          await this.writeData(src, nb * this.blockBytes + within);
        }
      } catch (e) {
        await this.change(() => this.md.releaseData(nb));
        throw e;
      }
      await this.change(() => {
        this.md.insertMapping(dev, vb, nb);
        this.hooks?.mapped(dev, vb, nb, true);
        this.provisionAhead(dev, vb, size);
      });
    } finally {
      release();
    }
  }

  /** A lookup whose result the hooks see in the same step. */
  private lookupSeen(dev: DevId, vb: VirtBlock): Mapping | undefined {
    const m = this.md.lookup(dev, vb);
    if (m && this.hooks) this.hooks.mapped(dev, vb, m.block, !this.md.isShared(dev, m));
    return m;
  }

  private async writeData(src: Buffer, at: number): Promise<void> {
    this.wroteBlock(Math.floor(at / this.blockBytes));
    for (;;) {
      try {
        await this.data.write(src, at);
        // Set on completion: a write finishing after a commit's flush began
        // must be flushed by the next commit.
        this.markDataDirty();
        this.hooks?.wroteBytes?.(src.length);
        if (this.hostFull) this.hostSpaceBack();
        return;
      } catch (e) {
        if (!isThinError(e, 'HOST_NO_SPACE')) throw e;
        await this.waitForHostSpace();
      }
    }
  }

  /**
   * The host filesystem under POOL/data is full: out_of_data_space, and per
   * the no-space policy either fail at once or retry every second until the
   * write goes through or no_space_timeout runs out.
   */
  private async waitForHostSpace(): Promise<void> {
    const full = () => new ThinError('NO_DATA_SPACE', `the host filesystem under ${this.dir}/data is full; free space on it`);
    this.hostFull = true;
    if (this.mode === 'write') this.mode = 'out_of_data_space';
    if (this.errorIfNoSpace() || this.opts.oneShot || this.closed) throw full();
    if (!this.noSpaceTimer && this.config.noSpaceTimeout > 0) {
      this.noSpaceTimer = setTimeout(() => {
        this.noSpaceExpired = true;
        this.failWaiters();
      }, this.config.noSpaceTimeout * 1000);
    }
    await new Promise<void>((resolve) => {
      const retry = setTimeout(resolve, 1000);
      this.spaceWaiters.push(() => {
        clearTimeout(retry);
        resolve();
      });
    });
    if (this.errorIfNoSpace() || this.closed) throw full();
  }

  private hostSpaceBack(): void {
    this.hostFull = false;
    if (this.mode === 'out_of_data_space' && this.md.dsm.nrFree > 0) this.leaveNoSpace();
  }

  /**
   * Copy-on-write of a small block in one synchronous step: read the shared
   * block (or take it from the front end, which may have read it already),
   * lay the write over it, write the new block whole. Two syscalls on
   * the JS thread (the shared block is usually in the host's page cache)
   * instead of two trips through the threadpool, which is most of a
   * copy-on-write's latency. False (nothing written) when the host
   * filesystem is full: the caller takes the async path, which waits.
   */
  private copyMerged(dev: DevId, vb: VirtBlock, from: DataBlock, nb: DataBlock, within: number, src: Buffer): boolean {
    const bytes = this.blockBytes;
    // One buffer for all: the whole copy runs in this synchronous step.
    this.copyBuffer ??= Buffer.allocUnsafe(bytes);
    const block = this.copyBuffer;
    this.reading.inc(from);
    try {
      if (!this.hooks?.copySource?.(dev, vb, from, block)) this.data.readSync(block, from * bytes);
    } finally {
      this.reading.dec(from);
    }
    src.copy(block, within);
    this.wroteBlock(nb);
    try {
      this.data.writeSync(block, nb * bytes);
    } catch (e) {
      if (isThinError(e, 'HOST_NO_SPACE')) return false;
      throw e;
    }
    this.markDataDirty();
    this.hooks?.wroteBytes?.(bytes);
    if (this.hostFull) this.hostSpaceBack();
    return true;
  }

  /** Fills a new block: a copy of the shared one, or zeros, unless the write covers it all. */
  private async prepareBlock(nb: DataBlock, from: DataBlock | undefined, whole: boolean): Promise<void> {
    if (whole) return;
    const bytes = this.blockBytes;
    if (from !== undefined) {
      this.wroteBlock(nb);
      this.reading.inc(from);
      try {
        await this.data.copyWithin(from * bytes, nb * bytes, bytes);
      } finally {
        this.reading.dec(from);
      }
    } else if (!this.config.features.skipBlockZeroing && !this.knownZero(nb)) {
      await this.zeroBlock(nb);
    }
  }

  /**
   * Block b (free, about to be provisioned) reads as zeros: tracked since
   * open, or a hole in the data file. A hole found here also marks the free
   * blocks after b that it covers (up to HOLE_RUN), so a run of provisioning
   * asks the filesystem once, not per block. Only free blocks: they have no
   * write in flight, and any later write marks them again.
   */
  private knownZero(b: number): boolean {
    if (this.zeros.isZero(b)) return true;
    const next = this.data.dataFrom?.(b * this.blockBytes) ?? 0;
    const end = Math.min(Math.floor(next / this.blockBytes), b + HOLE_RUN, this.md.nrDataBlocks);
    if (end <= b) return false;
    for (let x = b + 1; x < end; x++) {
      if (this.md.dataCount(x as DataBlock) === 0 && !this.settling.has(x)) this.zeros.punchedRun(x, 1);
    }
    return true;
  }

  private async zeroBlock(b: DataBlock): Promise<void> {
    try {
      await this.data.punchHole(b * this.blockBytes, this.blockBytes);
      return;
    } catch {
      // No hole punching here: write the zeros.
    }
    const zeros = Buffer.alloc(Math.min(IO_CHUNK, this.blockBytes));
    for (let done = 0; done < this.blockBytes; done += zeros.length) await this.writeData(zeros, b * this.blockBytes + done);
  }

  /** Unmaps the whole blocks inside the range; partial blocks are left alone. */
  async discard(dev: DevId, offset: number, length: number, size: number, name = `device ${dev}`): Promise<number> {
    this.checkRange(size, offset, length, name);
    if (this.config.features.ignoreDiscard || this.mode === 'read_only') return 0;
    const first = Math.ceil(offset / this.blockBytes);
    const end = Math.floor((offset + length) / this.blockBytes);
    let unmapped = 0;
    await this.enterDevice(dev);
    try {
      for (let from = first; from < end;) {
        const batch = await this.guard(() => this.mappedIn(dev, from, end, DISCARD_BATCH));
        if (batch.length === 0) break;
        unmapped += await this.unmapBatch(dev, batch);
        from = batch[batch.length - 1]! + 1;
      }
    } finally {
      this.leaveDevice(dev);
    }
    return unmapped;
  }

  /** Up to `max` mapped virtual blocks in [from, end). */
  private mappedIn(dev: DevId, from: number, end: number, max: number): VirtBlock[] {
    const out: VirtBlock[] = [];
    for (let next = this.md.nextMapped(dev, from as VirtBlock); next && next.vb < end && out.length < max; next = this.md.nextMapped(dev, (next.vb + 1) as VirtBlock)) {
      out.push(next.vb);
    }
    return out;
  }

  /** Takes the blocks' locks in order, then unmaps them all in one metadata step. */
  private async unmapBatch(dev: DevId, vbs: VirtBlock[]): Promise<number> {
    const releases: Array<() => void> = [];
    try {
      for (const vb of vbs) {
        const key = `${dev}:${vb}`;
        releases.push(this.cells.tryAcquire(key) ?? (await this.cells.acquire(key)));
      }
      return await this.change(() => {
        this.hooks?.revoke(dev, { from: vbs[0]!, end: vbs[vbs.length - 1]! + 1 });
        let n = 0;
        for (const vb of vbs) if (this.md.removeMapping(dev, vb) !== undefined) n++;
        return n;
      });
    } finally {
      for (const r of releases) r();
    }
  }

  /**
   * Makes a range read back as zeros, as punching a hole in a file does:
   * whole blocks are discarded, the partial blocks at the edges written with
   * zeros where mapped (which breaks sharing, and may allocate, on a shared
   * block). Discards that the pool ignores still zero the range.
   */
  async punch(dev: DevId, offset: number, length: number, size: number, name = `device ${dev}`): Promise<void> {
    this.checkRange(size, offset, length, name);
    const first = Math.ceil(offset / this.blockBytes) * this.blockBytes;
    const end = Math.floor((offset + length) / this.blockBytes) * this.blockBytes;
    const edges: Array<[number, number]> = first >= end
      ? [[offset, length]]
      : [[offset, first - offset], [end, offset + length - end]];
    if (first < end) {
      if (this.config.features.ignoreDiscard || this.mode === 'read_only') edges.push([first, end - first]);
      else await this.discard(dev, first, end - first, size, name);
    }
    for (const [at, len] of edges) await this.zeroMapped(dev, at, len, size, name);
  }

  /** Writes zeros over the mapped blocks of a range; unmapped ones already read as zeros. */
  private async zeroMapped(dev: DevId, offset: number, length: number, size: number, name: string): Promise<void> {
    for (const p of this.pieces(offset, length)) {
      if (!(await this.guard(() => this.md.lookup(dev, p.vb)))) continue;
      const zeros = Buffer.alloc(Math.min(p.len, IO_CHUNK));
      for (let done = 0; done < p.len; done += zeros.length) {
        const n = Math.min(zeros.length, p.len - done);
        await this.write(dev, zeros.subarray(0, n), offset + p.at + done, size, name);
      }
    }
  }

  //----------------------------------------------------------------------------
  // quiescing a device (dm's suspend/resume) so a snapshot is a consistent point

  private async enterDevice(dev: DevId): Promise<void> {
    for (let s = this.suspended.get(dev); s; s = this.suspended.get(dev)) await s;
    this.writing.set(dev, (this.writing.get(dev) ?? 0) + 1);
  }

  private leaveDevice(dev: DevId): void {
    const n = (this.writing.get(dev) ?? 1) - 1;
    if (n > 0) {
      this.writing.set(dev, n);
      return;
    }
    this.writing.delete(dev);
    this.drained.get(dev)?.();
  }

  /** Holds new writes to dev, waits for the running ones, runs fn, then lets writes go on. */
  async quiesced<T>(dev: DevId, fn: () => Promise<T>): Promise<T> {
    for (let s = this.suspended.get(dev); s; s = this.suspended.get(dev)) await s;
    let resume!: () => void;
    this.suspended.set(dev, new Promise<void>((r) => (resume = r)));
    try {
      if (this.writing.has(dev)) await new Promise<void>((r) => this.drained.set(dev, r));
      this.drained.delete(dev);
      return await fn();
    } finally {
      this.suspended.delete(dev);
      resume();
    }
  }

  //----------------------------------------------------------------------------
  // messages

  /** Runs a dm-thin pool message; every successful message is committed. */
  async message(text: string): Promise<void> {
    const msg = parseMessage(text);
    if (this.mode === 'read_only' || this.mode === 'fail') {
      throw new ThinError('NOT_SUPPORTED', `pool ${this.name} is ${this.mode === 'fail' ? 'failed' : 'read-only'}: messages are refused`);
    }
    await this.runMessage(msg);
  }

  private async runMessage(msg: PoolMessage): Promise<void> {
    switch (msg.kind) {
      case 'create_thin':
        await this.change(() => this.md.createThin(msg.dev));
        break;
      case 'create_snap':
        await this.quiesced(msg.origin, async () => {
          await this.change(() => {
            this.settleSpeculative();
            this.hooks?.revoke(msg.origin, 'writes');
            this.md.createSnap(msg.dev, msg.origin);
          });
          await this.commit();
        });
        break;
      case 'delete':
        await this.deleteDevice(msg.dev);
        break;
      case 'set_transaction_id':
        await this.change(() => this.md.setTransactionId(msg.current, msg.next));
        break;
      case 'reserve_metadata_snap':
        await this.commit();
        await this.change(() => this.md.reserveMetadataSnap());
        break;
      case 'release_metadata_snap':
        await this.change(() => this.md.releaseMetadataSnap());
        break;
    }
    await this.commit();
  }

  /** Deletes a device; a named one loses its name in the same step. */
  private async deleteDevice(dev: DevId): Promise<void> {
    await this.renaming(() => this.deleteDeviceNow(dev));
  }

  private async deleteDeviceNow(dev: DevId): Promise<void> {
    this.md.getDetails(dev);
    if (this.writing.has(dev)) throw new ThinError('DEV_BUSY', `thin device ${dev} is busy (I/O in flight)`);
    const named = this.registry.byId(dev);
    if (named) this.registry.begin({ op: 'remove', device: named });
    try {
      await this.change(() => {
        this.hooks?.revoke(dev, 'all');
        this.md.deleteDevice(dev);
      });
      await this.canaryPunch();
      await this.commit();
    } catch (e) {
      if (named) this.registry.cancel();
      throw e;
    }
    if (named) this.registry.finish();
  }

  //----------------------------------------------------------------------------
  // named devices

  device(name: string): NamedDevice {
    return this.registry.get(name);
  }

  lowestFreeDevId(): DevId {
    let id = 0;
    while (this.md.hasDevice(id as DevId)) id++;
    return id as DevId;
  }

  /** Runs a change of names (and the metadata change behind it) alone. */
  private async renaming<T>(fn: () => Promise<T>): Promise<T> {
    const release = await this.naming.acquire('registry');
    try {
      return await fn();
    } finally {
      release();
    }
  }

  /** Intent, metadata change and commit, then the name: a crash leaves no dangling name. */
  private async addNamed(d: NamedDevice, makeIt: () => Promise<void>, o: NameOptions = {}): Promise<NamedDevice> {
    this.registry.requireFreeName(d.name, o);
    this.registry.begin({ op: 'add', device: d });
    try {
      await makeIt();
      await this.commit();
    } catch (e) {
      this.registry.cancel();
      throw e;
    }
    this.registry.finish();
    return d;
  }

  /** Names and sizes an existing device (dmsetup create ... thin POOL ID). */
  async activate(name: string, devId: DevId, size: number): Promise<NamedDevice> {
    return this.renaming(async () => {
      this.md.getDetails(devId);
      const other = this.registry.byId(devId);
      if (other) throw new ThinError('DEV_EXISTS', `thin device ${devId} is already active as '${other.name}'`);
      return this.addNamed({ name, devId, size }, async () => {});
    });
  }

  async createDevice(name: string, size: number, devId?: DevId, o: NameOptions = {}): Promise<NamedDevice> {
    return this.renaming(async () => {
      this.registry.requireFreeName(name, o);
      this.requireWritable();
      const id = devId ?? this.lowestFreeDevId();
      return this.addNamed({ name, devId: id, size }, () => this.change(() => this.md.createThin(id)), o);
    });
  }

  async snapshot(originName: string, name: string, size?: number, o: NameOptions = {}): Promise<NamedDevice> {
    return this.renaming(async () => {
      const origin = this.registry.get(originName);
      this.registry.requireFreeName(name, o);
      this.requireWritable();
      const id = this.lowestFreeDevId();
      return this.addNamed({ name, devId: id, size: size ?? origin.size }, () =>
        this.quiesced(origin.devId, async () => {
          await this.change(() => {
            this.settleSpeculative();
            this.hooks?.revoke(origin.devId, 'writes');
            this.md.createSnap(id, origin.devId);
          });
          await this.commit();
        }),
      o);
    });
  }

  /** Deletes the device and its name (lvremove). */
  async remove(name: string): Promise<void> {
    const d = this.registry.get(name);
    this.requireWritable();
    await this.deleteDevice(d.devId);
  }

  /** Drops the name and size only (dmsetup remove); the data stays. */
  async deactivate(name: string): Promise<void> {
    await this.renaming(async () => {
      const d = this.registry.get(name);
      this.hooks?.revoke(d.devId, 'all');
      this.registry.delete(name);
    });
  }

  async resizeDevice(name: string, size: number): Promise<NamedDevice> {
    return this.renaming(async () => {
      const d = { ...this.registry.get(name), size };
      this.hooks?.revoke(d.devId, 'all');
      this.registry.set(d);
      return d;
    });
  }

  //----------------------------------------------------------------------------
  // pool resize

  async resizeData(bytes: number): Promise<void> {
    const nr = bytes / this.blockBytes;
    if (nr < this.md.nrDataBlocks) throw new ThinError('EINVAL_ARG', `data size ${bytes} is smaller than the pool (${this.md.nrDataBlocks * this.blockBytes} bytes); pools cannot shrink`);
    if (this.md.needsCheck) throw new ThinError('READ_ONLY', 'unable to grow the data device until repaired (needs_check is set); run thinfuse check');
    if (nr === this.md.nrDataBlocks) return;
    await this.data.truncate(bytes);
    // The new length must be durable before a superblock claims it.
    await this.data.flush();
    await this.change(() => this.md.resizeData(nr));
    await this.commit();
    this.lowWaterArmed = true;
    if (this.mode === 'out_of_data_space') this.leaveNoSpace();
  }

  async resizeMetadata(bytes: number): Promise<void> {
    const nr = Math.min(bytes / META_BLOCK_SIZE, MAX_META_BLOCKS);
    if (bytes < this.md.file.size()) throw new ThinError('EINVAL_ARG', `metadata size ${bytes} is smaller than the metadata file (${this.md.file.size()} bytes); it cannot shrink`);
    if (this.md.needsCheck) throw new ThinError('READ_ONLY', 'unable to grow the metadata device until repaired (needs_check is set); run thinfuse check');
    await this.md.file.truncate(bytes);
    if (nr > this.md.msm.nrBlocks) {
      await this.change(() => this.md.resizeMetadata(nr));
      await this.commit();
    }
  }

  /** Punches every free data block (space a crash or no_discard_passdown left behind). */
  async trim(): Promise<number> {
    await this.commit();
    let punched = 0;
    for (let b = 0; b < this.md.nrDataBlocks; b++) {
      if (this.md.dataCount(b as DataBlock) !== 0) continue;
      let end = b + 1;
      while (end < this.md.nrDataBlocks && this.md.dataCount(end as DataBlock) === 0) end++;
      await this.data.punchHole(b * this.blockBytes, (end - b) * this.blockBytes);
      this.zeros.punchedRun(b, end - b);
      punched += end - b;
      b = end;
    }
    return punched;
  }

  //----------------------------------------------------------------------------
  // reporting

  dataCacheStats(): DataCacheStats | null {
    return this.data instanceof CachedBacking ? this.data.cacheStats() : null;
  }

  /** Mapped, exclusive and shared block counts of every device, as thin_ls counts them. */
  usage(): DeviceUsage[] {
    const users = new Map<number, number>();
    for (const dev of this.md.devices()) {
      this.md.forEachMapping(dev, (_vb, m) => {
        users.set(m.block, (users.get(m.block) ?? 0) + 1);
      });
    }
    return this.md.devices().map((dev) => {
      let exclusive = 0;
      this.md.forEachMapping(dev, (_vb, m) => {
        if (users.get(m.block) === 1) exclusive++;
      });
      const named = this.registry.byId(dev);
      const details = this.md.getDetails(dev);
      return {
        devId: dev,
        name: named?.name,
        size: named?.size,
        mappedBlocks: details.mappedBlocks,
        exclusiveBlocks: exclusive,
        sharedBlocks: details.mappedBlocks - exclusive,
        highestMapped: this.md.highestMapped(dev),
      };
    });
  }
}

/** Blocks as [first, count, ...] runs of consecutive numbers, ascending. */
function runsOf(blocks: Set<number>): number[] {
  const sorted = [...blocks].sort((a, b) => a - b);
  const runs: number[] = [];
  for (let i = 0; i < sorted.length;) {
    let j = i + 1;
    while (j < sorted.length && sorted[j] === sorted[j - 1]! + 1) j++;
    runs.push(sorted[i]!, j - i);
    i = j;
  }
  return runs;
}
