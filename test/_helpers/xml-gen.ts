// Deterministic thin_dump XML for tests: a small simulation of a pool's life
// (thin creation, snapshots and snapshot chains, writes with dm-thin's
// copy-on-write rule, discards, deletions that free data blocks for reuse),
// printed as XML that thin_restore 0.9.0 accepts.
//
// Model (dm-thin-metadata.c semantics):
//   * a new thin gets creation_time = snap_time = pool time and
//     transaction = the pool's transaction id at creation;
//   * a snapshot bumps the pool time first, then sets the origin's snap_time
//     and the snapshot's creation_time/snap_time to the new time, and shares
//     all of the origin's data blocks;
//   * a write to an unmapped block provisions a new data block stamped with
//     the current pool time; a write to a mapped block whose time is older
//     than the device's snap_time breaks sharing (new block, current time);
//     otherwise it overwrites in place and the mapping does not change;
//   * every step ends with a new transaction id (as a manager would set).
// mapped_blocks is exact. Devices are printed in increasing dev_id order.
// Runs are printed in a deliberately non-canonical mix of <range_mapping>
// and <single_mapping> so a reader has to re-merge to match thin_dump.

export interface GenPoolOptions {
  seed: number;
  /** Number of devices in the final pool. */
  devices: number;
  /** Most blocks any one device maps; its virtual space is twice that. */
  maxMappings: number;
  /** In sectors. */
  dataBlockSize: number;
  nrDataBlocks: number;
  /** Longest chain of snapshot-of-snapshot (0 = no snapshots; default 3). */
  snapshotChains?: number;
}

/** xorshift32 with a splitmix-style seed scramble: small, fast, deterministic. */
export class Rng {
  private s: number;

  constructor(seed: number) {
    let z = (seed >>> 0) + 0x9e3779b9;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    this.s = (z ^ (z >>> 16)) >>> 0 || 0x6d2b79f5;
  }

  /** Uniform in [0, 2^32). */
  u32(): number {
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.u32() / 2 ** 32) * n);
  }

  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }
}

interface Mapping {
  data: number;
  time: number;
}

interface Dev {
  id: number;
  transaction: bigint;
  creationTime: number;
  snapTime: number;
  depth: number;
  pristine: boolean;
  map: Map<number, Mapping>;
}

class Pool {
  time = 0;
  transaction = 0n;
  readonly devs = new Map<number, Dev>();
  private readonly refs = new Map<number, number>();
  private readonly free: number[] = [];
  private next = 0;

  constructor(
    private readonly rng: Rng,
    private readonly nrDataBlocks: number,
  ) {}

  alloc(): number | undefined {
    if (this.free.length > 0 && (this.next >= this.nrDataBlocks || this.rng.chance(0.5))) {
      const i = this.rng.int(this.free.length);
      const b = this.free[i]!;
      this.free[i] = this.free[this.free.length - 1]!;
      this.free.pop();
      this.refs.set(b, 1);
      return b;
    }
    if (this.next >= this.nrDataBlocks) return undefined;
    this.refs.set(this.next, 1);
    return this.next++;
  }

  ref(b: number): void {
    this.refs.set(b, (this.refs.get(b) ?? 0) + 1);
  }

  unref(b: number): void {
    const n = (this.refs.get(b) ?? 0) - 1;
    if (n > 0) {
      this.refs.set(b, n);
    } else {
      this.refs.delete(b);
      this.free.push(b);
    }
  }

  createThin(id: number, pristine: boolean): Dev {
    const d: Dev = {
      id, transaction: this.transaction, creationTime: this.time, snapTime: this.time,
      depth: 0, pristine, map: new Map(),
    };
    this.devs.set(id, d);
    return d;
  }

  createSnap(id: number, origin: Dev): Dev {
    this.time++;
    origin.snapTime = this.time;
    const d: Dev = {
      id, transaction: this.transaction, creationTime: this.time, snapTime: this.time,
      depth: origin.depth + 1, pristine: origin.pristine, map: new Map(),
    };
    for (const [v, m] of origin.map) {
      d.map.set(v, { data: m.data, time: m.time });
      this.ref(m.data);
    }
    this.devs.set(id, d);
    return d;
  }

  delete(d: Dev): void {
    for (const m of d.map.values()) this.unref(m.data);
    this.devs.delete(d.id);
  }

