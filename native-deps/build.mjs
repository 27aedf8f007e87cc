#!/usr/bin/env node
// Builds native-deps/build/thinfuse_native.node from thinfuse_native.c with the
// system C compiler and Node's own N-API headers. No node-gyp, no downloads.
//
//   node native-deps/build.mjs           build if the source is newer than the output
//   node native-deps/build.mjs --force   always build
//
// Environment: CC picks the compiler (default: gcc, then cc, then g++ as C),
// CFLAGS are appended to the compile line.
// Runs as the package's `install` script and from `npm run build`.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const source = path.join(here, 'thinfuse_native.c');
const outDir = path.join(here, 'build');
const output = path.join(outDir, 'thinfuse_native.node');
const force = process.argv.includes('--force');

function die(line) {
  process.stderr.write(`thinfuse native build: ${line}\n`);
  process.exit(1);
}

if (process.platform !== 'linux') {
  die(`needs Linux (fallocate, copy_file_range); this is ${process.platform}`);
}

if (!force && isFresh()) {
  process.exit(0);
}

const includeDir = findHeaders();
const compiler = findCompiler();

fs.mkdirSync(outDir, { recursive: true });
// Build to a temporary name and rename, so a concurrent loader never sees a
// half-written file.
const tmp = `${output}.${process.pid}.tmp`;
const args = [
  ...compiler.lang,
  '-std=gnu11',
  '-O2',
  '-g',
  '-fPIC',
  '-shared',
  '-fvisibility=hidden',
  '-Wall',
  '-Wextra',
  '-Werror=implicit-function-declaration',
  `-I${includeDir}`,
  ...(process.env.CFLAGS ? process.env.CFLAGS.split(/\s+/).filter(Boolean) : []),
  '-o',
  tmp,
  source,
  '-lm',
];
const res = spawnSync(compiler.cmd, args, { stdio: ['ignore', 'inherit', 'inherit'] });
if (res.error) {
  die(`could not run ${compiler.cmd}: ${res.error.message}`);
}
if (res.status !== 0) {
  fs.rmSync(tmp, { force: true });
  die(`${compiler.cmd} failed (exit ${res.status ?? res.signal}) compiling ${path.relative(process.cwd(), source)}`);
}
fs.renameSync(tmp, output);

// Load it once, so a broken build fails here rather than at first use.
try {
  const addon = createRequire(import.meta.url)(output);
  for (const name of ['punchHole', 'punchHoleAsync', 'zeroRange', 'fallocate', 'copyFileRange', 'flock', 'funlock']) {
    if (typeof addon[name] !== 'function') throw new Error(`export ${name} missing`);
  }
} catch (e) {
  fs.rmSync(output, { force: true });
  die(`built ${output} but it does not load: ${e instanceof Error ? e.message : String(e)}`);
}
process.stdout.write(`thinfuse native build: built ${path.relative(process.cwd(), output) || output}\n`);

function isFresh() {
  try {
    return fs.statSync(output).mtimeMs > fs.statSync(source).mtimeMs;
  } catch {
    return false;
  }
}

function findHeaders() {
  const candidates = [path.resolve(process.execPath, '../../include/node'), '/usr/include/node'];
  for (const dir of candidates) {
    if (fs.existsSync(path.join(dir, 'node_api.h'))) return dir;
  }
  die(
    `node_api.h not found in ${candidates.join(' or ')}: install Node's headers ` +
      `(the official Node tarball ships them; on Debian: apt-get install libnode-dev)`,
  );
}

function findCompiler() {
  const tried = [];
  const candidates = process.env.CC ? [process.env.CC] : ['gcc', 'cc', 'g++'];
  for (const cmd of candidates) {
    tried.push(cmd);
    const probe = spawnSync(cmd, ['--version'], { stdio: 'ignore' });
    if (!probe.error && probe.status === 0) {
      // g++ (or clang++) would compile the file as C++: force C.
      const lang = /\+\+$/.test(path.basename(cmd)) ? ['-x', 'c'] : [];
      return { cmd, lang };
    }
  }
  die(`no C compiler found (tried ${tried.join(', ')}): install build-essential (apt-get install -y build-essential)`);
}
