// Helpers for the end-to-end tests on real FUSE, loop devices, mkfs and
// mount: `thinfuse serve` started in the foreground (we keep its pid and
// exit code) or with --daemon, and attach / mount / spawn helpers that each
// push their own undo onto a LIFO stack. The stack runs in t.teardown (and,
// as a last resort, when the worker process exits), whether the test passed
// or failed, and then leftovers() checks that no loop device, mount or
// process of this test is left behind.
//
// Everything here acts only on what this test made: loop devices whose
// backing file lies under the test's directory, mounts under it, and pids it
// started. Nothing is found or killed by name, and nothing is unmounted
// lazily.
//
// The test process is never the FUSE daemon, so synchronous system calls on
// the mounts from here cannot deadlock; commands run synchronously.

import type { ExecutionContext } from 'ava';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ControlClient, readPointer } from '../../src/frontends/daemon/control.js';
import { native } from '../../src/io/native.js';
import { processAlive as alive, processStartTime } from '../../src/frontends/system/process.js';
import { CLI } from './cli.js';

export { alive, processStartTime };

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

const SBIN = ['/usr/local/sbin', '/usr/sbin', '/sbin'];
export const ENV: NodeJS.ProcessEnv = { ...process.env, PATH: [process.env.PATH ?? '/usr/bin:/bin', ...SBIN].join(':') };

//------------------------------------------------------------------------------
// what the tests need from the system

/** Each command these tests run, and the Debian package that ships it. */
const TOOLS: Array<[string, string]> = [
  ['losetup', 'mount'],
  ['mount', 'mount'],
  ['umount', 'mount'],
  ['fusermount', 'fuse'],
  ['mkfs.xfs', 'xfsprogs'],
  ['xfs_repair', 'xfsprogs'],
  ['mkfs.ext4', 'e2fsprogs'],
  ['e2fsck', 'e2fsprogs'],
  ['fio', 'fio'],
  ['thin_check', 'thin-provisioning-tools'],
  ['fstrim', 'util-linux'],
  ['fsfreeze', 'util-linux'],
  ['blockdev', 'util-linux'],
  ['dd', 'coreutils'],
  ['sync', 'coreutils'],
];

export function which(cmd: string): string | undefined {
  for (const dir of (ENV.PATH ?? '').split(':')) {
    if (!dir) continue;
    const p = path.join(dir, cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // keep looking
    }
  }
  return undefined;
}

/**
 * Throws (so the test FAILS, never skips) naming everything missing and the
 * package to install: root, /dev/fuse, the built CLI, and each tool.
 */
export function requireSystem(): void {
  const problems: string[] = [];
  if (process.getuid?.() !== 0) problems.push('these tests need root (loop devices, mount, FUSE)');
  let fuse: fs.Stats | undefined;
  try {
    fuse = fs.statSync('/dev/fuse');
  } catch {
    // reported below
  }
  if (!fuse?.isCharacterDevice()) problems.push('/dev/fuse is missing: apt-get install fuse (and modprobe fuse)');
  const missing = TOOLS.filter(([cmd]) => !which(cmd));
  const byPkg = new Map<string, string[]>();
  for (const [cmd, pkg] of missing) byPkg.set(pkg, [...(byPkg.get(pkg) ?? []), cmd]);
  for (const [pkg, cmds] of byPkg) problems.push(`${cmds.join(', ')} not found: apt-get install ${pkg}`);
  if (!fs.existsSync(CLI)) problems.push(`${CLI} is missing: run npm run build`);
  if (problems.length > 0) throw new Error(`end-to-end tests cannot run: ${problems.join('; ')}`);
}

//------------------------------------------------------------------------------
// running commands

export interface Ran {
  status: number;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a command synchronously (default timeout 3 min). */
export function run(cmd: string, args: string[], o: { input?: string | Buffer; timeoutMs?: number } = {}): Ran {
  const r = spawnSync(cmd, args, { env: ENV, input: o.input, timeout: o.timeoutMs ?? 180_000, maxBuffer: 256 * MiB, encoding: 'buffer' });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`${cmd} not found (see requireSystem)`);
  return { status: r.status ?? -1, signal: r.signal, stdout: r.stdout?.toString() ?? '', stderr: r.stderr?.toString() ?? '' };
}

