import test from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cli, cliOk, sha, thinTool } from './_helpers/cli.js';

function tmp(t: { teardown: (fn: () => void) => void }): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'thinfuse-cli-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

function oracle(t: { is: (a: unknown, b: unknown, m?: string) => void }, pool: string): void {
  const check = thinTool('thin_check', [`${pool}/metadata`]);
  t.is(check.status, 0, `thin_check: ${check.stderr}`);
  const theirs = thinTool('thin_dump', [`${pool}/metadata`]);
  t.is(theirs.status, 0, theirs.stderr);
  t.is(cliOk(['dump', pool]), theirs.stdout, 'thinfuse dump equals thin_dump');
}

test('the issue script runs as written', (t) => {
  const d = tmp(t);
  const P = path.join(d, 'P');
  cliOk(['pool', 'create', P, '--data-size', '1G', '--metadata-size', '64M']);
  cliOk(['message', P, 'set_transaction_id 0 1']);
  cliOk(['message', P, 'create_thin 7']);
  cliOk(['create', P, 'base', '--size', '256M']);
  const x = crypto.randomBytes(1000000);
  cliOk(['write', P, 'base', '--offset', '65536'], x);
  cliOk(['snapshot', P, 'base', 'snap1']);
  cliOk(['write', P, 'snap1', '--offset', '70000'], 'changed');
  const back = cli(['read', P, 'base', '--offset', '65536', '--length', '1000000']);
  t.is(back.status, 0, back.stderr);
  t.true(back.stdout.equals(x));
  const snap = cli(['read', P, 'snap1', '--offset', '70000', '--length', '7']).stdout.toString();
  t.is(snap, 'changed');
  const status = cliOk(['status', P]).split('\n');
  t.regex(status[0]!, /^P: 0 2097152 thin-pool 1 \d+\/16384 17\/16384 - rw discard_passdown queue_if_no_space - 1024 $/);
  t.is(status[1], 'base: 0 524288 thin 2048 2175');
  t.is(status[2], 'snap1: 0 524288 thin 2048 2175');
  const ls = cliOk(['ls', P]);
  t.regex(ls, /base\s+0\s+256MiB/);
  t.regex(ls, /-\s+7\s+-/);
  const ours = JSON.parse(cliOk(['ls', P, '--json'])).result.map((r: Record<string, number>) => [r.devId, r.mappedBlocks, r.exclusiveBlocks, r.sharedBlocks].join(' '));
  const theirs = thinTool('thin_ls', ['--no-headers', '-o', 'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS', `${P}/metadata`]);
  t.is(theirs.status, 0, theirs.stderr);
  t.deepEqual(ours, theirs.stdout.trim().split('\n').map((l) => l.trim().split(/\s+/).join(' ')), 'ls counts equal thin_ls');
  oracle(t, P);
});

test('bad input gets one clear line, a non-zero exit, and changes nothing', (t) => {
  const d = tmp(t);
  const P = path.join(d, 'P');
  const bad: string[][] = [
    ['pool', 'create', P, '--data-size', '0'],
    ['pool', 'create', P, '--data-size', '1000000'],
    ['pool', 'create', P, '--data-size', '10x'],
    ['pool', 'create', P, '--data-size', '9999999999T'],
    ['pool', 'create', P, '--block-size', '100k'],
    ['pool', 'create', P, '--metadata-size', '1M'],
    ['status', P],
  ];
  for (const args of bad) {
    const r = cli(args);
    t.not(r.status, 0, args.join(' '));
    t.is(r.stderr.trim().split('\n').length, 1, `${args.join(' ')}: ${r.stderr}`);
    t.false(fs.existsSync(path.join(P, 'metadata')), args.join(' '));
  }
  cliOk(['pool', 'create', P, '--data-size', '64M', '--metadata-size', '8M']);
  cliOk(['create', P, 'a', '--size', '1M']);
  const before = [sha(`${P}/metadata`), sha(`${P}/data`), fs.readFileSync(`${P}/devices`, 'utf8')];
  const refused: string[][] = [
    ['pool', 'create', P],
    ['message', P, 'bogus 1'],
    ['message', P, 'create_thin'],
    ['message', P, 'create_thin x'],
    ['message', P, 'create_thin 16777216'],
    ['message', P, 'create_thin 0'],
    ['message', P, 'create_snap 5 9'],
    ['message', P, 'delete 9'],
    ['message', P, 'set_transaction_id 5 6'],
    ['message', P, 'release_metadata_snap'],
    ['create', P, 'a', '--size', '1M'],
    ['create', P, 'b', '--size', '1000'],
    ['create', P, 'b', '--size', '0'],
    ['snapshot', P, 'nope', 'c'],
    ['read', P, 'a', '--offset', '1048000', '--length', '1000'],
    ['write', P, 'a', '--offset', '2000000'],
    ['resize', P, '--data-size', '32M'],
  ];
  for (const args of refused) {
    const r = cli(args, 'x');
    t.not(r.status, 0, args.join(' '));
    t.is(r.stderr.trim().split('\n').length, 1, `${args.join(' ')}: ${r.stderr}`);
  }
  t.deepEqual([sha(`${P}/metadata`), sha(`${P}/data`), fs.readFileSync(`${P}/devices`, 'utf8')], before);
  oracle(t, P);
});

test('a corrupt superblock is refused and the files are untouched', (t) => {
  const d = tmp(t);
  const P = path.join(d, 'P');
  cliOk(['pool', 'create', P, '--data-size', '64M', '--metadata-size', '8M']);
  const fd = fs.openSync(`${P}/metadata`, 'r+');
  fs.writeSync(fd, Buffer.from([0xff]), 0, 1, 100);
  fs.closeSync(fd);
  const before = sha(`${P}/metadata`);
  const r = cli(['status', P]);
  t.not(r.status, 0);
  t.regex(r.stderr, /checksum/);
  t.is(sha(`${P}/metadata`), before);
  const fd2 = fs.openSync(`${P}/metadata`, 'r+');
  fs.writeSync(fd2, Buffer.alloc(4096), 0, 4096, 0);
  fs.closeSync(fd2);
  t.regex(cli(['ls', P]).stderr, /all zeros/);
});

test('--json on success and failure', (t) => {
  const d = tmp(t);
  const P = path.join(d, 'P');
  const ok = JSON.parse(cliOk(['pool', 'create', P, '--data-size', '64M', '--metadata-size', '8M', '--json']));
  t.true(ok.ok);
  const st = JSON.parse(cliOk(['status', P, '--json']));
  t.is(st.result.data.total, 1024);
  t.is(st.result.lowWaterEvents, 0);
  const r = cli(['message', P, 'nonsense', '--json']);
  t.not(r.status, 0);
  const err = JSON.parse(r.stdout.toString());
  t.false(err.ok);
  t.is(err.error.code, 'UNKNOWN_MESSAGE');
  t.is(cli(['status', '--help']).status, 0);
});
