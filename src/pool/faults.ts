import path from 'node:path';
import { ThinError } from '../base/errors.js';
import { type DevId, META_BLOCK_SIZE, SECTOR, type VirtBlock } from '../base/units.js';
import type { BackingFile } from '../io/backing-file.js';
import { CachedBacking } from '../io/cached-backing.js';
import { APPLICABLE_OPS, type Fault, FaultBacking, type FaultFile, type FaultKind, type FaultOp, validateFault } from '../io/fault-backing.js';
import { type PoolFiles, realPoolFiles, writeFileAtomic } from '../io/pool-files.js';
import type { Pool } from './pool.js';

// A pool's injected faults (`thinfuse fault`): the list, the FaultBacking
// under each backing file (and so under the data cache), and POOL/faults.json.
//
// Faults persist until cleared, as dm-dust's bad blocks and a dm-flakey table
// do: whoever opens the pool to serve it or to run a CLI command in-process
// loads POOL/faults.json and puts the faults under the files; setting or
// clearing one rewrites the file (atomically) and changes the running
// process's faults at once. `thinfuse check` reads the metadata file
// directly, without faults: it is the oracle.
//
// POOL/faults.json: {"version": 1, "nextId": N, "faults": [Fault, ...]}, each
// Fault as documented in src/io/fault-backing.ts.
//
// A fault on a thin device's sectors is turned into byte ranges of POOL/data
// through the device's mappings when it is set: it follows those data blocks
// (a snapshot sharing them sees it too; a write that breaks sharing moves
// the device off it). Unprovisioned sectors have no bytes in POOL/data and
// are not covered; how many there were is kept with the fault.

export const FAULTS_FILE = 'faults.json';
const VERSION = 1;

/** What a caller asks for: one of `ranges` (with `file`) or `device` + `sectors`. */
export interface FaultSpec {
  kind: FaultKind;
  file?: FaultFile;
  /** [start, end) byte ranges of the file; none: the whole file. */
  ranges?: Array<[number, number]>;
  device?: string;
  /** [first, end) sectors of the device. */
  sectors?: [number, number];
  ops?: FaultOp[];
  up?: number;
  down?: number;
  delayMs?: number;
  bit?: number;
  keepSectors?: number;
  then?: 'error' | 'crash';
}

interface FaultsFile {
  version: number;
  nextId: number;
  faults: Fault[];
}

/** Byte ranges of POOL/data behind sectors [first, end) of a device, merged, and the unprovisioned sectors. */
export function deviceRanges(pool: Pool, name: string, first: number, end: number): { devId: DevId; ranges: Array<[number, number]>; unmappedSectors: number } {
  const d = pool.device(name);
  if (!(Number.isSafeInteger(first) && Number.isSafeInteger(end) && first >= 0 && first < end)) {
    throw new ThinError('EINVAL_ARG', `bad sector range ${first}-${end}: give FIRST-LAST with FIRST <= LAST`);
  }
  if (end * SECTOR > d.size) {
    throw new ThinError('OUT_OF_RANGE', `sectors up to ${end - 1} are past the end of ${name} (${d.size / SECTOR} sectors)`);
  }
  const bb = pool.blockBytes;
  const ranges: Array<[number, number]> = [];
  let unmapped = 0;
  for (let pos = first * SECTOR; pos < end * SECTOR;) {
    const vb = Math.floor(pos / bb);
    const stop = Math.min((vb + 1) * bb, end * SECTOR);
    const m = pool.md.lookup(d.devId, vb as VirtBlock);
    if (!m) unmapped += (stop - pos) / SECTOR;
    else {
      const s = m.block * bb + (pos - vb * bb);
      const e = s + (stop - pos);
      const last = ranges[ranges.length - 1];
      if (last && last[1] === s) last[1] = e;
      else ranges.push([s, e]);
    }
    pos = stop;
  }
  return { devId: d.devId, ranges, unmappedSectors: unmapped };
}

export class PoolFaults {
  private faults: Fault[];
  private nextId: number;
  private readonly backings: Partial<Record<FaultFile, FaultBacking>> = {};

  private constructor(readonly dir: string, private readonly files: PoolFiles, state: FaultsFile) {
    this.faults = state.faults;
    this.nextId = state.nextId;
  }

  /** The faults in POOL/faults.json (none if there is no such file). */
  static load(dir: string, files: PoolFiles = realPoolFiles): PoolFaults {
    const file = path.join(dir, FAULTS_FILE);
    if (!files.exists(file)) return new PoolFaults(dir, files, { version: VERSION, nextId: 1, faults: [] });
    let state: FaultsFile;
    try {
      state = JSON.parse(files.readText(file)) as FaultsFile;
      if (state.version !== VERSION || !Array.isArray(state.faults) || !Number.isSafeInteger(state.nextId)) throw new Error(`not a version ${VERSION} fault list`);
      for (const f of state.faults) validateFault(f);
    } catch (e) {
      throw new ThinError('EINVAL_ARG', `${file} is not a valid fault list (${(e as Error).message}); fix or remove it`);
    }
    return new PoolFaults(dir, files, state);
  }

