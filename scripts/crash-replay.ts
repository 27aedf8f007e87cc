// Crash consistency on demand: the harness of test/crash-replay.test.ts at any
// size. Runs random workloads (seeds seed, seed+1, ...) on recorded pools,
// builds crash states at every flush point and at sampled points between
// (unflushed writes dropped, reordered, torn at 512 bytes), reopens every
// distinct state and checks the invariants (RELIABILITY.md). Prints progress
// and the figures; exits 1 on any violation.
//
//   npx tsx scripts/crash-replay.ts --states 100000 --seed 7
//   npx tsx scripts/crash-replay.ts --states 3000 --canary reuse-before-commit --stop-after 1
//   npx tsx scripts/crash-replay.ts --states 20000 --all-ops       # include the known-bug operations
//
// Options: --states N (default 100000), --seed S (default 1), --steps N
// (operations per workload, 120), --thin-check-every N (50; 0 = never),
// --recover-every N (10), --canary NAME, --all-ops (do not leave out
// KNOWN_BUG_SKIPS), --stop-after N, --dump DIR (the first violating state's
// files, for thinfuse check / thin_check / a reopen), --json FILE (the report).

import { writeFileSync } from 'node:fs';
import { CANARIES, type Canary } from '../src/pool/canary.js';
import { formatReport, KNOWN_BUG_SKIPS, type ReplayOptions, type ReplayReport, runCrashReplay } from '../test/_helpers/crash-harness.js';
import { arg, num } from './args.js';

const canary = arg('canary') as Canary | undefined;
if (canary !== undefined && !CANARIES.includes(canary)) throw new Error(`--canary is one of ${CANARIES.join(', ')}`);
const allOps = process.argv.includes('--all-ops');
const o: ReplayOptions = {
  seed: num('seed', 1),
  states: num('states', 100_000),
  steps: num('steps', 120),
  thinCheckEvery: num('thin-check-every', 50),
  recoverEvery: num('recover-every', 10),
  skip: allOps ? [] : KNOWN_BUG_SKIPS,
};
if (canary) o.canary = canary;
if (arg('stop-after')) o.stopAfter = num('stop-after', 0);
if (arg('dump')) o.dumpDir = arg('dump')!;

const started = Date.now();
let lastPrint = 0;
o.progress = (r: ReplayReport) => {
  if (Date.now() - lastPrint < 10_000) return;
  lastPrint = Date.now();
  const s = (Date.now() - started) / 1000;
  console.log(`[${s.toFixed(0)} s] workloads ${r.workloads}, distinct states ${r.distinct}/${o.states} (${(r.distinct / s).toFixed(0)}/s), violations ${r.violations.length}`);
};

console.log(`crash replay: seed ${o.seed}, ${o.states} distinct states, ${o.steps} operations per workload, thin_check every ${o.thinCheckEvery}, `
  + `recovery write every ${o.recoverEvery}${canary ? `, canary ${canary}` : ''}, left out: ${o.skip!.length ? o.skip!.join(', ') : 'nothing'}`);
const r = await runCrashReplay(o);
const ms = Date.now() - started;
console.log(formatReport(r));
console.log(`operations run by the workloads: ${Object.entries(r.ops).sort().map(([k, v]) => `${k} ${v}`).join(', ')}`);
console.log(`wall time ${(ms / 1000).toFixed(1)} s (${(r.distinct / (ms / 1000)).toFixed(0)} distinct states/s), node ${process.version}`);
for (const v of r.violations.slice(0, 20)) console.log(`VIOLATION ${v.invariant} (seed ${v.seed}, position ${v.position}, ${v.variant}): ${v.detail}`);
if (r.violations.length > 20) console.log(`... and ${r.violations.length - 20} more`);
const json = arg('json');
if (json) writeFileSync(json, JSON.stringify({ options: { ...o, progress: undefined }, wallMs: ms, node: process.version, ...r, violations: r.violations.slice(0, 1000) }, null, 2) + '\n');
process.exitCode = r.violations.length > 0 ? 1 : 0;
