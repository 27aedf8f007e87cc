// Stress on real FUSE: an origin and its snapshots (sharing every block at
// first) take overlapping reads, writes and hole punches at once, from this
// process and from fio; every byte is checked against a model after each
// round. Ends with thin_check and thinfuse check.
import test from 'ava';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import { promisify } from 'node:util';
import { E2E, ENV, MiB, requireSystem, runOk, tfOk } from './_helpers/serve.js';

const execFileAsync = promisify(execFile);
const SIZE = 8 * MiB;
const BLOCK = 64 * 1024;

interface Op {
  file: string;
  kind: 'write' | 'read' | 'punch';
  offset: number;
  length: number;
}

/** Ops of one round: per file, no two ranges overlap, so their order does not matter. */
function round(files: string[], n: number): Op[] {
  const taken = new Map<string, Array<[number, number]>>();
  const ops: Op[] = [];
  while (ops.length < n) {
    const file = files[crypto.randomInt(files.length)]!;
    const r = crypto.randomInt(10);
    const kind = r < 5 ? 'write' : r < 8 ? 'read' : 'punch';
    const aligned = crypto.randomInt(3) === 0;
    const length = aligned ? BLOCK * (1 + crypto.randomInt(4)) : 1 + crypto.randomInt(3 * BLOCK);
    const offset = aligned ? BLOCK * crypto.randomInt(SIZE / BLOCK - 4) : crypto.randomInt(SIZE - length);
    const used = taken.get(file) ?? [];
    if (used.some(([a, b]) => offset < b && a < offset + length)) continue;
    used.push([offset, offset + length]);
    taken.set(file, used);
    ops.push({ file, kind, offset, length });
  }
  return ops;
}

async function apply(path: string, op: Op, model: Buffer): Promise<void> {
  if (op.kind === 'punch') {
    await execFileAsync('fallocate', ['-p', '-o', String(op.offset), '-l', String(op.length), path], { env: ENV });
    model.fill(0, op.offset, op.offset + op.length);
    return;
  }
  const fh = await fs.open(path, 'r+');
  try {
    if (op.kind === 'write') {
      const data = crypto.randomBytes(op.length);
      await fh.write(data, 0, data.length, op.offset);
      data.copy(model, op.offset);
    } else {
      const got = Buffer.alloc(op.length);
      await fh.read(got, 0, op.length, op.offset);
      if (!got.equals(model.subarray(op.offset, op.offset + op.length))) throw new Error(`read of ${path} at ${op.offset}+${op.length} differs from the model`);
    }
  } finally {
    await fh.close();
  }
}

const mnt = (e: E2E, name: string) => `${e.mnt}/${name}`;

test.serial('origin and snapshots under concurrent reads, writes and punches match a model byte for byte', async (t) => {
  requireSystem();
  const e = await E2E.start(t, 'thinfuse-stress-');
  e.createPool('1G', '64M');
  tfOk(['create', e.pool, 'origin', '--size', String(SIZE)]);
  const serve = await e.serve();
  const models = new Map<string, Buffer>();
  const origin = crypto.randomBytes(SIZE);
  await fs.writeFile(mnt(e, 'origin'), origin, { flag: 'r+' });
  models.set('origin', Buffer.from(origin));
  const snap = (from: string, name: string) => {
    tfOk(['snapshot', e.pool, from, name]);
    models.set(name, Buffer.from(models.get(from)!));
  };
  snap('origin', 's1');
  snap('s1', 's2');
  snap('origin', 's3');
  for (let r = 0; r < 24; r++) {
    const names = [...models.keys()];
    const ops = round(names, 40);
    await Promise.all(ops.map((op) => apply(mnt(e, op.file), op, models.get(op.file)!)));
    for (const name of names) {
      const got = await fs.readFile(mnt(e, name));
      t.true(got.equals(models.get(name)!), `round ${r}: ${name} matches the model`);
    }
    if (r % 8 === 7) snap(names[crypto.randomInt(names.length)]!, `r${r}`);
  }
  // fio: overlapping random reads and verified writes on four devices at once.
  const jobs = ['origin', 's1', 's2', 's3'].flatMap((n, i) => [
    `--name=j${i}`, `--filename=${mnt(e, n)}`, '--rw=randrw', '--bs=4k-128k', '--size=8M', '--io_size=16M',
    '--verify=crc32c', '--verify_fatal=1', '--do_verify=1', '--verify_state_save=0', '--ioengine=psync', '--numjobs=1',
  ]);
  runOk('fio', ['--output-format=terse', ...jobs], { timeoutMs: 300_000 });
  const status = JSON.parse(tfOk(['status', e.pool, '--json'])).result;
  t.log(`devices ${status.devices.length}, data blocks used ${status.data.used}, data cache ${JSON.stringify(status.dataCache)}`);
  t.is((await serve.stop()).code, 0);
  runOk('thin_check', [`${e.pool}/metadata`]);
  tfOk(['check', e.pool]);
});