  /** PoolOpenOptions.wrap: a FaultBacking with this file's faults under each backing file. */
  readonly wrap = (file: BackingFile, which: FaultFile): BackingFile => {
    const fb = new FaultBacking(file);
    fb.setFaults(this.faults.filter((f) => f.file === which));
    this.backings[which] = fb;
    return fb;
  };

  list(): Fault[] {
    return this.faults.map((f) => ({ ...f }));
  }

  /**
   * Adds a fault. `pool` is needed to turn device sectors into data ranges,
   * and to drop the cached blocks the fault covers.
   */
  set(spec: FaultSpec, pool?: Pool): Fault {
    const f = this.build(spec, pool);
    validateFault(f);
    this.nextId++;
    this.faults.push(f);
    this.commit(pool, [f]);
    return { ...f };
  }

  /** Removes the faults with these ids (all of them if none given); returns those removed. */
  clear(ids: number[] = [], pool?: Pool): Fault[] {
    const missing = ids.filter((id) => !this.faults.some((f) => f.id === id));
    if (missing.length > 0) throw new ThinError('EINVAL_ARG', `no fault with id ${missing.join(', ')}; see thinfuse fault POOL ls`);
    const gone = ids.length === 0 ? this.faults : this.faults.filter((f) => ids.includes(f.id));
    this.faults = this.faults.filter((f) => !gone.includes(f));
    // Bit flips may sit in the caches: drop what any removed fault covered.
    this.commit(pool, gone);
    return gone;
  }

  private build(spec: FaultSpec, pool: Pool | undefined): Fault {
    if (!APPLICABLE_OPS[spec.kind]) throw new ThinError('EINVAL_ARG', `unknown fault kind '${spec.kind}'; use error, nospace, drop, delay, bitflip or torn`);
    const f: Fault = {
      id: this.nextId,
      file: spec.file ?? 'data',
      kind: spec.kind,
      ops: spec.ops && spec.ops.length > 0 ? [...new Set(spec.ops)] : [APPLICABLE_OPS[spec.kind][0]!],
      ranges: spec.ranges ?? [],
      up: spec.up ?? 0,
      down: spec.down ?? 0,
      since: Date.now(),
    };
    if (spec.delayMs !== undefined) f.delayMs = spec.delayMs;
    if (spec.bit !== undefined) f.bit = spec.bit;
    if (spec.keepSectors !== undefined) f.keepSectors = spec.keepSectors;
    if (spec.then !== undefined) f.then = spec.then;
    if (spec.device === undefined) {
      if (spec.sectors) throw new ThinError('EINVAL_ARG', 'sectors need a device (--device NAME)');
      return f;
    }
    if (spec.file === 'metadata' || spec.ranges) throw new ThinError('EINVAL_ARG', 'give either a device and its sectors, or a file and byte ranges, not both');
    if (!pool) throw new ThinError('EINVAL_ARG', 'a fault on device sectors needs the pool open to read its mappings');
    const [first, end] = spec.sectors ?? [0, pool.device(spec.device).size / SECTOR];
    const r = deviceRanges(pool, spec.device, first, end);
    if (r.ranges.length === 0) {
      throw new ThinError('EINVAL_ARG', `sectors ${first}-${end - 1} of ${spec.device} are not provisioned, so nothing in POOL/data backs them; write them first, or give --file data --bytes`);
    }
    f.ranges = r.ranges;
    f.device = { name: spec.device, devId: r.devId, sectors: [first, end], unmappedSectors: r.unmappedSectors };
    return f;
  }

  /** Persists the list, gives each backing file its faults, and drops cached blocks under `changed`. */
  private commit(pool: Pool | undefined, changed: Fault[]): void {
    const state: FaultsFile = { version: VERSION, nextId: this.nextId, faults: this.faults };
    writeFileAtomic(path.join(this.dir, FAULTS_FILE), `${JSON.stringify(state, null, 1)}\n`, this.files);
    for (const which of ['data', 'metadata'] as const) this.backings[which]?.setFaults(this.faults.filter((f) => f.file === which));
    if (pool) for (const f of changed) dropCached(pool, f);
  }
}

/** Drops the cached blocks a fault covers, so no cache hides it (or keeps what it did). */
function dropCached(pool: Pool, f: Fault): void {
  const ranges: Array<[number, number]> = f.ranges.length > 0 ? f.ranges : [[0, Number.MAX_SAFE_INTEGER]];
  for (const [s, e] of ranges) {
    if (f.file === 'metadata') pool.md.bm.dropClean(Math.floor(s / META_BLOCK_SIZE), Math.ceil(e / META_BLOCK_SIZE));
    else if (pool.data instanceof CachedBacking) pool.data.invalidate(s, Math.min(e, pool.data.size()) - s);
  }
  // A front end's copy of mappings (the FUSE fast path's table) is a cache of
  // the metadata too: without this, lookups it answers never read the file.
  if (f.file === 'metadata' && f.ops.includes('read')) pool.forgetMappingCopies();
}
