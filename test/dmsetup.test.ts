// thinfuse dmsetup (lab mode): the kernel document's walkthrough run as
// written (scripts/dm-walkthrough.sh) through `thinfuse dmsetup` and through
// the `dmsetup` command setup installs, with the report lines checked field
// by field against the kernel's formats; bad input refused with one
// dmsetup-style line and nothing changed; suspend really holding writes;
// the low-water event waking `dmsetup wait`; reload + resume growing a pool;
// a kill -9 of a pool's daemon survived. Every pool ends with thin_check.

import test, { type ExecutionContext } from 'ava';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CLI } from './_helpers/cli.js';
import { requireTool } from './_helpers/tools.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Run {
  status: number;
  stdout: string;
  stderr: string;
}

function sh(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Run {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: env ?? process.env, maxBuffer: 1 << 26 });
  if (r.error) throw new Error(`${cmd}: ${r.error.message} (install it: see scripts/setup.sh)`);
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** A device's first `count` 64 KiB blocks, read with O_DIRECT. */
function readBlocks(dev: string, count: number): Buffer {
  const r = spawnSync('dd', [`if=${dev}`, 'bs=64K', `count=${count}`, 'iflag=direct', 'status=none'], { maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`dd if=${dev}: ${r.stderr.toString().trim()}`);
  return r.stdout;
}

function ok(r: Run, what: string): string {
  if (r.status !== 0) throw new Error(`${what} exited ${r.status}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** One test's world: its own state dir, dev dir, loop devices; all undone at teardown. */
class Lab {
  readonly work = fs.mkdtempSync('/tmp/thinfuse-dm-');
  readonly env: NodeJS.ProcessEnv = { ...process.env, THINFUSE_DM_STATE: path.join(this.work, 'state'), DM_DEV_DIR: path.join(this.work, 'dev') };
  readonly mapper = path.join(this.work, 'dev', 'mapper');
  private readonly loops: string[] = [];
  private readonly children: ChildProcess[] = [];

  constructor(t: ExecutionContext) {
    t.teardown(() => this.cleanup());
  }

  dm(...args: string[]): Run {
    return sh(process.execPath, [CLI, 'dmsetup', ...args], this.env);
  }

  /** dmsetup with its table on stdin. */
  dmStdin(input: string, ...args: string[]): Run {
    const r = spawnSync(process.execPath, [CLI, 'dmsetup', ...args], { encoding: 'utf8', env: this.env, input });
    return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
  }

  dmOk(...args: string[]): string {
    return ok(this.dm(...args), `dmsetup ${args.join(' ')}`);
  }

  dmSpawn(...args: string[]): ChildProcess {
    const c = spawn(process.execPath, [CLI, 'dmsetup', ...args], { env: this.env, stdio: 'ignore' });
    this.children.push(c);
    return c;
  }

  /** A sparse file on a new loop device. */
  loop(name: string, size: string): string {
    const file = path.join(this.work, name);
    ok(sh('truncate', ['-s', size, file]), 'truncate');
    const dev = ok(sh('losetup', ['-f', '--show', file]), 'losetup').trim();
    this.loops.push(dev);
    return dev;
  }

  node(name: string): string {
    return path.join(this.mapper, name);
  }

  state(): { devices: Record<string, { pid?: number; loop?: string }> } {
    return JSON.parse(fs.readFileSync(path.join(this.work, 'state', 'state.json'), 'utf8'));
  }

  /** `blocks` random 64 KiB blocks written to thin and fsynced; the file holding them. */
  writePattern(blocks: number): string {
    const file = path.join(this.work, 'pattern');
    ok(sh('dd', ['if=/dev/urandom', `of=${file}`, 'bs=64K', `count=${blocks}`, 'status=none']), 'dd');
    ok(sh('dd', [`if=${file}`, `of=${this.node('thin')}`, 'bs=64K', 'oflag=direct', 'conv=fsync', 'status=none']), 'dd');
    return file;
  }

  /** kill -9 of the pool's daemon; resolves once it is gone. Returns its pid. */
  async killPoolDaemon(): Promise<number> {
    const pid = this.state().devices.pool!.pid!;
    process.kill(pid, 'SIGKILL');
    while (fs.existsSync(`/proc/${pid}`) && !/\) [ZX] /.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'))) await sleep(20);
    return pid;
  }

  mount(dev: string, dir: string): void {
    fs.mkdirSync(dir, { recursive: true });
    ok(sh('mount', [dev, dir]), `mount ${dev}`);
  }

  /** A pool on two loop devices with thin device 0 active as `thin`. */
  poolWithThin(o: { lenSectors?: number; lowWater?: number; thinSectors?: number } = {}): { meta: string; data: string } {
    requireTool('thin_check');
    const meta = this.loop('meta', '64M');
    const data = this.loop('data', '1G');
    this.dmOk('create', 'pool', '--table', `0 ${o.lenSectors ?? 2097152} thin-pool ${meta} ${data} 128 ${o.lowWater ?? 0}`);
    this.dmOk('message', this.node('pool'), '0', 'create_thin 0');
    this.dmOk('create', 'thin', '--table', `0 ${o.thinSectors ?? 524288} thin ${this.node('pool')} 0`);
    return { meta, data };
  }

  async cleanup(): Promise<void> {
    for (const c of this.children) if (c.exitCode === null) c.kill('SIGKILL');
    const mounted = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1] ?? '').filter((m) => m.startsWith(`${this.work}/`) && !m.startsWith(`${this.work}/state/`));
    for (const m of mounted.reverse()) sh('umount', [m]);
    sh(process.execPath, [CLI, 'dmsetup', 'remove_all'], this.env);
    // Anything remove_all could not stop: the daemons this lab started, by pid.
    try {
      for (const d of Object.values(this.state().devices)) if (d.pid) process.kill(d.pid, 'SIGKILL');
    } catch {
      // No state left, or the process is gone.
    }
    const stale = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1] ?? '').filter((m) => m.startsWith(`${this.work}/`));
    for (const m of stale) sh('umount', ['-l', m]);
    for (const l of sh('losetup', ['-nO', 'NAME,BACK-FILE', '-l']).stdout.split('\n')) {
      const [dev, file] = l.trim().split(/\s+/);
      if (dev && file?.startsWith(`${this.work}/`) && !this.loops.includes(dev)) sh('losetup', ['-d', dev]);
    }
    for (const l of this.loops) sh('losetup', ['-d', l]);
    fs.rmSync(this.work, { recursive: true, force: true });
  }
}

function thinCheck(t: ExecutionContext, metaDev: string): void {
  const r = sh(requireTool('thin_check'), [metaDev]);
  t.is(r.status, 0, `thin_check ${metaDev}: ${r.stdout}${r.stderr}`);
}

/** The lines a report command printed in the walkthrough's report.txt. */
function section(report: string, command: string): string[] {
  const parts = report.split(/^\$ /m);
  const p = parts.find((s) => s.startsWith(`dmsetup ${command}\n`));
  if (!p) throw new Error(`no "dmsetup ${command}" in the report`);
  return p.split('\n').slice(1, -1).filter((l, i, a) => !(l === '' && i === a.length - 1));
}

for (const via of ['thinfuse dmsetup', 'dmsetup (installed command)'] as const) {
  test.serial(`the kernel document's walkthrough runs as written through ${via}`, (t) => {
    requireTool('thin_check');
    requireTool('mkfs.ext4');
    const lab = new Lab(t);
    const env = { ...lab.env, ...(via === 'thinfuse dmsetup' ? {} : { DMSETUP: path.join(root, 'scripts', 'dmsetup') }) };
    const r = sh('bash', [path.join(root, 'scripts', 'dm-walkthrough.sh'), path.join(lab.work, 'lab')], env);
    t.is(r.status, 0, `walkthrough: ${r.stdout.slice(-2000)}${r.stderr}`);
    t.regex(r.stdout, /\$ cat .*\/mnt2\/f\nhi\n/, 'the snapshot holds the file written before it');
    t.regex(r.stdout, /walkthrough done/);
    const loops = /metadata on \/dev\/loop(\d+), data on \/dev\/loop(\d+)/.exec(r.stdout)!;
    const [meta, data] = [`7:${loops[1]}`, `7:${loops[2]}`];
    const report = fs.readFileSync(path.join(lab.work, 'lab', 'report.txt'), 'utf8');

    const ls = section(report, 'ls');
    t.is(ls.length, 3);
    t.is(ls[0], `pool\t(${data})`, 'the pool stands on its data device, as the kernel maps the pool device to it');
    const thinNo = /^thin\t\((\d+):(\d+)\)$/.exec(ls[2]!)!;
    t.truthy(thinNo, ls[2]);
    t.regex(ls[1]!, /^snap\t\(\d+:\d+\)$/);

    const info = section(report, 'info thin');
    t.regex(info[2]!, /^Read Ahead:        \d+$/);
    t.deepEqual([...info.slice(0, 2), ...info.slice(3)], [
      'Name:              thin',
      'State:             ACTIVE',
      'Tables present:    LIVE',
      'Open count:        1',
      'Event number:      0',
      `Major, minor:      ${thinNo[1]}, ${thinNo[2]}`,
      'Number of targets: 1',
      '',
    ]);

    t.deepEqual(section(report, 'table'), [
      `pool: 0 20971520 thin-pool ${meta} ${data} 128 32768 0 `,
      `snap: 0 2097152 thin ${data} 1`,
      `thin: 0 2097152 thin ${data} 0`,
    ]);

    const st = section(report, 'status');
    const pool = /^pool: 0 20971520 thin-pool 0 (\d+)\/524288 (\d+)\/163840 - rw discard_passdown queue_if_no_space - 1024 $/.exec(st[0]!);
    t.truthy(pool, `pool status line: ${JSON.stringify(st[0])}`);
    const thins = st.slice(1).map((l) => /^(snap|thin): 0 2097152 thin (\d+) (\d+|-)$/.exec(l));
    t.true(thins.every(Boolean), `thin status lines: ${JSON.stringify(st.slice(1))}`);
    for (const m of thins) t.is(Number(m![2]) % 128, 0, 'mapped sectors are whole blocks');
    t.true(Number(thins[1]![2]) / 128 <= Number(pool![2]), 'a thin maps no more blocks than the pool has in use');

    t.deepEqual(section(report, 'deps thin'), [`1 dependencies\t: (${data.replace(':', ', ')})`]);
    t.regex(r.stdout, /\$ thin_check \/dev\/loop\d+\n[\s\S]*walkthrough done/);
    t.true(fs.statSync(path.join(lab.work, 'lab', 'pool.html')).size > 1000, 'show drew the pool');
  });
}

