import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { isThinError, ThinError } from '../../base/errors.js';
import { native } from '../../io/native.js';

// The control socket of a serving daemon. While `thinfuse serve` holds a
// pool, every pool command reaches it here. The socket lives under
// /run/thinfuse (unix socket paths are limited to 108 bytes), mode 0600, and
// the pool directory holds a pointer to it. Each request is one line of
// JSON, {id, op, args}; each answer one line, {id, ok, result|error}.
// Only root and the daemon's own user may talk to it (SO_PEERCRED).

export const SOCKET_POINTER = 'socket';
export const RUN_DIR = process.env.THINFUSE_RUN_DIR ?? '/run/thinfuse';

export interface Request {
  id: number;
  op: string;
  args: unknown;
}

export type Response =
  | { id: number; ok: true; result: unknown }
  | { id: number; ok: false; error: { code: string; message: string } };

export function socketPathFor(poolDir: string): string {
  const key = crypto.createHash('sha256').update(fs.realpathSync(poolDir)).digest('hex').slice(0, 16);
  return path.join(RUN_DIR, `${key}.sock`);
}

type Handler = (op: string, args: unknown) => Promise<unknown>;

export class ControlServer {
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();

  private constructor(readonly socketPath: string, private readonly poolDir: string, handler: Handler) {
    this.server = net.createServer((s) => this.accept(s, handler));
  }

  static async listen(poolDir: string, handler: Handler): Promise<ControlServer> {
    fs.mkdirSync(RUN_DIR, { recursive: true, mode: 0o700 });
    const socketPath = socketPathFor(poolDir);
    // We hold the pool lock, so a socket file left here is a dead daemon's.
    fs.rmSync(socketPath, { force: true });
    const srv = new ControlServer(socketPath, poolDir, handler);
    await new Promise<void>((resolve, reject) => {
      srv.server.once('error', reject);
      srv.server.listen(socketPath, () => resolve());
    });
    fs.chmodSync(socketPath, 0o600);
    fs.writeFileSync(path.join(poolDir, SOCKET_POINTER), `${socketPath}\n${process.pid}\n`);
    return srv;
  }

  private accept(s: net.Socket, handler: Handler): void {
    if (!this.trusted(s)) {
      s.destroy();
      return;
    }
    this.sockets.add(s);
    s.on('close', () => this.sockets.delete(s));
    s.on('error', () => s.destroy());
    let pending = '';
    s.on('data', (chunk) => {
      pending += chunk.toString('utf8');
      for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        void this.answer(s, line, handler);
      }
    });
  }

  private trusted(s: net.Socket): boolean {
    const fd = (s as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (fd === undefined || fd < 0) return false;
    const { uid } = native.peerCred(fd);
    return uid === 0 || uid === process.getuid?.();
  }

  private async answer(s: net.Socket, line: string, handler: Handler): Promise<void> {
    let id = 0;
    let reply: Response;
    try {
      const req = JSON.parse(line) as Request;
      id = req.id;
      reply = { id, ok: true, result: await handler(req.op, req.args) };
    } catch (e) {
      const code = isThinError(e) ? e.code : 'INTERNAL';
      reply = { id, ok: false, error: { code, message: e instanceof Error ? e.message : String(e) } };
    }
    if (!s.destroyed) s.write(JSON.stringify(reply, (_k, v) => (typeof v === 'bigint' ? String(v) : v)) + '\n');
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
    fs.rmSync(path.join(this.poolDir, SOCKET_POINTER), { force: true });
  }
}

/** Where the daemon serving poolDir listens, if one says it does. */
export function readPointer(poolDir: string): { socketPath: string; pid: number } | undefined {
  try {
    const [socketPath, pid] = fs.readFileSync(path.join(poolDir, SOCKET_POINTER), 'utf8').split('\n');
    return socketPath ? { socketPath, pid: Number(pid) } : undefined;
  } catch {
    return undefined;
  }
}

/** A connection to the daemon serving the pool, or undefined when none answers (no pointer, or a stale one). */
export async function connectDaemon(poolDir: string): Promise<ControlClient | undefined> {
  const ptr = readPointer(poolDir);
  if (!ptr) return undefined;
  try {
    return await ControlClient.connect(ptr.socketPath);
  } catch {
    return undefined;
  }
}

/** A connection to a serving daemon. */
export class ControlClient {
  private nextId = 1;
  private pending = '';
  private readonly waiting = new Map<number, (r: Response) => void>();

  private constructor(private readonly socket: net.Socket) {
    socket.on('data', (chunk) => {
      this.pending += chunk.toString('utf8');
      for (let nl = this.pending.indexOf('\n'); nl >= 0; nl = this.pending.indexOf('\n')) {
        const r = JSON.parse(this.pending.slice(0, nl)) as Response;
        this.pending = this.pending.slice(nl + 1);
        this.waiting.get(r.id)?.(r);
        this.waiting.delete(r.id);
      }
    });
    socket.on('close', () => {
      for (const [id, w] of this.waiting) w({ id, ok: false, error: { code: 'IO_ERROR', message: 'the daemon closed the control connection' } });
      this.waiting.clear();
    });
  }

  static async connect(socketPath: string): Promise<ControlClient> {
    const socket = net.createConnection(socketPath);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new ControlClient(socket);
  }

  async call(op: string, args: unknown): Promise<unknown> {
    const id = this.nextId++;
    const reply = new Promise<Response>((r) => this.waiting.set(id, r));
    this.socket.write(JSON.stringify({ id, op, args }) + '\n');
    const r = await reply;
    if (!r.ok) throw new ThinError(r.error.code as never, r.error.message);
    return r.result;
  }

  close(): void {
    this.socket.end();
  }
}
