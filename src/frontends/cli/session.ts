import { isThinError } from '../../base/errors.js';
import { Pool } from '../../pool/pool.js';
import { ControlClient, readPointer } from '../daemon/control.js';
import { type OpArgs, type OpName, type OpResult, runOp } from '../ops.js';

// A CLI command talks to a pool through a session: the pool opened in this
// process when nobody holds it, or the serving daemon's control socket.

export interface Session {
  readonly remote: boolean;
  call<K extends OpName>(op: K, args: OpArgs<K>): Promise<OpResult<K>>;
  close(): Promise<void>;
}

export async function openSession(dir: string): Promise<Session> {
  let pool: Pool;
  try {
    pool = await Pool.open(dir, { oneShot: true });
  } catch (e) {
    if (!isThinError(e, 'POOL_LOCKED')) throw e;
    const ptr = readPointer(dir);
    if (!ptr) throw e;
    let client: ControlClient;
    try {
      client = await ControlClient.connect(ptr.socketPath);
    } catch {
      throw e;
    }
    return {
      remote: true,
      call: (op, args) => client.call(op, args) as never,
      close: async () => client.close(),
    };
  }
  return {
    remote: false,
    call: (op, args) => runOp({ pool }, op, args) as never,
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
