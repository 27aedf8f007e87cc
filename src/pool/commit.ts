import { isThinError, ThinError } from '../base/errors.js';
import type { DataBlock } from '../base/units.js';
import type { PoolContext } from './context.js';
import type { PoolModes } from './modes.js';

// Transactions and flushes: every metadata step runs through change() or
// guard(), which abort the transaction on a metadata failure (dm-thin's
// metadata_operation_failed: roll back, needs_check, read-only); commit()
// and flush() make it durable. Also owns what a commit leaves behind: the
// data blocks it freed (held out of allocation until their holes are
// punched), the data written since the last data flush, and dropping
// flushed blocks from the host page cache. Calls the modes and the context.
//
// A commit takes its transaction in one synchronous step (md.commit's
// prepareCommit), then writes it while the next transaction goes on: as in
// dm-thin, allocation, data writes and mapping inserts do not wait for the
// data file's flush. Commit = flush data, write new metadata blocks, flush,
// write the superblock, flush (pool-metadata.ts).

/** The most blocks written through the pool between two data flushes that are tracked for dropWritten. */
const DROP_MAX = 65536;

export class Transactions {
  private commitRunning: Promise<void> | undefined;
  /** Punches of blocks freed by commits, running after them (see settling). */
  private punching: Promise<void> = Promise.resolve();
  /** Data blocks freed by a commit still in flight: not allocated until it is durable and punched. */
  readonly settling = new Set<number>();
  /** Data written since the last flush; a commit with none skips the data flush. */
  private dataDirty = false;
  /**
   * Why flushes fail from now on: the first failed fdatasync of the data
   * file (after a failed writeback the host may mark dirty pages clean, so a
   * later fsync could succeed without the data: fsyncgate), or an aborted
   * transaction (acknowledged writes since the last commit are gone). Sticky:
   * every later flush fails until the pool is reopened.
   */
  private flushError: ThinError | undefined;
  private dataFlushing: Promise<void> | undefined;
  /** Data blocks written through the pool since the last data flush: dropped from the host page cache once it made them durable (dropWritten). */
  private writtenBlocks = new Set<number>();

  constructor(private readonly ctx: PoolContext, private readonly modes: PoolModes) {}

  //----------------------------------------------------------------------------
  // metadata steps

  /** Runs a synchronous metadata change; a failure aborts the transaction. */
  async change<T>(fn: () => T): Promise<T> {
    await this.metadataReady();
    return this.guard(fn);
  }

  /** Runs a metadata read or change; a corrupt block or failed metadata I/O aborts. */
  async guard<T>(fn: () => T): Promise<T> {
    try {
      return fn();
    } catch (e) {
      if (isThinError(e) && (e.code === 'BAD_METADATA' || e.code === 'NO_METADATA_SPACE' || e.code === 'IO_ERROR' || e.code === 'HOST_NO_SPACE')) {
        return this.metadataFailed(e);
      }
      throw e;
    }
  }

  /** Metadata may be changed right after this returns (a running commit has already taken its transaction). */
  private async metadataReady(): Promise<void> {
    this.modes.requireWritable();
  }

  /**
   * A metadata operation failed: roll back to the last commit, set
   * needs_check and go read-only, as dm-thin's metadata_operation_failed.
   */
  private async metadataFailed(e: unknown): Promise<never> {
    this.flushError ??= new ThinError('IO_ERROR', `pool ${this.ctx.name} aborted its transaction (${(e as Error)?.message}); writes since the last commit may be lost, so flushes fail: close the pool, run thinfuse check`);
    // A commit in flight would write its superblock over the abort's needs_check.
    while (this.commitRunning) await this.commitRunning.catch(() => {});
    if (this.modes.mode !== 'fail') {
      if (isThinError(e, 'NO_METADATA_SPACE')) this.ctx.events.emit('out_of_metadata_space', { totalBlocks: this.ctx.md.msm.nrBlocks });
      this.ctx.events.emit('transaction_aborted', { reason: (e as Error)?.message ?? String(e), code: isThinError(e) ? e.code : 'INTERNAL' });
      try {
        this.ctx.hooks?.revoke(undefined, 'all');
        this.settling.clear();
        this.ctx.md.abort();
        await this.ctx.md.writeNeedsCheck();
        this.modes.mode = 'read_only';
      } catch {
        this.modes.mode = 'fail';
      }
    }
    throw e;
  }

  //----------------------------------------------------------------------------
  // commit and flush

  /** Commits if anything changed (concurrent callers share one commit), then waits for the freed blocks' punches. */
  async commit(): Promise<void> {
    await this.commitTransaction();
    await this.punching;
  }

  /** The freed blocks' punches that are running now. */
  punches(): Promise<void> {
    return this.punching;
  }

  /** Freed blocks may come back to the allocator if it waits for a commit. */
  mayFreeBlocks(): boolean {
    return this.ctx.md.freedData.length > 0 || this.commitRunning !== undefined || this.settling.size > 0;
  }

  /** The commit alone: a flush does not wait for space to go back to the host. */
  private async commitTransaction(): Promise<void> {
    while (this.commitRunning) await this.commitRunning;
    if (!this.ctx.md.hasChanges() || this.modes.mode === 'read_only' || this.modes.mode === 'fail') return;
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
    if (this.dataDirty || alsoData) await this.flushData();
    // Another request's data flush, still running, may hold our writes: its outcome is ours.
    if (this.dataFlushing) await this.dataFlushing.catch(() => {});
    if (this.flushError) throw this.flushError;
  }

