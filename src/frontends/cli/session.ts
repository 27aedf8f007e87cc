import { isThinError } from '../../base/errors.js';
import { connectDaemon } from '../daemon/control.js';
import type { Pool } from '../../pool/pool.js';
import type { OpArgs, OpName, OpResult } from '../ops.js';

// A CLI command talks to a pool through a session: the serving daemon's
// control socket when `thinfuse serve` holds the pool, or else the pool
// opened in this process.
//
// The socket is tried first and the engine is imported only when it is
// needed: most of a short command's time is Node loading modules, and a
// command sent to a daemon needs none of the engine's.

export interface Session {
  readonly remote: boolean;
  call<K extends OpName>(op: K, args: OpArgs<K>): Promise<OpResult<K>>;
  close(): Promise<void>;
}

async function daemonSession(dir: string): Promise<Session | undefined> {
  const client = await connectDaemon(dir);
  if (!client) return undefined;
  return {
    remote: true,
    call: (op, args) => client.call(op, args) as never,
    close: async () => client.close(),
  };
}

export async function openSession(dir: string): Promise<Session> {
  const remote = await daemonSession(dir);
  if (remote) return remote;
  const [engine, { runOp }, { PoolFaults }] = await Promise.all([import('../../pool/pool.js'), import('../ops.js'), import('../../pool/faults.js')]);
  let pool: Pool;
  // Faults persist in POOL/faults.json until cleared: a command run in-process meets them too.
  const faults = PoolFaults.load(dir);
  try {
    pool = await engine.Pool.open(dir, { oneShot: true, wrap: faults.wrap });
  } catch (e) {
    if (!isThinError(e, 'POOL_LOCKED')) throw e;
    // A daemon that started a moment ago holds the lock before its socket is up.
    const late = await daemonSession(dir);
    if (late) return late;
    throw e;
  }
  const { EventsJournal } = await import('../../pool/events-journal.js');
  const journal = new EventsJournal(dir);
  pool.eventStream.on((e) => journal.append(e));
  return {
    remote: false,
    call: (op, args) => runOp({ pool, faults }, op, args) as never,
    close: () => pool.close(),
  };
}

export async function withSession<T>(dir: string, fn: (s: Session) => Promise<T>): Promise<T> {
  const s = await openSession(dir);
  try {
    return await fn(s);
  } finally {
    await s.close();
  }
}

export async function callOp<K extends OpName>(dir: string, op: K, args: OpArgs<K>): Promise<OpResult<K>> {
  return withSession(dir, (s) => s.call(op, args));
}
