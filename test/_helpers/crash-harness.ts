// The crash-replay harness: runs random workloads on recorded pools
// (crash-workload.ts), walks each log with the replayer
// (src/io/crash-states.ts), builds crash states at every flush point and at
// sampled points between, reopens each distinct one with Pool.open on
// in-memory images, and checks the invariants against the oracle
// (crash-oracle.ts). See RELIABILITY.md for what each invariant means.

import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { DevId } from '../../src/base/units.js';
import type { BackingFile } from '../../src/io/backing-file.js';
import {
  type CrashState, CrashReplayer, type Pending, persistAll, persistNone, persistRandom, type Selection,
} from '../../src/io/crash-states.js';
import type { ContentEntry, IoLog } from '../../src/io/io-log.js';
import { MemoryPoolFiles } from '../../src/io/pool-files.js';
import type { Canary } from '../../src/pool/canary.js';
import { checkMetadata } from '../../src/pool/check.js';
import { Pool } from '../../src/pool/pool.js';
import { type Mark, type MgmtOp, Oracle, sameState } from './crash-oracle.js';
import { mgmtState, runWorkload } from './crash-workload.js';
import { findTool } from './tools.js';
import { Rng } from './xml-gen.js';

export type Invariant =
  | 'check'          // checkMetadata: no fatal error
  | 'check-strict'   // checkMetadata: no leaks or other non-fatal findings either
  | 'thin_check'     // thin_check 0.9.0 exits 0
  | 'open'           // Pool.open succeeds
  | 'read'           // every device of the reopened pool reads without error
  | 'atomic'         // management state is the one before or after the running operation
  | 'lost-ack'       // a sector lost an acknowledged write
  | 'neither-old-nor-new' // a sector reads something never written to it
  | 'recover';       // the reopened pool takes a write and a commit and still checks clean

/**
 * Operations the regular runs leave out until the two engine bugs this
 * harness found are fixed (RELIABILITY.md, "Engine bugs found"): growing the
 * pool's data or metadata file is not crash-safe today. The `test.failing`
 * cases in test/crash-replay.test.ts reproduce both; when they start to pass,
 * empty this list and drop `.failing`.
 */
export const KNOWN_BUG_SKIPS: ReadonlyArray<MgmtOp['kind']> = [];

export interface Violation {
  invariant: Invariant;
  seed: number;
  /** Log position: the crash happened just before entries[position]. */
  position: number;
  variant: string;
  detail: string;
}

export interface ReplayOptions {
  /** First workload seed; workloads use seed, seed+1, ... */
  seed: number;
  /** Stop after this many distinct states. */
  states: number;
  /** Workload length in operations. */
  steps?: number;
  /** Distinct states per workload at most (spreads states over workloads). */
  perWorkload?: number;
  canary?: Canary;
  /** Run thin_check on every n-th distinct state (0: never). */
  thinCheckEvery?: number;
  /** Try a write and commit on every n-th reopened pool (0: never). */
  recoverEvery?: number;
  /** Stop at the first n violations. */
  stopAfter?: number;
  /** Management operations the workloads leave out. */
  skip?: ReadonlyArray<MgmtOp['kind']>;
  /** Where to keep the files of the first violating state (for a post-mortem). */
  dumpDir?: string;
  progress?: (r: ReplayReport) => void;
}

export interface ReplayReport {
  workloads: number;
  logEntries: number;
  crashPoints: number;
  /** States built, duplicates included. */
  built: number;
  distinct: number;
  checked: number;
  thinChecks: number;
  recoveries: number;
  byVariant: Record<string, number>;
  violations: Violation[];
  violationsByInvariant: Record<string, number>;
  workloadMs: number;
  replayMs: number;
  ops: Record<string, number>;
}

/** A place with empty `metadata` and `data` files: Pool.open wants them, the wrap swaps in the crash state. */
export function makeCheckDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'thinfuse-crash-'));
  writeFileSync(join(dir, 'metadata'), '');
  writeFileSync(join(dir, 'data'), '');
  return dir;
}

