// The FUSE fast path (native-deps/fastpath.h, src/frontends/fuse/fast-path.ts)
// under races: writers own disjoint slices of an origin and write, punch,
// discard (through the socket too) and read-verify them through FUSE, while
// snapshots of the origin are taken. Every snapshot must hold, per slice, the
// slice as it was after some prefix of its writer's operations that lies
// between "completed before the snapshot began" and "started before it
// ended" (one write(2) may be two FUSE requests, see ONE_REQUEST, and a
// snapshot may fall between them); the origin must end as the model says.
// Both are read through FUSE (the fast path) and through the control socket
// (the JS path, with its data cache). A second test pins the data cache:
// JS-path reads of a block that fast-path writes change never come back stale.
import test from 'ava';
import { execFile, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import { promisify } from 'node:util';
import { CLI } from './_helpers/cli.js';
import { cachedBelow } from './_helpers/page-cache.js';
import { E2E, ENV, MiB, requireSystem, runOk, tf, tfBuf, tfOk } from './_helpers/serve.js';

const execFileAsync = promisify(execFile);
const BLOCK = 64 * 1024;
const SIZE = 32 * MiB;
const WRITERS = 4;
const SLICE = SIZE / WRITERS;
const OPS = 120;
/**
 * A write(2) up to this long always reaches the daemon as one FUSE request.
 * Writes are cut at max_write (128 KiB; serve raises max_pages only for
 * reads), and without FUSE_MAX_PAGES at 32 pages of the caller's buffer, so
 * a longer write whose buffer does not start on a page boundary may become
 * two requests, the first at least this long. dm-thin is the same: a snapshot is
 * a consistent point of requests (bios), not of system calls, so a snapshot
 * may hold the first request of such a write and not the second.
 */
const ONE_REQUEST = 32 * 4096 - 4095;

type Kind = 'write' | 'punch' | 'discard' | 'sockwrite' | 'read';

interface Done {
  start: number;
  end: number;
  /** Applies the op to a model (null for reads). */
  apply: ((m: Buffer) => void) | null;
  /** A FUSE write longer than ONE_REQUEST: a snapshot may hold just its first request. */
  split?: { offset: number; data: Buffer };
}

function tfAsync(args: string[], input?: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: ENV, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`thinfuse ${args.join(' ')} exited ${code}: ${err.trim()}`))));
    child.stdin.end(input ?? Buffer.alloc(0));
  });
}

function pick(base: number, aligned = crypto.randomInt(3) === 0): { offset: number; length: number } {
  const length = aligned ? BLOCK * (1 + crypto.randomInt(2)) : 1 + crypto.randomInt(2 * BLOCK);
  const offset = aligned ? base + BLOCK * crypto.randomInt(SLICE / BLOCK - 2) : base + crypto.randomInt(SLICE - length);
  return { offset, length };
}

