import type { DevId } from '../base/units.js';

// Quiescing a device, dm's suspend/resume: new writes to it wait while a
// quiesced step runs, and the step starts only when the writes already
// running have finished, so a snapshot is a consistent point. A hold
// (dmsetup suspend) is a quiesced step that lasts until release; steps asked
// for while it lasts run at once, since the device is quiet already.
// Standalone: the I/O path counts writes in and out, device changes ask
// whether a device has writes in flight.

export class Quiesce {
  private readonly writing = new Map<number, number>();
  private readonly suspended = new Map<number, Promise<void>>();
  private readonly drained = new Map<number, () => void>();
  private readonly holds = new Map<number, () => void>();

  /** A write (or discard) to dev begins: waits while dev is quiesced. */
  async enter(dev: DevId): Promise<void> {
    for (let s = this.suspended.get(dev); s; s = this.suspended.get(dev)) await s;
    this.writing.set(dev, (this.writing.get(dev) ?? 0) + 1);
  }

  leave(dev: DevId): void {
    const n = (this.writing.get(dev) ?? 1) - 1;
    if (n > 0) {
      this.writing.set(dev, n);
      return;
    }
    this.writing.delete(dev);
    this.drained.get(dev)?.();
  }

  /** Writes to dev are in flight. */
  busy(dev: DevId): boolean {
    return this.writing.has(dev);
  }

  /** Holds new writes to dev, waits for the running ones, runs fn, then lets writes go on. */
  async quiesced<T>(dev: DevId, fn: () => Promise<T>): Promise<T> {
    if (this.holds.has(dev)) return fn();
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

  /** Holds new writes to dev until release(dev); resolves once the running ones are done. */
  async hold(dev: DevId): Promise<void> {
    if (this.holds.has(dev)) return;
    let held!: () => void;
    const ready = new Promise<void>((r) => (held = r));
    void this.quiesced(dev, () => {
      held();
      return new Promise<void>((release) => this.holds.set(dev, release));
    });
    await ready;
  }

  release(dev: DevId): void {
    const release = this.holds.get(dev);
    this.holds.delete(dev);
    release?.();
  }

  held(dev: DevId): boolean {
    return this.holds.has(dev);
  }
}
