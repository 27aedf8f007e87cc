import fs from 'node:fs';
import { formatBytes } from '../../base/size.js';

// The pool-creation guard: sparse files may grow to their full size, so a
// host filesystem with less room than that fills up under the pool (the
// failure Docker's loop-lvm users met as a pool gone read-only).

/** One line on stderr when the host filesystem under dir cannot hold the sparse files at their full size. */
export function hostSpaceWarning(dir: string, dataSize: number, metadataSize: number): void {
  const st = fs.statfsSync(dir);
  const room = st.bavail * st.bsize;
  const want = dataSize + metadataSize;
  if (room < want) {
    process.stderr.write(`thinfuse: warning: the host filesystem under ${dir} has ${formatBytes(room)} free, less than the pool's sparse files may grow to (${formatBytes(want)}); watch thinfuse info and grow the host filesystem before the pool fills it\n`);
  }
}
