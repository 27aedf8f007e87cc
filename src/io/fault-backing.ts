import { ThinError } from '../base/errors.js';
import { IO_CHUNK, SECTOR } from '../base/units.js';
import type { BackingFile } from './backing-file.js';
import { ForwardingBacking } from './forwarding-backing.js';

// Fault injection on one backing file, as dm-dust, dm-flakey, dm-delay and
// nbdkit's error and evil filters do it on a block device. The list of
// faults changes at run time (`thinfuse fault`); with an empty list every
// call is one length check and a forward.
//
// Fault spec (also the records of POOL/faults.json, see src/pool/faults.ts):
//
//   id           number, unique in the pool, given when the fault is set
//   file         'data' | 'metadata': which backing file
//   kind         'error'    the request fails with EIO (dm-dust, dm-flakey error_reads/error_writes)
//                'nospace'  the request fails with ENOSPC, as from a full host filesystem
//                'drop'     writes (and flushes) report success and do nothing (dm-flakey drop_writes)
//                'delay'    the request waits delayMs first, then runs (dm-delay)
//                'bitflip'  reads return data with bit `bit` (0-7) of the first byte of every
//                           512-byte sector inside the fault's ranges flipped (nbdkit-evil)
//                'torn'     only the first keepSectors sectors of a write (counted at absolute
//                           512-byte boundaries of the file) reach the file; then the call fails
//                           with EIO (then = 'error') or the process is killed (then = 'crash',
//                           SIGKILL: a daemon crash in the middle of a write)
//   ops          which requests it hits: 'read', 'write' (writes, hole punches, the write half
//                of a copy), 'flush' (fdatasync; ranges do not apply to it). Applicable:
//                error: read write flush; nospace: write flush; drop: write flush;
//                delay: read write flush; bitflip: read; torn: write
//   ranges       [start, end) byte ranges of the file a request must overlap; [] = the whole file
//   up, down     dm-flakey's intervals in seconds: from `since` (ms since the epoch), healthy
//                for `up` seconds, faulty for `down`, repeating. down = 0: always faulty
//   since        when the fault was set (ms since the epoch)
//   delayMs      for 'delay'
//   bit          for 'bitflip' (default 0)
//   keepSectors  for 'torn' (default 1)
//   then         for 'torn' (default 'error')
//   device       informational: the thin device and sectors [first, end) the ranges came from,
//                and how many of those sectors were unprovisioned (and so not covered)
//
// A request the faults match is handled in this order: delays (summed), then
// the first error, nospace or torn fault in list order, then drops; reads
// then get their bit flips. A copy inside the file that a fault touches is
// done as reads and writes through this wrapper, so every fault applies to it.

export type FaultFile = 'data' | 'metadata';
export type FaultKind = 'error' | 'nospace' | 'drop' | 'delay' | 'bitflip' | 'torn';
export type FaultOp = 'read' | 'write' | 'flush';

export interface Fault {
  id: number;
  file: FaultFile;
  kind: FaultKind;
  ops: FaultOp[];
  ranges: Array<[number, number]>;
  up: number;
  down: number;
  since: number;
  delayMs?: number;
  bit?: number;
  keepSectors?: number;
  then?: 'error' | 'crash';
  device?: { name: string; devId: number; sectors: [number, number]; unmappedSectors: number };
}

export const FAULT_KINDS: readonly FaultKind[] = ['error', 'nospace', 'drop', 'delay', 'bitflip', 'torn'];

/** The requests each kind can hit; the first is the default. */
export const APPLICABLE_OPS: Record<FaultKind, readonly FaultOp[]> = {
  error: ['read', 'write', 'flush'],
  nospace: ['write', 'flush'],
  drop: ['write', 'flush'],
  delay: ['read', 'write', 'flush'],
  bitflip: ['read'],
  torn: ['write'],
};

