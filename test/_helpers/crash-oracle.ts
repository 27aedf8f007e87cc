// What a crash state must look like, rebuilt from the marks the workload puts
// into the IoLog (crash-workload.ts). The replayer feeds every mark it passes
// to `Oracle.apply`, so at any crash point the oracle describes what the
// workload had been told so far:
//
//   * per device and 512-byte sector: the value as of the last
//     acknowledgement (a completed Pool.flush, or a completed management
//     operation that commits, which flushes the data file first), and every
//     value written since (writes issued, discards). After a crash a sector
//     must read as one of these; with no write since the acknowledgement it
//     must read exactly the acknowledged value.
//   * the management state (devices in the metadata, the names in
//     POOL/devices, transaction id, data and metadata size): exactly the
//     state after the last completed operation, or, if one was running at
//     the crash, either the state before it or the state after it.
//   * a snapshot that exists reads exactly what its origin held when the
//     snapshot was taken.

export const SECTOR = 512;

export type MgmtOp =
  | { kind: 'create'; name: string; devId: number; size: number }
  | { kind: 'snapshot'; name: string; devId: number; origin: number; size: number }
  | { kind: 'remove'; name: string; devId: number }
  | { kind: 'resize'; name: string; size: number }
  | { kind: 'deactivate'; name: string }
  | { kind: 'activate'; name: string; devId: number; size: number }
  | { kind: 'setTransactionId'; from: string; to: string }
  | { kind: 'resizeData'; nrBlocks: number }
  | { kind: 'resizeMetadata'; nrBlocks: number };

/** Management operations that commit the metadata, and so flush the data file before it. */
const COMMITS: ReadonlySet<MgmtOp['kind']> = new Set(['create', 'snapshot', 'remove', 'setTransactionId', 'resizeData', 'resizeMetadata']);

export interface MgmtState {
  devices: number[];
  /** [name, devId, size], sorted by name. */
  names: Array<[string, number, number]>;
  transId: string;
  dataBlocks: number;
  metaBlocks: number;
}

export type Mark =
  | { label: 'ready'; data: { state: MgmtState; extent: number; blockBytes: number } }
  | { label: 'write'; data: { dev: number; offset: number; data: Buffer } }
  | { label: 'discard'; data: { dev: number; offset: number; length: number } }
  | { label: 'ack'; data: null }
  | { label: 'begin'; data: MgmtOp }
  | { label: 'end'; data: MgmtOp };

export function sameState(a: MgmtState, b: MgmtState): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

export function applyOp(s: MgmtState, op: MgmtOp): MgmtState {
  const devices = new Set(s.devices);
  const names = new Map(s.names.map(([n, id, size]) => [n, [id, size] as [number, number]]));
  let { transId, dataBlocks, metaBlocks } = s;
  switch (op.kind) {
    case 'create':
    case 'snapshot':
      devices.add(op.devId);
      names.set(op.name, [op.devId, op.size]);
      break;
    case 'remove':
      devices.delete(op.devId);
      names.delete(op.name);
      break;
    case 'resize':
      names.set(op.name, [names.get(op.name)![0], op.size]);
      break;
    case 'deactivate':
      names.delete(op.name);
      break;
    case 'activate':
      names.set(op.name, [op.devId, op.size]);
      break;
    case 'setTransactionId':
      transId = op.to;
      break;
    case 'resizeData':
      dataBlocks = op.nrBlocks;
      break;
    case 'resizeMetadata':
      metaBlocks = op.nrBlocks;
      break;
  }
  return {
    devices: [...devices].sort((a, b) => a - b),
    names: [...names].map(([n, [id, size]]) => [n, id, size] as [string, number, number]).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)),
    transId, dataBlocks, metaBlocks,
  };
}

/** One device's sectors: acknowledged contents, and the values written since. */
export class DevOracle {
  readonly latest: Buffer;
  readonly acked: Buffer;
  /** Sector -> values written since the last acknowledgement. */
  readonly since = new Map<number, Buffer[]>();

  constructor(extent: number, from?: Buffer) {
    this.latest = from ? Buffer.from(from) : Buffer.alloc(extent);
    this.acked = Buffer.from(this.latest);
  }

  write(offset: number, data: Buffer): void {
    if (offset % SECTOR !== 0 || data.length % SECTOR !== 0) throw new Error('oracle: writes must be whole sectors');
    data.copy(this.latest, offset);
    for (let at = 0; at < data.length; at += SECTOR) this.add((offset + at) / SECTOR, data.subarray(at, at + SECTOR));
  }