function isSuperblockWrite(e: ContentEntry, metaFile: number): boolean {
  return e.file === metaFile && e.op === 'write' && e.offset === 0;
}

/** The selections tried at one crash point. */
function selections(p: Pending, rng: Rng, barrier: boolean, metaFile: number): Array<[string, Selection]> {
  const rand = () => rng.u32() / 2 ** 32;
  const total = [...p.files.values()].reduce((s, l) => s + l.length, 0) + p.dir.length;
  if (total === 0) return [['durable', persistNone()]];
  const out: Array<[string, Selection]> = [['durable', persistNone()], ['all', persistAll(p)]];
  const randoms = barrier ? 4 : 1;
  for (let i = 0; i < randoms; i++) {
    const keep = [0.25, 0.5, 0.75, 0.9][rng.int(4)]!;
    out.push(['random', persistRandom(p, rand, keep, 0.3)]);
  }
  // One operation left out while everything else reached the disk (ALICE's ordering states).
  const all = [...p.files.values()].flat();
  if (all.length > 1) {
    const skip = rng.int(all.length);
    out.push(['all-but-one', { ops: all.filter((_, i) => i !== skip).map((entry) => ({ entry })), dirOps: p.dir.length }]);
  }
  // The superblock reached the disk ahead of (some of) the blocks it points at.
  const sb = all.filter((e) => isSuperblockWrite(e, metaFile));
  if (sb.length > 0) {
    out.push(['superblock-only', { ops: sb.map((entry) => ({ entry })), dirOps: 0 }]);
    const r = persistRandom(p, rand, 0.5, 0.3);
    out.push(['superblock+random', { ops: [...r.ops.filter((o) => !isSuperblockWrite(o.entry, metaFile)), ...sb.map((entry) => ({ entry }))], dirOps: r.dirOps }]);
  }
  return out;
}

export async function runCrashReplay(o: ReplayOptions): Promise<ReplayReport> {
  const report: ReplayReport = {
    workloads: 0, logEntries: 0, crashPoints: 0, built: 0, distinct: 0, checked: 0, thinChecks: 0, recoveries: 0,
    byVariant: {}, violations: [], violationsByInvariant: {}, workloadMs: 0, replayMs: 0, ops: {},
  };
  const seen = new Set<string>();
  const checkDir = makeCheckDir();
  const thinCheck = o.thinCheckEvery ? findTool('thin_check') : undefined;
  if (o.thinCheckEvery && !thinCheck) throw new Error('thin_check not found: install thin-provisioning-tools');
  const perWorkload = o.perWorkload ?? 1500;
  let dumped = false;
  try {
    for (let seed = o.seed; report.distinct < o.states; seed++) {
      const t0 = performance.now();
      const wl = await runWorkload({ seed, steps: o.steps ?? 120, ...(o.canary ? { canary: o.canary } : {}), ...(o.skip ? { skip: o.skip } : {}) });
      const t1 = performance.now();
      report.workloadMs += t1 - t0;
      report.workloads++;
      report.logEntries += wl.log.entries.length;
      for (const [k, v] of Object.entries(wl.counts)) report.ops[k] = (report.ops[k] ?? 0) + v;
      const rng = new Rng(seed ^ 0x5bd1e995);
      const budget = Math.min(perWorkload, o.states - report.distinct);
      await replayOne(wl.log, seed, rng, budget, o, report, seen, checkDir, thinCheck, (state, v) => {
        if (!o.dumpDir || dumped) return;
        dumped = true;
        dumpState(state, o.dumpDir, v);
      });
      report.replayMs += performance.now() - t1;
      o.progress?.(report);
      if (o.stopAfter && report.violations.length >= o.stopAfter) break;
    }
  } finally {
    rmSync(checkDir, { recursive: true, force: true });
  }
  return report;
}

