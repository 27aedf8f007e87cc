// A random workload on a pool whose files are recorded (IoLog): sector-aligned
// writes (single and concurrent batches, partial and whole blocks, to fresh,
// provisioned and shared blocks), flushes, commits, discards, and the
// management operations: create, snapshot, remove, resize (of a device's
// name entry), deactivate/activate, set_transaction_id, pool data and
// metadata growth. Everything lives in memory (MemoryBacking under the
// recorder, MemoryPoolFiles for config and devices); only the pool lock
// touches the disk. Marks in the log tell the oracle (crash-oracle.ts) what
// the workload was told.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DevId } from '../../src/base/units.js';
import { ForwardingBacking } from '../../src/io/forwarding-backing.js';
import type { BackingFile } from '../../src/io/backing-file.js';
import { IoLog } from '../../src/io/io-log.js';
import { MemoryBacking } from '../../src/io/memory-backing.js';
import { MemoryPoolFiles } from '../../src/io/pool-files.js';
import { RecordingBacking, RecordingPoolFiles } from '../../src/io/recording-backing.js';
import type { Canary } from '../../src/pool/canary.js';
import { defaultConfig } from '../../src/pool/config.js';
import { Pool } from '../../src/pool/pool.js';
import type { Mark, MgmtOp, MgmtState } from './crash-oracle.js';
import { pattern } from './model.js';
import { Rng } from './xml-gen.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;

export interface WorkloadOptions {
  seed: number;
  /** Operations to run (default 120). */
  steps?: number;
  canary?: Canary;
  /** Management operations to leave out. */
  skip?: ReadonlyArray<MgmtOp['kind']>;
}

export const BLOCK = 64 * KiB;
/** Every device's sectors live in its first EXTENT bytes (16 blocks). */
export const EXTENT = 16 * BLOCK;
const SECTORS = EXTENT / 512;
const DATA_BLOCKS = 40;
const MAX_DATA_BLOCKS = 72;
const METADATA = 2 * MiB;
const MAX_METADATA = 3 * MiB;
const MAX_DEVICES = 5;

/** The BackingFile `replacement` in place of `real`, closing both. */
export class Replacing extends ForwardingBacking {
  constructor(replacement: BackingFile, private readonly real: BackingFile) {
    super(replacement);
  }
  override async close(): Promise<void> {
    try {
      await this.inner.close();
    } finally {
      await this.real.close();
    }
  }
}

export function mgmtState(pool: Pool): MgmtState {
  return {
    devices: pool.md.devices().map(Number),
    names: pool.registry.list().map((d) => [d.name, d.devId as number, d.size] as [string, number, number])
      .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)),
    transId: String(pool.md.sb.transId),
    dataBlocks: pool.md.nrDataBlocks,
    metaBlocks: pool.md.msm.nrBlocks,
  };
}

/**
 * Pool.create in `dir` (which then holds only the lock and empty stand-ins),
 * with the data and metadata files in memory and every change to them and to
 * the small files recorded in `log` from the start.
 */
export async function createRecordedPool(dir: string, log: IoLog, size: { dataSize: number; metadataSize: number }, canary?: Canary): Promise<Pool> {
  const files = new RecordingPoolFiles(new MemoryPoolFiles(), log);
  const wrap = (f: BackingFile, which: 'data' | 'metadata') => new Replacing(new RecordingBacking(new MemoryBacking(f.path, f.size()), log, which), f);
  const opts = { wrap, files, oneShot: true, cacheBlocks: 1024, ...(canary ? { canary } : {}) };
  return Pool.create(dir, { ...size, blockSize: BLOCK, config: defaultConfig() }, opts);
}

export interface WorkloadResult {
  log: IoLog;
  steps: number;
  counts: Record<string, number>;
}

