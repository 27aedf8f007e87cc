import path from 'node:path';
import { Counter, KeyedLock } from '../base/keyed-lock.js';
import { SECTOR } from '../base/units.js';
import type { BackingFile } from '../io/backing-file.js';
import type { PoolFiles } from '../io/pool-files.js';
import type { Canary } from './canary.js';
import type { PoolConfig } from './config.js';
import { PoolEvents } from './events.js';
import type { MappingHooks } from './hooks.js';
import type { PoolMetadata } from './pool-metadata.js';
import type { Registry } from './registry.js';
import { ZeroBlocks } from './zero-blocks.js';

// What every part of an open pool shares: its files, its configuration, the
// front end's mapping hooks and the per-block bookkeeping that more than one
// part reads (the block locks, the blocks being read, the known-zero
// blocks). Plain state, no behaviour: each part (modes, commit, provision,
// io-path, quiesce, devices, resize) owns the rest of its own state.

export interface PoolOpenOptions {
  /** Metadata block cache, in 4 KiB blocks. */
  cacheBlocks?: number;
  /** One-shot commands cannot wait for space: fail at once when full. */
  oneShot?: boolean;
  /** Wraps the backing files (fault injection, latency). */
  wrap?: (file: BackingFile, which: 'data' | 'metadata') => BackingFile;
  /** LRU read cache of the data file, in bytes (0: none). */
  dataCacheBytes?: number;
  /** The pool directory's small files (config, devices); the host filesystem by default. */
  files?: PoolFiles;
  /**
   * TEST HOOK for the crash-replay harness only: one deliberately broken
   * behaviour (see canary.ts). Never set it outside tests.
   */
  canary?: Canary;
}

export class PoolContext {
  readonly name: string;
  readonly blockBytes: number;
  /** The front end that copies mappings, if any (one at a time). */
  hooks: MappingHooks | undefined;
  /** Set once close() has begun: background work must not start again. */
  closed = false;
  /** Blocks known to read as zeros (a fresh pool, or punched since open). */
  readonly zeros: ZeroBlocks;
  /** The bio prison: one request at a time per `${dev}:${vb}`. */
  readonly cells = new KeyedLock();
  /** Data blocks being read now: a freed one must not be handed out until the read is done. */
  readonly reading = new Counter<number>();
  /** What an operator must see afterwards (events.ts); front ends listen. */
  readonly events = new PoolEvents();

  constructor(
    readonly dir: string,
    readonly md: PoolMetadata,
    readonly data: BackingFile,
    readonly config: PoolConfig,
    readonly registry: Registry,
    readonly opts: PoolOpenOptions,
    fresh: boolean,
  ) {
    this.name = path.basename(path.resolve(dir));
    this.blockBytes = md.dataBlockSize * SECTOR;
    this.zeros = new ZeroBlocks(fresh ? 0 : Math.ceil(data.size() / this.blockBytes));
  }
}
