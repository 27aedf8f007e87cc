import type { DataBlock, DevId, VirtBlock } from '../base/units.js';
import type { Transactions } from './commit.js';
import type { PoolContext } from './context.js';
import type { PoolModes } from './modes.js';

// Where new data blocks come from: allocation (which waits for commits or
// for space per the no-space policy), the known-zero blocks that need no
// zeroing, host space allocated ahead of the allocator, and provisioning
// ahead of a sequential writer. Calls the modes and the transactions.
//
// Provisioning ahead: when a front end that copies mappings (the FUSE fast
// path) sees a device written sequentially through unprovisioned blocks, it
// asks for the blocks ahead to be provisioned now (known-zero blocks only),
// so the writes that follow land in mapped blocks without waking JS. Before
// every commit and snapshot the front end reports which of those blocks
// nothing wrote, and they are unmapped again in the same step
// (Transactions.settleSpeculative).

/** Host space kept allocated ahead of the allocation cursor, in blocks, refilled when fewer than PREALLOC_LOW are left. */
const PREALLOC_CHUNK = 64;
const PREALLOC_LOW = 32;
/** The most free blocks one hole lookup marks as known zero. */
const HOLE_RUN = 4096;

export class Provisioner {
  /** Data blocks [start, end) whose host space preallocAhead has allocated; its job in flight. */
  private prealloc = { start: 0, end: 0, off: false };
  private preallocJob: Promise<void> | undefined;

  constructor(private readonly ctx: PoolContext, private readonly modes: PoolModes, private readonly tx: Transactions) {}

  /** A free data block, counted as used; waits (or fails) as the no-space policy says when there is none. */
  async allocate(): Promise<DataBlock> {
    for (;;) {
      const b = await this.tx.change(() => this.canaryReuse() ?? this.ctx.md.allocData(this.skipAlloc));
      if (b !== undefined) {
        this.preallocAhead();
        this.modes.checkLowWater();
        return b;
      }
      // A commit (ours, or one already running) may free blocks: retry after it.
      if (this.tx.mayFreeBlocks()) {
        await this.tx.commit();
        continue;
      }
      await this.modes.waitForSpace();
    }
  }

  /** The host space allocation in flight, if any (close waits for it). */
  idle(): Promise<void> | undefined {
    return this.preallocJob;
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
    const { data, md, blockBytes } = this.ctx;
    const p = this.prealloc;
    if (this.preallocJob || p.off || !data.preallocate || this.ctx.closed) return;
    const next = md.dsm.nextHint;
    if (next >= p.start && next + PREALLOC_LOW <= p.end) return;
    const start = next >= p.start && next < p.end ? p.end : next;
    const end = Math.min(start + PREALLOC_CHUNK, md.nrDataBlocks);
    if (start >= end) return;
    this.preallocJob = data.preallocate(start * blockBytes, (end - start) * blockBytes).then(
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
  private readonly skipAlloc = (b: number): boolean => this.ctx.reading.has(b) || this.tx.settling.has(b);

  /**
   * Provisions the blocks after vb that the hooks ask for, synchronously, in
   * the step that mapped vb: only unmapped blocks whose cell no request
   * holds, only known-zero data blocks (or any, without block zeroing), and
   * never into the low-water reserve.
   */
  provisionAhead(dev: DevId, vb: VirtBlock, size: number): void {
    const { hooks, md, config, cells } = this.ctx;
    const n = hooks?.ahead?.(dev, vb) ?? 0;
    if (n <= 0 || this.modes.mode !== 'write') return;
    const zeroing = !config.features.skipBlockZeroing;
    const end = Math.min(vb + 1 + n, Math.ceil(size / this.ctx.blockBytes));
    for (let v = vb + 1; v < end; v++) {
      if (md.dsm.nrFree <= config.lowWaterMark + n) return;
      if (cells.isHeld(`${dev}:${v}`) || md.lookup(dev, v as VirtBlock)) continue;
      const candidate = md.dsm.findFree(this.skipAlloc);
      if (candidate === undefined || (zeroing && !this.knownZero(candidate))) return;
      const b = md.allocData(this.skipAlloc)!;
      this.ctx.zeros.written(b);
      md.insertMapping(dev, v as VirtBlock, b);
      if (hooks!.speculated) hooks!.speculated(dev, v as VirtBlock, b);
      else hooks!.mapped(dev, v as VirtBlock, b, true);
      // The next commit flushes the data file: a punched block's hole must be durable before a mapping to it is.
      this.tx.markDataDirty();
    }
    this.preallocAhead();
  }

  /**
   * Block b (free, about to be provisioned) reads as zeros: tracked since
   * open, or a hole in the data file. A hole found here also marks the free
   * blocks after b that it covers (up to HOLE_RUN), so a run of provisioning
   * asks the filesystem once, not per block. Only free blocks: they have no
   * write in flight, and any later write marks them again.
   */
  knownZero(b: number): boolean {
    const { zeros, data, md, blockBytes } = this.ctx;
    if (zeros.isZero(b)) return true;
    const next = data.dataFrom?.(b * blockBytes) ?? 0;
    const end = Math.min(Math.floor(next / blockBytes), b + HOLE_RUN, md.nrDataBlocks);
    if (end <= b) return false;
    for (let x = b + 1; x < end; x++) {
      if (md.dataCount(x as DataBlock) === 0 && !this.tx.settling.has(x)) zeros.punchedRun(x, 1);
    }
    return true;
  }

  /** TEST HOOK (canary 'reuse-before-commit'): a block freed in this transaction, taken again. */
  private canaryReuse(): DataBlock | undefined {
    const md = this.ctx.md;
    if (this.ctx.opts.canary !== 'reuse-before-commit') return undefined;
    const i = md.freedData.findIndex((x) => md.dataCount(x) === 0);
    if (i < 0) return undefined;
    const [b] = md.freedData.splice(i, 1) as [DataBlock];
    md.dsm.inc(b);
    return b;
  }
}
