// Bad metadata and bad pool files (issue 5, item 5): every single-bit flip in
// a metadata block is caught by the block's checksum, and a few thousand
// seeded fuzz cases (test/_helpers/fuzz.ts) end only in ThinErrors or a
// degraded pool, never in a crash, a hang or a changed file. The 100,000-case
// run is scripts/fuzz.ts.

import test from 'ava';
import fs from 'node:fs';
import { isThinError } from '../src/base/errors.js';
import type { MetaBlock } from '../src/base/units.js';
import { MemoryBacking } from '../src/io/memory-backing.js';
import { BlockManager } from '../src/metadata/block-manager.js';
import { BLOCK_TYPES, type FuzzBase, KIND_OF, makeFuzzBase, runFuzz } from './_helpers/fuzz.js';

let base: FuzzBase;

test.before(async () => {
  base = await makeFuzzBase();
});

test.after.always(() => {
  if (base) fs.rmSync(base.dir, { recursive: true, force: true });
});

test('the base pool has a block of every metadata block type', (t) => {
  for (const type of BLOCK_TYPES) t.true(base.blocks.get(type)!.length > 0, `no ${type} block`);
});

test('every single-bit flip of one block of each type fails validation', (t) => {
  const bm = new BlockManager(new MemoryBacking('/fuzz/metadata', base.metaSize), 16);
  let flips = 0;
  for (const type of BLOCK_TYPES) {
    const b = base.blocks.get(type)![0]!;
    const buf = Buffer.from(base.meta.get(b)!);
    const kind = KIND_OF[type];
    t.notThrows(() => bm.validate(buf, b as MetaBlock, kind), `${type} block ${b} is valid unflipped`);
    let missed = 0;
    for (let bit = 0; bit < buf.length * 8; bit++) {
      buf[bit >>> 3]! ^= 1 << (bit & 7);
      try {
        bm.validate(buf, b as MetaBlock, kind);
        missed++;
      } catch (e) {
        if (!isThinError(e, 'BAD_METADATA')) throw e;
      }
      buf[bit >>> 3]! ^= 1 << (bit & 7);
      flips++;
    }
    t.is(missed, 0, `${missed} single-bit flips of ${type} block ${b} went undetected`);
  }
  t.is(flips, BLOCK_TYPES.length * 32768);
  t.log(`${flips} single-bit flips over ${BLOCK_TYPES.length} block types: all detected`);
});

test('2,500 fuzz cases in process: only ThinErrors, no changed files', async (t) => {
  const f = await runFuzz(base, 20240, 2500);
  t.log(`cases ${f.cases} in ${(f.ms / 1000).toFixed(1)} s; first open: ${JSON.stringify(f.opens)}`);
  for (const x of f.findings.slice(0, 10)) t.log(`seed ${x.seed} (${x.what.join('; ')}): ${x.step}: ${x.error}`);
  t.is(f.findings.length, 0, 'findings (replay one with npx tsx scripts/fuzz.ts --case SEED)');
  t.true(Object.keys(f.opens).some((k) => k.startsWith('error')), 'some cases were refused at open');
  t.true(f.opens.write !== undefined, 'some cases opened read-write');
});
