import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { isThinError, ThinError } from '../../base/errors.js';
import { parseSize } from '../../base/size.js';
import { META_BLOCK_SIZE, MIN_META_BYTES, SECTOR } from '../../base/units.js';
import { FileBacking } from '../../io/file-backing.js';
import { lockPool, type PoolLock } from '../../io/lock.js';
import { checkMetadata } from '../../pool/check.js';
import { decodeSuperblock, encodeSuperblock, NEEDS_CHECK } from '../../pool/format.js';
import { DATA_FILE, METADATA_FILE } from '../../pool/pool.js';
import { describeRepair, repairMetadata, type RepairReport } from '../../pool/repair.js';
import { checkBlockSize } from '../../pool/validate.js';
import { readPointer } from '../daemon/control.js';
import type { Out } from './output.js';

// `thinfuse check --repair`: thin_repair for a pool directory. The repaired
// metadata goes to a new file (POOL/metadata.repaired unless --output says
// otherwise); the input is only read. With --in-place and --backup the old
// metadata is first copied to the backup and made durable, then the repaired
// file is renamed over POOL/metadata and the directory synced. needs_check is
// cleared in the result only when both `thinfuse check` and thin_check pass
// on it.

export interface RepairFlags {
  output?: string;
  inPlace?: boolean;
  backup?: string;
  dataBlockSize?: string;
  transactionId?: string;
}

const SBIN = ['/usr/local/sbin', '/usr/sbin', '/sbin'];

/** THINFUSE_THIN_CHECK names the thin_check to confirm a repair with; else PATH and the sbin directories. */
function findThinCheck(): string | undefined {
  if (process.env.THINFUSE_THIN_CHECK) return process.env.THINFUSE_THIN_CHECK;
  const dirs = [...(process.env.PATH ?? '').split(':').filter(Boolean), ...SBIN];
  for (const d of dirs) {
    const p = path.join(d, 'thin_check');
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // keep looking
    }
  }
  return undefined;
}

function bad(message: string): never {
  throw new ThinError('EINVAL_ARG', message);
}

function parseTransactionId(text: string): bigint {
  if (!/^\d{1,20}$/.test(text) || BigInt(text) >= 2n ** 64n) bad(`--transaction-id takes a whole number below 2^64, not '${text}'`);
  return BigInt(text);
}

/** The pool lock, or a one-line error naming the daemon that serves the pool. */
function lockForRepair(dir: string): PoolLock {
  try {
    return lockPool(dir);
  } catch (e) {
    if (!isThinError(e, 'POOL_LOCKED')) throw e;
    const ptr = readPointer(dir);
    const pid = ptr?.pid || e.data.pid;
    throw new ThinError('POOL_LOCKED', ptr
      ? `pool ${dir} is being served by thinfuse serve (pid ${pid}); stop the daemon before repairing its metadata`
      : `pool ${dir} is in use by process ${pid ?? 'unknown'}; stop it before repairing its metadata`, { pid });
  }
}

