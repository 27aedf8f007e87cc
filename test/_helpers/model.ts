// An in-memory model of dm-thin's semantics (reference section 1), for
// checking the pool against: devices, the pool's snapshot time and
// transaction id, and per device a map virtual block -> (physical id, time).
// Physical ids are the model's own numbering: they say which mappings share
// a data block, not which data block the allocator picked.
//
//   * create_thin: empty device, creation_time = snap_time = pool time,
//     transaction = the pool's transaction id;
//   * create_snap: pool time + 1; the snapshot gets the origin's mappings (same
//     physical ids, same times), creation_time = snap_time = the new time, and
//     the origin's snap_time becomes the new time;
//   * write, per block: unmapped -> new block stamped with the pool time, zeros
//     around the written bytes; mapped and "maybe shared" (device snap_time >
//     mapping time) -> new block, a copy of the old one, stamped with the pool
//     time; otherwise in place;
//   * discard: whole blocks inside the range are unmapped, partial edges kept;
//   * read: zeros where unmapped.

export interface ModelMapping {
  phys: number;
  time: number;
}

export interface ModelDevice {
  creationTime: number;
  snapTime: number;
  transaction: bigint;
  /** Virtual size in bytes (the table length; the metadata does not store it). */
  size: number;
  /** Active name, if any. */
  name: string | undefined;
  map: Map<number, ModelMapping>;
}

export interface ModelUsage {
  devId: number;
  mappedBlocks: number;
  exclusiveBlocks: number;
  sharedBlocks: number;
}

interface PhysBlock {
  bytes: Buffer;
  refs: number;
}

export class ThinModel {
  time = 0;
  transaction = 0n;
  readonly devices = new Map<number, ModelDevice>();
  private readonly blocks = new Map<number, PhysBlock>();
  private nextPhys = 0;

  constructor(readonly blockSize: number, public nrDataBlocks: number, readonly dataBlockSectors = blockSize / 512) {}

  //--------------------------------------------------------------------------
  // devices

  dev(id: number): ModelDevice {
    const d = this.devices.get(id);
    if (!d) throw new Error(`model: no device ${id}`);
    return d;
  }

  byName(name: string): [number, ModelDevice] {
    for (const [id, d] of this.devices) if (d.name === name) return [id, d];
    throw new Error(`model: no device named ${name}`);
  }

  ids(): number[] {
    return [...this.devices.keys()].sort((a, b) => a - b);
  }

  lowestFreeId(): number {
    let id = 0;
    while (this.devices.has(id)) id++;
    return id;
  }

  createThin(id: number, size: number, name?: string): void {
    if (this.devices.has(id)) throw new Error(`model: device ${id} exists`);
    this.devices.set(id, { creationTime: this.time, snapTime: this.time, transaction: this.transaction, size, name, map: new Map() });
  }

  createSnap(id: number, origin: number, size?: number, name?: string): void {
    if (this.devices.has(id)) throw new Error(`model: device ${id} exists`);
    const o = this.dev(origin);
    this.time++;
    const map = new Map<number, ModelMapping>();
    for (const [vb, m] of o.map) {
      map.set(vb, { ...m });
      this.block(m.phys).refs++;
    }
    o.snapTime = this.time;
    this.devices.set(id, { creationTime: this.time, snapTime: this.time, transaction: this.transaction, size: size ?? o.size, name, map });
  }

  delete(id: number): void {
    const d = this.dev(id);
    for (const m of d.map.values()) this.unref(m.phys);
    this.devices.delete(id);
  }

  setTransactionId(current: bigint, next: bigint): void {
    if (current !== this.transaction) throw new Error(`model: transaction is ${this.transaction}, not ${current}`);
    this.transaction = next;
  }

  resizeData(nrBlocks: number): void {
    this.nrDataBlocks = nrBlocks;
  }

  //--------------------------------------------------------------------------
  // data blocks

  private block(phys: number): PhysBlock {
    const b = this.blocks.get(phys);
    if (!b) throw new Error(`model: no physical block ${phys}`);
    return b;
  }

