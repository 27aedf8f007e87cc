import { type Metadata, Server, ServerCredentials, type ServerUnaryCall, type ServerWritableStream, type sendUnaryData } from '@grpc/grpc-js';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { ThinError } from '../../base/errors.js';
import { readConfig } from './config.js';
import { grpcError, invalid } from './errors.js';
import { snapshotsService } from './proto.js';
import type { SnapRecord } from './records.js';
import { SnapshotService } from './service.js';

// `thinfuse snapshotter POOL`: the Snapshots gRPC service on a unix socket,
// for containerd's [proxy_plugins]. Each call's namespace is its
// `containerd-namespace` metadata (no header: the namespace ""). Handlers
// only translate: requests to SnapshotService, errors to gRPC statuses.

export const DEFAULT_SOCKET = '/run/thinfuse/snapshotter.sock';
const LIST_BATCH = 100;

type Req = Record<string, unknown>;

function namespaceOf(md: Metadata): string {
  const v = md.get('containerd-namespace')[0];
  return typeof v === 'string' ? v : v ? v.toString() : '';
}

function timestamp(iso: string): { seconds: number; nanos: number } {
  const ms = Date.parse(iso);
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}

export function infoOf(r: SnapRecord): Req {
  return { name: r.key, parent: r.parent, kind: r.kind.toUpperCase(), created_at: timestamp(r.created), updated_at: timestamp(r.updated), labels: r.labels };
}

function str(req: Req, field: string): string {
  const v = req[field];
  if (typeof v !== 'string') throw invalid(`the request's ${field} must be a string`);
  return v;
}

function labels(req: Req): Record<string, string> {
  return (req.labels as Record<string, string> | undefined) ?? {};
}

function unary(fn: (ns: string, req: Req) => Promise<unknown>) {
  return (call: ServerUnaryCall<Req, unknown>, cb: sendUnaryData<unknown>) => {
    Promise.resolve()
      .then(() => fn(namespaceOf(call.metadata), call.request))
      .then((r) => cb(null, r), (e: unknown) => cb(grpcError(e)));
  };
}

function handlers(s: SnapshotService) {
  return {
    Prepare: unary(async (ns, q) => ({ mounts: await s.create(ns, str(q, 'key'), str(q, 'parent'), labels(q), 'active') })),
    View: unary(async (ns, q) => ({ mounts: await s.create(ns, str(q, 'key'), str(q, 'parent'), labels(q), 'view') })),
    Mounts: unary(async (ns, q) => ({ mounts: await s.mounts(ns, str(q, 'key')) })),
    Commit: unary(async (ns, q) => {
      await s.commit(ns, str(q, 'name'), str(q, 'key'), labels(q));
      return {};
    }),
    Remove: unary(async (ns, q) => {
      await s.remove(ns, str(q, 'key'));
      return {};
    }),
    Stat: unary(async (ns, q) => ({ info: infoOf(await s.stat(ns, str(q, 'key'))) })),
    Update: unary(async (ns, q) => {
      const info = q.info as Req | null | undefined;
      if (!info) throw invalid('Update needs the snapshot info (name and labels)');
      const paths = ((q.update_mask as { paths?: string[] } | null | undefined)?.paths ?? []);
      return { info: infoOf(await s.update(ns, str(info, 'name'), labels(info), paths)) };
    }),
    List: (call: ServerWritableStream<Req, unknown>) => {
      s.list(namespaceOf(call.metadata), (call.request.filters as string[] | undefined) ?? []).then((all) => {
        for (let i = 0; i < all.length; i += LIST_BATCH) call.write({ info: all.slice(i, i + LIST_BATCH).map(infoOf) });
        call.end();
      }, (e: unknown) => call.emit('error', grpcError(e)));
    },
    Usage: unary(async (ns, q) => s.usage(ns, str(q, 'key'))),
    Cleanup: unary(async () => {
      await s.cleanup();
      return {};
    }),
  };
}

/** Refuses a socket another server answers on; removes a stale one. */
async function clearSocket(socket: string): Promise<void> {
  if (!fs.existsSync(socket)) {
    fs.mkdirSync(path.dirname(socket), { recursive: true });
    return;
  }
  const live = await new Promise<boolean>((resolve) => {
    const c = net.connect(socket, () => {
      c.destroy();
      resolve(true);
    });
    c.on('error', () => resolve(false));
  });
  if (live) throw new ThinError('DEV_BUSY', `${socket} is in use by another server; stop it or give another --socket`);
  fs.unlinkSync(socket);
}

export interface Running {
  socket: string;
  stop(): Promise<void>;
}

/** Opens the pool's snapshots, then serves them on the socket until stop(). */
export async function startSnapshotter(pool: string, socket: string, configFile?: string): Promise<Running> {
  const config = readConfig(configFile);
  socket = path.resolve(socket);
  await clearSocket(socket);
  const snaps = await SnapshotService.open(pool, config);
  const server = new Server();
  server.addService(snapshotsService().service, handlers(snaps));
  try {
    await new Promise<void>((resolve, reject) => server.bindAsync(`unix:${socket}`, ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())));
  } catch (e) {
    await snaps.close();
    throw new ThinError('IO_ERROR', `cannot listen on ${socket}: ${(e as Error).message}`);
  }
  return {
    socket,
    stop: async () => {
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      await snaps.close();
      fs.rmSync(socket, { force: true });
    },
  };
}
