// `thinfuse fault` end to end (issue 5, "Done when"), on real FUSE, a loop
// device and xfs:
//   1. xfs on a thin device; files written and fsynced;
//   2. `thinfuse fault POOL set error --ops write --device vol`, through the
//      serving daemon's control socket: every write to the device's
//      provisioned blocks (the xfs log among them) fails with EIO, and xfs's
//      metadata EIO max_retries is 0. A further write + fsync fails; xfs
//      reports the error and shuts down. The pool stays rw (data EIO fails
//      the request only);
//   3. `fault clear`, unmount, one mount to replay the log, unmount,
//      `xfs_repair -n` is clean;
//   4. the files fsynced before the fault are intact; thin_check at the end.
//
// Needs root, /dev/fuse, losetup, mkfs.xfs, xfs_repair, thin_check; a
// missing one fails the test. Cleanup as in the other e2e tests
// (test/_helpers/serve.ts).

import test from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { E2E, run, sleep, tf, tfJson, tfOk } from './_helpers/serve.js';

function sha(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** Writes and fsyncs a file; returns its sha256. */
function writeSynced(file: string, bytes: number): string {
  const data = crypto.randomBytes(bytes);
  const fd = fs.openSync(file, 'w');
  try {
    fs.writeSync(fd, data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  return crypto.createHash('sha256').update(data).digest('hex');
}

function errnoOf(fn: () => void): string | undefined {
  try {
    fn();
    return undefined;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
}

test.serial('thinfuse fault: xfs shuts down on write faults; after clear, log replay and xfs_repair -n are clean and synced files intact', async (t) => {
  t.timeout(5 * 60_000);
  const env = await E2E.start(t);
  const P = env.pool;
  env.createPool('4G', '64M');
  tfOk(['create', P, 'vol', '--size', '1G']);
  const serve = await env.serve();
  const dev = env.attach('vol');
  env.mkfs('xfs', dev);
  let dir = env.mount(dev, 'vol');

  // 1. files written and synced
  const sums = new Map<string, string>();
  for (let i = 0; i < 12; i++) sums.set(`f${i}`, writeSynced(path.join(dir, `f${i}`), (64 + i * 37) * 1024));
  fs.mkdirSync(path.join(dir, 'sub'));
  sums.set('sub/g', writeSynced(path.join(dir, 'sub', 'g'), 3 * 1024 * 1024));
  run('sync', ['-f', dir]);

  // 2. writes fail: xfs gives up on metadata EIO at once, the fault covers the log
  const retries = `/sys/fs/xfs/${path.basename(dev)}/error/metadata/EIO/max_retries`;
  if (fs.existsSync(retries)) fs.writeFileSync(retries, '0');
  else t.log(`${retries} is missing; relying on the log write failing`);
  const f = tfJson<{ id: number; ranges: Array<[number, number]>; device: { unmappedSectors: number } }>(['fault', P, 'set', 'error', '--ops', 'write', '--device', 'vol']);
  t.true(f.ranges.length > 0, 'the fault covers the provisioned blocks of vol');
  t.log(`fault ${f.id}: ${f.ranges.length} data ranges, ${f.device.unmappedSectors} unprovisioned sectors not covered`);
  const listed = tfJson<Array<{ id: number; kind: string }>>(['fault', P, 'ls']);
  t.deepEqual(listed.map((x) => [x.id, x.kind]), [[f.id, 'error']], 'fault ls, through the daemon');
  t.true(fs.existsSync(path.join(P, 'faults.json')), 'the daemon persists the fault list');

  const failed = errnoOf(() => writeSynced(path.join(dir, 'after-fault'), 1024 * 1024));
  t.log(`write + fsync after the fault: ${failed ?? 'succeeded'}`);
  // xfs shuts down: every operation then fails with EIO.
  let shutdown: string | undefined;
  const end = Date.now() + 60_000;
  for (let i = 0; !shutdown && Date.now() < end; i++) {
    const e = errnoOf(() => writeSynced(path.join(dir, `probe-${i}`), 4096)) ?? errnoOf(() => fs.readdirSync(dir));
    if (e === 'EIO') shutdown = e;
    else await sleep(500);
  }
  t.is(shutdown, 'EIO', 'xfs reports EIO and has shut down');
  const kmsg = run('dmesg', []);
  const line = kmsg.stdout.split('\n').reverse().find((l) => l.includes(path.basename(dev)) && /shut(ting)? ?down|Shutdown/i.test(l));
  if (line) t.log(`kernel: ${line.trim()}`);
  const info = tfJson<{ mode: string; needsCheck: boolean }>(['info', P]);
  t.is(info.mode, 'rw', 'data write EIO fails the requests only: the pool stays rw');
  t.false(info.needsCheck);

  // 3. clear, unmount, replay the log, xfs_repair -n
  tfOk(['fault', P, 'clear']);
  t.deepEqual(tfJson(['fault', P, 'ls']), []);
  env.umount(dir);
  env.umount(env.mount(dev, 'vol'));
  const repair = env.fsck('xfs', dev);
  t.is(repair.status, 0, `xfs_repair -n after the log replay:\n${repair.stdout}${repair.stderr}`);

  // 4. the synced files are intact
  dir = env.mount(dev, 'vol');
  for (const [name, sum] of sums) t.is(sha(path.join(dir, name)), sum, `${name} is intact`);
  env.umount(dir);
  await env.detach('vol');
  const exit = await serve.stop();
  t.deepEqual(exit, { code: 0, signal: null }, serve.log());
  const tc = run('thin_check', [path.join(P, 'metadata')]);
  t.is(tc.status, 0, `thin_check: ${tc.stdout}${tc.stderr}`);
  const ck = tf(['check', P]);
  t.is(ck.status, 0, `thinfuse check: ${ck.stdout}${ck.stderr}`);
});
