// The one interface every byte of pool I/O goes through. Metadata uses the
// synchronous calls (the btree code runs to completion within one tick, so
// metadata needs no locks); the data path uses the asynchronous ones so that
// many requests are in flight at once. A fault-injecting or delaying
// implementation wraps another one and is slotted in by whoever opens the pool.

export interface BackingFile {
  readonly path: string;
  /** Current length in bytes. */
  size(): number;
  /** Fills `buf` from `offset`; bytes past the end of the file read as zeros. */
  readSync(buf: Buffer, offset: number): void;
  writeSync(buf: Buffer, offset: number): void;
  read(buf: Buffer, offset: number): Promise<void>;
  write(buf: Buffer, offset: number): Promise<void>;
  /** Makes every completed write durable (fdatasync). */
  flush(): Promise<void>;
  flushSync(): void;
  /** Deallocates a range; it reads back as zeros. The length is unchanged. */
  punchHole(offset: number, length: number): Promise<void>;
  /** Where the first data at or after offset lies: [offset, result) is a hole and reads as zeros. Optional; absent or offset itself: nothing known. */
  dataFrom?(offset: number): number;
  /** Allocates the host space of the range's holes (zero-reading), leaving data alone: later writes there allocate nothing. Optional. */
  preallocate?(offset: number, length: number): Promise<void>;
  /** Drops the range's clean pages from the host page cache (a hint: nothing changes but what is cached). Optional. */
  dropCache?(offset: number, length: number): Promise<void>;
  /** Copies `length` bytes inside this file, in bounded chunks. */
  copyWithin(from: number, to: number, length: number): Promise<void>;
  /** Sets the length (sparse: growing allocates nothing). */
  truncate(length: number): Promise<void>;
  close(): Promise<void>;
}
