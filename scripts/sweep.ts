// Removes what an earlier, interrupted test run left behind, before the suite
// starts: a test killed by a timeout, a CI runner that lost power, a Ctrl-C
// at the wrong moment. A leaked loop device or mount breaks the next run.
//
// Only tagged leftovers are touched. The end-to-end helpers (test/_helpers/
// serve.ts) make each test's world in a directory under the temp dir with a
// tag file `.thinfuse-test` holding the owning worker's pid and its start
// time, and a `.pids` file listing every process the test started. A
// directory is swept only when its owner is gone (pid dead, or reused by
// another process with another start time), so a run in progress elsewhere
// on the machine is never disturbed. In a swept directory:
//   1. filesystems mounted under it, or from loop devices over files in it,
//      are thawed and unmounted (never lazily; deepest first);
//   2. loop devices over files in it are detached;
//   3. processes it recorded (`.pids`, and any `serve.pid` below it) are
//      stopped, by pid, and only if their command line still names the
//      directory;
//   4. FUSE mounts under it are cleared (fusermount -u, then umount);
//   5. the directory is removed, if nothing is mounted under it any more.
//
//   npx tsx scripts/sweep.ts [--dry-run]

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { processStartTime } from '../src/frontends/system/process.js';
import { mounts } from '../src/frontends/system/loop.js';

export const TAG_FILE = '.thinfuse-test';
const SBIN = '/usr/local/sbin:/usr/sbin:/sbin';
const env = { ...process.env, PATH: `${process.env.PATH ?? '/usr/bin:/bin'}:${SBIN}` };
const dryRun = process.argv.includes('--dry-run');

function sh(cmd: string, args: string[]): { ok: boolean; out: string } {
  if (dryRun) {
    console.log(`sweep: would run ${cmd} ${args.join(' ')}`);
    return { ok: true, out: '' };
  }
  const r = spawnSync(cmd, args, { env, encoding: 'utf8', timeout: 60_000 });
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}`.trim() };
}


function ownerAlive(dir: string): boolean {
  try {
    const [pid, start] = fs.readFileSync(path.join(dir, TAG_FILE), 'utf8').trim().split(' ');
    return processStartTime(Number(pid)) === start;
  } catch {
    return false;
  }
}

function under(root: string, p: string): boolean {
  return p === root || p.startsWith(`${root}/`);
}


function loops(): Array<{ dev: string; file: string }> {
  const r = spawnSync('losetup', ['--list', '--noheadings', '--raw', '--output', 'NAME,BACK-FILE'], { env, encoding: 'utf8' });
  return (r.stdout ?? '').split('\n').filter(Boolean).map((l) => {
    const sp = l.indexOf(' ');
    return { dev: l.slice(0, sp), file: l.slice(sp + 1).replace(/\\x20/g, ' ').replace(/ \(deleted\)$/, '') };
  });
}

function recordedPids(root: string): number[] {
  const pids = new Set<number>();
  const add = (text: string) => text.split(/\s+/).filter(Boolean).forEach((p) => pids.add(Number(p)));
  try {
    add(fs.readFileSync(path.join(root, '.pids'), 'utf8'));
  } catch {
    // none recorded
  }
  const walk = (dir: string, depth: number) => {
    if (depth > 3) return;
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (e.isFile() && e.name === 'serve.pid') add(fs.readFileSync(p, 'utf8'));
      // Never descend into a mount: the loop and FUSE mounts come down first.
      else if (e.isDirectory() && !mounts().some((m) => m.mountpoint === p)) walk(p, depth + 1);
    }
  };
  walk(root, 0);
  return [...pids].filter((p) => Number.isSafeInteger(p) && p > 1);
}

function stopPid(pid: number, root: string): void {
  let cmdline: string;
  try {
    cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
  } catch {
    return;
  }
  // A reused pid belongs to someone else: only a process naming our directory is ours.
  if (!cmdline.includes(root)) return;
  console.log(`sweep: stopping pid ${pid} (${cmdline.trim().slice(0, 120)})`);
  if (dryRun) return;
  for (const sig of ['SIGTERM', 'SIGTERM', 'SIGKILL'] as const) {
    try {
      process.kill(pid, sig);
    } catch {
      return;
    }
    const end = Date.now() + 3_000;
    while (Date.now() < end && processStartTime(pid) !== undefined) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
    if (processStartTime(pid) === undefined) return;
  }
}

function sweep(root: string): string[] {
  const problems: string[] = [];
  const ours = loops().filter((l) => under(root, l.file));
  const ourDevs = new Set(ours.map((l) => l.dev));
  const fsMounts = mounts().filter((m) => !m.fstype.startsWith('fuse') && (under(root, m.mountpoint) || ourDevs.has(m.source)));
  for (const m of fsMounts.reverse()) {
    console.log(`sweep: unmounting ${m.source} from ${m.mountpoint}`);
    sh('fsfreeze', ['--unfreeze', m.mountpoint]);
    const r = sh('umount', [m.mountpoint]);
    if (!r.ok) problems.push(`umount ${m.mountpoint}: ${r.out}`);
  }
  for (const l of ours) {
    console.log(`sweep: detaching ${l.dev} (${l.file})`);
    const r = sh('losetup', ['-d', l.dev]);
    if (!r.ok) problems.push(`losetup -d ${l.dev}: ${r.out}`);
  }
  for (const pid of recordedPids(root)) stopPid(pid, root);
  for (const m of mounts().filter((x) => x.fstype.startsWith('fuse') && under(root, x.mountpoint)).reverse()) {
    console.log(`sweep: clearing FUSE mount ${m.mountpoint}`);
    if (!sh('fusermount', ['-u', m.mountpoint]).ok) {
      const r = sh('umount', [m.mountpoint]);
      if (!r.ok) problems.push(`umount ${m.mountpoint}: ${r.out}`);
    }
  }
  if (mounts().some((m) => under(root, m.mountpoint))) problems.push(`${root} still has mounts; left in place`);
  else if (!dryRun) fs.rmSync(root, { recursive: true, force: true });
  return problems;
}

function main(): void {
  const tmp = os.tmpdir();
  const tagged = fs.readdirSync(tmp)
    .filter((n) => n.startsWith('thinfuse-'))
    .map((n) => path.join(tmp, n))
    .filter((p) => fs.existsSync(path.join(p, TAG_FILE)) && !ownerAlive(p));
  const problems = tagged.flatMap(sweep);
  console.log(`sweep: ${tagged.length} leftover test director${tagged.length === 1 ? 'y' : 'ies'} swept`);
  if (problems.length > 0) {
    for (const p of problems) console.error(`sweep: ${p}`);
    console.error('sweep: could not clear every leftover of an earlier run; clear them by hand (see above) and rerun');
    process.exitCode = 1;
  }
}

main();
