import { META_BLOCK_SIZE } from '../base/units.js';
import type { BackingFile } from '../io/backing-file.js';
import { type BlockKind, checksumMatches, SALT } from '../metadata/checksum.js';
import { ExpectedDataRefs } from './check-data-refs.js';
import { Reporter } from './check-report.js';
import { isAllZero } from './format.js';

// The state one check shares between its modules: the metadata file read
// block by block, what each metadata block has been used as, and the
// reference counts expected of metadata and data blocks. Calls only the
// on-disk format decoders, never the engine.

/** A kind of btree, as far as the checker cares. */
export interface Role {
  readonly name: string;
  readonly leafValueSize: number;
  /** Keep leaf entries for a logical walk afterwards. */
  readonly keep: boolean;
}

export interface NodeInfo {
  role: Role;
  /** Unreadable or invalid: not descended into, its subtree is unknown. */
  bad: boolean;
  nr: number;
  max: number;
  height: number;
  /** keys[0] of the node itself. */
  firstKey: number;
  /** Smallest and largest key of the subtree's leaves (NaN when empty). */
  minKey: number;
  maxKey: number;
  /** Entries in the subtree's leaves. */
  entries: number;
  children?: number[];
  keys?: number[];
  values?: Buffer[];
}

export type Use = { kind: 'node'; info: NodeInfo } | { kind: 'bitmap' | 'index' | 'superblock'; what: string };

const KIND_NAMES: Record<BlockKind, string> = { superblock: 'superblock', node: 'btree node', bitmap: 'bitmap', index: 'space map index' };

/** A u64 as a double: exact below 2^53, never throws. */
export function u64(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off + 4) * 2 ** 32 + buf.readUInt32LE(off);
}

/** How a block already in use is named in a message. */
export function useName(u: Use): string {
  return u.kind === 'node' ? `a node of the ${u.info.role.name}` : u.what;
}

export class CheckContext {
  readonly report: Reporter;
  readonly fileBlocks: number;
  /** Size of the metadata space map, capped at what one index block describes. */
  nrMeta = 0;
  /** Expected count of each metadata block. */
  metaExpected = new Uint32Array(0);
  /** Replaced once the superblock gives the data device's size, before any tree is walked. */
  data: ExpectedDataRefs;
  readonly uses = new Map<number, Use>();
  private readonly reported = new Set<string>();
  /**
   * Something reachable could not be read or used: expected counts are then
   * only lower bounds, so under-counts stand but leaks cannot be told.
   */
  incomplete = false;

  constructor(
    private readonly file: BackingFile,
    maxMessages: number,
  ) {
    this.report = new Reporter(maxMessages);
    this.fileBlocks = Math.floor(file.size() / META_BLOCK_SIZE);
    this.data = ExpectedDataRefs.counting(this.report, 0);
  }

  readBlock(b: number): Buffer {
    const buf = Buffer.alloc(META_BLOCK_SIZE);
    this.file.readSync(buf, b * META_BLOCK_SIZE);
    return buf;
  }

  /** Reads and validates a block of a given kind, or reports why not. */
  readValid(b: number, kind: BlockKind, what: string): Buffer | undefined {
    if (b >= this.fileBlocks) {
      this.incomplete = true;
      this.report.fatal('range', `${what}: block ${b} lies past the end of the metadata file (${this.fileBlocks} blocks)`);
      return undefined;
    }
    const buf = this.readBlock(b);
    if (!checksumMatches(buf, kind)) {
      this.incomplete = true;
      const other = (Object.keys(SALT) as BlockKind[]).find((k) => k !== kind && checksumMatches(buf, k));
      const hint = isAllZero(buf) ? ' (the block is all zeros)' : other ? ` (it checksums as a ${KIND_NAMES[other]})` : '';
      this.report.fatal('checksum', `${what}: block ${b} has a bad ${KIND_NAMES[kind]} checksum${hint}`);
      return undefined;
    }
    const at = u64(buf, 8);
    if (at !== b) {
      this.incomplete = true;
      this.report.fatal('blocknr', `${what}: block ${b} claims to be block ${at}`);
      return undefined;
    }
    return buf;
  }

  /** Counts one reference to metadata block b; false if b is outside the space map. */
  refMeta(b: number, what: string): boolean {
    if (!Number.isSafeInteger(b) || b < 0 || b >= this.nrMeta) {
      this.incomplete = true;
      this.report.fatal('range', `${what}: refers to metadata block ${Number.isSafeInteger(b) ? b : '(above 2^53)'}, outside the metadata space map (${this.nrMeta} blocks)`);
      return false;
    }
    this.metaExpected[b]!++;
    return true;
  }

  /** Claims block b for a non-node use; reports a block used twice. */
  claim(b: number, kind: 'bitmap' | 'index' | 'superblock', what: string): boolean {
    const u = this.uses.get(b);
    if (u) {
      this.incomplete = true;
      this.report.fatal('shared', `metadata block ${b} is used both as ${useName(u)} and as ${what}`);
      return false;
    }
    this.uses.set(b, { kind, what });
    return true;
  }

  /** True the first time only: for problems seen again at each further reference. */
  once(key: string): boolean {
    if (this.reported.has(key)) return false;
    this.reported.add(key);
    return true;
  }
}
