import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { ThinError } from '../../base/errors.js';
import { parseSize } from '../../base/size.js';
import { META_BLOCK_SIZE } from '../../base/units.js';
import type { Server } from '../daemon/serve.js';
import { DEFAULT_POLL_US } from '../fuse/transport.js';
import { attachLoop, detachLoop, fsfreeze, loopBackingFile, loopsOf } from '../system/loop.js';
import type { Out } from './output.js';
import { callOp } from './session.js';

// serve, attach, detach, and snapshot --freeze: the commands that need the
// FUSE daemon.

type Run = <A extends unknown[]>(fn: (out: Out, ...args: A) => Promise<void>) => (...args: A) => Promise<void>;

const READY_FD = 'THINFUSE_READY_FD';

interface ServeFlags {
  daemon?: boolean;
  pidFile?: string;
  logFile?: string;
  cacheSize: string;
  metadataCacheSize: string;
  fastPath: string;
  readAhead: string;
  pollUs: string;
  metrics?: string;
}

/** serve --metrics HOST:PORT (port 0: any free one, logged); [v6]:PORT too. */
export function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new ThinError('EINVAL_ARG', `--metrics takes HOST:PORT (e.g. 127.0.0.1:9489), not '${text}'`);
  return { host: m[1] ?? m[2]!, port };
}

/** Tells a waiting `serve --daemon` parent how startup went. */
function notifyParent(line: string): void {
  const fd = Number(process.env[READY_FD]);
  if (!fd) return;
  try {
    fs.writeSync(fd, `${line}\n`);
    fs.closeSync(fd);
  } catch {
    // The parent is gone; nothing to tell.
  }
  delete process.env[READY_FD];
}

async function serveForeground(out: Out, dir: string, mountpoint: string, o: ServeFlags): Promise<void> {
  const cacheBlocks = Math.max(16, Math.floor(parseSize(o.metadataCacheSize, '--metadata-cache-size') / META_BLOCK_SIZE));
  const dataCacheBytes = o.cacheSize === '0' ? 0 : parseSize(o.cacheSize, '--cache-size');
  const fastPath = o.fastPath === 'on' ? true : o.fastPath === 'off' ? false : bad(`--fast-path takes on or off, not '${o.fastPath}'`);
  const readAheadBytes = parseSize(o.readAhead, '--read-ahead');
  const pollMicros = /^\d{1,6}$/.test(o.pollUs) ? Number(o.pollUs) : bad(`--poll-us takes a whole number of microseconds (0 turns polling off), not '${o.pollUs}'`);
  const metrics = o.metrics === undefined ? undefined : parseListen(o.metrics);
  const log = (line: string) => process.stderr.write(`thinfuse serve: ${line}\n`);
  // Imported here, not at the top: every other command would pay for loading FUSE and the engine.
  const { Server: ServerClass } = await import('../daemon/serve.js');
  let server: Server;
  try {
    server = await ServerClass.start(dir, mountpoint, { cacheBlocks, dataCacheBytes, fastPath, readAheadBytes, pollMicros, metrics, log });
  } catch (e) {
    notifyParent(`ERROR ${(e as Error).message}`);
    throw e;
  }
  const stop = () => void server.stop();
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  log(`serving ${dir} at ${server.mountpoint} (pid ${process.pid})`);
  notifyParent(`READY ${process.pid}`);
  await server.finished;
  process.off('SIGTERM', stop);
  process.off('SIGINT', stop);
  log('stopped');
  out.result({ stopped: true });
}

async function serveDaemon(out: Out, dir: string, mountpoint: string, o: ServeFlags): Promise<void> {
  const pidFile = path.resolve(o.pidFile ?? path.join(dir, 'serve.pid'));
  const logFile = path.resolve(o.logFile ?? path.join(dir, 'serve.log'));
  const logFd = fs.openSync(logFile, 'a');
  const main = fileURLToPath(new URL('./main.js', import.meta.url));
  const child = spawn(process.execPath, [main, 'serve', dir, mountpoint, '--cache-size', o.cacheSize, '--metadata-cache-size', o.metadataCacheSize, '--fast-path', o.fastPath, '--read-ahead', o.readAhead, '--poll-us', o.pollUs, ...(o.metrics === undefined ? [] : ['--metrics', o.metrics])], {
    detached: true,
    stdio: ['ignore', logFd, logFd, 'pipe'],
    env: { ...process.env, [READY_FD]: '3' },
  });
  fs.closeSync(logFd);
  const pipe = child.stdio[3] as NodeJS.ReadableStream;
  let said = '';
  await new Promise<void>((resolve) => {
    pipe.on('data', (c: Buffer) => (said += c.toString()));
    pipe.on('close', resolve);
    pipe.on('end', resolve);
    child.on('exit', () => resolve());
  });
  if (!said.startsWith('READY')) {
    throw new ThinError('IO_ERROR', said.startsWith('ERROR ') ? said.slice(6).trim() : `serve exited before it was ready; see ${logFile}`);
  }
  fs.writeFileSync(pidFile, `${child.pid}\n`);
  child.unref();
  out.result({ pid: child.pid, pidFile, logFile, mountpoint: path.resolve(mountpoint) }, [`serving ${dir} at ${path.resolve(mountpoint)} (pid ${child.pid}; log ${logFile})`]);
}

