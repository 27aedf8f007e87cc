// Crash tests (issue 3, "Done when"): kill -9 of `thinfuse serve` (its pid
// only) while a writer appends to a file on a mounted xfs, fsyncing every N
// records and logging each fsync that succeeded; three rounds on one pool,
// with different N and kill times. The xfs above the dead FUSE
// mount then gets I/O errors and shuts down. We clean up without a lazy
// unmount, in the one order that works: umount the xfs (a shut-down xfs
// unmounts), losetup -d, then clear the dead FUSE mount (fusermount -u).
// Then the pool opens, thin_check and thinfuse check pass, serve starts
// again, one mount replays the xfs log, xfs_repair -n is clean, and every
// record up to the last logged fsync reads back intact (this round's, and
// every earlier round's).
//
// The host page cache survives a process kill, so this cannot prove
// durability against power loss on its own; it proves the pool's on-disk
// state after a daemon crash is consistent and holds what fsync promised.
//
// A second test: kill -9 with nothing attached leaves a dead FUSE mount;
// serve on the same mountpoint clears it itself (foreground and --daemon).

import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { checkRecords, lastSynced, syncedLog, WRITER } from './_helpers/records.js';
import { alive, E2E, mountAt, mountTable, run, runOk, sleep, tf, tfOk, waitGoneSync } from './_helpers/serve.js';

const RECORD = 4096;

function statError(p: string): string | undefined {
  try {
    fs.statSync(p);
    return undefined;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code;
  }
}

/** One crash round: how the writer ran and where it got to. */
interface Round {
  file: string;
  syncEvery: number;
  killAfterMs: number;
  last?: number;
}

const ROUNDS: Round[] = [
  { file: 'records-0', syncEvery: 16, killAfterMs: 3_000 },
  { file: 'records-1', syncEvery: 4, killAfterMs: 1_500 },
  { file: 'records-2', syncEvery: 64, killAfterMs: 4_500 },
];

test.serial('kill -9 of serve under fsync load: clean non-lazy teardown, pool and xfs consistent, fsynced records intact', async (t) => {
  t.timeout(5 * 60_000);
  const env = await E2E.start(t);
  const P = env.pool;
  env.createPool('16G', '256M');
  tfOk(['create', P, 'base', '--size', '10G']);
  let serve = await env.serve();
  let dev = env.attach('base');
  env.mkfs('xfs', dev);
  let fsDir = env.mount(dev, 'base');

  // Each round crashes the daemon under a writer, recovers, and checks every
  // round so far; the next round writes on the recovered filesystem.
  for (const [i, round] of ROUNDS.entries()) {
    const log = env.path(`writer-${i}.log`);
    const started = Date.now();
    const writer = env.spawn(process.execPath, [WRITER, path.join(fsDir, round.file), log, String(RECORD), String(round.syncEvery)], `writer-${i}`);
    const end = Date.now() + 60_000;
    while (syncedLog(log).length < 100 || Date.now() - started < round.killAfterMs) {
      if (writer.exited) throw new Error(`round ${i}: the writer stopped before the kill: ${writer.log()}`);
      if (Date.now() > end) throw new Error(`round ${i}: the writer logged only ${syncedLog(log).length} fsyncs in 60 s`);
      await sleep(50);
    }

    // kill -9 of serve, and only serve.
    const killed = await serve.kill9();
    t.is(killed.signal, 'SIGKILL');
    // The writer's next fsync fails (EIO); if it is stuck, stop it (it is ours).
    let we = await writer.waitExit(30_000);
    if (!we) {
      t.log(`round ${i}: the writer did not stop by itself within 30 s; killing it`);
      writer.signal('SIGKILL');
      we = await writer.waitExit(10_000);
    }
    t.truthy(we, 'the writer is gone');
    round.last = lastSynced(log);
    t.true(round.last >= 100 * round.syncEvery - 1, `round ${i}: last synced record ${round.last}`);
    t.log(`round ${i}: killed serve (pid ${serve.pid}) after ${((Date.now() - started) / 1000).toFixed(1)} s; ` +
      `${syncedLog(log).length} fsyncs (every ${round.syncEvery} records) logged, last synced record ${round.last}; ` +
      `writer: ${writer.log().trim() || '(no output)'} (exit ${we?.code ?? we?.signal})`);

    // The FUSE mount is dead (ENOTCONN) but still mounted.
    t.truthy(mountAt(env.mnt), 'the dead FUSE mount is still there');
    t.is(statError(path.join(env.mnt, 'base')), 'ENOTCONN');

    // Non-lazy cleanup: the xfs first (it has shut down on the I/O errors),
    // then the loop device, then the dead FUSE mount.
    env.umount(fsDir);
    t.is(mountAt(fsDir), undefined, 'the xfs is unmounted');
    runOk('losetup', ['-d', dev]);
    t.is(fs.existsSync(`/sys/block/${path.basename(dev)}/loop/backing_file`), false, `${dev} is detached`);
    runOk('fusermount', ['-u', env.mnt]);
    t.is(mountAt(env.mnt), undefined, 'the dead FUSE mount is cleared');

    // The pool opens; thin_check and thinfuse check pass.
    const tc = run('thin_check', [path.join(P, 'metadata')]);
    t.is(tc.status, 0, `round ${i}: thin_check after the crash: ${tc.stdout}${tc.stderr}`);
    const ck = tf(['check', P]);
    t.is(ck.status, 0, `round ${i}: thinfuse check after the crash: ${ck.stdout}${ck.stderr}`);

    // Serve again; one mount replays the xfs log; then xfs_repair -n is clean.
    serve = await env.serve();
    dev = env.attach('base');
    env.umount(env.mount(dev, 'base'));
    const repair = run('xfs_repair', ['-n', dev]);
    t.is(repair.status, 0, `round ${i}: xfs_repair -n after the log replay:\n${repair.stdout}${repair.stderr}`);

    // Every record up to the last logged fsync reads back intact, this round's and the earlier ones'.
    fsDir = env.mount(dev, 'base');
    for (const r of ROUNDS.slice(0, i + 1)) {
      const file = path.join(fsDir, r.file);
      t.deepEqual(checkRecords(file, r.last!, RECORD), [], `round ${i}: ${r.file}: a record before the last logged fsync is lost or damaged`);
    }
    const size = fs.statSync(path.join(fsDir, round.file)).size;
    t.log(`round ${i}: ${round.file} after the crash: ${size / RECORD} records (${round.last + 1} synced)`);
  }

  env.umount(fsDir);
  await env.detach('base');
  const exit = await serve.stop();
  t.deepEqual(exit, { code: 0, signal: null }, serve.log());
  const tc = run('thin_check', [path.join(P, 'metadata')]);
  t.is(tc.status, 0, `thin_check at the end: ${tc.stdout}${tc.stderr}`);
  const ck = tf(['check', P]);
  t.is(ck.status, 0, `thinfuse check at the end: ${ck.stdout}${ck.stderr}`);
});

