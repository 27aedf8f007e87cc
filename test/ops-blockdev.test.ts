// Auto-extend on a pool whose data device is a block device (POOL/data a
// symlink to a loop device, as dmsetup lab mode makes them): it cannot grow,
// so at the threshold serve records a refusal that says so, once, and the
// no-space policy applies as without auto-extend. Ends with thin_check.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { E2E, MiB, requireSystem, run, runOk, tfJson, tfOk } from './_helpers/serve.js';
import { checkOffline, events } from './_helpers/ops.js';

test.serial('a pool on a block device: auto-extend refuses and says why', async (t) => {
  requireSystem();
  const e = await E2E.start(t, 'thinfuse-ops-blockdev-');
  e.createPool('64M', '8M');
  tfOk(['create', e.pool, 'v', '--size', '128M']);
  tfOk(['pool', 'set', e.pool, '--autoextend-threshold', '80', '--autoextend-percent', '20', '--error-if-no-space', 'on']);
  // The data file becomes a loop device over a copy of it, and POOL/data a symlink to that.
  const img = e.path('data.img');
  fs.copyFileSync(path.join(e.pool, 'data'), img);
  const dev = runOk('losetup', ['-f', '--show', img]).trim();
  e.stack.push(`losetup -d ${dev}`, () => run('losetup', ['-d', dev]));
  fs.rmSync(path.join(e.pool, 'data'));
  fs.symlinkSync(dev, path.join(e.pool, 'data'));
  const serve = await e.serve();
  const dd = run('dd', ['if=/dev/urandom', `of=${e.mnt}/v`, 'bs=1M', 'count=70', 'conv=notrunc,fsync', 'status=none']);
  t.not(dd.status, 0, 'writing past the pool fails');
  t.regex(dd.stderr, /No space left on device/);
  const status = tfJson<{ mode: string; data: { total: number }; blockSize: number }>(['status', e.pool]);
  t.is(status.mode, 'out_of_data_space');
  t.is(status.data.total * status.blockSize, 64 * MiB, 'it did not grow');
  t.is((await serve.stop()).code, 0, serve.log());
  const refused = events(e.pool).filter((x) => x.kind === 'autoextend_refused');
  t.is(refused.length, 1, JSON.stringify(refused));
  t.like(refused[0]!.details, { what: 'data', code: 'block_device' });
  t.regex(String(refused[0]!.details.reason), /block device, which cannot grow/);
  t.regex(serve.log(), /event \S+Z autoextend_refused what=data .*code=block_device/, 'the warning is in the log too');
  checkOffline(t, e.pool);
});
