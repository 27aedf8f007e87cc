import { isThinError, ThinError } from '../base/errors.js';
import { type DataBlock, type DevId, IO_CHUNK, type VirtBlock } from '../base/units.js';
import type { Transactions } from './commit.js';
import type { PoolContext } from './context.js';
import type { PoolModes } from './modes.js';
import type { Mapping } from './pool-metadata.js';
import type { Provisioner } from './provision.js';
import type { Quiesce } from './quiesce.js';

// The bio path: device reads, writes, discards and punches, one data block
// at a time. Requests that touch one virtual block are ordered by the block
// locks (ctx.cells, the bio prison's role); everything else runs at once.
// A write to an unshared mapped block goes in place; any other write
// provisions a block (zeroed, or a copy of the shared one: copy-on-write)
// and maps it. Calls the provisioner, the transactions, the modes and the
// quiesce counts.

/** Blocks up to this size are copied on write in one synchronous read and write (copyMerged). */
const SMALL_COPY = 256 * 1024;
/** Blocks unmapped per metadata step of a discard (dm-thin's bio prison range is 1024). */
const DISCARD_BATCH = 1024;

interface Piece {
  vb: VirtBlock;
  within: number;
  at: number;
  len: number;
}

export class IoPath {
  /** copyMerged's block buffer. */
  private copyBuffer: Buffer | undefined;

  constructor(
    private readonly ctx: PoolContext,
    private readonly modes: PoolModes,
    private readonly tx: Transactions,
    private readonly provisioner: Provisioner,
    private readonly quiesce: Quiesce,
  ) {}

  private get blockBytes(): number {
    return this.ctx.blockBytes;
  }

