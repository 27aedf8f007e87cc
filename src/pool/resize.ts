import { ThinError } from '../base/errors.js';
import { type DataBlock, META_BLOCK_SIZE, MAX_META_BLOCKS } from '../base/units.js';
import type { Transactions } from './commit.js';
import type { PoolContext } from './context.js';
import type { PoolModes } from './modes.js';

// Growing the pool's data and metadata devices (dm-thin's reload with a
// longer table) and returning free blocks to the host (trim). Pools never
// shrink. Calls the transactions and the modes.

export class Resizer {
  constructor(private readonly ctx: PoolContext, private readonly modes: PoolModes, private readonly tx: Transactions) {}

  async resizeData(bytes: number): Promise<void> {
    const { md, data, blockBytes } = this.ctx;
    const nr = bytes / blockBytes;
    if (nr < md.nrDataBlocks) throw new ThinError('EINVAL_ARG', `data size ${bytes} is smaller than the pool (${md.nrDataBlocks * blockBytes} bytes); pools cannot shrink`);
    if (md.needsCheck) throw new ThinError('READ_ONLY', 'unable to grow the data device until repaired (needs_check is set); run thinfuse check');
    if (nr === md.nrDataBlocks) return;
    await data.truncate(bytes);
    // The new length must be durable before a superblock claims it.
    await data.flush();
    await this.tx.change(() => md.resizeData(nr));
    await this.tx.commit();
    this.modes.rearmLowWater();
    if (this.modes.mode === 'out_of_data_space') this.modes.leaveNoSpace();
  }

  async resizeMetadata(bytes: number): Promise<void> {
    const md = this.ctx.md;
    const nr = Math.min(bytes / META_BLOCK_SIZE, MAX_META_BLOCKS);
    if (bytes < md.file.size()) throw new ThinError('EINVAL_ARG', `metadata size ${bytes} is smaller than the metadata file (${md.file.size()} bytes); it cannot shrink`);
    if (md.needsCheck) throw new ThinError('READ_ONLY', 'unable to grow the metadata device until repaired (needs_check is set); run thinfuse check');
    await md.file.truncate(bytes);
    if (nr > md.msm.nrBlocks) {
      await this.tx.change(() => md.resizeMetadata(nr));
      await this.tx.commit();
    }
  }

  /** Punches every free data block (space a crash or no_discard_passdown left behind). */
  async trim(): Promise<number> {
    const { md, data, blockBytes, zeros } = this.ctx;
    await this.tx.commit();
    let punched = 0;
    for (let b = 0; b < md.nrDataBlocks; b++) {
      if (md.dataCount(b as DataBlock) !== 0) continue;
      let end = b + 1;
      while (end < md.nrDataBlocks && md.dataCount(end as DataBlock) === 0) end++;
      await data.punchHole(b * blockBytes, (end - b) * blockBytes);
      zeros.punchedRun(b, end - b);
      punched += end - b;
      b = end;
    }
    return punched;
  }
}