  zero(offset: number, length: number): void {
    this.latest.fill(0, offset, offset + length);
    const z = Buffer.alloc(SECTOR);
    for (let at = 0; at < length; at += SECTOR) this.add((offset + at) / SECTOR, z);
  }

  private add(sector: number, value: Buffer): void {
    let l = this.since.get(sector);
    if (!l) this.since.set(sector, (l = []));
    l.push(value);
  }

  ack(): void {
    for (const s of this.since.keys()) this.latest.copy(this.acked, s * SECTOR, s * SECTOR, (s + 1) * SECTOR);
    this.since.clear();
  }

  /**
   * Compares what a device reads with what it may read; returns the first
   * bad sector, or undefined. `exact`: only the latest contents are allowed.
   */
  verify(buf: Buffer, exact = false): { sector: number; kind: 'lost-ack' | 'neither-old-nor-new'; detail: string } | undefined {
    for (let s = 0; s * SECTOR < buf.length; s++) {
      const a = s * SECTOR;
      const b = a + SECTOR;
      if (exact) {
        if (buf.compare(this.latest, a, b, a, b) === 0) continue;
        return { sector: s, kind: 'neither-old-nor-new', detail: `sector ${s} differs from the origin's contents at the snapshot (${describe(buf.subarray(a, b))})` };
      }
      if (buf.compare(this.acked, a, b, a, b) === 0) continue;
      const since = this.since.get(s);
      if (since?.some((v) => buf.compare(v, 0, SECTOR, a, b) === 0)) continue;
      return since
        ? { sector: s, kind: 'neither-old-nor-new', detail: `sector ${s} reads ${describe(buf.subarray(a, b))}: neither its acknowledged value nor any of the ${since.length} written since` }
        : { sector: s, kind: 'lost-ack', detail: `sector ${s} reads ${describe(buf.subarray(a, b))}, not its acknowledged value (${describe(this.acked.subarray(a, b))}); nothing was written to it since` };
    }
    return undefined;
  }
}

function describe(sector: Buffer): string {
  let zero = true;
  for (const x of sector) if (x !== 0) zero = false;
  return zero ? 'zeros' : `bytes ${sector.subarray(0, 8).toString('hex')}...`;
}

export class Oracle {
  ready = false;
  extent = 0;
  blockBytes = 0;
  state!: MgmtState;
  running: { op: MgmtOp; pre: MgmtState; post: MgmtState } | undefined;
  readonly devs = new Map<number, DevOracle>();
  /** Devices that must read exactly `latest` if they exist (snapshots being taken). */
  readonly exact = new Set<number>();

  apply(m: Mark): void {
    switch (m.label) {
      case 'ready':
        this.ready = true;
        this.state = m.data.state;
        this.extent = m.data.extent;
        this.blockBytes = m.data.blockBytes;
        for (const id of this.state.devices) this.devs.set(id, new DevOracle(this.extent));
        break;
      case 'write':
        this.dev(m.data.dev).write(m.data.offset, m.data.data);
        break;
      case 'discard': {
        // Whole blocks inside the range are unmapped (read as zeros); partial blocks are left alone.
        const first = Math.ceil(m.data.offset / this.blockBytes) * this.blockBytes;
        const end = Math.floor((m.data.offset + m.data.length) / this.blockBytes) * this.blockBytes;
        if (end > first) this.dev(m.data.dev).zero(first, end - first);
        break;
      }
      case 'ack':
        this.ackAll();
        break;
      case 'begin': {
        const op = m.data;
        this.running = { op, pre: this.state, post: applyOp(this.state, op) };
        if (op.kind === 'create') this.devs.set(op.devId, new DevOracle(this.extent));
        if (op.kind === 'snapshot') {
          this.devs.set(op.devId, new DevOracle(this.extent, this.dev(op.origin).latest));
          this.exact.add(op.devId);
        }
        break;
      }
      case 'end': {
        const op = m.data;
        if (!this.running) throw new Error('oracle: end without begin');
        this.state = this.running.post;
        this.running = undefined;
        this.exact.clear();
        if (op.kind === 'remove') this.devs.delete(op.devId);
        if (COMMITS.has(op.kind)) this.ackAll();
        break;
      }
    }
  }

  dev(id: number): DevOracle {
    const d = this.devs.get(id);
    if (!d) throw new Error(`oracle: no device ${id}`);
    return d;
  }

  private ackAll(): void {
    for (const d of this.devs.values()) d.ack();
  }

  /** The management states a crash may leave. */
  allowedStates(): MgmtState[] {
    return this.running ? [this.running.pre, this.running.post] : [this.state];
  }
}
