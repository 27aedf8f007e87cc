#!/usr/bin/env node
// The size rule beside the layering rule: no source file under src/ grows
// past MAX_LINES lines, so every module stays small enough to read in one
// sitting (a file that needs more is doing more than one job: split it).
//
//   node scripts/file-lines.mjs [DIR]      (default src; part of npm run layers)
//
// Exits 1 and names every file over the limit.

import fs from 'node:fs';
import path from 'node:path';

const MAX_LINES = 600;
const SOURCE = /\.(ts|mts|cts|js|mjs|cjs)$/;

function* sources(dir) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) yield* sources(p);
    else if (SOURCE.test(e.name)) yield p;
  }
}

function lineCount(file) {
  const text = fs.readFileSync(file, 'utf8');
  if (text.length === 0) return 0;
  return text.split('\n').length - (text.endsWith('\n') ? 1 : 0);
}

const root = process.argv[2] ?? 'src';
if (!fs.existsSync(root)) {
  process.stderr.write(`file-lines: ${root} does not exist; run from the project root or name the directory\n`);
  process.exit(2);
}
const over = [...sources(root)].map((f) => [f, lineCount(f)]).filter(([, n]) => n > MAX_LINES);
for (const [f, n] of over) {
  process.stderr.write(`file-lines: ${f} has ${n} lines, over the limit of ${MAX_LINES}; split it into modules with one job each\n`);
}
if (over.length > 0) process.exit(1);
process.stdout.write(`file-lines: every source file under ${root} is at most ${MAX_LINES} lines\n`);
