// scripts/sweep.ts clears an interrupted run's leftovers, and only those: a
// tagged directory whose owner is gone loses its mount, loop device, process
// and the directory itself; a directory whose owner lives is not touched.

import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { alive, ENV, loopList, mountAt, processStartTime, requireSystem, runOk, umountSync, waitGoneSync } from './_helpers/serve.js';

const SWEEP = path.join(import.meta.dirname, '..', 'scripts', 'sweep.ts');

function runSweep(): string {
  const r = spawnSync(process.execPath, ['--import=tsx', SWEEP], { env: ENV, encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) throw new Error(`sweep exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

test.serial('a dead owner\'s mount, loop device, process and directory are swept; a live owner\'s are not', async (t) => {
  requireSystem();
  const dead = fs.mkdtempSync(path.join(os.tmpdir(), 'thinfuse-sweeptest-'));
  const live = fs.mkdtempSync(path.join(os.tmpdir(), 'thinfuse-sweeptest-'));
  let dev = '';
  let pid = 0;
  t.teardown(() => {
    if (mountAt(path.join(dead, 'fs'))) umountSync(path.join(dead, 'fs'));
    if (dev && loopList().some(([d]) => d === dev)) runOk('losetup', ['-d', dev]);
    if (pid && alive(pid)) process.kill(pid, 'SIGKILL');
    fs.rmSync(dead, { recursive: true, force: true });
    fs.rmSync(live, { recursive: true, force: true });
  });

  // An owner that has exited: a pid that no longer runs with that start time.
  fs.writeFileSync(path.join(dead, '.thinfuse-test'), '2147483646 1\n');
  fs.writeFileSync(path.join(live, '.thinfuse-test'), `${process.pid} ${processStartTime(process.pid)}\n`);
  fs.writeFileSync(path.join(live, 'keep'), 'x');

  const img = path.join(dead, 'img');
  fs.writeFileSync(img, '');
  fs.truncateSync(img, 64 << 20);
  dev = runOk('losetup', ['-f', '--show', img]).trim();
  runOk('mkfs.ext4', ['-q', '-F', dev]);
  fs.mkdirSync(path.join(dead, 'fs'));
  runOk('mount', [dev, path.join(dead, 'fs')]);
  // One process (no shell between) whose command line names the directory.
  const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 600_000)', dead], { stdio: 'ignore', detached: true });
  pid = child.pid!;
  child.unref();
  fs.writeFileSync(path.join(dead, '.pids'), `${pid}\n`);

  const out = runSweep();
  t.log(out.trim());

  t.false(fs.existsSync(dead), 'the dead owner\'s directory is removed');
  t.falsy(mountAt(path.join(dead, 'fs')), 'its mount is gone');
  // By backing file, not name: a test running beside this one may take the freed loop number at once;
  // and the kernel lets go of a detached loop device a moment after losetup -d returns.
  const deadLoop = () => loopList().some(([d, f]) => d === dev && f.startsWith(`${dead}/`));
  for (let i = 0; i < 100 && deadLoop(); i++) await new Promise((r) => setTimeout(r, 50));
  t.false(deadLoop(), 'its loop device is detached');
  t.true(waitGoneSync(pid, 5_000), 'its recorded process is stopped');
  t.true(fs.existsSync(path.join(live, 'keep')), 'a live owner\'s directory is left alone');
});