function describe(cmd: string, args: string[], r: Ran): string {
  const how = r.signal ? `was killed by ${r.signal}` : `exited ${r.status}`;
  return `${cmd} ${args.join(' ')} ${how}: ${(r.stderr || r.stdout).trim()}`;
}

export function runOk(cmd: string, args: string[], o: { input?: string | Buffer; timeoutMs?: number } = {}): string {
  const r = run(cmd, args, o);
  if (r.status !== 0) throw new Error(describe(cmd, args, r));
  return r.stdout;
}

/** The thinfuse CLI (dist/). */
export function tf(args: string[], o: { input?: string | Buffer; timeoutMs?: number } = {}): Ran {
  return run(process.execPath, [CLI, ...args], o);
}

export function tfOk(args: string[], o: { input?: string | Buffer; timeoutMs?: number } = {}): string {
  const r = tf(args, o);
  if (r.status !== 0) throw new Error(describe('thinfuse', args, r));
  return r.stdout;
}

/** The thinfuse CLI's stdout as bytes (for `read`); throws on failure. */
export function tfBuf(args: string[]): Buffer {
  const r = spawnSync(process.execPath, [CLI, ...args], { env: ENV, timeout: 180_000, maxBuffer: 256 * MiB });
  if (r.status !== 0) throw new Error(`thinfuse ${args.join(' ')} exited ${r.status ?? r.signal}: ${r.stderr?.toString().trim()}`);
  return r.stdout;
}

/** `thinfuse ... --json`, returning `result`. */
export function tfJson<T = any>(args: string[]): T { // eslint-disable-line @typescript-eslint/no-explicit-any
  const out = tfOk([...args, '--json']);
  const parsed = JSON.parse(out) as { ok: boolean; result: T };
  if (!parsed.ok) throw new Error(`thinfuse ${args.join(' ')}: ${out}`);
  return parsed.result;
}

export function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

//------------------------------------------------------------------------------
// the kernel's view: processes, loop devices, mounts



/** Waits (blocking) until pid is gone; true if it went within ms. */
export function waitGoneSync(pid: number, ms: number): boolean {
  const end = Date.now() + ms;
  while (alive(pid)) {
    if (Date.now() > end) return false;
    sleepSync(50);
  }
  return true;
}

export interface MountInfo {
  mountpoint: string;
  fstype: string;
  source: string;
  options: string;
}

/** /proc/self/mountinfo, octal escapes undone. */
export function mountTable(): MountInfo[] {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter(Boolean).map((line) => {
    const [left, right] = line.split(' - ');
    const f = left!.split(' ');
    const r = right!.split(' ');
    return { mountpoint: unescape(f[4]!), fstype: r[0]!, source: unescape(r[1]!), options: `${f[5]} ${r[2] ?? ''}` };
  });
}

export function mountAt(dir: string): MountInfo | undefined {
  const all = mountTable().filter((m) => m.mountpoint === dir);
  return all[all.length - 1];
}

