// The layer store end to end (issue 4, "Done when"), on real FUSE, loop
// devices, xfs and mount: a busybox OCI image of two layers (the second
// deleting a file of the first through a whiteout) imported, a container of
// it mounted and run with chroot, committed into a new image, a container of
// that seeing the file, the committed layer's diff listing exactly that
// file, then everything removed: pool usage back to the base's, the
// auto-started serve gone, thin_check and thinfuse check clean.
//
// Needs root, /dev/fuse, losetup, mkfs.xfs, chroot, thin_check; a missing
// one fails the test. Every mount, loop device and process is undone in
// t.teardown, which fails the test if anything is left behind.

import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { busyboxLayer, buildOciImage } from './_helpers/oci-build.js';
import { checkPoolOffline, checkStore, initStore } from './_helpers/layers.js';
import { E2E, poolUsed, run, runOk, tf, tfBuf, tfJson, tfOk } from './_helpers/serve.js';

function served(pool: string): boolean {
  return fs.existsSync(path.join(pool, 'socket'));
}

test.serial('busybox image: import, container, chroot, commit, diff, remove everything', async (t) => {
  t.timeout(8 * 60_000);
  const env = await E2E.start(t, 'thinfuse-layers-');
  const P = env.pool;
  initStore(env);
  const info = tfJson<{ baseDeviceSize: number; backingFilesystem: string; dataSpaceUsed: number }>(['info', P]);
  t.is(info.baseDeviceSize, 512 * 1024 * 1024);
  t.is(info.backingFilesystem, 'xfs');
  const baseUsed = poolUsed(P).used;
  t.false(served(P), 'layer init leaves no serve running');

  // 1. the image: busybox, then a layer deleting /etc/gone.txt by whiteout.
  const image = env.path('bb.tar');
  await buildOciImage(image, [
    [...busyboxLayer(), { type: 'file', path: 'etc/gone.txt', content: 'doomed\n' }, { type: 'file', path: 'etc/kept.txt', content: 'kept\n' }],
    [{ type: 'whiteout', path: 'etc/gone.txt' }, { type: 'file', path: 'etc/motd', content: 'layer two\n' }],
  ], { name: 'bb:latest' });

  // 2. import, container create, container mount.
  const imported = tfJson<{ name: string; layers: string[] }>(['image', 'import', P, image, '--name', 'bb']);
  t.is(imported.layers.length, 2);
  tfOk(['container', 'create', P, 'bb', 'c1']);
  t.false(served(P), 'nothing mounted: the auto-started serve is stopped');
  const root1 = env.path('c1');
  tfOk(['container', 'mount', P, 'c1', root1]);
  t.true(served(P), 'a mounted container keeps the serve up');

  // 3. chroot writes a file; the whited-out file is absent.
  const sh = (root: string, script: string) => runOk('chroot', [root, '/bin/busybox', 'sh', '-c', script]);
  t.is(sh(root1, 'cat /etc/kept.txt /etc/motd'), 'kept\nlayer two\n');
  t.is(sh(root1, 'test -e /etc/gone.txt && echo present || echo absent').trim(), 'absent');
  t.true(fs.existsSync(path.join(root1, 'etc/hosts')) && fs.existsSync(path.join(root1, 'proc')), 'the -init layer made its files');
  sh(root1, 'echo hello from c1 > /hello.txt');
  tfOk(['container', 'unmount', P, 'c1']);
  t.false(served(P));

  // 4. commit, and a container of the new image sees the file.
  const committed = tfJson<{ name: string; top: string; layers: string[] }>(['container', 'commit', P, 'c1', 'bb2']);
  t.deepEqual(committed.layers.slice(0, 2), imported.layers, 'the new image is the old one plus a layer');
  t.is(committed.layers.length, 3);
  tfOk(['container', 'create', P, 'bb2', 'c2']);
  const root2 = env.path('c2');
  tfOk(['container', 'mount', P, 'c2', root2]);
  t.is(sh(root2, 'cat /hello.txt'), 'hello from c1\n');
  t.is(sh(root2, 'test -e /etc/gone.txt && echo present || echo absent').trim(), 'absent');
  tfOk(['container', 'unmount', P, 'c2']);

  // 5. the committed layer's diff lists exactly that file.
  const tar = tfBuf(['layer', 'diff', P, committed.top]);
  const names = runOk('tar', ['-tf', '-'], { input: tar }).split('\n').filter(Boolean);
  t.deepEqual(names, ['hello.txt']);
  const listed = tfJson<{ changed: string[]; deleted: string[] }>(['layer', 'diff', P, committed.top]);
  t.deepEqual(listed.changed, ['hello.txt']);
  t.deepEqual(listed.deleted, []);

  checkStore(t, env, 'before removal');

  // 6. remove everything: usage back to the base's.
  tfOk(['container', 'rm', P, 'c1']);
  tfOk(['container', 'rm', P, 'c2']);
  t.is(tf(['image', 'rm', P, 'nonesuch']).status, 1);
  tfOk(['image', 'rm', P, 'bb2']);
  tfOk(['image', 'rm', P, 'bb']);
  const { layers } = checkStore(t, env, 'after removal');
  t.deepEqual(layers.map((l) => l.id), ['base']);
  t.is(poolUsed(P).used, baseUsed, 'pool data usage is back to the base device\'s');
  t.false(served(P));
  checkPoolOffline(t, P);
  t.is(run('losetup', ['-a']).stdout.split('\n').filter((l) => env.under(l)).length, 0);
});

