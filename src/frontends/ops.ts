import { ThinError } from '../base/errors.js';
import type { DevId } from '../base/units.js';
import { checkAutoextend, defaultConfig, type PoolConfig, writeConfig } from '../pool/config.js';
import { faultDetails } from '../pool/events.js';
import { lastEvents } from '../pool/events-journal.js';
import type { FaultSpec, PoolFaults } from '../pool/faults.js';
import type { Pool } from '../pool/pool.js';
import { poolStatus } from '../pool/status.js';
import { lsRows, treeRows } from './device-rows.js';

// The operations a user can ask of an open pool. The CLI runs them in its
// own process when no daemon holds the pool, and sends them over the
// control socket when `thinfuse serve` does, so both paths share one
// implementation. Arguments and results are plain JSON.

/** What a serving daemon adds: open-file checks and kernel cache upkeep. */
export interface ServeHooks {
  mountpoint: string;
  /** Names of device files open through FUSE (attached loop devices, ...). */
  openDevices(): string[];
  /** A device's contents changed behind the kernel's page cache. */
  changed(name: string): Promise<void>;
  /** A device's size changed: loop devices re-read it (losetup -c). */
  resized(name: string): Promise<void>;
  /** The FUSE fast path's counters (null when it is off). */
  fastPathStats?(): unknown;
}

export interface OpContext {
  pool: Pool;
  serve?: ServeHooks;
  /** The faults under the pool's backing files (thinfuse fault). */
  faults?: PoolFaults;
}

function faultsOf(c: OpContext): PoolFaults {
  if (!c.faults) throw new ThinError('NOT_SUPPORTED', `pool ${c.pool.name} was opened without fault injection`);
  return c.faults;
}

/** Largest piece of device data one read or write request carries. */
export const IO_PIECE = 4 << 20;

function refuseIfOpen(c: OpContext, name: string, what: string): void {
  if (c.serve?.openDevices().includes(name)) {
    throw new ThinError('DEV_BUSY', `cannot ${what} ${name}: it is open (attached to a loop device?); detach it first`, { name });
  }
}

/** How many of the latest events info and status show. */
export const RECENT_EVENTS = 5;

/** What info and status add to the pool's numbers: the auto-extend settings and the latest events. */
function operations(c: OpContext) {
  return { autoextend: c.pool.config.autoextend, recentEvents: lastEvents(c.pool.dir, RECENT_EVENTS) };
}

/** A config from a client, checked before anything is written: its auto-extend settings must make sense now. */
function checkedConfig(c: OpContext, config: PoolConfig): PoolConfig {
  if (typeof config !== 'object' || config === null || typeof config.features !== 'object' || config.features === null) {
    throw new ThinError('EINVAL_ARG', 'setConfig: config must be an object with features');
  }
  const autoextend = { ...defaultConfig().autoextend, ...(config.autoextend ?? c.pool.config.autoextend) };
  checkAutoextend(autoextend, c.pool.md.nrDataBlocks * c.pool.blockBytes);
  return { ...config, autoextend };
}

function namedOf(c: OpContext, devId: DevId): string | undefined {
  return c.pool.registry.byId(devId)?.name;
}

/** A device given by name or by dev id (thin_delta's --thin1/--thin2), exactly one of them. */
function devIdOf(c: OpContext, name: string | undefined, devId: number | undefined, which: string): DevId {
  const flag = which === 'first' ? '--thin1' : '--thin2';
  if (name === undefined && devId === undefined) throw new ThinError('EINVAL_ARG', `the ${which} device is missing: give its name or ${flag} ID`);
  if (name !== undefined && devId !== undefined) throw new ThinError('EINVAL_ARG', `give the ${which} device by name or by ${flag} ID, not both`);
  return name === undefined ? devId as DevId : c.pool.registry.get(name).devId;
}