/** One writer: the only one touching [base, base + SLICE) of the origin. */
async function writer(file: string, pool: string, base: number, model: Buffer, log: Done[]): Promise<void> {
  const fh = await fs.open(file, 'r+');
  try {
    for (let i = 0; i < OPS; i++) {
      const r = crypto.randomInt(20);
      const kind: Kind = r < 10 ? 'write' : r < 12 ? 'punch' : r < 14 ? 'discard' : r < 15 ? 'sockwrite' : 'read';
      // A FUSE punch of partial blocks is a discard plus zeroing writes, which a
      // snapshot may fall between; whole blocks are one discard.
      const { offset, length } = pick(base, kind === 'punch' ? true : undefined);
      const start = performance.now();
      let apply: Done['apply'] = null;
      let split: Done['split'];
      if (kind === 'write' || kind === 'sockwrite') {
        const data = crypto.randomBytes(length);
        if (kind === 'write' && length > ONE_REQUEST) split = { offset, data };
        if (kind === 'write') await fh.write(data, 0, length, offset);
        else await tfAsync(['write', pool, 'origin', '--offset', String(offset)], data);
        apply = (m) => data.copy(m, offset);
      } else if (kind === 'punch') {
        await execFileAsync('fallocate', ['-p', '-o', String(offset), '-l', String(length), file], { env: ENV });
        apply = (m) => m.fill(0, offset, offset + length);
      } else if (kind === 'discard') {
        // Only whole blocks are unmapped; partial ones stay as they were.
        await tfAsync(['discard', pool, 'origin', '--offset', String(offset), '--length', String(length)]);
        const from = Math.ceil(offset / BLOCK) * BLOCK;
        const to = Math.floor((offset + length) / BLOCK) * BLOCK;
        apply = (m) => {
          if (from < to) m.fill(0, from, to);
        };
      } else {
        const got = Buffer.alloc(length);
        await fh.read(got, 0, length, offset);
        if (!got.equals(model.subarray(offset, offset + length))) throw new Error(`read of origin at ${offset}+${length} differs from the model (op ${i})`);
      }
      apply?.(model);
      log.push({ start, end: performance.now(), apply, split });
    }
  } finally {
    await fh.close();
  }
}

/** Whether `got` equals `slice` with only the first request (ONE_REQUEST bytes or more, not all) of a split write applied. */
function holdsFirstRequest(got: Buffer, slice: Buffer, base: number, split: { offset: number; data: Buffer }): boolean {
  const from = split.offset - base;
  const to = from + split.data.length;
  if (!got.subarray(0, from).equals(slice.subarray(0, from)) || !got.subarray(to).equals(slice.subarray(to))) return false;
  const g = got.subarray(from, to);
  const old = slice.subarray(from, to);
  // got is the new data up to `written` and the old bytes from `kept` on; some split point must lie in between.
  let written = 0;
  while (written < g.length && g[written] === split.data[written]) written++;
  let kept = g.length;
  while (kept > 0 && g[kept - 1] === old[kept - 1]) kept--;
  return Math.max(kept, ONE_REQUEST) <= Math.min(written, g.length - 1);
}

/** Whether `got` equals the slice after some prefix of `log` allowed by a snapshot taken over [t0, t1]. */
function matchesSomePrefix(got: Buffer, initial: Buffer, log: Done[], base: number, t0: number, t1: number): boolean {
  const m = Buffer.from(initial);
  const slice = () => m.subarray(base, base + SLICE);
  const lo = log.filter((d) => d.end < t0).length;
  const hi = log.filter((d) => d.start < t1).length;
  for (let k = 0; k <= hi; k++) {
    if (k >= lo && slice().equals(got)) return true;
    // Op k was running during the snapshot: it may be in it in part.
    const split = log[k]?.split;
    if (k >= lo && k < hi && split && holdsFirstRequest(got, slice(), base, split)) return true;
    if (k < log.length) log[k]!.apply?.(m);
  }
  return false;
}

