// The fuzzer's cases through the real CLI and a real `serve` (scripts/fuzz.ts
// --cli N): each case is written out as a pool directory, then `check`,
// `dump`, `ls` and `status` run as spawned commands (files hashed before and
// after), `check --repair` writes its new file, and `thinfuse serve` is
// started on it. Acceptable: exit 0, or a non-zero exit other than 70
// (internal error) with one line `thinfuse: ...` on stderr; never a signal,
// a timeout, or a changed input file. serve must either refuse to start the
// same way, or serve: every device file is read (errors allowed), and it
// stops on SIGTERM with status 0. Needs root and /dev/fuse.
//
// Cleanup is by pid and mountpoint only: every serve started here is stopped
// (SIGTERM, then SIGKILL) and its FUSE mount cleared without a lazy unmount,
// also if the run is interrupted.

import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CLI } from './cli.js';
import { type Finding, type FuzzBase, type FuzzCase, type FuzzFigures, nthCase } from './fuzz.js';
import { alive, clearDeadFuse, ENV, mountAt, sleep, stopServeSync } from './serve.js';

const live = new Map<number, string>();
let hooked = false;

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  const cleanup = () => {
    for (const [pid, mnt] of live) {
      try {
        stopServeSync(pid, mnt);
      } catch (e) {
        process.stderr.write(`fuzz cleanup: ${(e as Error).message}\n`);
      }
    }
    live.clear();
  };
  process.on('exit', cleanup);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      cleanup();
      process.kill(process.pid, sig);
    });
  }
}

function hashFile(file: string): string {
  try {
    return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
  } catch {
    return 'absent';
  }
}

function writeCase(dir: string, c: FuzzCase): void {
  fs.mkdirSync(dir, { recursive: true });
  const fd = fs.openSync(path.join(dir, 'metadata'), 'w');
  fs.ftruncateSync(fd, c.metaSize);
  for (const [p, page] of c.meta) if (p * 4096 < c.metaSize) fs.writeSync(fd, page, 0, Math.min(4096, c.metaSize - p * 4096), p * 4096);
  fs.closeSync(fd);
  fs.writeFileSync(path.join(dir, 'data'), '');
  fs.truncateSync(path.join(dir, 'data'), c.dataSize);
  if (c.devices !== undefined) fs.writeFileSync(path.join(dir, 'devices'), c.devices, 'latin1');
  if (c.config !== undefined) fs.writeFileSync(path.join(dir, 'config'), c.config, 'latin1');
}

/** Why a finished command's result is not acceptable, or undefined. */
function judge(r: { status: number | null; signal: NodeJS.Signals | null; stderr: string; error?: Error }): string | undefined {
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ETIMEDOUT') return 'timed out';
  if (r.signal) return `killed by ${r.signal}`;
  if (r.status === 0) return undefined;
  if (r.status === 70) return `internal error (exit 70): ${r.stderr.trim()}`;
  if (!/^thinfuse: [^\n]+\n$/.test(r.stderr)) return `exit ${r.status} without a one-line error: ${JSON.stringify(r.stderr.slice(0, 300))}`;
  return undefined;
}

function tf(args: string[]): { status: number | null; signal: NodeJS.Signals | null; stderr: string; error?: Error } {
  const r = spawnSync(process.execPath, [CLI, ...args], { env: ENV, timeout: 60_000, maxBuffer: 1 << 28, encoding: 'buffer' });
  return { status: r.status, signal: r.signal, stderr: r.stderr?.toString() ?? '', ...(r.error ? { error: r.error } : {}) };
}

