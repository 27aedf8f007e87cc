// The metadata fuzzer on demand (test/_helpers/fuzz.ts; the regular suite
// runs a few thousand cases in test/fuzz.test.ts). Seeded: the same seed and
// count give the same cases. Prints progress and the figures; exits 1 on any
// finding.
//
//   npx tsx scripts/fuzz.ts --cases 100000 --seed 1
//   npx tsx scripts/fuzz.ts --cli 500 --seed 1       # cases through the CLI and `serve` (root, FUSE)
//   npx tsx scripts/fuzz.ts --case 12345              # one case, with what was done and what happened
//
// Options: --cases N (in-process cases, default 100000), --seed S (1),
// --cli N (cases through spawned CLI commands and a real `serve`, instead of
// in process), --json FILE (the figures).

import fs from 'node:fs';
import { makeCase, makeFuzzBase, runCase, runFuzz, makeRunDir, type FuzzFigures } from '../test/_helpers/fuzz.js';
import { runCliFuzz } from '../test/_helpers/fuzz-cli.js';
import { arg, num } from './args.js';

const seed = num('seed', 1);
const base = await makeFuzzBase();
const counts = [...base.blocks].map(([t, bs]) => `${t} ${bs.length}`).join(', ');
try {
  if (arg('case') !== undefined) {
    const c = makeCase(base, num('case', 0));
    const dir = makeRunDir();
    const r = await runCase(c, dir);
    fs.rmSync(dir, { recursive: true, force: true });
    console.log(JSON.stringify({ what: c.what, ...r }, null, 2));
    process.exit(r.findings.length ? 1 : 0);
  }
  let f: FuzzFigures;
  if (arg('cli') !== undefined) {
    const n = num('cli', 500);
    console.log(`fuzz through the CLI and serve: seed ${seed}, ${n} cases; base blocks: ${counts}`);
    f = await runCliFuzz(base, seed, n, (x) => console.log(`[${(x.ms / 1000).toFixed(0)} s] cases ${x.cases}/${n}, findings ${x.findings.length}`));
  } else {
    const n = num('cases', 100_000);
    console.log(`fuzz in process: seed ${seed}, ${n} cases; base blocks: ${counts}`);
    let last = 0;
    f = await runFuzz(base, seed, n, (x) => {
      if (Date.now() - last < 10_000) return;
      last = Date.now();
      console.log(`[${(x.ms / 1000).toFixed(0)} s] cases ${x.cases}/${n} (${(x.cases / (x.ms / 1000)).toFixed(0)}/s), findings ${x.findings.length}`);
    });
  }
  console.log(`cases: ${f.cases} in ${(f.ms / 1000).toFixed(0)} s`);
  console.log(`mutations: ${JSON.stringify(f.mutations)}`);
  console.log(`outcomes of the first open: ${JSON.stringify(f.opens)}`);
  console.log(`findings: ${f.findings.length}`);
  const bySig = new Map<string, { n: number; first: (typeof f.findings)[number] }>();
  for (const x of f.findings) {
    const sig = `${x.step}: ${x.error.replace(/\d+/g, 'N').slice(0, 120)}`;
    const e = bySig.get(sig);
    if (e) e.n++;
    else bySig.set(sig, { n: 1, first: x });
  }
  for (const [sig, e] of bySig) console.log(`  ${e.n} x ${sig}\n      e.g. seed ${e.first.seed}: ${e.first.what.join('; ')}: ${e.first.error}`);
  const json = arg('json');
  if (json) fs.writeFileSync(json, JSON.stringify({ seed, ...f }, null, 2));
  process.exitCode = f.findings.length ? 1 : 0;
} finally {
  fs.rmSync(base.dir, { recursive: true, force: true });
}