test.serial('fast path: writes, punches and discards race snapshots; origin and every snapshot match the model', async (t) => {
  requireSystem();
  const e = await E2E.start(t, 'thinfuse-fastpath-');
  e.createPool('1G', '64M');
  tfOk(['create', e.pool, 'origin', '--size', String(SIZE)]);
  const serve = await e.serve();
  const file = `${e.mnt}/origin`;
  const initial = crypto.randomBytes(SIZE);
  await fs.writeFile(file, initial, { flag: 'r+' });
  const model = Buffer.from(initial);

  const logs: Done[][] = Array.from({ length: WRITERS }, () => []);
  const snaps: Array<{ name: string; t0: number; t1: number }> = [];
  let writing = true;
  const snapshotter = (async () => {
    for (let i = 0; writing; i++) {
      await new Promise((r) => setTimeout(r, 100 + crypto.randomInt(300)));
      if (!writing) break;
      const name = `s${i}`;
      const t0 = performance.now();
      await tfAsync(['snapshot', e.pool, 'origin', name]);
      snaps.push({ name, t0, t1: performance.now() });
    }
  })();
  try {
    await Promise.all(logs.map((log, w) => writer(file, e.pool, w * SLICE, model, log)));
  } finally {
    writing = false;
    await snapshotter;
  }
  t.true(snaps.length >= 2, `${snaps.length} snapshots were taken under load`);

  const viaFuse = await fs.readFile(file);
  const viaSocket = tfBuf(['read', e.pool, 'origin']);
  t.true(viaFuse.equals(model), 'origin read through FUSE matches the model');
  t.true(viaSocket.equals(model), 'origin read through the socket (JS path) matches the model');
  for (const s of snaps) {
    const got = await fs.readFile(`${e.mnt}/${s.name}`);
    t.true(got.equals(tfBuf(['read', e.pool, s.name])), `${s.name}: FUSE and socket reads agree`);
    for (let w = 0; w < WRITERS; w++) {
      const base = w * SLICE;
      t.true(matchesSomePrefix(got.subarray(base, base + SLICE), initial, logs[w]!, base, s.t0, s.t1), `${s.name}, slice ${w}: a consistent point of its writer`);
    }
  }

  const status = JSON.parse(tfOk(['status', e.pool, '--json'])).result;
  t.log(`snapshots ${snaps.length}; fast path ${JSON.stringify(status.fastPath)}; data cache ${JSON.stringify(status.dataCache)}`);
  t.true(status.fastPath.writes > 0 && status.fastPath.reads > 0, 'the fast path served reads and writes');
  t.is((await serve.stop()).code, 0);
  runOk('thin_check', [`${e.pool}/metadata`]);
  tfOk(['check', e.pool]);
  t.true(tfBuf(['read', e.pool, 'origin']).equals(model), 'origin after the daemon stopped matches the model');
});

test.serial('fast path: JS-path reads through the data cache never return a block stale after fast-path writes (polling off)', async (t) => {
  requireSystem();
  const e = await E2E.start(t, 'thinfuse-fastpath-cache-');
  e.createPool('1G', '64M');
  tfOk(['create', e.pool, 'd', '--size', String(4 * BLOCK)]);
  const bad = tf(['serve', e.pool, e.mnt, '--poll-us', 'soon']);
  t.not(bad.status, 0, 'a bad --poll-us fails');
  t.regex(bad.stderr.trim(), /^[^\n]*--poll-us[^\n]*$/, `one line naming the option: ${bad.stderr}`);
  // Polling off here (the other tests run the default): every JS round trip sleeps and wakes.
  const serve = await e.serve({ args: ['--poll-us', '0'] });
  const file = `${e.mnt}/d`;
  const fh = await fs.open(file, 'r+');
  try {
    // Block 0 mapped (and known writable to the fast path), block 1 unmapped:
    // a read across their border misses the table and goes through JS and its cache.
    await fh.write(crypto.randomBytes(BLOCK), 0, BLOCK, 0);
    const border = BLOCK - 4096;
    const straddle = async () => {
      const b = Buffer.alloc(8192);
      await fh.read(b, 0, b.length, border);
      return b;
    };
    for (let round = 0; round < 3; round++) {
      await straddle();
      const data = crypto.randomBytes(4096);
      await fh.write(data, 0, data.length, border);
      const got = await straddle();
      t.true(got.subarray(0, 4096).equals(data), `round ${round}: the write shows in the next JS-path read`);
      t.true(got.subarray(4096).equals(Buffer.alloc(4096)), `round ${round}: the unmapped block reads as zeros`);
      if (round === 1) tfOk(['snapshot', e.pool, 'd', 'snap']);
    }
  } finally {
    await fh.close();
  }
  const status = JSON.parse(tfOk(['status', e.pool, '--json'])).result;
  t.log(`fast path ${JSON.stringify(status.fastPath)}; data cache ${JSON.stringify(status.dataCache)}`);
  t.true(status.fastPath.writes > 0, 'some of those writes took the fast path');
  t.is((await serve.stop()).code, 0);
  runOk('thin_check', [`${e.pool}/metadata`]);
});

