// Helpers for the containerd snapshotter tests (issue 13): a pool whose
// layer store is small, `thinfuse snapshotter` started as our child (undo:
// SIGTERM, then SIGKILL), a gRPC client of its socket with a namespace per
// call, and the bookkeeping files to compare before and after bad input.

import { credentials, Metadata, type ServiceError } from '@grpc/grpc-js';
import fs from 'node:fs';
import path from 'node:path';
import { snapshotsService } from '../../src/frontends/snapshotter/proto.js';
import { CLI } from './cli.js';
import { alive, Child, type E2E, ENV, sleep, waitGoneSync } from './serve.js';
import { spawn } from 'node:child_process';

let started = 0;

export const SMALL_POOL = ['dm.loopdatasize=4G', 'dm.loopmetadatasize=256M'];

export interface Snapshotter {
  child: Child;
  socket: string;
}

/** Writes POOL/layers.conf (pool sizes) and the snapshotter config, starts it, waits until it serves (or exits). Push the store's undo (pushStoreUndo) before. */
export async function startSnapshotter(env: E2E, config: object = { base_image_size: '256MB', fs_type: 'ext4' }, extraEnv: Record<string, string> = {}): Promise<Snapshotter> {
  fs.mkdirSync(env.pool, { recursive: true });
  fs.writeFileSync(path.join(env.pool, 'layers.conf'), JSON.stringify({ 'storage-opts': SMALL_POOL }));
  const conf = env.path('snapshotter.json');
  fs.writeFileSync(conf, JSON.stringify(config));
  const socket = env.path('run', 'snapshotter.sock');
  const log = env.path(`snapshotter-${++started}.log`);
  const fd = fs.openSync(log, 'w');
  const proc = spawn(process.execPath, [CLI, 'snapshotter', env.pool, '--socket', socket, '--config', conf], { env: { ...ENV, ...extraEnv }, stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  const child = new Child(proc, log);
  env.track(child.pid);
  env.stack.push(`stop the snapshotter (pid ${child.pid})`, () => {
    if (child.exited || !alive(child.pid)) return;
    process.kill(child.pid, 'SIGTERM');
    if (!waitGoneSync(child.pid, 60_000)) process.kill(child.pid, 'SIGKILL');
  });
  const end = Date.now() + 120_000;
  while (!child.log().includes('serving ')) {
    if (child.exited) return { child, socket };
    if (Date.now() > end) throw new Error(`snapshotter not ready after 120 s: ${child.log()}`);
    await sleep(100);
  }
  return { child, socket };
}

/** SIGTERM and the exit code (throws if it does not stop in 60 s). */
export async function stopSnapshotter(s: Snapshotter): Promise<number | null> {
  s.child.signal('SIGTERM');
  const e = await s.child.waitExit(60_000);
  if (!e) throw new Error(`snapshotter still running 60 s after SIGTERM: ${s.child.log()}`);
  return e.code;
}

export interface Mount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

export interface Info {
  name: string;
  parent: string;
  kind: string;
  labels: Record<string, string>;
  created_at: { seconds: number };
  updated_at: { seconds: number };
}

type Any = any; // eslint-disable-line @typescript-eslint/no-explicit-any

/** A Snapshots client: call(method, request, namespace) resolves the response or rejects with the ServiceError. */
export class SnapClient {
  private readonly c: Any;

  constructor(socket: string) {
    const { Client } = snapshotsService();
    this.c = new Client(`unix:${socket}`, credentials.createInsecure());
  }

  call<T = Any>(method: string, req: object, ns?: string): Promise<T> {
    const md = new Metadata();
    if (ns !== undefined) md.set('containerd-namespace', ns);
    return new Promise((resolve, reject) => this.c[method](req, md, (e: ServiceError | null, r: T) => (e ? reject(e) : resolve(r))));
  }

  /** The error's gRPC code (and message), failing if the call succeeds. */
  async code(method: string, req: object, ns?: string): Promise<{ code: number; details: string }> {
    try {
      await this.call(method, req, ns);
    } catch (e) {
      const se = e as ServiceError;
      return { code: se.code, details: se.details };
    }
    throw new Error(`${method} ${JSON.stringify(req)} succeeded; expected an error`);
  }

  list(ns: string, filters: string[] = []): Promise<Info[]> {
    const md = new Metadata();
    md.set('containerd-namespace', ns);
    const out: Info[] = [];
    return new Promise((resolve, reject) => {
      const s = this.c.List({ filters }, md);
      s.on('data', (r: { info: Info[] }) => out.push(...r.info));
      s.on('error', reject);
      s.on('end', () => resolve(out));
    });
  }

  /** A unary call whose request is these raw bytes, not a protobuf message of the method: the status code. */
  raw(method: string, bytes: Buffer, ns: string): Promise<number> {
    const md = new Metadata();
    md.set('containerd-namespace', ns);
    const p = `/containerd.services.snapshots.v1.Snapshots/${method}`;
    return new Promise((resolve) => this.c.makeUnaryRequest(p, () => bytes, (b: Buffer) => b, {}, md, (e: ServiceError | null) => resolve(e ? e.code : 0)));
  }

  close(): void {
    this.c.close();
  }
}

/** layers.json and snapshots.json as text: equal before and after means bad input changed nothing. */
export function bookkeeping(pool: string): string {
  return ['layers.json', 'snapshots.json'].map((f) => fs.readFileSync(path.join(pool, f), 'utf8')).join('\n');
}
