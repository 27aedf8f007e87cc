import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { isThinError, ThinError } from '../../base/errors.js';
import { formatBytes, parseSize } from '../../base/size.js';
import type { Fault, FaultFile, FaultKind, FaultOp } from '../../io/fault-backing.js';
import type { FaultSpec } from '../../pool/faults.js';
import { connectDaemon } from '../daemon/control.js';
import type { Out } from './output.js';
import { table } from './output.js';

// `thinfuse fault POOL set|ls|clear`: faults on the backing files, as
// dm-dust, dm-flakey and dm-delay give them to a block device. While the pool
// is served the daemon applies them at once (control socket); otherwise they
// go into POOL/faults.json and every later open of the pool (serve, or a CLI
// command) applies them. They stay until cleared.

type Run = <A extends unknown[]>(fn: (out: Out, ...args: A) => Promise<void>) => (...args: A) => Promise<void>;

interface SetOptions {
  file?: string;
  bytes?: string;
  device?: string;
  sectors?: string;
  ops?: string;
  up?: string;
  down?: string;
  delay?: string;
  bit?: string;
  keepSectors?: string;
  then?: string;
}

const HELP = `
Kinds (what a request that a fault matches does):
  error     fails with EIO                              ops: read, write, flush (default read)
  nospace   fails with ENOSPC (host filesystem full)    ops: write, flush (default write)
  drop      reports success, does nothing               ops: write, flush (default write)
  delay     waits --delay MS first                      ops: read, write, flush (default read)
  bitflip   returns data with --bit N flipped in the first byte of every sector   ops: read
  torn      writes only the first --keep-sectors sectors, then fails (--then error)
            or kills the process (--then crash)        ops: write

Where: --device NAME [--sectors RANGE] (the device's provisioned blocks in POOL/data,
as mapped now), or --file data|metadata [--bytes RANGE[,RANGE...]] (no --bytes: the whole file).
RANGE is FIRST-LAST (inclusive) or FIRST+COUNT; byte numbers take K, M, G suffixes.
--up S --down S: dm-flakey intervals (healthy S seconds, then faulty S seconds, repeating).

Examples:
  thinfuse fault POOL set error --ops write --device vol --sectors 0-2047
  thinfuse fault POOL set drop --file data --up 5 --down 2
  thinfuse fault POOL set delay --delay 50 --ops read,write --file metadata
  thinfuse fault POOL ls
  thinfuse fault POOL clear        (all; or give fault ids)
`;

/** A byte or sector number: plain digits, or (for bytes) a size with a suffix. */
function number(text: string, bytes: boolean, what: string): number {
  if (/^\d+$/.test(text)) return Number(text);
  if (bytes) return parseSize(text, what);
  throw new ThinError('EINVAL_ARG', `${what}: '${text}' is not a whole number`);
}

/** FIRST-LAST or FIRST+COUNT as [first, end). */
function parseRange(text: string, bytes: boolean, what: string): [number, number] {
  const m = /^([^+-]+)([+-])([^+-]+)$/.exec(text.trim());
  if (!m) throw new ThinError('EINVAL_ARG', `${what}: cannot parse range '${text}'; use FIRST-LAST or FIRST+COUNT`);
  const first = number(m[1]!, bytes, what);
  const end = m[2] === '+' ? first + number(m[3]!, bytes, what) : number(m[3]!, bytes, what) + 1;
  if (end <= first) throw new ThinError('EINVAL_ARG', `${what}: range '${text}' is empty`);
  return [first, end];
}

function seconds(text: string | undefined, what: string): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isFinite(n) || n < 0) throw new ThinError('EINVAL_ARG', `${what}: '${text}' is not a number of seconds`);
  return n;
}

function whole(text: string | undefined, what: string): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text)) throw new ThinError('EINVAL_ARG', `${what}: '${text}' is not a whole number`);
  return Number(text);
}