function dumpState(state: CrashState, dir: string, v: Violation): void {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  for (const name of state.names()) state.writeTo(name, join(dir, name));
  writeFileSync(join(dir, 'VIOLATION.json'), JSON.stringify(v, null, 2) + '\n');
}

async function replayOne(
  log: IoLog, seed: number, rng: Rng, budget: number, o: ReplayOptions, report: ReplayReport, seen: Set<string>,
  checkDir: string, thinCheck: string | undefined, onViolation: (s: CrashState, v: Violation) => void,
): Promise<void> {
  // The pool never reads the temporary files of writeFileAtomic: states that differ only in them count once.
  const replayer = new CrashReplayer(log, (name) => name.endsWith('.tmp'));
  const oracle = new Oracle();
  const metaFile = log.initial.find((f) => f.name === 'metadata')!.file;
  const entries = log.entries;
  // Crash points: next to every flush and directory fsync, and a sample of the rest.
  const barrier = (k: number) => {
    const before = entries[k - 1];
    const at = entries[k];
    return (before !== undefined && (before.op === 'flush' || before.op === 'fsyncDir')) || (at !== undefined && (at.op === 'flush' || at.op === 'fsyncDir'));
  };
  const target = report.distinct + budget;
  for (let k = 0; k <= entries.length && report.distinct < target; k++) {
    if (k > 0) {
      const e = replayer.next();
      if (e.op === 'mark') oracle.apply({ label: e.label, data: e.data } as Mark);
    }
    if (!oracle.ready) continue;
    const isBarrier = barrier(k);
    if (!isBarrier && !rng.chance(0.35)) continue;
    report.crashPoints++;
    for (const [variant, sel] of selections(replayer.pending(), rng, isBarrier, metaFile)) {
      const state = replayer.build(sel);
      report.built++;
      if (seen.has(state.hash)) continue;
      seen.add(state.hash);
      report.distinct++;
      report.byVariant[variant] = (report.byVariant[variant] ?? 0) + 1;
      const found0 = report.violations.length;
      await checkState(state, oracle, { seed, position: k, variant }, o, report, checkDir, thinCheck);
      if (report.violations.length > found0) {
        onViolation(state, report.violations[found0]!);
        if (o.stopAfter && report.violations.length >= o.stopAfter) return;
      }
      if (report.distinct >= target) break;
    }
  }
}

/**
 * Pool.open on a crash state: its data and metadata files and its small files
 * stay in memory; `dir` needs only empty `data` and `metadata` files (see
 * makeCheckDir) and takes the lock.
 */
export async function openCrashState(state: CrashState, dir: string): Promise<{ pool: Pool; metadata: BackingFile }> {
  const small = new MemoryPoolFiles(state.names().filter((n) => n !== 'data' && n !== 'metadata').map((n) => [n, state.text(n)!]));
  let metadata: BackingFile | undefined;
  const pool = await Pool.open(dir, {
    files: small,
    oneShot: true,
    cacheBlocks: 1024,
    wrap: (f, which) => {
      const b = state.backing(which, f.path, () => f.close());
      if (!b) throw new Error(`crash state has no ${which} file`);
      if (which === 'metadata') metadata = b;
      return b;
    },
  });
  return { pool, metadata: metadata! };
}