function fsyncPath(p: string): void {
  const fd = fs.openSync(p, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Our check and thin_check on the repaired file; the reasons it is not consistent. */
function verify(file: string): string[] {
  const problems: string[] = [];
  const f = FileBacking.open(file, false);
  try {
    const rep = checkMetadata(f);
    if (!rep.ok) problems.push(`thinfuse check: ${rep.fatal[0]}`);
  } finally {
    void f.close();
  }
  const tool = findThinCheck();
  if (!tool) {
    problems.push('thin_check (thin-provisioning-tools) is not installed, so the result could not be confirmed');
  } else {
    const r = spawnSync(tool, ['-q', file], { encoding: 'utf8' });
    if (r.status !== 0) problems.push(`thin_check exited ${r.status ?? r.signal}`);
  }
  return problems;
}

function clearNeedsCheck(file: string): void {
  const f = FileBacking.open(file, true);
  try {
    const raw = Buffer.alloc(META_BLOCK_SIZE);
    f.readSync(raw, 0);
    const sb = decodeSuperblock(raw, file);
    sb.flags &= ~NEEDS_CHECK;
    f.writeSync(encodeSuperblock(sb), 0);
    f.flushSync();
  } finally {
    void f.close();
  }
}

export async function repairPool(out: Out, dir: string, o: RepairFlags): Promise<void> {
  const metaPath = path.join(dir, METADATA_FILE);
  if (o.inPlace && !o.backup) bad('--in-place needs --backup FILE: the old metadata is copied there first');
  if (o.backup && !o.inPlace) bad('--backup goes with --in-place');
  if (o.inPlace && o.output) bad('--in-place writes POOL/metadata; drop --output');
  const dataBlockSize = o.dataBlockSize === undefined ? undefined : parseSize(o.dataBlockSize, '--data-block-size');
  if (dataBlockSize !== undefined) checkBlockSize(dataBlockSize);
  const transactionId = o.transactionId === undefined ? undefined : parseTransactionId(o.transactionId);
  const target = o.inPlace ? `${metaPath}.repair-tmp` : path.resolve(o.output ?? `${metaPath}.repaired`);
  if (!o.inPlace && fs.existsSync(target)) bad(`${target} already exists; remove it or pick another --output`);
  if (o.backup && fs.existsSync(o.backup)) bad(`backup file ${o.backup} already exists; pick another`);
  if (path.resolve(target) === path.resolve(metaPath)) bad('--output must not be the pool\'s metadata file; use --in-place --backup FILE');

  const lock = lockForRepair(dir);
  let made = false;
  try {
    const inputSize = fs.statSync(metaPath).size;
    const size = Math.max(MIN_META_BYTES, Math.floor(inputSize / META_BLOCK_SIZE) * META_BLOCK_SIZE);
    const dataPath = path.join(dir, DATA_FILE);
    const dataFileBytes = fs.existsSync(dataPath) ? fs.statSync(dataPath).size : undefined;
    fs.rmSync(`${metaPath}.repair-tmp`, { force: true });
    const input = FileBacking.open(metaPath, false);
    let report: RepairReport;
    try {
      const output = FileBacking.create(target, size);
      made = true;
      try {
        report = await repairMetadata(input, output, {
          ...(dataFileBytes !== undefined ? { dataFileBytes } : {}),
          ...(dataBlockSize !== undefined ? { dataBlockSize: dataBlockSize / SECTOR } : {}),
          ...(transactionId !== undefined ? { transactionId } : {}),
        });
        await output.flush();
      } finally {
        await output.close();
      }
    } finally {
      await input.close();
    }
    const problems = verify(target);
    if (problems.length === 0) clearNeedsCheck(target);
    else if (o.inPlace) throw new ThinError('CHECK_FAILED', `the repaired metadata does not pass the checks (${problems[0]}); ${metaPath} was left as it was`);
    if (o.inPlace) {
      fs.copyFileSync(metaPath, o.backup!, fs.constants.COPYFILE_EXCL);
      fsyncPath(o.backup!);
      fsyncPath(path.dirname(path.resolve(o.backup!)));
      fsyncPath(target);
      fs.renameSync(target, metaPath);
      fsyncPath(dir);
      made = false;
    }
    const where = o.inPlace ? `${metaPath} (old metadata in ${o.backup})` : target;
    const verdict = problems.length === 0 ? 'consistent; needs_check cleared' : `needs_check left set: ${problems.join('; ')}`;
    out.result({ ...report!, output: o.inPlace ? metaPath : target, backup: o.backup ?? null, consistent: problems.length === 0, problems },
      [`repaired metadata written to ${where}`, ...describeRepair(report!), `result: ${verdict}`]);
    if (problems.length > 0) throw new ThinError('CHECK_FAILED', `${target}: the repaired metadata does not pass the checks (${problems[0]}); needs_check stays set`);
  } catch (e) {
    if (made && (o.inPlace || !isThinError(e, 'CHECK_FAILED'))) fs.rmSync(target, { force: true });
    throw e;
  } finally {
    lock.release();
  }
}
