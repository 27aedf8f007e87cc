import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ThinError } from '../../base/errors.js';
import { connectDaemon, readPointer } from '../daemon/control.js';
import { processAlive } from '../system/process.js';

// The one daemon layer mounts need. When no `thinfuse serve` serves the
// pool, the layer store starts `thinfuse serve POOL POOL/fuse --daemon` (its
// FUSE mount under the pool, like Docker's devicemapper/mnt) and records
// that it did; when a command leaves no layer mounted it stops the daemon it
// started, and never one a user started by hand.

export const FUSE_DIR = 'fuse';

export interface Served {
  pid: number;
  mountpoint: string;
}

/** The serve running for this pool, if its control socket answers. */
export async function servedBy(pool: string): Promise<Served | undefined> {
  const ptr = readPointer(pool);
  const client = await connectDaemon(pool);
  if (!ptr || !client) return undefined;
  try {
    const info = (await client.call('info', {})) as { mountpoint: string | null };
    return info.mountpoint ? { pid: ptr.pid, mountpoint: info.mountpoint } : undefined;
  } finally {
    client.close();
  }
}

/** Starts `thinfuse serve POOL POOL/fuse --daemon` and returns once it serves. */
export function startDaemon(pool: string): Served {
  const mountpoint = path.resolve(pool, FUSE_DIR);
  fs.mkdirSync(mountpoint, { recursive: true });
  const main = fileURLToPath(new URL('../cli/main.js', import.meta.url));
  const r = spawnSync(process.execPath, [main, 'serve', pool, mountpoint, '--daemon'], { encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) {
    throw new ThinError('IO_ERROR', `could not start thinfuse serve ${pool} ${mountpoint}: ${(r.stderr || r.stdout || String(r.error)).trim().split('\n')[0]}`);
  }
  const pid = Number(fs.readFileSync(path.join(pool, 'serve.pid'), 'utf8').trim());
  return { pid, mountpoint };
}


const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Stops the daemon we started: SIGTERM, repeated while it refuses (the kernel
 * may not yet have told it a detached loop let go of its file), until it
 * exits. Throws if it is still there after 30 s.
 */
export async function stopDaemon(d: Served): Promise<void> {
  const end = Date.now() + 30_000;
  while (processAlive(d.pid)) {
    if (Date.now() > end) throw new ThinError('DEV_BUSY', `the thinfuse serve this store started (pid ${d.pid}) does not stop; see its log ${d.mountpoint}/../serve.log`);
    try {
      process.kill(d.pid, 'SIGTERM');
    } catch {
      break;
    }
    for (let i = 0; i < 20 && processAlive(d.pid); i++) await sleep(50);
  }
}
