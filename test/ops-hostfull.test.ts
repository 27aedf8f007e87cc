// Auto-extend on a host filesystem that is nearly full: the pool directory
// on a small loop-mounted xfs (300 MiB) that a filler file leaves little
// room on. At the threshold, auto-extend refuses and records why (the
// growth does not fit in the host's free space), the pool stays its size,
// and the no-space policy applies as before: error_if_no_space fails the
// write that finds the pool full with ENOSPC. Ends with thin_check.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { E2E, MiB, requireSystem, run, runOk, tfJson, tfOk, umountSync } from './_helpers/serve.js';
import { checkOffline, events } from './_helpers/ops.js';

const HOST = 300 * MiB;
const DATA = 128 * MiB;

/** A loop-mounted xfs at dir, undone (umount, losetup -d) by the test's stack. */
function smallXfs(e: E2E, dir: string): void {
  const img = e.path('host.img');
  fs.writeFileSync(img, '');
  fs.truncateSync(img, HOST);
  runOk('mkfs.xfs', ['-q', '-f', img]);
  const dev = runOk('losetup', ['-f', '--show', img]).trim();
  e.stack.push(`losetup -d ${dev}`, () => run('losetup', ['-d', dev]));
  fs.mkdirSync(dir);
  runOk('mount', [dev, dir]);
  e.stack.push(`umount ${dir}`, () => umountSync(dir));
}

function freeBytes(dir: string): number {
  const s = fs.statfsSync(dir);
  return s.bavail * s.bsize;
}

test.serial('a nearly full host filesystem: auto-extend refuses and says why, then error_if_no_space applies', async (t) => {
  requireSystem();
  const e = await E2E.start(t, 'thinfuse-ops-hostfull-');
  smallXfs(e, e.pool);
  e.createPool(String(DATA), '8M');
  tfOk(['create', e.pool, 'v', '--size', '256M']);
  tfOk(['pool', 'set', e.pool, '--autoextend-threshold', '80', '--autoextend-percent', '50', '--error-if-no-space', 'on']);
  // Room for the pool's 128 MiB and a little more, not for 64 MiB of growth on top.
  const filler = path.join(e.pool, 'filler');
  runOk('fallocate', ['-l', String(freeBytes(e.pool) - DATA - 24 * MiB), filler]);
  t.log(`host free after the filler: ${(freeBytes(e.pool) / MiB).toFixed(1)} MiB`);
  const serve = await e.serve();
  const dd = run('dd', ['if=/dev/urandom', `of=${e.mnt}/v`, 'bs=1M', 'count=160', 'conv=notrunc,fsync', 'status=none']);
  t.not(dd.status, 0, 'writing past the pool fails');
  t.regex(dd.stderr, /No space left on device/);
  const status = tfJson<{ mode: string; data: { used: number; total: number }; blockSize: number; recentEvents: Array<{ kind: string }> }>(['status', e.pool]);
  t.is(status.mode, 'out_of_data_space');
  t.is(status.data.total * status.blockSize, DATA, 'the pool did not grow');
  t.true(status.recentEvents.some((x) => x.kind === 'autoextend_refused'), 'status shows the refusal among the recent events');
  t.is((await serve.stop()).code, 0, serve.log());

  const all = events(e.pool);
  const refused = all.filter((x) => x.kind === 'autoextend_refused');
  t.is(refused.length, 1, 'recorded once');
  t.like(refused[0]!.details, { what: 'data', code: 'host_space', threshold: 80 });
  t.regex(String(refused[0]!.details.reason), /^not growing data: the host filesystem has .* free, but growing by 64MiB needs /);
  t.deepEqual(all.filter((x) => x.kind === 'autoextend'), []);
  const full = all.find((x) => x.kind === 'out_of_data_space');
  t.like(full?.details, { policy: 'error_if_no_space', hostFull: false });
  t.true(all.indexOf(refused[0]!) < all.indexOf(full!), 'the refusal came before the pool filled');
  checkOffline(t, e.pool);
});
