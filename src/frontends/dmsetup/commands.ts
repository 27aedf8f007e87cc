import fs from 'node:fs';
import path from 'node:path';
import { ThinError } from '../../base/errors.js';
import { fileBytes } from '../../io/file-backing.js';
import { type PoolConfig, defaultConfig, writeConfig } from '../../pool/config.js';
import { callOp } from '../cli/session.js';
import { detachLoop, flushBuffers, fsfreeze } from '../system/loop.js';
import { dmError, errnoOf, noDevice } from './errors.js';
import { attachThin, backingOf, detachThin, poolNameOf, poolNode, poolOf, startDaemon, stopDaemon } from './lifecycle.js';
import { devNoOf, mountsOn, openers, removeNode, resolveDevice } from './nodes.js';
import type { DmDevice, DmState, StateDir } from './state.js';
import { type PoolTable, type Table, type ThinTable, parseTable } from './table.js';

// The dmsetup commands that change things: create, reload, suspend, resume,
// message, remove, remove_all. Each checks everything it can before it
// changes anything, and undoes its own steps when a later one fails, so a
// refused command leaves the state as it found it.

export interface Ctx {
  sd: StateDir;
  devDir: string;
  state: DmState;
  /** Devices in the state that could not be brought up this time (their pool's devices are missing). */
  down?: Set<string>;
}

/** Reads the first 4 KiB of the metadata device: all zeros means dm-thin formats it. */
function metadataIsBlank(p: string): boolean {
  const fd = fs.openSync(p, 'r');
  try {
    const b = Buffer.alloc(4096);
    fs.readSync(fd, b, 0, b.length, 0);
    return b.every((x) => x === 0);
  } finally {
    fs.closeSync(fd);
  }
}

function poolConfig(t: PoolTable): PoolConfig {
  const d = defaultConfig();
  const on = (f: string) => t.features.includes(f as never);
  return {
    ...d,
    lowWaterMark: t.lowWater,
    features: { skipBlockZeroing: on('skip_block_zeroing'), ignoreDiscard: on('ignore_discard'), noDiscardPassdown: on('no_discard_passdown'), errorIfNoSpace: on('error_if_no_space'), readOnly: on('read_only') },
  };
}

export async function create(c: Ctx, name: string, tableText: string): Promise<void> {
  if (!/^[A-Za-z0-9_+.-]{1,127}$/.test(name)) throw dmError('EINVAL_ARG', 'create', name, 'EINVAL', 'a device name is 1 to 127 of A-Z a-z 0-9 _ + . -');
  if (c.state.devices[name]) throw dmError('DEV_EXISTS', 'create', name, 'EBUSY', `a device named ${name} exists (dmsetup remove ${name} first)`);
  const table = parseTable(tableText, 'reload', name);
  if (table.target === 'thin-pool') await createPool(c, name, table);
  else await createThin(c, name, table);
}

async function createPool(c: Ctx, name: string, t: PoolTable): Promise<void> {
  const meta = resolveDevice(t.metadataDev, 'reload', name);
  const data = resolveDevice(t.dataDev, 'reload', name);
  if (meta.path === data.path) throw dmError('EINVAL_ARG', 'reload', name, 'EINVAL', 'thin-pool: error setting metadata or data device: they are the same device');
  for (const other of Object.values(c.state.devices)) {
    if (other.table.target === 'thin-pool' && [other.table.metadataDev, other.table.dataDev].some((p) => fs.realpathSync(p) === meta.path || fs.realpathSync(p) === data.path)) {
      throw dmError('DEV_BUSY', 'reload', name, 'EBUSY', `thin-pool: ${meta.path} or ${data.path} is already in use by pool ${other.name}`);
    }
  }
  const dataBytes = fileBytes(data.path);
  const want = Math.floor(t.lenSectors / t.blockSectors) * t.blockSectors * 512;
  if (dataBytes < t.lenSectors * 512) throw dmError('EINVAL_ARG', 'reload', name, 'EINVAL', `thin-pool: the data device has ${dataBytes / 512} sectors, less than the table's ${t.lenSectors}`);
  const blank = metadataIsBlank(meta.path);
  if (blank && t.features.includes('read_only')) throw dmError('EINVAL_ARG', 'reload', name, 'EPERM', 'thin-pool: a read_only pool cannot format a blank metadata device');
  const dir = c.sd.poolDir(name);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const table = { ...t, metadataDev: meta.path, dataDev: data.path };
  const d: DmDevice & { table: PoolTable } = { name, table, suspended: false, backing: backingOf(table) };
  try {
    fs.symlinkSync(meta.path, path.join(dir, 'metadata'));
    fs.symlinkSync(data.path, path.join(dir, 'data'));
    writeConfig(dir, poolConfig(t));
    await prepareMetadata(dir, name, t, blank, want);
    d.pid = startDaemon(c.sd, name);
    poolNode(c.devDir, name, d);
  } catch (e) {
    await stopDaemon(d.pid).catch(() => undefined);
    removeNode(c.devDir, name);
    fs.rmSync(dir, { recursive: true, force: true });
    throw e instanceof ThinError && e.message.startsWith('device-mapper:') ? e : dmError(e instanceof ThinError ? e.code : 'IO_ERROR', 'reload', name, 'EINVAL', `thin-pool: ${(e as Error).message}`);
  }
  c.state.devices[name] = d;
}

