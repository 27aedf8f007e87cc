import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { ThinError } from '../../base/errors.js';
import * as cmd from '../dmsetup/commands.js';
import { revive } from '../dmsetup/lifecycle.js';
import { devDir, kernelDeviceMapper } from '../dmsetup/nodes.js';
import * as report from '../dmsetup/report.js';
import { StateDir } from '../dmsetup/state.js';

// `thinfuse dmsetup ARGS` (and the `dmsetup` command setup installs on hosts
// without a device-mapper): dmsetup's grammar and output over thinfuse's
// pools. Options may come anywhere, as dmsetup's getopt takes them.
// Errors are dmsetup's one line on stderr and exit status 1.

export const DMSETUP_USAGE = `usage: thinfuse dmsetup [--dev-dir DIR] [--state-dir DIR] COMMAND ...
  create NAME [--table TABLE | TABLE_FILE]      (the table from stdin if neither)
  reload NAME [--table TABLE | TABLE_FILE]
  message DEVICE SECTOR MESSAGE...
  suspend NAME | resume NAME | remove NAME | remove_all
  status [NAME] | table [NAME] | info [NAME] | deps [NAME] | ls [--tree]
  wait NAME [EVENT_NR] | version | targets | help
targets: thin-pool METADATA_DEV DATA_DEV BLOCK_SECTORS LOW_WATER [N FEATURES...], thin POOL_DEV DEV_ID`;

const OPTIONS = {
  table: { type: 'string' },
  'dev-dir': { type: 'string' },
  'state-dir': { type: 'string' },
  tree: { type: 'boolean' },
  verbose: { type: 'boolean', short: 'v' },
  noflush: { type: 'boolean' },
  nolockfs: { type: 'boolean' },
  noudevsync: { type: 'boolean' },
  noudevrules: { type: 'boolean' },
  force: { type: 'boolean', short: 'f' },
  help: { type: 'boolean', short: 'h' },
} as const;

type Flags = { [K in keyof typeof OPTIONS]?: (typeof OPTIONS)[K]['type'] extends 'string' ? string : boolean };

const WRITERS = new Set(['create', 'load', 'reload', 'message', 'suspend', 'resume', 'remove', 'remove_all']);
const READERS = new Set(['status', 'table', 'info', 'deps', 'ls', 'wait', 'version', 'targets', 'help']);

export async function dmsetupMain(argv: string[]): Promise<number> {
  try {
    const { values, positionals } = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
    const flags = values as Flags;
    const [command, ...args] = positionals;
    if (flags.help || command === undefined || command === 'help') {
      process.stdout.write(`${DMSETUP_USAGE}\n`);
      return command === undefined && !flags.help ? 1 : 0;
    }
    if (!WRITERS.has(command) && !READERS.has(command)) throw new ThinError('EINVAL_ARG', `Unknown command: ${command} (thinfuse dmsetup help lists them)`);
    if (command === 'version' || command === 'targets') return print(command === 'version' ? report.version() : report.targetsList());
    const control = kernelDeviceMapper();
    if (control) throw new ThinError('NOT_SUPPORTED', `this host has a kernel device-mapper (${control}): use its dmsetup, not thinfuse dmsetup`);
    return await runCommand(command, args, flags);
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    process.stderr.write(`${msg.startsWith('device-mapper:') ? msg : `dmsetup: ${msg}`}\n`);
    return 1;
  }
}

function print(lines: string[]): number {
  if (lines.length > 0) process.stdout.write(`${lines.join('\n')}\n`);
  return 0;
}

function need(args: string[], n: number, usage: string): void {
  if (args.length < n) throw new ThinError('EINVAL_ARG', `Please specify ${usage}`);
}

/** --table, else a table file argument, else stdin. */
function tableText(flags: Flags, file: string | undefined): string {
  if (flags.table !== undefined) return flags.table;
  if (file !== undefined) {
    try {
      return fs.readFileSync(file, 'utf8');
    } catch {
      throw new ThinError('EINVAL_ARG', `Couldn't open '${file}' for reading`);
    }
  }
  return fs.readFileSync(0, 'utf8');
}

async function runCommand(command: string, args: string[], flags: Flags): Promise<number> {
  const sd = StateDir.fromEnv(flags['state-dir']);
  const c: cmd.Ctx = { sd, devDir: devDir(flags['dev-dir']), state: { version: 1, devices: {} } };
  const table = command === 'create' || command === 'reload' || command === 'load' ? tableText(flags, args[1]) : '';
  let lines: string[] = [];
  let waitFor: { name: string; after?: number } | undefined;
  await sd.locked(async () => {
    c.state = sd.read();
    const revived = await revive(sd, c.devDir, c.state);
    c.down = revived.down;
    if (revived.changed) sd.write(c.state);
    for (const w of revived.warnings) process.stderr.write(`dmsetup: warning: ${w}\n`);
    const save = () => sd.write(c.state);
    switch (command) {
      case 'create': need(args, 1, 'device name'); await cmd.create(c, args[0]!, table); break;
      case 'load':
      case 'reload': need(args, 1, 'device'); await cmd.reload(c, args[0]!, table); break;
      case 'message': need(args, 3, 'DEVICE SECTOR MESSAGE'); await cmd.message(c, args[0]!, args[1]!, args.slice(2)); break;
      case 'suspend': need(args, 1, 'device'); await cmd.suspend(c, cmd.nameOf(c, args[0]!, 'suspend')); break;
      case 'resume': need(args, 1, 'device'); await cmd.resume(c, cmd.nameOf(c, args[0]!, 'resume')); break;
      case 'remove': need(args, 1, 'device'); await cmd.remove(c, args[0]!); break;
      case 'remove_all': await cmd.removeAll(c, save); break;
      case 'status': lines = await report.status(c, args[0]); break;
      case 'table': lines = report.table(c, args[0]); break;
      case 'info': lines = await report.info(c, args[0]); break;
      case 'deps': lines = report.deps(c, args[0]); break;
      case 'ls': lines = flags.tree ? report.tree(c) : report.ls(c); break;
      case 'wait': need(args, 1, 'device'); waitFor = { name: cmd.nameOf(c, args[0]!, 'wait'), after: args[1] === undefined ? undefined : eventArg(args[1]) }; break;
    }
    if (WRITERS.has(command)) save();
  });
  if (waitFor) await waitEvent(c, waitFor.name, waitFor.after);
  return print(lines);
}

function eventArg(text: string): number {
  if (!/^\d+$/.test(text)) throw new ThinError('EINVAL_ARG', `event number '${text}' is not a whole number`);
  return Number(text);
}

/** dmsetup wait: returns once the device's event number passes `after` (default: its number now). */
async function waitEvent(c: cmd.Ctx, name: string, after?: number): Promise<void> {
  const d = c.state.devices[name]!;
  const base = after ?? await report.eventNr(c, d);
  while (await report.eventNr(c, d) <= base) await new Promise((r) => setTimeout(r, 100));
}
