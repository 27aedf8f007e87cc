// `thinfuse serve` and the commands that go through its control socket, on
// real FUSE and loop devices (issue 3): a second serve of a pool, a missing
// or busy mountpoint, removing an attached device, commands through the
// socket showing in the mount at once, `write` through the socket seen on
// the attached loop device, the SIGTERM refusal while a device is attached,
// and `serve --daemon`.
//
// Each failure must be one line on stderr and a non-zero exit.

import test, { type ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { alive, E2E, MiB, mountAt, type Ran, run, runOk, sleep, tf, tfBuf, tfJson, tfOk, umountSync, waitGoneSync } from './_helpers/serve.js';

/**
 * Non-zero, nothing on stdout, exactly one error line on stderr; returns it.
 * A foreground serve may also print its own log lines ("thinfuse serve: ...")
 * before it fails; where writing /proc/self/oom_score_adj is not allowed
 * (no CAP_SYS_RESOURCE, as in some containers) it logs that it could not
 * lower it, before it even tries the pool lock. Those are logged, not counted.
 */
function oneLineFailure(t: ExecutionContext, r: Ran, what: string): string {
  t.not(r.status, 0, `${what}: should fail`);
  t.is(r.stdout, '', `${what}: nothing on stdout`);
  const lines = r.stderr.trimEnd().split('\n');
  const logLines = lines.filter((l) => l.startsWith('thinfuse serve: '));
  if (logLines.length > 0) t.log(`${what}: serve also logged: ${logLines.join(' | ')}`);
  const errors = lines.filter((l) => !l.startsWith('thinfuse serve: '));
  t.is(errors.length, 1, `${what}: one error line on stderr, got:\n${r.stderr}`);
  return errors[0] ?? '';
}

function names(dir: string): string[] {
  return fs.readdirSync(dir).sort();
}

function statCode(p: string): string | undefined {
  try {
    fs.statSync(p);
    return undefined;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code;
  }
}

/** Reads `length` bytes at `offset` of a block device with dd (iflag=direct or through its page cache). */
function ddReadBin(env: E2E, dev: string, offset: number, length: number, direct: boolean): Buffer {
  const out = env.path(`dd-${crypto.randomBytes(4).toString('hex')}`);
  runOk('dd', [`if=${dev}`, `of=${out}`, 'bs=65536', `skip=${offset / 65536}`, `count=${length / 65536}`, 'status=none', ...(direct ? ['iflag=direct'] : [])]);
  const b = fs.readFileSync(out);
  fs.rmSync(out);
  return b;
}

async function poolWithBase(t: ExecutionContext): Promise<E2E> {
  const env = await E2E.start(t);
  env.createPool('1G', '64M');
  tfOk(['create', env.pool, 'base', '--size', '64M']);
  return env;
}

test.serial('a second serve of a served pool fails with one line naming the pid; the first keeps serving', async (t) => {
  const env = await poolWithBase(t);
  const serve = await env.serve();
  const other = env.path('mnt2');
  fs.mkdirSync(other);

  const fg = oneLineFailure(t, tf(['serve', env.pool, other], { timeoutMs: 30_000 }), 'second serve (foreground)');
  t.true(fg.includes(String(serve.pid)), `names the pid ${serve.pid}: ${fg}`);
  const bg = oneLineFailure(t, tf(['serve', env.pool, other, '--daemon'], { timeoutMs: 30_000 }), 'second serve --daemon');
  t.true(bg.includes(String(serve.pid)), `names the pid ${serve.pid}: ${bg}`);
  t.is(mountAt(other), undefined, 'nothing mounted at the second mountpoint');

  t.deepEqual(names(env.mnt), ['base'], 'the first serve still serves');
  t.is(tfJson(['info', env.pool]).mountpoint, env.mnt, 'commands still reach the first serve');
  t.deepEqual(await serve.stop(), { code: 0, signal: null });
});

// serve takes the pool lock before it looks at the mountpoint, so a second
// serve of a served pool names the holder even on the same mountpoint.
test.serial('a second serve of a served pool on the same mountpoint names the pid', async (t) => {
  const env = await poolWithBase(t);
  const serve = await env.serve();
  const err = oneLineFailure(t, tf(['serve', env.pool, env.mnt], { timeoutMs: 30_000 }), 'second serve, same mountpoint');
  t.true(err.includes(String(serve.pid)), `names the pid ${serve.pid}: ${err}`);
  t.deepEqual(names(env.mnt), ['base'], 'the first serve still serves');
  t.deepEqual(await serve.stop(), { code: 0, signal: null });
});

test.serial('a missing or a busy mountpoint: one clear line, non-zero exit, nothing changed', async (t) => {
  const env = await poolWithBase(t);
  const missing = env.path('nope');
  for (const daemon of [false, true]) {
    const err = oneLineFailure(t, tf(['serve', env.pool, missing, ...(daemon ? ['--daemon'] : [])], { timeoutMs: 30_000 }), `missing mountpoint${daemon ? ' (--daemon)' : ''}`);
    t.regex(err, /nope.*(does not exist|no such|missing)/i);
  }
  t.false(fs.existsSync(missing), 'serve does not create the mountpoint');

  const busy = env.path('busy');
  fs.mkdirSync(busy);
  runOk('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'thinfuse-test-tmpfs', busy]);
  env.stack.push(`umount ${busy}`, () => {
    if (mountAt(busy)) umountSync(busy);
  });
  fs.writeFileSync(path.join(busy, 'marker'), 'still here');
  for (const daemon of [false, true]) {
    const err = oneLineFailure(t, tf(['serve', env.pool, busy, ...(daemon ? ['--daemon'] : [])], { timeoutMs: 30_000 }), `busy mountpoint${daemon ? ' (--daemon)' : ''}`);
    t.regex(err, /busy/i);
    t.true(err.includes(busy), `names the mountpoint: ${err}`);
  }
  t.is(mountAt(busy)?.fstype, 'tmpfs', 'the tmpfs is still mounted, and only it');
  t.is(fs.readFileSync(path.join(busy, 'marker'), 'utf8'), 'still here');
  umountSync(busy);

  // The failed attempts left the pool free: it serves fine now.
  const serve = await env.serve();
  t.deepEqual(names(env.mnt), ['base']);
  t.deepEqual(await serve.stop(), { code: 0, signal: null });
});

test.serial('commands through the socket: status, ls, create, snapshot, remove show in the mount at once; remove of an attached device is refused', async (t) => {
  const env = await poolWithBase(t);
  const P = env.pool;
  const serve = await env.serve();

  // status and ls through the daemon (info names the mountpoint only then).
  t.is(tfJson(['info', P]).mountpoint, env.mnt);
  const st = tfJson(['status', P]);
  t.deepEqual(st.devices.map((d: { name: string }) => d.name), ['base']);
  t.deepEqual(tfJson(['ls', P]).map((r: { name: string }) => r.name), ['base']);

  tfOk(['create', P, 'extra', '--size', '32M']);
  t.deepEqual(names(env.mnt), ['base', 'extra'], 'a created device appears at once');
  t.is(fs.statSync(path.join(env.mnt, 'extra')).size, 32 * MiB);
  tfOk(['snapshot', P, 'base', 'snap1']);
  t.deepEqual(names(env.mnt), ['base', 'extra', 'snap1'], 'a snapshot appears at once');
  tfOk(['remove', P, 'extra']);
  t.deepEqual(names(env.mnt), ['base', 'snap1'], 'a removed device disappears at once');
  t.is(statCode(path.join(env.mnt, 'extra')), 'ENOENT');

  // remove while attached: refused (DEV_BUSY), the device survives.
  const dev = env.attach('base');
  const pattern = crypto.randomBytes(MiB);
  fs.writeFileSync(env.path('pattern'), pattern);
  runOk('dd', [`if=${env.path('pattern')}`, `of=${dev}`, 'bs=65536', 'oflag=direct', 'status=none']);
  const r = tf(['remove', P, 'base']);
  oneLineFailure(t, r, 'remove of an attached device');
  t.regex(r.stderr, /base/);
  const rj = tf(['remove', P, 'base', '--json']);
  t.not(rj.status, 0);
  t.is(JSON.parse(rj.stdout).error.code, 'DEV_BUSY');
  t.deepEqual(names(env.mnt), ['base', 'snap1'], 'base is still served');
  t.true(tfJson(['ls', P]).some((x: { name: string }) => x.name === 'base'), 'base is still in the pool');
  t.true(ddReadBin(env, dev, 0, MiB, true).equals(pattern), 'the attached device still reads its data');
  t.true(alive(serve.pid), 'serve is fine');

  // `write` through the socket: the attached loop device shows the new bytes,
  // read direct and read through its page cache (which the daemon flushes).
  const at = 4 * MiB;
  const before = ddReadBin(env, dev, at, 65536, false); // fills the page cache with the old bytes
  t.true(before.equals(Buffer.alloc(65536)), 'unwritten bytes read as zeros');
  const fresh = crypto.randomBytes(65536);
  tfOk(['write', P, 'base', '--offset', String(at)], { input: fresh });
  t.true(ddReadBin(env, dev, at, 65536, true).equals(fresh), 'dd iflag=direct sees what write put there');
  t.true(ddReadBin(env, dev, at, 65536, false).equals(fresh), 'a buffered read of the loop device sees it too (page cache flushed)');
  t.true(tfBuf(['read', P, 'base', '--offset', String(at), '--length', '65536']).equals(fresh), 'read through the socket sees it');
  t.true(tfBuf(['read', P, 'snap1', '--offset', String(at), '--length', '65536']).equals(Buffer.alloc(65536)), 'the older snapshot does not');

  // detach by /dev/loopN; then the removal goes through.
  await env.detach(dev);
  tfOk(['remove', P, 'base']);
  t.deepEqual(names(env.mnt), ['snap1'], 'removed base disappears');
  t.deepEqual(await serve.stop(), { code: 0, signal: null }, serve.log());
  const tc = run('thin_check', [path.join(P, 'metadata')]);
  t.is(tc.status, 0, tc.stdout + tc.stderr);
});

test.serial('serve refuses SIGTERM while a device is attached (one log line), stops with 0 once detached', async (t) => {
  const env = await poolWithBase(t);
  const serve = await env.serve();
  const dev = env.attach('base');
  serve.signal('SIGTERM');
  await sleep(2_000);
  t.is(serve.exited, undefined, 'serve is still running');
  t.truthy(mountAt(env.mnt), 'and still mounted');
  const refusals = serve.log().split('\n').filter((l) => /refus/i.test(l));
  t.is(refusals.length, 1, `one log line about the refusal:\n${serve.log()}`);
  t.regex(refusals[0] ?? '', /base/, 'naming the open device');
  t.is(ddReadBin(env, dev, 0, 65536, true).length, 65536, 'the device still works');

  await env.detach('base');
  const exit = await serve.stop();
  t.deepEqual(exit, { code: 0, signal: null }, serve.log());
  t.is(mountAt(env.mnt), undefined, 'unmounted');
});

test.serial('serve --daemon returns once serving, writes P/serve.pid, and stops on SIGTERM', async (t) => {
  const env = await poolWithBase(t);
  const d = env.serveDaemon();
  t.regex(d.stdout, new RegExp(`pid ${d.pid}`));
  t.true(alive(d.pid), 'the pid in serve.pid is alive');
  t.is(mountAt(env.mnt)?.fstype.startsWith('fuse'), true, 'mounted when serve --daemon returns');
  t.deepEqual(names(env.mnt), ['base']);
  t.is(tfJson(['info', env.pool]).mountpoint, env.mnt);
  process.kill(d.pid, 'SIGTERM');
  t.true(waitGoneSync(d.pid, 20_000), 'stopped on SIGTERM');
  d.disarm();
  t.is(mountAt(env.mnt), undefined, 'unmounted');
});
