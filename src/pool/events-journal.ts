import fs from 'node:fs';
import path from 'node:path';
import { EVENT_KINDS, type PoolEvent } from './events.js';

// POOL/events.jsonl: the pool's events, one JSON object a line
// ({"time", "kind", "details"}), appended as they happen and bounded: past
// maxBytes the file is renamed to events.jsonl.1 (replacing the one before)
// and a new one begun. Appends are synchronous and small (O_APPEND), so a
// kill -9 loses no event already reported; what a crash can leave is a
// half-written last line (a full disk, power loss). Readers skip it with a
// warning, and the next append starts on a line of its own.

export const EVENTS_FILE = 'events.jsonl';
export const EVENTS_MAX_BYTES = 1 << 20;

export function eventsPath(dir: string): string {
  return path.join(dir, EVENTS_FILE);
}

export function rotatedPath(dir: string): string {
  return `${eventsPath(dir)}.1`;
}

/** Whether a non-empty file's last byte is a newline. */
function endsWithNewline(file: string, size: number): boolean {
  const fd = fs.openSync(file, 'r');
  try {
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, size - 1);
    return b[0] === 0x0a;
  } finally {
    fs.closeSync(fd);
  }
}

export class EventsJournal {
  constructor(readonly dir: string, private readonly maxBytes = EVENTS_MAX_BYTES) {}

  append(e: PoolEvent): void {
    const file = eventsPath(this.dir);
    const line = `${JSON.stringify(e)}\n`;
    let size = 0;
    try {
      size = fs.statSync(file).size;
    } catch {
      // no journal yet
    }
    if (size > 0 && size + Buffer.byteLength(line) > this.maxBytes) {
      fs.renameSync(file, rotatedPath(this.dir));
      size = 0;
    }
    const torn = size > 0 && !endsWithNewline(file, size);
    fs.appendFileSync(file, torn ? `\n${line}` : line);
  }
}

/** Whether a parsed line has an event's shape. */
function isEvent(v: unknown): v is PoolEvent {
  if (typeof v !== 'object' || v === null) return false;
  const e = v as Record<string, unknown>;
  return typeof e.time === 'string' && (EVENT_KINDS as readonly string[]).includes(e.kind as string)
    && typeof e.details === 'object' && e.details !== null && !Array.isArray(e.details);
}

/** One complete line: its event, or a warning naming where it is. */
export function parseLine(line: string, where: string): PoolEvent | string {
  try {
    const v: unknown = JSON.parse(line);
    if (isEvent(v)) return v;
  } catch {
    // reported below
  }
  return `${where} is not a whole event (half-written by a crash?); skipped`;
}

export interface JournalText {
  events: PoolEvent[];
  warnings: string[];
}

/** Parses a journal file's text; an unterminated last line is skipped with a warning. */
export function parseJournal(text: string, file: string): JournalText {
  const events: PoolEvent[] = [];
  const warnings: string[] = [];
  const lines = text.split('\n');
  const tail = lines.pop()!;
  lines.forEach((line, i) => {
    if (line === '') return;
    const r = parseLine(line, `${file} line ${i + 1}`);
    if (typeof r === 'string') warnings.push(r);
    else events.push(r);
  });
  if (tail !== '') warnings.push(`${file}: the last line is half-written (the writer died mid-append?); skipped`);
  return { events, warnings };
}

function readIfThere(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw e;
  }
}

/** Every event kept: events.jsonl.1, then events.jsonl. */
export function readJournal(dir: string): JournalText {
  const old = parseJournal(readIfThere(rotatedPath(dir)), rotatedPath(dir));
  const cur = parseJournal(readIfThere(eventsPath(dir)), eventsPath(dir));
  return { events: [...old.events, ...cur.events], warnings: [...old.warnings, ...cur.warnings] };
}

/** Up to `bytes` of a file's end, from the first whole line in it; whole: the file's start was reached. */
function tailText(file: string, bytes: number): { text: string; whole: boolean } {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch {
    return { text: '', whole: true };
  }
  try {
    const size = fs.fstatSync(fd).size;
    const from = Math.max(0, size - bytes);
    const b = Buffer.alloc(size - from);
    const n = fs.readSync(fd, b, 0, b.length, from);
    const text = b.subarray(0, n).toString('utf8');
    return from === 0 ? { text, whole: true } : { text: text.slice(text.indexOf('\n') + 1), whole: false };
  } finally {
    fs.closeSync(fd);
  }
}

/** A file's last n events, reading more of its end until it has them or the whole file. */
function lastOf(file: string, n: number, bytes: number): { events: PoolEvent[]; whole: boolean } {
  for (let b = bytes; ; b *= 4) {
    const t = tailText(file, b);
    const events = parseJournal(t.text, file).events;
    if (events.length >= n || t.whole) return { events: events.slice(-n), whole: t.whole };
  }
}

/** The last n events (for info and status: only the files' ends are read); unreadable lines are left out here. */
export function lastEvents(dir: string, n: number, bytes = 64 * 1024): PoolEvent[] {
  const cur = lastOf(eventsPath(dir), n, bytes);
  if (cur.events.length >= n) return cur.events;
  return [...lastOf(rotatedPath(dir), n - cur.events.length, bytes).events, ...cur.events];
}
