import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { ThinError } from '../../base/errors.js';
import { formatBytes, parseSize } from '../../base/size.js';
import type { AutoextendConfig } from '../../pool/config.js';
import type { PoolEvent } from '../../pool/events.js';
import type { Out } from './output.js';

// Pool operations on the command line: `events` (POOL/events.jsonl, and
// --follow), the auto-extend options of `pool set`, and the lines `info`
// prints for them.

type Run = <A extends unknown[]>(fn: (out: Out, ...args: A) => Promise<void>) => (...args: A) => Promise<void>;

const FOLLOW_POLL_MS = 200;

//------------------------------------------------------------------------------
// pool set --autoextend-*

export interface AutoextendFlags {
  autoextendThreshold?: string;
  autoextendPercent?: string;
  metadataAutoextendThreshold?: string;
  metadataAutoextendPercent?: string;
  autoextendMax?: string;
}

export function autoextendOptions(cmd: Command): Command {
  return cmd
    .option('--autoextend-threshold <pct>', 'while served, grow the data device once this percent of it is used (50-100; 100: never)')
    .option('--autoextend-percent <pct>', 'grow data by this percent of its size (1-1000)')
    .option('--metadata-autoextend-threshold <pct>', 'the same for metadata (50-100; 100: never)')
    .option('--metadata-autoextend-percent <pct>', 'grow metadata by this percent of its size (1-1000)')
    .option('--autoextend-max <size>', 'never auto-extend data past this size (0: no limit)');
}

function percentArg(text: string, flag: string): number {
  if (!/^\d{1,6}$/.test(text.trim())) throw new ThinError('EINVAL_ARG', `${flag} takes a whole percent, not '${text}'`);
  return Number(text);
}

/** The settings with the flags given applied (checked against the pool by checkAutoextend). */
export function applyAutoextend(a: AutoextendConfig, o: AutoextendFlags): AutoextendConfig {
  const r = { ...a };
  if (o.autoextendThreshold !== undefined) r.threshold = percentArg(o.autoextendThreshold, '--autoextend-threshold');
  if (o.autoextendPercent !== undefined) r.percent = percentArg(o.autoextendPercent, '--autoextend-percent');
  if (o.metadataAutoextendThreshold !== undefined) r.metadataThreshold = percentArg(o.metadataAutoextendThreshold, '--metadata-autoextend-threshold');
  if (o.metadataAutoextendPercent !== undefined) r.metadataPercent = percentArg(o.metadataAutoextendPercent, '--metadata-autoextend-percent');
  if (o.autoextendMax !== undefined) r.max = o.autoextendMax.trim() === '0' ? 0 : parseSize(o.autoextendMax, '--autoextend-max');
  return r;
}

export function autoextendText(a: AutoextendConfig): string {
  const one = (what: string, threshold: number, percent: number) => (threshold >= 100 ? `${what} off` : `${what} at ${threshold}% by ${percent}%`);
  return `auto-extend: ${one('data', a.threshold, a.percent)}${a.max ? ` up to ${formatBytes(a.max)}` : ''}, ${one('metadata', a.metadataThreshold, a.metadataPercent)}`;
}

//------------------------------------------------------------------------------
// events

/** Reads POOL/events.jsonl from offset on, as it grows and rotates (tail -F). */
export class Follower {
  private offset = 0;
  private ino: number | undefined;
  private partial = '';
  private quietPolls = 0;
  private skipToNewline = false;

  constructor(private readonly file: string, private readonly rotated: string, private readonly parse: (line: string, where: string) => PoolEvent | string,
    private readonly onEvent: (e: PoolEvent) => void, private readonly onWarning: (w: string) => void) {}

  poll(): void {
    let st: fs.Stats;
    try {
      st = fs.statSync(this.file);
    } catch {
      return;
    }
    if (this.ino !== undefined && st.ino !== this.ino) this.rotate();
    this.ino = st.ino;
    if (st.size < this.offset) this.offset = 0;
    if (st.size === this.offset) return this.quiet();
    this.take(this.read(this.file, this.offset, st.size));
    this.offset = st.size;
  }

  /** The file was renamed to .1: what was appended to it before that, then the new one from its start. */
  private rotate(): void {
    try {
      const st = fs.statSync(this.rotated);
      if (st.ino === this.ino && st.size > this.offset) this.take(this.read(this.rotated, this.offset, st.size));
    } catch {
      // gone already
    }
    this.offset = 0;
    this.partial = '';
  }

  private read(file: string, from: number, to: number): string {
    const fd = fs.openSync(file, 'r');
    try {
      const b = Buffer.alloc(to - from);
      const n = fs.readSync(fd, b, 0, b.length, from);
      return b.subarray(0, n).toString('utf8');
    } finally {
      fs.closeSync(fd);
    }
  }

  private take(text: string): void {
    this.quietPolls = 0;
    const lines = (this.partial + text).split('\n');
    this.partial = lines.pop()!;
    for (const line of lines) {
      if (this.skipToNewline) {
        this.skipToNewline = false;
        continue;
      }
      if (line === '') continue;
      const r = this.parse(line, `a line of ${this.file} after byte ${this.offset}`);
      if (typeof r === 'string') this.onWarning(r);
      else this.onEvent(r);
    }
  }

  /** A last line that stays unfinished is a dead writer's, not one mid-append: skipped, with a warning. */
  private quiet(): void {
    if (this.partial === '' || ++this.quietPolls < 3) return;
    this.onWarning(`${this.file}: the last line is half-written (the writer died mid-append?); skipped`);
    this.partial = '';
    this.skipToNewline = true;
  }
}

function warn(w: string): void {
  process.stderr.write(`thinfuse: warning: ${w}\n`);
}

async function follow(dir: string, json: boolean): Promise<void> {
  const { eventLine } = await import('../../pool/events.js');
  const { eventsPath, parseJournal, parseLine, rotatedPath } = await import('../../pool/events-journal.js');
  const print = (e: PoolEvent) => process.stdout.write(`${json ? JSON.stringify(e) : eventLine(e)}\n`);
  let old = '';
  try {
    old = fs.readFileSync(rotatedPath(dir), 'utf8');
  } catch {
    // none yet
  }
  const before = parseJournal(old, rotatedPath(dir));
  before.warnings.forEach(warn);
  before.events.forEach(print);
  const f = new Follower(eventsPath(dir), rotatedPath(dir), parseLine, print, warn);
  f.poll();
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => f.poll(), FOLLOW_POLL_MS);
    const end = () => {
      clearInterval(timer);
      resolve();
    };
    process.once('SIGINT', end);
    process.once('SIGTERM', end);
  });
}

export function eventsCommand(program: Command, run: Run): void {
  program.command('events <pool>')
    .description('the pool\'s events (POOL/events.jsonl): low water, no space, auto-extend, mode changes, aborts, faults, serve start and stop')
    .option('--follow', 'keep printing new events as they come, like tail -f (--json: one event object a line)')
    .action(run(async (out, dir: string, o: { follow?: boolean }) => {
      if (!fs.existsSync(path.join(dir, 'metadata'))) throw new ThinError('POOL_MISSING', `no pool in ${dir} (no metadata file); create one with thinfuse pool create`);
      if (o.follow) return follow(dir, out.json);
      const [{ readJournal }, { eventLine }] = await Promise.all([import('../../pool/events-journal.js'), import('../../pool/events.js')]);
      const r = readJournal(dir);
      r.warnings.forEach(warn);
      out.result(r.events, r.events.map(eventLine));
    }));
}
