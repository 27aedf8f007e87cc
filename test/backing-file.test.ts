import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CachedBacking } from '../src/io/cached-backing.js';
import { DelayBacking } from '../src/io/delay-backing.js';
import { FileBacking } from '../src/io/file-backing.js';
import { MemoryBacking } from '../src/io/memory-backing.js';
import { backingFileSuite } from './_suites/backing-file.js';

function tempFile(size: number) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinfuse-bf-'));
  const file = FileBacking.create(path.join(dir, 'f'), size);
  return { file, cleanup: async () => { await file.close().catch(() => {}); fs.rmSync(dir, { recursive: true, force: true }); } };
}

backingFileSuite(test, 'FileBacking', async (size) => tempFile(size));
backingFileSuite(test, 'MemoryBacking', async (size) => ({ file: new MemoryBacking('mem', size), cleanup: async () => {} }));
backingFileSuite(test, 'DelayBacking', async (size) => {
  const t = tempFile(size);
  return { file: new DelayBacking(t.file, 1), cleanup: t.cleanup };
});
backingFileSuite(test, 'CachedBacking over a file', async (size) => {
  const t = tempFile(size);
  return { file: new CachedBacking(t.file, 256 * 1024), cleanup: t.cleanup };
});
backingFileSuite(test, 'CachedBacking over a slow file', async (size) => {
  const t = tempFile(size);
  return { file: new CachedBacking(new DelayBacking(t.file, 1), 1 << 20), cleanup: t.cleanup };
});

test('CachedBacking counts hits and misses and stays within its size', async (t) => {
  const f = new CachedBacking(new MemoryBacking("m", 1 << 24), 4 * 4096);
  const b = Buffer.alloc(4096);
  await f.read(b, 0);
  await f.read(b, 0);
  for (let i = 0; i < 16; i++) await f.read(b, (i + 2) * 4096);
  const s = f.cacheStats();
  t.is(s.hits, 1);
  t.is(s.misses, 17);
  t.true(s.bytes <= 4 * 4096);
  t.true(s.evictions >= 12);
});
