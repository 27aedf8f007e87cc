// The fault matrix on demand (issue 5, item 3): every applicable cell of the
// reaction table x {idle, under concurrent I/O load, during a snapshot}, run
// in-process on real pool files (test/_helpers/fault-matrix.ts, the same
// cases as test/fault.test.ts). Each case sets the fault as `thinfuse fault`
// does (under the data cache), triggers it, checks the table's reaction,
// clears it, reopens the pool and checks thin_check + committed data.
// The fourth context, "fio": the same cells under fio load through FUSE (a
// real `thinfuse serve`, a loop device, fio, the fault set with `thinfuse
// fault` over the control socket; test/_helpers/fault-fuse.ts). It needs
// root, /dev/fuse, fio and the built CLI (npm run build), takes the e2e lock,
// and cleans up as the e2e tests do: our loop devices detached, our serve
// and fio stopped by pid, mounts unmounted non-lazily, on success or failure.
// Prints a markdown table (for RELIABILITY.md); exits 1 if any case fails.
//
//   npx tsx scripts/fault-matrix.ts [--repeat N] [--only SUBSTRING] [--contexts idle,load,snapshot,fio] [--json FILE]

import { writeFileSync } from 'node:fs';
import { FUSE_CELLS, runFuseCaseOutsideAva } from '../test/_helpers/fault-fuse.js';
import { type CaseResult, CELLS, CONTEXTS, runCase } from '../test/_helpers/fault-matrix.js';
import { arg } from './args.js';

type Ctx = CaseResult['context'] | 'fio';
type Result = Omit<CaseResult, 'context'> & { context: Ctx };
const ALL: readonly Ctx[] = [...CONTEXTS, 'fio'];
const repeat = Number(arg('repeat') ?? 1);
const only = arg('only');
const contexts = (arg('contexts')?.split(',') ?? ALL) as Ctx[];
for (const c of contexts) if (!ALL.includes(c)) throw new Error(`unknown context '${c}'; use ${ALL.join(', ')}`);
const results: Result[] = [];
const start = Date.now();
const report = (res: Result) => {
  results.push(res);
  process.stderr.write(`${res.ok ? 'ok  ' : 'FAIL'} ${res.cell} [${res.context}] ${res.reaction} (${res.ms} ms)${res.ok ? '' : `: ${res.detail}`}\n`);
};
for (let r = 0; r < repeat; r++) {
  for (const cell of CELLS.filter((c) => !only || c.name.includes(only))) {
    for (const ctx of CONTEXTS.filter((c) => contexts.includes(c))) report(await runCase(cell, ctx));
  }
  if (!contexts.includes('fio')) continue;
  for (const cell of FUSE_CELLS.filter((c) => !only || c.name.includes(only))) {
    report({ ...(await runFuseCaseOutsideAva(cell, (s) => process.stderr.write(`  ${s}\n`))), context: 'fio' });
  }
}

const byCell = new Map<string, Result[]>();
for (const r of results) byCell.set(r.cell, [...(byCell.get(r.cell) ?? []), r]);
const HEAD: Record<Ctx, string> = { idle: 'idle', load: 'load (in-process)', snapshot: 'snapshot', fio: 'fio via FUSE' };
const seen = (rs: Result[], ctx: Ctx) => rs.find((r) => r.context === ctx)?.reaction ?? '';
const lines = [
  `| cell (file/kind/request) | ${contexts.map((c) => HEAD[c]).join(' | ')} | reaction seen (idle) | reaction seen (fio via FUSE) |`,
  `| --- | ${contexts.map(() => '---').join(' | ')} | --- | --- |`,
];
for (const [cell, rs] of byCell) {
  const col = (ctx: string) => {
    const mine = rs.filter((r) => r.context === ctx);
    const bad = mine.filter((r) => !r.ok).length;
    return mine.length === 0 ? '-' : bad === 0 ? `pass (${mine.length})` : `**FAIL ${bad}/${mine.length}**`;
  };
  lines.push(`| ${cell} | ${contexts.map(col).join(' | ')} | ${seen(rs, 'idle')} | ${seen(rs, 'fio')} |`);
}
const failed = results.filter((r) => !r.ok);
lines.push('', `${results.length} cases, ${failed.length} failed, ${((Date.now() - start) / 1000).toFixed(1)} s`);
process.stdout.write(`${lines.join('\n')}\n`);
for (const f of failed) process.stdout.write(`- FAIL ${f.cell} [${f.context}]: ${f.detail}\n`);
const json = arg('json');
if (json) writeFileSync(json, JSON.stringify(results, null, 1));
process.exitCode = failed.length > 0 ? 1 : 0;
