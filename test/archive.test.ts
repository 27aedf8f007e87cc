// Layer tars and image archives on real directories (run as root: chown,
// mknod, security.* xattrs): applyLayer entry by entry, whiteouts and opaque
// directories, hard links, path-traversal refusal, a diff/apply round trip
// compared tree against tree, and image-archive verification.

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import zlib from 'node:zlib';

import test, { type ExecutionContext } from 'ava';

import { isThinError } from '../src/base/errors.js';
import { applyLayer } from '../src/frontends/layers/archive/apply.js';
import { readXattrs, writeLayerDiff } from '../src/frontends/layers/archive/diff.js';
import { openImageArchive } from '../src/frontends/layers/archive/oci-image.js';
import { devMajor, devMinor, fsNative } from '../src/io/fs-native.js';
import { buildOciImage, busyboxLayer, layerTar, type LayerSpec } from './_helpers/oci-build.js';

const CAP = Buffer.from([0x01, 0x00, 0x00, 0x02, 0x80, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // cap_setuid,cap_net_raw+ep
const BINARY = Buffer.from([0xff, 0x00, 0xc3, 0x28, 0x80, 0x0a]); // not UTF-8, with NUL and newline
const T0 = new Date('2023-05-06T07:08:09Z');

function tempDir(t: ExecutionContext, tag = 'archive'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `thinfuse-${tag}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function apply(spec: LayerSpec, root: string, compress = false) {
  return applyLayer(Readable.from([await layerTar(spec, { compress })]), root);
}

function mtimeSec(p: string): number {
  return Math.floor(fs.lstatSync(p).mtimeMs / 1000);
}

// ------------------------------------------------------------------ apply

test('apply: every entry kind, with owner, mode, times and xattrs', async (t) => {
  const root = tempDir(t);
  const stats = await apply(
    [
      { type: 'dir', path: 'd', mode: 0o750, uid: 12, gid: 34, mtime: T0 },
      { type: 'file', path: 'd/suid', content: 'x'.repeat(5000), mode: 0o4755, uid: 1000, gid: 1001, mtime: T0, xattrs: { 'security.capability': CAP, 'user.bin': BINARY } },
      { type: 'dir', path: 'tmp', mode: 0o1777 },
      { type: 'symlink', path: 'd/link', target: '../tmp', uid: 5, gid: 6, mtime: T0 },
      { type: 'hardlink', path: 'd/hard', target: 'd/suid' },
      { type: 'char', path: 'null', major: 1, minor: 3, mode: 0o666 },
      { type: 'block', path: 'loop9', major: 7, minor: 9, mode: 0o660, gid: 6 },
      { type: 'fifo', path: 'fifo', mode: 0o600 },
      { type: 'file', path: 'deep/er/file', content: 'no parents in the tar' },
    ],
    root,
  );
  t.deepEqual({ entries: stats.entries, whiteouts: stats.whiteouts, bytes: stats.bytes }, { entries: 9, whiteouts: 0, bytes: 5000 + 21 });

  const d = fs.lstatSync(path.join(root, 'd'));
  t.true(d.isDirectory());
  t.is(d.mode & 0o7777, 0o750);
  t.deepEqual([d.uid, d.gid], [12, 34]);
  t.is(mtimeSec(path.join(root, 'd')), T0.getTime() / 1000, 'directory mtime set after its contents');

  const f = fs.lstatSync(path.join(root, 'd/suid'));
  t.is(f.mode & 0o7777, 0o4755, 'setuid survives chown');
  t.deepEqual([f.uid, f.gid, f.size, f.nlink], [1000, 1001, 5000, 2]);
  t.is(mtimeSec(path.join(root, 'd/suid')), T0.getTime() / 1000);
  t.deepEqual(fsNative.lgetxattr(path.join(root, 'd/suid'), 'security.capability'), CAP, 'capability survives chown');
  t.deepEqual(fsNative.lgetxattr(path.join(root, 'd/suid'), 'user.bin'), BINARY, 'binary xattr intact');
  t.is(fs.lstatSync(path.join(root, 'd/hard')).ino, f.ino);

  t.is(fs.lstatSync(path.join(root, 'tmp')).mode & 0o7777, 0o1777);
  const l = fs.lstatSync(path.join(root, 'd/link'));
  t.true(l.isSymbolicLink());
  t.is(fs.readlinkSync(path.join(root, 'd/link')), '../tmp');
  t.deepEqual([l.uid, l.gid], [5, 6]);
  t.is(mtimeSec(path.join(root, 'd/link')), T0.getTime() / 1000, 'lutimes on the link itself');

  const c = fs.lstatSync(path.join(root, 'null'), { bigint: true });
  t.true(c.isCharacterDevice());
  t.deepEqual([devMajor(c.rdev), devMinor(c.rdev), Number(c.mode) & 0o7777], [1, 3, 0o666]);
  const b = fs.lstatSync(path.join(root, 'loop9'), { bigint: true });
  t.true(b.isBlockDevice());
  t.deepEqual([devMajor(b.rdev), devMinor(b.rdev), Number(b.gid)], [7, 9, 6]);
  t.true(fs.lstatSync(path.join(root, 'fifo')).isFIFO());
  t.is(fs.lstatSync(path.join(root, 'deep/er')).mode & 0o7777, 0o755, 'missing parents made 0755');
});

test('apply: gzip is detected by its magic; zstd is refused with a clear error', async (t) => {
  const root = tempDir(t);
  const stats = await apply([{ type: 'file', path: 'a', content: 'gz' }], root, true);
  t.is(stats.entries, 1);
  t.is(fs.readFileSync(path.join(root, 'a'), 'utf8'), 'gz');
  const zstd = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]);
  const err = await t.throwsAsync(applyLayer(Readable.from([zstd]), root));
  t.true(isThinError(err, 'BAD_ARCHIVE'));
  t.regex(err!.message, /zstd-compressed/);
  const junk = await t.throwsAsync(applyLayer(Readable.from([Buffer.alloc(1024, 7)]), root));
  t.true(isThinError(junk, 'BAD_ARCHIVE'), String(junk));
});

test('apply: whiteouts delete lower files and trees; an opaque dir keeps only this layer', async (t) => {
  const root = tempDir(t);
  await apply(
    [
      { type: 'dir', path: 'a' },
      { type: 'file', path: 'a/lower1', content: '1' },
      { type: 'dir', path: 'a/sub' },
      { type: 'file', path: 'a/sub/lower2', content: '2' },
      { type: 'dir', path: 'b' },
      { type: 'file', path: 'b/z', content: 'z' },
      { type: 'file', path: 'c', content: 'c' },
      { type: 'file', path: 'keepme', content: 'k' },
    ],
    root,
  );
  const stats = await apply(
    [
      { type: 'whiteout', path: 'c' },
      { type: 'whiteout', path: 'b' },
      { type: 'dir', path: 'a', mode: 0o700 },
      { type: 'file', path: 'a/before', content: 'same layer, before the marker' },
      { type: 'dir', path: 'a/sub' },
      { type: 'opaque', path: 'a' },
      { type: 'file', path: 'a/after', content: 'same layer, after the marker' },
      { type: 'whiteout', path: 'nothing/here' },
    ],
    root,
  );
  t.is(stats.whiteouts, 4);
  t.deepEqual(fs.readdirSync(root).sort(), ['a', 'keepme']);
  t.deepEqual(fs.readdirSync(path.join(root, 'a')).sort(), ['after', 'before', 'sub']);
  t.deepEqual(fs.readdirSync(path.join(root, 'a/sub')), [], 'lower content of a kept subdirectory is hidden too');
  t.is(fs.lstatSync(path.join(root, 'a')).mode & 0o7777, 0o700, 'dir over dir merges metadata');
});

test('apply: an entry replaces what is there; hard links reach into lower layers', async (t) => {
  const root = tempDir(t);
  await apply(
    [
      { type: 'dir', path: 'x' },
      { type: 'file', path: 'x/old', content: 'old' },
      { type: 'file', path: 'lowerfile', content: 'shared' },
    ],
    root,
  );
  await apply(
    [
      { type: 'file', path: 'x', content: 'dir became file' },
      { type: 'hardlink', path: 'linked', target: 'lowerfile' },
      { type: 'file', path: 'first', content: 'same layer' },
      { type: 'hardlink', path: 'second', target: '/first' },
    ],
    root,
  );
  t.true(fs.lstatSync(path.join(root, 'x')).isFile());
  t.is(fs.lstatSync(path.join(root, 'linked')).ino, fs.lstatSync(path.join(root, 'lowerfile')).ino);
  t.is(fs.lstatSync(path.join(root, 'second')).ino, fs.lstatSync(path.join(root, 'first')).ino);
});

test('apply: path traversal is refused or kept inside the root', async (t) => {
  const base = tempDir(t);
  const root = path.join(base, 'root');
  const outside = path.join(base, 'outside');
  fs.mkdirSync(root);
  fs.mkdirSync(outside);
  fs.writeFileSync(path.join(outside, 'precious'), 'untouched');

  for (const spec of [
    [{ type: 'file', path: '../evil', content: 'x' }],
    [{ type: 'file', path: 'a/../../evil', content: 'x' }],
    [{ type: 'symlink', path: 'up', target: '../../..' }],
    [{ type: 'hardlink', path: 'h', target: '../outside/precious' }],
    [{ type: 'whiteout', path: '../outside/precious' }],
  ] as LayerSpec[]) {
    const err = await t.throwsAsync(apply(spec, root));
    t.true(isThinError(err, 'BAD_ARCHIVE'), `${JSON.stringify(spec)}: ${String(err)}`);
    t.notRegex(err!.message, /\n/, 'one-line message');
  }

  // Symlinks on the way are followed within the root, as in Docker's chroot.
  await apply(
    [
      { type: 'symlink', path: 'toroot', target: '/' },
      { type: 'symlink', path: 'toout', target: outside },
      { type: 'file', path: 'toroot/etc/owned', content: 'inside' },
      { type: 'file', path: `toout/precious`, content: 'inside too' },
      { type: 'whiteout', path: 'toroot/precious-elsewhere' },
      { type: 'file', path: '/abs/name', content: 'leading slash dropped' },
    ],
    root,
  );
  t.is(fs.readFileSync(path.join(outside, 'precious'), 'utf8'), 'untouched');
  t.deepEqual(fs.readdirSync(outside), ['precious']);
  t.is(fs.readFileSync(path.join(root, 'etc/owned'), 'utf8'), 'inside');
  t.is(fs.readFileSync(path.join(root, outside, 'precious'), 'utf8'), 'inside too');
  t.is(fs.readFileSync(path.join(root, 'abs/name'), 'utf8'), 'leading slash dropped');
  t.deepEqual(fs.readdirSync(base).sort(), ['outside', 'root']);
});

// ------------------------------------------------------------------- diff

interface Node {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  rdev: string;
  link: string | null;
  xattrs: string;
  sha256: string | null;
}

/** Everything comparable about a tree (mtimes in whole seconds, as tar carries them), plus its hard-link groups. */
function snapshot(root: string): { nodes: Map<string, Node>; links: string[][] } {
  const nodes = new Map<string, Node>();
  const byIno = new Map<bigint, string[]>();
  const walk = (rel: string): void => {
    for (const name of fs.readdirSync(path.join(root, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const p = path.join(root, r);
      const st = fs.lstatSync(p, { bigint: true });
      const type = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : st.isFile() ? 'file' : st.isFIFO() ? 'fifo' : st.isCharacterDevice() ? 'char' : 'block';
      nodes.set(r, {
        type,
        mode: Number(st.mode) & 0o7777,
        uid: Number(st.uid),
        gid: Number(st.gid),
        mtime: type === 'dir' ? 0 : Number(st.mtimeNs / 1_000_000_000n),
        rdev: String(st.rdev),
        link: type === 'symlink' ? fs.readlinkSync(p) : null,
        xattrs: [...readXattrs(p)].map(([k, v]) => `${k}=${v.toString('hex')}`).join(','),
        sha256: type === 'file' ? createHash('sha256').update(fs.readFileSync(p)).digest('hex') : null,
      });
      if (type === 'file') byIno.set(st.ino, [...(byIno.get(st.ino) ?? []), r]);
      if (type === 'dir') walk(r);
    }
  };
  walk('');
  return { nodes, links: [...byIno.values()].filter((g) => g.length > 1).map((g) => g.sort()).sort() };
}

async function diffToBuffer(lower: string | null, upper: string) {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  const stats = await writeLayerDiff(lower, upper, out);
  return { stats, tar: Buffer.concat(chunks) };
}

function cpa(from: string, to: string): void {
  execFileSync('cp', ['-a', from, to]);
}

const LOWER: LayerSpec[] = [
  [
    { type: 'dir', path: 'etc' },
    { type: 'file', path: 'etc/hosts', content: '127.0.0.1 localhost\n' },
    { type: 'file', path: 'etc/same', content: 'AAAA' },
    { type: 'file', path: 'etc/untouched', content: 'stays' },
    { type: 'dir', path: 'gone' },
    { type: 'file', path: 'gone/inner', content: 'deleted with its dir' },
    { type: 'file', path: 'rm-me', content: 'deleted' },
    { type: 'symlink', path: 'ln', target: 'etc/hosts' },
    { type: 'file', path: 'perm', content: 'p', mode: 0o644, xattrs: { 'user.keep': 'v1' } },
    { type: 'dir', path: 'typechange' },
    { type: 'file', path: 'typechange/child', content: 'goes with its dir' },
  ],
  [
    { type: 'dir', path: 'bin' },
    { type: 'file', path: 'bin/tool', content: 'tool', mode: 0o755 },
  ],
];

test('diff: round trip — diff against a copy of the lower, applied onto another copy, rebuilds the upper', async (t) => {
  const dir = tempDir(t);
  const lowerSrc = path.join(dir, 'lowersrc');
  fs.mkdirSync(lowerSrc);
  for (const layer of LOWER) await apply(layer, lowerSrc);
  const lower = path.join(dir, 'lower');
  const upper = path.join(dir, 'upper');
  const rebuilt = path.join(dir, 'rebuilt');
  cpa(lowerSrc, lower);
  cpa(lowerSrc, upper);
  cpa(lowerSrc, rebuilt);

  // Changes in the upper, of every kind.
  const u = (p: string): string => path.join(upper, p);
  const sameMtime = fs.statSync(u('etc/same')).mtime;
  fs.writeFileSync(u('etc/same'), 'BBBB'); // same size...
  fs.utimesSync(u('etc/same'), sameMtime, sameMtime); // ...and same mtime: only the contents tell
  fs.appendFileSync(u('etc/hosts'), '10.0.0.1 db\n');
  fs.rmSync(u('gone'), { recursive: true });
  fs.rmSync(u('rm-me'));
  fs.rmSync(u('ln'));
  fs.symlinkSync('etc/untouched', u('ln'));
  fs.chmodSync(u('perm'), 0o4711);
  fsNative.lsetxattr(u('perm'), 'user.keep', Buffer.from('v2'));
  fsNative.lsetxattr(u('perm'), 'security.capability', CAP);
  fs.rmSync(u('typechange'), { recursive: true });
  fs.writeFileSync(u('typechange'), 'now a file');
  fs.mkdirSync(u('new/deeper'), { recursive: true });
  fs.writeFileSync(u('new/deeper/a'), 'hard');
  fs.linkSync(u('new/deeper/a'), u('new/b'));
  fs.lchownSync(u('new/b'), 4242, 4343);
  fsNative.mknod(u('new/tty'), fs.constants.S_IFCHR | 0o620, 4, 1);
  fsNative.mknod(u('new/pipe'), fs.constants.S_IFIFO | 0o600, 0, 0);
  fs.writeFileSync(u('bin/added'), 'in an unchanged dir');
  fs.mkdirSync(u('lost+found')); // ext4's, never part of a diff

  const { stats, tar } = await diffToBuffer(lower, upper);
  t.deepEqual(stats.deleted.sort(), ['gone', 'rm-me']);
  t.deepEqual(
    stats.changed.sort(),
    ['bin/added', 'etc/hosts', 'etc/same', 'ln', 'new', 'new/b', 'new/deeper', 'new/deeper/a', 'new/pipe', 'new/tty', 'perm', 'typechange'].sort(),
  );
  t.deepEqual(stats.parents.sort(), ['bin', 'etc'], 'unchanged parents of changes come along, as in Docker');
  const listing = execFileSync('tar', ['-tvf', '-'], { input: tar }).toString();
  t.regex(listing, /\.wh\.gone\n/);
  t.regex(listing, /new\/(b|deeper\/a) link to new\/(deeper\/a|b)/, 'hard link kept as a tar link');
  const names = execFileSync('tar', ['-tf', '-'], { input: tar }).toString().split('\n');
  for (const absent of ['lost+found/', 'etc/untouched', 'bin/tool']) t.false(names.includes(absent), absent);

  const applied = await applyLayer(Readable.from([tar]), rebuilt);
  t.is(applied.whiteouts, 2);
  fs.rmdirSync(u('lost+found'));
  const want = snapshot(upper);
  const got = snapshot(rebuilt);
  t.deepEqual([...got.nodes.keys()], [...want.nodes.keys()]);
  for (const [rel, node] of want.nodes) t.deepEqual(got.nodes.get(rel), node, rel);
  t.deepEqual(got.links, want.links);
});

test('diff: against nothing it writes the whole tree; an identical copy gives an empty diff', async (t) => {
  const dir = tempDir(t);
  const tree = path.join(dir, 'tree');
  fs.mkdirSync(tree);
  for (const layer of LOWER) await apply(layer, tree);
  const copy = path.join(dir, 'copy');
  cpa(tree, copy);

  const full = await diffToBuffer(null, tree);
  t.deepEqual(full.stats.changed.sort(), [...snapshot(tree).nodes.keys()].sort());
  t.deepEqual(full.stats.deleted, []);
  const fresh = path.join(dir, 'fresh');
  fs.mkdirSync(fresh);
  await applyLayer(Readable.from([full.tar]), fresh);
  t.deepEqual(snapshot(fresh), snapshot(tree));

  const none = await diffToBuffer(copy, tree);
  t.deepEqual(none.stats, { changed: [], deleted: [], parents: [] });
});

// ------------------------------------------------------------ oci image

const TWO_LAYERS: LayerSpec[] = [
  [
    { type: 'dir', path: 'etc' },
    { type: 'file', path: 'etc/motd', content: 'hello' },
    { type: 'file', path: 'etc/doomed', content: 'deleted by layer 2' },
  ],
  [
    { type: 'whiteout', path: 'etc/doomed' },
    { type: 'file', path: 'etc/extra', content: 'layer 2', xattrs: { 'user.bin': BINARY } },
  ],
];

async function readAll(s: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

for (const compress of [false, true]) {
  test(`oci: a good image opens, verified, with its layers (${compress ? 'gzip' : 'plain'} blobs)`, async (t) => {
    const dir = tempDir(t);
    const file = path.join(dir, 'img.tar');
    const built = await buildOciImage(file, TWO_LAYERS, { name: 'docker.io/library/test:1', compress });
    const tmp = path.join(dir, 'tmp');
    const img = await openImageArchive(file, tmp);
    t.is(img.name, 'docker.io/library/test:1');
    t.deepEqual(
      img.layers.map((l) => l.diffId),
      built.diffIds,
    );
    t.deepEqual(
      img.layers.map((l) => l.digest),
      built.digests,
    );
    t.regex(img.layers[0]!.mediaType, compress ? /tar\+gzip$/ : /tar$/);
    t.deepEqual((img.config.rootfs as { diff_ids: string[] }).diff_ids, built.diffIds);
    for (const [i, spec] of TWO_LAYERS.entries()) t.deepEqual(await readAll(img.openLayer(i)), await layerTar(spec));

    const root = path.join(dir, 'root');
    fs.mkdirSync(root);
    for (let i = 0; i < img.layers.length; i++) await applyLayer(img.openLayer(i), root);
    t.deepEqual(fs.readdirSync(path.join(root, 'etc')).sort(), ['extra', 'motd']);
    t.deepEqual(fsNative.lgetxattr(path.join(root, 'etc/extra'), 'user.bin'), BINARY);
    await img.close();
    t.deepEqual(fs.readdirSync(tmp), [], 'close() removes what it extracted');
  });
}

test('oci: a corrupt blob is refused before anything is returned, leaving no temp files', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'img.tar');
  const built = await buildOciImage(file, TWO_LAYERS, { corrupt: 'blob', compress: true });
  const tmp = path.join(dir, 'tmp');
  const err = await t.throwsAsync(openImageArchive(file, tmp));
  t.true(isThinError(err, 'BAD_ARCHIVE'));
  t.true(err!.message.includes(built.digests[0]!), err!.message);
  t.regex(err!.message, /does not match its digest/);
  t.notRegex(err!.message, /\n/);
  t.deepEqual(fs.readdirSync(tmp), []);
});

test('oci: a layer whose content does not match its diff_id is refused, leaving no temp files', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'img.tar');
  const built = await buildOciImage(file, TWO_LAYERS, { corrupt: 'diffid', compress: true });
  const tmp = path.join(dir, 'tmp');
  const err = await t.throwsAsync(openImageArchive(file, tmp));
  t.true(isThinError(err, 'BAD_ARCHIVE'));
  t.regex(err!.message, /layer 2 .* does not match its diff_id/);
  t.true(err!.message.includes(built.diffIds[1]!), 'names the real hash');
  t.deepEqual(fs.readdirSync(tmp), []);
});

test('oci: the legacy docker save format opens (layer.tar files and symlinks into blobs/)', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'legacy.tar');
  const built = await buildOciImage(file, TWO_LAYERS, { name: 'legacy:latest', format: 'docker-legacy' });
  const listing = execFileSync('tar', ['-tvf', file]).toString();
  t.regex(listing, /layer\.tar -> \.\.\/blobs\/sha256\//);
  t.false(/index\.json/.test(listing));
  const tmp = path.join(dir, 'tmp');
  const img = await openImageArchive(file, tmp, { name: 'legacy' });
  t.is(img.name, 'legacy:latest');
  t.deepEqual(
    img.layers.map((l) => l.diffId),
    built.diffIds,
  );
  t.deepEqual(await readAll(img.openLayer(1)), await layerTar(TWO_LAYERS[1]!));
  await img.close();
  t.deepEqual(fs.readdirSync(tmp), []);
});

test('oci: a gzip-compressed image tarball opens; non-archives and wrong names are refused', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'img.tar');
  await buildOciImage(file, TWO_LAYERS, { name: 'x:1' });
  const gz = path.join(dir, 'img.tar.gz');
  fs.writeFileSync(gz, zlib.gzipSync(fs.readFileSync(file)));
  const tmp = path.join(dir, 'tmp');
  const img = await openImageArchive(gz, tmp, { name: 'x:1' });
  t.is(img.layers.length, 2);
  await img.close();

  const wrong = await t.throwsAsync(openImageArchive(file, tmp, { name: 'y:1' }));
  t.true(isThinError(wrong, 'BAD_ARCHIVE'));
  t.regex(wrong!.message, /no image named y:1 \(it holds: x:1/);
  const notImage = path.join(dir, 'plain.tar');
  fs.writeFileSync(notImage, await layerTar([{ type: 'file', path: 'hello', content: 'hi' }]));
  const err = await t.throwsAsync(openImageArchive(notImage, tmp));
  t.true(isThinError(err, 'BAD_ARCHIVE'));
  t.regex(err!.message, /neither index\.json .* nor manifest\.json/);
  t.deepEqual(fs.readdirSync(tmp), []);
});

test('busyboxLayer: a root filesystem that chroot can run', async (t) => {
  const root = tempDir(t, 'busybox');
  await apply(busyboxLayer(), root);
  const out = execFileSync('chroot', [root, '/bin/sh', '-c', 'echo ok > /tmp/f && cat /tmp/f && ls /dev/null']).toString();
  t.is(out, 'ok\n/dev/null\n');
});

test('fs-native: xattrs of a symlink itself, a missing xattr is null, errors carry errno names', (t) => {
  const dir = tempDir(t, 'fsnative');
  const file = path.join(dir, 'f');
  const link = path.join(dir, 'l');
  fs.writeFileSync(file, '');
  fs.symlinkSync('f', link);
  fsNative.lsetxattr(file, 'user.a', BINARY);
  fsNative.lsetxattr(link, 'trusted.b', Buffer.from('on the link'));
  t.deepEqual(fsNative.llistxattr(file), ['user.a']);
  t.deepEqual(fsNative.llistxattr(link), ['trusted.b']);
  t.deepEqual(fsNative.lgetxattr(file, 'user.a'), BINARY);
  t.is(fsNative.lgetxattr(file, 'user.none'), null);
  const err = t.throws(() => fsNative.lgetxattr(path.join(dir, 'missing'), 'user.a'));
  t.is((err as NodeJS.ErrnoException).code, 'ENOENT');
  t.regex(err!.message, /^lgetxattr .*missing: No such file or directory \(ENOENT\)$/);
  t.throws(() => fsNative.mknod(file, fs.constants.S_IFIFO | 0o600, 0, 0), { code: 'EEXIST' });
  t.throws(() => fsNative.lsetxattr(file, 'user.a', 'not a buffer' as unknown as Buffer), { instanceOf: TypeError });
});

test('apply: long and non-ASCII names, long link targets and large ids come through PAX records', async (t) => {
  const root = tempDir(t);
  const long = `${'d'.repeat(120)}/${'e'.repeat(120)}/${'f'.repeat(150)}`;
  await apply(
    [
      { type: 'file', path: 'ünïcode-ç.txt', content: 'u', uid: 3_000_000, gid: 2_500_000 },
      { type: 'file', path: long, content: 'long' },
      { type: 'symlink', path: 'far', target: long },
    ],
    root,
  );
  const u = fs.lstatSync(path.join(root, 'ünïcode-ç.txt'));
  t.deepEqual([u.uid, u.gid], [3_000_000, 2_500_000]);
  t.is(fs.readFileSync(path.join(root, long), 'utf8'), 'long');
  t.is(fs.readlinkSync(path.join(root, 'far')), long);
});
