// The fault matrix's "under fio load through FUSE" context (issue 5, item 3):
// each cell of test/_helpers/fault-matrix.ts again, seen from outside. A real
// `thinfuse serve`, a thin device on a loop device, fio running against the
// loop device, the fault set with `thinfuse fault POOL set` (through the
// control socket), and the table's reaction as a user sees it: fio's errors
// (first errno, count), `thinfuse status --json` (mode, needs_check), probes
// with dd / fsync on the loop device, the daemon alive throughout. Then
// `fault clear`, detach, stop serve, and the reopened pool: thin_check and
// `thinfuse check` pass (or, for dropped metadata writes, check finds the
// damage), and data fsynced before the fault reads back intact.
//
// Layout of the device `vol` (64 KiB blocks):
//   A [0, 4M)     committed before the fault (fsynced, sha256 known); no fault covers it
//   T [4M, 5M)    committed too; the target of the probes (data faults cover it)
//   L [8M, 24M)   provisioned before the fault; fio's randrw job (data faults cover it)
//   U [24M, 88M)  unprovisioned; fio's randwrite job allocates here (100 writes/s, so it
//                 still allocates when the fault is set), fsync every 16 writes
//   N [88M, 89M)  unprovisioned; probes that need a metadata change write here
// Data faults target vol's sectors of T through L (device sectors, so POOL/data
// byte ranges); metadata faults target POOL/metadata, all but the superblock
// unless the cell says otherwise.
//
// Uses test/_helpers/serve.ts's E2E (e2e lock, cleanup stack, pids). Throws
// (node:assert) rather than asserting through ava, so scripts/fault-matrix.ts
// can run it too.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import type { DevId } from '../../src/base/units.js';
import { FileBacking } from '../../src/io/file-backing.js';
import { PoolMetadata } from '../../src/pool/pool-metadata.js';
import { pattern } from './model.js';
import { E2E, ENV, MiB, run, type Serve, sleep, tf, tfBuf, tfJson, tfOk } from './serve.js';

const KiB = 1024;
const A: [number, number] = [0, 4 * MiB];
const T: [number, number] = [4 * MiB, 5 * MiB];
const L: [number, number] = [8 * MiB, 24 * MiB];
const U: [number, number] = [24 * MiB, 88 * MiB];
const N = 88 * MiB;
const VOL_SIZE = 96 * MiB;
const DELAY_MS = 40;
const TORN_SECTORS = 3;
const EIO = 5;
const ENOSPC = 28;

type Mode = 'rw' | 'ro-needs-check' | 'fail' | 'out-of-data-space';

/** What one probe (dd or fsync on the loop device) saw. */
interface Probe {
  errno?: string;
  data?: Buffer;
  ms: number;
}

/** One running case: the e2e world, the serve, the loop device. */
export interface World {
  env: E2E;
  serve: Serve;
  dev: string;
  notes: string[];
}

export interface FuseCell {
  /** As in test/_helpers/fault-matrix.ts's CELLS. */
  name: string;
  /** Arguments after `thinfuse fault POOL set` (given the running case: file sizes, block numbers). */
  fault(w: World): string[] | Promise<string[]>;
  /** fio's jobs: both (randrw on L, allocating randwrite on U), or only randrw on L (no metadata changes). */
  jobs?: 'both' | 'rw';
  errorIfNoSpace?: boolean;
  /** fio: errors (first errno one of these) or none. */
  fio: { errnos: number[] } | 'clean' | 'any';
  /** Pool modes acceptable once fio is done, fault still set. */
  modes: Mode[];
  /** While the fault is set (fio running): probes and their checks. */
  probe?(w: World): Promise<void> | void;
  /** Clear the fault while fio runs (queue_if_no_space), after this long. */
  clearAfterMs?: number;
  /** With the fault cleared, serve still running. */
  afterClear?(w: World): Promise<void> | void;
  /** `thinfuse check` must find damage after the reopen (dropped metadata writes). */
  checkFinds?: boolean;
  /** T's contents after the reopen. */
  target?: 'old' | 'new' | 'torn';
}

//------------------------------------------------------------------------------
// data

const DATA_A = pattern(11, A[1] - A[0]);
const OLD_T = pattern(12, T[1] - T[0]);
const NEW_T = pattern(13, 64 * KiB);
const FILL_L = pattern(14, L[1] - L[0]);

const sha = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');

