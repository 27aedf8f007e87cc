// A log of every operation that changes a pool's files, in the order they
// were issued, for crash replay (after dm-log-writes): writes with their
// bytes, punches, truncates and flushes of the data and metadata files, and
// the steps by which the pool directory's small files are replaced (create,
// write, fsync, rename, directory fsync). One sequence counter is shared by
// every file, so the log orders operations across files. Marks are the
// workload's own notes (a write was issued, a flush returned, a management
// operation began or ended) that tell a checker what to expect.
//
// Files are numbered like inodes: a number names one file's contents, a
// directory entry (a name) points at one. The data and metadata files exist
// before the log starts, under their names; a small file gets a new number
// when it is created.
//
// Persistence model (what the replayer assumes, ALICE's): an operation on a
// file's contents (write, punch, truncate) is durable once a flush of that
// file, issued after the operation completed, has completed; until then it
// may or may not have reached the disk, in whole or, at 512-byte sectors, in
// part, independently of every other such operation. Directory operations
// (create, rename) are durable after a directory fsync and reach the disk in
// order (as a journaling filesystem commits them).

export type IoEntry =
  /** `done`: the sequence number at completion (Infinity while in flight). */
  | { op: 'write'; seq: number; file: number; offset: number; data: Buffer; done: number }
  | { op: 'punch'; seq: number; file: number; offset: number; length: number; done: number }
  | { op: 'truncate'; seq: number; file: number; length: number; done: number }
  /** Logged when the flush completes; it covers operations completed before `issued`. */
  | { op: 'flush'; seq: number; file: number; issued: number }
  /** A new empty file under `name` (open with O_CREAT of a name that did not exist). */
  | { op: 'create'; seq: number; file: number; name: string }
  | { op: 'rename'; seq: number; from: string; to: string }
  | { op: 'fsyncDir'; seq: number }
  | { op: 'mark'; seq: number; label: string; data: unknown };

export type ContentEntry = Extract<IoEntry, { op: 'write' | 'punch' | 'truncate' }>;
export type DirEntry = Extract<IoEntry, { op: 'create' | 'rename' }>;

/** A file that existed before the log started. */
export interface InitialFile {
  file: number;
  name: string;
  size: number;
}

/** Distributes Omit over a union, so each entry kind keeps its own fields. */
type WithoutSeq<T> = T extends unknown ? Omit<T, 'seq'> : never;

export class IoLog {
  readonly entries: IoEntry[] = [];
  readonly initial: InitialFile[] = [];
  private clock = 0;
  private nextFile = 1;

  /** The next sequence number. */
  tick(): number {
    return this.clock++;
  }

  push<E extends WithoutSeq<IoEntry>>(e: E): E & { seq: number } {
    const entry = { ...e, seq: this.tick() } as E & { seq: number };
    this.entries.push(entry as unknown as IoEntry);
    return entry;
  }

  /** Registers a file that exists before the log starts, empty, `size` bytes long. */
  addInitialFile(name: string, size: number): number {
    const file = this.nextFile++;
    this.initial.push({ file, name, size });
    return file;
  }

  newFile(): number {
    return this.nextFile++;
  }

  mark(label: string, data: unknown = null): void {
    this.push({ op: 'mark', label, data });
  }

  /** Bytes of write data held. */
  bytes(): number {
    let n = 0;
    for (const e of this.entries) if (e.op === 'write') n += e.data.length;
    return n;
  }
}