  private checkRange(size: number, offset: number, length: number, name: string): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
      throw new ThinError('OUT_OF_RANGE', `I/O at ${offset}+${length} is past the end of ${name} (${size} bytes)`, { offset, length, size });
    }
  }

  /** Splits [offset, offset+length) at data block boundaries. */
  private *pieces(offset: number, length: number): Generator<Piece> {
    for (let at = 0; at < length;) {
      const pos = offset + at;
      const vb = Math.floor(pos / this.blockBytes) as VirtBlock;
      const within = pos - vb * this.blockBytes;
      const len = Math.min(this.blockBytes - within, length - at);
      yield { vb, within, at, len };
      at += len;
    }
  }

  //----------------------------------------------------------------------------
  // reads

  async read(dev: DevId, buf: Buffer, offset: number, size: number, name: string): Promise<void> {
    this.checkRange(size, offset, buf.length, name);
    if (this.modes.mode === 'fail') throw new ThinError('POOL_FAILED', 'the pool has failed; reads are refused');
    const vb = Math.floor(offset / this.blockBytes);
    const within = offset - vb * this.blockBytes;
    if (within + buf.length <= this.blockBytes) return this.readBlock(dev, vb as VirtBlock, within, buf);
    const jobs: Promise<void>[] = [];
    for (const p of this.pieces(offset, buf.length)) jobs.push(this.readBlock(dev, p.vb, p.within, buf.subarray(p.at, p.at + p.len)));
    await Promise.all(jobs);
  }

  private async readBlock(dev: DevId, vb: VirtBlock, within: number, dst: Buffer): Promise<void> {
    const { md, hooks, reading } = this.ctx;
    let m: Mapping | undefined;
    try {
      m = md.lookup(dev, vb);
    } catch (e) {
      return this.tx.guard(() => {
        throw e;
      });
    }
    if (!m) {
      dst.fill(0);
      return;
    }
    // A held device's copies must not take writes in place.
    hooks?.mapped(dev, vb, m.block, !md.isShared(dev, m) && !this.quiesce.held(dev));
    reading.inc(m.block);
    try {
      await this.ctx.data.read(dst, m.block * this.blockBytes + within);
    } finally {
      reading.dec(m.block);
    }
  }

  //----------------------------------------------------------------------------
  // writes

  async write(dev: DevId, buf: Buffer, offset: number, size: number, name: string): Promise<void> {
    this.checkRange(size, offset, buf.length, name);
    await this.quiesce.enter(dev);
    try {
      const jobs: Promise<void>[] = [];
      for (const p of this.pieces(offset, buf.length)) jobs.push(this.writeBlock(dev, p.vb, p.within, buf.subarray(p.at, p.at + p.len), size));
      await Promise.all(jobs);
    } finally {
      this.quiesce.leave(dev);
    }
  }

  private async writeBlock(dev: DevId, vb: VirtBlock, within: number, src: Buffer, size: number): Promise<void> {
    const release = await this.ctx.cells.acquire(`${dev}:${vb}`);
    try {
      if (this.modes.mode === 'fail') throw new ThinError('POOL_FAILED', 'the pool has failed; writes are refused');
      const m = await this.tx.guard(() => this.lookupSeen(dev, vb));
      if (m && !this.ctx.md.isShared(dev, m)) {
        this.ctx.hooks?.wrote?.(dev, vb);
        await this.writeData(src, m.block * this.blockBytes + within);
        return;
      }
      this.modes.requireWritable();
      const nb = await this.provisioner.allocate();
      await this.fillNew(dev, vb, m, nb, within, src);
      await this.tx.change(() => {
        this.ctx.md.insertMapping(dev, vb, nb);
        this.ctx.hooks?.mapped(dev, vb, nb, true);
        this.provisioner.provisionAhead(dev, vb, size);
      });
    } finally {
      release();
    }
  }

  /** Writes src into the new block nb (over a copy of m's block, or zeros); on failure nb goes back. */
  private async fillNew(dev: DevId, vb: VirtBlock, m: Mapping | undefined, nb: DataBlock, within: number, src: Buffer): Promise<void> {
    try {
      const whole = within === 0 && src.length === this.blockBytes;
      const merged = m !== undefined && !whole && this.blockBytes <= SMALL_COPY && this.copyMerged(dev, vb, m.block, nb, within, src);
      if (!merged) {
        await this.prepareBlock(nb, m?.block, whole);
        await this.writeData(src, nb * this.blockBytes + within);
      }
    } catch (e) {
      await this.tx.change(() => this.ctx.md.releaseData(nb));
      throw e;
    }
  }

  /** A lookup whose result the hooks see in the same step. */
  private lookupSeen(dev: DevId, vb: VirtBlock): Mapping | undefined {
    const { md, hooks } = this.ctx;
    const m = md.lookup(dev, vb);
    if (m && hooks) hooks.mapped(dev, vb, m.block, !md.isShared(dev, m));
    return m;
  }

  private async writeData(src: Buffer, at: number): Promise<void> {
    this.tx.wroteBlock(Math.floor(at / this.blockBytes));
    for (;;) {
      try {
        await this.ctx.data.write(src, at);
        // Set on completion: a write finishing after a commit's flush began
        // must be flushed by the next commit.
        this.tx.markDataDirty();
        this.ctx.hooks?.wroteBytes?.(src.length);
        this.modes.wroteData();
        return;
      } catch (e) {
        if (!isThinError(e, 'HOST_NO_SPACE')) throw e;
        await this.modes.waitForHostSpace();
      }
    }
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
    const { data, reading } = this.ctx;
    const bytes = this.blockBytes;
    // One buffer for all: the whole copy runs in this synchronous step.
    this.copyBuffer ??= Buffer.allocUnsafe(bytes);
    const block = this.copyBuffer;
    reading.inc(from);
    try {
      if (!this.ctx.hooks?.copySource?.(dev, vb, from, block)) data.readSync(block, from * bytes);
    } finally {
      reading.dec(from);
    }
    src.copy(block, within);
    this.tx.wroteBlock(nb);
    try {
      data.writeSync(block, nb * bytes);
    } catch (e) {
      if (isThinError(e, 'HOST_NO_SPACE')) return false;
      throw e;
    }
    this.tx.markDataDirty();
    this.ctx.hooks?.wroteBytes?.(bytes);
    this.modes.wroteData();
    return true;
  }

  /** Fills a new block: a copy of the shared one, or zeros, unless the write covers it all. */
  private async prepareBlock(nb: DataBlock, from: DataBlock | undefined, whole: boolean): Promise<void> {
    if (whole) return;
    const bytes = this.blockBytes;
    if (from !== undefined) {
      this.tx.wroteBlock(nb);
      this.ctx.reading.inc(from);
      try {
        await this.ctx.data.copyWithin(from * bytes, nb * bytes, bytes);
      } finally {
        this.ctx.reading.dec(from);
      }
    } else if (!this.ctx.config.features.skipBlockZeroing && !this.provisioner.knownZero(nb)) {
      await this.zeroBlock(nb);
    }
  }

  private async zeroBlock(b: DataBlock): Promise<void> {
    try {
      await this.ctx.data.punchHole(b * this.blockBytes, this.blockBytes);
      return;
    } catch {
      // No hole punching here: write the zeros.
    }
    const zeros = Buffer.alloc(Math.min(IO_CHUNK, this.blockBytes));
    for (let done = 0; done < this.blockBytes; done += zeros.length) await this.writeData(zeros, b * this.blockBytes + done);
  }

  //----------------------------------------------------------------------------
  // discards and punches

  /** Unmaps the whole blocks inside the range; partial blocks are left alone. */
  async discard(dev: DevId, offset: number, length: number, size: number, name: string): Promise<number> {
    this.checkRange(size, offset, length, name);
    if (this.ctx.config.features.ignoreDiscard || this.modes.mode === 'read_only') return 0;
    const first = Math.ceil(offset / this.blockBytes);
    const end = Math.floor((offset + length) / this.blockBytes);
    let unmapped = 0;
    await this.quiesce.enter(dev);
    try {
      for (let from = first; from < end;) {
        const batch = await this.tx.guard(() => this.mappedIn(dev, from, end, DISCARD_BATCH));
        if (batch.length === 0) break;
        unmapped += await this.unmapBatch(dev, batch);
        from = batch[batch.length - 1]! + 1;
      }
    } finally {
      this.quiesce.leave(dev);
    }
    return unmapped;
  }

  /** Up to `max` mapped virtual blocks in [from, end). */
  private mappedIn(dev: DevId, from: number, end: number, max: number): VirtBlock[] {
    const md = this.ctx.md;
    const out: VirtBlock[] = [];
    for (let next = md.nextMapped(dev, from as VirtBlock); next && next.vb < end && out.length < max; next = md.nextMapped(dev, (next.vb + 1) as VirtBlock)) {
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
        releases.push(this.ctx.cells.tryAcquire(key) ?? (await this.ctx.cells.acquire(key)));
      }
      return await this.tx.change(() => {
        this.ctx.hooks?.revoke(dev, { from: vbs[0]!, end: vbs[vbs.length - 1]! + 1 });
        let n = 0;
        for (const vb of vbs) if (this.ctx.md.removeMapping(dev, vb) !== undefined) n++;
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
  async punch(dev: DevId, offset: number, length: number, size: number, name: string): Promise<void> {
    this.checkRange(size, offset, length, name);
    const first = Math.ceil(offset / this.blockBytes) * this.blockBytes;
    const end = Math.floor((offset + length) / this.blockBytes) * this.blockBytes;
    const edges: Array<[number, number]> = first >= end
      ? [[offset, length]]
      : [[offset, first - offset], [end, offset + length - end]];
    if (first < end) {
      if (this.ctx.config.features.ignoreDiscard || this.modes.mode === 'read_only') edges.push([first, end - first]);
      else await this.discard(dev, first, end - first, size, name);
    }
    for (const [at, len] of edges) await this.zeroMapped(dev, at, len, size, name);
  }

  /** Writes zeros over the mapped blocks of a range; unmapped ones already read as zeros. */
  private async zeroMapped(dev: DevId, offset: number, length: number, size: number, name: string): Promise<void> {
    for (const p of this.pieces(offset, length)) {
      if (!(await this.tx.guard(() => this.ctx.md.lookup(dev, p.vb)))) continue;
      const zeros = Buffer.alloc(Math.min(p.len, IO_CHUNK));
      for (let done = 0; done < p.len; done += zeros.length) {
        const n = Math.min(zeros.length, p.len - done);
        await this.write(dev, zeros.subarray(0, n), offset + p.at + done, size, name);
      }
    }
  }
}
