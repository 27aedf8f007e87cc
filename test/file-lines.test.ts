// scripts/file-lines.mjs, the size rule of npm run layers: it passes on src/
// and fails, naming the file, on one over 600 lines.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';

const SCRIPT = path.join(import.meta.dirname, '..', 'scripts', 'file-lines.mjs');
const SRC = path.join(import.meta.dirname, '..', 'src');

function run(dir: string) {
  return spawnSync(process.execPath, [SCRIPT, dir], { encoding: 'utf8' });
}

test('every file under src/ is at most 600 lines', (t) => {
  const r = run(SRC);
  t.is(r.status, 0, r.stderr);
});

test('a file of 601 lines fails the rule and is named; 600 lines pass', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinfuse-lines-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.mkdirSync(path.join(dir, 'deep'));
  fs.writeFileSync(path.join(dir, 'deep', 'ok.ts'), 'x;\n'.repeat(600));
  t.is(run(dir).status, 0);
  fs.writeFileSync(path.join(dir, 'deep', 'big.ts'), 'x;\n'.repeat(601));
  const r = run(dir);
  t.is(r.status, 1);
  t.regex(r.stderr, /deep\/big\.ts has 601 lines, over the limit of 600/);
  t.notRegex(r.stderr, /ok\.ts/);
});
