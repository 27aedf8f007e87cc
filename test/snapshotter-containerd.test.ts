// The snapshotter under a real containerd 1.6 (issue 13): containerd started
// with its own config (root, state and sockets in the test's dir, thinfuse as
// [proxy_plugins.thinfuse]), `ctr image import --snapshotter thinfuse` of a
// busybox OCI image, `ctr run --rm` of it printing ok, a detached container
// running on through a restart of the snapshotter, the image removed
// with a synchronous garbage collection taking its snapshots and devices
// with it, and thin_check clean at the end.
//
// Needs root, /dev/fuse, containerd, ctr, runc, losetup, mkfs.ext4,
// thin_check; a missing one fails the test. containerd and the snapshotter
// are stopped by their PIDs, mounts and loop devices undone, in t.teardown.

import test from 'ava';
import fs from 'node:fs';
import { buildOciImage, busyboxLayer } from './_helpers/oci-build.js';
import { checkPoolOffline, pushStoreUndo } from './_helpers/layers.js';
import { E2E, run, runOk, sleep, tfJson, which } from './_helpers/serve.js';
import { SnapClient, startSnapshotter, stopSnapshotter } from './_helpers/snapshotter.js';

const IMAGE = 'thinfuse.test/busybox:1';

function containerdConfig(env: E2E, snapSocket: string): string {
  const file = env.path('containerd.toml');
  fs.writeFileSync(file, [
    'version = 2',
    `root = "${env.path('ctd', 'root')}"`,
    `state = "${env.path('ctd', 'state')}"`,
    'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
    '[grpc]',
    `  address = "${env.path('ctd', 'containerd.sock')}"`,
    '[ttrpc]',
    `  address = "${env.path('ctd', 'containerd.sock.ttrpc')}"`,
    '[debug]',
    `  address = "${env.path('ctd', 'debug.sock')}"`,
    '[metrics]',
    '  address = ""',
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = "${env.path('ctd', 'opt')}"`,
    '[proxy_plugins]',
    '  [proxy_plugins.thinfuse]',
    '    type = "snapshot"',
    `    address = "${snapSocket}"`,
    '',
  ].join('\n'));
  return file;
}

function devices(pool: string): string[] {
  return tfJson<Array<{ name: string | null }>>(['ls', pool]).map((d) => d.name ?? '(unnamed)').sort();
}

/**
 * The pool's devices once they are `want`, or what they are after a minute:
 * containerd removes a deleted container's snapshot from the snapshotter in
 * its garbage collection, which runs soon after, not before the command returns.
 */
async function settledDevices(pool: string, want: string[]): Promise<string[]> {
  const end = Date.now() + 60_000;
  let have = devices(pool);
  while (JSON.stringify(have) !== JSON.stringify(want) && Date.now() < end) {
    await sleep(500);
    have = devices(pool);
  }
  return have;
}

test.serial('containerd: image import and ctr run --rm through the thinfuse proxy snapshotter', async (t) => {
  t.timeout(10 * 60_000);
  const missing = ['containerd', 'ctr', 'runc'].filter((c) => !which(c));
  if (missing.length > 0) throw new Error(`${missing.join(', ')} not found: apt-get install containerd runc`);
  const env = await E2E.start(t, 'thinfuse-ctd-');
  pushStoreUndo(env);
  let snap = await startSnapshotter(env);
  t.falsy(snap.child.exited, snap.child.log());
  const addr = env.path('ctd', 'containerd.sock');
  const ctr = (args: string[]) => run('ctr', ['--address', addr, ...args], { timeoutMs: 300_000 });
  const ctrOk = (args: string[]) => runOk('ctr', ['--address', addr, ...args], { timeoutMs: 300_000 });

  fs.mkdirSync(env.path('ctd'), { recursive: true });
  const ctd = env.spawn('containerd', ['--config', containerdConfig(env, snap.socket)], 'containerd');
  // Undone before containerd stops (the stack is LIFO): a container a failed test left behind.
  env.stack.push('remove containers c1, c2', () => {
    if (ctd.exited) return;
    for (const id of ['c1', 'c2']) {
      ctr(['task', 'kill', '-s', 'SIGKILL', id]);
      ctr(['task', 'rm', '-f', id]);
      ctr(['container', 'rm', id]);
    }
  });
  const end = Date.now() + 60_000;
  while (ctr(['version']).status !== 0) {
    if (ctd.exited || Date.now() > end) throw new Error(`containerd did not come up: ${ctd.log()}`);
    await sleep(200);
  }
  t.regex(ctrOk(['plugins', 'ls']), /io\.containerd\.snapshotter\.v1\s+thinfuse\s+-\s+ok/);

  // 1. import: each layer unpacked into a thin snapshot of the one below.
  const tar = env.path('busybox.tar');
  await buildOciImage(tar, [
    [...busyboxLayer(), { type: 'file', path: 'etc/gone.txt', content: 'deleted by layer 2\n' }],
    [{ type: 'whiteout', path: 'etc/gone.txt' }, { type: 'file', path: 'etc/motd', content: 'hello from layer 2\n' }],
  ], { name: IMAGE, compress: true });
  ctrOk(['image', 'import', '--snapshotter', 'thinfuse', tar]);
  const snaps = ctrOk(['snapshot', '--snapshotter', 'thinfuse', 'ls']).trim().split('\n').slice(1);
  t.is(snaps.length, 2, snaps.join('\n'));
  t.true(snaps.every((l) => /\sCommitted\s*$/.test(l)), snaps.join('\n'));
  t.deepEqual(devices(env.pool), ['layer/base', 'layer/ctd-1', 'layer/ctd-2']);

  // 2. run: the container's rootfs is a third snapshot, mounted by the shim.
  const r = ctr(['run', '--rm', '--snapshotter', 'thinfuse', IMAGE, 'c1', '/bin/sh', '-c', 'echo ok; cat /etc/motd; test -e /etc/gone.txt || echo whiteout-ok']);
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout, 'ok\nhello from layer 2\nwhiteout-ok\n');
  const layers = ['layer/base', 'layer/ctd-1', 'layer/ctd-2'];
  t.deepEqual(await settledDevices(env.pool, layers), layers, "--rm removed the container's snapshot (in containerd's gc)");

  // 3. a running container outlives a restart of the snapshotter: its rootfs stays mounted.
  ctrOk(['run', '-d', '--snapshotter', 'thinfuse', IMAGE, 'c2', '/bin/sh', '-c', 'sleep 600']);
  t.is(await stopSnapshotter(snap), 0, snap.child.log());
  snap = await startSnapshotter(env);
  t.falsy(snap.child.exited, snap.child.log());
  t.is(ctrOk(['task', 'exec', '--exec-id', 'e1', 'c2', '/bin/sh', '-c', 'echo alive > /f; cat /f /etc/motd']), 'alive\nhello from layer 2\n');
  // containerd reconnects to the restarted snapshotter (its proxy's gRPC backoff is at most 3 s).
  const back = Date.now() + 60_000;
  while (ctr(['snapshot', '--snapshotter', 'thinfuse', 'ls']).status !== 0 && Date.now() < back) await sleep(500);
  ctrOk(['task', 'kill', '-s', 'SIGKILL', 'c2']);
  const dead = Date.now() + 60_000;
  while (!/STOPPED/.test(ctrOk(['task', 'ls'])) && Date.now() < dead) await sleep(200);
  ctrOk(['task', 'rm', 'c2']);
  ctrOk(['container', 'rm', 'c2']);
  t.deepEqual(await settledDevices(env.pool, layers), layers, "container rm removed c2's snapshot (in containerd's gc)");

  // 4. image rm --sync: containerd's garbage collection removes the layers' snapshots.
  ctrOk(['image', 'rm', '--sync', IMAGE]);
  const client = new SnapClient(snap.socket);
  t.teardown(() => client.close());
  const gcEnd = Date.now() + 60_000;
  while ((await client.list('')).length > 0 && Date.now() < gcEnd) await sleep(500);
  t.deepEqual(await client.list(''), [], "containerd's gc removed every snapshot");
  t.deepEqual(await settledDevices(env.pool, ['layer/base']), ['layer/base']);
  client.close();

  // 5. stop containerd, then the snapshotter; the pool checks clean.
  ctd.signal('SIGTERM');
  t.truthy(await ctd.waitExit(60_000), 'containerd stopped on SIGTERM');
  t.is(await stopSnapshotter(snap), 0, snap.child.log());
  checkPoolOffline(t, env.pool);
});
