import type { DataBlock, DevId, VirtBlock } from '../base/units.js';

// The contract between the pool and a front end that keeps its own copy of
// mappings (the FUSE fast path, native-deps/fastpath.h). Each call comes in
// the same synchronous step as the metadata access or change it reports, so
// a copy updated here is never behind the metadata.

export interface MappingHooks {
  /** A lookup found, or an insert made, dev:vb -> block; exclusive: not shared with another device. */
  mapped(dev: DevId, vb: VirtBlock, block: DataBlock, exclusive: boolean): void;
  /**
   * Called just before mappings (or their sharing) change: drop the copies of
   * dev's blocks [from, end) / all of them / only their right to be written
   * in place (dev undefined: every device). Must not return while I/O that
   * used those copies is still running.
   */
  revoke(dev: DevId | undefined, what: { from: number; end: number } | 'all' | 'writes'): void;
  /** The pool is closing its files: forget them. */
  closing(): void;
  /** How many blocks after vb to provision speculatively (vb was just provisioned by a write). */
  ahead?(dev: DevId, vb: VirtBlock): number;
  /** dev:vb -> block was provisioned speculatively (instead of mapped() for it). */
  speculated?(dev: DevId, vb: VirtBlock, block: DataBlock): void;
  /** A write through the pool is about to land in dev:vb's mapped block. */
  wrote?(dev: DevId, vb: VirtBlock): void;
  /**
   * The speculative blocks nothing wrote, already made unreachable for
   * writes outside the pool; the pool unmaps them. Forgets them all.
   */
  settle?(): Array<{ dev: DevId; vb: VirtBlock; block: DataBlock }>;
  /** Metadata changed or data was written through the pool: a flush is more than an fdatasync now. */
  dirtied?(): void;
  /** Data blocks written outside the pool since the last call, as [first, count, ...] runs (for dropWritten). */
  takeWritten?(): number[];
  /** The pool wrote this many bytes of data (the front end may start writeback early). */
  wroteBytes?(bytes: number): void;
  /**
   * Copy-on-write of dev:vb from `block` (shared) is about to read it whole:
   * fills dst with it and answers true if the front end has already read it
   * for that write, else false (the pool reads it).
   */
  copySource?(dev: DevId, vb: VirtBlock, block: DataBlock, dst: Buffer): boolean;
}