test.serial('the layer namespace: user names cannot reach it; bad input changes nothing', async (t) => {
  t.timeout(3 * 60_000);
  const env = await E2E.start(t, 'thinfuse-layers-');
  const P = env.pool;
  initStore(env);
  const bad = tf(['create', P, 'layer/x', '--size', '1G']);
  t.is(bad.status, 2);
  t.regex(bad.stderr, /invalid device name 'layer\/x'/);
  t.is(tf(['snapshot', P, 'layer/base', 'layer/y']).status, 2);
  tfOk(['create', P, 'layer', '--size', '1G']);
  tfOk(['layer', 'create', P, 'l1']);
  const corruptBlob = env.path('blob.tar');
  const corruptDiffId = env.path('diffid.tar');
  await buildOciImage(corruptBlob, [busyboxLayer()], { name: 'bad:1', corrupt: 'blob' });
  await buildOciImage(corruptDiffId, [busyboxLayer(), [{ type: 'file', path: 'x', content: 'x' }]], { name: 'bad:2', corrupt: 'diffid' });
  const before = fs.readFileSync(path.join(P, 'layers.json'), 'utf8');
  const used = poolUsed(P).used;
  for (const args of [
    ['layer', 'create', P, 'l1'],
    ['layer', 'create', P, 'x', '--parent', 'nope'],
    ['layer', 'create', P, 'base'],
    ['layer', 'remove', P, 'nope'],
    ['container', 'create', P, 'nope', 'c'],
    ['layer', 'init', P, '--storage-opt', 'dm.bogus=1'],
    ['layer', 'init', P, '--storage-opt', 'dm.basesize=256M'],
    ['image', 'import', P, env.path('missing.tar')],
    ['image', 'import', P, corruptBlob],
    ['image', 'import', P, corruptDiffId],
  ]) {
    const r = tf(args);
    t.not(r.status, 0, args.join(' '));
    t.is(r.stderr.trim().split('\n').length, 1, `${args.join(' ')}: one-line error: ${r.stderr}`);
  }
  t.is(fs.readFileSync(path.join(P, 'layers.json'), 'utf8'), before, 'failed commands left layers.json as it was');
  t.is(poolUsed(P).used, used, 'a failed import leaves nothing behind in the pool');
  // Served by hand: the layer device shows as MNT/layer/<id>, and the store uses that serve.
  const s = await env.serve();
  t.deepEqual(fs.readdirSync(path.join(env.mnt, 'layer')).sort(), ['base', 'l1']);
  t.true(fs.statSync(path.join(env.mnt, 'layer')).isDirectory());
  const dir = tfOk(['layer', 'mount', P, 'l1']).trim();
  fs.writeFileSync(path.join(dir, 'f'), 'x');
  t.is(tf(['remove', P, 'layer/l1']).status, 1, 'an open layer device is refused by remove');
  tfOk(['layer', 'unmount', P, 'l1']);
  tfOk(['layer', 'remove', P, 'l1']);
  t.true(fs.existsSync(path.join(P, 'socket')), 'a serve started by hand is never stopped by the store');
  await s.stop();
  checkStore(t, env, 'end');
  checkPoolOffline(t, P);
});

test.serial('min free space guard, and a grown dm.basesize grows new layers', async (t) => {
  t.timeout(3 * 60_000);
  const env = await E2E.start(t, 'thinfuse-layers-');
  const P = env.pool;
  initStore(env, ['dm.basesize=512M', 'dm.loopdatasize=1G', 'dm.loopmetadatasize=64M']);
  tfOk(['layer', 'create', P, 'big']);
  const dir = tfOk(['layer', 'mount', P, 'big']).trim();
  runOk('dd', ['if=/dev/urandom', `of=${path.join(dir, 'fill')}`, 'bs=1M', 'count=300', 'conv=fsync']);
  tfOk(['layer', 'unmount', P, 'big']);
  const before = fs.readFileSync(path.join(P, 'layers.json'), 'utf8');
  // About 30% of the data space is used: a 75% minimum refuses a new layer.
  const r = tf(['layer', 'create', P, 'more', '--storage-opt', 'dm.min_free_space=75%']);
  t.is(r.status, 1);
  t.regex(r.stderr, /under dm\.min_free_space=75%/);
  t.is(fs.readFileSync(path.join(P, 'layers.json'), 'utf8'), before, 'nothing half-made');
  tfOk(['layer', 'remove', P, 'big']);
  // Grow the base: new layers get the bigger filesystem.
  tfOk(['layer', 'create', P, 'grown', '--storage-opt', 'dm.basesize=768M']);
  const g = tfOk(['layer', 'mount', P, 'grown']).trim();
  const size = fs.statfsSync(g).blocks * fs.statfsSync(g).bsize;
  t.true(size > 600 * 1024 * 1024, `filesystem of the new layer is ${size} bytes`);
  tfOk(['layer', 'unmount', P, 'grown']);
  t.is(tfJson<{ baseDeviceSize: number }>(['info', P]).baseDeviceSize, 768 * 1024 * 1024);
  tfOk(['layer', 'remove', P, 'grown']);
  checkStore(t, env, 'end');
  checkPoolOffline(t, P);
});
