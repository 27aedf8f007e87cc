#!/usr/bin/env node
// Builds, with the system C compiler and Node's own N-API headers (no node-gyp,
// no downloads):
//
//  1. native-deps/build/thinfuse_native.node from thinfuse_native.c, and
//     native-deps/build/thinfuse_fs.node from fs_extra.c (xattrs, mknod: for
//     image layers);
//  2. a patched fuse-native in native-deps/build/fuse-native/: index.js,
//     fuse-native.c, semaphore.h and package.json copied from
//     node_modules/fuse-native, native-deps/fuse-native.patch applied (a
//     fallocate op, non-lazy unmount, the mapped-I/O fast path of
//     native-deps/fastpath.h), and fuse-native.c compiled to
//     build/Release/fuse.node, where the copied index.js's node-gyp-build looks
//     first. The copy's require()s (nanoresource, fuse-shared-library,
//     node-gyp-build) resolve by walking up to the project's node_modules.
//     Needs `patch`, libfuse.so.2 (Debian: libfuse2), and from node_modules
//     napi-macros' header and fuse-shared-library's fuse headers.
//  3. native-deps/build/thinfuse-ctl from thinfuse_ctl.c: a plain C client
//     of a serving daemon's control socket (libc only), for scripts that
//     cannot afford Node's start-up per command.
//
//   node native-deps/build.mjs           build what is out of date
//   node native-deps/build.mjs --force   always build all three
//
// Environment: CC picks the compiler (default: gcc, then cc, then g++ as C),
// CFLAGS are appended to the compile lines.
// Runs as the package's `install` script and from `npm run build`.

import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const outDir = path.join(here, 'build');
const force = process.argv.includes('--force');
const cflags = process.env.CFLAGS ? process.env.CFLAGS.split(/\s+/).filter(Boolean) : [];

/** The fuse-native release native-deps/fuse-native.patch is written against. */
const FUSE_NATIVE_VERSION = '2.2.6';

function die(line) {
  process.stderr.write(`thinfuse native build: ${line}\n`);
  process.exit(1);
}

if (process.platform !== 'linux') {
  die(`needs Linux (fallocate, copy_file_range, FUSE); this is ${process.platform}`);
}

buildAddon('thinfuse_native.c', 'thinfuse_native.node', [
  'punchHole', 'punchHoleAsync', 'zeroRange', 'fallocate', 'copyFileRange', 'flock', 'funlock',
]);
buildAddon('fs_extra.c', 'thinfuse_fs.node', ['lsetxattr', 'lgetxattr', 'llistxattr', 'mknod']);
buildFuseNative();
buildProgram('thinfuse_ctl.c', 'thinfuse-ctl');

// --------------------------------------------- 1. thinfuse_native, thinfuse_fs

function buildAddon(sourceName, outputName, exportNames) {
  const source = path.join(here, sourceName);
  const output = path.join(outDir, outputName);
  if (!force && isNewer(output, source)) return;

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
    ...cflags,
    '-o',
    tmp,
    source,
    '-lm',
  ];
  compile(compiler, args, path.relative(process.cwd(), source), () => fs.rmSync(tmp, { force: true }));
  fs.renameSync(tmp, output);

  // Load it once, so a broken build fails here rather than at first use.
  try {
    const addon = createRequire(import.meta.url)(output);
    for (const name of exportNames) {
      if (typeof addon[name] !== 'function') throw new Error(`export ${name} missing`);
    }
  } catch (e) {
    fs.rmSync(output, { force: true });
    die(`built ${output} but it does not load: ${e instanceof Error ? e.message : String(e)}`);
  }
  process.stdout.write(`thinfuse native build: built ${path.relative(process.cwd(), output) || output}\n`);
}

function isNewer(output, source) {
  try {
    return fs.statSync(output).mtimeMs > fs.statSync(source).mtimeMs;
  } catch {
    return false;
  }
}

// -------------------------------------------------- 2. patched fuse-native