// Provisioning ahead (src/pool/provision.ts provisionAhead, fast-path.ts ahead /
// settle): sequential writers make the pool map blocks before they are
// written. Snapshots taken mid-stream must hold each writer's prefix and
// zeros after it (speculative blocks nothing wrote are unmapped before the
// snapshot), the origin must match the model, and once the daemon has
// committed, exactly the written blocks are mapped.
test.serial('fast path: blocks provisioned ahead of sequential writers; snapshots and commits see only what was written', async (t) => {
  requireSystem();
  const e = await E2E.start(t, 'thinfuse-fastpath-ahead-');
  e.createPool('1G', '64M');
  const size = 64 * MiB;
  const half = size / 2;
  const chunk = 128 * 1024;
  tfOk(['create', e.pool, 'origin', '--size', String(size)]);
  const serve = await e.serve();
  const file = `${e.mnt}/origin`;
  const model = Buffer.alloc(size);
  // Each writer stops short of its half's end, so blocks past its last write stay unwritten.
  const lengths = [half - 5 * BLOCK, half - 37 * BLOCK];
  const progress = [{ done: 0, started: 0 }, { done: 0, started: 0 }];
  const snaps: Array<{ name: string; before: number[]; after: number[] }> = [];
  let writing = true;
  const writerOf = async (w: number) => {
    const fh = await fs.open(file, 'r+');
    try {
      for (let at = 0; at < lengths[w]!; at += chunk) {
        const data = crypto.randomBytes(Math.min(chunk, lengths[w]! - at));
        progress[w]!.started = at + data.length;
        await fh.write(data, 0, data.length, w * half + at);
        data.copy(model, w * half + at);
        progress[w]!.done = at + data.length;
        if ((at / chunk) % 16 === 15) await new Promise((r) => setTimeout(r, 5));
      }
    } finally {
      await fh.close();
    }
  };
  const snapshotter = (async () => {
    for (let i = 0; writing; i++) {
      await new Promise((r) => setTimeout(r, 150));
      if (!writing) break;
      const before = progress.map((p) => p.done);
      await tfAsync(['snapshot', e.pool, 'origin', `s${i}`]);
      snaps.push({ name: `s${i}`, before, after: progress.map((p) => p.started) });
    }
  })();
  try {
    await Promise.all([writerOf(0), writerOf(1)]);
  } finally {
    writing = false;
    await snapshotter;
  }
  t.true(snaps.length >= 1, `${snaps.length} snapshots were taken mid-stream`);
  // Written blocks leave the host page cache once a flush made them durable (Pool.dropWritten).
  const fh = await fs.open(file, 'r+');
  await fh.sync();
  await fh.close();
  const written = lengths[0]! + lengths[1]!;
  const cached = await cachedBelow(`${e.pool}/data`, written / 8);
  t.true(cached < written / 8, `${cached} of ${written} written bytes of POOL/data still in the page cache after an fsync`);

  for (const s of snaps) {
    const got = await fs.readFile(`${e.mnt}/${s.name}`);
    for (let w = 0; w < 2; w++) {
      const region = got.subarray(w * half, (w + 1) * half);
      const written = model.subarray(w * half, (w + 1) * half);
      t.true(region.subarray(0, s.before[w]!).equals(written.subarray(0, s.before[w]!)), `${s.name}, writer ${w}: holds what had completed`);
      t.true(region.subarray(s.after[w]!).equals(Buffer.alloc(half - s.after[w]!)), `${s.name}, writer ${w}: zeros past what had started`);
    }
  }
  t.true((await fs.readFile(file)).equals(model), 'origin read through FUSE matches the model');
  t.true(tfBuf(['read', e.pool, 'origin']).equals(model), 'origin read through the socket matches the model');

  const status = JSON.parse(tfOk(['status', e.pool, '--json'])).result;
  t.log(`snapshots ${snaps.length}; fast path ${JSON.stringify(status.fastPath)}`);
  t.true(status.fastPath.writes > status.fastPath.fallbacks, 'most sequential writes took the fast path');
  t.true(status.fastPath.writebacks >= 1, `early writeback started after the fast-path writes (${status.fastPath.writebacks})`);
  t.is((await serve.stop()).code, 0);
  runOk('thin_check', [`${e.pool}/metadata`]);
  tfOk(['check', e.pool]);
  const origin = JSON.parse(tfOk(['ls', e.pool, '--json'])).result.find((d: { name: string }) => d.name === 'origin');
  const writtenBlocks = lengths.reduce((n, l) => n + Math.ceil(l / BLOCK), 0);
  t.is(origin.mappedBytes / BLOCK, writtenBlocks, 'exactly the written blocks stay mapped');
  t.true(tfBuf(['read', e.pool, 'origin']).equals(model), 'origin after the daemon stopped matches the model');
});

