import { IO_CHUNK } from '../base/units.js';
import type { BackingFile } from './backing-file.js';

const PAGE = 4096;

/** A sparse in-memory file: pages exist only once written. For tests. */
export class MemoryBacking implements BackingFile {
  private readonly pages = new Map<number, Buffer>();

  constructor(readonly path: string, private length: number) {}

  size(): number {
    return this.length;
  }

  /** Bytes actually held, the analogue of a sparse file's allocated blocks. */
  allocatedBytes(): number {
    return this.pages.size * PAGE;
  }

  readSync(buf: Buffer, offset: number): void {
    for (let done = 0; done < buf.length;) {
      const pos = offset + done;
      const page = Math.floor(pos / PAGE);
      const within = pos - page * PAGE;
      const n = Math.min(PAGE - within, buf.length - done);
      const src = this.pages.get(page);
      if (src) src.copy(buf, done, within, within + n);
      else buf.fill(0, done, done + n);
      done += n;
    }
  }

  writeSync(buf: Buffer, offset: number): void {
    for (let done = 0; done < buf.length;) {
      const pos = offset + done;
      const page = Math.floor(pos / PAGE);
      const within = pos - page * PAGE;
      const n = Math.min(PAGE - within, buf.length - done);
      let dst = this.pages.get(page);
      if (!dst) this.pages.set(page, (dst = Buffer.alloc(PAGE)));
      buf.copy(dst, within, done, done + n);
      done += n;
    }
    this.length = Math.max(this.length, offset + buf.length);
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    this.readSync(buf, offset);
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    this.writeSync(buf, offset);
  }

  async flush(): Promise<void> {}
  flushSync(): void {}

  async punchHole(offset: number, length: number): Promise<void> {
    const zeros = Buffer.alloc(Math.min(length, IO_CHUNK));
    for (let done = 0; done < length; done += zeros.length) {
      this.writeSync(zeros.subarray(0, Math.min(zeros.length, length - done)), offset + done);
    }
    for (let p = Math.ceil(offset / PAGE); (p + 1) * PAGE <= offset + length; p++) this.pages.delete(p);
  }

  async copyWithin(from: number, to: number, length: number): Promise<void> {
    const chunk = Buffer.alloc(Math.min(length, IO_CHUNK));
    for (let done = 0; done < length; done += chunk.length) {
      const part = chunk.subarray(0, Math.min(chunk.length, length - done));
      this.readSync(part, from + done);
      this.writeSync(part, to + done);
    }
  }

  async truncate(length: number): Promise<void> {
    for (const p of this.pages.keys()) if (p * PAGE >= length) this.pages.delete(p);
    this.length = length;
  }

  async close(): Promise<void> {}
}
