// Auto-extend under load through FUSE: a pool created 20% too small for
// what fio writes grows itself each time its use reaches the threshold,
// with no I/O error (writes that find it full wait under queue_if_no_space
// until it has grown), fio's verify passes, the journal shows each
// extension, and thin_check passes after the stop.
import test from 'ava';
import { E2E, MiB, requireSystem, runOk, tfJson, tfOk } from './_helpers/serve.js';
import { checkOffline, events } from './_helpers/ops.js';

const DEVICE = 256 * MiB;
// 80% of what fio writes, in whole 64 KiB blocks.
const DATA = Math.floor((DEVICE * 0.8) / (64 * 1024)) * 64 * 1024;

test.serial('a pool 20% too small grows itself under fio, verify passes, the journal has each extension', async (t) => {
  requireSystem();
  const e = await E2E.start(t, 'thinfuse-ops-autoextend-');
  e.createPool(String(DATA), '16M');
  tfOk(['create', e.pool, 'v', '--size', String(DEVICE)]);
  tfOk(['pool', 'set', e.pool, '--autoextend-threshold', '70', '--autoextend-percent', '20']);
  const serve = await e.serve();
  const fio = runOk('fio', [
    '--name=fill', `--filename=${e.mnt}/v`, '--rw=randwrite', '--bs=64k', `--size=${DEVICE}`, '--ioengine=psync',
    '--verify=crc32c', '--do_verify=1', '--verify_fatal=1', '--verify_state_save=0', '--end_fsync=1', '--output-format=terse',
  ], { timeoutMs: 300_000 });
  t.is(fio.split(';')[4], '0', `fio reports no error: ${fio}`);
  const status = tfJson<{ mode: string; data: { used: number; total: number }; blockSize: number }>(['status', e.pool]);
  t.is(status.mode, 'rw');
  t.true(status.data.used >= DEVICE / status.blockSize, 'every block of the device is provisioned');
  t.is((await serve.stop()).code, 0, serve.log());
  t.notRegex(serve.log(), /write v: /, 'no write failed in serve');

  const grown = events(e.pool).filter((x) => x.kind === 'autoextend');
  t.log(grown.map((x) => `${x.details.fromBytes} -> ${x.details.toBytes} at ${x.details.usedPercent}%`).join('; '));
  t.true(grown.length >= 2, 'it grew more than once (20% a time, from 80%)');
  t.is(grown[0]!.details.fromBytes, DATA);
  for (let i = 1; i < grown.length; i++) t.is(grown[i]!.details.fromBytes, grown[i - 1]!.details.toBytes, 'each extension starts where the last ended');
  for (const g of grown) t.like(g.details, { what: 'data', threshold: 70, percent: 20 });
  t.is(grown[grown.length - 1]!.details.toBytes, status.data.total * status.blockSize, 'the journal accounts for the whole growth');
  t.deepEqual(events(e.pool).filter((x) => x.kind === 'autoextend_refused'), []);
  checkOffline(t, e.pool);
});