test.serial('bad input gets one dmsetup-style line, exit 1, and changes nothing', (t) => {
  const lab = new Lab(t);
  const { meta, data } = lab.poolWithThin();
  const stateFile = path.join(lab.work, 'state', 'state.json');
  const cases: Array<[string[], RegExp]> = [
    [['create', 'x', '--table', '0 abc thin-pool'], /^device-mapper: reload ioctl on x failed: Invalid argument \(invalid table line/],
    [['create', 'x', '--table', `0 1024 linear ${data} 0`], /unknown target type "linear"/],
    [['create', 'x', '--table', `0 1024 thin-pool ${meta} ${data} 64 0`], /invalid block size 64: give 128 to 2097152 sectors/],
    [['create', 'x', '--table', `0 1024 thin-pool /nonexistent/meta ${data} 128 0`], /^device-mapper: reload ioctl on x failed: No such device \(device \/nonexistent\/meta not found\)$/],
    [['create', 'x', '--table', `0 1024 thin-pool ${meta} ${data} 128 0`], /Device or resource busy \(thin-pool: .* is already in use by pool pool\)/],
    [['create', 'x', '--table', `0 1024 thin /nonexistent 0`], /reload ioctl on x failed: No such device/],
    [['create', 'pool', '--table', `0 1024 thin-pool ${meta} ${data} 128 0`], /^device-mapper: create ioctl on pool failed: Device or resource busy/],
    [['remove', 'pool'], /^device-mapper: remove ioctl on pool failed: Device or resource busy \(pool pool is in use by thin/],
    [['remove', 'nosuch'], /^device-mapper: remove ioctl on nosuch failed: No such device or address/],
    [['message', lab.node('thin'), '0', 'create_thin 1'], /^device-mapper: message ioctl on thin failed: Invalid argument \(a thin device takes no messages/],
    [['message', lab.node('pool'), '0', 'frobnicate 1'], /^device-mapper: message ioctl on pool failed: Invalid argument/],
    [['message', lab.node('pool'), '0', 'create_thin 0'], /^device-mapper: message ioctl on pool failed: File exists/],
    [['message', lab.node('pool'), '0', 'create_snap 5 9'], /^device-mapper: message ioctl on pool failed: No data available/],
    [['reload', 'thin', '--table', `0 1024 thin-pool ${meta} ${data} 128 0`], /thin is immutable/],
    [['frob'], /^dmsetup: Unknown command: frob/],
  ];
  const before = { state: fs.readFileSync(stateFile, 'utf8'), ls: lab.dmOk('ls'), status: lab.dmOk('status'), table: lab.dmOk('table') };
  for (const [args, want] of cases) {
    const r = lab.dm(...args);
    t.is(r.status, 1, `${args.join(' ')}: exit ${r.status}`);
    t.is(r.stderr.trim().split('\n').length, 1, `${args.join(' ')}: one line: ${r.stderr}`);
    t.regex(r.stderr.trim(), want, args.join(' '));
    t.is(fs.readFileSync(stateFile, 'utf8'), before.state, `${args.join(' ')} left the state as it was`);
  }
  t.deepEqual({ state: fs.readFileSync(stateFile, 'utf8'), ls: lab.dmOk('ls'), status: lab.dmOk('status'), table: lab.dmOk('table') }, before);
  t.false(fs.existsSync(path.join(lab.work, 'state', 'pools', 'x')), 'no half-made pool x');

  // A mounted thin device is busy.
  ok(sh('mkfs.ext4', ['-q', lab.node('thin')]), 'mkfs.ext4');
  lab.mount(lab.node('thin'), path.join(lab.work, 'mnt'));
  const r = lab.dm('remove', 'thin');
  t.regex(r.stderr, /^device-mapper: remove ioctl on thin failed: Device or resource busy \(thin is in use: unmount it/);
  ok(sh('umount', [path.join(lab.work, 'mnt')]), 'umount');
  lab.dmOk('remove', 'thin');
  lab.dmOk('remove', 'pool');
  t.is(lab.dmOk('ls').trim(), 'No devices found');
  thinCheck(t, meta);
});

test.serial('suspend holds writes until resume; a snapshot taken between is consistent', async (t) => {
  const lab = new Lab(t);
  const { meta } = lab.poolWithThin();
  const thin = lab.node('thin');
  ok(sh('dd', ['if=/dev/urandom', `of=${thin}`, 'bs=64K', 'count=16', 'oflag=direct', 'conv=fsync', 'status=none']), 'dd');
  const first = readBlocks(thin, 16);
  lab.dmOk('suspend', thin);
  t.regex(lab.dmOk('info', 'thin'), /State:             SUSPENDED/);
  const writer = spawn('dd', ['if=/dev/zero', `of=${thin}`, 'bs=64K', 'count=16', 'oflag=direct', 'conv=fsync', 'status=none']);
  await sleep(1500);
  t.is(writer.exitCode, null, 'a write to the suspended device waits');
  lab.dmOk('message', lab.node('pool'), '0', 'create_snap 1 0');
  lab.dmOk('resume', thin);
  const code = await new Promise<number | null>((r) => writer.on('exit', r));
  t.is(code, 0, 'the held write completes after resume');
  lab.dmOk('create', 'snap', '--table', `0 524288 thin ${lab.node('pool')} 1`);
  const snap = readBlocks(lab.node('snap'), 16);
  t.true(readBlocks(thin, 16).equals(Buffer.alloc(16 * 65536)), 'the held write landed after resume');
  t.true(snap.equals(first), 'the snapshot holds what was written before the suspend, none of the held write');
  lab.dmOk('remove_all');
  thinCheck(t, meta);
});

test.serial('writing past the low water mark bumps the event number and wakes dmsetup wait', async (t) => {
  const lab = new Lab(t);
  // 64 blocks, low water 60: the 5th block provisioned crosses it.
  const { meta } = lab.poolWithThin({ lenSectors: 64 * 128, lowWater: 60 });
  t.regex(lab.dmOk('info', 'pool'), /Event number:      0\n/);
  const waiter = lab.dmSpawn('wait', 'pool', '0');
  await sleep(1000);
  t.is(waiter.exitCode, null, 'wait waits while nothing happened');
  ok(sh('dd', ['if=/dev/urandom', `of=${lab.node('thin')}`, 'bs=64K', 'count=6', 'oflag=direct', 'conv=fsync', 'status=none']), 'dd');
  const code = await Promise.race([new Promise<number | null>((r) => waiter.on('exit', r)), sleep(30_000).then(() => 'timeout')]);
  t.is(code, 0, 'dmsetup wait returned');
  t.regex(lab.dmOk('info', 'pool'), /Event number:      1\n/);
  lab.dmOk('remove_all');
  thinCheck(t, meta);
});

test.serial('reload with a longer table, then resume, grows the pool; the thin follows its own reload', (t) => {
  const lab = new Lab(t);
  const { meta, data } = lab.poolWithThin({ lenSectors: 1048576 });
  t.regex(lab.dmOk('status', 'pool'), / \d+\/8192 /);
  // The table from a file, as dmsetup reads one (comments and blank lines skipped).
  const tableFile = path.join(lab.work, 'pool.table');
  fs.writeFileSync(tableFile, `# grown\n\n0 2097152 thin-pool ${meta} ${data} 128 0\n`);
  lab.dmOk('reload', 'pool', tableFile);
  t.regex(lab.dmOk('info', 'pool'), /Tables present:    LIVE & INACTIVE/);
  t.regex(lab.dmOk('status', 'pool'), / \d+\/8192 /, 'the reloaded table is not live before resume');
  lab.dmOk('suspend', 'pool');
  lab.dmOk('resume', 'pool');
  t.regex(lab.dmOk('status', 'pool'), / \d+\/16384 /);
  t.regex(lab.dmOk('table', 'pool'), /^0 2097152 thin-pool /);
  const viaStdin = lab.dmStdin(`0 1048576 thin ${lab.node('pool')} 0\n`, 'reload', 'thin');
  t.is(viaStdin.status, 0, `reload with the table on stdin: ${viaStdin.stderr}`);
  lab.dmOk('resume', 'thin');
  t.regex(lab.dmOk('status', 'thin'), /^0 1048576 thin /);
  t.is(ok(sh('blockdev', ['--getsz', lab.node('thin')]), 'blockdev').trim(), '1048576', 'the thin device grew');
  lab.dmOk('remove_all');
  thinCheck(t, meta);
});

test.serial('a kill -9 of the pool daemon: the next command serves the pool again, data intact', async (t) => {
  const lab = new Lab(t);
  const { meta } = lab.poolWithThin();
  const file = lab.writePattern(8);
  const pid = await lab.killPoolDaemon();
  const ls = lab.dm('ls');
  t.is(ls.status, 0, ls.stderr);
  t.regex(ls.stdout, /^pool\t\(\d+:\d+\)\nthin\t\(\d+:\d+\)\n$/);
  t.not(lab.state().devices.pool!.pid, pid, 'a new daemon serves the pool');
  t.true(readBlocks(lab.node('thin'), 8).equals(fs.readFileSync(file)), 'the fsynced data reads back');
  lab.dmOk('remove_all');
  thinCheck(t, meta);
});

test.serial('where a kernel device-mapper is present, thinfuse dmsetup refuses and says to use it', (t) => {
  const lab = new Lab(t);
  fs.mkdirSync(lab.mapper, { recursive: true });
  // The control node as the kernel makes it (misc 10:236), where libdm looks: $DM_DEV_DIR/mapper/control.
  ok(sh('mknod', [path.join(lab.mapper, 'control'), 'c', '10', '236']), 'mknod');
  const r = lab.dm('ls');
  t.is(r.status, 1);
  t.is(r.stderr.trim(), `dmsetup: this host has a kernel device-mapper (${path.join(lab.mapper, 'control')}): use its dmsetup, not thinfuse dmsetup`);
  t.false(fs.existsSync(path.join(lab.work, 'state')), 'nothing made');
});


test.serial('after a reboot: a pool whose loop devices are gone is not listed, and comes back once they are', async (t) => {
  const lab = new Lab(t);
  const { meta, data } = lab.poolWithThin();
  const file = lab.writePattern(4);
  await lab.killPoolDaemon();
  // What a reboot leaves: the pool's loop devices no longer attached.
  ok(sh('losetup', ['-d', meta, data]), 'losetup -d');
  while (fs.existsSync(`/sys/block/${path.basename(meta)}/loop`) || fs.existsSync(`/sys/block/${path.basename(data)}/loop`)) await sleep(20);
  const ls = lab.dm('ls');
  t.is(ls.status, 0);
  t.is(ls.stdout, 'No devices found\n');
  t.regex(ls.stderr, /^dmsetup: warning: pool pool is not active: its metadata device \/dev\/loop\d+ is not attached, not .*\/meta: attach it again \(losetup /m);
  t.regex(lab.dm('info', 'thin').stderr, /^device-mapper: info ioctl on thin failed: No such device or address \(thin is not active/m);
  // The boot scripts attach the files again, at the same numbers.
  ok(sh('losetup', [meta, path.join(lab.work, 'meta')]), 'losetup');
  ok(sh('losetup', [data, path.join(lab.work, 'data')]), 'losetup');
  const back = lab.dm('ls');
  t.is(back.stderr, '');
  t.regex(back.stdout, /^pool\t\(\d+:\d+\)\nthin\t\(\d+:\d+\)\n$/);
  t.true(readBlocks(lab.node('thin'), 4).equals(fs.readFileSync(file)), 'the fsynced data reads back');
  lab.dmOk('remove_all');
  thinCheck(t, meta);
});