/** T's first block as a reader sees it through a bit-flip fault on bit 3. */
function flipped(b: Buffer): Buffer {
  const out = Buffer.from(b);
  for (let s = 0; s < out.length; s += 512) out[s]! ^= 1 << 3;
  return out;
}

/** Writes bytes at offset of the (block) device and fsyncs it. */
function writeSynced(dev: string, data: Buffer, offset: number): void {
  const fd = fs.openSync(dev, 'r+');
  try {
    fs.writeSync(fd, data, 0, data.length, offset);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

const ERRNO_TEXT: Array<[RegExp, string]> = [
  [/Input\/output error/, 'EIO'],
  [/No space left on device/, 'ENOSPC'],
  [/Read-only file system/, 'EROFS'],
];

function ddErrno(stderr: string): string {
  for (const [re, name] of ERRNO_TEXT) if (re.test(stderr)) return name;
  return `dd: ${stderr.trim().split('\n').pop()}`;
}

/** O_DIRECT read of [offset, offset+len) of the device (64 KiB units). */
function probeRead(dev: string, offset: number, len: number): Probe {
  const start = Date.now();
  const args = [`if=${dev}`, 'bs=64K', `skip=${offset / (64 * KiB)}`, `count=${len / (64 * KiB)}`, 'iflag=direct', 'status=none'];
  const r = spawnSync('dd', args, { env: ENV, timeout: 60_000, maxBuffer: 64 * MiB });
  const ms = Date.now() - start;
  return r.status === 0 ? { data: r.stdout, ms } : { errno: ddErrno(r.stderr?.toString() ?? String(r.error)), ms };
}

/** O_DIRECT write of data at offset (64 KiB units), then fsync. */
function probeWrite(dev: string, data: Buffer, offset: number): Probe {
  const start = Date.now();
  const r = run('dd', [`of=${dev}`, 'bs=64K', `seek=${offset / (64 * KiB)}`, 'oflag=direct', 'conv=notrunc,fsync', 'status=none'], { input: data, timeoutMs: 60_000 });
  return r.status === 0 ? { ms: Date.now() - start } : { errno: ddErrno(r.stderr), ms: Date.now() - start };
}

/** fsync of the loop device: a FLUSH down to the pool. */
function probeFsync(dev: string): Probe {
  const start = Date.now();
  const fd = fs.openSync(dev, 'r+');
  try {
    fs.fsyncSync(fd);
    return { ms: Date.now() - start };
  } catch (e) {
    return { errno: (e as NodeJS.ErrnoException).code ?? String(e), ms: Date.now() - start };
  } finally {
    fs.closeSync(fd);
  }
}

function mustFail(p: Probe, what: string, ...errnos: string[]): void {
  assert.ok(p.errno !== undefined, `${what} succeeded; it should have failed with ${errnos.join(' or ')}`);
  assert.ok(errnos.includes(p.errno), `${what} failed with ${p.errno}, expected ${errnos.join(' or ')}`);
}

function mustSucceed(p: Probe, what: string): void {
  assert.equal(p.errno, undefined, `${what} failed with ${p.errno}`);
}

//------------------------------------------------------------------------------
// the pool as `thinfuse status --json` shows it

interface Status {
  mode: 'rw' | 'ro' | 'out_of_data_space' | 'fail';
  needsCheck: boolean;
}

function status(w: World): Status {
  return tfJson<Status>(['status', w.env.pool]);
}

function modeOf(s: Status): Mode {
  if (s.mode === 'fail') return 'fail';
  if (s.mode === 'ro') return s.needsCheck ? 'ro-needs-check' : 'rw';
  return s.mode === 'out_of_data_space' ? 'out-of-data-space' : 'rw';
}

function mustBeMode(w: World, ...want: Mode[]): void {
  const s = status(w);
  assert.ok(want.includes(modeOf(s)), `pool mode ${s.mode}${s.needsCheck ? ' (needs_check)' : ''}, expected ${want.join(' or ')}`);
}

//------------------------------------------------------------------------------
// the cells

const dataSectors = ['--device', 'vol', '--sectors', `${T[0] / 512}-${L[1] / 512 - 1}`];
const metaAllButSuper = (w: World) => ['--file', 'metadata', '--bytes', `4096-${fs.statSync(path.join(w.env.pool, 'metadata')).size - 1}`];
const EIO_ONLY = { errnos: [EIO] };

/**
 * The root of vol's mapping subtree in POOL/metadata, read from the committed
 * metadata on disk: lookups read it; an abort (which reloads the committed
 * state) does not. It stays put while nothing changes vol's mappings, so
 * these cells run fio's randrw job only. A read fault over the whole file
 * would fail the abort's reload as well: fail mode, as dm-thin does then.
 */
async function volSubtreeRoot(w: World): Promise<string[]> {
  const devId = tfJson<{ devices: Array<{ name: string; devId: number }> }>(['status', w.env.pool]).devices.find((d) => d.name === 'vol')!.devId;
  const file = FileBacking.open(path.join(w.env.pool, 'metadata'), false);
  try {
    const b = PoolMetadata.open(file).subtreeRoot(devId as DevId);
    return ['--file', 'metadata', '--bytes', `${b * 4096}+4096`];
  } finally {
    await file.close();
  }
}

/** A metadata change (a new block of vol) and its commit, through the loop device. */
const metaChange = (w: World) => probeWrite(w.dev, NEW_T, N);

export const FUSE_CELLS: FuseCell[] = [
  // data file
  {
    name: 'data/error/read', fault: () => ['error', '--ops', 'read', ...dataSectors], fio: EIO_ONLY, modes: ['rw'], target: 'old',
    probe: (w) => mustFail(probeRead(w.dev, T[0], 64 * KiB), 'an O_DIRECT read of T', 'EIO'),
    afterClear: (w) => {
      const p = probeRead(w.dev, T[0], 64 * KiB);
      mustSucceed(p, 'reading T after the clear');
      assert.ok(p.data!.equals(OLD_T.subarray(0, 64 * KiB)), 'T reads back after the clear');
    },
  },
  {
    name: 'data/error/write', fault: () => ['error', '--ops', 'write', ...dataSectors], fio: EIO_ONLY, modes: ['rw'], target: 'old',
    probe: (w) => mustFail(probeWrite(w.dev, NEW_T, T[0]), 'an O_DIRECT write to T', 'EIO'),
  },
  {
    name: 'data/error/flush', fault: () => ['error', '--ops', 'flush', '--file', 'data'], fio: EIO_ONLY, modes: ['ro-needs-check'],
    probe: (w) => mustFail(probeFsync(w.dev), 'fsync of the loop device', 'EIO'),
    // Sticky: every later flush fails until the pool is reopened.
    afterClear: (w) => mustFail(probeFsync(w.dev), 'fsync after the clear (sticky)', 'EIO'),
  },
  {
    name: 'data/nospace/write (error_if_no_space)', errorIfNoSpace: true, fault: () => ['nospace', '--ops', 'write', ...dataSectors],
    fio: { errnos: [ENOSPC] }, modes: ['out-of-data-space', 'rw'], target: 'old',
    probe: (w) => mustFail(probeWrite(w.dev, NEW_T, T[0]), 'an O_DIRECT write to T', 'ENOSPC'),
    afterClear: (w) => {
      mustSucceed(probeWrite(w.dev, NEW_T, T[0]), 'a write to T after the clear');
      mustBeMode(w, 'rw');
      mustSucceed(probeWrite(w.dev, OLD_T.subarray(0, 64 * KiB), T[0]), 'writing T back');
    },
  },
  {
    // The writes wait (queue_if_no_space); the fault is cleared 2 s later and they go through.
    name: 'data/nospace/write (queue_if_no_space)', fault: () => ['nospace', '--ops', 'write', ...dataSectors],
    fio: 'clean', modes: ['rw'], target: 'old', clearAfterMs: 2_000,
  },
  {
    name: 'data/nospace/flush', fault: () => ['nospace', '--ops', 'flush', '--file', 'data'], fio: { errnos: [EIO, ENOSPC] }, modes: ['ro-needs-check'],
    probe: (w) => mustFail(probeFsync(w.dev), 'fsync of the loop device', 'EIO', 'ENOSPC'),
    afterClear: (w) => mustFail(probeFsync(w.dev), 'fsync after the clear (sticky)', 'EIO', 'ENOSPC'),
  },
  {
    // Silent by design; the damage: T does not hold what was written and fsynced.
    name: 'data/drop/write', fault: () => ['drop', '--ops', 'write', ...dataSectors], fio: 'clean', modes: ['rw'], target: 'old',
    probe: (w) => mustSucceed(probeWrite(w.dev, NEW_T, T[0]), 'a dropped write + fsync'),
  },
  {
    name: 'data/drop/flush', fault: () => ['drop', '--ops', 'flush', '--file', 'data'], fio: 'clean', modes: ['rw'], target: 'new',
    probe: (w) => mustSucceed(probeWrite(w.dev, NEW_T, T[0]), 'a write + dropped flush'),
  },
  {
    name: 'data/delay/read', fault: () => ['delay', '--delay', String(DELAY_MS), '--ops', 'read', ...dataSectors], fio: 'clean', modes: ['rw'], target: 'old',
    probe: (w) => {
      const p = probeRead(w.dev, T[0], 64 * KiB);
      mustSucceed(p, 'a delayed read');
      assert.ok(p.ms >= DELAY_MS, `a delayed read took ${p.ms} ms, less than ${DELAY_MS}`);
      assert.ok(p.data!.equals(OLD_T.subarray(0, 64 * KiB)), 'a delayed read returns the right bytes');
    },
  },
  ...(['write', 'flush'] as const).map((op) => ({
    name: `data/delay/${op}`, fault: () => ['delay', '--delay', String(DELAY_MS), '--ops', op, ...(op === 'flush' ? ['--file', 'data'] : dataSectors)],
    fio: 'clean' as const, modes: ['rw' as const], target: 'new' as const,
    probe: (w: World) => {
      const p = probeWrite(w.dev, NEW_T, T[0]);
      mustSucceed(p, `a delayed ${op}`);
      assert.ok(p.ms >= DELAY_MS, `a write + fsync under a ${op} delay took ${p.ms} ms, less than ${DELAY_MS}`);
    },
  })),
  {
    // dm-thin has no data checksums: wrong bytes reach the reader.
    name: 'data/bitflip/read', fault: () => ['bitflip', '--bit', '3', ...dataSectors], fio: 'clean', modes: ['rw'], target: 'old',
    probe: (w) => {
      const p = probeRead(w.dev, T[0], 64 * KiB);
      mustSucceed(p, 'a read under bit flips');
      assert.ok(p.data!.equals(flipped(OLD_T.subarray(0, 64 * KiB))), 'the reader gets T with bit 3 of every sector\'s first byte flipped');
    },
    afterClear: (w) => {
      const p = probeRead(w.dev, T[0], 64 * KiB);
      assert.ok(p.data?.equals(OLD_T.subarray(0, 64 * KiB)), 'after the clear no cache keeps the flipped bytes');
    },
  },
  {
    name: 'data/torn/write', fault: () => ['torn', '--keep-sectors', String(TORN_SECTORS), ...dataSectors], fio: EIO_ONLY, modes: ['rw'], target: 'torn',
    probe: (w) => mustFail(probeWrite(w.dev, NEW_T, T[0]), 'a torn write to T', 'EIO'),
  },

  // metadata file
  {
    name: 'metadata/error/read', fault: async (w) => ['error', '--ops', 'read', ...await volSubtreeRoot(w)], jobs: 'rw', fio: EIO_ONLY, modes: ['ro-needs-check'],
    probe: (w) => mustFail(probeRead(w.dev, T[0], 64 * KiB), 'an O_DIRECT read of T', 'EIO', 'EROFS'),
  },
  {
    // Nothing readable but the superblock: the abort's reload fails too.
    name: 'metadata/error/read, whole file', fault: (w) => ['error', '--ops', 'read', ...metaAllButSuper(w)], fio: EIO_ONLY, modes: ['fail'],
  },
  {
    name: 'metadata/error/write', fault: (w) => ['error', '--ops', 'write', ...metaAllButSuper(w)], fio: EIO_ONLY, modes: ['ro-needs-check'],
    probe: (w) => mustFail(metaChange(w), 'a write needing a new block + fsync', 'EIO'),
  },
  {
    name: 'metadata/error/write incl. superblock', fault: () => ['error', '--ops', 'write', '--file', 'metadata'], fio: EIO_ONLY, modes: ['fail'],
    probe: (w) => mustFail(metaChange(w), 'a write needing a new block + fsync', 'EIO'),
  },
  {
    name: 'metadata/error/flush', fault: () => ['error', '--ops', 'flush', '--file', 'metadata'], fio: EIO_ONLY, modes: ['fail'],
    probe: (w) => mustFail(metaChange(w), 'a write needing a new block + fsync', 'EIO'),
  },
  {
    name: 'metadata/nospace/write', fault: (w) => ['nospace', '--ops', 'write', ...metaAllButSuper(w)], fio: { errnos: [EIO, ENOSPC] }, modes: ['ro-needs-check'],
    probe: (w) => mustFail(metaChange(w), 'a write needing a new block + fsync', 'EIO', 'ENOSPC'),
  },
  {
    // Silent, unless something reads back a block whose write was dropped.
    // The probe makes sure a commit ran under the fault.
    name: 'metadata/drop/write', fault: (w) => ['drop', '--ops', 'write', ...metaAllButSuper(w)], fio: 'any', modes: ['rw', 'ro-needs-check'], checkFinds: true,
    probe: (w) => void metaChange(w),
  },
  ...(['read', 'write', 'flush'] as const).map((op) => ({
    name: `metadata/delay/${op}`, fault: () => ['delay', '--delay', String(DELAY_MS), '--ops', op, '--file', 'metadata'],
    fio: 'clean' as const, modes: ['rw' as const],
    // A commit writes and flushes metadata; reads may all hit the cache.
    probe: op === 'read' ? undefined : (w: World) => {
      const p = metaChange(w);
      mustSucceed(p, `a write needing a new block + fsync under a metadata ${op} delay`);
      assert.ok(p.ms >= DELAY_MS, `it took ${p.ms} ms, less than the ${DELAY_MS} ms delay`);
    },
  })),
  {
    // A checksum failure: as EIO on read.
    name: 'metadata/bitflip/read', fault: async (w) => ['bitflip', ...await volSubtreeRoot(w)], jobs: 'rw', fio: EIO_ONLY, modes: ['ro-needs-check'],
  },
  {
    name: 'metadata/torn/write', fault: (w) => ['torn', '--keep-sectors', '1', ...metaAllButSuper(w)], fio: EIO_ONLY, modes: ['ro-needs-check'],
    probe: (w) => mustFail(metaChange(w), 'a write needing a new block + fsync', 'EIO'),
  },
];

//------------------------------------------------------------------------------
// fio

interface FioJob {
  jobname: string;
  error: number;
  total_err?: number;
  first_error?: number;
  read: { io_bytes: number; clat_ns: { max: number } };
  write: { io_bytes: number; clat_ns: { max: number } };
}

export interface FioResult {
  /** Per job: name, MiB moved, errors. */
  jobs: string;
  errors: number;
  firstErrno: number;
  mib: number;
  maxLatMs: number;
}

const FIO_RUNTIME_S = 5;

function fioArgs(dev: string, out: string, jobs: 'both' | 'rw'): string[] {
  return [
    '--output-format=json', `--output=${out}`, `--filename=${dev}`, '--direct=1', '--ioengine=psync', '--bs=4k',
    '--continue_on_error=all', '--time_based', `--runtime=${FIO_RUNTIME_S}`, '--randseed=5',
    '--name=rw', '--rw=randrw', `--offset=${L[0]}`, `--size=${L[1] - L[0]}`,
    ...(jobs === 'both' ? ['--name=alloc', '--rw=randwrite', `--offset=${U[0]}`, `--size=${U[1] - U[0]}`, '--fsync=16', '--rate_iops=100'] : []),
  ];
}

function fioResult(file: string, log: string): FioResult {
  let jobs: FioJob[];
  try {
    jobs = (JSON.parse(fs.readFileSync(file, 'utf8')) as { jobs: FioJob[] }).jobs;
  } catch (e) {
    throw new Error(`no fio JSON in ${file} (${(e as Error).message}): ${log.trim().slice(0, 500)}`);
  }
  let errors = 0;
  let firstErrno = 0;
  let bytes = 0;
  let maxLat = 0;
  const each: string[] = [];
  for (const j of jobs) {
    each.push(`${j.jobname} ${((j.read.io_bytes + j.write.io_bytes) / MiB).toFixed(0)} MiB/${j.total_err ?? 0} err`);
    errors += j.total_err ?? 0;
    firstErrno ||= j.first_error ?? j.error ?? 0;
    bytes += j.read.io_bytes + j.write.io_bytes;
    maxLat = Math.max(maxLat, j.read.clat_ns.max, j.write.clat_ns.max);
  }
  return { jobs: each.join(', '), errors, firstErrno, mib: bytes / MiB, maxLatMs: maxLat / 1e6 };
}

function checkFio(cell: FuseCell, f: FioResult): void {
  if (cell.fio === 'any') return;
  if (cell.fio === 'clean') {
    assert.equal(f.errors, 0, `fio saw ${f.errors} errors (first errno ${f.firstErrno}); the load should run clean`);
    return;
  }
  assert.ok(f.errors > 0, 'fio saw no errors; the fault should have failed some of its requests');
  assert.ok(cell.fio.errnos.includes(f.firstErrno), `fio's first error was errno ${f.firstErrno}, expected ${cell.fio.errnos.join(' or ')}`);
}

//------------------------------------------------------------------------------
// running one case

async function setup(env: E2E, cell: FuseCell): Promise<World> {
  tfOk(['pool', 'create', env.pool, '--data-size', '256M', '--metadata-size', '16M', ...(cell.errorIfNoSpace ? ['--error-if-no-space'] : [])]);
  tfOk(['create', env.pool, 'vol', '--size', String(VOL_SIZE)]);
  const serve = await env.serve();
  const dev = env.attach('vol');
  const w: World = { env, serve, dev, notes: [] };
  writeSynced(dev, DATA_A, A[0]);
  writeSynced(dev, OLD_T, T[0]);
  writeSynced(dev, FILL_L, L[0]);
  return w;
}

function alive(w: World, when: string): void {
  assert.equal(w.serve.exited, undefined, `serve exited ${JSON.stringify(w.serve.exited)} ${when}: ${w.serve.log().trim().split('\n').slice(-5).join(' | ')}`);
}

/** fio under the fault: start, set the fault, probe, wait for fio. */
async function underLoad(w: World, cell: FuseCell): Promise<FioResult> {
  const out = w.env.path('fio.json');
  const args = await cell.fault(w);
  const fio = w.env.spawn('fio', fioArgs(w.dev, out, cell.jobs ?? 'both'), 'fio');
  await sleep(1_000);
  assert.equal(fio.exited, undefined, `fio ended before the fault was set: ${fio.log()}`);
  const f = tfJson<{ id: number }>(['fault', w.env.pool, 'set', ...args]);
  w.notes.push(`fault ${f.id} set`);
  await sleep(300);
  if (cell.clearAfterMs !== undefined) {
    await sleep(cell.clearAfterMs);
    mustBeMode(w, 'out-of-data-space');
    tfOk(['fault', w.env.pool, 'clear']);
  } else {
    await cell.probe?.(w);
  }
  const exit = await fio.waitExit((FIO_RUNTIME_S + 60) * 1000);
  assert.ok(exit, 'fio still running 60 s after its runtime');
  const r = fioResult(out, fio.log());
  w.notes.push(`fio ${r.mib.toFixed(0)} MiB (${r.jobs}), ${r.errors} errors${r.firstErrno ? ` (first errno ${r.firstErrno})` : ''}, max lat ${r.maxLatMs.toFixed(0)} ms`);
  return r;
}

/** After stopping serve: the pool reopened by the CLI and thin_check. */
function verify(w: World, cell: FuseCell): string {
  const P = w.env.pool;
  const ck = tf(['check', P]);
  if (cell.checkFinds) {
    const tc = run('thin_check', [path.join(P, 'metadata')]);
    w.notes.push(`thin_check exit ${tc.status}`);
    if (ck.status !== 0) return `check finds (error): ${(ck.stderr || ck.stdout).trim().split('\n')[0]}`;
    // A dropped write can leave a block's older, checksum-valid contents at
    // a reused location: a stale but well-formed tree, whose only trace is
    // the space map root's count against its bitmaps (a warning).
    const warnings = tfJson<{ nonFatal: string[] }>(['check', P]).nonFatal;
    assert.ok(warnings.length > 0, `thinfuse check must find the damage dropped metadata writes left: ${ck.stdout.trim().slice(0, 300)}`);
    return `check finds (warning only, exit 0): ${warnings[0]}`;
  }
  assert.equal(ck.status, 0, `thinfuse check: ${ck.stdout}${ck.stderr}`);
  const tc = run('thin_check', [path.join(P, 'metadata')]);
  assert.equal(tc.status, 0, `thin_check: ${tc.stdout}${tc.stderr}`);
  const a = tfBuf(['read', P, 'vol', '--offset', String(A[0]), '--length', String(A[1] - A[0])]);
  assert.equal(sha(a), sha(DATA_A), 'A (fsynced before the fault) reads back intact');
  const t = tfBuf(['read', P, 'vol', '--offset', String(T[0]), '--length', String(T[1] - T[0])]);
  assert.ok(t.subarray(64 * KiB).equals(OLD_T.subarray(64 * KiB)), 'T past its first block (fsynced before the fault, untouched) reads back intact');
  const t0 = t.subarray(0, 64 * KiB);
  if (cell.target === 'old') assert.ok(t0.equals(OLD_T.subarray(0, 64 * KiB)), 'T\'s first block holds its committed contents');
  if (cell.target === 'new') assert.ok(t0.equals(NEW_T), 'T\'s first block holds the fsynced write');
  if (cell.target === 'torn') {
    const cut = TORN_SECTORS * 512;
    assert.ok(t0.subarray(0, cut).equals(NEW_T.subarray(0, cut)), 'T starts with the torn write\'s first sectors');
    assert.ok(t0.subarray(cut, 4 * KiB).equals(OLD_T.subarray(cut, 4 * KiB)), 'then T holds its old contents');
  }
  const s = tfJson<Status>(['status', P]);
  return `reopened ${s.mode}${s.needsCheck ? ' needs_check' : ''}, check + thin_check clean, data intact`;
}

export interface FuseCaseResult {
  cell: string;
  reaction: string;
  detail: string;
  ms: number;
}

/**
 * Runs one cell in the E2E world `env` (a fresh one per case). Throws on a
 * wrong reaction; the E2E stack cleans up either way.
 */
export async function runFuseCase(env: E2E, cell: FuseCell): Promise<FuseCaseResult> {
  const start = Date.now();
  const w = await setup(env, cell);
  try {
    return await reactAndVerify(w, cell, start);
  } catch (e) {
    // What was seen before the failure, for the report.
    if (e instanceof Error) e.message = `${e.message.split('\n')[0]} [${w.notes.join('; ')}]`;
    throw e;
  }
}

async function reactAndVerify(w: World, cell: FuseCell, start: number): Promise<FuseCaseResult> {
  const env = w.env;
  const fio = await underLoad(w, cell);
  alive(w, 'under the fault');
  const s = status(w);
  const reaction = `fio ${fio.errors ? `errno ${fio.firstErrno} x${fio.errors}` : 'clean'}, ${s.mode}${s.needsCheck ? ' needs_check' : ''}`;
  w.notes.push(`seen: ${reaction}`);
  checkFio(cell, fio);
  mustBeMode(w, ...cell.modes);
  tfOk(['fault', env.pool, 'clear']);
  await cell.afterClear?.(w);
  alive(w, 'after the clear');
  await env.detach('vol');
  const exit = await w.serve.stop();
  assert.deepEqual(exit, { code: 0, signal: null }, `serve's exit: ${w.serve.log().trim().split('\n').slice(-5).join(' | ')}`);
  const after = verify(w, cell);
  return { cell: cell.name, reaction, detail: [...w.notes, after].join('; '), ms: Date.now() - start };
}

/**
 * The same outside ava (scripts/fault-matrix.ts): a stand-in for ava's
 * context gives E2E its teardown, so the e2e lock, the cleanup stack (detach
 * our loop devices, stop our serve and fio by pid, unmount non-lazily) and
 * the leftover check run as in a test, on success and on failure. Never
 * throws: a failure, or leftovers, are in the result.
 */
export async function runFuseCaseOutsideAva(cell: FuseCell, log: (s: string) => void): Promise<FuseCaseResult & { ok: boolean }> {
  const teardowns: Array<() => void> = [];
  const t = { log: (...a: unknown[]) => log(a.join(' ')), teardown: (fn: () => void) => void teardowns.push(fn) } as unknown as ExecutionContext;
  const start = Date.now();
  let result: FuseCaseResult & { ok: boolean };
  try {
    const env = await E2E.start(t, 'thinfuse-faultmatrix-');
    result = { ...(await runFuseCase(env, cell)), ok: true };
  } catch (e) {
    result = { cell: cell.name, reaction: '', detail: (e as Error).message.split('\n')[0]!, ms: Date.now() - start, ok: false };
  }
  // ava runs teardowns last registered first.
  for (const fn of teardowns.reverse()) {
    try {
      fn();
    } catch (e) {
      result = { ...result, ok: false, detail: `${result.detail}; cleanup: ${(e as Error).message.replace(/\n/g, '; ')}` };
    }
  }
  return result;
}