  /** A flush with no metadata to commit: fdatasync, then drop what it made durable from the page cache. */
  private async flushData(): Promise<void> {
    this.dataDirty = false;
    const written = this.takeWritten();
    try {
      await this.flushDataFile();
      void this.dropWritten(written);
    } catch (e) {
      // As a failed commit would: abort, needs_check, read-only.
      while (this.commitRunning) await this.commitRunning.catch(() => {});
      if (this.modes.writable) await this.metadataFailed(e);
      throw e;
    }
  }

  /**
   * Nothing but writes the pool did not see since the last durable point: a
   * flush is one fdatasync of the data file (the fast path may do it itself
   * until dirtied() is called).
   */
  isClean(): boolean {
    return this.modes.writable && !this.ctx.md.hasChanges() && !this.dataDirty && !this.commitRunning && !this.flushError;
  }

  /** An fdatasync of the data file done outside the pool failed: as if ours had (sticky, abort, read-only). */
  async dataFlushFailed(e: Error): Promise<never> {
    this.flushError ??= new ThinError('IO_ERROR', `flushing ${this.ctx.dir}/data failed (${e.message}); every later flush fails too: close the pool, run thinfuse check, reopen`, {}, e);
    if (this.modes.writable) await this.metadataFailed(this.flushError);
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
      await this.ctx.data.flush();
    } catch (e) {
      this.flushError = new ThinError('IO_ERROR', `flushing ${this.ctx.dir}/data failed (${(e as Error).message}); every later flush fails too: close the pool, run thinfuse check, reopen`, {}, e);
      this.ctx.hooks?.dirtied?.();
      throw this.flushError;
    }
  }

  /** Everything up to md.commit's prepareCommit runs in one synchronous step. */
  private async runCommit(): Promise<void> {
    let freed: DataBlock[] = [];
    let written: number[] = [];
    try {
      this.settleSpeculative();
      freed = this.ctx.md.freedData;
      this.ctx.md.freedData = [];
      for (const b of freed) this.settling.add(b);
      const flushData = this.dataDirty;
      this.dataDirty = false;
      // Only what this commit's data flush makes durable; the rest waits for a later flush.
      if (flushData) written = this.takeWritten();
      const start = process.hrtime.bigint();
      await this.ctx.md.commit(() => (flushData ? this.flushDataFile() : Promise.resolve()));
      this.ctx.events.committed(Number(process.hrtime.bigint() - start) / 1e9);
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
    this.modes.spaceFreed();
  }

  //----------------------------------------------------------------------------
  // blocks provisioned ahead that nothing wrote

  /** Unmaps the speculative blocks nothing wrote, now: a front end whose hooks go away first. */
  async settleSpeculation(): Promise<void> {
    if (this.modes.mode === 'read_only' || this.modes.mode === 'fail' || this.ctx.closed) return;
    await this.guard(() => this.settleSpeculative());
  }

  /**
   * Unmaps the speculatively provisioned blocks that nothing wrote
   * (synchronous, in the step of a commit or snapshot): metadata never
   * records a block the device did not write.
   */
  settleSpeculative(): void {
    const md = this.ctx.md;
    const unwritten = this.ctx.hooks?.settle?.() ?? [];
    for (const s of unwritten) {
      if (md.hasDevice(s.dev) && md.lookup(s.dev, s.vb)?.block === s.block) {
        md.removeMapping(s.dev, s.vb);
        // Nothing wrote it: it still reads as zeros.
        this.ctx.zeros.punchedRun(s.block, 1);
      }
    }
  }

  //----------------------------------------------------------------------------
  // data written since the last flush

  markDataDirty(): void {
    this.dataDirty = true;
    this.ctx.hooks?.dirtied?.();
  }

  /** Block b's data changed through the pool (so it no longer reads as zeros). */
  wroteBlock(b: number): void {
    this.ctx.zeros.written(b);
    if (this.writtenBlocks.size < DROP_MAX && this.ctx.data.dropCache) this.writtenBlocks.add(b);
  }

  /** Blocks written since the last call, through the pool or (hooks) outside it, as [first, count, ...] runs. */
  private takeWritten(): number[] {
    const runs = [...runsOf(this.writtenBlocks), ...(this.ctx.hooks?.takeWritten?.() ?? [])];
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
    const bytes = this.ctx.blockBytes;
    for (let i = 0; i + 1 < runs.length; i += 2) {
      await this.ctx.data.dropCache?.(runs[i]! * bytes, runs[i + 1]! * bytes).catch(() => {});
    }
  }

  //----------------------------------------------------------------------------
  // freed blocks back to the host

  /** Returns freed blocks to the host filesystem, now that no commit points at them. */
  private async punchFreed(freed: DataBlock[]): Promise<void> {
    const { config, md, data, blockBytes } = this.ctx;
    if (config.features.noDiscardPassdown || config.features.ignoreDiscard) return;
    const free = freed.filter((b) => md.dataCount(b) === 0).sort((a, b) => a - b);
    for (let i = 0; i < free.length;) {
      let j = i + 1;
      while (j < free.length && free[j]! <= free[j - 1]! + 1) j++;
      try {
        await data.punchHole(free[i]! * blockBytes, (free[j - 1]! - free[i]! + 1) * blockBytes);
        this.ctx.zeros.punchedRun(free[i]!, free[j - 1]! - free[i]! + 1);
      } catch {
        // Passdown errors are ignored, as dm-thin does: the blocks are free either way.
      }
      i = j;
    }
  }

  /** TEST HOOK (canary 'punch-before-commit'): punches blocks freed in this transaction now. */
  async canaryPunch(): Promise<void> {
    if (this.ctx.opts.canary === 'punch-before-commit') await this.punchFreed([...this.ctx.md.freedData]);
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