/** The backing file of a loop device (as the kernel has it), or undefined if detached. */
export function loopBacking(dev: string): string | undefined {
  try {
    return fs.readFileSync(`/sys/block/${path.basename(dev)}/loop/backing_file`, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/**
 * Attached loop devices: [device, backing file], from sysfs. Not `losetup
 * --list`, which opens every loop device and so hangs on one whose backing
 * file's FUSE daemon is stuck (another test's, say).
 */
export function loopList(): Array<[string, string]> {
  const list: Array<[string, string]> = [];
  for (const name of fs.readdirSync('/sys/block').filter((n) => /^loop\d+$/.test(n))) {
    const file = loopBacking(`/dev/${name}`);
    if (file) list.push([`/dev/${name}`, file]);
  }
  return list;
}

/** True when `file` (as the kernel names it, maybe with " (deleted)") is `want`. */
function sameBacking(file: string | undefined, want: string): boolean {
  return file !== undefined && (file === want || file === `${want} (deleted)`);
}

//------------------------------------------------------------------------------
// the cleanup stack

interface Undo {
  what: string;
  fn: () => void;
  armed: boolean;
}

/** LIFO undo steps. Each runs at most once; failures are collected, the rest still run. */
export class CleanupStack {
  private readonly undos: Undo[] = [];

  /** Pushes an undo step; the returned function drops it (the test did it itself). */
  push(what: string, fn: () => void): () => void {
    const u: Undo = { what, fn, armed: true };
    this.undos.push(u);
    return () => {
      u.armed = false;
    };
  }

  runAll(): string[] {
    const errors: string[] = [];
    while (this.undos.length > 0) {
      const u = this.undos.pop()!;
      if (!u.armed) continue;
      u.armed = false;
      try {
        u.fn();
      } catch (e) {
        errors.push(`${u.what}: ${(e as Error).message}`);
      }
    }
    return errors;
  }
}

//------------------------------------------------------------------------------
// one end-to-end test's world

const LOCK_FILE = path.join(os.tmpdir(), 'thinfuse-e2e.lock');

/**
 * Serializes the end-to-end tests of all test files (ava runs files in
 * parallel): they share loop devices, the CPU and the page cache, and their
 * timing matters. flock(2), released when the test ends or the process dies.
 */
async function lockE2E(t: ExecutionContext): Promise<void> {
  const fd = fs.openSync(LOCK_FILE, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
  const start = Date.now();
  const end = start + 15 * 60_000;
  while (!native.flock(fd, true, true)) {
    if (Date.now() > end) {
      fs.closeSync(fd);
      throw new Error(`timed out waiting for ${LOCK_FILE} (another end-to-end test holds it)`);
    }
    await sleep(200);
  }
  if (Date.now() - start > 1_000) t.log(`waited ${((Date.now() - start) / 1000).toFixed(1)} s for the e2e lock (${LOCK_FILE})`);
  t.teardown(() => fs.closeSync(fd));
}

interface SystemState {
  loops: string[];
  fuseMounts: string[];
}

function systemState(): SystemState {
  const loops = loopList().map(([dev, file]) => `${dev}: (${file})`);
  const fuseMounts = fs.readFileSync('/proc/mounts', 'utf8').split('\n').filter((l) => l.split(' ')[2]?.startsWith('fuse'));
  return { loops, fuseMounts };
}

/**
 * Undo steps that must run even if the worker ends without teardown: ava's
 * global timeout kills its worker with SIGTERM, Ctrl-C sends SIGINT. The
 * handlers run the stacks, then let the signal do what it would have done.
 */
const liveStacks = new Set<CleanupStack>();
let exitHook = false;
function hookExit(): void {
  if (exitHook) return;
  exitHook = true;
  const runStacks = () => {
    for (const s of liveStacks) {
      const errors = s.runAll();
      for (const e of errors) process.stderr.write(`e2e cleanup: ${e}\n`);
    }
    liveStacks.clear();
  };
  process.on('exit', runStacks);
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    const onSignal = () => {
      runStacks();
      process.removeListener(sig, onSignal);
      process.kill(process.pid, sig);
    };
    process.on(sig, onSignal);
  }
}

export interface ServeOptions {
  mountpoint?: string;
  /** Extra arguments after `serve POOL MNT`. */
  args?: string[];
  /** Wait this long for the "serving" line (default 30 s). */
  readyMs?: number;
  /** Run as under systemd: JOURNAL_STREAM names the log file serve writes stderr to. */
  journalStream?: boolean;
}

export type FsKind = 'xfs' | 'ext4';

export class E2E {
  readonly stack = new CleanupStack();
  readonly pool: string;
  readonly mnt: string;
  private readonly pids = new Set<number>();
  private readonly before: SystemState;
  private serveCount = 0;

  private constructor(readonly t: ExecutionContext, readonly root: string) {
    this.pool = path.join(root, 'P');
    this.mnt = path.join(root, 'mnt');
    fs.mkdirSync(this.mnt);
    this.before = systemState();
  }

  /**
   * Checks the system (failing the test if anything is missing), takes the
   * e2e lock, and makes a temp dir with an empty mountpoint `mnt`. The
   * teardown runs the stack, then checks for leftovers, then removes the dir
   * (only if nothing is mounted under it).
   */
  static async start(t: ExecutionContext, prefix = 'thinfuse-e2e-'): Promise<E2E> {
    requireSystem();
    await lockE2E(t);
    const root = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    // The tag scripts/sweep.ts looks for: which worker owns this dir, so a
    // later run clears it only once that worker is gone.
    fs.writeFileSync(path.join(root, '.thinfuse-test'), `${process.pid} ${processStartTime(process.pid)}\n`);
    const env = new E2E(t, root);
    // The bottom of the stack: remove the dir, but only once nothing is
    // mounted under it or attached to a file in it (rm -r would follow mounts).
    env.stack.push(`remove ${root}`, () => {
      if (mountTable().some((m) => env.under(m.mountpoint)) || loopList().some(([, f]) => env.under(f))) return;
      fs.rmSync(root, { recursive: true, force: true });
    });
    liveStacks.add(env.stack);
    hookExit();
    t.teardown(() => env.finish());
    return env;
  }

  private finish(): void {
    liveStacks.delete(this.stack);
    const errors = this.stack.runAll();
    const left = this.leftovers();
    const problems = [...errors.map((e) => `cleanup failed: ${e}`), ...left.map((l) => `left behind: ${l}`)];
    if (problems.length > 0) throw new Error(problems.join('\n'));
  }

  under(p: string): boolean {
    return p === this.root || p.startsWith(`${this.root}/`) || p.includes(`${this.root}/`);
  }

  /**
   * What this test left behind: loop devices over files under its dir,
   * mounts under its dir or of those loop devices, and live processes it
   * started. Compares the loop devices (loopList) and the FUSE mounts of /proc/mounts with
   * the state when the test began (others may attach and mount meanwhile;
   * only what is ours counts).
   */
  leftovers(): string[] {
    const now = systemState();
    const left: string[] = [];
    const newLoops = now.loops.filter((l) => !this.before.loops.includes(l) && this.under(l));
    left.push(...newLoops.map((l) => `loop device: ${l}`));
    const ourLoops = loopList().filter(([, f]) => this.under(f)).map(([d]) => d);
    for (const m of mountTable()) {
      if (this.under(m.mountpoint) || ourLoops.includes(m.source)) left.push(`mount: ${m.source} on ${m.mountpoint} (${m.fstype})`);
    }
    const newFuse = now.fuseMounts.filter((l) => !this.before.fuseMounts.includes(l) && this.under(l));
    for (const l of newFuse) if (!left.some((x) => x.includes(l.split(' ')[1]!))) left.push(`FUSE mount: ${l}`);
    for (const pid of this.pids) if (alive(pid)) left.push(`process ${pid}`);
    return left;
  }

  path(...parts: string[]): string {
    return path.join(this.root, ...parts);
  }

  /** Registers a pid we started, so leftovers() checks it. */
  track(pid: number): void {
    this.pids.add(pid);
    fs.appendFileSync(path.join(this.root, '.pids'), `${pid}\n`);
  }

  //----------------------------------------------------------------------------
  // pool and serve

  createPool(dataSize = '16G', metadataSize = '256M'): void {
    tfOk(['pool', 'create', this.pool, '--data-size', dataSize, '--metadata-size', metadataSize]);
  }

  /** `thinfuse serve POOL MNT` in the foreground, as our child; resolves once it is serving. */
  async serve(o: ServeOptions = {}): Promise<Serve> {
    const mountpoint = o.mountpoint ?? this.mnt;
    const logFile = this.path(`serve-${++this.serveCount}.log`);
    const fd = fs.openSync(logFile, 'w');
    const st = fs.fstatSync(fd);
    const env = o.journalStream ? { ...ENV, JOURNAL_STREAM: `${st.dev}:${st.ino}` } : ENV;
    const child = spawn(process.execPath, [CLI, 'serve', this.pool, mountpoint, ...(o.args ?? [])], { env, stdio: ['ignore', fd, fd] });
    fs.closeSync(fd);
    if (child.pid === undefined) throw new Error('could not spawn thinfuse serve');
    const s = new Serve(child, logFile, mountpoint);
    this.track(s.pid);
    s.disarm = this.stack.push(`stop serve (pid ${s.pid})`, () => stopServeSync(s.pid, mountpoint));
    await s.ready(o.readyMs ?? 30_000);
    return s;
  }

  /**
   * `thinfuse serve --daemon`: returns once serving; the pid is P/serve.pid.
   * The returned Serve has no exit code (the daemon is not our child).
   */
  serveDaemon(o: ServeOptions = {}): { pid: number; stdout: string; disarm: () => void } {
    const mountpoint = o.mountpoint ?? this.mnt;
    const r = tf(['serve', this.pool, mountpoint, '--daemon', ...(o.args ?? [])], { timeoutMs: 60_000 });
    let pid = 0;
    try {
      pid = Number(fs.readFileSync(path.join(this.pool, 'serve.pid'), 'utf8').trim());
    } catch {
      // no pid file: failed to start
    }
    if (r.status !== 0) throw new Error(describe('thinfuse', ['serve', this.pool, mountpoint, '--daemon'], r));
    if (!pid) throw new Error(`serve --daemon succeeded but wrote no ${this.pool}/serve.pid`);
    this.track(pid);
    const disarm = this.stack.push(`stop serve --daemon (pid ${pid})`, () => stopServeSync(pid, mountpoint));
    return { pid, stdout: r.stdout, disarm };
  }

  //----------------------------------------------------------------------------
  // loop devices, filesystems, mounts

  /** `thinfuse attach P NAME`; undo: losetup -d, only if the device still backs onto our file. */
  attach(name: string, directIo?: 'on' | 'off', mountpoint = this.mnt): string {
    const args = ['attach', this.pool, name, ...(directIo ? ['--direct-io', directIo] : [])];
    const out = tfOk(args).trim();
    if (!/^\/dev\/loop\d+$/.test(out)) throw new Error(`thinfuse attach printed '${out}', not /dev/loopN`);
    const file = path.join(mountpoint, name);
    if (!sameBacking(loopBacking(out), file)) throw new Error(`${out} is not backed by ${file} (${loopBacking(out)})`);
    this.stack.push(`detach ${out} (${name})`, () => {
      if (sameBacking(loopBacking(out), file)) runOk('losetup', ['-d', out]);
    });
    return out;
  }

  /**
   * `thinfuse detach P TARGET` (the undo then finds nothing to do), then
   * waits until the serving daemon has seen the device file closed.
   *
   * losetup -d returns before the daemon gets FUSE's RELEASE (the kernel
   * sends it asynchronously), and under CPU load a SIGTERM sent right after
   * `thinfuse detach` can still find the file open, so serve refuses to stop.
   * Waiting here keeps that race out of the tests; each wait is logged.
   */
  async detach(target: string, mountpoint = this.mnt): Promise<string> {
    const name = target.startsWith('/dev/') ? path.basename(loopBacking(target)?.replace(/ \(deleted\)$/, '') ?? '') : target;
    const out = tfOk(['detach', this.pool, target]);
    if (!name || !mountAt(mountpoint)) return out;
    const ptr = readPointer(this.pool);
    if (!ptr) throw new Error(`${this.pool} is served at ${mountpoint} but has no control socket pointer`);
    const client = await ControlClient.connect(ptr.socketPath);
    try {
      const start = Date.now();
      let polls = 0;
      for (;;) {
        const open = ((await client.call('info', {})) as { openDevices: string[] }).openDevices;
        polls++;
        if (!open.includes(name)) break;
        if (Date.now() - start > 10_000) throw new Error(`${name} is still open in serve 10 s after thinfuse detach ${target} returned`);
        await sleep(10);
      }
      if (polls > 1) this.t.log(`note: serve still had ${name} open when thinfuse detach returned; closed ${Date.now() - start} ms later`);
    } finally {
      client.close();
    }
    return out;
  }

  mkfs(kind: FsKind, dev: string): void {
    if (kind === 'xfs') runOk('mkfs.xfs', ['-q', '-f', dev]);
    // Inode tables and journal written now (not by ext4lazyinit after mount,
    // which would allocate pool blocks in the middle of the test); fewer inodes.
    else runOk('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', '-i', '262144', dev]);
  }

  /** mount DEV at root/fs/LABEL; undo: thaw (if a test left it frozen), then umount (never lazy). */
  mount(dev: string, label: string, options: string[] = []): string {
    const dir = this.path('fs', label);
    fs.mkdirSync(dir, { recursive: true });
    runOk('mount', [...(options.length ? ['-o', options.join(',')] : []), dev, dir]);
    this.stack.push(`umount ${dir}`, () => {
      if (!mountAt(dir)) return;
      run('fsfreeze', ['--unfreeze', dir]);
      umountSync(dir);
    });
    return dir;
  }

  /** umount, non-lazy (the undo then finds nothing to do). */
  umount(dir: string): void {
    umountSync(dir);
  }

  /** Checks a filesystem that is not mounted: xfs_repair -n or e2fsck -fn. Returns the output. */
  fsck(kind: FsKind, dev: string): Ran {
    return kind === 'xfs' ? run('xfs_repair', ['-n', dev]) : run('e2fsck', ['-f', '-n', dev]);
  }

  //----------------------------------------------------------------------------
  // other processes

  /** Spawns a command with its output in a file; undo: SIGTERM, then SIGKILL. */
  spawn(cmd: string, args: string[], label: string): Child {
    const logFile = this.path(`${label}.out`);
    const fd = fs.openSync(logFile, 'w');
    const child = spawn(cmd, args, { env: ENV, stdio: ['ignore', fd, fd] });
    fs.closeSync(fd);
    if (child.pid === undefined) throw new Error(`could not spawn ${cmd}`);
    const c = new Child(child, logFile);
    this.track(c.pid);
    this.stack.push(`stop ${label} (pid ${c.pid})`, () => killSync(c.pid));
    return c;
  }
}

/** umount DIR, retrying a busy one for a few seconds. Never lazy. */
export function umountSync(dir: string): void {
  let last: Ran | undefined;
  for (let i = 0; i < 25; i++) {
    last = run('umount', [dir]);
    if (last.status === 0 || !mountAt(dir)) return;
    if (!/busy/i.test(last.stderr)) break;
    sleepSync(200);
  }
  throw new Error(describe('umount', [dir], last!));
}

function killSync(pid: number): void {
  if (!alive(pid)) return;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  if (waitGoneSync(pid, 5_000)) return;
  process.kill(pid, 'SIGKILL');
  if (!waitGoneSync(pid, 5_000)) throw new Error(`pid ${pid} survived SIGKILL`);
}

/**
 * Stops a serve we started: SIGTERM and wait; if it refuses or hangs,
 * SIGKILL. Then, if its FUSE mount is still there (killed, or crashed), clear
 * it with fusermount -u (or umount) — never lazily.
 */
export function stopServeSync(pid: number, mountpoint: string): void {
  const errors: string[] = [];
  if (alive(pid)) {
    // serve refuses a SIGTERM while a device file is open; a loop device
    // detached a moment ago may not have been released yet: ask again.
    let gone = false;
    for (let i = 0; i < 10 && !gone; i++) {
      if (!alive(pid)) break;
      process.kill(pid, 'SIGTERM');
      gone = waitGoneSync(pid, 2_000);
    }
    if (alive(pid)) {
      errors.push(`serve (pid ${pid}) did not stop on SIGTERM within 20 s; sent SIGKILL`);
      process.kill(pid, 'SIGKILL');
      if (!waitGoneSync(pid, 5_000)) throw new Error(`serve (pid ${pid}) survived SIGKILL`);
    }
  }
  clearDeadFuse(mountpoint);
  if (errors.length) throw new Error(errors.join('; '));
}

/** Clears the FUSE mount a dead serve left at mountpoint (fusermount -u, else umount). Never lazy. */
export function clearDeadFuse(mountpoint: string): void {
  const m = mountAt(mountpoint);
  if (!m || !m.fstype.startsWith('fuse')) return;
  const r = run('fusermount', ['-u', mountpoint]);
  if (r.status === 0 || !mountAt(mountpoint)) return;
  const r2 = run('umount', [mountpoint]);
  if (r2.status === 0 || !mountAt(mountpoint)) return;
  throw new Error(`${describe('fusermount', ['-u', mountpoint], r)}; ${describe('umount', [mountpoint], r2)}`);
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A child process we started, with its exit. */
export class Child {
  readonly pid: number;
  exited: Exit | undefined;
  readonly exit: Promise<Exit>;

  constructor(readonly child: ChildProcess, readonly logFile: string) {
    this.pid = child.pid!;
    this.exit = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.exited = { code, signal };
        resolve(this.exited);
      });
    });
  }

  log(): string {
    try {
      return fs.readFileSync(this.logFile, 'utf8');
    } catch {
      return '';
    }
  }

  /** Waits for exit; undefined if it is still running after ms. */
  async waitExit(ms: number): Promise<Exit | undefined> {
    let timer: NodeJS.Timeout | undefined;
    const r = await Promise.race([this.exit, new Promise<undefined>((res) => (timer = setTimeout(() => res(undefined), ms)))]);
    clearTimeout(timer);
    return r;
  }

  signal(sig: NodeJS.Signals): void {
    if (this.exited === undefined) process.kill(this.pid, sig);
  }
}