  write(d: Dev, v: number, maxMappings: number): void {
    const m = d.map.get(v);
    if (m === undefined) {
      if (d.map.size >= maxMappings) return;
      const b = this.alloc();
      if (b !== undefined) d.map.set(v, { data: b, time: this.time });
    } else if (d.snapTime > m.time) {
      const b = this.alloc();
      if (b === undefined) return;
      this.unref(m.data);
      d.map.set(v, { data: b, time: this.time });
    }
  }

  discard(d: Dev, v: number): void {
    const m = d.map.get(v);
    if (m === undefined) return;
    this.unref(m.data);
    d.map.delete(v);
  }
}

/** A realistic pool with sharing, as thin_dump XML. */
export function genPoolXml(opts: GenPoolOptions): string {
  const rng = new Rng(opts.seed);
  const pool = new Pool(rng, opts.nrDataBlocks);
  const maxDepth = opts.snapshotChains ?? 3;
  const virtSize = Math.max(1, opts.maxMappings * 2);
  const usedIds = new Set<number>();
  let nextId = rng.int(3);
  const newId = (): number => {
    let id: number;
    do {
      id = rng.chance(0.7) ? nextId++ : rng.int(2 ** 24);
    } while (usedIds.has(id));
    usedIds.add(id);
    return id;
  };

  const activity = (d: Dev): void => {
    if (d.pristine || opts.maxMappings === 0) return;
    const bursts = 1 + rng.int(4);
    for (let b = 0; b < bursts; b++) {
      const kind = rng.int(10);
      if (kind < 5) {
        // A sequential run: provisions consecutive data blocks -> ranges.
        const start = rng.int(virtSize);
        const len = 1 + rng.int(Math.max(1, Math.min(virtSize - start, Math.ceil(opts.maxMappings / 2))));
        for (let v = start; v < start + len; v++) pool.write(d, v, opts.maxMappings);
      } else if (kind < 8) {
        // Scattered small writes -> single mappings, broken sharing.
        const n = 1 + rng.int(Math.max(1, Math.ceil(opts.maxMappings / 20)));
        for (let i = 0; i < n; i++) pool.write(d, rng.int(virtSize), opts.maxMappings);
      } else if (kind < 9) {
        // Rewrite part of what is mapped (breaks sharing after a snapshot).
        const keys = [...d.map.keys()];
        const n = Math.ceil(keys.length / (2 + rng.int(6)));
        const from = keys.length === 0 ? 0 : rng.int(keys.length);
        for (let i = 0; i < n && from + i < keys.length; i++) pool.write(d, keys[from + i]!, opts.maxMappings);
      } else {
        // Discard a region.
        const start = rng.int(virtSize);
        const len = 1 + rng.int(Math.max(1, Math.ceil(opts.maxMappings / 10)));
        for (let v = start; v < start + len; v++) pool.discard(d, v);
      }
    }
  };

  let steps = 0;
  while (pool.devs.size < opts.devices) {
    steps++;
    const live = [...pool.devs.values()];
    const origins = live.filter((d) => d.depth < maxDepth);
    let created: Dev;
    if (origins.length > 0 && maxDepth > 0 && rng.chance(0.5)) {
      // Prefer extending the newest chain, sometimes branch anywhere.
      const newest = origins[origins.length - 1]!;
      const origin = rng.chance(0.6) ? newest : origins[rng.int(origins.length)]!;
      created = pool.createSnap(newId(), origin);
    } else {
      created = pool.createThin(newId(), rng.chance(0.15));
    }
    // Writes land on the new device and on a few others (origins diverge).
    activity(created);
    const others = 1 + rng.int(3);
    for (let i = 0; i < others; i++) {
      const all = [...pool.devs.values()];
      activity(all[rng.int(all.length)]!);
    }
    if (steps < 3 * opts.devices && pool.devs.size > 2 && rng.chance(0.1)) {
      const all = [...pool.devs.values()];
      pool.delete(all[rng.int(all.length)]!);
    }
    pool.transaction += 1n;
  }

  const out = new ChunkedText();
  const version = rng.chance(0.5) ? ' flags="0" version="1"' : '';
  out.add(
    `<superblock uuid="" time="${pool.time}" transaction="${pool.transaction}"${version}` +
      ` data_block_size="${opts.dataBlockSize}" nr_data_blocks="${opts.nrDataBlocks}">\n`,
  );
  out.add(`  <!-- genPoolXml seed=${opts.seed} devices=${opts.devices} -->\n`);
  const devs = [...pool.devs.values()].sort((a, b) => a.id - b.id);
  for (const d of devs) {
    out.add(
      `  <device dev_id="${d.id}" mapped_blocks="${d.map.size}" transaction="${d.transaction}"` +
        ` creation_time="${d.creationTime}" snap_time="${d.snapTime}">\n`,
    );
    const vs = [...d.map.keys()].sort((a, b) => a - b);
    let i = 0;
    while (i < vs.length) {
      const v0 = vs[i]!;
      const m0 = d.map.get(v0)!;
      let len = 1;
      while (i + len < vs.length) {
        const v = vs[i + len]!;
        const m = d.map.get(v)!;
        if (v !== v0 + len || m.data !== m0.data + len || m.time !== m0.time) break;
        len++;
      }
      // Print the run in pieces: sometimes whole, sometimes split, sometimes as singles.
      let off = 0;
      while (off < len) {
        const left = len - off;
        const piece = left === 1 || rng.chance(0.6) ? left : 1 + rng.int(left);
        if (piece === 1 || (piece <= 3 && rng.chance(0.5))) {
          for (let k = 0; k < piece; k++) {
            out.add(`    <single_mapping origin_block="${v0 + off + k}" data_block="${m0.data + off + k}" time="${m0.time}"/>\n`);
          }
        } else {
          out.add(
            `    <range_mapping origin_begin="${v0 + off}" data_begin="${m0.data + off}" length="${piece}" time="${m0.time}"/>\n`,
          );
        }
        off += piece;
      }
      i += len;
    }
    out.add('  </device>\n');
  }
  out.add('</superblock>\n');
  return out.text();
}

