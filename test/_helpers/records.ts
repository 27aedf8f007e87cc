// Reads back what test/_helpers/writer.mjs wrote: fixed-size records
//   [0, 8) "TFREC001", [8, 16) u64le sequence, [16, 48) sha256 of [48, end), payload
// and its log of the last record covered by each fsync that succeeded.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const WRITER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'writer.mjs');
const MAGIC = Buffer.from('TFREC001');

/** Sequence numbers logged after successful fsyncs; the last is the highest synced record (-1: none). */
export function syncedLog(log: string): number[] {
  let text = '';
  try {
    text = fs.readFileSync(log, 'utf8');
  } catch {
    return [];
  }
  // A line being written when we read may be partial: only whole lines count.
  const lines = text.split('\n');
  lines.pop();
  return lines.map(Number);
}

export function lastSynced(log: string): number {
  const all = syncedLog(log);
  return all.length ? all[all.length - 1]! : -1;
}

/** Checks records 0..upTo of file; returns problems (at most 10), empty if all intact. */
export function checkRecords(file: string, upTo: number, recordBytes: number): string[] {
  const problems: string[] = [];
  const fd = fs.openSync(file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    if (size < (upTo + 1) * recordBytes) problems.push(`${file} is ${size} bytes, shorter than the ${upTo + 1} synced records (${(upTo + 1) * recordBytes} bytes)`);
    const buf = Buffer.alloc(recordBytes);
    for (let seq = 0; seq <= upTo && problems.length < 10; seq++) {
      const n = fs.readSync(fd, buf, 0, recordBytes, seq * recordBytes);
      if (n < recordBytes) {
        problems.push(`record ${seq}: short read (${n} bytes)`);
        break;
      }
      if (!buf.subarray(0, 8).equals(MAGIC)) {
        problems.push(`record ${seq}: bad magic ${buf.subarray(0, 8).toString('hex')}`);
        continue;
      }
      const got = Number(buf.readBigUInt64LE(8));
      if (got !== seq) problems.push(`record ${seq}: holds sequence number ${got}`);
      const sum = crypto.createHash('sha256').update(buf.subarray(48)).digest();
      if (!sum.equals(buf.subarray(16, 48))) problems.push(`record ${seq}: checksum mismatch`);
    }
  } finally {
    fs.closeSync(fd);
  }
  return problems;
}