/** Formats a blank metadata device, or checks an existing one against the table (block size, data size). */
async function prepareMetadata(dir: string, name: string, t: PoolTable, blank: boolean, dataBytes: number): Promise<void> {
  const { Pool } = await import('../../pool/pool.js');
  const config = poolConfig(t);
  const pool = blank
    ? await Pool.create(dir, { existing: true, dataSize: dataBytes, metadataSize: 0, blockSize: t.blockSectors * 512, config })
    : await Pool.open(dir, { oneShot: true });
  try {
    if (pool.md.dataBlockSize !== t.blockSectors) {
      throw dmError('EINVAL_ARG', 'reload', name, 'EINVAL', `thin-pool: changing the data block size (from ${pool.md.dataBlockSize} to ${t.blockSectors}) is not supported`);
    }
    const blocks = dataBytes / (t.blockSectors * 512);
    if (blocks < pool.md.nrDataBlocks) throw dmError('EINVAL_ARG', 'reload', name, 'EINVAL', `thin-pool: pool target (${blocks} blocks) too small: expected ${pool.md.nrDataBlocks}`);
    if (blocks > pool.md.nrDataBlocks) await pool.resizeData(dataBytes);
  } finally {
    await pool.close();
  }
}

async function createThin(c: Ctx, name: string, t: ThinTable): Promise<void> {
  let poolName: string;
  try {
    poolName = poolNameOf(c.state, t.poolDev, c.devDir);
  } catch {
    throw dmError('DEV_MISSING', 'reload', name, 'ENODEV', `thin: ${t.poolDev} is not an active thin-pool (dmsetup ls)`);
  }
  const pool = poolOf(c.state, poolName);
  if (pool.suspended) throw dmError('EINVAL_ARG', 'reload', name, 'EINVAL', 'thin: unable to activate thin device while pool is suspended');
  let loop: string;
  try {
    loop = await attachThin(c.sd, c.devDir, name, poolName, t);
  } catch (e) {
    const code = e instanceof ThinError ? e.code : 'IO_ERROR';
    throw dmError(code, 'reload', name, code === 'DEV_MISSING' ? 'ENODATA' : errnoOf(code), `thin: ${(e as Error).message}`);
  }
  c.state.devices[name] = { name, table: { ...t, poolDev: path.join(c.devDir, poolName) }, suspended: false, loop };
}