test.serial('after kill -9 with nothing attached, serve clears its own stale mount and serves again', async (t) => {
  t.timeout(2 * 60_000);
  const env = await E2E.start(t);
  const P = env.pool;
  env.createPool('1G', '64M');
  tfOk(['create', P, 'base', '--size', '64M']);

  // foreground serve, killed; then foreground serve on the same mountpoint.
  const s1 = await env.serve();
  await s1.kill9();
  t.truthy(mountAt(env.mnt), 'kill -9 leaves the FUSE mount behind');
  t.is(statError(env.mnt), 'ENOTCONN');
  const s2 = await env.serve();
  t.regex(s2.log(), /stale/, 'serve says it cleared a stale mount');
  t.is(mountTable().filter((m) => m.mountpoint === env.mnt).length, 1, 'exactly one mount at the mountpoint');
  t.deepEqual(fs.readdirSync(env.mnt), ['base']);
  t.is(fs.statSync(path.join(env.mnt, 'base')).size, 64 * 2 ** 20);

  // and once more, restarting with --daemon.
  await s2.kill9();
  t.is(statError(env.mnt), 'ENOTCONN');
  const d = env.serveDaemon();
  t.is(mountTable().filter((m) => m.mountpoint === env.mnt).length, 1, 'exactly one mount at the mountpoint');
  t.deepEqual(fs.readdirSync(env.mnt), ['base']);
  t.regex(fs.readFileSync(path.join(P, 'serve.log'), 'utf8'), /stale/);
  const st = tfOk(['status', P]);
  t.regex(st, /^base: 0 131072 thin /m);

  process.kill(d.pid, 'SIGTERM');
  t.true(waitGoneSync(d.pid, 20_000), 'serve --daemon stops on SIGTERM');
  d.disarm();
  t.false(alive(d.pid));
  t.is(mountAt(env.mnt), undefined, 'and unmounts');
  const tc = run('thin_check', [path.join(P, 'metadata')]);
  t.is(tc.status, 0, tc.stdout + tc.stderr);
});
