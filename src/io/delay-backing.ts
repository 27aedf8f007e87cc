import type { BackingFile } from './backing-file.js';
import { ForwardingBacking } from './forwarding-backing.js';

/**
 * Adds latency to every asynchronous request of another backing file: a
 * fixed number of milliseconds, or one drawn per request (0 still yields a
 * turn of the event loop, so requests complete out of order). Used to show
 * that requests overlap rather than queue.
 */
export class DelayBacking extends ForwardingBacking {
  constructor(inner: BackingFile, private readonly delayMs: number | (() => number)) {
    super(inner);
  }

  private pause(): Promise<void> {
    const ms = typeof this.delayMs === 'function' ? this.delayMs() : this.delayMs;
    return new Promise((r) => (ms > 0 ? setTimeout(r, ms) : setImmediate(r)));
  }

  override async read(buf: Buffer, offset: number): Promise<void> {
    await this.pause();
    await this.inner.read(buf, offset);
  }
  override async write(buf: Buffer, offset: number): Promise<void> {
    await this.pause();
    await this.inner.write(buf, offset);
  }
  override async flush(): Promise<void> {
    await this.pause();
    await this.inner.flush();
  }
  override async punchHole(offset: number, length: number): Promise<void> {
    await this.pause();
    await this.inner.punchHole(offset, length);
  }
  override async copyWithin(from: number, to: number, length: number): Promise<void> {
    await this.pause();
    await this.inner.copyWithin(from, to, length);
  }
}