async function serveCase(pool: string, mnt: string, finding: (step: string, why: string) => void): Promise<string> {
  const log = `${pool}.serve.log`;
  const fd = fs.openSync(log, 'w');
  const child = spawn(process.execPath, [CLI, 'serve', pool, mnt], { env: ENV, stdio: ['ignore', 'ignore', fd] });
  fs.closeSync(fd);
  const pid = child.pid!;
  live.set(pid, mnt);
  let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exit = new Promise<void>((res) => child.on('exit', (code, signal) => {
    exited = { code, signal };
    res();
  }));
  const text = () => fs.readFileSync(log, 'utf8');
  try {
    const end = Date.now() + 30_000;
    while (!exited && !text().includes(`(pid ${pid})`)) {
      if (Date.now() > end) {
        finding('serve', 'not serving and not exited after 30 s');
        return 'hang';
      }
      await sleep(50);
    }
    if (exited) {
      const why = judge({ status: exited.code, signal: exited.signal, stderr: text() });
      if (why) finding('serve', why);
      if (exited.code === 0) finding('serve', 'exited 0 without serving');
      return 'refused';
    }
    for (const name of fs.readdirSync(mnt)) {
      const r = spawnSync('cat', [path.join(mnt, name)], { timeout: 30_000, maxBuffer: 1 << 28 });
      if (r.error && (r.error as NodeJS.ErrnoException).code === 'ETIMEDOUT') finding(`serve: read ${name}`, 'timed out');
    }
    child.kill('SIGTERM');
    await Promise.race([exit, sleep(30_000)]);
    const end2 = exited as { code: number | null; signal: NodeJS.Signals | null } | undefined;
    if (!end2) finding('serve', 'did not stop within 30 s of SIGTERM');
    else if (end2.signal || end2.code !== 0) finding('serve', `stopped with ${end2.signal ?? end2.code}: ${text().trim().split('\n').pop()}`);
    return 'served';
  } finally {
    if (alive(pid) || mountAt(mnt)) stopServeSync(pid, mnt);
    clearDeadFuse(mnt);
    live.delete(pid);
  }
}

export async function runCliFuzz(base: FuzzBase, seed: number, cases: number, progress?: (f: FuzzFigures) => void): Promise<FuzzFigures> {
  hookExit();
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'thinfuse-fuzz-cli-'));
  const mnt = path.join(root, 'mnt');
  fs.mkdirSync(mnt);
  const f: FuzzFigures = { cases: 0, findings: [], opens: {}, mutations: {}, ms: 0 };
  const start = Date.now();
  try {
    for (let i = 0; i < cases; i++) {
      const c = nthCase(base, seed, i, f);
      const pool = path.join(root, `P${i}`);
      writeCase(pool, c);
      const finding = (step: string, error: string) => f.findings.push({ seed: c.seed, what: c.what, step, error } satisfies Finding);
      const files = ['metadata', 'data', 'devices', 'config'].map((n) => path.join(pool, n));
      const before = files.map(hashFile);
      for (const cmd of [['check'], ['dump'], ['ls'], ['status']]) {
        const why = judge(tf([...cmd, pool]));
        if (why) finding(cmd[0]!, why);
      }
      const after = files.map(hashFile);
      for (let k = 0; k < files.length; k++) {
        if (before[k] === after[k]) continue;
        if (k === 2 && /"intent": ?\{/.test(c.devices ?? '')) continue; // a crashed operation's intent was finished
        finding('read-only commands', `${path.basename(files[k]!)} changed`);
      }
      const rep = tf(['check', pool, '--repair']);
      const why = judge(rep);
      if (why) finding('check --repair', why);
      if (hashFile(files[0]!) !== after[0]) finding('check --repair', 'the input metadata changed');
      const outcome = await serveCase(pool, mnt, finding);
      const key = `serve ${outcome}, repair ${rep.status === 0 ? 'ok' : `exit ${rep.status}`}`;
      f.opens[key] = (f.opens[key] ?? 0) + 1;
      fs.rmSync(pool, { recursive: true, force: true });
      fs.rmSync(`${pool}.serve.log`, { force: true });
      f.cases++;
      f.ms = Date.now() - start;
      progress?.(f);
    }
  } finally {
    if (!mountAt(mnt)) fs.rmSync(root, { recursive: true, force: true });
  }
  return f;
}
