// thinfuse show and ls --tree: the snapshot tree (origins recorded in
// POOL/devices, or inferred from dm-thin's times and shared blocks), and
// the page `show` draws, loaded in headless Chromium: its DOM has the tree's
// nodes and the block map's cells, and the screenshot has each legend colour
// on exactly as many pixels as the set's blocks take (set sizes computed
// here from thin_dump's output, not from our model). Every pool ends with
// thin_check passing.

import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import type { DevId } from '../src/base/units.js';
import { OPS } from '../src/frontends/ops.js';
import { CELL } from '../src/frontends/show/block-map.js';
import { EXCLUSIVE_COLOUR, FREE_COLOUR, OTHER_COLOUR, SET_COLOURS } from '../src/frontends/show/draw.js';
import { MAX_SETS } from '../src/frontends/show/model.js';
import { pageHtml } from '../src/frontends/show/html.js';
import type { Pool } from '../src/pool/pool.js';
import { Registry } from '../src/pool/registry.js';
import { parseDumpXml } from '../src/pool/xml.js';
import { dumpDom, screenshot } from './_helpers/chromium.js';
import { cli, cliOk, thinTool } from './_helpers/cli.js';
import { KiB, makePool, MiB, oracle, openPool, tempDir } from './_helpers/pool.js';
import { colourCensus, decodePng } from './_helpers/png.js';

const B = 64 * KiB;

async function write(pool: Pool, name: string, vb: number, n: number, fill: number): Promise<void> {
  await OPS.write({ pool }, { name, offset: vb * B, data: Buffer.alloc(n * B, fill).toString('base64') });
}

/** Data block -> the dev ids mapping it, read from thin_dump's XML (the real tool's, not our model). */
async function setsFromThinDump(dir: string): Promise<Map<string, number>> {
  const r = thinTool('thin_dump', [path.join(dir, 'metadata')]);
  if (r.status !== 0) throw new Error(`thin_dump: ${r.stderr}`);
  const users = new Map<number, number[]>();
  let dev = -1;
  await parseDumpXml(r.stdout, {
    superblockBegin() {},
    deviceBegin(d) {
      dev = d.devId;
    },
    mapping(m) {
      users.set(m.dataBlock, [...(users.get(m.dataBlock) ?? []), dev]);
    },
    deviceEnd() {},
    superblockEnd() {},
  });
  const sets = new Map<string, number>();
  for (const devs of users.values()) sets.set(devs.join(','), (sets.get(devs.join(',')) ?? 0) + 1);
  return sets;
}

/** base and a 5-deep chain of snapshots, each overwriting some blocks, made through the ops (so origins are recorded). */
async function chainPool(t: ExecutionContext): Promise<{ pool: Pool; dir: string }> {
  const { pool, dir } = await makePool(t, { dataSize: 32 * MiB, metadataSize: 8 * MiB });
  const c = { pool };
  await OPS.create(c, { name: 'base', size: 4 * MiB });
  await write(pool, 'base', 0, 40, 1);
  let origin = 'base';
  for (let i = 1; i <= 5; i++) {
    await OPS.snapshot(c, { origin, name: `s${i}` });
    await write(pool, `s${i}`, 4 * i, i + 1, 10 + i); // overwrites: the deeper, the more
    origin = `s${i}`;
  }
  await write(pool, 'base', 36, 2, 9); // the origin diverges too
  return { pool, dir };
}

