// Memory stays bounded by the configured caches, whatever the pool's size:
// read a little of every block of a device with 4M mapped blocks (a 256 GiB
// device, built by thin_restore) through the engine's read path with the
// caches serve uses, and watch the peak RSS.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { type DevId, MiB } from '../src/base/units.js';
import { Pool } from '../src/pool/pool.js';
import { thinTool } from './_helpers/cli.js';
import { tempDir } from './_helpers/pool.js';
import { genLinearDeviceXml } from './_helpers/xml-gen.js';

const MAPPINGS = Number(process.env.THINFUSE_MEM_MAPPINGS ?? 4 * 1024 * 1024);
const METADATA_CACHE = 32 * MiB;
const DATA_CACHE = 64 * MiB;
/** Node itself, the in-memory space maps (1 byte per data block) and buffers in flight. */
const MARGIN = 160 * MiB;

function peakRss(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return Number(m![1]) * 1024;
}

test('reading every block of a 4M-mapping pool keeps RSS within the caches plus a margin', async (t) => {
  const dir = tempDir(t, 'thinfuse-mem-');
  const xml = path.join(dir, 'in.xml');
  fs.writeFileSync(xml, genLinearDeviceXml(MAPPINGS, 128, MAPPINGS));
  execFileSync('truncate', ['-s', '1G', path.join(dir, 'metadata')]);
  const r = thinTool('thin_restore', ['-i', xml, '-o', path.join(dir, 'metadata')]);
  t.is(r.status, 0, r.stderr);
  fs.rmSync(xml);
  execFileSync('truncate', ['-s', String(MAPPINGS * 65536), path.join(dir, 'data')]);
  if (global.gc) global.gc();
  const before = process.memoryUsage().rss;
  const pool = await Pool.open(dir, { cacheBlocks: METADATA_CACHE / 4096, dataCacheBytes: DATA_CACHE });
  t.teardown(() => pool.close().catch(() => {}));
  const size = MAPPINGS * 65536;
  const started = Date.now();
  const batch = 512;
  for (let first = 0; first < MAPPINGS; first += batch) {
    const jobs: Promise<void>[] = [];
    for (let b = first; b < first + batch; b++) jobs.push(pool.read(0 as DevId, Buffer.alloc(512), b * 65536 + 4096, size));
    await Promise.all(jobs);
  }
  const peak = peakRss();
  const stats = { ...pool.md.bm.cacheStats(), data: pool.dataCacheStats() };
  await pool.close();
  t.log(`read ${MAPPINGS} blocks in ${((Date.now() - started) / 1000).toFixed(1)} s; RSS before open ${(before / MiB).toFixed(0)} MiB, peak ${(peak / MiB).toFixed(0)} MiB; metadata cache ${JSON.stringify(stats)}`);
  t.true(stats.evictions > 0, 'the metadata cache was exercised past its size');
  t.true(peak - before < METADATA_CACHE + DATA_CACHE + MARGIN, `peak RSS grew by ${((peak - before) / MiB).toFixed(0)} MiB`);
});
