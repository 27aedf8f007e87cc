import type { BackingFile } from './backing-file.js';

/**
 * Passes every call to another backing file. Wrappers (latency, faults,
 * canaries) extend it and override only what they change.
 */
export class ForwardingBacking implements BackingFile {
  constructor(protected readonly inner: BackingFile) {}

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
  read(buf: Buffer, offset: number): Promise<void> {
    return this.inner.read(buf, offset);
  }
  write(buf: Buffer, offset: number): Promise<void> {
    return this.inner.write(buf, offset);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  flushSync(): void {
    this.inner.flushSync();
  }
  dataFrom(offset: number): number {
    return this.inner.dataFrom?.(offset) ?? offset;
  }

  async preallocate(offset: number, length: number): Promise<void> {
    await this.inner.preallocate?.(offset, length);
  }

  async dropCache(offset: number, length: number): Promise<void> {
    await this.inner.dropCache?.(offset, length);
  }

  punchHole(offset: number, length: number): Promise<void> {
    return this.inner.punchHole(offset, length);
  }
  copyWithin(from: number, to: number, length: number): Promise<void> {
    return this.inner.copyWithin(from, to, length);
  }
  truncate(length: number): Promise<void> {
    return this.inner.truncate(length);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
