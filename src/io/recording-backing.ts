import path from 'node:path';
import type { BackingFile } from './backing-file.js';
import { ForwardingBacking } from './forwarding-backing.js';
import type { IoLog } from './io-log.js';
import type { PoolFiles } from './pool-files.js';

// Recording implementations of the two ways a pool touches its directory:
// every change to the data or metadata file, and every step of replacing a
// small file, goes into one IoLog (io-log.ts) and then to the wrapped
// implementation. Reads pass through unrecorded.

/** A BackingFile that logs writes (with their bytes), punches, truncates and flushes. */
export class RecordingBacking extends ForwardingBacking {
  readonly file: number;

  /**
   * `name` is the file's name in the pool directory ('data', 'metadata').
   * The log assumes the file is empty (all zeros) when recording starts.
   */
  constructor(inner: BackingFile, private readonly log: IoLog, name: string) {
    super(inner);
    this.file = log.addInitialFile(name, inner.size());
  }

  override writeSync(buf: Buffer, offset: number): void {
    const e = this.log.push({ op: 'write', file: this.file, offset, data: Buffer.from(buf), done: Infinity });
    this.inner.writeSync(buf, offset);
    e.done = this.log.tick();
  }

  override async write(buf: Buffer, offset: number): Promise<void> {
    const e = this.log.push({ op: 'write', file: this.file, offset, data: Buffer.from(buf), done: Infinity });
    await this.inner.write(buf, offset);
    e.done = this.log.tick();
  }

  override async flush(): Promise<void> {
    const issued = this.log.tick();
    await this.inner.flush();
    this.log.push({ op: 'flush', file: this.file, issued });
  }

  override flushSync(): void {
    const issued = this.log.tick();
    this.inner.flushSync();
    this.log.push({ op: 'flush', file: this.file, issued });
  }

  override async punchHole(offset: number, length: number): Promise<void> {
    const e = this.log.push({ op: 'punch', file: this.file, offset, length, done: Infinity });
    await this.inner.punchHole(offset, length);
    e.done = this.log.tick();
  }

  /** Logged as the write of the bytes copied (read first, then written). */
  override async copyWithin(from: number, to: number, length: number): Promise<void> {
    const bytes = Buffer.alloc(length);
    await this.inner.read(bytes, from);
    await this.write(bytes, to);
  }

  override async truncate(length: number): Promise<void> {
    const e = this.log.push({ op: 'truncate', file: this.file, length, done: Infinity });
    await this.inner.truncate(length);
    e.done = this.log.tick();
  }
}

/**
 * PoolFiles that logs each step: writeFile as create (or truncate) + write
 * (+ flush with fsync), rename, directory fsync. It stands for one directory,
 * the one the wrapped PoolFiles holds; names are logged as base names.
 */
export class RecordingPoolFiles implements PoolFiles {
  /** Name -> file number, as the directory is now. */
  private readonly names = new Map<string, number>();

  constructor(private readonly inner: PoolFiles, private readonly log: IoLog) {}

  exists(file: string): boolean {
    return this.inner.exists(file);
  }

  readText(file: string): string {
    return this.inner.readText(file);
  }

  writeFile(file: string, data: string, opts: { fsync?: boolean } = {}): void {
    const name = path.basename(file);
    let id = this.names.get(name);
    if (id === undefined) {
      id = this.log.newFile();
      this.names.set(name, id);
      this.log.push({ op: 'create', file: id, name });
    } else {
      const t = this.log.push({ op: 'truncate', file: id, length: 0, done: Infinity });
      t.done = this.log.tick();
    }
    const bytes = Buffer.from(data, 'utf8');
    const w = this.log.push({ op: 'write', file: id, offset: 0, data: bytes, done: Infinity });
    if (opts.fsync) {
      this.inner.writeFile(file, data, opts);
      w.done = this.log.tick();
      const issued = this.log.tick();
      this.log.push({ op: 'flush', file: id, issued });
    } else {
      this.inner.writeFile(file, data, opts);
      w.done = this.log.tick();
    }
  }

  rename(from: string, to: string): void {
    const a = path.basename(from);
    const b = path.basename(to);
    this.log.push({ op: 'rename', from: a, to: b });
    this.inner.rename(from, to);
    const id = this.names.get(a);
    this.names.delete(a);
    if (id !== undefined) this.names.set(b, id);
  }

  fsyncDir(dir: string): void {
    this.log.push({ op: 'fsyncDir' });
    this.inner.fsyncDir(dir);
  }
}