export const OPS = {
  async message(c: OpContext, a: { message: string }) {
    const words = a.message.trim().split(/\s+/);
    if (words[0]?.toLowerCase() === 'delete' && words[1] !== undefined && /^\d+$/.test(words[1])) {
      const name = namedOf(c, Number(words[1]) as DevId);
      if (name) refuseIfOpen(c, name, 'delete');
    }
    await c.pool.message(a.message);
    return { message: a.message };
  },

  /** dm's suspend of a named device: its writes wait until resume, after a flush. */
  async suspend(c: OpContext, a: { name: string }) {
    await c.pool.suspend(c.pool.registry.get(a.name).devId);
    return { name: a.name, suspended: true };
  },

  async resume(c: OpContext, a: { name: string }) {
    c.pool.resume(c.pool.registry.get(a.name).devId);
    return { name: a.name, suspended: false };
  },

  async activate(c: OpContext, a: { name: string; devId: number; size: number }) {
    return c.pool.activate(a.name, a.devId as DevId, a.size);
  },

  async create(c: OpContext, a: { name: string; size: number; devId?: number }) {
    // A new name has no loop device yet, so no kernel cache to drop.
    return c.pool.createDevice(a.name, a.size, a.devId as DevId | undefined);
  },

  async snapshot(c: OpContext, a: { origin: string; name: string; size?: number }) {
    return c.pool.snapshot(a.origin, a.name, a.size);
  },

  // The layer store's own devices (layer/<id>, see registry.ts): the same
  // as create and snapshot, in a namespace the user's names cannot reach.
  async layerCreate(c: OpContext, a: { name: string; size: number }) {
    return c.pool.createDevice(a.name, a.size, undefined, { namespaced: true });
  },

  async layerSnapshot(c: OpContext, a: { origin: string; name: string; size?: number }) {
    return c.pool.snapshot(a.origin, a.name, a.size, { namespaced: true });
  },

  /** The layer namespace's devices that exist, name and dev id (cheap: no mapping walk). */
  async layerDevices(c: OpContext) {
    return c.pool.registry.list().filter((d) => d.name.startsWith('layer/') && c.pool.md.hasDevice(d.devId));
  },

  async remove(c: OpContext, a: { name: string }) {
    refuseIfOpen(c, a.name, 'remove');
    await c.pool.remove(a.name);
    return { removed: a.name };
  },

  async deactivate(c: OpContext, a: { name: string }) {
    refuseIfOpen(c, a.name, 'deactivate');
    await c.pool.deactivate(a.name);
    return { deactivated: a.name };
  },

  async ls(c: OpContext) {
    return lsRows(c.pool);
  },

  /** ls in snapshot-tree order, with each device's origin (ls --tree). */
  async tree(c: OpContext) {
    return treeRows(c.pool);
  },

  /** What `show` draws: the tree, the block map and the pool's usage (src/frontends/show/model.ts). */
  async show(c: OpContext) {
    await c.pool.commit();
    const { showModel } = await import('./show/model.js');
    return showModel(c.pool, await treeRows(c.pool));
  },

  /** thin_delta's output for two devices (src/pool/delta.ts), on the committed metadata. */
  async delta(c: OpContext, a: { left?: string; right?: string; thin1?: number; thin2?: number; verbose?: boolean }) {
    const left = devIdOf(c, a.left, a.thin1, 'first');
    const right = devIdOf(c, a.right, a.thin2, 'second');
    await c.pool.commit();
    const { deviceDelta } = await import('../pool/delta.js');
    return { xml: deviceDelta(c.pool.md, left, right, Boolean(a.verbose)) };
  },

  async status(c: OpContext) {
    await c.pool.commit();
    const s = { ...poolStatus(c.pool), ...operations(c) };
    return c.serve?.fastPathStats ? { ...s, fastPath: c.serve.fastPathStats() } : s;
  },

  async info(c: OpContext) {
    const p = c.pool;
    return { ...poolStatus(p), ...operations(c), config: p.config, nrDataBlocks: p.md.nrDataBlocks, time: p.md.sb.time, mountpoint: c.serve?.mountpoint ?? null, openDevices: c.serve?.openDevices() ?? [] };
  },

  async read(c: OpContext, a: { name: string; offset: number; length: number }) {
    const d = c.pool.device(a.name);
    const buf = Buffer.alloc(Math.min(a.length, IO_PIECE));
    await c.pool.read(d.devId, buf, a.offset, d.size, a.name);
    return { data: buf.toString('base64'), size: d.size };
  },

  async write(c: OpContext, a: { name: string; offset: number; data: string }) {
    const d = c.pool.device(a.name);
    const buf = Buffer.from(a.data, 'base64');
    await c.pool.write(d.devId, buf, a.offset, d.size, a.name);
    await c.serve?.changed(a.name);
    return { written: buf.length };
  },

  async discard(c: OpContext, a: { name: string; offset: number; length?: number }) {
    const d = c.pool.device(a.name);
    const length = a.length ?? Math.max(0, d.size - a.offset);
    const n = await c.pool.discard(d.devId, a.offset, length, d.size, a.name);
    await c.serve?.changed(a.name);
    return { unmappedBlocks: n };
  },

  async size(c: OpContext, a: { name: string }) {
    return c.pool.device(a.name);
  },

  async resizeDevice(c: OpContext, a: { name: string; size: number }) {
    const d = await c.pool.resizeDevice(a.name, a.size);
    await c.serve?.resized(a.name);
    return d;
  },

  async resizePool(c: OpContext, a: { dataSize?: number; metadataSize?: number }) {
    if (a.dataSize !== undefined) await c.pool.resizeData(a.dataSize);
    if (a.metadataSize !== undefined) await c.pool.resizeMetadata(a.metadataSize);
    return { nrDataBlocks: c.pool.md.nrDataBlocks, metadataBlocks: c.pool.md.msm.nrBlocks };
  },

  async trim(c: OpContext) {
    return { punchedBlocks: await c.pool.trim() };
  },

  async config(c: OpContext) {
    return c.pool.config;
  },

  async setConfig(c: OpContext, a: { config: PoolConfig }) {
    const config = checkedConfig(c, a.config);
    writeConfig(c.pool.dir, config);
    Object.assign(c.pool.config.features, config.features);
    c.pool.config.autoextend = config.autoextend;
    c.pool.config.lowWaterMark = config.lowWaterMark;
    c.pool.config.noSpaceTimeout = config.noSpaceTimeout;
    return config;
  },

  async faultSet(c: OpContext, a: { spec: FaultSpec }) {
    const f = faultsOf(c).set(a.spec, c.pool);
    c.pool.eventStream.emit('fault_set', faultDetails(f));
    return f;
  },

  async faultList(c: OpContext) {
    return faultsOf(c).list();
  },

  async faultClear(c: OpContext, a: { ids?: number[] }) {
    const cleared = faultsOf(c).clear(a.ids ?? [], c.pool);
    if (cleared.length > 0) c.pool.eventStream.emit('fault_cleared', { ids: cleared.map((f) => f.id).join(','), count: cleared.length });
    return { cleared };
  },

  async dump(c: OpContext, a: { metadataSnap?: boolean }) {
    await c.pool.commit();
    if (a.metadataSnap && c.pool.md.sb.heldRoot === 0) {
      throw new ThinError('SNAP_NOT_HELD', 'no metadata snapshot is held; send reserve_metadata_snap first');
    }
    // Loaded on first use: the XML parser behind xml.ts costs every CLI start ~20 ms.
    const [{ dumpMetadata }, { XmlDumpWriter }] = await Promise.all([import('../pool/dump.js'), import('../pool/xml.js')]);
    const chunks: string[] = [];
    const w = new XmlDumpWriter((s) => chunks.push(s));
    dumpMetadata(c.pool.md, w, { metadataSnap: Boolean(a.metadataSnap) });
    w.flush();
    return { xml: chunks.join('') };
  },
} as const;

