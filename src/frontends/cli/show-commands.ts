import fs from 'node:fs';
import type { Command } from 'commander';
import { ThinError } from '../../base/errors.js';
import { formatBytes, parseCount } from '../../base/size.js';
import { MAX_DEV_ID } from '../../base/units.js';
import type { TreeRow } from '../device-rows.js';
import { callOp } from './session.js';
import { type Out, table } from './output.js';

// Looking at a pool: `ls --tree` (the snapshot tree as text), `delta` (what
// thin_delta prints for two devices) and `show` (the tree, the block map and
// the pool's usage drawn as HTML or SVG). All three are computed where the
// pool is open, in the serving daemon when there is one.

type Run = <A extends unknown[]>(fn: (out: Out, ...args: A) => Promise<void>) => (...args: A) => Promise<void>;

/** ls --tree's lines: ls's columns, with the tree drawn in the NAME column. */
export function treeLines(rows: TreeRow[]): string[] {
  const prefixes = treePrefixes(rows);
  const lines = table([['NAME', 'DEV', 'SIZE', 'MAPPED', 'EXCLUSIVE', 'SHARED'], ...rows.map((r, i) => [
    `${prefixes[i]}${r.name ?? '-'}${r.originSource === 'inferred' ? ' *' : ''}`, String(r.devId), r.size === null ? '-' : formatBytes(r.size),
    formatBytes(r.mappedBytes), formatBytes(r.exclusiveBytes), formatBytes(r.sharedBytes),
  ])]);
  if (rows.some((r) => r.originSource === 'inferred')) {
    lines.push('* origin inferred from creation and snapshot times and shared blocks (thinfuse did not record it)');
  }
  return lines;
}

/** The branch drawing before each name: rows come depth first, so a row's last-child-ness is known by looking ahead. */
function treePrefixes(rows: TreeRow[]): string[] {
  const hasNextSibling = rows.map((r, i) => {
    for (let j = i + 1; j < rows.length; j++) {
      if (rows[j]!.depth < r.depth) return false;
      if (rows[j]!.depth === r.depth) return true;
    }
    return false;
  });
  const open: boolean[] = []; // per depth: does the ancestor at that depth have a later sibling?
  return rows.map((r, i) => {
    open.length = r.depth;
    const lead = open.slice(1).map((more) => (more ? '│  ' : '   ')).join('');
    open.push(hasNextSibling[i]!);
    if (r.depth === 0) return '';
    return lead + (hasNextSibling[i] ? '├─ ' : '└─ ');
  });
}

export function lookCommands(program: Command, run: Run): void {
  deltaCommand(program, run);
  showCommand(program, run);
}

function deltaCommand(program: Command, run: Run): void {
  program.command('delta <pool> [devices...]')
    .description("the blocks that differ between two devices (names, or --thin1/--thin2 dev ids), printed as thin_delta prints them: same, different, left_only, right_only ranges of virtual blocks")
    .option('--thin1 <id>', 'the left device by dev id (thin_delta --thin1)')
    .option('--snap1 <id>', 'the same as --thin1')
    .option('--thin2 <id>', 'the right device by dev id')
    .option('--snap2 <id>', 'the same as --thin2')
    .option('--verbose', 'each range with its data blocks, grouped by kind (thin_delta --verbose)')
    .action(run(async (out, dir: string, names: string[], o: DeltaFlags) => {
      const args = deltaArgs(names, o);
      const { xml } = await callOp(dir, 'delta', args);
      if (out.json) out.result({ xml });
      else process.stdout.write(xml);
    }));
}

interface DeltaFlags {
  thin1?: string;
  snap1?: string;
  thin2?: string;
  snap2?: string;
  verbose?: boolean;
}

/** Names fill the sides no dev id was given for, left first. */
export function deltaArgs(names: string[], o: DeltaFlags): { left?: string; right?: string; thin1?: number; thin2?: number; verbose: boolean } {
  const id = (a: string | undefined, b: string | undefined, flag: string): number | undefined => {
    if (a !== undefined && b !== undefined) throw new ThinError('EINVAL_ARG', `give ${flag} or its alias --snap${flag.slice(-1)}, not both`);
    const v = a ?? b;
    return v === undefined ? undefined : parseCount(v, flag, MAX_DEV_ID);
  };
  const thin1 = id(o.thin1, o.snap1, '--thin1');
  const thin2 = id(o.thin2, o.snap2, '--thin2');
  const rest = [...names];
  const left = thin1 === undefined ? rest.shift() : undefined;
  const right = thin2 === undefined ? rest.shift() : undefined;
  if (rest.length > 0 || (thin1 === undefined && left === undefined) || (thin2 === undefined && right === undefined)) {
    throw new ThinError('EINVAL_ARG', 'delta compares two devices: give two names, or --thin1 ID and --thin2 ID, or a name and the other id');
  }
  return { left, right, thin1, thin2, verbose: Boolean(o.verbose) };
}

function showCommand(program: Command, run: Run): void {
  program.command('show <pool>')
    .description('draw the snapshot tree (exclusive and shared blocks of each device), a block map of which devices share which data blocks, and the pool usage, as a self-contained page')
    .option('--html <file>', 'write an HTML page (inline SVG and CSS, no script); - for stdout')
    .option('--svg <file>', 'write one SVG image; - for stdout')
    .action(run(async (out, dir: string, o: { html?: string; svg?: string }) => {
      if (o.html === undefined && o.svg === undefined) throw new ThinError('EINVAL_ARG', 'show needs --html FILE or --svg FILE (or both)');
      if (o.html === '-' && o.svg === '-') throw new ThinError('EINVAL_ARG', 'only one of --html and --svg can go to stdout');
      const model = await callOp(dir, 'show', {});
      const written: string[] = [];
      if (o.html !== undefined) {
        const { pageHtml } = await import('../show/html.js');
        written.push(writeOut(o.html, pageHtml(model)));
      }
      if (o.svg !== undefined) {
        const { pageSvg } = await import('../show/svg.js');
        written.push(writeOut(o.svg, pageSvg(model)));
      }
      const files = written.filter((f) => f !== '-');
      if (files.length > 0) out.result({ written: files, devices: model.devices.length, cells: model.map.cellSet.length, group: model.map.group }, files.map((f) => `wrote ${f}`));
    }));
}

function writeOut(file: string, body: string): string {
  if (file === '-') {
    process.stdout.write(body);
    return file;
  }
  try {
    fs.writeFileSync(file, body);
  } catch (e) {
    throw new ThinError('EINVAL_ARG', `cannot write ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}; check the directory exists and is writable`);
  }
  return file;
}