  private newBlock(bytes: Buffer): number {
    const phys = this.nextPhys++;
    this.blocks.set(phys, { bytes, refs: 1 });
    return phys;
  }

  private unref(phys: number): void {
    const b = this.block(phys);
    if (--b.refs === 0) this.blocks.delete(phys);
  }

  /** Data blocks in use: distinct physical ids still referenced. */
  dataUsed(): number {
    return this.blocks.size;
  }

  /** How many mappings point at a physical block. */
  refs(phys: number): number {
    return this.blocks.get(phys)?.refs ?? 0;
  }

  //--------------------------------------------------------------------------
  // I/O

  private pieces(offset: number, length: number): Array<{ vb: number; within: number; at: number; len: number }> {
    const out = [];
    for (let at = 0; at < length;) {
      const pos = offset + at;
      const vb = Math.floor(pos / this.blockSize);
      const within = pos - vb * this.blockSize;
      const len = Math.min(this.blockSize - within, length - at);
      out.push({ vb, within, at, len });
      at += len;
    }
    return out;
  }

  private checkRange(d: ModelDevice, offset: number, length: number): void {
    if (offset < 0 || length < 0 || offset + length > d.size) throw new Error(`model: ${offset}+${length} past the end (${d.size})`);
  }

  write(id: number, offset: number, data: Buffer): void {
    const d = this.dev(id);
    this.checkRange(d, offset, data.length);
    for (const p of this.pieces(offset, data.length)) {
      const src = data.subarray(p.at, p.at + p.len);
      const m = d.map.get(p.vb);
      if (m && !(d.snapTime > m.time)) {
        const b = this.block(m.phys);
        // The time rule must never call a block unshared while another device uses it.
        if (b.refs !== 1) throw new Error(`model: in-place write to block ${m.phys} with ${b.refs} users`);
        src.copy(b.bytes, p.within);
        continue;
      }
      const bytes = m ? Buffer.from(this.block(m.phys).bytes) : Buffer.alloc(this.blockSize);
      src.copy(bytes, p.within);
      if (m) this.unref(m.phys);
      d.map.set(p.vb, { phys: this.newBlock(bytes), time: this.time });
    }
  }

  /** Unmaps the whole blocks inside the range; returns how many were mapped. */
  discard(id: number, offset: number, length: number): number {
    const d = this.dev(id);
    this.checkRange(d, offset, length);
    const first = Math.ceil(offset / this.blockSize);
    const end = Math.floor((offset + length) / this.blockSize);
    let n = 0;
    for (let vb = first; vb < end; vb++) {
      const m = d.map.get(vb);
      if (!m) continue;
      this.unref(m.phys);
      d.map.delete(vb);
      n++;
    }
    return n;
  }

  read(id: number, offset: number, length: number): Buffer {
    const d = this.dev(id);
    this.checkRange(d, offset, length);
    const out = Buffer.alloc(length);
    for (const p of this.pieces(offset, length)) {
      const m = d.map.get(p.vb);
      if (m) this.block(m.phys).bytes.copy(out, p.at, p.within, p.within + p.len);
    }
    return out;
  }

  //--------------------------------------------------------------------------
  // reporting

  /** As Pool.usage() counts: a mapping is exclusive if no other mapping shares its block. */
  usage(): ModelUsage[] {
    return this.ids().map((devId) => {
      const d = this.dev(devId);
      let exclusive = 0;
      for (const m of d.map.values()) if (this.block(m.phys).refs === 1) exclusive++;
      return { devId, mappedBlocks: d.map.size, exclusiveBlocks: exclusive, sharedBlocks: d.map.size - exclusive };
    });
  }
}

/** Deterministic bytes for a write: xorshift32 from a seed (fast, no big arbitraries). */
export function pattern(seed: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  let x = (seed >>> 0) ^ 0x9e3779b9 || 1;
  let i = 0;
  for (; i + 4 <= length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.writeUInt32LE(x >>> 0, i);
  }
  for (; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}
