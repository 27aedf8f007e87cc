import fs from 'node:fs';
import { type DevNo, devNoText } from '../../base/devno.js';
import { type PoolStatus, poolStatusText, thinStatusText } from '../../pool/status.js';
import { callOp } from '../cli/session.js';
import type { Ctx } from './commands.js';
import { nameOf, thinsOf } from './commands.js';
import { poolNameOf } from './lifecycle.js';
import { devNoOf, nodePath, openers, readAheadSectors } from './nodes.js';
import type { DmDevice } from './state.js';
import { type PoolTable, type ThinTable, featureWords } from './table.js';

// dmsetup's read-only commands, line for line as dmsetup prints them from
// the kernel's answers (dmsetup.c; dm-thin.c pool_status/thin_status):
//
//   ls        NAME\t(MAJ:MIN)                       sorted by name, as 5.13+ kernels list
//   table     [NAME: ]0 LEN thin-pool META DATA BS LWM N FEATURES...   (trailing space)
//             [NAME: ]0 LEN thin POOL DEV_ID
//   status    [NAME: ]0 LEN thin-pool TRANS M/M D/D HELD MODE DISCARD NOSPACE CHECK LWM   (trailing space)
//             [NAME: ]0 LEN thin MAPPED_SECTORS HIGHEST|-
//   info      Name/State/Read Ahead/Tables present/Open count/Event number/Major, minor/Number of targets, blank line
//   deps      [NAME: ]N dependencies\t: (MAJ, MIN) ...
//
// The NAME: prefix appears when no device was named (every device).

export const LIBRARY_VERSION = 'thinfuse dmsetup 0.1.0 (userspace dm-thin, no kernel device-mapper)';
/** The dm-thin target versions whose table, message and status grammar thinfuse follows (Linux 6.x). */
export const TARGETS = [['thin-pool', 'v1.23.0'], ['thin', 'v1.23.0']] as const;

