#!/usr/bin/env node
// A writer for the crash test: appends fixed-size, self-checking records to
// FILE and fsyncs every SYNC_EVERY records. After each fsync that succeeded
// it appends the sequence number of the last record that fsync covered to
// LOG (a file on another filesystem), so that the test knows which records
// the filesystem promised to keep. It stops at the first error (exit 2) or
// after MAX records (exit 0), or when killed.
//
//   node writer.mjs FILE LOG [RECORD_BYTES=4096] [SYNC_EVERY=16] [MAX=0 (no limit)]
//
// Record layout (test/_helpers/records.ts reads it back):
//   [0, 8)    magic "TFREC001"
//   [8, 16)   sequence number, u64 little-endian, from 0
//   [16, 48)  sha256 of bytes [48, RECORD_BYTES)
//   [48, ...) random payload

import crypto from 'node:crypto';
import fs from 'node:fs';

const [file, log, recordArg = '4096', syncArg = '16', maxArg = '0'] = process.argv.slice(2);
if (!file || !log) {
  process.stderr.write('usage: writer.mjs FILE LOG [RECORD_BYTES] [SYNC_EVERY] [MAX]\n');
  process.exit(64);
}
const RECORD = Number(recordArg);
const SYNC_EVERY = Number(syncArg);
const MAX = Number(maxArg);
const MAGIC = Buffer.from('TFREC001');

function record(seq) {
  const buf = Buffer.alloc(RECORD);
  MAGIC.copy(buf, 0);
  buf.writeBigUInt64LE(BigInt(seq), 8);
  crypto.randomFillSync(buf, 48);
  crypto.createHash('sha256').update(buf.subarray(48)).digest().copy(buf, 16);
  return buf;
}

const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o644);
const logFd = fs.openSync(log, 'a');
let seq = 0;
try {
  for (;;) {
    if (MAX > 0 && seq >= MAX) break;
    const buf = record(seq);
    fs.writeSync(fd, buf, 0, RECORD, seq * RECORD);
    seq++;
    if (seq % SYNC_EVERY === 0) {
      fs.fsyncSync(fd);
      fs.writeSync(logFd, `${seq - 1}\n`);
    }
  }
  fs.fsyncSync(fd);
  fs.writeSync(logFd, `${seq - 1}\n`);
  process.exit(0);
} catch (e) {
  process.stderr.write(`writer: stopped at record ${seq}: ${e.message}\n`);
  process.exit(2);
}
