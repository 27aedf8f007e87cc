// Engine benchmarks, in-process: create_snap latency on a 1M-block device,
// mapping inserts and lookups per second, and metadata size after fully
// provisioning a 1 GiB pool. Prints a markdown section and, with --write,
// puts it into BENCHMARKS.md between the engine markers.
//
//   npx tsx scripts/bench-engine.ts [--write] [--mappings N]
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { type DataBlock, type DevId, type VirtBlock } from '../src/base/units.js';
import { ForwardingBacking } from '../src/io/forwarding-backing.js';
import { MemoryBacking } from '../src/io/memory-backing.js';
import { defaultConfig } from '../src/pool/config.js';
import { Pool, type PoolOpenOptions } from '../src/pool/pool.js';
import { PoolMetadata } from '../src/pool/pool-metadata.js';
import { genLinearDeviceXml, Rng } from '../test/_helpers/xml-gen.js';

const args = process.argv.slice(2);
const MAPPINGS = Number(args[args.indexOf('--mappings') + 1] || 1_000_000) || 1_000_000;
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'thinfuse-bench-'));
const lines: string[] = [];
const say = (s: string) => {
  lines.push(s);
  console.log(s);
};

function tool(name: string, a: string[]): string {
  return execFileSync(name, a, { maxBuffer: 1 << 30 }).toString();
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

/** The same file with flushes turned into no-ops: what is left is the engine's own cost. */
class NoFlush extends ForwardingBacking {
  override async flush(): Promise<void> {}
}

async function snapSeries(dir: string, wrap?: PoolOpenOptions['wrap']): Promise<{ shallow: number[]; deep: number[]; openMs: number }> {
  let t0 = performance.now();
  const pool = await Pool.open(dir, wrap ? { wrap } : {});
  const openMs = performance.now() - t0;
  const shallow: number[] = [];
  const deep: number[] = [];
  const block = Buffer.alloc(65536, 7);
  const size = MAPPINGS * 65536;
  const base = pool.md.devices().length;
  // snapshots of the origin, then a chain; one block written into each new
  // snapshot so every step has work to commit.
  for (let i = base; i < base + 50; i++) {
    t0 = performance.now();
    await pool.message(`create_snap ${i} 0`);
    shallow.push(performance.now() - t0);
    await pool.write(i as DevId, block, ((i * 7919) % MAPPINGS) * 65536, size);
  }
  let parent = 0;
  for (let i = base + 50; i < base + 100; i++) {
    t0 = performance.now();
    await pool.message(`create_snap ${i} ${parent}`);
    deep.push(performance.now() - t0);
    await pool.write(i as DevId, block, ((i * 7919) % MAPPINGS) * 65536, size);
    parent = i;
  }
  await pool.close();
  return { shallow, deep, openMs };
}

async function snapLatency(): Promise<void> {
  const dir = path.join(work, 'snap');
  fs.mkdirSync(dir);
  const nrData = MAPPINGS + 65536;
  fs.writeFileSync(path.join(work, 'big.xml'), genLinearDeviceXml(MAPPINGS, 128, nrData));
  execFileSync('truncate', ['-s', '1G', path.join(dir, 'metadata')]);
  const t0 = performance.now();
  tool('thin_restore', ['-i', path.join(work, 'big.xml'), '-o', path.join(dir, 'metadata')]);
  const restoreMs = performance.now() - t0;
  execFileSync('truncate', ['-s', String(nrData * 65536), path.join(dir, 'data')]);
  const real = await snapSeries(dir);
  const noflush = await snapSeries(dir, (f) => new NoFlush(f));
  const { shallow, deep, openMs } = real;
  const check = execFileSync('thin_check', [path.join(dir, 'metadata')], { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
  say(`### create_snap latency, commit included (${MAPPINGS.toLocaleString('en')} mapped blocks)`);
  say('');
  say(`Origin built with thin_restore from generated XML (${(restoreMs / 1000).toFixed(1)} s); thinfuse opened it in ${openMs.toFixed(0)} ms. Goal: under 5 ms.`);
  say('');
  say('| case | p50 ms | p90 ms | max ms |');
  say('| --- | --- | --- | --- |');
  say(`| 50 snapshots of the 1M-block origin | ${pct(shallow, 50).toFixed(2)} | ${pct(shallow, 90).toFixed(2)} | ${Math.max(...shallow).toFixed(2)} |`);
  say(`| chain: snapshot of the previous snapshot, depth 51..100 | ${pct(deep, 50).toFixed(2)} | ${pct(deep, 90).toFixed(2)} | ${Math.max(...deep).toFixed(2)} |`);
  say(`| the same 100 again, flushes turned off (the engine's own cost) | ${pct([...noflush.shallow, ...noflush.deep], 50).toFixed(2)} | ${pct([...noflush.shallow, ...noflush.deep], 90).toFixed(2)} | ${Math.max(...noflush.shallow, ...noflush.deep).toFixed(2)} |`);
  say('');
  say('Each commit makes three flushes (the data file, the new metadata blocks, the superblock); the difference between the rows is their cost on this VM disk.');
  say('');
  say(`thin_check afterwards: ${check.includes('TRANSACTION_ID') ? 'exit 0' : check}`);
  say('');
}

function insertLookupRate(): void {
  const n = 200_000;
  const run = (order: 'sequential' | 'random') => {
    const md = PoolMetadata.format(new MemoryBacking('meta', 1 << 30), 128, n + 1024);
    md.createThin(0 as DevId);
    const vbs = Array.from({ length: n }, (_, i) => i);
    if (order === 'random') {
      const rng = new Rng(7);
      for (let i = n - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        [vbs[i], vbs[j]] = [vbs[j]!, vbs[i]!];
      }
    }
    let t0 = performance.now();
    for (const vb of vbs) md.insertMapping(0 as DevId, vb as VirtBlock, md.allocData() as DataBlock);
    const insertMs = performance.now() - t0;
    t0 = performance.now();
    let found = 0;
    for (const vb of vbs) if (md.lookup(0 as DevId, vb as VirtBlock)) found++;
    const lookupMs = performance.now() - t0;
    if (found !== n) throw new Error('lookup lost mappings');
    return { insert: n / (insertMs / 1000), lookup: n / (lookupMs / 1000) };
  };
  const seq = run('sequential');
  const rnd = run('random');
  say(`### Mapping inserts and lookups (${n.toLocaleString('en')} mappings, one device, in memory)`);
  say('');
  say('| order | inserts/s (alloc + insert) | lookups/s |');
  say('| --- | --- | --- |');
  say(`| sequential | ${Math.round(seq.insert).toLocaleString('en')} | ${Math.round(seq.lookup).toLocaleString('en')} |`);
  say(`| random | ${Math.round(rnd.insert).toLocaleString('en')} | ${Math.round(rnd.lookup).toLocaleString('en')} |`);
  say('');
}

async function metadataSize(): Promise<void> {
  const estimate = tool('thin_metadata_size', ['-b', '64k', '-s', '1g', '-m', '1', '-u', 'k', '-n']).trim();
  const estBlocks = Number(estimate.split(/\s+/)[0]) / 4;
  say('### Metadata size after fully provisioning a 1 GiB pool (64 KiB blocks, one thin device)');
  say('');
  say(`thin_metadata_size -b 64k -s 1g -m 1 estimates ${estBlocks} blocks. Goal: allocated metadata blocks ≤ 1.10 × that = ${(estBlocks * 1.1).toFixed(1)}.`);
  say('');
  say('| order | allocated metadata blocks | ratio to estimate |');
  say('| --- | --- | --- |');
  for (const order of ['sequential', 'random'] as const) {
    const dir = path.join(work, `size-${order}`);
    const pool = await Pool.create(dir, { dataSize: 1 << 30, metadataSize: 64 << 20, blockSize: 65536, config: defaultConfig() });
    await pool.createDevice('d', 1 << 30);
    const blocks = Array.from({ length: 16384 }, (_, i) => i);
    if (order === 'random') {
      const rng = new Rng(3);
      for (let i = blocks.length - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        [blocks[i], blocks[j]] = [blocks[j]!, blocks[i]!];
      }
    }
    const buf = Buffer.alloc(65536, 1);
    const dev = pool.device('d');
    for (let i = 0; i < blocks.length; i += 64) {
      await Promise.all(blocks.slice(i, i + 64).map((b) => pool.write(dev.devId, buf, b * 65536, dev.size)));
    }
    await pool.commit();
    const used = pool.md.msm.nrAllocated;
    await pool.close();
    execFileSync('thin_check', ['-q', path.join(dir, 'metadata')]);
    fs.rmSync(dir, { recursive: true, force: true });
    say(`| ${order} | ${used} | ${(used / estBlocks).toFixed(3)} |`);
  }
  say('');
}

function writeBenchmarks(section: string): void {
  const file = path.join(path.dirname(new URL(import.meta.url).pathname), '..', 'BENCHMARKS.md');
  const begin = '<!-- engine:begin -->';
  const end = '<!-- engine:end -->';
  const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : `# Benchmarks\n\n${begin}\n${end}\n`;
  const block = `${begin}\n${section}\n${end}`;
  const next = text.includes(begin) ? text.replace(new RegExp(`${begin}[\\s\\S]*${end}`), block) : `${text}\n${block}\n`;
  fs.writeFileSync(file, next);
}

try {
  say(`## Engine (in-process), ${new Date().toISOString().slice(0, 10)}, node ${process.version}, ${os.cpus().length} cores`);
  say('');
  await snapLatency();
  insertLookupRate();
  await metadataSize();
  if (args.includes('--write')) writeBenchmarks(lines.join('\n'));
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
