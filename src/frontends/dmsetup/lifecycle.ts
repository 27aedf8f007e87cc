import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ThinError } from '../../base/errors.js';
import { callOp } from '../cli/session.js';
import { connectDaemon } from '../daemon/control.js';
import { attachLoop, detachLoop, loopBackingFile } from '../system/loop.js';
import { processAlive } from '../system/process.js';
import { devNoOf, makeNode, removeNode } from './nodes.js';
import type { DmDevice, DmState, StateDir } from './state.js';
import type { PoolTable, ThinTable } from './table.js';

// Bringing dmsetup's devices up and down: a pool is a `thinfuse serve`
// daemon of STATE/pools/NAME at STATE/mnt/NAME; a thin device is a name in
// that pool, its served file attached to a loop device, and DEV_DIR/NAME a
// node with the loop device's numbers. revive() brings back what the state
// says is active after the daemons or loop devices went away (a reboot, a
// kill -9): every command runs it first.

const CLI = fileURLToPath(new URL('../cli/main.js', import.meta.url));

export function poolOf(state: DmState, name: string): DmDevice & { table: PoolTable } {
  const d = state.devices[name];
  if (!d || d.table.target !== 'thin-pool') throw new ThinError('DEV_MISSING', `no pool ${name}`);
  return d as DmDevice & { table: PoolTable };
}

/** Starts the pool's daemon; resolves once it serves. */
export function startDaemon(sd: StateDir, name: string): number {
  const dir = sd.poolDir(name);
  const mnt = sd.mountpoint(name);
  try {
    fs.mkdirSync(mnt, { recursive: true });
  } catch (e) {
    // A dead daemon's mount is still there: serve clears it.
    if ((e as NodeJS.ErrnoException).code !== 'ENOTCONN') throw e;
  }
  const pidFile = path.join(dir, 'serve.pid');
  const r = spawnSync(process.execPath, [CLI, 'serve', dir, mnt, '--daemon', '--pid-file', pidFile, '--log-file', path.join(dir, 'serve.log')], { encoding: 'utf8' });
  if (r.status !== 0) {
    const why = (r.stderr || r.stdout).trim().split('\n').pop() ?? `exit ${r.status}`;
    throw new ThinError('IO_ERROR', `cannot serve pool ${name}: ${why.replace(/^thinfuse: /, '')}`);
  }
  return Number(fs.readFileSync(pidFile, 'utf8').trim());
}

/** Stops the pool's daemon (SIGTERM, by the pid it was started with) and waits for it to exit. */
export async function stopDaemon(pid: number | undefined): Promise<void> {
  if (pid === undefined || !processAlive(pid)) return;
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + 30_000;
  while (processAlive(pid)) {
    if (Date.now() > deadline) throw new ThinError('DEV_BUSY', `the pool daemon (pid ${pid}) did not stop within 30 s; see its serve.log`);
    await sleep(50);
  }
}

export async function daemonRunning(sd: StateDir, name: string): Promise<boolean> {
  const c = await connectDaemon(sd.poolDir(name));
  c?.close();
  return c !== undefined;
}

/** The device node that stands for the pool: the data device itself, or a read-only loop over a data file. */
export function poolNode(devDir: string, name: string, d: DmDevice & { table: PoolTable }): void {
  const data = fs.realpathSync(d.table.dataDev);
  if (fs.statSync(data).isBlockDevice()) {
    makeNode(devDir, name, devNoOf(data));
    return;
  }
  if (!d.poolLoop || loopBackingFile(d.poolLoop) !== data) d.poolLoop = attachLoop(data, undefined, true);
  makeNode(devDir, name, devNoOf(d.poolLoop));
}

/** Activates a thin device in its pool's daemon, attaches its file and makes its node. */
export async function attachThin(sd: StateDir, devDir: string, name: string, poolName: string, t: ThinTable): Promise<string> {
  const dir = sd.poolDir(poolName);
  await callOp(dir, 'activate', { name, devId: t.devId, size: t.lenSectors * 512 });
  let loop: string;
  try {
    loop = attachLoop(path.join(sd.mountpoint(poolName), name));
    makeNode(devDir, name, devNoOf(loop));
  } catch (e) {
    await callOp(dir, 'deactivate', { name }).catch(() => undefined);
    throw e;
  }
  return loop;
}

/** Detaches the loop device, waits for the daemon to see the file closed, and deactivates the name. */
export async function detachThin(sd: StateDir, devDir: string, name: string, poolName: string, loop: string | undefined): Promise<void> {
  const dir = sd.poolDir(poolName);
  if (loop && loopBackingFile(loop) === path.join(sd.mountpoint(poolName), name)) detachLoop(loop);
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      await callOp(dir, 'deactivate', { name });
      break;
    } catch (e) {
      if (!(e instanceof ThinError && e.code === 'DEV_BUSY') || Date.now() > deadline) throw e;
      await sleep(50);
    }
  }
  removeNode(devDir, name);
}

