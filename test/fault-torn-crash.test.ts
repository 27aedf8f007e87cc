// Torn writes with `--then crash` (src/io/fault-backing.ts): a prefix of one
// write reaches the file, then the CLI process is SIGKILLed, as a host crash
// in the middle of a write. After the fault is cleared the pool must pass
// `thinfuse check` and thin_check, open read-write, and show either the last
// commit (torn metadata) or, per 512-byte sector, the old or the new data
// (torn data block).

import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { CLI, cli, cliOk } from './_helpers/cli.js';
import { KiB, oracle, tempDir } from './_helpers/pool.js';

const BLOCK = 64 * KiB;
const SECTOR = 512;

function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}

/** A pool with device vol (4 blocks) whose block 0 holds `old`, committed. */
function poolWithData(t: ExecutionContext, old: Buffer): string {
  const P = join(tempDir(t, 'thinfuse-torn-'), 'pool');
  cliOk(['pool', 'create', P, '--data-size', '16M', '--metadata-size', '4M']);
  cliOk(['create', P, 'vol', '--size', String(4 * BLOCK)]);
  cliOk(['write', P, 'vol'], old);
  return P;
}

/** Runs `thinfuse write` expecting the torn fault to SIGKILL it. */
function writeKilled(t: ExecutionContext, P: string, data: Buffer, offset: number): void {
  const r = spawnSync(process.execPath, [CLI, 'write', P, 'vol', '--offset', String(offset)], { input: data });
  t.is(r.signal, 'SIGKILL', `write should die by SIGKILL; status ${r.status}, stderr: ${r.stderr.toString()}`);
}

/** Fault cleared, both checkers pass, and the pool opens read-write. */
async function recovered(t: ExecutionContext, P: string): Promise<void> {
  cliOk(['fault', P, 'clear']);
  t.regex(cliOk(['fault', P, 'ls']), /no faults/);
  cliOk(['check', P]);
  await oracle(t, P);
  const info = (JSON.parse(cliOk(['info', P, '--json'])) as { result: { mode: string; needsCheck: boolean } }).result;
  t.is(info.mode, 'rw', 'the pool opens read-write');
  t.false(info.needsCheck);
}

function readVol(P: string): Buffer {
  const r = cli(['read', P, 'vol', '--length', String(2 * BLOCK)]);
  if (r.status !== 0) throw new Error(`thinfuse read exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

test('torn data write then crash: every sector of the block is old or new', async (t) => {
  const old = pattern(BLOCK, 1);
  const neu = pattern(BLOCK, 2);
  const P = poolWithData(t, old);
  cliOk(['fault', P, 'set', 'torn', '--device', 'vol', '--sectors', '0-127', '--keep-sectors', '5', '--then', 'crash']);
  writeKilled(t, P, neu, 0);
  await recovered(t, P);

  const got = readVol(P).subarray(0, BLOCK);
  let news = 0;
  for (let s = 0; s < BLOCK; s += SECTOR) {
    const sec = got.subarray(s, s + SECTOR);
    const isNew = sec.equals(neu.subarray(s, s + SECTOR));
    if (isNew) news++;
    else t.true(sec.equals(old.subarray(s, s + SECTOR)), `sector ${s / SECTOR} is neither old nor new data`);
  }
  t.log(`${news} of ${BLOCK / SECTOR} sectors new`);
  t.true(news < BLOCK / SECTOR, 'the crash came before the whole block was written');

  // Read-write after recovery: a full write and read back.
  cliOk(['write', P, 'vol', '--offset', String(BLOCK)], neu);
  t.true(readVol(P).subarray(BLOCK).equals(neu));
  await oracle(t, P);
});

/** The metadata cases: the next commit (provisioning block 1) is torn; the pool comes back at the last commit. */
async function tornMetadata(t: ExecutionContext, bytes: string | undefined, keep: number, mustBeOld: boolean): Promise<void> {
  const old = pattern(BLOCK, 3);
  const neu = pattern(BLOCK, 4);
  const P = poolWithData(t, old);
  const where = bytes === undefined ? [] : ['--bytes', bytes];
  cliOk(['fault', P, 'set', 'torn', '--file', 'metadata', ...where, '--keep-sectors', String(keep), '--then', 'crash']);
  writeKilled(t, P, neu, BLOCK);
  await recovered(t, P);

  const got = readVol(P);
  t.true(got.subarray(0, BLOCK).equals(old), 'committed block 0 reads back byte for byte');
  const second = got.subarray(BLOCK);
  const lastCommit = second.equals(Buffer.alloc(BLOCK));
  // A superblock write that lands whole is the new commit (its torn tail is zeros either way).
  t.true(lastCommit || second.equals(neu), 'block 1 is as in the last commit (unmapped) or the completed one');
  t.log(lastCommit ? 'recovered to the previous commit' : 'the torn superblock write completed the commit');
  if (mustBeOld) t.true(lastCommit, 'this torn write cannot have committed');

  cliOk(['write', P, 'vol', '--offset', String(2 * BLOCK)], neu);
  await oracle(t, P);
}

test('torn metadata write (first write of the commit) then crash: back to the last commit', async (t) => {
  await tornMetadata(t, undefined, 1, true);
});

test('torn superblock write then crash: the last commit or the new one, never a broken one', async (t) => {
  await tornMetadata(t, '0+4096', 0, true);
  await tornMetadata(t, '0+4096', 1, false);
});