// Large reads (native-deps/fusechan.h, fastpath.h): the kernel sends a 1 MiB
// read as one request (FUSE_MAX_PAGES), and the fast path reads it from
// POOL/data with O_DIRECT. Right after fast-path overwrites, whose data is
// still dirty in the host page cache, those reads must return the new data.
test.serial('fast path: 1 MiB reads are one request, read with O_DIRECT (own blocks) or by two threads (shared), and see every write', async (t) => {
  requireSystem();
  const e = await E2E.start(t, 'thinfuse-fastpath-direct-');
  e.createPool('1G', '64M');
  const size = 16 * MiB;
  const chunk = 128 * 1024;
  tfOk(['create', e.pool, 'd', '--size', String(size)]);
  const serve = await e.serve();
  const file = `${e.mnt}/d`;
  const fh = await fs.open(file, 'r+');
  const model = crypto.randomBytes(size);
  const stats = () => JSON.parse(tfOk(['status', e.pool, '--json'])).result.fastPath;
  let before;
  try {
    for (let pass = 0; pass < 2; pass++) {
      if (pass === 1) crypto.randomFillSync(model);
      for (let at = 0; at < size; at += chunk) await fh.write(model, at, chunk, at);
    }
    before = stats();
    // dd's O_DIRECT buffer is page-aligned, as a loop device's are (Node's are not, so the kernel would split them).
    await execFileAsync('dd', [`if=${file}`, `of=${e.root}/copy`, 'bs=1M', 'iflag=direct', 'status=none'], { env: ENV });
    t.true((await fs.readFile(`${e.root}/copy`)).equals(model), 'large reads return what the fast-path writes just wrote');
  } finally {
    await fh.close();
  }
  const after = stats();
  const reads = after.reads - before.reads;
  const bytes = after.readBytes - before.readBytes;
  t.log(`fast path before ${JSON.stringify(before)} after ${JSON.stringify(after)}`);
  t.is(bytes, size, 'every read took the fast path');
  t.is(reads, size / MiB, 'each 1 MiB read arrives as one request');
  // tmpfs and a few others refuse O_DIRECT; then the fast path reads buffered, and must still be right.
  const direct = await fs.open(`${e.pool}/data`, fs.constants.O_RDONLY | fs.constants.O_DIRECT).then(
    async (h) => (await h.close(), true),
    () => false,
  );
  if (direct) t.true(after.directReads - before.directReads >= size / MiB, 'the pool directory takes O_DIRECT, and large reads used it');
  else t.is(after.directReads, 0, 'the pool directory refuses O_DIRECT, so no read used it');

  // Shared blocks: read through the page cache, each large read copied by two threads.
  tfOk(['snapshot', e.pool, 'd', 's']);
  const dd = async (name: string) => {
    await execFileAsync('dd', [`if=${e.mnt}/${name}`, `of=${e.root}/copy`, 'bs=1M', 'iflag=direct', 'status=none'], { env: ENV });
    return fs.readFile(`${e.root}/copy`);
  };
  t.true((await dd('s')).equals(model), 'the snapshot reads back in large reads');
  const old = Buffer.from(model);
  const fh2 = await fs.open(file, 'r+');
  try {
    for (let at = 0; at < size; at += 4 * BLOCK) {
      const data = crypto.randomBytes(4096);
      await fh2.write(data, 0, data.length, at + 8192);
      data.copy(model, at + 8192);
    }
  } finally {
    await fh2.close();
  }
  t.true((await dd('s')).equals(old), 'after copy-on-write in the origin, the snapshot still reads its old data');
  t.true((await dd('d')).equals(model), 'and the origin its new data');
  const shared = stats();
  t.true(shared.splitReads - after.splitReads >= size / MiB, `large reads of shared blocks were split between two threads (${shared.splitReads - after.splitReads})`);
  // The snapshot's first read finds its table empty, goes through JS, and copies the mappings ahead.
  t.true(shared.readBytes - after.readBytes >= 3 * size - MiB, `all but the snapshot's first read took the fast path (${shared.readBytes - after.readBytes} bytes)`);
  t.is((await serve.stop()).code, 0);
  runOk('thin_check', [`${e.pool}/metadata`]);
  tfOk(['check', e.pool]);
});

