// The events journal and auto-extend without FUSE: POOL/events.jsonl's
// appends, rotation and half-written lines, and how --follow reads it; the events an open pool reports
// (low water, out of data space, mode changes, aborts); auto-extend's
// decisions (plan) and the extender growing a pool's data and metadata, or
// refusing and saying why, with a stand-in for the host filesystem. Every
// pool ends with thin_check.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { ThinError } from '../src/base/errors.js';
import type { DevId } from '../src/base/units.js';
import { AutoExtender, type HostProbe, plan, type PlanInput } from '../src/frontends/daemon/autoextend.js';
import { makeEvent, type PoolEvent } from '../src/pool/events.js';
import { EventsJournal, eventsPath, lastEvents, parseLine, readJournal, rotatedPath } from '../src/pool/events-journal.js';
import { wrapOnly, makePool, MiB, oracle, tempDir } from './_helpers/pool.js';
import { ForwardingBacking } from '../src/io/forwarding-backing.js';
import { Follower } from '../src/frontends/cli/ops-commands.js';

const BS = 64 * 1024;

test('the journal appends one JSON line per event, rotates past its limit and reads back in order', (t) => {
  const dir = tempDir(t);
  const j = new EventsJournal(dir, 600);
  for (let i = 0; i < 30; i++) j.append(makeEvent('low_water', { i }));
  const all = readJournal(dir);
  t.deepEqual(all.warnings, []);
  t.true(fs.existsSync(rotatedPath(dir)), 'rotated to events.jsonl.1');
  t.true(fs.statSync(eventsPath(dir)).size <= 600);
  const seen = all.events.map((e) => e.details.i as number);
  t.true(seen.length >= 2 && seen.length < 30, `kept the newest, bounded (${seen.length})`);
  t.deepEqual(seen, seen.slice().sort((a, b) => a - b), 'in order across the rotation');
  t.is(seen[seen.length - 1], 29);
  t.deepEqual(lastEvents(dir, 5).map((e) => e.details.i), [25, 26, 27, 28, 29]);
  t.deepEqual(lastEvents(dir, 5, 200).map((e) => e.details.i), [25, 26, 27, 28, 29], 'from the ends of both files');
  t.deepEqual(lastEvents(dir, 100).map((e) => e.details.i), seen);
  for (const line of fs.readFileSync(eventsPath(dir), 'utf8').trim().split('\n')) {
    const e = JSON.parse(line) as PoolEvent;
    t.regex(e.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    t.is(e.kind, 'low_water');
  }
});

test('a half-written last line is skipped with a warning, and the next event starts on a line of its own', (t) => {
  const dir = tempDir(t);
  const j = new EventsJournal(dir);
  j.append(makeEvent('daemon_start', { pid: 1 }));
  fs.appendFileSync(eventsPath(dir), '{"time":"2026-01-01T00:00:00.000Z","kind":"low_wa');
  let r = readJournal(dir);
  t.deepEqual(r.events.map((e) => e.kind), ['daemon_start']);
  t.is(r.warnings.length, 1);
  t.regex(r.warnings[0]!, /last line is half-written/);
  j.append(makeEvent('daemon_start', { pid: 2 }));
  r = readJournal(dir);
  t.deepEqual(r.events.map((e) => e.details.pid), [1, 2]);
  t.is(r.warnings.length, 1);
  t.regex(r.warnings[0]!, /line 2 is not a whole event/);
});

test('the follower of events --follow reads appends as they come, across rotations, and warns once of a dead writer\'s half line', (t) => {
  const dir = tempDir(t);
  const j = new EventsJournal(dir, 400);
  const got: number[] = [];
  const warnings: string[] = [];
  const f = new Follower(eventsPath(dir), rotatedPath(dir), parseLine, (e) => got.push(e.details.i as number), (w) => warnings.push(w));
  f.poll();
  let i = 0;
  for (let round = 0; round < 6; round++) {
    for (let k = 0; k < 3; k++) j.append(makeEvent('low_water', { i: i++ }));
    f.poll();
  }
  t.true(fs.existsSync(rotatedPath(dir)), 'the journal rotated meanwhile');
  t.deepEqual(got, [...Array(i).keys()], 'every event once, in order');
  fs.appendFileSync(eventsPath(dir), '{"time":"2026-01-01T00:00:00.000Z","kind":"low_');
  for (let p = 0; p < 5; p++) f.poll();
  t.is(warnings.length, 1);
  t.regex(warnings[0]!, /last line is half-written/);
  j.append(makeEvent('low_water', { i: i++ }));
  f.poll();
  t.deepEqual(got, [...Array(i).keys()], 'the next event after the half line');
  t.is(warnings.length, 1, 'warned once');
});

test('an open pool reports low water, out of data space and the mode changes', async (t) => {
  const { pool, dir } = await makePool(t, { dataSize: 4 * BS, config: { lowWaterMark: 2, features: { errorIfNoSpace: true } } });
  const seen: PoolEvent[] = [];
  pool.eventStream.on((e) => seen.push(e));
  const d = await pool.createDevice('v', 8 * BS);
  const buf = Buffer.alloc(BS, 1);
  for (let i = 0; i < 4; i++) await pool.write(d.devId, buf, i * BS, d.size);
  await t.throwsAsync(pool.write(d.devId, buf, 4 * BS, d.size), { message: /out of data space/ });
  const kinds = seen.map((e) => e.kind);
  t.deepEqual(kinds, ['low_water', 'mode_change', 'out_of_data_space']);
  t.like(seen[1]!.details, { from: 'write', to: 'out_of_data_space' });
  t.like(seen[2]!.details, { policy: 'error_if_no_space' });
  await pool.resizeData(6 * BS);
  t.like(seen[3]!, { kind: 'mode_change', details: { from: 'out_of_data_space', to: 'write' } });
  t.is(pool.eventStream.counts.get('mode_change'), 2);
  await pool.close();
  await oracle(t, dir);
});

/** Fails the first metadata write once armed (an I/O error under a commit). */
class FailingWrites extends ForwardingBacking {
  armed = false;
  override writeSync(b: Buffer, o: number) { this.fail(); this.inner.writeSync(b, o); }
  override async write(b: Buffer, o: number) { this.fail(); return this.inner.write(b, o); }
  private fail(): void {
    if (!this.armed) return;
    this.armed = false;
    throw new ThinError('IO_ERROR', 'injected metadata write error');
  }
}

test('a failed commit reports the aborted transaction and read-only with needs_check', async (t) => {
  let meta: FailingWrites | undefined;
  const wrap = wrapOnly('metadata', (f) => (meta = new FailingWrites(f)));
  const { pool, dir } = await makePool(t, { wrap });
  const seen: PoolEvent[] = [];
  pool.eventStream.on((e) => seen.push(e));
  await pool.message('create_thin 0');
  meta!.armed = true;
  await t.throwsAsync(pool.message('create_thin 1'));
  t.true(seen.some((e) => e.kind === 'transaction_aborted' && /injected/.test(String(e.details.reason))), JSON.stringify(seen));
  t.true(seen.some((e) => e.kind === 'mode_change' && e.details.to === 'read_only' && e.details.needsCheck === true), JSON.stringify(seen));
  await pool.close();
  await oracle(t, dir);
});

//------------------------------------------------------------------------------
// auto-extend

const base: PlanInput = { usedPercent: 85, threshold: 80, percent: 20, current: 100 * BS, unit: BS, max: Infinity, hostFree: 2 ** 40, unbacked: 0, blockDevice: false };

test('plan: grows by percent of the size in whole blocks, at or past the threshold only', (t) => {
  t.deepEqual(plan(base), { grow: true, to: 120 * BS });
  t.deepEqual(plan({ ...base, usedPercent: 80 }), { grow: true, to: 120 * BS });
  t.deepEqual(plan({ ...base, usedPercent: 79.9 }), { grow: false });
  t.deepEqual(plan({ ...base, threshold: 100, usedPercent: 100 }), { grow: false }, 'threshold 100 is off');
  t.deepEqual(plan({ ...base, percent: 1, current: 10 * BS }), { grow: true, to: 11 * BS }, 'at least one block');
});

test('plan: never past max, never past the host filesystem, never on a block device', (t) => {
  t.deepEqual(plan({ ...base, max: 110 * BS + 5 }), { grow: true, to: 110 * BS }, 'capped at max');
  t.like(plan({ ...base, max: 100 * BS }), { grow: false, refused: 'max' });
  t.like(plan({ ...base, hostFree: 19 * BS }), { grow: false, refused: 'host_space' });
  t.like(plan({ ...base, hostFree: 25 * BS, unbacked: 10 * BS }), { grow: false, refused: 'host_space' }, 'the sparse file\'s unwritten part counts');
  t.deepEqual(plan({ ...base, hostFree: 30 * BS, unbacked: 10 * BS }), { grow: true, to: 120 * BS });
  const dev = plan({ ...base, blockDevice: true });
  t.like(dev, { grow: false, refused: 'block_device' });
  t.regex((dev as { why: string }).why, /block device/);
});

function host(free: number, blockDevice = false): HostProbe {
  return { freeBytes: () => free, allocatedBytes: (f) => fs.statSync(f).blocks * 512, isBlockDevice: () => blockDevice };
}

test('the extender grows data at its threshold, lets a queued write go on, and records it', async (t) => {
  const { pool, dir } = await makePool(t, { dataSize: 10 * BS, config: { autoextend: { threshold: 80, percent: 50, metadataThreshold: 100, metadataPercent: 20, max: 0 } } });
  const seen: PoolEvent[] = [];
  pool.eventStream.on((e) => seen.push(e));
  const x = new AutoExtender(pool, host(2 ** 40));
  const d = await pool.createDevice('v', 40 * BS);
  const buf = Buffer.alloc(BS, 7);
  for (let i = 0; i < 7; i++) await pool.write(d.devId, buf, i * BS, d.size);
  await x.check();
  t.is(pool.md.nrDataBlocks, 10, '70% < 80%: no growth');
  await pool.write(d.devId, buf, 7 * BS, d.size);
  await x.check();
  t.is(pool.md.nrDataBlocks, 15);
  t.like(seen.find((e) => e.kind === 'autoextend')!.details, { what: 'data', fromBytes: 10 * BS, toBytes: 15 * BS });
  // Full: a write waits (queue_if_no_space) until the extender grows the pool.
  for (let i = 8; i < 15; i++) await pool.write(d.devId, buf, i * BS, d.size);
  const queued = pool.write(d.devId, buf, 15 * BS, d.size);
  await new Promise((r) => setTimeout(r, 50));
  t.is(pool.mode, 'out_of_data_space');
  await x.check();
  await queued;
  t.is(pool.mode, 'write');
  t.true(pool.md.nrDataBlocks > 15);
  await pool.close();
  t.true(fs.statSync(path.join(dir, 'data')).size === pool.md.nrDataBlocks * BS);
  await oracle(t, dir);
});

test('the extender refuses, once per reason, when the host is full, at max, or on a block device', async (t) => {
  const { pool, dir } = await makePool(t, { dataSize: 10 * BS, config: { autoextend: { threshold: 50, percent: 20, metadataThreshold: 100, metadataPercent: 20, max: 0 } } });
  const seen: PoolEvent[] = [];
  pool.eventStream.on((e) => seen.push(e));
  const d = await pool.createDevice('v', 40 * BS);
  for (let i = 0; i < 6; i++) await pool.write(d.devId, Buffer.alloc(BS, 1), i * BS, d.size);
  const full = new AutoExtender(pool, host(BS));
  await full.check();
  await full.check();
  const refused = seen.filter((e) => e.kind === 'autoextend_refused');
  t.is(refused.length, 1, 'recorded once');
  t.like(refused[0]!.details, { what: 'data', code: 'host_space' });
  t.regex(String(refused[0]!.details.reason), /host filesystem has 64KiB free/);
  await new AutoExtender(pool, host(2 ** 40, true)).check();
  t.like(seen[seen.length - 1]!, { kind: 'autoextend_refused', details: { code: 'block_device' } });
  pool.config.autoextend.max = 10 * BS;
  await new AutoExtender(pool, host(2 ** 40)).check();
  t.like(seen[seen.length - 1]!, { kind: 'autoextend_refused', details: { code: 'max' } });
  t.is(pool.md.nrDataBlocks, 10, 'never grew');
  await pool.close();
  await oracle(t, dir);
});

test('the extender grows metadata at its threshold', async (t) => {
  const { pool, dir } = await makePool(t, { metadataSize: 2 * MiB, config: { autoextend: { threshold: 100, percent: 20, metadataThreshold: 50, metadataPercent: 100, max: 0 } } });
  const seen: PoolEvent[] = [];
  pool.eventStream.on((e) => seen.push(e));
  const x = new AutoExtender(pool, host(2 ** 40));
  const before = pool.md.msm.nrBlocks;
  // Many devices fill metadata quickly (each has its own mapping tree root and details).
  for (let i = 0; pool.md.metadataUsage().used / pool.md.metadataUsage().total < 0.5; i++) {
    await pool.message(`create_thin ${i}`);
    await pool.write(i as DevId, Buffer.alloc(4096, 1), 0, 1 << 30);
    if (i % 20 === 19) await pool.commit();
  }
  await x.check();
  t.is(pool.md.msm.nrBlocks, before * 2);
  t.like(seen.find((e) => e.kind === 'autoextend')!.details, { what: 'metadata', fromBytes: before * 4096, toBytes: before * 8192 });
  await pool.close();
  await oracle(t, dir);
});
