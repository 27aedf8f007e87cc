// Helpers for the layer-store tests (issue 4): a pool made by `layer init`
// with small Docker options, the undo steps for whatever the store may have
// mounted, attached or started (its auto-started serve included), and a
// consistency check of the store against the pool.

import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { type E2E, alive, loopList, mountTable, run, runOk, stopServeSync, tfJson, umountSync } from './serve.js';

/** Small sizes: xfs needs at least 300 MiB, the min-free-space guard 10% of the data file. */
export const SMALL_OPTS = ['dm.basesize=512M', 'dm.loopdatasize=8G', 'dm.loopmetadatasize=256M'];

/** Writes POOL/layers.conf and runs `layer init` (which creates the pool); pushes the store's undo. */
export function initStore(env: E2E, opts: string[] = SMALL_OPTS): void {
  fs.mkdirSync(env.pool, { recursive: true });
  fs.writeFileSync(path.join(env.pool, 'layers.conf'), JSON.stringify({ 'storage-opts': opts }, null, 2));
  pushStoreUndo(env);
  runOk(process.execPath, [cliPath(), 'layer', 'init', env.pool]);
}

function cliPath(): string {
  return new URL('../../dist/frontends/cli/main.js', import.meta.url).pathname;
}

/**
 * Undo for the store (runs LIFO, so: mounts first, then loops, then the
 * serve). Acts only on mounts under the test dir, loops over files under it,
 * and the pid in POOL/serve.pid.
 */
export function pushStoreUndo(env: E2E): void {
  env.stack.push('stop the serve the layer store started', () => {
    const pidFile = path.join(env.pool, 'serve.pid');
    if (!fs.existsSync(pidFile)) return;
    const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
    if (pid && alive(pid)) {
      env.track(pid);
      stopServeSync(pid, path.join(env.pool, 'fuse'));
    }
  });
  env.stack.push('detach layer loop devices', () => {
    for (const [dev, file] of loopList()) if (env.under(file)) run('losetup', ['-d', dev]);
  });
  env.stack.push('unmount layer mounts', () => {
    const loops = loopList().filter(([, f]) => env.under(f)).map(([d]) => d);
    const ours = mountTable().filter((m) => !m.fstype.startsWith('fuse') && (env.under(m.mountpoint) || loops.includes(m.source)));
    for (const m of ours.reverse()) umountSync(m.mountpoint);
  });
}

export interface LayerRow {
  id: string;
  kind: string;
  parent: string | null;
  state: string;
  device: string;
  mounts: Array<{ dir: string }>;
}

export interface DeviceRow {
  name: string | null;
  devId: number;
  mappedBlocks: number;
}

/**
 * The store agrees with the pool: no intent, every layer ready (or
 * deferred while mounted), one device per layer and one layer per layer/*
 * device, no unnamed device, every image's and container's layers present,
 * nothing mounted or attached that the store does not record.
 */
export function checkStore(t: ExecutionContext, env: E2E, what: string): { layers: LayerRow[]; devices: DeviceRow[] } {
  const layers = tfJson<LayerRow[]>(['layer', 'ls', env.pool]);
  const store = JSON.parse(fs.readFileSync(path.join(env.pool, 'layers.json'), 'utf8')) as {
    intent: unknown; images: Record<string, { layers: string[] }>; containers: Record<string, { init: string; rw: string; state: string }>;
  };
  const devices = tfJson<DeviceRow[]>(['ls', env.pool]);
  t.is(store.intent, null, `${what}: an intent is left in layers.json`);
  for (const l of layers) t.true(l.state === 'ready' || (l.state === 'deferred' && l.mounts.length > 0), `${what}: layer ${l.id} is ${l.state}`);
  const names = devices.map((d) => d.name);
  t.false(names.includes(null), `${what}: an unnamed (leaked) thin device is in the pool`);
  t.deepEqual(names.filter((n) => n?.startsWith('layer/')).sort(), layers.map((l) => l.device).sort(), `${what}: layer devices and layer records differ`);
  const ids = new Set(layers.map((l) => l.id));
  for (const [name, img] of Object.entries(store.images)) for (const id of img.layers) t.true(ids.has(id), `${what}: image ${name} lacks layer ${id}`);
  for (const [name, c] of Object.entries(store.containers)) {
    t.true(ids.has(c.rw) && ids.has(c.init), `${what}: container ${name} lacks a layer`);
    t.not(c.state, 'creating', `${what}: container ${name} is half-made`);
  }
  const mounted = layers.flatMap((l) => l.mounts.map((m) => m.dir));
  const extra = mountTable().filter((m) => env.under(m.mountpoint) && !m.fstype.startsWith('fuse') && !mounted.includes(m.mountpoint));
  t.deepEqual(extra.map((m) => m.mountpoint), [], `${what}: mounts the store does not record`);
  if (mounted.length === 0) t.deepEqual(loopList().filter(([, f]) => env.under(f)), [], `${what}: loop devices left attached`);
  return { layers, devices };
}

/** thinfuse check and thin_check on the pool (nothing must serve it). */
export function checkPoolOffline(t: ExecutionContext, pool: string): void {
  t.false(fs.existsSync(path.join(pool, 'socket')) && alive(Number(fs.readFileSync(path.join(pool, 'socket'), 'utf8').split('\n')[1])), 'the pool is still served');
  const tc = run('thin_check', [path.join(pool, 'metadata')]);
  t.is(tc.status, 0, `thin_check: ${tc.stdout}${tc.stderr}`);
  const ours = run(process.execPath, [cliPath(), 'check', pool]);
  t.is(ours.status, 0, `thinfuse check: ${ours.stdout}${ours.stderr}`);
}