export async function reload(c: Ctx, name: string, tableText: string): Promise<void> {
  const d = c.state.devices[name];
  if (!d) throw noDevice('reload', name);
  const t = parseTable(tableText, 'reload', name);
  if (t.target !== d.table.target) throw dmError('EINVAL_ARG', 'reload', name, 'EINVAL', `${d.table.target} is immutable: a ${t.target} table cannot replace it`);
  if (t.target === 'thin-pool') {
    const live = d.table as PoolTable;
    const meta = resolveDevice(t.metadataDev, 'reload', name).path;
    const data = resolveDevice(t.dataDev, 'reload', name).path;
    if (meta !== live.metadataDev || data !== live.dataDev) throw dmError('EINVAL_ARG', 'reload', name, 'EINVAL', 'thin-pool: the reloaded table must name the same metadata and data devices');
    if (t.blockSectors !== live.blockSectors) throw dmError('EINVAL_ARG', 'reload', name, 'EINVAL', 'thin-pool: changing the data block size is not supported');
    if (t.lenSectors < live.lenSectors) throw dmError('EINVAL_ARG', 'reload', name, 'EINVAL', 'thin-pool: pools cannot shrink');
    d.inactive = { ...t, metadataDev: meta, dataDev: data };
  } else {
    if (t.devId !== (d.table as ThinTable).devId) throw dmError('EINVAL_ARG', 'reload', name, 'EINVAL', 'thin: the reloaded table must name the same device id');
    d.inactive = { ...t, poolDev: (d.table as ThinTable).poolDev };
  }
}

export function thinsOf(c: Ctx, poolName: string): Array<DmDevice & { table: ThinTable }> {
  return Object.values(c.state.devices).filter((d) => d.table.target === 'thin' && poolNameOf(c.state, d.table.poolDev, c.devDir) === poolName) as never;
}

/** dm suspend: a thin's filesystem is frozen and its writes held after a flush; a pool's thins are all held. */
export async function suspend(c: Ctx, name: string): Promise<void> {
  const d = c.state.devices[name];
  if (!d) throw noDevice('suspend', name);
  if (d.suspended) return;
  if (d.table.target === 'thin') {
    await suspendThin(c, d as DmDevice & { table: ThinTable });
  } else {
    for (const t of thinsOf(c, name)) if (!t.suspended) await holdThin(c, t);
  }
  d.suspended = true;
}

async function suspendThin(c: Ctx, d: DmDevice & { table: ThinTable }): Promise<void> {
  const frozen: string[] = [];
  try {
    for (const mp of mountsOn(devNoOf(d.loop!))) {
      fsfreeze(mp, true);
      frozen.push(mp);
    }
    await flushBuffers(d.loop!);
    await holdThin(c, d);
  } catch (e) {
    for (const mp of frozen) fsfreeze(mp, false);
    throw dmError(e instanceof ThinError ? e.code : 'IO_ERROR', 'suspend', d.name, 'EIO', (e as Error).message);
  }
  d.frozen = frozen;
}

async function holdThin(c: Ctx, d: DmDevice & { table: ThinTable }): Promise<void> {
  await callOp(c.sd.poolDir(poolNameOf(c.state, d.table.poolDev, c.devDir)), 'suspend', { name: d.name });
}

async function releaseThin(c: Ctx, d: DmDevice & { table: ThinTable }): Promise<void> {
  await callOp(c.sd.poolDir(poolNameOf(c.state, d.table.poolDev, c.devDir)), 'resume', { name: d.name });
}

/** dm resume: a reloaded table goes live (a pool grows, a thin changes length), then held I/O goes on. */
export async function resume(c: Ctx, name: string): Promise<void> {
  const d = c.state.devices[name];
  if (!d) throw noDevice('resume', name);
  if (d.inactive) await applyInactive(c, d);
  if (!d.suspended) return;
  if (d.table.target === 'thin') {
    await releaseThin(c, d as DmDevice & { table: ThinTable });
    for (const mp of d.frozen ?? []) fsfreeze(mp, false);
    d.frozen = undefined;
  } else {
    for (const t of thinsOf(c, name)) if (!t.suspended) await releaseThin(c, t);
  }
  d.suspended = false;
}

async function applyInactive(c: Ctx, d: DmDevice): Promise<void> {
  const t = d.inactive as Table;
  try {
    if (t.target === 'thin-pool') {
      const dir = c.sd.poolDir(d.name);
      const bytes = Math.floor(t.lenSectors / t.blockSectors) * t.blockSectors * 512;
      await callOp(dir, 'resizePool', { dataSize: bytes });
      await callOp(dir, 'setConfig', { config: poolConfig(t) });
    } else {
      const poolName = poolNameOf(c.state, t.poolDev, c.devDir);
      await callOp(c.sd.poolDir(poolName), 'resizeDevice', { name: d.name, size: t.lenSectors * 512 });
    }
  } catch (e) {
    const code = e instanceof ThinError ? e.code : 'IO_ERROR';
    throw dmError(code, 'resume', d.name, errnoOf(code), (e as Error).message);
  }
  d.table = t;
  d.inactive = undefined;
}