/** The active devices by name (one that could not be brought up is not listed, as the kernel would not know it). */
function sorted(c: Ctx): DmDevice[] {
  return Object.values(c.state.devices).filter((d) => !c.down?.has(d.name)).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** The devices a command names (one) or all of them, with whether to prefix lines with the name. */
function targets(c: Ctx, name: string | undefined, ioctl: string): { devs: DmDevice[]; prefix: boolean } {
  if (name === undefined) return { devs: sorted(c), prefix: true };
  return { devs: [c.state.devices[nameOf(c, name, ioctl)]!], prefix: false };
}

function numbersOf(c: Ctx, d: DmDevice): DevNo {
  return devNoOf(nodePath(c.devDir, d.name));
}

/** A table's device as MAJ:MIN (a regular file has no numbers: its path). */
function devText(p: string): string {
  try {
    const st = fs.statSync(p);
    return st.isBlockDevice() ? devNoText(devNoOf(p)) : p;
  } catch {
    return p;
  }
}

export function ls(c: Ctx): string[] {
  const devs = sorted(c);
  if (devs.length === 0) return ['No devices found'];
  return devs.map((d) => `${d.name}\t(${devNoText(numbersOf(c, d))})`);
}

export function table(c: Ctx, name?: string): string[] {
  const { devs, prefix } = targets(c, name, 'table');
  if (devs.length === 0) return ['No devices found'];
  return devs.map((d) => `${prefix ? `${d.name}: ` : ''}${tableLine(c, d)}`);
}

function tableLine(c: Ctx, d: DmDevice): string {
  if (d.table.target === 'thin-pool') {
    const t = d.table as PoolTable;
    return `0 ${t.lenSectors} thin-pool ${devText(t.metadataDev)} ${devText(t.dataDev)} ${t.blockSectors} ${t.lowWater} ${featureWords(t.features)}`;
  }
  const t = d.table as ThinTable;
  return `0 ${t.lenSectors} thin ${devNoText(devNoOf(nodePath(c.devDir, poolNameOf(c.state, t.poolDev, c.devDir))))} ${t.devId}`;
}

async function poolStatusOf(c: Ctx, poolName: string): Promise<PoolStatus> {
  return callOp(c.sd.poolDir(poolName), 'status', {});
}

export async function status(c: Ctx, name?: string): Promise<string[]> {
  const { devs, prefix } = targets(c, name, 'status');
  if (devs.length === 0) return ['No devices found'];
  const cache = new Map<string, PoolStatus>();
  const of = async (p: string) => cache.get(p) ?? (cache.set(p, await poolStatusOf(c, p)), cache.get(p)!);
  const lines: string[] = [];
  for (const d of devs) lines.push(`${prefix ? `${d.name}: ` : ''}${await statusLine(c, d, of)}`);
  return lines;
}

async function statusLine(c: Ctx, d: DmDevice, of: (pool: string) => Promise<PoolStatus>): Promise<string> {
  if (d.table.target === 'thin-pool') return `0 ${d.table.lenSectors} thin-pool ${poolStatusText(await of(d.name))}`;
  const s = await of(poolNameOf(c.state, d.table.poolDev, c.devDir));
  return `0 ${d.table.lenSectors} thin ${thinStatusText(s, s.devices.find((x) => x.name === d.name))}`;
}

/** The event number: the pool's low-water and mode-change events, counted across daemon restarts. */
export async function eventNr(c: Ctx, d: DmDevice): Promise<number> {
  if (d.table.target !== 'thin-pool') return 0;
  return (d.eventBase ?? 0) + (await poolStatusOf(c, d.name)).events;
}

export async function info(c: Ctx, name?: string): Promise<string[]> {
  const { devs } = targets(c, name, 'info');
  if (devs.length === 0) return ['No devices found'];
  const lines: string[] = [];
  for (const d of devs) {
    const n = numbersOf(c, d);
    const open = d.table.target === 'thin-pool' ? thinsOf(c, d.name).length : openers(n);
    lines.push(
      `Name:              ${d.name}`,
      `State:             ${d.suspended ? 'SUSPENDED' : 'ACTIVE'}${d.table.target === 'thin-pool' && d.table.features.includes('read_only') ? ' (READ-ONLY)' : ''}`,
      `Read Ahead:        ${readAheadSectors(n)}`,
      `Tables present:    ${d.inactive ? 'LIVE & INACTIVE' : 'LIVE'}`,
      `Open count:        ${open}`,
      `Event number:      ${await eventNr(c, d)}`,
      `Major, minor:      ${n.major}, ${n.minor}`,
      'Number of targets: 1',
      '',
    );
  }
  return lines;
}

export function deps(c: Ctx, name?: string): string[] {
  const { devs, prefix } = targets(c, name, 'deps');
  if (devs.length === 0) return ['No devices found'];
  return devs.map((d) => {
    const list = depsOf(c, d).map((x) => ` (${x.major}, ${x.minor})`).join('');
    return `${prefix ? `${d.name}: ` : ''}${depsOf(c, d).length} dependencies\t:${list}`;
  });
}

/** What the device's table opens, in the kernel's order (its device list is built by prepending). */
function depsOf(c: Ctx, d: DmDevice): DevNo[] {
  if (d.table.target === 'thin') return [devNoOf(nodePath(c.devDir, poolNameOf(c.state, d.table.poolDev, c.devDir)))];
  const t = d.table as PoolTable;
  return [t.dataDev, t.metadataDev].filter((p) => fs.statSync(p).isBlockDevice()).map((p) => devNoOf(p));
}

/** ls --tree: each device not used by another, with what it stands on below it. */
export function tree(c: Ctx): string[] {
  const devs = sorted(c);
  if (devs.length === 0) return ['No devices found'];
  const used = new Set(devs.filter((d) => d.table.target === 'thin').map((d) => poolNameOf(c.state, (d.table as ThinTable).poolDev, c.devDir)));
  const lines: string[] = [];
  const walk = (d: DmDevice, indent: string, last: boolean, top: boolean) => {
    lines.push(`${top ? '' : `${indent}${last ? '└─' : '├─'}`}${d.name} (${devNoText(numbersOf(c, d))})`);
    const next = top ? ' ' : `${indent}${last ? '   ' : '│  '}`;
    if (d.table.target === 'thin') {
      walk(c.state.devices[poolNameOf(c.state, d.table.poolDev, c.devDir)]!, next, true, false);
      return;
    }
    const under = depsOf(c, d);
    under.forEach((x, i) => lines.push(`${next}${i === under.length - 1 ? '└─' : '├─'} (${x.major}:${x.minor})`));
  };
  for (const d of devs) if (!used.has(d.name)) walk(d, '', true, true);
  return lines;
}

export function version(): string[] {
  return [`Library version:   ${LIBRARY_VERSION}`, `Driver version:    ${LIBRARY_VERSION.split(' ')[2]} (thinfuse)`];
}

export function targetsList(): string[] {
  return TARGETS.map(([n, v]) => `${n.padEnd(16)} ${v}`);
}
