// What happens to a pool that an operator must be able to see afterwards
// (low water, running out of space, mode changes, aborted transactions,
// auto-extend, faults, the daemon starting and stopping): the events' kinds
// and shapes, and the emitter an open pool reports them on. Who listens
// decides where they go (POOL/events.jsonl: events-journal.ts; metrics and
// the systemd journal: the daemon). Also carries commit latencies, which
// are measurements, not events.

import type { Fault } from '../io/fault-backing.js';

export const EVENT_KINDS = [
  'low_water',
  'out_of_data_space',
  'out_of_metadata_space',
  'mode_change',
  'transaction_aborted',
  'autoextend',
  'autoextend_refused',
  'fault_set',
  'fault_cleared',
  'daemon_start',
  'daemon_stop',
] as const;

export type EventKind = (typeof EVENT_KINDS)[number];

export type EventDetails = Record<string, string | number | boolean | null>;

/** One line of POOL/events.jsonl. */
export interface PoolEvent {
  /** ISO 8601, UTC, milliseconds. */
  time: string;
  kind: EventKind;
  details: EventDetails;
}

export function makeEvent(kind: EventKind, details: EventDetails = {}): PoolEvent {
  return { time: new Date().toISOString(), kind, details };
}

/** How much an event matters, as syslog levels: 3 err, 4 warning, 5 notice, 6 info. */
export function eventPriority(e: PoolEvent): 3 | 4 | 5 | 6 {
  switch (e.kind) {
    case 'transaction_aborted':
    case 'out_of_metadata_space':
      return 3;
    case 'out_of_data_space':
    case 'autoextend_refused':
    case 'low_water':
    case 'fault_set':
      return 4;
    case 'mode_change':
      return e.details.to === 'write' ? 5 : e.details.to === 'fail' ? 3 : 4;
    case 'daemon_start':
    case 'daemon_stop':
      return 6;
    default:
      return 5;
  }
}

/** One human line: `TIME KIND key=value ...`. */
export function eventLine(e: PoolEvent): string {
  const parts = Object.entries(e.details).map(([k, v]) => `${k}=${typeof v === 'string' && /\s/.test(v) ? JSON.stringify(v) : String(v)}`);
  return [e.time, e.kind, ...parts].join(' ');
}

/** A fault set with `thinfuse fault`, as an event's details. */
export function faultDetails(f: Fault): EventDetails {
  return {
    id: f.id, kind: f.kind, file: f.file, ops: f.ops.join(','),
    ...(f.device ? { device: f.device.name, sectors: `${f.device.sectors[0]}-${f.device.sectors[1] - 1}` } : { ranges: f.ranges.length }),
  };
}

type Listener = (e: PoolEvent) => void;

export class PoolEvents {
  private readonly listeners: Listener[] = [];
  private readonly commitListeners: Array<(seconds: number) => void> = [];
  /** Events emitted since open, by kind (metrics read these). */
  readonly counts = new Map<EventKind, number>();

  on(l: Listener): () => void {
    this.listeners.push(l);
    return () => {
      const i = this.listeners.indexOf(l);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  /** A listener's failure (a full disk under the journal) must never fail the pool operation that reported. */
  emit(kind: EventKind, details: EventDetails = {}): PoolEvent {
    const e = makeEvent(kind, details);
    this.counts.set(kind, (this.counts.get(kind) ?? 0) + 1);
    for (const l of [...this.listeners]) {
      try {
        l(e);
      } catch {
        // see above
      }
    }
    return e;
  }

  onCommit(l: (seconds: number) => void): void {
    this.commitListeners.push(l);
  }

  committed(seconds: number): void {
    for (const l of this.commitListeners) l(seconds);
  }
}