export async function message(c: Ctx, dev: string, sector: string, words: string[]): Promise<void> {
  const name = nameOf(c, dev, 'message');
  const d = c.state.devices[name]!;
  if (!/^\d+$/.test(sector) || Number(sector) >= d.table.lenSectors) throw dmError('EINVAL_ARG', 'message', name, 'EINVAL', `sector ${sector} is not inside the device: give 0`);
  if (words.length === 0) throw dmError('EINVAL_ARG', 'message', name, 'EINVAL', 'no message given: e.g. "create_thin 0"');
  if (d.table.target !== 'thin-pool') throw dmError('EINVAL_ARG', 'message', name, 'EINVAL', 'a thin device takes no messages: send them to its pool');
  try {
    await callOp(c.sd.poolDir(name), 'message', { message: words.join(' ') });
  } catch (e) {
    const code = e instanceof ThinError ? e.code : 'IO_ERROR';
    throw dmError(code, 'message', name, errnoOf(code), (e as Error).message);
  }
}

export async function remove(c: Ctx, dev: string): Promise<void> {
  const name = nameOf(c, dev, 'remove');
  const d = c.state.devices[name]!;
  if (c.down?.has(name)) {
    // Nothing of it runs: only its records go (its pool's registry keeps the name until the pool is served).
    if (d.table.target === 'thin-pool') fs.rmSync(c.sd.poolDir(name), { recursive: true, force: true });
    removeNode(c.devDir, name);
    delete c.state.devices[name];
    return;
  }
  if (d.table.target === 'thin') {
    const loop = d.loop;
    if (loop && fs.existsSync(loop) && openers(devNoOf(loop)) > 0) throw dmError('DEV_BUSY', 'remove', name, 'EBUSY', `${name} is in use: unmount it (${mountsOn(devNoOf(loop)).join(', ') || 'or close it'}) first`);
    const poolName = poolNameOf(c.state, d.table.poolDev, c.devDir);
    if (d.suspended) await resume(c, name);
    await detachThin(c.sd, c.devDir, name, poolName, loop);
  } else {
    const users = thinsOf(c, name).map((t) => t.name);
    if (users.length > 0) throw dmError('DEV_BUSY', 'remove', name, 'EBUSY', `pool ${name} is in use by ${users.join(', ')}: remove those first`);
    await stopDaemon(d.pid);
    if (d.poolLoop) detachLoop(d.poolLoop);
    removeNode(c.devDir, name);
    fs.rmSync(c.sd.poolDir(name), { recursive: true, force: true });
    fs.rmSync(c.sd.mountpoint(name), { recursive: true, force: true });
  }
  delete c.state.devices[name];
}

/** Thin devices first, then the pools; stops at the first device that cannot go. */
export async function removeAll(c: Ctx, save: () => void): Promise<void> {
  const order = Object.values(c.state.devices).sort((a, b) => Number(a.table.target === 'thin-pool') - Number(b.table.target === 'thin-pool'));
  for (const d of order) {
    await remove(c, d.name);
    save();
  }
}

/** A device argument: a name, DEV_DIR/NAME, or a path to such a node; only remove takes a device that is down. */
export function nameOf(c: Ctx, dev: string, ioctl: string): string {
  const base = path.basename(dev);
  const name = c.state.devices[dev] ? dev : path.dirname(path.resolve(dev)) === path.resolve(c.devDir) && c.state.devices[base] ? base : undefined;
  if (name === undefined) throw noDevice(ioctl, dev);
  if (c.down?.has(name) && ioctl !== 'remove') throw dmError('DEV_MISSING', ioctl, name, 'ENXIO', `${name} is not active (see the warning above); remove it, or bring its devices back`);
  return name;
}