function buildFuseNative() {
  const files = ['index.js', 'fuse-native.c', 'semaphore.h', 'package.json'];
  const patchFile = path.join(here, 'fuse-native.patch');
  const dest = path.join(outDir, 'fuse-native');
  const output = path.join(dest, 'build', 'Release', 'fuse.node');
  const stampFile = path.join(dest, 'build', 'inputs.sha256');

  let upstream;
  try {
    upstream = path.dirname(createRequire(import.meta.url).resolve('fuse-native/package.json'));
  } catch {
    die(`fuse-native not found in node_modules: run npm ci (thinfuse patches fuse-native ${FUSE_NATIVE_VERSION})`);
  }
  const upstreamRequire = createRequire(path.join(upstream, 'package.json'));
  const version = JSON.parse(fs.readFileSync(path.join(upstream, 'package.json'), 'utf8')).version;

  const nodeInclude = findHeaders();
  let napiMacros;
  try {
    napiMacros = path.dirname(upstreamRequire.resolve('napi-macros/package.json'));
  } catch {
    die('napi-macros (a fuse-native dependency) not found in node_modules: run npm ci');
  }
  const libfuse = findLibfuse(upstreamRequire);

  // Up to date when the stamp matches everything the build reads. (Not mtimes:
  // npm gives every file it unpacks the same old mtime.) The headers are every
  // .h here: fastpath.h, the parts it includes (fp_*.h), fusechan.h. Each
  // input's name goes in too, so that moving code between headers counts.
  const headers = fs
    .readdirSync(here)
    .filter((f) => f.endsWith('.h'))
    .sort()
    .map((f) => path.join(here, f));
  const hash = createHash('sha256');
  for (const input of [...files.map((f) => path.join(upstream, f)), patchFile, ...headers]) {
    try {
      hash.update(`${path.basename(input)}\0`);
      hash.update(fs.readFileSync(input));
    } catch (e) {
      die(`cannot read ${input}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  hash.update(JSON.stringify([nodeInclude, napiMacros, libfuse, cflags]));
  const stamp = hash.digest('hex');
  if (!force && fs.existsSync(output) && readOr(stampFile) === stamp) return;

  const compiler = findCompiler();
  // Build in a scratch directory and swap it in whole.
  const tmp = `${dest}.${process.pid}.tmp`;
  const cleanup = () => fs.rmSync(tmp, { recursive: true, force: true });
  cleanup();
  const release = path.join(tmp, 'build', 'Release');
  fs.mkdirSync(release, { recursive: true });
  for (const f of files) fs.copyFileSync(path.join(upstream, f), path.join(tmp, f));

  const patched = spawnSync(
    'patch',
    ['-p1', '--batch', '--forward', '--fuzz=0', '--no-backup-if-mismatch', '--reject-file=-', '--silent', '-d', tmp, '-i', patchFile],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] },
  );
  if (patched.error) {
    cleanup();
    die(`could not run patch: ${patched.error.message} (apt-get install patch)`);
  }
  if (patched.status !== 0) {
    cleanup();
    die(
      version === FUSE_NATIVE_VERSION
        ? `native-deps/fuse-native.patch does not apply to node_modules/fuse-native ${version} (modified? npm ci restores it)`
        : `native-deps/fuse-native.patch does not apply to node_modules/fuse-native ${version}: it expects fuse-native ${FUSE_NATIVE_VERSION}`,
    );
  }

  const source = path.join(tmp, 'fuse-native.c');
  const args = [
    ...compiler.lang,
    '-O2',
    '-g',
    '-fPIC',
    '-shared',
    '-pthread',
    '-Wall',
    // What node-gyp (common.gypi) would define. fuse-native.c sets
    // FUSE_USE_VERSION 29 itself; libfuse's headers insist on 64-bit off_t.
    // _GNU_SOURCE: the fast path opens POOL/data again with O_DIRECT
    // (fp_napi.h) and starts writeback with sync_file_range (fp_helpers.h).
    '-D_GNU_SOURCE',
    '-D_FILE_OFFSET_BITS=64',
    '-D_LARGEFILE_SOURCE',
    '-DBUILDING_NODE_EXTENSION',
    '-DNODE_GYP_MODULE_NAME=fuse',
    `-I${nodeInclude}`,
    `-I${napiMacros}`,
    `-I${libfuse.include}`,
    // fastpath.h and fusechan.h, which the patched fuse-native.c includes
    // (fastpath.h includes its parts, fp_*.h, from beside itself).
    `-I${here}`,
    ...cflags,
    '-o',
    path.join(release, 'fuse.node'),
    source,
    // g++ was told `-x c`: the library is not C source.
    ...(compiler.lang.length ? ['-x', 'none'] : []),
    libfuse.lib,
    // fuse-shared-library's libfuse.so (soname libfuse.so.2) goes next to fuse.node.
    ...(libfuse.bundled ? ['-Wl,-rpath,$ORIGIN'] : []),
  ];
  compile(compiler, args, `fuse-native.c of fuse-native ${version}, patched`, cleanup);
  if (libfuse.bundled) fs.copyFileSync(libfuse.lib, path.join(release, 'libfuse.so.2'));

  // Load it once (binding and index.js), so a broken build fails here.
  try {
    const load = createRequire(path.join(tmp, 'index.js'));
    const binding = load(path.join(release, 'fuse.node'));
    if (typeof binding.fuse_native_signal_fallocate !== 'function' || typeof binding.op_fallocate !== 'number') {
      throw new Error('the fallocate op is missing');
    }
    const Fuse = load(tmp);
    if (typeof Fuse !== 'function' || typeof Fuse.unmount !== 'function') throw new Error('index.js exports no Fuse class');
    if (/fusermount -uz/.test(Fuse.unmount.toString())) throw new Error('unmount is still lazy');
    if (typeof Fuse.fastPath?.revoke !== 'function') throw new Error('the fast path is missing');
  } catch (e) {
    cleanup();
    die(`built fuse-native but it does not load: ${e instanceof Error ? e.message : String(e)}`);
  }
  fs.writeFileSync(path.join(tmp, 'build', 'inputs.sha256'), `${stamp}\n`);

  const old = `${dest}.${process.pid}.old`;
  if (fs.existsSync(dest)) fs.renameSync(dest, old);
  fs.renameSync(tmp, dest);
  fs.rmSync(old, { recursive: true, force: true });
  process.stdout.write(
    `thinfuse native build: built ${path.relative(process.cwd(), output) || output} (fuse-native ${version}, patched; ${libfuse.lib})\n`,
  );
}

function readOr(file) {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** libfuse 2 headers and the library to link: the system's libfuse.so.2 (Debian libfuse2), else fuse-shared-library's copy. */
function findLibfuse(upstreamRequire) {
  let shared;
  try {
    shared = upstreamRequire('fuse-shared-library');
  } catch {
    shared = undefined;
  }
  const include = [shared?.include, '/usr/include/fuse'].find((dir) => dir && fs.existsSync(path.join(dir, 'fuse.h')));
  if (include === undefined) {
    die('fuse.h (libfuse 2) not found in fuse-shared-library or /usr/include/fuse: run npm ci, or apt-get install libfuse-dev');
  }
  const multiarch = { x64: 'x86_64-linux-gnu', arm64: 'aarch64-linux-gnu', arm: 'arm-linux-gnueabihf', ia32: 'i386-linux-gnu' }[
    process.arch
  ];
  const dirs = [...(multiarch ? [`/usr/lib/${multiarch}`, `/lib/${multiarch}`] : []), '/usr/lib64', '/lib64', '/usr/lib', '/lib'];
  for (const dir of dirs) {
    const lib = path.join(dir, 'libfuse.so.2');
    if (fs.existsSync(lib)) return { include, lib, bundled: false };
  }
  if (shared?.lib && fs.existsSync(shared.lib)) return { include, lib: shared.lib, bundled: true };
  die('libfuse.so.2 not found: apt-get install libfuse2');
}

// ------------------------------------------------------------ 3. thinfuse-ctl

function buildProgram(sourceName, outputName) {
  const source = path.join(here, sourceName);
  const output = path.join(outDir, outputName);
  if (!force && isNewer(output, source)) return;

  const compiler = findCompiler();
  fs.mkdirSync(outDir, { recursive: true });
  const tmp = `${output}.${process.pid}.tmp`;
  const args = [
    ...compiler.lang,
    '-std=gnu11',
    '-O2',
    '-g',
    '-Wall',
    '-Wextra',
    '-Werror=implicit-function-declaration',
    ...cflags,
    '-o',
    tmp,
    source,
  ];
  compile(compiler, args, path.relative(process.cwd(), source), () => fs.rmSync(tmp, { force: true }));

  // Run it once, so a broken build fails here rather than in a script.
  const probe = spawnSync(tmp, ['--help'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0 || !probe.stdout.startsWith('usage: ')) {
    fs.rmSync(tmp, { force: true });
    die(`built ${output} but \`${outputName} --help\` fails: ${probe.error?.message ?? (probe.stderr || `exit ${probe.status ?? probe.signal}`)}`);
  }
  fs.renameSync(tmp, output);
  process.stdout.write(`thinfuse native build: built ${path.relative(process.cwd(), output) || output}\n`);
}

// ------------------------------------------------------------------ common

function compile(compiler, args, what, cleanup) {
  const res = spawnSync(compiler.cmd, args, { stdio: ['ignore', 'inherit', 'inherit'] });
  if (res.error) {
    cleanup();
    die(`could not run ${compiler.cmd}: ${res.error.message}`);
  }
  if (res.status !== 0) {
    cleanup();
    die(`${compiler.cmd} failed (exit ${res.status ?? res.signal}) compiling ${what}`);
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