// Copy-on-write read-ahead (native-deps/fp_helpers.h): a partial write to a
// block shared with a snapshot is handed to JS, and the FUSE thread reads
// the old block while JS wakes; JS's copy takes it from there. The device's
// mappings are in the table from its first request on (FastPath.warm), so
// every such write gets one. Origin and snapshot must read as the model.
test.serial('fast path: copy-on-write takes the old block a FUSE thread read ahead; origin and snapshot stay exact', async (t) => {
  requireSystem();
  const e = await E2E.start(t, 'thinfuse-fastpath-cow-');
  e.createPool('1G', '64M');
  const size = 16 * MiB;
  tfOk(['create', e.pool, 'origin', '--size', String(size)]);
  const serve = await e.serve();
  const file = `${e.mnt}/origin`;
  const base = crypto.randomBytes(size);
  const first = await fs.open(file, 'r+');
  await first.write(base, 0, size, 0);
  await first.close();
  tfOk(['snapshot', e.pool, 'origin', 'snap']);
  const model = Buffer.from(base);
  const fh = await fs.open(file, 'r+');
  try {
    // Touch the device once so its mappings are copied in, then wait for it.
    await fh.read(Buffer.alloc(4096), 0, 4096, 0);
    await new Promise((r) => setTimeout(r, 200));
    for (let b = 0; b < size / BLOCK; b++) {
      const at = b * BLOCK + 4096 * crypto.randomInt(BLOCK / 4096);
      const data = crypto.randomBytes(4096);
      await fh.write(data, 0, data.length, at);
      data.copy(model, at);
    }
  } finally {
    await fh.close();
  }
  const status = JSON.parse(tfOk(['status', e.pool, '--json'])).result;
  t.log(`fast path ${JSON.stringify(status.fastPath)}`);
  t.true(status.fastPath.cowReads >= size / BLOCK / 2, `most copies took their old block from a read-ahead (${status.fastPath.cowReads} of ${size / BLOCK})`);
  t.true((await fs.readFile(file)).equals(model), 'origin read through FUSE matches the model');
  t.true((await fs.readFile(`${e.mnt}/snap`)).equals(base), 'the snapshot still reads as before the writes');
  t.true(tfBuf(['read', e.pool, 'origin']).equals(model), 'origin read through the socket matches the model');
  t.is((await serve.stop()).code, 0);
  runOk('thin_check', [`${e.pool}/metadata`]);
  tfOk(['check', e.pool]);
  t.true(tfBuf(['read', e.pool, 'snap']).equals(base), 'the snapshot after the daemon stopped is unchanged');
});
