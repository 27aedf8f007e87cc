// thinfuse-ctl (native-deps/thinfuse_ctl.c), the C client of a serving
// daemon's control socket: against a real `thinfuse serve` (create,
// snapshot showing in the mount, status, write/read of data bigger than one
// read buffer, a chain of 50 snapshots), errors the daemon answers (exit 1,
// one line with the code; arguments of the wrong type are refused, not
// crashing serve), no daemon (exit 2, one line), bad usage (exit 64);
// the pool passes thin_check after serve stops. Logs how long 50 chained
// snapshots take through thinfuse-ctl and through the Node CLI.

import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { oracle, tempDir } from './_helpers/pool.js';
import { E2E, ENV, MiB, tfOk } from './_helpers/serve.js';

const CTL = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../native-deps/build/thinfuse-ctl');

interface CtlRun {
  status: number;
  stdout: string;
  stderr: string;
}

function ctl(args: string[]): CtlRun {
  if (!fs.existsSync(CTL)) throw new Error(`${CTL} is missing: run npm run build (node native-deps/build.mjs)`);
  const r = spawnSync(CTL, args, { env: ENV, encoding: 'utf8', timeout: 60_000, maxBuffer: 64 * MiB });
  if (r.error) throw new Error(`could not run thinfuse-ctl ${args.slice(0, 2).join(' ')}: ${r.error.message}`);
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** The result JSON of a successful thinfuse-ctl run. */
function ctlJson<T = any>(args: string[]): T { // eslint-disable-line @typescript-eslint/no-explicit-any
  const r = ctl(args);
  if (r.status !== 0 || r.stderr !== '') throw new Error(`thinfuse-ctl ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

/** Exit `status`, nothing on stdout, one line on stderr; returns it. */
function oneLineFailure(t: ExecutionContext, r: CtlRun, status: number, what: string): string {
  t.is(r.status, status, `${what}: exit ${status} (stderr: ${r.stderr})`);
  t.is(r.stdout, '', `${what}: nothing on stdout`);
  t.regex(r.stderr, /^thinfuse-ctl: [^\n]+\n$/, `${what}: one line on stderr`);
  return r.stderr.trim();
}

test('bad usage exits 64; no serve (no pointer, stale pointer, no pool) exits 2 with one line', (t) => {
  const dir = tempDir(t, 'thinfuse-ctl-');
  const pool = path.join(dir, 'P');
  tfOk(['pool', 'create', pool, '--data-size', '64M', '--metadata-size', '16M']);

  for (const [args, what] of [[[], 'no arguments'], [[pool], 'no op'], [[pool, 'create', 'name'], 'KEY without =']] as const) {
    const r = ctl([...args]);
    t.is(r.status, 64, what);
    t.regex(r.stderr, /^thinfuse-ctl: .*usage: thinfuse-ctl POOL OP/, what);
  }
  const help = ctl(['--help']);
  t.is(help.status, 0);
  t.regex(help.stdout, /control socket/);

  const none = oneLineFailure(t, ctl([pool, 'status']), 2, 'no serve');
  t.true(none.includes(`no thinfuse serve is running for ${pool}`), none);
  t.true(none.includes('thinfuse serve'), `says what to do: ${none}`);

  fs.writeFileSync(path.join(pool, 'socket'), `${path.join(dir, 'gone.sock')}\n999999\n`);
  const stale = oneLineFailure(t, ctl([pool, 'status']), 2, 'stale pointer');
  t.regex(stale, /stale/);

  const missing = oneLineFailure(t, ctl([path.join(dir, 'nope'), 'status']), 2, 'no such pool');
  t.regex(missing, /no such pool directory/);
});

test.serial('thinfuse-ctl drives a served pool: create, snapshot, status, write/read, errors, a chain of 50', async (t) => {
  const env = await E2E.start(t, 'thinfuse-ctl-e2e-');
  env.createPool('1G', '64M');
  const serve = await env.serve();
  const P = env.pool;

  const a = ctlJson<{ name: string; devId: number; size: number }>([P, 'create', 'name=a', `size=${64 * MiB}`]);
  t.like(a, { name: 'a', size: 64 * MiB });
  t.is(fs.statSync(path.join(env.mnt, 'a')).size, 64 * MiB, 'MNT/a appears with its size');

  // 96 KiB of base64 in one argument (an argument's limit is 128 KiB), 4 MiB back
  // in one reply line: many reads into a grown buffer.
  const data = crypto.randomBytes(72 * 1024);
  t.like(ctlJson([P, 'write', 'name=a', `offset=${MiB}`, `data=${data.toString('base64')}`]), { written: data.length });
  const back = ctlJson<{ data: string }>([P, 'read', 'name=a', 'offset=0', `length=${3 * MiB}`]);
  const bytes = Buffer.from(back.data, 'base64');
  t.is(bytes.length, 3 * MiB);
  t.true(bytes.subarray(MiB, MiB + data.length).equals(data), 'read through thinfuse-ctl returns what it wrote');
  const fd = fs.openSync(path.join(env.mnt, 'a'), 'r');
  const viaFuse = Buffer.alloc(data.length);
  fs.readSync(fd, viaFuse, 0, data.length, MiB);
  fs.closeSync(fd);
  t.true(viaFuse.equals(data), 'the FUSE file shows the write');

  const b = ctlJson<{ name: string; devId: number }>([P, 'snapshot', 'origin=a', 'name=b']);
  t.is(b.name, 'b');
  t.true(fs.existsSync(path.join(env.mnt, 'b')), 'MNT/b appears');

  const status = ctlJson<{ data: { used: number; total: number } }>([P, 'status']);
  t.true(status.data.total > 0 && status.data.used > 0, `status parses: ${JSON.stringify(status.data)}`);

  const err = oneLineFailure(t, ctl([P, 'snapshot', 'origin=missing', 'name=c']), 1, 'snapshot of a missing origin');
  t.regex(err, /^thinfuse-ctl: [A-Z_]+: .*missing/);
  t.false(fs.existsSync(path.join(env.mnt, 'c')), 'nothing made');
  const unknown = oneLineFailure(t, ctl([P, 'frobnicate']), 1, 'unknown op');
  t.regex(unknown, /^thinfuse-ctl: EINVAL_ARG: unknown operation 'frobnicate'/);
  const inherited = oneLineFailure(t, ctl([P, 'constructor']), 1, "an Object method as the op");
  t.regex(inherited, /^thinfuse-ctl: EINVAL_ARG: unknown operation 'constructor'/);

  // Names are text even when they look like numbers; the daemon refuses
  // arguments of the wrong type (raw JSON) and keeps serving.
  t.like(ctlJson([P, 'create', 'name=42', `size=${MiB}`]), { name: '42' });
  t.true(fs.readdirSync(env.mnt).includes('42'), 'MNT/42 appears');
  const numberName = oneLineFailure(t, ctl([P, 'create', 'name:=43', `size=${MiB}`]), 1, 'a number as the name');
  t.regex(numberName, /^thinfuse-ctl: EINVAL_ARG: create: argument name must be a string/);
  const textSize = oneLineFailure(t, ctl([P, 'create', 'name=x', 'size=1G']), 1, 'a size with a unit');
  t.regex(textSize, /^thinfuse-ctl: EINVAL_ARG: create: argument size must be a whole number/);
  t.deepEqual(fs.readdirSync(env.mnt).sort(), ['42', 'a', 'b'], 'nothing else made; serve still answers readdir');

  const removed = ctl([P, 'remove', 'name=b']);
  t.is(removed.status, 0, removed.stderr);
  t.false(fs.existsSync(path.join(env.mnt, 'b')), 'MNT/b is gone');

  // 50 chained snapshots, through thinfuse-ctl and through the Node CLI.
  const chain = (prefix: string, snap: (origin: string, name: string) => void): number => {
    const start = process.hrtime.bigint();
    for (let i = 0, origin = 'a'; i < 50; origin = `${prefix}${i}`, i++) snap(origin, `${prefix}${i}`);
    return Number(process.hrtime.bigint() - start) / 1e6;
  };
  const ctlMs = chain('c', (origin, name) => {
    const r = ctl([P, 'snapshot', `origin=${origin}`, `name=${name}`]);
    if (r.status !== 0) throw new Error(`thinfuse-ctl snapshot ${origin} ${name}: ${r.stderr}`);
  });
  const cliMs = chain('n', (origin, name) => tfOk(['snapshot', P, origin, name]));
  t.log(`50 chained snapshots: thinfuse-ctl ${ctlMs.toFixed(0)} ms (${(ctlMs / 50).toFixed(1)} ms each), ` +
    `Node CLI ${cliMs.toFixed(0)} ms (${(cliMs / 50).toFixed(1)} ms each)`);
  const names = fs.readdirSync(env.mnt);
  for (const prefix of ['c', 'n']) t.true(names.includes(`${prefix}49`), `MNT/${prefix}49 appears`);
  const rows = ctlJson<Array<{ name: string | null }>>([P, 'ls']);
  t.is(rows.filter((r) => r.name !== null).length, 102, 'a, 42 and the two chains');

  t.deepEqual(await serve.stop(), { code: 0, signal: null });
  const after = oneLineFailure(t, ctl([P, 'status']), 2, 'after serve stopped');
  t.regex(after, /no thinfuse serve is running/);
  await oracle(t, P);
});
