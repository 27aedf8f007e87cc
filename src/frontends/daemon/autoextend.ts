import fs from 'node:fs';
import path from 'node:path';
import { formatBytes } from '../../base/size.js';
import { MAX_DATA_BLOCKS, MAX_META_BLOCKS, META_BLOCK_SIZE } from '../../base/units.js';
import type { EventDetails } from '../../pool/events.js';
import type { Pool } from '../../pool/pool.js';

// Auto-extend, as LVM's dmeventd does for a thin pool: while serving, when
// data or metadata use reaches its threshold (POOL/config autoextend), the
// pool grows by its percent of the size at the time. Before growing, the
// host filesystem under the pool must have room for the growth plus what
// the pool's files do not hold yet (they are sparse: the free blocks
// already promised cost host space once written), and data never grows
// past autoextend.max. A refusal is an event naming why, recorded once
// until the reason changes or a growth succeeds; the no-space policy then
// applies as without auto-extend. A grown pool lets writes that wait for
// space (queue_if_no_space) go on.

export type Resource = 'data' | 'metadata';

/** What the host can tell about the pool's files; a test may stand in. */
export interface HostProbe {
  /** Bytes an unprivileged writer may still use on the filesystem holding dir. */
  freeBytes(dir: string): number;
  /** Bytes the host has allocated for a file. */
  allocatedBytes(file: string): number;
  isBlockDevice(file: string): boolean;
}

export const realHost: HostProbe = {
  freeBytes(dir) {
    const s = fs.statfsSync(dir);
    return s.bavail * s.bsize;
  },
  allocatedBytes: (file) => fs.statSync(file).blocks * 512,
  isBlockDevice: (file) => fs.statSync(file).isBlockDevice(),
};

export interface PlanInput {
  usedPercent: number;
  threshold: number;
  percent: number;
  /** Size now, in bytes. */
  current: number;
  /** Growth is a whole number of these. */
  unit: number;
  /** Largest allowed size (bytes); Infinity for none. */
  max: number;
  hostFree: number;
  /** Bytes of the file the host has not allocated yet. */
  unbacked: number;
  blockDevice: boolean;
}

export type Plan =
  | { grow: false }
  | { grow: true; to: number }
  | { grow: false; refused: string; why: string };

/** Whether to grow, to what, or why not (pure: the tests drive it directly). */
export function plan(p: PlanInput): Plan {
  if (p.threshold >= 100 || p.usedPercent < p.threshold) return { grow: false };
  if (p.blockDevice) return { grow: false, refused: 'block_device', why: 'the pool is on a block device, which cannot grow; grow it by hand or free space' };
  const growth = Math.max(1, Math.ceil((p.current * p.percent) / 100 / p.unit)) * p.unit;
  const to = Math.min(p.current + growth, Math.floor(p.max / p.unit) * p.unit);
  if (to <= p.current) return { grow: false, refused: 'max', why: `it is at its largest allowed size (${formatBytes(p.current)}; raise --autoextend-max to let it grow)` };
  const need = to - p.current + p.unbacked;
  if (need > p.hostFree) {
    return {
      grow: false, refused: 'host_space',
      why: `the host filesystem has ${formatBytes(p.hostFree)} free, but growing by ${formatBytes(to - p.current)} needs ${formatBytes(need)} (the growth plus ${formatBytes(p.unbacked)} the sparse file does not hold yet)`,
    };
  }
  return { grow: true, to };
}

export class AutoExtender {
  private running: Promise<void> | undefined;
  private paused = false;
  /** The last refusal per resource (its code), so each is recorded once. */
  private readonly refused = new Map<Resource, string>();

  constructor(private readonly pool: Pool, private readonly host: HostProbe = realHost) {}

  /** Checks data, then metadata; grows what reached its threshold. Never throws; one check at a time. */
  check(): Promise<void> {
    if (this.paused) return Promise.resolve();
    this.running ??= this.checkBoth().finally(() => (this.running = undefined));
    return this.running;
  }

  /** No check starts from now on (the daemon is stopping); resolves when the running one is done. */
  async pause(): Promise<void> {
    this.paused = true;
    await this.running;
  }

  /** The stop was refused: checks go on. */
  resume(): void {
    this.paused = false;
  }

  private async checkBoth(): Promise<void> {
    for (const r of ['data', 'metadata'] as const) {
      if (this.pool.mode === 'read_only' || this.pool.mode === 'fail') return;
      await this.checkOne(r);
    }
  }

  private input(r: Resource): PlanInput {
    const { pool, host } = this;
    const a = pool.config.autoextend;
    const file = path.join(pool.dir, r);
    const hostFree = host.freeBytes(pool.dir);
    if (r === 'data') {
      const current = pool.md.nrDataBlocks * pool.blockBytes;
      const used = pool.md.dsm.nrAllocated / Math.max(1, pool.md.dsm.nrBlocks);
      const max = Math.min(a.max === 0 ? Infinity : a.max, MAX_DATA_BLOCKS * pool.blockBytes);
      return { usedPercent: used * 100, threshold: a.threshold, percent: a.percent, current, unit: pool.blockBytes, max, hostFree,
        unbacked: Math.max(0, current - host.allocatedBytes(file)), blockDevice: host.isBlockDevice(file) };
    }
    const m = pool.md.metadataUsage();
    const current = pool.md.msm.nrBlocks * META_BLOCK_SIZE;
    return { usedPercent: (m.used / Math.max(1, m.total)) * 100, threshold: a.metadataThreshold, percent: a.metadataPercent, current,
      unit: META_BLOCK_SIZE, max: MAX_META_BLOCKS * META_BLOCK_SIZE, hostFree,
      unbacked: Math.max(0, pool.md.file.size() - host.allocatedBytes(file)), blockDevice: host.isBlockDevice(file) };
  }

  private async checkOne(r: Resource): Promise<void> {
    const a = this.pool.config.autoextend;
    if ((r === 'data' ? a.threshold : a.metadataThreshold) >= 100) {
      // Off: no need to ask the host anything.
      this.refused.delete(r);
      return;
    }
    let p: Plan;
    let input: PlanInput;
    try {
      input = this.input(r);
      p = plan(input);
    } catch (e) {
      return this.refuse(r, 'error', `cannot look at the host filesystem: ${(e as Error).message}`, {});
    }
    const facts: EventDetails = { usedPercent: Math.round(input.usedPercent * 10) / 10, threshold: input.threshold, sizeBytes: input.current };
    if (p.grow) return this.grow(r, input.current, p.to, facts);
    if ('refused' in p) return this.refuse(r, p.refused, p.why, facts);
    this.refused.delete(r);
  }

  private async grow(r: Resource, from: number, to: number, facts: EventDetails): Promise<void> {
    try {
      if (r === 'data') await this.pool.resizeData(to);
      else await this.pool.resizeMetadata(Math.max(to, this.pool.md.file.size()));
    } catch (e) {
      return this.refuse(r, 'error', (e as Error).message, facts);
    }
    this.refused.delete(r);
    this.pool.eventStream.emit('autoextend', { what: r, ...facts, fromBytes: from, toBytes: to, percent: r === 'data' ? this.pool.config.autoextend.percent : this.pool.config.autoextend.metadataPercent });
  }

  private refuse(r: Resource, code: string, why: string, facts: EventDetails): void {
    if (this.refused.get(r) === code) return;
    this.refused.set(r, code);
    this.pool.eventStream.emit('autoextend_refused', { what: r, ...facts, code, reason: `not growing ${r}: ${why}` });
  }
}