/** Throws EINVAL_ARG unless the fault is well formed (checks what JSON cannot). */
export function validateFault(f: Fault): void {
  const bad = (why: string): never => {
    throw new ThinError('EINVAL_ARG', `fault ${f.id ?? ''}: ${why}`.replace('fault : ', 'fault: '));
  };
  if (f.file !== 'data' && f.file !== 'metadata') bad(`file must be data or metadata, not '${f.file}'`);
  if (!FAULT_KINDS.includes(f.kind)) bad(`unknown kind '${f.kind}'; use one of ${FAULT_KINDS.join(', ')}`);
  if (!Array.isArray(f.ops) || f.ops.length === 0) bad('no requests (ops) to hit');
  for (const op of f.ops) {
    if (!APPLICABLE_OPS[f.kind].includes(op)) bad(`${f.kind} does not apply to ${op} requests (it applies to ${APPLICABLE_OPS[f.kind].join(', ')})`);
  }
  if (!Array.isArray(f.ranges)) bad('ranges must be a list');
  for (const r of f.ranges) {
    if (!Array.isArray(r) || r.length !== 2 || !Number.isSafeInteger(r[0]) || !Number.isSafeInteger(r[1]) || r[0] < 0 || r[1] <= r[0]) {
      bad(`bad byte range ${JSON.stringify(r)}; ranges are [start, end) with start < end`);
    }
  }
  for (const k of ['up', 'down', 'since'] as const) if (!(Number.isFinite(f[k]) && f[k] >= 0)) bad(`${k} must be a number >= 0`);
  if (f.kind === 'delay' && !(Number.isFinite(f.delayMs) && f.delayMs! > 0 && f.delayMs! <= 600_000)) bad('delay needs delayMs from 1 to 600000');
  if (f.bit !== undefined && !(Number.isInteger(f.bit) && f.bit >= 0 && f.bit <= 7)) bad('bit must be 0 to 7');
  if (f.keepSectors !== undefined && !(Number.isInteger(f.keepSectors) && f.keepSectors >= 0)) bad('keepSectors must be a whole number');
  if (f.then !== undefined && f.then !== 'error' && f.then !== 'crash') bad(`then must be error or crash, not '${f.then}'`);
}

/** True while a dm-flakey style fault is in its down interval (or has no intervals). */
export function faultActive(f: Fault, now: number): boolean {
  if (f.down <= 0) return true;
  const period = (f.up + f.down) * 1000;
  return (now - f.since) % period >= f.up * 1000;
}