export function serveCommands(program: Command, run: Run): void {
  program.command('serve <pool> <mountpoint>')
    .description('serve each named thin device as a file MOUNTPOINT/NAME through FUSE; pool commands then go through it')
    .option('--daemon', 'detach, and write a pid file once serving')
    .option('--pid-file <file>', 'pid file for --daemon (default POOL/serve.pid)')
    .option('--log-file <file>', 'log for --daemon (default POOL/serve.log)')
    .option('--cache-size <size>', 'data block read cache (0 for none)', '64M')
    .option('--metadata-cache-size <size>', 'metadata block cache', '32M')
    .option('--fast-path <on|off>', 'serve reads and writes of known, unshared blocks in the FUSE threads, without JS', 'on')
    .option('--read-ahead <size>', "the mount's read-ahead window (the kernel's default is 128K)", '1M')
    .option('--metrics <host:port>', 'serve Prometheus metrics over HTTP at http://HOST:PORT/metrics (port 0: any free one, logged)')
    .option('--poll-us <n>', 'how long FUSE and JS threads poll for work before they sleep: lower latency for a CPU core (0: never)', String(DEFAULT_POLL_US))
    .action(run(async (out, dir: string, mountpoint: string, o: ServeFlags) => {
      if (o.daemon) await serveDaemon(out, dir, mountpoint, o);
      else await serveForeground(out, dir, mountpoint, o);
    }));

  program.command('attach <pool> <name>')
    .description('attach a served device to a loop device and print /dev/loopN')
    .option('--direct-io <on|off>', 'losetup --direct-io')
    .action(run(async (out, dir: string, name: string, o: { directIo?: string }) => {
      const file = await servedFile(dir, name);
      const dio = o.directIo === undefined ? undefined : o.directIo === 'on' ? true : o.directIo === 'off' ? false : bad(`--direct-io takes on or off, not '${o.directIo}'`);
      const dev = attachLoop(file, dio);
      out.result({ device: dev, file }, [dev]);
    }));

  program.command('detach <pool> <target>')
    .description('detach the loop device(s) of a served device (NAME) or one /dev/loopN')
    .action(run(async (out, dir: string, target: string) => {
      const devs = target.startsWith('/dev/') ? [await ownLoop(dir, target)] : loopsOf(await servedFile(dir, target));
      if (devs.length === 0) throw new ThinError('DEV_MISSING', `${target} is not attached`);
      const files = [...new Set(devs.map((d) => loopBackingFile(d) ?? ''))];
      for (const d of devs) detachLoop(d);
      const mountpoint = (await callOp(dir, 'info', {})).mountpoint ?? '';
      await closedInDaemon(dir, files.filter((f) => loopsOf(f).length === 0).map((f) => path.relative(mountpoint, f)));
      out.result({ detached: devs }, devs.map((d) => `detached ${d}`));
    }));
}

/**
 * The kernel tells FUSE a loop device let go of its file only after
 * `losetup -d` returns: wait until the daemon sees the files closed, so that
 * a stop right after detach is not refused.
 */
export async function closedInDaemon(dir: string, names: string[]): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const info = await callOp(dir, 'info', {});
    if (!names.some((n) => info.openDevices.includes(n))) return;
    await new Promise((r) => setTimeout(r, 50));
  }
}

function bad(message: string): never {
  throw new ThinError('EINVAL_ARG', message);
}

async function servedFile(dir: string, name: string): Promise<string> {
  const info = await callOp(dir, 'info', {});
  if (!info.mountpoint) throw new ThinError('EINVAL_ARG', `pool ${dir} is not being served; start thinfuse serve ${dir} MOUNTPOINT first`);
  await callOp(dir, 'size', { name });
  return path.join(info.mountpoint, name);
}

async function ownLoop(dir: string, dev: string): Promise<string> {
  const info = await callOp(dir, 'info', {});
  const backing = loopBackingFile(dev);
  if (!backing || !info.mountpoint || !backing.startsWith(`${info.mountpoint}/`)) {
    throw new ThinError('EINVAL_ARG', `${dev} is not attached to a device of pool ${dir}`);
  }
  return dev;
}

/** Freezes a mounted filesystem around fn, so a snapshot under it is clean. */
export async function withFrozen<T>(dir: string | undefined, fn: () => Promise<T>): Promise<T> {
  if (!dir) return fn();
  fsfreeze(dir, true);
  try {
    return await fn();
  } finally {
    fsfreeze(dir, false);
  }
}