/**
 * One device (dev_id 0) mapping virtual blocks 0..nrMappings-1, printed in
 * thin_dump's canonical form. Sequential: data block = virtual block (one
 * range). Random: a seeded shuffle of data blocks 0..nrMappings-1 (nearly all
 * single mappings).
 */
export function genLinearDeviceXml(
  nrMappings: number,
  dataBlockSize: number,
  nrDataBlocks: number,
  opts: { random?: boolean; seed?: number } = {},
): string {
  if (nrMappings > nrDataBlocks) throw new Error(`genLinearDeviceXml: ${nrMappings} mappings need that many data blocks, pool has ${nrDataBlocks}`);
  const data = new Float64Array(nrMappings);
  for (let i = 0; i < nrMappings; i++) data[i] = i;
  if (opts.random) {
    const rng = new Rng(opts.seed ?? 1);
    for (let i = nrMappings - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      const t = data[i]!;
      data[i] = data[j]!;
      data[j] = t;
    }
  }
  const out = new ChunkedText();
  out.add(`<superblock uuid="" time="0" transaction="1" flags="0" version="1" data_block_size="${dataBlockSize}" nr_data_blocks="${nrDataBlocks}">\n`);
  out.add(`  <device dev_id="0" mapped_blocks="${nrMappings}" transaction="0" creation_time="0" snap_time="0">\n`);
  let i = 0;
  while (i < nrMappings) {
    const d0 = data[i]!;
    let len = 1;
    while (i + len < nrMappings && data[i + len] === d0 + len) len++;
    out.add(
      len === 1
        ? `    <single_mapping origin_block="${i}" data_block="${d0}" time="0"/>\n`
        : `    <range_mapping origin_begin="${i}" data_begin="${d0}" length="${len}" time="0"/>\n`,
    );
    i += len;
  }
  out.add('  </device>\n</superblock>\n');
  return out.text();
}

/** Appends small strings into ~64 KiB pieces, joined once at the end. */
class ChunkedText {
  private readonly chunks: string[] = [];
  private cur = '';

  add(s: string): void {
    this.cur += s;
    if (this.cur.length >= 65536) {
      this.chunks.push(this.cur);
      this.cur = '';
    }
  }

  text(): string {
    this.chunks.push(this.cur);
    this.cur = '';
    return this.chunks.join('');
  }
}
