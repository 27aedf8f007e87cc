// The snapshotter killed (-9, by the failpoints of
// src/frontends/layers/failpoints.ts) at every step of Prepare, Remove and
// Commit, then restarted: no device without a record, no record without its
// device, no intent left, and each operation either not done (Prepare,
// Commit) or done (Remove). One pool for all the steps; thin_check at the
// end.
//
// Needs root, /dev/fuse, losetup, mkfs.ext4, mount, thin_check.

import test from 'ava';
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { FAILPOINT_ENV, FAILPOINTS } from '../src/frontends/layers/failpoints.js';
import { checkPoolOffline, pushStoreUndo } from './_helpers/layers.js';
import { E2E, tfJson } from './_helpers/serve.js';
import { SnapClient, type Snapshotter, startSnapshotter, stopSnapshotter } from './_helpers/snapshotter.js';

const NS = 'default';

/** Starts the snapshotter, runs fn with a client, stops it (exit 0). */
async function session(t: ExecutionContext, env: E2E, fn: (c: SnapClient) => Promise<void>): Promise<void> {
  const s = await startSnapshotter(env);
  t.falsy(s.child.exited, s.child.log());
  const c = new SnapClient(s.socket);
  try {
    await fn(c);
  } finally {
    c.close();
  }
  t.is(await stopSnapshotter(s), 0, s.child.log());
}

/** Starts the snapshotter with a failpoint, makes the call that reaches it, and waits for the kill. */
async function crashAt(t: ExecutionContext, env: E2E, step: string, method: string, req: object): Promise<void> {
  const s: Snapshotter = await startSnapshotter(env, undefined, { [FAILPOINT_ENV]: step });
  const c = new SnapClient(s.socket);
  await c.code(method, req, NS);
  c.close();
  const exit = await s.child.waitExit(60_000);
  t.is(exit?.signal, 'SIGKILL', `${step}: the failpoint killed the snapshotter (${s.child.log()})`);
}

/** The invariants: every record ready with its device; every ctd device with a record; no intent. */
function consistent(t: ExecutionContext, env: E2E, what: string): string[] {
  const snaps = JSON.parse(fs.readFileSync(path.join(env.pool, 'snapshots.json'), 'utf8')) as { snapshots: Array<{ key: string; layer: string; state: string }> };
  const store = JSON.parse(fs.readFileSync(path.join(env.pool, 'layers.json'), 'utf8')) as { intent: unknown };
  const devs = tfJson<Array<{ name: string | null }>>(['ls', env.pool]).map((d) => d.name);
  t.is(store.intent, null, `${what}: an intent is left`);
  t.false(devs.includes(null), `${what}: an unnamed device leaked`);
  t.deepEqual(snaps.snapshots.filter((s) => s.state !== 'ready').map((s) => s.key), [], `${what}: half-made records`);
  t.deepEqual(devs.filter((n) => n?.startsWith('layer/ctd-')).sort(), snaps.snapshots.map((s) => `layer/${s.layer}`).sort(), `${what}: devices and records differ`);
  return snaps.snapshots.map((s) => s.key).sort();
}

test.serial('kill -9 at every step of Prepare, Remove and Commit: restart leaves devices and records agreeing', async (t) => {
  t.timeout(15 * 60_000);
  const env = await E2E.start(t, 'thinfuse-ctd-');
  pushStoreUndo(env);
  await session(t, env, async (c) => {
    await c.call('Prepare', { key: 'a', parent: '' }, NS);
    await c.call('Commit', { name: 'parent', key: 'a' }, NS);
  });

  for (const step of [...FAILPOINTS.layerCreate, 'snap.prepare-made']) {
    await crashAt(t, env, step, 'Prepare', { key: `p-${step}`, parent: 'parent' });
    await session(t, env, async (c) => {
      t.deepEqual(consistent(t, env, step), ['parent'], `${step}: the half-made snapshot is gone`);
      t.deepEqual((await c.list(NS)).map((i) => i.name), ['parent']);
    });
  }

  for (const step of [...FAILPOINTS.remove, 'snap.remove-marked']) {
    const key = `r-${step}`;
    await session(t, env, async (c) => void (await c.call('Prepare', { key, parent: 'parent' }, NS)));
    await crashAt(t, env, step, 'Remove', { key });
    await session(t, env, async (c) => {
      t.deepEqual(consistent(t, env, step), ['parent'], `${step}: the removal was finished`);
      t.is((await c.code('Stat', { key }, NS)).code, 5);
    });
  }

  await session(t, env, async (c) => void (await c.call('Prepare', { key: 'k', parent: 'parent' }, NS)));
  await crashAt(t, env, 'snap.commit-released', 'Commit', { name: 'k2', key: 'k' });
  await session(t, env, async (c) => {
    t.deepEqual(consistent(t, env, 'snap.commit-released'), ['k', 'parent'], 'the commit did not happen');
    t.is((await c.call<{ info: { kind: string } }>('Stat', { key: 'k' }, NS)).info.kind, 'ACTIVE');
    await c.call('Commit', { name: 'k2', key: 'k' }, NS);
    await c.call('Remove', { key: 'k2' }, NS);
    await c.call('Remove', { key: 'parent' }, NS);
    t.deepEqual(consistent(t, env, 'the end'), []);
  });
  checkPoolOffline(t, env.pool);
});
