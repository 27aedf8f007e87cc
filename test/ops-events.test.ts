// The events journal end to end: `thinfuse events --follow` prints the
// events of a scripted run in the order they happened (serve start, a fault
// set and cleared, low water, out of data space, the mode back to write
// after a resize, serve stop), the same as `events --json` reads back; the
// journal survives kill -9 of serve, and a half-written last line is skipped
// with a warning (by events and by --follow) while the next serve appends on
// a line of its own. Under systemd (JOURNAL_STREAM) each event goes to the
// log with its syslog priority. info and status show the auto-extend
// settings and the latest events. Ends with thin_check.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import type { PoolEvent } from '../src/pool/events.js';
import { CLI } from './_helpers/cli.js';
import { E2E, MiB, requireSystem, run, tf, tfJson, tfOk } from './_helpers/serve.js';
import { checkOffline, events, waitUntil } from './_helpers/ops.js';

function followed(log: string): { events: PoolEvent[]; warnings: string[] } {
  const lines = log.split('\n').filter(Boolean);
  return {
    events: lines.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as PoolEvent),
    warnings: lines.filter((l) => l.startsWith('thinfuse: warning:')),
  };
}

test.serial('events --follow shows a scripted run in order; the journal survives kill -9 and skips a half-written line', async (t) => {
  requireSystem();
  const e = await E2E.start(t, 'thinfuse-ops-events-');
  e.createPool('64M', '8M');
  tfOk(['create', e.pool, 'v', '--size', '128M']);
  tfOk(['pool', 'set', e.pool, '--low-water-mark', '200', '--error-if-no-space', 'on']);
  const follow = e.spawn(process.execPath, [CLI, 'events', e.pool, '--follow', '--json'], 'follow');

  // 1. the scripted run
  const serve = await e.serve();
  tfOk(['fault', e.pool, 'set', 'delay', '--delay', '1', '--file', 'metadata']);
  tfOk(['fault', e.pool, 'clear']);
  const dd = run('dd', ['if=/dev/zero', `of=${e.mnt}/v`, 'bs=1M', 'count=80', 'conv=notrunc,fsync', 'status=none']);
  t.not(dd.status, 0, 'the pool fills (error_if_no_space)');
  tfOk(['resize', e.pool, '--data-size', '128M']);
  t.is((await serve.stop()).code, 0, serve.log());
  const script = ['daemon_start', 'fault_set', 'fault_cleared', 'low_water', 'mode_change', 'out_of_data_space', 'mode_change', 'daemon_stop'];
  t.deepEqual(events(e.pool).map((x) => x.kind), script);
  await waitUntil('events --follow to print the stop', () => followed(follow.log()).events.length >= script.length, 10_000);
  t.deepEqual(followed(follow.log()).events, events(e.pool), '--follow printed exactly what the journal holds, in order');
  const modes = events(e.pool).filter((x) => x.kind === 'mode_change').map((x) => `${x.details.from}->${x.details.to}`);
  t.deepEqual(modes, ['write->out_of_data_space', 'out_of_data_space->write']);
  t.regex(tfOk(['events', e.pool]), /^\S+Z daemon_start pid=\d+ mountpoint=\S+ metrics=null$/m, 'human lines by default');

  // 2. kill -9: every event reported so far is there, whole
  const killed = await e.serve();
  await waitUntil('daemon_start in the journal', () => events(e.pool).length === script.length + 1, 10_000);
  await killed.kill9();
  const afterKill = tf(['events', e.pool, '--json']);
  t.is(afterKill.status, 0);
  t.is(afterKill.stderr, '', 'no warning: no line was cut');
  t.is(events(e.pool).at(-1)!.kind, 'daemon_start', 'no stop was recorded, and nothing is lost');

  // 3. a half-written last line (a crash mid-append) is skipped with a warning
  fs.appendFileSync(path.join(e.pool, 'events.jsonl'), '{"time":"2026-12-08T00:00:00.000Z","kind":"autoext');
  const torn = tf(['events', e.pool, '--json']);
  t.is(torn.status, 0);
  t.regex(torn.stderr, /^thinfuse: warning: .*events\.jsonl: the last line is half-written .*; skipped\n$/);
  t.is(JSON.parse(torn.stdout).result.length, script.length + 1);
  await waitUntil('--follow to warn of the half-written line', () => followed(follow.log()).warnings.length === 1, 10_000);

  // 4. the next serve (as under systemd) appends on a new line; the torn one stays skipped
  const again = await e.serve({ journalStream: true });
  const bad = tf(['pool', 'set', e.pool, '--autoextend-percent', '0']);
  t.is(bad.status, 2);
  t.is(bad.stderr, 'thinfuse: --autoextend-percent takes a whole percent from 1 to 1000 (of the size at the time), not 0\n');
  tfOk(['pool', 'set', e.pool, '--autoextend-threshold', '90', '--autoextend-percent', '10', '--autoextend-max', '1G']);
  const info = tfOk(['info', e.pool]);
  t.regex(info, /^auto-extend: data at 90% by 10% up to 1GiB, metadata off$/m);
  t.regex(info, /^recent events:\n(  \S+Z \w+.*\n){5}/m);
  const status = tfJson<{ autoextend: { threshold: number; max: number }; recentEvents: PoolEvent[] }>(['status', e.pool]);
  t.like(status.autoextend, { threshold: 90, max: 1024 * MiB });
  t.is(status.recentEvents.at(-1)!.kind, 'daemon_start');
  t.is((await again.stop()).code, 0, again.log());
  t.regex(again.log(), /^<6>thinfuse serve: event \S+Z daemon_start /m, 'the systemd journal gets the event with its priority');
  t.regex(again.log(), /^<6>thinfuse serve: event \S+Z daemon_stop /m);
  const final = tf(['events', e.pool, '--json']);
  t.regex(final.stderr, /^thinfuse: warning: .*events\.jsonl line 10 is not a whole event .*; skipped\n$/);
  const kinds = (JSON.parse(final.stdout).result as PoolEvent[]).map((x) => x.kind);
  t.deepEqual(kinds, [...script, 'daemon_start', 'daemon_start', 'daemon_stop']);
  await waitUntil('--follow to print the last stop', () => followed(follow.log()).events.length === kinds.length, 10_000);
  t.deepEqual(followed(follow.log()).events.map((x) => x.kind), kinds);
  t.is(followed(follow.log()).warnings.length, 1, 'the torn line is warned of once');
  follow.signal('SIGTERM');
  t.deepEqual(await follow.waitExit(10_000), { code: 0, signal: null }, '--follow ends cleanly on SIGTERM');
  checkOffline(t, e.pool);
});
