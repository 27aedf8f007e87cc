// What of a file is in the host page cache, for the tests of
// Pool.dropWritten and native.dropCacheAsync.
import { execFileSync } from 'node:child_process';

/** Bytes of `file` in the host page cache (util-linux fincore). */
export function cachedBytes(file: string): number {
  return Number(execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', file], { encoding: 'utf8' }).trim());
}

/** Polls cachedBytes(file) every 50 ms for up to 5 s until it is below `bytes`; answers the last value. */
export async function cachedBelow(file: string, bytes: number): Promise<number> {
  let v = cachedBytes(file);
  for (let i = 0; i < 100 && v >= bytes; i++) {
    await new Promise((r) => setTimeout(r, 50));
    v = cachedBytes(file);
  }
  return v;
}