test('show draws a 5-deep snapshot chain: 6 tree nodes, one map cell per block, legend colours in proportion', async (t) => {
  const { pool, dir } = await chainPool(t);
  await pool.close();
  const html = path.join(tempDir(t, 'thinfuse-show-'), 'pool.html');
  const svg = `${html.slice(0, -5)}.svg`;
  t.regex(cliOk(['show', dir, '--html', html, '--svg', svg]), /wrote .*pool\.html\nwrote .*pool\.svg/);
  const expected = await setsFromThinDump(dir);

  const dom = dumpDom(t, html);
  t.is([...dom.matchAll(/<g class="node( root)?" data-dev=/g)].length, 6, 'six tree nodes');
  t.is([...dom.matchAll(/<g class="node root"/g)].length, 1, 'one root: base');
  t.is([...dom.matchAll(/<path class="link" d=/g)].length, 5, 'five recorded origin links');
  t.regex(dom, /<g class="node" data-dev="5" transform="translate\(130 /, 's5 is drawn five levels in');
  t.is([...dom.matchAll(/<rect class="cell( free| partial)?"/g)].length, 512, 'one cell per data block');
  const legend = [...dom.matchAll(/<g class="legend-entry" data-colour="(#[0-9a-f]{6})">.*?<text[^>]*>([^<]*): (\d+) blocks?<\/text>/g)]
    .map((m) => ({ colour: m[1]!, label: m[2]!, blocks: Number(m[3]) }));
  const sets = legend.filter((e) => e.colour !== FREE_COLOUR);
  // The legend: the MAX_SETS largest sets, then one entry for the rest together.
  const sizes = [...expected.values()].sort((a, b) => b - a);
  t.true(sizes.length > MAX_SETS, 'the chain makes more sets than colours, so "other sets" is drawn too');
  t.deepEqual(sets.map((e) => e.blocks), [...sizes.slice(0, MAX_SETS), sizes.slice(MAX_SETS).reduce((a, b) => a + b, 0)], 'legend = the sets thin_dump shows');
  t.deepEqual(sets.map((e) => e.colour), [...SET_COLOURS, OTHER_COLOUR]);
  const others = sizes.length - MAX_SETS;
  t.is(sets.at(-1)!.label, others === 1 ? '1 other set of devices' : `${others} other sets of devices`);
  t.truthy(legend.find((e) => e.colour === FREE_COLOUR && e.blocks === 512 - [...expected.values()].reduce((a, b) => a + b, 0)));
  t.regex(dom, /One cell per data block \(512 blocks of 64KiB\)/);

  const shot = screenshot(t, html, 1200, 900);
  const census = colourCensus(decodePng(shot));
  for (const e of sets) {
    // Each of the set's cells, and its legend swatch, is a CELL x CELL square of its colour.
    const want = CELL * CELL * (e.blocks + 1);
    const got = census.get(e.colour) ?? 0;
    t.true(Math.abs(got - want) <= want * 0.01, `${e.label} (${e.colour}): ${got} pixels, want ${want}`);
  }
  t.true((census.get(EXCLUSIVE_COLOUR) ?? 0) > CELL * CELL, 'the tree\'s exclusive bars are drawn');
  if (process.env['THINFUSE_KEEP_SHOT']) fs.writeFileSync(process.env['THINFUSE_KEEP_SHOT'], shot);

  const svgText = fs.readFileSync(svg, 'utf8');
  t.regex(svgText, /^<\?xml version="1.0" encoding="UTF-8"\?>\n<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  t.is([...svgText.matchAll(/<rect class="cell/g)].length, 512);
  t.notRegex(svgText + fs.readFileSync(html, 'utf8'), /<script|https?:\/\/(?!www\.w3\.org\/2000\/svg)/, 'self-contained: no script, nothing fetched');
  await oracle(t, dir);
});

test('ls --tree: recorded origins from snapshot and create_snap, ls columns, and the same shape inferred without records', async (t) => {
  const P = path.join(tempDir(t, 'thinfuse-tree-'), 'P');
  cliOk(['pool', 'create', P, '--data-size', '64M', '--metadata-size', '8M']);
  cliOk(['create', P, 'base', '--size', '1M']);
  cliOk(['write', P, 'base'], Buffer.alloc(4 * B, 1));
  cliOk(['snapshot', P, 'base', 's1']);
  cliOk(['write', P, 's1'], Buffer.alloc(B, 2));
  cliOk(['snapshot', P, 's1', 's2']);
  cliOk(['snapshot', P, 'base', 'other']);
  cliOk(['message', P, 'create_thin 9']);
  cliOk(['message', P, 'create_snap 10 2']);
  const want = [
    'NAME        DEV  SIZE  MAPPED  EXCLUSIVE  SHARED',
    'base          0  1MiB  256KiB         0B  256KiB',
    '├─ s1         1  1MiB  256KiB         0B  256KiB',
    '│  └─ s2      2  1MiB  256KiB         0B  256KiB',
    '│     └─ -   10     -  256KiB         0B  256KiB',
    '└─ other      3  1MiB  256KiB         0B  256KiB',
    '-             9     -      0B         0B      0B',
    '',
  ];
  t.is(cliOk(['ls', P, '--tree']), want.join('\n'));
  const rows = JSON.parse(cliOk(['ls', P, '--tree', '--json'])).result as Array<{ devId: number; origin: number | null; originSource: string | null; depth: number }>;
  t.deepEqual(rows.map((r) => [r.devId, r.origin, r.originSource, r.depth]), [
    [0, null, null, 0], [1, 0, 'recorded', 1], [2, 1, 'recorded', 2], [10, 2, 'recorded', 3], [3, 0, 'recorded', 1], [9, null, null, 0],
  ]);
  // An older thinfuse, or the kernel, leaves no records: the same tree, marked as inferred.
  const file = path.join(P, 'devices');
  const body = JSON.parse(fs.readFileSync(file, 'utf8'));
  delete body.origins;
  fs.writeFileSync(file, JSON.stringify(body, null, 2) + '\n');
  const inferred = cliOk(['ls', P, '--tree']).split('\n');
  t.deepEqual(inferred.slice(0, 7).map((l) => l.replace(' *', '').replace(/\s+/g, ' ')), want.slice(0, 7).map((l) => l.replace(/\s+/g, ' ')));
  t.is(inferred.filter((l) => / \* /.test(l)).length, 4, 'four origins marked inferred');
  t.regex(inferred[7]!, /^\* origin inferred from creation and snapshot times and shared blocks/);
  const check = thinTool('thin_check', [`${P}/metadata`]);
  t.is(check.status, 0, check.stderr);
});

test('inference: times pick the candidates, shared blocks or a shared root the origin; no evidence means a root', async (t) => {
  const { pool, dir } = await makePool(t);
  const msg = (m: string) => pool.message(m);
  await msg('create_thin 0');
  await pool.write(0 as DevId, Buffer.alloc(3 * B, 1), 0, 3 * B);
  await msg('create_snap 1 0'); // time 1
  await msg('create_snap 2 1'); // time 2: candidates 1 (snapshotted at 2); 0 was last snapshotted at 1
  await msg('create_snap 3 0'); // time 3: 0 again; 0, 1 and 2 share everything, only 0 has snap_time >= 3
  await pool.write(3 as DevId, Buffer.alloc(3 * B, 2), 0, 3 * B); // 3 overwrites all it had: no evidence left
  await msg('create_thin 4'); // empty, unrelated
  await msg('create_snap 5 4'); // an empty origin: the same mapping-tree root is the evidence
  await msg('create_snap 6 2');
  await pool.write(6 as DevId, Buffer.alloc(B, 3), 0, B);
  // The pool records every create_snap's origin, even one made by a bare message.
  const recorded = await OPS.tree({ pool });
  const was = (dev: number) => recorded.find((r) => r.devId === dev)!;
  t.deepEqual([1, 2, 3, 5, 6].map((d) => [d, was(d).origin, was(d).originSource]), [
    [1, 0, 'recorded'], [2, 1, 'recorded'], [3, 0, 'recorded'], [5, 4, 'recorded'], [6, 2, 'recorded'],
  ]);
  // Without records (the kernel's pools, an older thinfuse) the origins are inferred.
  for (const d of [1, 2, 3, 5, 6]) pool.registry.forgetOrigin(d as DevId);
  const rows = await OPS.tree({ pool });
  const of = (dev: number) => rows.find((r) => r.devId === dev)!;
  t.deepEqual([1, 2, 3, 5, 6].map((d) => [d, of(d).origin, of(d).originSource]), [
    [1, 0, 'inferred'], [2, 1, 'inferred'], [3, null, null], [5, 4, 'inferred'], [6, 2, 'inferred'],
  ]);
  t.deepEqual(rows.map((r) => r.devId), [0, 1, 2, 6, 3, 4, 5], 'depth first, oldest first');
  await pool.close();
  await oracle(t, dir);
});

test('a record holds only while the metadata agrees: removed devices forget theirs, reused dev ids do not inherit', async (t) => {
  const { pool, dir } = await makePool(t);
  const c = { pool };
  await OPS.create(c, { name: 'a', size: MiB });
  await write(pool, 'a', 0, 2, 1);
  await OPS.snapshot(c, { origin: 'a', name: 'b' }); // dev 1
  await OPS.snapshot(c, { origin: 'b', name: 'c' }); // dev 2, recorded under b
  t.deepEqual(pool.registry.origins().map((o) => [o.devId, o.origin, o.time]), [[1, 0, 1], [2, 1, 2]]);
  await OPS.remove(c, { name: 'b' });
  t.deepEqual(pool.registry.origins().map((o) => [o.devId, o.origin]), [[2, 1]], 'b forgot its own record');
  await OPS.message(c, { message: 'create_thin 1' }); // dev id 1 again, created after c
  const rows = await OPS.tree(c);
  // c is not put under the new dev 1 (created after c), nor under a: a was last snapshotted before c was made,
  // so a is c's grandparent, not its origin, and a snapshot whose origin is gone is a root.
  t.deepEqual(rows.map((r) => [r.devId, r.origin, r.originSource]), [[0, null, null], [1, null, null], [2, null, null]]);
  await OPS.message(c, { message: 'delete 2' });
  t.deepEqual(pool.registry.origins(), [], 'a delete message forgets the record too');
  await pool.close();
  // The records are in POOL/devices and survive a reopen.
  const again = await openPool(t, dir);
  await OPS.snapshot({ pool: again }, { origin: 'a', name: 'd' });
  await again.close();
  t.deepEqual(Registry.load(dir).origins().map((o) => [o.devId, o.origin]), [[2, 0]]);
  await oracle(t, dir);
});

test('POOL/devices: no origins key until there is a record; a damaged one is refused in one line', async (t) => {
  const { pool, dir } = await makePool(t);
  await OPS.create({ pool }, { name: 'a', size: MiB });
  const file = path.join(dir, 'devices');
  t.false('origins' in JSON.parse(fs.readFileSync(file, 'utf8')), 'a pool without snapshots keeps the old format exactly');
  await OPS.snapshot({ pool }, { origin: 'a', name: 'b' });
  t.deepEqual(JSON.parse(fs.readFileSync(file, 'utf8')).origins, [{ devId: 1, origin: 0, time: 1 }]);
  await pool.close();
  const good = fs.readFileSync(file, 'utf8');
  for (const bad of [{ origins: 'x' }, { origins: [{ devId: -1, origin: 0, time: 1 }] }, { origins: [{ devId: 1, origin: 0 }] }]) {
    fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(good), ...bad }));
    const e = t.throws(() => Registry.load(dir));
    t.regex(e!.message, /devices is damaged \((an origin|"origins"|the origin entry)/);
    t.is(e!.message.split('\n').length, 1);
  }
  fs.writeFileSync(file, good);
  await oracle(t, dir);
});

test('a large pool is drawn scaled down, and says so on the page', async (t) => {
  const { pool, dir } = await makePool(t, { dataSize: 16 * 1024 * MiB, metadataSize: 16 * MiB });
  await OPS.create({ pool }, { name: 'a', size: 64 * MiB });
  await write(pool, 'a', 0, 200, 1); // 200 blocks: one full cell of 128 and part of the next
  await OPS.snapshot({ pool }, { origin: 'a', name: 'b' });
  await write(pool, 'b', 0, 10, 2);
  const model = await OPS.show({ pool });
  t.is(model.map.group, 128);
  t.is(model.map.cellSet.length, 2048);
  t.deepEqual(model.map.cellMapped.slice(0, 3), [128, 82, 0]);
  const html = pageHtml(model);
  t.regex(html, /Scaled down: each cell is 128 data blocks \(8MiB\); the pool's 262144 blocks are too many to draw one by one\./);
  t.is([...html.matchAll(/<rect class="cell partial"/g)].length, 1);
  t.is([...html.matchAll(/<rect class="cell/g)].length, 2048);
  await pool.close();
  await oracle(t, dir);
});

test('show refuses a missing output or an unwritable file in one line', (t) => {
  const P = path.join(tempDir(t, 'thinfuse-show-cli-'), 'P');
  cliOk(['pool', 'create', P, '--data-size', '64M', '--metadata-size', '8M']);
  for (const [args, want] of [
    [['show', P], /show needs --html FILE or --svg FILE/],
    [['show', P, '--html', '-', '--svg', '-'], /only one of --html and --svg/],
    [['show', P, '--svg', path.join(P, 'no', 'such', 'dir.svg')], /cannot write .*dir\.svg: ENOENT/],
  ] as Array<[string[], RegExp]>) {
    const r = cli(args);
    t.not(r.status, 0);
    t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    t.regex(r.stderr, want);
  }
  t.regex(cliOk(['show', P, '--html', '-']), /^<!DOCTYPE html>[\s\S]*<\/html>\n$/);
  const check = thinTool('thin_check', [`${P}/metadata`]);
  t.is(check.status, 0, check.stderr);
});
