// kill -9 in the middle of layer create, image import, container create and
// container removal, at every failpoint step (THINFUSE_FAILPOINT, see
// src/frontends/layers/failpoints.ts; not timing), then the next start: the
// store must be consistent (checkStore: no intent, no half-made layer or
// container, one device per layer and none leaked, nothing left mounted or
// attached), the interrupted create rolled back and the interrupted removal
// finished, the serve the killed command started stopped, and at the end
// `thinfuse check` and thin_check pass with pool usage back to the base's.
//
// Needs root, /dev/fuse, losetup, mkfs.xfs, thin_check; a missing one fails
// the test. Every mount, loop device and process is undone in t.teardown.

import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { FAILPOINTS, FAILPOINT_ENV } from '../src/frontends/layers/failpoints.js';
import { CLI } from './_helpers/cli.js';
import { busyboxLayer, buildOciImage } from './_helpers/oci-build.js';
import { checkPoolOffline, checkStore, initStore } from './_helpers/layers.js';
import { E2E, ENV, poolUsed, tfJson, tfOk } from './_helpers/serve.js';

/** Runs the CLI with the failpoint set; it must die of SIGKILL there. */
function crashAt(t: ExecutionContext, step: string, args: string[]): void {
  const r = spawnSync(process.execPath, [CLI, ...args], { env: { ...ENV, [FAILPOINT_ENV]: step }, encoding: 'utf8', timeout: 180_000 });
  t.is(r.signal, 'SIGKILL', `${args.join(' ')} with ${FAILPOINT_ENV}=${step} did not crash there (exit ${r.status}): ${r.stderr}`);
}

function layerIds(env: E2E): string[] {
  return tfJson<Array<{ id: string }>>(['layer', 'ls', env.pool]).map((l) => l.id).sort();
}

function served(pool: string): boolean {
  return fs.existsSync(path.join(pool, 'socket'));
}

test.serial('kill -9 at every step of layer create, import, container create and remove', async (t) => {
  t.timeout(12 * 60_000);
  const env = await E2E.start(t, 'thinfuse-layers-');
  const P = env.pool;
  initStore(env);
  const baseUsed = poolUsed(P).used;
  const image = env.path('bb.tar');
  await buildOciImage(image, [
    [...busyboxLayer(), { type: 'file', path: 'etc/gone.txt', content: 'doomed\n' }],
    [{ type: 'whiteout', path: 'etc/gone.txt' }, { type: 'file', path: 'etc/motd', content: 'two\n' }],
  ], { name: 'bb:latest' });

  for (const step of FAILPOINTS.layerCreate) {
    crashAt(t, step, ['layer', 'create', P, 'lx']);
    checkStore(t, env, `layer create, ${step}`);
    t.deepEqual(layerIds(env), ['base'], `${step}: the half-made layer is rolled back`);
  }

  for (const step of FAILPOINTS.imageImport) {
    crashAt(t, step, ['image', 'import', P, image, '--name', 'bb']);
    checkStore(t, env, `import, ${step}`);
    t.deepEqual(layerIds(env), ['base'], `${step}: the import is rolled back`);
    t.deepEqual(tfJson<unknown[]>(['image', 'ls', P]), [], `${step}: no image`);
    t.false(served(P), `${step}: the serve the killed import started is stopped`);
  }

  const img = tfJson<{ layers: string[] }>(['image', 'import', P, image, '--name', 'bb']);
  const imageLayers = ['base', ...img.layers].sort();

  for (const step of FAILPOINTS.containerCreate) {
    crashAt(t, step, ['container', 'create', P, 'bb', 'c']);
    checkStore(t, env, `container create, ${step}`);
    t.deepEqual(layerIds(env), imageLayers, `${step}: the container's layers are rolled back`);
    t.deepEqual(tfJson<unknown[]>(['container', 'ls', P]), [], `${step}: no container`);
    t.false(served(P), `${step}: the serve the killed command started is stopped`);
  }

  for (const step of FAILPOINTS.remove) {
    tfOk(['container', 'create', P, 'bb', 'c']);
    crashAt(t, step, ['container', 'rm', P, 'c']);
    checkStore(t, env, `container rm, ${step}`);
    t.deepEqual(layerIds(env), imageLayers, `${step}: the removal is finished`);
    t.deepEqual(tfJson<unknown[]>(['container', 'ls', P]), [], `${step}: the container is gone`);
  }

  // And a whole image removal killed half-way.
  crashAt(t, 'remove.device-deleted', ['image', 'rm', P, 'bb']);
  checkStore(t, env, 'image rm, remove.device-deleted');
  t.deepEqual(layerIds(env), ['base']);
  t.deepEqual(tfJson<unknown[]>(['image', 'ls', P]), []);

  t.is(poolUsed(P).used, baseUsed, 'pool data usage is back to the base device\'s');
  checkPoolOffline(t, P);
});