export type OpName = keyof typeof OPS;
type ArgOf<F> = F extends (c: OpContext, a: infer A) => unknown ? A : Record<string, never>;
export type OpArgs<K extends OpName> = ArgOf<(typeof OPS)[K]>;
export type OpResult<K extends OpName> = Awaited<ReturnType<(typeof OPS)[K]>>;

// Arguments come as JSON from any client of the control socket (thinfuse-ctl,
// scripts), so their types are checked here: a number given as a device name
// would otherwise reach POOL/devices and crash FUSE's readdir.
const ARG_TYPES: Record<string, 'string' | 'integer' | 'boolean'> = {
  name: 'string', origin: 'string', message: 'string', data: 'string',
  size: 'integer', devId: 'integer', offset: 'integer', length: 'integer', dataSize: 'integer', metadataSize: 'integer',
  metadataSnap: 'boolean',
  left: 'string', right: 'string', thin1: 'integer', thin2: 'integer', verbose: 'boolean',
};

function checkArgs(op: string, args: unknown): object {
  if (args === undefined || args === null) return {};
  if (typeof args !== 'object' || Array.isArray(args)) throw new ThinError('EINVAL_ARG', `${op}: the arguments must be a JSON object`);
  for (const [key, v] of Object.entries(args)) {
    const want = ARG_TYPES[key];
    if (want === undefined || v === undefined) continue;
    if (want === 'integer' ? Number.isInteger(v) && (v as number) >= 0 : typeof v === want) continue;
    const what = want === 'integer' ? 'a whole number >= 0' : `a ${want}`;
    const got = v === null || typeof v === 'object' ? JSON.stringify(v).slice(0, 40) : `${typeof v} ${JSON.stringify(v).slice(0, 40)}`;
    throw new ThinError('EINVAL_ARG', `${op}: argument ${key} must be ${what}, not ${got}`);
  }
  return args;
}

export async function runOp(c: OpContext, op: string, args: unknown): Promise<unknown> {
  // Own keys only: 'constructor' or 'toString' must not reach Object's methods.
  const fn = Object.hasOwn(OPS, op) ? (OPS as Record<string, (c: OpContext, a: unknown) => Promise<unknown>>)[op] : undefined;
  if (!fn) throw new ThinError('EINVAL_ARG', `unknown operation '${op}'`);
  return fn(c, checkArgs(op, args));
}
