import { ThinError } from '../base/errors.js';
import type { PoolContext } from './context.js';

// The pool's mode machine (dm-thin's write, out_of_data_space, read_only,
// fail), the no-space policy (queue_if_no_space, error_if_no_space,
// no_space_timeout) and the low-water event. Writers that find no space wait
// here; whoever frees or adds space lets them go. Calls nothing but the
// context's hooks and metadata counters.

export type PoolMode = 'write' | 'out_of_data_space' | 'read_only' | 'fail';

export class PoolModes {
  private current: PoolMode = 'write';
  lowWaterEvents = 0;
  /** dm's event counter: low-water crossings and mode changes (dmsetup info's Event number, dmsetup wait). */
  events = 0;
  private lowWaterArmed = true;
  private spaceWaiters: Array<() => void> = [];
  private noSpaceExpired = false;
  private noSpaceTimer: NodeJS.Timeout | undefined;
  /** Writes are waiting because the host filesystem under POOL/data is full. */
  private hostFull = false;

  constructor(private readonly ctx: PoolContext) {}

  get mode(): PoolMode {
    return this.current;
  }

  /** read_only takes away writes in place, fail all I/O: copies of mappings are told first. */
  set mode(m: PoolMode) {
    if (m !== this.current) this.events++;
    if (m === 'read_only' || m === 'fail') {
      this.ctx.hooks?.dirtied?.();
      this.ctx.hooks?.revoke(undefined, m === 'fail' ? 'all' : 'writes');
    }
    const from = this.current;
    this.current = m;
    if (from !== m) this.ctx.events.emit('mode_change', { from, to: m, needsCheck: this.ctx.md.needsCheck });
  }

  /** write or out_of_data_space: metadata may change. */
  get writable(): boolean {
    return this.current === 'write' || this.current === 'out_of_data_space';
  }

  requireWritable(): void {
    if (this.mode === 'fail') throw new ThinError('POOL_FAILED', 'the pool has failed; close it and run thinfuse check');
    if (this.mode === 'read_only') {
      throw new ThinError('READ_ONLY', this.ctx.md.needsCheck
        ? 'the pool is read-only with needs_check set; run thinfuse check and repair it'
        : 'the pool is read-only');
    }
  }

  /** error_if_no_space, as the feature says or because the no-space timeout ran out. */
  get noSpacePolicy(): 'error_if_no_space' | 'queue_if_no_space' {
    return this.errorIfNoSpace() ? 'error_if_no_space' : 'queue_if_no_space';
  }

  //----------------------------------------------------------------------------
  // low water

  checkLowWater(): void {
    if (this.lowWaterArmed && this.ctx.md.dsm.nrFree <= this.ctx.config.lowWaterMark) {
      this.lowWaterArmed = false;
      this.lowWaterEvents++;
      this.ctx.events.emit('low_water', { freeBlocks: this.ctx.md.dsm.nrFree, lowWaterMark: this.ctx.config.lowWaterMark });
      this.events++;
    }
  }

  /** The data device grew: the next crossing of the mark is an event again. */
  rearmLowWater(): void {
    this.lowWaterArmed = true;
  }

  //----------------------------------------------------------------------------
  // no data space

  private noSpaceError(): ThinError {
    return new ThinError('NO_DATA_SPACE', `pool ${this.ctx.name} is out of data space; grow it with thinfuse resize POOL --data-size S, or free blocks (discard, remove)`);
  }

  private errorIfNoSpace(): boolean {
    return this.ctx.config.features.errorIfNoSpace || this.noSpaceExpired;
  }

  /** The allocator found no free block: out_of_data_space, then fail or queue as the policy says. */
  async waitForSpace(): Promise<void> {
    if (this.mode === 'write') this.enterNoSpace(false);
    if (this.errorIfNoSpace() || this.ctx.opts.oneShot) throw this.noSpaceError();
    this.startNoSpaceTimer();
    await new Promise<void>((resolve) => this.spaceWaiters.push(resolve));
    if (this.mode === 'out_of_data_space' && this.errorIfNoSpace()) throw this.noSpaceError();
  }

  /**
   * The host filesystem under POOL/data is full: out_of_data_space, and per
   * the no-space policy either fail at once or retry every second until the
   * write goes through or no_space_timeout runs out.
   */
  async waitForHostSpace(): Promise<void> {
    const full = () => new ThinError('NO_DATA_SPACE', `the host filesystem under ${this.ctx.dir}/data is full; free space on it`);
    this.hostFull = true;
    if (this.mode === 'write') this.enterNoSpace(true);
    if (this.errorIfNoSpace() || this.ctx.opts.oneShot || this.ctx.closed) throw full();
    this.startNoSpaceTimer();
    await new Promise<void>((resolve) => {
      const retry = setTimeout(resolve, 1000);
      this.spaceWaiters.push(() => {
        clearTimeout(retry);
        resolve();
      });
    });
    if (this.errorIfNoSpace() || this.ctx.closed) throw full();
  }

  private enterNoSpace(hostFull: boolean): void {
    this.mode = 'out_of_data_space';
    this.ctx.events.emit('out_of_data_space', { policy: this.noSpacePolicy, hostFull, totalBlocks: this.ctx.md.dsm.nrBlocks });
  }

  private startNoSpaceTimer(): void {
    if (this.noSpaceTimer || this.ctx.config.noSpaceTimeout <= 0) return;
    this.noSpaceTimer = setTimeout(() => {
      this.noSpaceExpired = true;
      this.failWaiters();
    }, this.ctx.config.noSpaceTimeout * 1000);
  }

  /** A write to the data file went through: if the host had been full, space is back. */
  wroteData(): void {
    if (!this.hostFull) return;
    this.hostFull = false;
    if (this.mode === 'out_of_data_space' && this.ctx.md.dsm.nrFree > 0) this.leaveNoSpace();
  }

  /** A commit freed blocks, or the data device grew. */
  spaceFreed(): void {
    if (this.mode === 'out_of_data_space' && this.ctx.md.dsm.nrFree > 0) this.leaveNoSpace();
  }

  leaveNoSpace(): void {
    this.mode = 'write';
    this.noSpaceExpired = false;
    clearTimeout(this.noSpaceTimer);
    this.noSpaceTimer = undefined;
    this.failWaiters();
  }

  /** The pool is closing: no timer left, every waiter woken (and failed by its caller's checks). */
  stop(): void {
    clearTimeout(this.noSpaceTimer);
    this.failWaiters();
  }

  private failWaiters(): void {
    const w = this.spaceWaiters;
    this.spaceWaiters = [];
    for (const r of w) r();
  }
}