export function specOf(kind: string, o: SetOptions): FaultSpec {
  const spec: FaultSpec = { kind: kind as FaultKind };
  if (o.device !== undefined) {
    if (o.file !== undefined || o.bytes !== undefined) throw new ThinError('EINVAL_ARG', 'give --device (with --sectors) or --file (with --bytes), not both');
    spec.device = o.device;
    if (o.sectors !== undefined) spec.sectors = parseRange(o.sectors, false, '--sectors');
  } else {
    if (o.sectors !== undefined) throw new ThinError('EINVAL_ARG', '--sectors needs --device NAME');
    if (o.file === undefined) throw new ThinError('EINVAL_ARG', 'say where: --device NAME [--sectors RANGE] or --file data|metadata [--bytes RANGE]');
    if (o.file !== 'data' && o.file !== 'metadata') throw new ThinError('EINVAL_ARG', `--file must be data or metadata, not '${o.file}'`);
    spec.file = o.file as FaultFile;
    if (o.bytes !== undefined) spec.ranges = o.bytes.split(',').map((r) => parseRange(r, true, '--bytes'));
  }
  if (o.ops !== undefined) spec.ops = o.ops.split(',').map((s) => s.trim()) as FaultOp[];
  const up = seconds(o.up, '--up');
  const down = seconds(o.down, '--down');
  if ((up === undefined) !== (down === undefined)) throw new ThinError('EINVAL_ARG', '--up and --down go together');
  if (up !== undefined) spec.up = up;
  if (down !== undefined) spec.down = down;
  if (kind === 'delay' && o.delay === undefined) throw new ThinError('EINVAL_ARG', 'a delay fault needs --delay MS');
  if (o.delay !== undefined) spec.delayMs = whole(o.delay, '--delay')!;
  if (o.bit !== undefined) spec.bit = whole(o.bit, '--bit')!;
  if (o.keepSectors !== undefined) spec.keepSectors = whole(o.keepSectors, '--keep-sectors')!;
  if (o.then !== undefined) spec.then = o.then as 'error' | 'crash';
  return spec;
}

//------------------------------------------------------------------------------
// running a fault operation where the pool is

type FaultOpName = 'faultSet' | 'faultList' | 'faultClear';

async function viaDaemon(dir: string, op: FaultOpName, args: unknown): Promise<{ value: unknown } | undefined> {
  const client = await connectDaemon(dir);
  if (!client) return undefined;
  try {
    return { value: await client.call(op, args) };
  } finally {
    client.close();
  }
}

/**
 * Not served: the pool opened here (without faults: it only reads mappings)
 * for a fault on device sectors; for everything else only the pool lock, so
 * that faults can be listed and cleared even when they keep the pool from
 * opening.
 */
async function locally(dir: string, op: FaultOpName, args: { spec?: FaultSpec; ids?: number[] }): Promise<unknown> {
  if (!fs.existsSync(path.join(dir, 'metadata'))) throw new ThinError('POOL_MISSING', `no pool in ${dir} (no metadata file); create one with thinfuse pool create`);
  // Loaded here, not at start: every other command would pay for them.
  const [{ PoolFaults }, { lockPool }] = await Promise.all([import('../../pool/faults.js'), import('../../io/lock.js')]);
  const faults = PoolFaults.load(dir);
  if (op === 'faultSet' && args.spec?.device !== undefined) {
    const { Pool } = await import('../../pool/pool.js');
    const pool = await Pool.open(dir, { oneShot: true });
    try {
      return await journaled(dir, faults.set(args.spec, pool));
    } finally {
      await pool.close();
    }
  }
  const lock = lockPool(dir);
  try {
    if (op === 'faultSet') return journaled(dir, faults.set(args.spec!));
    if (op === 'faultClear') return { cleared: await journaledClear(dir, faults.clear(args.ids ?? [])) };
    return faults.list();
  } finally {
    lock.release();
  }
}

/** Not served, nobody else writes POOL/events.jsonl: a fault set or cleared here goes there from here. */
async function journaled(dir: string, f: Fault): Promise<Fault> {
  const [{ EventsJournal }, { faultDetails, makeEvent }] = await Promise.all([import('../../pool/events-journal.js'), import('../../pool/events.js')]);
  new EventsJournal(dir).append(makeEvent('fault_set', faultDetails(f)));
  return f;
}

async function journaledClear(dir: string, cleared: Fault[]): Promise<Fault[]> {
  if (cleared.length === 0) return cleared;
  const [{ EventsJournal }, { makeEvent }] = await Promise.all([import('../../pool/events-journal.js'), import('../../pool/events.js')]);
  new EventsJournal(dir).append(makeEvent('fault_cleared', { ids: cleared.map((f) => f.id).join(','), count: cleared.length }));
  return cleared;
}