/** Runs one workload and returns its log. */
export async function runWorkload(o: WorkloadOptions): Promise<WorkloadResult> {
  const rng = new Rng(o.seed);
  const skip = new Set(o.skip ?? []);
  const log = new IoLog();
  const mark = (m: Mark) => log.mark(m.label, m.data);
  const dir = mkdtempSync(join(tmpdir(), 'thinfuse-crash-wl-'));
  const counts: Record<string, number> = {};
  const count = (k: string) => (counts[k] = (counts[k] ?? 0) + 1);
  let pool: Pool | undefined;
  try {
    pool = await createRecordedPool(dir, log, { dataSize: DATA_BLOCKS * BLOCK, metadataSize: METADATA }, o.canary);
    const p = pool;
    mark({ label: 'ready', data: { state: mgmtState(p), extent: EXTENT, blockBytes: BLOCK } });

    let nameSeq = 0;
    const named = () => p.registry.list();
    const unnamed = () => p.md.devices().filter((id) => !p.registry.byId(id));
    const pick = <T>(xs: T[]): T => xs[rng.int(xs.length)]!;
    const op = async (m: MgmtOp, run: () => Promise<unknown>) => {
      mark({ label: 'begin', data: m });
      await run();
      mark({ label: 'end', data: m });
      count(m.kind);
    };
    let seed = o.seed * 7919;

    /** Sector-aligned [offset, length) inside a device of `size` bytes. */
    const range = (size: number): [number, number] => {
      const sectors = Math.floor(size / 512);
      const shape = rng.int(10);
      let len: number;
      if (shape < 4) len = 1 + rng.int(8);
      else if (shape < 7) len = 128;
      else if (shape < 9) len = 1 + rng.int(255);
      else len = 1 + rng.int(sectors);
      len = Math.min(len, sectors);
      const at = shape >= 4 && shape < 7 ? rng.int(Math.floor(sectors / 128)) * 128 : rng.int(sectors - len + 1);
      return [at * 512, len * 512];
    };
    const blocksTouched = (offset: number, length: number) => Math.floor((offset + length - 1) / BLOCK) - Math.floor(offset / BLOCK) + 1;

    const makeRoom = async (): Promise<void> => {
      if (p.md.nrDataBlocks + 8 <= MAX_DATA_BLOCKS && !skip.has('resizeData')) {
        const nr = p.md.nrDataBlocks + 8;
        await op({ kind: 'resizeData', nrBlocks: nr }, () => p.resizeData(nr * BLOCK));
      } else if (named().length > 1) {
        const d = pick(named());
        await op({ kind: 'remove', name: d.name, devId: d.devId }, () => p.remove(d.name));
      } else {
        const d = pick(named());
        mark({ label: 'discard', data: { dev: d.devId, offset: 0, length: d.size } });
        await p.discard(d.devId, 0, d.size, d.size);
        count('discard');
      }
    };

    const create = async () => {
      const name = `d${nameSeq++}`;
      const size = (1 + rng.int(SECTORS)) * 512;
      const devId = p.lowestFreeDevId();
      await op({ kind: 'create', name, devId, size }, () => p.createDevice(name, size));
    };
    await create();

    const steps = o.steps ?? 120;
    for (let step = 0; step < steps; step++) {
      const devices = named();
      if (devices.length === 0) {
        await create();
        continue;
      }
      const r = rng.int(100);
      if (r < 38) {
        // One write, or a batch of concurrent writes to distinct sectors.
        const n = rng.chance(0.3) ? 2 + rng.int(3) : 1;
        const jobs: Array<{ dev: number; offset: number; data: Buffer; size: number }> = [];
        const taken = new Map<number, Array<[number, number]>>();
        for (let i = 0; i < n; i++) {
          const d = pick(devices);
          const [offset, length] = range(d.size);
          const t = taken.get(d.devId) ?? [];
          if (t.some(([a, l]) => offset < a + l && a < offset + length)) continue;
          t.push([offset, length]);
          taken.set(d.devId, t);
          jobs.push({ dev: d.devId, offset, data: pattern(seed++, length), size: d.size });
        }
        const need = jobs.reduce((s, j) => s + blocksTouched(j.offset, j.data.length), 0);
        if (p.md.dsm.nrFree - p.md.freedData.length < need + 2 && p.md.freedData.length > 0) {
          // Blocks freed in this transaction can be reused only after a commit. Concurrent
          // writes must not be the ones to trigger it: a write that finds no space while
          // another one's commit is freeing blocks fails with NO_DATA_SPACE (an engine bug,
          // RELIABILITY.md), so commit first.
          await p.commit();
          count('commit');
        }
        if (p.md.dsm.nrFree < need + 2) {
          // Making room may remove a device: then this step writes nothing.
          await makeRoom();
          continue;
        }
        for (const j of jobs) mark({ label: 'write', data: { dev: j.dev, offset: j.offset, data: j.data } });
        await Promise.all(jobs.map((j) => p.write(j.dev as DevId, j.data, j.offset, j.size)));
        count(n > 1 ? 'write-batch' : 'write');
      } else if (r < 50) {
        await p.flush();
        mark({ label: 'ack', data: null });
        count('flush');
      } else if (r < 54) {
        // Half the time a write runs while the commit is in flight: it lands in
        // the next transaction (allocation and insert do not wait for the commit).
        const jobs: Array<Promise<unknown>> = [p.commit()];
        const d = devices.length > 0 && rng.chance(0.5) ? pick(devices) : undefined;
        if (d) {
          const [offset, length] = range(d.size);
          if (p.md.dsm.nrFree >= blocksTouched(offset, length) + 2) {
            const data = pattern(seed++, length);
            mark({ label: 'write', data: { dev: d.devId, offset, data } });
            jobs.push(p.write(d.devId as DevId, data, offset, d.size));
            count('write-during-commit');
          }
        }
        await Promise.all(jobs);
        count('commit');
      } else if (r < 62) {
        const d = pick(devices);
        const [offset, length] = rng.chance(0.5) ? range(d.size) : [0, d.size];
        mark({ label: 'discard', data: { dev: d.devId, offset, length } });
        await p.discard(d.devId, offset, length, d.size);
        count('discard');
      } else if (r < 68) {
        if (p.md.devices().length < MAX_DEVICES) await create();
      } else if (r < 76) {
        if (p.md.devices().length < MAX_DEVICES) {
          const origin = pick(devices);
          const name = `s${nameSeq++}`;
          const devId = p.lowestFreeDevId();
          await op({ kind: 'snapshot', name, devId, origin: origin.devId, size: origin.size }, () => p.snapshot(origin.name, name));
        }
      } else if (r < 82) {
        if (devices.length > 1 || rng.chance(0.3)) {
          const d = pick(devices);
          await op({ kind: 'remove', name: d.name, devId: d.devId }, () => p.remove(d.name));
        }
      } else if (r < 86) {
        const d = pick(devices);
        const size = (1 + rng.int(SECTORS)) * 512;
        await op({ kind: 'resize', name: d.name, size }, () => p.resizeDevice(d.name, size));
      } else if (r < 89) {
        const free = unnamed();
        if (free.length > 0) {
          const devId = pick(free);
          const name = `a${nameSeq++}`;
          const size = (1 + rng.int(SECTORS)) * 512;
          await op({ kind: 'activate', name, devId, size }, () => p.activate(name, devId as DevId, size));
        } else if (devices.length > 1) {
          const d = pick(devices);
          await op({ kind: 'deactivate', name: d.name }, () => p.deactivate(d.name));
        }
      } else if (r < 93) {
        const from = p.md.sb.transId;
        const to = from + 1n + BigInt(rng.int(5));
        await op({ kind: 'setTransactionId', from: String(from), to: String(to) }, () => p.message(`set_transaction_id ${from} ${to}`));
      } else if (r < 97) {
        if (!skip.has('resizeData') && p.md.nrDataBlocks + 4 <= MAX_DATA_BLOCKS) {
          const nr = p.md.nrDataBlocks + 1 + rng.int(4);
          await op({ kind: 'resizeData', nrBlocks: nr }, () => p.resizeData(nr * BLOCK));
        }
      } else {
        const bytes = p.md.file.size() + 256 * KiB;
        if (bytes <= MAX_METADATA && !skip.has('resizeMetadata')) {
          await op({ kind: 'resizeMetadata', nrBlocks: bytes / 4096 }, () => p.resizeMetadata(bytes));
        }
      }
    }
    await p.close();
    return { log, steps, counts };
  } finally {
    await pool?.close().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  }
}
