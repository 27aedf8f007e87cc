// serve --metrics: a Prometheus scrape taken while fio runs through FUSE
// parses with promtool (`promtool check metrics`, Debian's prometheus
// package), and a second one after shows the counters moving: requests,
// bytes, commits. Ends with thin_check.
import test from 'ava';
import { E2E, poolUsed, requireSystem, run, tfOk, which } from './_helpers/serve.js';
import { checkOffline, get, sample, waitUntil } from './_helpers/ops.js';

function promtool(t: { is: (a: unknown, b: unknown, m?: string) => void }, text: string, what: string): void {
  const r = run('promtool', ['check', 'metrics'], { input: Buffer.from(text) });
  t.is(r.status, 0, `promtool check metrics on ${what}: ${r.stdout}${r.stderr}`);
}

/** Reads and writes the pool answered, both ways (fast path and JS). */
function requests(text: string): number {
  return ['read', 'write'].reduce((n, op) => n + sample(text, `thinfuse_fast_path_requests_total{op="${op}"}`) + sample(text, `thinfuse_io_requests_total{op="${op}"}`), 0);
}

test.serial('a scrape during a fio run parses with promtool and the counters move', async (t) => {
  requireSystem();
  if (!which('promtool')) throw new Error('promtool not found: apt-get install prometheus');
  const e = await E2E.start(t, 'thinfuse-ops-metrics-');
  e.createPool('1G', '64M');
  tfOk(['create', e.pool, 'v', '--size', '128M']);
  const serve = await e.serve({ args: ['--metrics', '127.0.0.1:0'] });
  const url = /metrics at (http:\/\/127\.0\.0\.1:\d+\/metrics)/.exec(serve.log())?.[1];
  if (!url) throw new Error(`serve logged no metrics address: ${serve.log()}`);
  const fio = e.spawn('fio', [
    '--name=load', `--filename=${e.mnt}/v`, '--rw=randrw', '--bs=4k-128k', '--size=128M', '--ioengine=psync',
    '--time_based', '--runtime=12', '--fsync=16', '--verify=crc32c', '--verify_state_save=0',
  ], 'fio');
  await waitUntil('fio to write', () => poolUsed(e.pool).used > 0 || fio.exited !== undefined, 30_000);
  const during = await get(url);
  t.is(fio.exited, undefined, 'the first scrape was taken while fio ran');
  t.is(during.status, 200);
  t.regex(during.type, /^text\/plain; version=0\.0\.4/);
  promtool(t, during.body, 'the scrape during the run');
  const exit = await fio.waitExit(120_000);
  t.deepEqual(exit, { code: 0, signal: null }, fio.log());
  const after = await get(url);
  promtool(t, after.body, 'the scrape after the run');
  t.true(requests(after.body) > requests(during.body), 'read and write counters moved');
  t.true(sample(after.body, 'thinfuse_fast_path_bytes_total{op="write"}') + sample(after.body, 'thinfuse_io_duration_seconds_count{op="write"}')
    > sample(during.body, 'thinfuse_fast_path_bytes_total{op="write"}') + sample(during.body, 'thinfuse_io_duration_seconds_count{op="write"}'));
  t.true(sample(after.body, 'thinfuse_commit_duration_seconds_count') > sample(during.body, 'thinfuse_commit_duration_seconds_count'), 'commits moved');
  t.true(sample(after.body, 'thinfuse_data_blocks_used') > 0);
  t.is(sample(after.body, 'thinfuse_mode{mode="write"}'), 1);
  t.is(sample(after.body, 'thinfuse_events_total{kind="daemon_start"}'), 1);
  t.is((await get(url.replace('/metrics', '/other'))).status, 404);
  t.is((await serve.stop()).code, 0, serve.log());
  checkOffline(t, e.pool);
});
