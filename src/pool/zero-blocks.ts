import bitfield from 'sparse-bitfield';

// Which data blocks are known to read as zeros, so that a partial first
// write to a newly provisioned block need not zero it first (a fallocate,
// which on ext4 also takes the data file's inode lock). Known: every block
// at or past `knownFrom` (past the end of the data file when the pool was
// opened, or all of a pool made by this process), and every block punched
// since, until something writes to it. A pool's history from before this
// process is unknown, so its blocks are zeroed as dm-thin would.

export class ZeroBlocks {
  private readonly dirty = bitfield();
  private readonly punched = bitfield();

  constructor(private readonly knownFrom: number) {}

  isZero(b: number): boolean {
    return !this.dirty.get(b) && (b >= this.knownFrom || this.punched.get(b));
  }

  written(b: number): void {
    this.dirty.set(b, true);
  }

  punchedRun(first: number, count: number): void {
    for (let b = first; b < first + count; b++) {
      this.punched.set(b, true);
      this.dirty.set(b, false);
    }
  }
}
