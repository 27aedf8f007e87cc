import fs from 'node:fs';
import { eventLine, eventPriority, type PoolEvent } from '../../pool/events.js';
import { EventsJournal } from '../../pool/events-journal.js';
import type { Pool } from '../../pool/pool.js';

// Where a serving daemon sends the pool's events: POOL/events.jsonl always,
// and its log (stderr), which under systemd is the journal: there each line
// carries its syslog priority as a `<N>` prefix, which journald reads
// (SyslogLevelPrefix=, on by default).

/** Whether stderr is the systemd journal's stream (JOURNAL_STREAM names its device and inode). */
export function stderrIsJournal(env: NodeJS.ProcessEnv = process.env): boolean {
  const m = /^(\d+):(\d+)$/.exec(env.JOURNAL_STREAM ?? '');
  if (!m) return false;
  try {
    const st = fs.fstatSync(2);
    return st.dev === Number(m[1]) && st.ino === Number(m[2]);
  } catch {
    return false;
  }
}

/** Sends every event of the pool to the journal file and the log; returns the unsubscribe. */
export function sendEvents(pool: Pool, log: (line: string) => void): { record: (e: PoolEvent) => void; stop: () => void } {
  const journal = new EventsJournal(pool.dir);
  const systemd = stderrIsJournal();
  const record = (e: PoolEvent) => {
    try {
      journal.append(e);
    } catch (err) {
      log(`could not append to ${pool.dir}/events.jsonl: ${(err as Error).message}`);
    }
    if (systemd) process.stderr.write(`<${eventPriority(e)}>thinfuse serve: event ${eventLine(e)}\n`);
    else log(`event ${eventLine(e)}`);
  };
  return { record, stop: pool.eventStream.on(record) };
}
