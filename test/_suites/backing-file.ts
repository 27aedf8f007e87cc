// One conformance suite for every BackingFile implementation: the sparse
// file, the in-memory one, the latency wrapper and the read cache.
import type test from 'ava';
import crypto from 'node:crypto';
import type { BackingFile } from '../../src/io/backing-file.js';

type Test = typeof test;

export function backingFileSuite(t: Test, name: string, make: (size: number) => Promise<{ file: BackingFile; cleanup: () => Promise<void> }>): void {
  const it = (title: string, fn: (f: BackingFile) => Promise<void>) =>
    t(`${name}: ${title}`, async (tt) => {
      const { file, cleanup } = await make(1 << 22);
      tt.teardown(cleanup);
      await fn(file);
      tt.pass();
    });
  const expectEqual = (a: Buffer, b: Buffer, what: string) => {
    if (!a.equals(b)) throw new Error(`${what}: contents differ`);
  };

  it('reads zeros where nothing was written, and past the end', async (f) => {
    const buf = Buffer.alloc(8192, 1);
    await f.read(buf, (1 << 22) - 4096);
    expectEqual(buf, Buffer.alloc(8192), 'read');
  });

  it('writes and reads back, sync and async, across 64 KiB units', async (f) => {
    const a = crypto.randomBytes(200_000);
    await f.write(a, 12_345);
    const b = Buffer.alloc(a.length);
    await f.read(b, 12_345);
    expectEqual(a, b, 'async');
    const c = Buffer.alloc(a.length);
    f.readSync(c, 12_345);
    expectEqual(a, c, 'sync');
  });

  it('punchHole reads back as zeros and keeps the length', async (f) => {
    await f.write(crypto.randomBytes(3 * 65536), 0);
    const before = f.size();
    await f.punchHole(65536, 65536);
    const b = Buffer.alloc(65536, 1);
    await f.read(b, 65536);
    expectEqual(b, Buffer.alloc(65536), 'punched');
    if (f.size() !== before) throw new Error('length changed');
  });

  it('copyWithin copies, and the copy is what is read afterwards', async (f) => {
    const a = crypto.randomBytes(131072);
    await f.write(a, 0);
    const warm = Buffer.alloc(131072);
    await f.read(warm, 1 << 20);
    await f.copyWithin(0, 1 << 20, 131072);
    const b = Buffer.alloc(131072);
    await f.read(b, 1 << 20);
    expectEqual(a, b, 'copy');
  });

  it('concurrent reads and writes of the same units end as the writes say', async (f) => {
    const model = Buffer.alloc(1 << 20);
    for (let round = 0; round < 20; round++) {
      const jobs: Promise<void>[] = [];
      const writes: Array<[Buffer, number]> = [];
      for (let i = 0; i < 16; i++) {
        const off = crypto.randomInt(0, (1 << 20) - 70000);
        if (i % 2 === 0) {
          const data = crypto.randomBytes(crypto.randomInt(1, 70000));
          // Writes of one round never overlap, so their order does not matter.
          if (writes.some(([d, o]) => off < o + d.length && o < off + data.length)) continue;
          writes.push([data, off]);
          jobs.push(f.write(data, off));
        } else {
          jobs.push(f.read(Buffer.alloc(crypto.randomInt(1, 70000)), off));
        }
      }
      await Promise.all(jobs);
      for (const [d, o] of writes) d.copy(model, o);
      const all = Buffer.alloc(1 << 20);
      await f.read(all, 0);
      expectEqual(all, model, `round ${round}`);
    }
  });
}