async function checkState(
  state: CrashState, oracle: Oracle, where: { seed: number; position: number; variant: string }, o: ReplayOptions,
  report: ReplayReport, checkDir: string, thinCheck: string | undefined,
): Promise<void> {
  report.checked++;
  const violation = (invariant: Invariant, detail: string) => {
    report.violations.push({ invariant, ...where, detail });
    report.violationsByInvariant[invariant] = (report.violationsByInvariant[invariant] ?? 0) + 1;
  };

  // thinfuse's own checker, strict: no fatal errors, and no leaks either.
  const meta = state.backing('metadata', join(checkDir, 'metadata'))!;
  const chk = checkMetadata(meta);
  if (!chk.ok) violation('check', chk.fatal.slice(0, 3).join('; '));
  else if (chk.nonFatal.length > 0) violation('check-strict', chk.nonFatal.slice(0, 3).join('; '));

  if (thinCheck && o.thinCheckEvery && report.distinct % o.thinCheckEvery === 0) {
    report.thinChecks++;
    const file = join(checkDir, 'thin-check-metadata');
    state.writeTo('metadata', file);
    const r = spawnSync(thinCheck, [file], { encoding: 'utf8' });
    if (r.status !== 0) violation('thin_check', `thin_check exited ${r.status}: ${(r.stdout + r.stderr).trim().split('\n').slice(0, 4).join(' | ')}`);
  }

  // Reopen.
  let metaBacking: BackingFile | undefined;
  let pool: Pool;
  try {
    ({ pool, metadata: metaBacking } = await openCrashState(state, checkDir));
  } catch (e) {
    violation('open', (e as Error).message);
    return;
  }
  try {
    // Management operations: all or nothing.
    const actual = mgmtState(pool);
    const allowed = oracle.allowedStates();
    if (!allowed.some((s) => sameState(s, actual))) {
      violation('atomic', `after reopening: ${JSON.stringify(actual)}; allowed: ${allowed.map((s) => JSON.stringify(s)).join(' or ')}${oracle.running ? ` (crash during ${oracle.running.op.kind})` : ''}`);
    }
    if (pool.registry.intent) violation('atomic', `an intent survived the reopen: ${JSON.stringify(pool.registry.intent)}`);

    // Contents: every sector old or new; nothing acknowledged lost.
    const buf = Buffer.alloc(oracle.extent);
    for (const id of pool.md.devices()) {
      const d = oracle.devs.get(id);
      if (!d) continue; // reported as 'atomic' above
      try {
        await pool.read(id, buf, 0, oracle.extent);
      } catch (e) {
        violation('read', `device ${id}: ${(e as Error).message}`);
        break;
      }
      const bad = d.verify(buf, oracle.exact.has(id));
      if (bad) violation(bad.kind, `device ${id}: ${bad.detail}${oracle.running ? ` (crash during ${oracle.running.op.kind})` : ''}`);
    }

    // The recovered pool works: a write and a commit, then a clean check.
    if (o.recoverEvery && report.checked % o.recoverEvery === 0 && pool.mode === 'write') {
      report.recoveries++;
      const devs = pool.md.devices();
      try {
        if (devs.length > 0) {
          const dev = devs[report.checked % devs.length]!;
          await pool.write(dev as DevId, Buffer.alloc(4096, 0x5a), (report.checked % 16) * 65536, oracle.extent);
        }
        await pool.flush();
        const again = checkMetadata(metaBacking);
        if (!again.ok || again.nonFatal.length > 0) violation('recover', [...again.fatal, ...again.nonFatal].slice(0, 3).join('; '));
      } catch (e) {
        violation('recover', (e as Error).message);
      }
    }
  } finally {
    await pool.close().catch((e) => violation('recover', `close: ${(e as Error).message}`));
  }
}

/** One line per figure, for logs and RELIABILITY.md. */
export function formatReport(r: ReplayReport): string {
  const lines = [
    `workloads ${r.workloads}, log entries ${r.logEntries}, crash points ${r.crashPoints}`,
    `states built ${r.built}, distinct ${r.distinct}, checked ${r.checked}, thin_check runs ${r.thinChecks}, recovery writes ${r.recoveries}`,
    `distinct states by variant: ${Object.entries(r.byVariant).map(([k, v]) => `${k} ${v}`).join(', ')}`,
    `violations ${r.violations.length}${r.violations.length ? ` (${Object.entries(r.violationsByInvariant).map(([k, v]) => `${k} ${v}`).join(', ')})` : ''}`,
    `time: workloads ${(r.workloadMs / 1000).toFixed(1)} s, replay and checks ${(r.replayMs / 1000).toFixed(1)} s`,
  ];
  return lines.join('\n');
}