async function faultCall(dir: string, op: FaultOpName, args: { spec?: FaultSpec; ids?: number[] }): Promise<unknown> {
  const remote = await viaDaemon(dir, op, args);
  if (remote) return remote.value;
  try {
    return await locally(dir, op, args);
  } catch (e) {
    if (!isThinError(e, 'POOL_LOCKED')) throw e;
    // A daemon that started a moment ago holds the lock before its socket is up.
    const late = await viaDaemon(dir, op, args);
    if (late) return late.value;
    throw e;
  }
}

//------------------------------------------------------------------------------
// output

function rangesText(f: Fault): string {
  if (f.device) {
    const [a, b] = f.device.sectors;
    const un = f.device.unmappedSectors ? ` (${f.device.unmappedSectors} unprovisioned, not covered)` : '';
    return `${f.device.name} sectors ${a}-${b - 1}${un}`;
  }
  if (f.ranges.length === 0) return 'whole file';
  return f.ranges.map(([s, e]) => `${s}+${formatBytes(e - s)}`).join(',');
}

function extraText(f: Fault): string {
  const parts: string[] = [];
  if (f.down > 0) parts.push(`up ${f.up}s down ${f.down}s`);
  if (f.kind === 'delay') parts.push(`${f.delayMs} ms`);
  if (f.kind === 'bitflip') parts.push(`bit ${f.bit ?? 0}`);
  if (f.kind === 'torn') parts.push(`keep ${f.keepSectors ?? 1} sectors, then ${f.then ?? 'error'}`);
  return parts.join(', ') || '-';
}

function faultRows(faults: Fault[]): string[] {
  if (faults.length === 0) return ['no faults'];
  return table([['ID', 'FILE', 'KIND', 'OPS', 'WHERE', 'DETAILS'], ...faults.map((f) => [
    String(f.id), f.file, f.kind, f.ops.join(','), rangesText(f), extraText(f),
  ])]);
}

export function faultCommands(program: Command, run: Run): void {
  program.command('fault <pool> <action> [args...]')
    .description('inject faults into the backing files: fault POOL set KIND [options] | ls | clear [ID...]')
    .option('--device <name>', 'target a thin device\'s provisioned blocks')
    .option('--sectors <range>', 'sectors of --device: FIRST-LAST or FIRST+COUNT (default: all)')
    .option('--file <which>', 'target POOL/data or POOL/metadata directly')
    .option('--bytes <ranges>', 'byte ranges of --file: FIRST-LAST or FIRST+COUNT, comma separated (default: whole file)')
    .option('--ops <list>', 'requests to hit: read, write, flush, comma separated')
    .option('--up <seconds>', 'flakey: healthy this long ...')
    .option('--down <seconds>', '... then faulty this long, repeating')
    .option('--delay <ms>', 'delay: milliseconds per request')
    .option('--bit <n>', 'bitflip: which bit (0-7)', undefined)
    .option('--keep-sectors <n>', 'torn: sectors of each write that reach the file (default 1)')
    .option('--then <what>', 'torn: error (default) or crash (SIGKILL of the process)')
    .addHelpText('after', HELP)
    .action(run(async (out, dir: string, action: string, args: string[], o: SetOptions) => {
      if (action === 'set') {
        if (args.length !== 1) throw new ThinError('EINVAL_ARG', 'fault POOL set needs one kind: error, nospace, drop, delay, bitflip or torn');
        const f = await faultCall(dir, 'faultSet', { spec: specOf(args[0]!, o) }) as Fault;
        out.result(f, [`set fault ${f.id}: ${f.kind} on ${f.ops.join(',')} of ${f.file}, ${rangesText(f)}`]);
        return;
      }
      if (action === 'ls') {
        if (args.length > 0) throw new ThinError('EINVAL_ARG', 'fault POOL ls takes no arguments');
        const faults = await faultCall(dir, 'faultList', {}) as Fault[];
        out.result(faults, faultRows(faults));
        return;
      }
      if (action === 'clear') {
        const ids = args.map((a) => whole(a, 'fault id')!);
        const r = await faultCall(dir, 'faultClear', { ids }) as { cleared: Fault[] };
        out.result(r, [`cleared ${r.cleared.length} fault${r.cleared.length === 1 ? '' : 's'}`]);
        return;
      }
      throw new ThinError('EINVAL_ARG', `unknown fault action '${action}'; use set, ls or clear`);
    }));
}
