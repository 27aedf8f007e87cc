// Tar plumbing shared by layer apply, layer diff and image import, on top of
// tar-stream: compression sniffing, a typed entry iterator, and PAX records
// that carry binary values.
//
// PAX records (POSIX.1-2001 pax format, the 'x' typeflag) are lines
// "<len> <key>=<value>\n" where <len> counts the whole line in bytes.
// Docker (Go's archive/tar) stores each xattr as a record
// "SCHILY.xattr.<name>=<raw value bytes>"; values such as security.capability
// are binary. tar-stream decodes every record as UTF-8, which would corrupt
// them. So tar-stream's PAX encoder and decoder (headers.js, which its
// package exports do not expose) are replaced, once, on first use, by ones
// that carry SCHILY.xattr.* values as latin1 strings, one char per byte
// (Buffer.from(value, 'latin1') gives the bytes back); other keys stay UTF-8.
// Its own entry API cannot write a PAX header with a body, and no other
// maintained tar library keeps binary PAX values either.

import { createRequire } from 'node:module';
import path from 'node:path';
import { Readable } from 'node:stream';
import zlib from 'node:zlib';

import tarStream from 'tar-stream';

import { ThinError } from '../../../base/errors.js';

export const XATTR_PREFIX = 'SCHILY.xattr.';

export type Compression = 'none' | 'gzip';

/** Names the compression of a stream from its first bytes; refuses the ones we cannot read. */
export function sniffCompression(head: Buffer, what: string): Compression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) {
    throw new ThinError('BAD_ARCHIVE', `${what} is zstd-compressed; thinfuse reads plain and gzip tars only: decompress it with \`zstd -d\` first`);
  }
  if (head.length >= 6 && head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) {
    throw new ThinError('BAD_ARCHIVE', `${what} is xz-compressed; thinfuse reads plain and gzip tars only: decompress it with \`xz -d\` first`);
  }
  if (head.length >= 3 && head.subarray(0, 3).toString('latin1') === 'BZh') {
    throw new ThinError('BAD_ARCHIVE', `${what} is bzip2-compressed; thinfuse reads plain and gzip tars only: decompress it with \`bzip2 -d\` first`);
  }
  return 'none';
}

/** The input as an uncompressed byte stream: gzip is detected by its magic and inflated. */
export async function decompressed(input: NodeJS.ReadableStream, what: string): Promise<Readable> {
  const it = (Readable.from(input as AsyncIterable<Buffer>, { objectMode: false }) as Readable)[Symbol.asyncIterator]();
  const head: Buffer[] = [];
  let have = 0;
  let done = false;
  while (have < 6) {
    const next = await it.next();
    if (next.done) {
      done = true;
      break;
    }
    const chunk = Buffer.isBuffer(next.value) ? next.value : Buffer.from(next.value as string);
    head.push(chunk);
    have += chunk.length;
  }
  const compression = sniffCompression(Buffer.concat(head), what);
  const raw = Readable.from(
    (async function* () {
      yield* head;
      if (done) return;
      for (let next = await it.next(); !next.done; next = await it.next()) yield next.value as Buffer;
    })(),
    { objectMode: false },
  );
  if (compression === 'none') return raw;
  const gunzip = zlib.createGunzip();
  raw.on('error', (e) => gunzip.destroy(e));
  gunzip.on('error', (e) => raw.destroy(e));
  return raw.pipe(gunzip);
}

// ------------------------------------------------------------- reading

/** A tar entry header as tar-stream decodes it, with the PAX records typed. */
export type TarHeader = Omit<tarStream.Header, 'pax'> & { pax?: Record<string, string> | null };

export interface TarEntry {
  header: TarHeader;
  /** The entry's data; whatever the caller leaves unread is skipped. */
  body: AsyncIterable<Buffer>;
}

interface PaxCodec {
  decodePax?: (buf: Buffer) => Record<string, string>;
  encodePax?: (opts: { name?: string; linkname?: string | null; pax?: Record<string, string> | null }) => Buffer;
}
let paxPatched = false;

