import { ForwardingBacking } from '../io/forwarding-backing.js';

// TEST HOOKS. Deliberately broken behaviours ("canaries") that the crash-replay
// harness (test/crash-replay.test.ts) must catch, to prove it can fail. A pool
// gets one only through PoolOpenOptions.canary, which nothing outside the
// tests sets; with it unset (always, in production) none of this code runs.
//
//   superblock-before-flush  the commit's flush of the new metadata blocks is
//                            skipped, so the superblock is written while they
//                            are still volatile (one flush after it covers both);
//   reuse-before-commit      a data block freed in the running transaction is
//                            handed out again before that transaction commits;
//   punch-before-commit      when a device is deleted, every data block freed
//                            so far in the transaction (by the delete, by
//                            discards, by copy-on-write) is punched out of
//                            POOL/data before the commit that frees it.
export type Canary = 'superblock-before-flush' | 'reuse-before-commit' | 'punch-before-commit';

export const CANARIES: readonly Canary[] = ['superblock-before-flush', 'reuse-before-commit', 'punch-before-commit'];

/**
 * The metadata file as the 'superblock-before-flush' canary sees it: a flush
 * is dropped unless the last write was the superblock's (block 0), so a
 * commit writes its blocks, then the superblock, then flushes once.
 */
export class SuperblockFirstBacking extends ForwardingBacking {
  private lastWriteAt = -1;

  override writeSync(buf: Buffer, offset: number): void {
    this.lastWriteAt = offset;
    this.inner.writeSync(buf, offset);
  }
  override write(buf: Buffer, offset: number): Promise<void> {
    this.lastWriteAt = offset;
    return this.inner.write(buf, offset);
  }
  override async flush(): Promise<void> {
    if (this.lastWriteAt === 0) await this.inner.flush();
  }
  override flushSync(): void {
    if (this.lastWriteAt === 0) this.inner.flushSync();
  }
}
