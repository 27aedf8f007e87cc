import type { BackingFile } from './backing-file.js';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Adds a fixed latency to every asynchronous request of another backing
 * file. Used to show that requests overlap rather than queue.
 */
export class DelayBacking implements BackingFile {
  constructor(private readonly inner: BackingFile, private readonly delayMs: number) {}

  get path(): string {
    return this.inner.path;
  }
  size(): number {
    return this.inner.size();
  }
  readSync(buf: Buffer, offset: number): void {
    this.inner.readSync(buf, offset);
  }
  writeSync(buf: Buffer, offset: number): void {
    this.inner.writeSync(buf, offset);
  }
  flushSync(): void {
    this.inner.flushSync();
  }
  async read(buf: Buffer, offset: number): Promise<void> {
    await sleep(this.delayMs);
    await this.inner.read(buf, offset);
  }
  async write(buf: Buffer, offset: number): Promise<void> {
    await sleep(this.delayMs);
    await this.inner.write(buf, offset);
  }
  async flush(): Promise<void> {
    await sleep(this.delayMs);
    await this.inner.flush();
  }
  async punchHole(offset: number, length: number): Promise<void> {
    await sleep(this.delayMs);
    await this.inner.punchHole(offset, length);
  }
  async copyWithin(from: number, to: number, length: number): Promise<void> {
    await sleep(this.delayMs);
    await this.inner.copyWithin(from, to, length);
  }
  async truncate(length: number): Promise<void> {
    await this.inner.truncate(length);
  }
  async close(): Promise<void> {
    await this.inner.close();
  }
}