/** Replaces tar-stream's UTF-8-only PAX codec with one that keeps xattr bytes (see the header comment). */
function patchPax(): void {
  if (paxPatched) return;
  const require = createRequire(import.meta.url);
  const headersFile = path.join(path.dirname(require.resolve('tar-stream')), 'headers.js');
  const headers = require(headersFile) as PaxCodec;
  if (typeof headers.decodePax !== 'function' || typeof headers.encodePax !== 'function') {
    throw new ThinError('IO_ERROR', `tar-stream's headers.js has no PAX codec (unexpected tar-stream version): run npm ci`);
  }
  headers.decodePax = decodePaxRecords;
  headers.encodePax = encodePaxRecords;
  paxPatched = true;
}

/** tar-stream's encodePax contract: a path record (and linkpath), then the given records; xattr values as latin1. */
export function encodePaxRecords(opts: { name?: string; linkname?: string | null; pax?: Record<string, string> | null }): Buffer {
  const records: Buffer[] = [];
  if (opts.name) records.push(paxRecord('path', Buffer.from(opts.name)));
  if (opts.linkname) records.push(paxRecord('linkpath', Buffer.from(opts.linkname)));
  for (const [key, value] of Object.entries(opts.pax ?? {})) {
    records.push(paxRecord(key, Buffer.from(value, key.startsWith(XATTR_PREFIX) ? 'latin1' : 'utf8')));
  }
  return Buffer.concat(records);
}

/** Decodes PAX records; SCHILY.xattr.* values as latin1 (bytes), everything else as UTF-8. */
export function decodePaxRecords(buf: Buffer): Record<string, string> {
  const result: Record<string, string> = {};
  let at = 0;
  while (at < buf.length) {
    const space = buf.indexOf(0x20, at);
    if (space < 0) break;
    const len = parseInt(buf.toString('latin1', at, space), 10);
    if (!(len > 0) || at + len > buf.length) {
      throw new ThinError('BAD_ARCHIVE', `malformed PAX record at byte ${at} of a PAX header: re-create the archive`);
    }
    const record = buf.subarray(space + 1, at + len - 1); // without the trailing \n
    const eq = record.indexOf(0x3d);
    if (eq < 0) throw new ThinError('BAD_ARCHIVE', `PAX record without '=' at byte ${at} of a PAX header: re-create the archive`);
    const key = record.toString('utf8', 0, eq);
    result[key] = record.toString(key.startsWith(XATTR_PREFIX) ? 'latin1' : 'utf8', eq + 1);
    at += len;
  }
  return result;
}

/** The entries of an uncompressed tar stream, in order. */
export async function* tarEntries(tar: Readable): AsyncGenerator<TarEntry> {
  patchPax();
  const extract = tarStream.extract();
  tar.on('error', (e) => extract.destroy(e));
  tar.pipe(extract);
  try {
    for await (const entry of extract) {
      yield { header: entry.header as TarHeader, body: entry as AsyncIterable<Buffer> };
      entry.resume(); // drain what the caller left unread
    }
  } catch (e) {
    if (e instanceof ThinError) throw e;
    const msg = e instanceof Error ? e.message : String(e);
    throw new ThinError('BAD_ARCHIVE', `not a valid tar: ${msg.replace(/\s+/g, ' ')}`, {}, e);
  } finally {
    tar.unpipe(extract);
    tar.destroy();
  }
}

/** The xattrs of an entry, from its SCHILY.xattr.* PAX records. */
export function entryXattrs(header: TarHeader): Map<string, Buffer> {
  const xattrs = new Map<string, Buffer>();
  for (const [key, value] of Object.entries(header.pax ?? {})) {
    if (key.startsWith(XATTR_PREFIX)) xattrs.set(key.slice(XATTR_PREFIX.length), Buffer.from(value, 'latin1'));
  }
  return xattrs;
}

/** mtime of an entry in ns: the PAX `mtime` record (fractional seconds) when present, else the header's seconds. */
export function entryMtimeNs(header: TarHeader): bigint {
  const pax = header.pax?.mtime;
  if (pax !== undefined && /^-?\d+(\.\d+)?$/.test(pax)) {
    const [secs = '0', frac = ''] = pax.split('.');
    return BigInt(secs) * 1_000_000_000n + BigInt((frac + '000000000').slice(0, 9)) * (secs.startsWith('-') ? -1n : 1n);
  }
  return BigInt((header.mtime ?? new Date(0)).getTime()) * 1_000_000n;
}