/** A foreground `thinfuse serve` we started. */
export class Serve extends Child {
  disarm: () => void = () => {};

  constructor(child: ChildProcess, logFile: string, readonly mountpoint: string) {
    super(child, logFile);
  }

  async ready(ms: number): Promise<void> {
    const end = Date.now() + ms;
    for (;;) {
      if (this.log().includes(`(pid ${this.pid})`)) return;
      if (this.exited) throw new Error(`serve exited (${this.exited.code ?? this.exited.signal}) before serving: ${this.log().trim()}`);
      if (Date.now() > end) throw new Error(`serve (pid ${this.pid}) not ready after ${ms} ms: ${this.log().trim()}`);
      await sleep(50);
    }
  }

  /** SIGTERM, then the exit (throws if it is still running after ms). */
  async stop(ms = 30_000): Promise<Exit> {
    this.signal('SIGTERM');
    const e = await this.waitExit(ms);
    if (!e) throw new Error(`serve (pid ${this.pid}) still running ${ms} ms after SIGTERM; log:\n${this.log()}`);
    this.disarm();
    return e;
  }

  /** kill -9 of this pid only; resolves once it is dead. Leaves its (now dead) mount. */
  async kill9(): Promise<Exit> {
    this.signal('SIGKILL');
    const e = await this.waitExit(10_000);
    if (!e) throw new Error(`serve (pid ${this.pid}) survived SIGKILL`);
    return e;
  }
}

//------------------------------------------------------------------------------
// pool numbers

export function poolUsed(pool: string): { used: number; total: number; blockSize: number } {
  const s = tfJson<{ data: { used: number; total: number }; blockSize: number }>(['status', pool]);
  return { used: s.data.used, total: s.data.total, blockSize: s.blockSize };
}

/** Bytes the host filesystem has allocated for a (sparse) file. */
export function allocatedBytes(file: string): number {
  return fs.statSync(file).blocks * 512;
}

export function randomName(): string {
  return crypto.randomBytes(4).toString('hex');
}