function overlaps(f: Fault, offset: number, length: number): boolean {
  if (f.ranges.length === 0) return true;
  const end = offset + Math.max(length, 1);
  for (const [s, e] of f.ranges) if (s < end && offset < e) return true;
  return false;
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

export class FaultBacking extends ForwardingBacking {
  private faults: readonly Fault[] = [];
  /**
   * Told whenever the list changes: I/O that bypasses this object (the FUSE
   * fast path writes the file itself) must stop while a fault is set.
   */
  onChange: ((faults: readonly Fault[]) => void) | undefined;

  constructor(inner: BackingFile, private readonly now: () => number = Date.now) {
    super(inner);
  }

  /** The file the faults are injected in front of. */
  get file(): BackingFile {
    return this.inner;
  }

  /** Replaces the list (the caller keeps only this file's faults in it). */
  setFaults(faults: readonly Fault[]): void {
    this.faults = [...faults];
    this.onChange?.(this.faults);
  }

  list(): readonly Fault[] {
    return this.faults;
  }

  private match(op: FaultOp, offset: number, length: number): Fault[] {
    const now = this.now();
    return this.faults.filter((f) => f.ops.includes(op) && (op === 'flush' || overlaps(f, offset, length)) && faultActive(f, now));
  }

  private injected(f: Fault, op: string, offset: number, length: number): ThinError {
    const where = op === 'flush' ? `fdatasync ${this.path}` : `${op} ${this.path} at ${offset}+${length}`;
    const clear = 'clear it with thinfuse fault POOL clear';
    if (f.kind === 'nospace') {
      return new ThinError('HOST_NO_SPACE', `${where}: injected ENOSPC (fault ${f.id}); ${clear}`, { errno: 'ENOSPC', fault: f.id });
    }
    return new ThinError('IO_ERROR', `${where}: injected EIO (fault ${f.id}); ${clear}`, { errno: 'EIO', fault: f.id });
  }

  private static delayOf(hits: Fault[]): number {
    let ms = 0;
    for (const f of hits) if (f.kind === 'delay') ms += f.delayMs ?? 0;
    return ms;
  }

  /** The first fault that fails the request, if any. */
  private static failing(hits: Fault[]): Fault | undefined {
    return hits.find((f) => f.kind === 'error' || f.kind === 'nospace' || f.kind === 'torn');
  }

  /** The part of a write a torn fault lets through. */
  private static tornPrefix(f: Fault, buf: Buffer, offset: number): Buffer {
    const end = (Math.floor(offset / SECTOR) + (f.keepSectors ?? 1)) * SECTOR;
    return buf.subarray(0, Math.max(0, Math.min(buf.length, end - offset)));
  }

  private tornEnd(f: Fault, offset: number, length: number): never {
    if (f.then === 'crash') process.kill(process.pid, 'SIGKILL');
    throw this.injected(f, 'write', offset, length);
  }

  private flip(hits: Fault[], buf: Buffer, offset: number): void {
    for (const f of hits) {
      if (f.kind !== 'bitflip') continue;
      const mask = 1 << (f.bit ?? 0);
      for (let s = Math.ceil(offset / SECTOR) * SECTOR; s < offset + buf.length; s += SECTOR) {
        if (overlaps(f, s, 1)) buf[s - offset]! ^= mask;
      }
    }
  }

  //----------------------------------------------------------------------------
  // asynchronous requests

  private async pause(hits: Fault[]): Promise<void> {
    const ms = FaultBacking.delayOf(hits);
    if (ms > 0) await new Promise((r) => setTimeout(r, ms));
  }

  override async read(buf: Buffer, offset: number): Promise<void> {
    if (this.faults.length === 0) return this.inner.read(buf, offset);
    const hits = this.match('read', offset, buf.length);
    await this.pause(hits);
    const f = FaultBacking.failing(hits);
    if (f) throw this.injected(f, 'read', offset, buf.length);
    await this.inner.read(buf, offset);
    this.flip(hits, buf, offset);
  }

  override async write(buf: Buffer, offset: number): Promise<void> {
    if (this.faults.length === 0) return this.inner.write(buf, offset);
    const hits = this.match('write', offset, buf.length);
    await this.pause(hits);
    const f = FaultBacking.failing(hits);
    if (f?.kind === 'torn') {
      const part = FaultBacking.tornPrefix(f, buf, offset);
      if (part.length > 0) await this.inner.write(part, offset);
      this.tornEnd(f, offset, buf.length);
    }
    if (f) throw this.injected(f, 'write', offset, buf.length);
    if (hits.some((h) => h.kind === 'drop')) return;
    await this.inner.write(buf, offset);
  }

  override async flush(): Promise<void> {
    if (this.faults.length === 0) return this.inner.flush();
    const hits = this.match('flush', 0, 0);
    await this.pause(hits);
    const f = FaultBacking.failing(hits);
    if (f) throw this.injected(f, 'flush', 0, 0);
    if (hits.some((h) => h.kind === 'drop')) return;
    await this.inner.flush();
  }

  /** Nothing while faults are set: every byte of I/O should meet them as the user set them. */
  override async preallocate(offset: number, length: number): Promise<void> {
    if (this.faults.length === 0) await super.preallocate(offset, length);
  }

  /** While faults are set, reads may not return what the file holds: nothing is known. */
  override dataFrom(offset: number): number {
    return this.faults.length === 0 ? super.dataFrom(offset) : offset;
  }

  override async punchHole(offset: number, length: number): Promise<void> {
    if (this.faults.length === 0) return this.inner.punchHole(offset, length);
    const hits = this.match('write', offset, length);
    await this.pause(hits);
    const f = FaultBacking.failing(hits);
    if (f) throw this.injected(f, 'punch hole in', offset, length);
    if (hits.some((h) => h.kind === 'drop')) return;
    await this.inner.punchHole(offset, length);
  }

  override async copyWithin(from: number, to: number, length: number): Promise<void> {
    if (this.faults.length === 0 || (this.match('read', from, length).length === 0 && this.match('write', to, length).length === 0)) {
      return this.inner.copyWithin(from, to, length);
    }
    const chunk = Buffer.allocUnsafe(Math.min(IO_CHUNK, length));
    for (let done = 0; done < length; done += chunk.length) {
      const part = chunk.subarray(0, Math.min(chunk.length, length - done));
      await this.read(part, from + done);
      await this.write(part, to + done);
    }
  }

  //----------------------------------------------------------------------------
  // synchronous requests (metadata)

  override readSync(buf: Buffer, offset: number): void {
    if (this.faults.length === 0) return this.inner.readSync(buf, offset);
    const hits = this.match('read', offset, buf.length);
    const ms = FaultBacking.delayOf(hits);
    if (ms > 0) sleepSync(ms);
    const f = FaultBacking.failing(hits);
    if (f) throw this.injected(f, 'read', offset, buf.length);
    this.inner.readSync(buf, offset);
    this.flip(hits, buf, offset);
  }

  override writeSync(buf: Buffer, offset: number): void {
    if (this.faults.length === 0) return this.inner.writeSync(buf, offset);
    const hits = this.match('write', offset, buf.length);
    const ms = FaultBacking.delayOf(hits);
    if (ms > 0) sleepSync(ms);
    const f = FaultBacking.failing(hits);
    if (f?.kind === 'torn') {
      const part = FaultBacking.tornPrefix(f, buf, offset);
      if (part.length > 0) this.inner.writeSync(part, offset);
      this.tornEnd(f, offset, buf.length);
    }
    if (f) throw this.injected(f, 'write', offset, buf.length);
    if (hits.some((h) => h.kind === 'drop')) return;
    this.inner.writeSync(buf, offset);
  }

  override flushSync(): void {
    if (this.faults.length === 0) return this.inner.flushSync();
    const hits = this.match('flush', 0, 0);
    const ms = FaultBacking.delayOf(hits);
    if (ms > 0) sleepSync(ms);
    const f = FaultBacking.failing(hits);
    if (f) throw this.injected(f, 'flush', 0, 0);
    if (hits.some((h) => h.kind === 'drop')) return;
    this.inner.flushSync();
  }
}