/** uid or gid of an entry: the PAX record when present (ids too large for the header field), else the header's. */
export function entryId(header: TarHeader, key: 'uid' | 'gid'): number {
  const pax = header.pax?.[key];
  if (pax !== undefined && /^\d+$/.test(pax)) return Number(pax);
  return header[key] ?? 0;
}

// ------------------------------------------------------------- writing

/** What writeEntry needs to describe one entry. */
export interface EntrySpec {
  name: string;
  type: 'file' | 'link' | 'symlink' | 'character-device' | 'block-device' | 'directory' | 'fifo';
  /** Permission bits incl. setuid/setgid/sticky (0o7777). */
  mode: number;
  uid: number;
  gid: number;
  mtime: Date;
  size?: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  xattrs?: Map<string, Buffer>;
}

const TYPE_BITS: Record<EntrySpec['type'], number> = {
  file: 0o100000,
  link: 0o100000,
  symlink: 0o120000,
  'character-device': 0o020000,
  'block-device': 0o060000,
  directory: 0o040000,
  fifo: 0o010000,
};

const MAX_OCTAL_ID = 0o777777; // tar-stream writes ids as 6 octal digits

/** One PAX record line, its length prefix counting itself. */
function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length > len) len++;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

/** The PAX records the entry needs beyond path/linkpath (large ids, xattrs), or null. */
function paxFor(spec: EntrySpec): Record<string, string> | null {
  const pax: Record<string, string> = {};
  if (spec.uid > MAX_OCTAL_ID) pax.uid = String(spec.uid);
  if (spec.gid > MAX_OCTAL_ID) pax.gid = String(spec.gid);
  for (const [key, value] of [...(spec.xattrs ?? new Map<string, Buffer>())].sort(([a], [b]) => (a < b ? -1 : 1))) {
    pax[XATTR_PREFIX + key] = value.toString('latin1');
  }
  return Object.keys(pax).length === 0 ? null : pax;
}

/**
 * Adds one entry to `pack`; resolves when its data is queued. tar-stream adds
 * a PAX header itself for long or non-ASCII names; we ask for one for xattrs
 * and ids too large for the header fields.
 */
export async function writeEntry(pack: tarStream.Pack, spec: EntrySpec, body?: AsyncIterable<Buffer> | Buffer): Promise<void> {
  patchPax();
  const header: tarStream.Header = {
    name: spec.name,
    type: spec.type,
    // tar-stream replaces a zero mode by 0644/0755; the type bits keep it
    // non-zero and are masked off when the header is encoded.
    mode: (spec.mode & 0o7777) | TYPE_BITS[spec.type],
    uid: Math.min(spec.uid, MAX_OCTAL_ID),
    gid: Math.min(spec.gid, MAX_OCTAL_ID),
    mtime: spec.mtime,
    size: spec.size ?? 0,
    linkname: spec.linkname ?? '',
    devmajor: spec.devmajor ?? 0,
    devminor: spec.devminor ?? 0,
    uname: '',
    gname: '',
    pax: paxFor(spec),
  };
  if (body === undefined || Buffer.isBuffer(body)) {
    await new Promise<void>((resolve, reject) => {
      pack.entry(header, body ?? Buffer.alloc(0), (err) => (err ? reject(err) : resolve()));
    });
    return;
  }
  let finished: (err?: Error | null) => void = () => {};
  const written = new Promise<void>((resolve, reject) => {
    finished = (err) => (err ? reject(err) : resolve());
  });
  const sink = pack.entry(header, (err) => finished(err));
  try {
    for await (const chunk of body) {
      if (!sink.write(chunk)) await new Promise<void>((resolve) => sink.once('drain', () => resolve()));
    }
    sink.end(undefined); // streamx: no final chunk
  } catch (e) {
    sink.destroy(e instanceof Error ? e : new Error(String(e)));
    throw e;
  }
  await written;
}
