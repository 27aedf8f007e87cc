import { IO_CHUNK } from '../base/units.js';
import type { BackingFile } from './backing-file.js';

// A sparse in-memory file made of a read-only base (4 KiB pages, shared, never
// written) and its own pages on top: copy-on-write at page granularity. The
// crash replayer (crash-states.ts) gives a pool one of these per crash state,
// so that thousands of states share one durable image.

export const PAGE = 4096;
const ZERO_PAGE = Buffer.alloc(PAGE);

export class OverlayBacking implements BackingFile {
  constructor(
    readonly path: string,
    private readonly base: ReadonlyMap<number, Buffer>,
    private readonly own: Map<number, Buffer>,
    private length: number,
    private readonly onClose: () => Promise<void> = async () => {},
  ) {}

  size(): number {
    return this.length;
  }

  /** The page as it reads now (a shared zero page where nothing was written). Do not modify it. */
  page(p: number): Buffer {
    return this.own.get(p) ?? this.base.get(p) ?? ZERO_PAGE;
  }

  private writablePage(p: number): Buffer {
    let page = this.own.get(p);
    if (!page) {
      page = Buffer.from(this.base.get(p) ?? ZERO_PAGE);
      this.own.set(p, page);
    }
    return page;
  }

  /** Every page number that may hold non-zero bytes. */
  pageNumbers(): number[] {
    const s = new Set<number>(this.base.keys());
    for (const p of this.own.keys()) s.add(p);
    return [...s].sort((a, b) => a - b);
  }

  readSync(buf: Buffer, offset: number): void {
    for (let done = 0; done < buf.length;) {
      const pos = offset + done;
      const p = Math.floor(pos / PAGE);
      const within = pos - p * PAGE;
      const n = Math.min(PAGE - within, buf.length - done);
      this.page(p).copy(buf, done, within, within + n);
      done += n;
    }
  }

  writeSync(buf: Buffer, offset: number): void {
    for (let done = 0; done < buf.length;) {
      const pos = offset + done;
      const p = Math.floor(pos / PAGE);
      const within = pos - p * PAGE;
      const n = Math.min(PAGE - within, buf.length - done);
      buf.copy(this.writablePage(p), within, done, done + n);
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
    for (let done = 0; done < length;) {
      const pos = offset + done;
      const p = Math.floor(pos / PAGE);
      const within = pos - p * PAGE;
      const n = Math.min(PAGE - within, length - done);
      if (n === PAGE && this.base.has(p)) this.own.set(p, Buffer.alloc(PAGE));
      else if (n === PAGE) this.own.delete(p);
      else if (this.own.has(p) || this.base.has(p)) this.writablePage(p).fill(0, within, within + n);
      done += n;
    }
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
    if (length < this.length) {
      for (let p = Math.floor(length / PAGE); p * PAGE < this.length; p++) {
        if (!this.own.has(p) && !this.base.has(p)) continue;
        this.writablePage(p).fill(0, Math.max(0, length - p * PAGE));
      }
    }
    this.length = length;
  }

  async close(): Promise<void> {
    await this.onClose();
  }
}
