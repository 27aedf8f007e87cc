// Trees of files with known checksums, for the end-to-end tests: written
// with random contents (the sha256 of each file kept as it is written), read
// back and compared.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

/** Relative path -> sha256 hex. */
export type Sums = Map<string, string>;

export interface TreeSpec {
  /** Number of small files. */
  files: number;
  minSize: number;
  maxSize: number;
  /** One large file, written in pieces. */
  big?: { name: string; size: number };
}

const PIECE = 8 << 20;

function randInt(lo: number, hi: number): number {
  return lo + crypto.randomInt(hi - lo + 1);
}

async function writeRandom(file: string, size: number): Promise<string> {
  const h = crypto.createHash('sha256');
  const fh = await fs.promises.open(file, 'w');
  try {
    for (let at = 0; at < size; at += PIECE) {
      const buf = crypto.randomBytes(Math.min(PIECE, size - at));
      h.update(buf);
      await fh.write(buf, 0, buf.length, at);
    }
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

/** Writes the tree under dir (nested directories d0..d9/s0..s2), returning its sums. */
export async function writeTree(dir: string, spec: TreeSpec): Promise<Sums> {
  const sums: Sums = new Map();
  for (let i = 0; i < spec.files; i++) {
    const rel = path.join(`d${i % 10}`, `s${i % 3}`, `f${String(i).padStart(4, '0')}.bin`);
    await fs.promises.mkdir(path.join(dir, path.dirname(rel)), { recursive: true });
    sums.set(rel, await writeRandom(path.join(dir, rel), randInt(spec.minSize, spec.maxSize)));
  }
  if (spec.big) sums.set(spec.big.name, await writeRandom(path.join(dir, spec.big.name), spec.big.size));
  return sums;
}

export async function hashFile(file: string): Promise<string> {
  const h = crypto.createHash('sha256');
  const fh = await fs.promises.open(file, 'r');
  try {
    const buf = Buffer.alloc(PIECE);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, PIECE, null);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
    }
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

/** The sums of every regular file under dir, except the names in `skip` (top level) and lost+found. */
export async function hashTree(dir: string, skip: string[] = []): Promise<Sums> {
  const sums: Sums = new Map();
  const walk = async (rel: string) => {
    for (const e of await fs.promises.readdir(path.join(dir, rel), { withFileTypes: true })) {
      const r = path.join(rel, e.name);
      if (rel === '' && (e.name === 'lost+found' || skip.includes(e.name))) continue;
      if (e.isDirectory()) await walk(r);
      else if (e.isFile()) sums.set(r, await hashFile(path.join(dir, r)));
      else throw new Error(`unexpected file type at ${path.join(dir, r)}`);
    }
  };
  await walk('');
  return sums;
}

/** Human-readable differences (at most `max`), empty when equal. */
export function diffSums(want: Sums, got: Sums, max = 10): string[] {
  const out: string[] = [];
  for (const [k, v] of want) {
    if (!got.has(k)) out.push(`missing ${k}`);
    else if (got.get(k) !== v) out.push(`changed ${k}`);
  }
  for (const k of got.keys()) if (!want.has(k)) out.push(`unexpected ${k}`);
  return out.length > max ? [...out.slice(0, max), `... and ${out.length - max} more`] : out;
}

/** Total bytes of the files named, under dir. */
export function sizeOf(dir: string, rels: Iterable<string>): number {
  let n = 0;
  for (const r of rels) n += fs.statSync(path.join(dir, r)).size;
  return n;
}

/** Overwrites file bytes [offset, offset+length) with random data; returns the new sum. */
export async function scribble(file: string, offset: number, length: number): Promise<string> {
  const fh = await fs.promises.open(file, 'r+');
  try {
    await fh.write(crypto.randomBytes(length), 0, length, offset);
  } finally {
    await fh.close();
  }
  return hashFile(file);
}