/**
 * Starts what the state holds active but is not running: a pool whose daemon
 * is gone (a reboot, a kill -9) is served again, and its thin devices get
 * new loop devices (an old one still points at the dead mount's file).
 * Returns warnings for what could not be started (its devices are missing,
 * say); the rest goes on.
 */
export async function revive(sd: StateDir, devDir: string, state: DmState): Promise<{ changed: boolean; warnings: string[]; down: Set<string> }> {
  const restarted = new Set<string>();
  const warnings: string[] = [];
  const down = new Set<string>();
  for (const d of Object.values(state.devices)) {
    if (d.table.target !== 'thin-pool' || await daemonRunning(sd, d.name)) continue;
    try {
      checkBacking(d as DmDevice & { table: PoolTable });
      // Loop devices over the dead daemon's files keep its stale mount busy.
      for (const t of Object.values(state.devices)) {
        if (t.table.target === 'thin' && t.loop && loopBackingFile(t.loop)?.startsWith(`${sd.mountpoint(d.name)}/`)) detachLoop(t.loop);
      }
      d.pid = startDaemon(sd, d.name);
      d.suspended = false;
      poolNode(devDir, d.name, d as DmDevice & { table: PoolTable });
      restarted.add(d.name);
    } catch (e) {
      warnings.push(`pool ${d.name} is not active: ${(e as Error).message}`);
      down.add(d.name);
    }
  }
  for (const d of Object.values(state.devices)) {
    if (d.table.target !== 'thin') continue;
    const poolName = poolNameOf(state, d.table.poolDev, devDir);
    if (down.has(poolName)) {
      down.add(d.name);
      continue;
    }
    const file = path.join(sd.mountpoint(poolName), d.name);
    const attached = d.loop !== undefined && loopBackingFile(d.loop) === file;
    if (attached && !restarted.has(poolName)) continue;
    if (!restarted.has(poolName) && !await daemonRunning(sd, poolName)) continue;
    try {
      // The daemon restarted: the name may be gone with it, or still in its registry.
      await callOp(sd.poolDir(poolName), 'deactivate', { name: d.name }).catch(() => undefined);
      d.loop = await attachThin(sd, devDir, d.name, poolName, d.table);
      d.suspended = false;
      d.frozen = undefined;
      restarted.add(d.name);
    } catch (e) {
      warnings.push(`thin ${d.name} is not active: ${(e as Error).message}`);
      down.add(d.name);
    }
  }
  return { changed: restarted.size > 0, warnings, down };
}

/** The backing files a pool's loop devices had at create, if they had any. */
export function backingOf(t: PoolTable): DmDevice['backing'] {
  const metadata = loopBackingFile(t.metadataDev);
  const data = loopBackingFile(t.dataDev);
  return metadata || data ? { ...(metadata ? { metadata } : {}), ...(data ? { data } : {}) } : undefined;
}

/** Refuses to serve a pool whose loop devices now hold other files (or none). */
function checkBacking(d: DmDevice & { table: PoolTable }): void {
  for (const which of ['metadata', 'data'] as const) {
    const want = d.backing?.[which];
    const dev = which === 'metadata' ? d.table.metadataDev : d.table.dataDev;
    if (want === undefined) continue;
    const now = loopBackingFile(dev);
    if (now !== want) throw new ThinError('DEV_MISSING', `its ${which} device ${dev} ${now ? `is now ${now}` : 'is not attached'}, not ${want}: attach it again (losetup ${dev} ${want}), then run dmsetup ls`);
  }
}

/** The pool a thin table's pool device names: DEV_DIR/NAME, a path to that node, or its MAJ:MIN. */
export function poolNameOf(state: DmState, poolDev: string, devDir: string): string {
  const byPath = path.dirname(path.resolve(poolDev)) === path.resolve(devDir) ? path.basename(poolDev) : undefined;
  if (byPath && state.devices[byPath]?.table.target === 'thin-pool') return byPath;
  for (const d of Object.values(state.devices)) {
    if (d.table.target !== 'thin-pool') continue;
    const node = path.join(devDir, d.name);
    try {
      if (poolDev === node || fs.realpathSync(poolDev) === fs.realpathSync(node)) return d.name;
      const mm = /^(\d+):(\d+)$/.exec(poolDev);
      const n = devNoOf(node);
      if (mm && Number(mm[1]) === n.major && Number(mm[2]) === n.minor) return d.name;
    } catch {
      // A node that is not there is not this pool.
    }
  }
  throw new ThinError('DEV_MISSING', `${poolDev} is not a thin-pool device of thinfuse dmsetup`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
