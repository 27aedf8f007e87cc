import crypto from 'node:crypto';
import fs from 'node:fs';
import { SECTOR } from '../base/units.js';
import type { ContentEntry, DirEntry, IoEntry, IoLog } from './io-log.js';
import { OverlayBacking, PAGE } from './overlay-backing.js';

// The replayer of an IoLog (io-log.ts): it walks the log in order, keeps the
// durable image of every file (what a flush has made durable) and the
// operations still pending, and builds crash states: the durable image plus
// any subset of the pending operations, each one whole or torn at 512-byte
// sectors, plus a prefix of the pending directory operations. A state is
// identified by a hash of its contents (every file reachable by name, its
// bytes and its length), so states reached in different ways count once.
//
// States are views over the live durable image: use one (open a pool on it,
// check it, close it) before the replayer moves on.

interface FileImage {
  /** Non-zero 4 KiB pages only. */
  pages: Map<number, Buffer>;
  hashes: Map<number, bigint>;
  /** Sum of the page hashes, mod 2^64. */
  sum: bigint;
  size: number;
}

export interface Pending {
  /** Per file, its content operations not yet durable, in issue order. */
  files: Map<number, ContentEntry[]>;
  /** Directory operations not yet durable, in order. */
  dir: DirEntry[];
}

/** One pending operation that reached the disk: whole, or only the 512-byte pieces marked true. */
export interface Persisted {
  entry: ContentEntry;
  pieces?: boolean[];
}

export interface Selection {
  ops: Persisted[];
  /** How many of the pending directory operations reached the disk (a prefix). */
  dirOps: number;
}

const MASK64 = (1n << 64n) - 1n;
const ZERO_PAGE = Buffer.alloc(PAGE);

function pageHash(p: number, page: Buffer): bigint {
  if (page.equals(ZERO_PAGE)) return 0n;
  const h = crypto.createHash('sha1');
  const n = Buffer.alloc(8);
  n.writeUInt32LE(p >>> 0, 0);
  n.writeUInt32LE(Math.floor(p / 2 ** 32), 4);
  h.update(n);
  h.update(page);
  return h.digest().readBigUInt64LE(0);
}

/** The 512-byte pieces of a write or punch, split at absolute sector boundaries; a truncate is one piece. */
export function pieces(e: ContentEntry): Array<{ offset: number; length: number }> {
  if (e.op === 'truncate') return [{ offset: e.length, length: 0 }];
  const length = e.op === 'write' ? e.data.length : e.length;
  const out: Array<{ offset: number; length: number }> = [];
  for (let at = e.offset; at < e.offset + length;) {
    const end = Math.min(e.offset + length, (Math.floor(at / SECTOR) + 1) * SECTOR);
    out.push({ offset: at, length: end - at });
    at = end;
  }
  return out;
}

/** Pages of one file: the durable ones, read-only, and this state's own copies on top. */
class PageWriter {
  readonly own = new Map<number, Buffer>();

  constructor(readonly img: FileImage, public size: number) {}

  private writable(p: number): Buffer {
    let page = this.own.get(p);
    if (!page) {
      page = Buffer.from(this.img.pages.get(p) ?? ZERO_PAGE);
      this.own.set(p, page);
    }
    return page;
  }

  /** Copies src (or zeros) to offset. */
  put(offset: number, length: number, src: Buffer | undefined, srcOffset: number): void {
    for (let done = 0; done < length;) {
      const pos = offset + done;
      const p = Math.floor(pos / PAGE);
      const within = pos - p * PAGE;
      const n = Math.min(PAGE - within, length - done);
      const page = this.writable(p);
      if (src) src.copy(page, within, srcOffset + done, srcOffset + done + n);
      else page.fill(0, within, within + n);
      done += n;
    }
  }

  truncate(length: number): void {
    if (length < this.size) {
      for (let p = Math.floor(length / PAGE); p * PAGE < this.size; p++) {
        if (!this.own.has(p) && !this.img.pages.has(p)) continue;
        this.writable(p).fill(0, Math.max(0, length - p * PAGE));
      }
    }
    this.size = length;
  }

  apply(e: ContentEntry, mask?: boolean[]): void {
    if (e.op === 'truncate') {
      if (!mask || mask[0]) this.truncate(e.length);
      return;
    }
    const ps = pieces(e);
    for (let i = 0; i < ps.length; i++) {
      if (mask && !mask[i]) continue;
      const { offset, length } = ps[i]!;
      this.put(offset, length, e.op === 'write' ? e.data : undefined, offset - e.offset);
      if (e.op === 'write') this.size = Math.max(this.size, offset + length);
    }
  }
}

/** A crash state: names in the pool directory and the contents behind them. */
export class CrashState {
  constructor(
    readonly hash: string,
    private readonly dir: Map<string, number>,
    private readonly files: Map<number, { img: FileImage; own: Map<number, Buffer>; size: number }>,
  ) {}

  names(): string[] {
    return [...this.dir.keys()].sort();
  }

  has(name: string): boolean {
    return this.dir.has(name);
  }

  /** A BackingFile over the named file (its writes stay in it); undefined if the name is absent. */
  backing(name: string, path: string, onClose?: () => Promise<void>): OverlayBacking | undefined {
    const f = this.file(name);
    return f && new OverlayBacking(path, f.img.pages, new Map([...f.own].map(([p, b]) => [p, Buffer.from(b)])), f.size, onClose);
  }

  size(name: string): number | undefined {
    return this.file(name)?.size;
  }

  /** A small file's contents as UTF-8. */
  text(name: string): string | undefined {
    const b = this.backing(name, name);
    if (!b) return undefined;
    const buf = Buffer.alloc(b.size());
    b.readSync(buf, 0);
    return buf.toString('utf8');
  }

  /** Writes the named file to `dest` as a sparse file (only its non-zero pages). */
  writeTo(name: string, dest: string): void {
    const b = this.backing(name, dest);
    if (!b) throw new Error(`crash state has no file named ${name}`);
    const fd = fs.openSync(dest, 'w');
    try {
      fs.ftruncateSync(fd, b.size());
      for (const p of b.pageNumbers()) {
        const page = b.page(p);
        if (p * PAGE >= b.size() || page.equals(ZERO_PAGE)) continue;
        fs.writeSync(fd, page, 0, Math.min(PAGE, b.size() - p * PAGE), p * PAGE);
      }
    } finally {
      fs.closeSync(fd);
    }
  }

  private file(name: string) {
    const id = this.dir.get(name);
    return id === undefined ? undefined : this.files.get(id);
  }
}

export class CrashReplayer {
  /** Entries applied so far: a state built now is a crash just before entries[position]. */
  position = 0;
  private readonly images = new Map<number, FileImage>();
  private readonly pendingOps = new Map<number, ContentEntry[]>();
  private readonly dir = new Map<string, number>();
  private pendingDir: DirEntry[] = [];

  /**
   * `hashIgnore`: names left out of a state's identity (files the reader of
   * the state never looks at, such as temporary files), so that states that
   * differ only in them count once.
   */
  constructor(readonly log: IoLog, private readonly hashIgnore: (name: string) => boolean = () => false) {
    for (const f of log.initial) {
      this.images.set(f.file, { pages: new Map(), hashes: new Map(), sum: 0n, size: f.size });
      this.dir.set(f.name, f.file);
    }
  }

  get done(): boolean {
    return this.position >= this.log.entries.length;
  }

  /** Applies the next entry to the model and returns it. */
  next(): IoEntry {
    const e = this.log.entries[this.position++];
    if (!e) throw new Error('the replayer is at the end of the log');
    switch (e.op) {
      case 'write':
      case 'punch':
      case 'truncate':
        this.opsOf(e.file).push(e);
        break;
      case 'flush': {
        const ops = this.opsOf(e.file);
        const durable = ops.filter((o) => o.done < e.issued);
        this.pendingOps.set(e.file, ops.filter((o) => !(o.done < e.issued)));
        for (const o of durable) this.makeDurable(o);
        break;
      }
      case 'create':
        this.images.set(e.file, { pages: new Map(), hashes: new Map(), sum: 0n, size: 0 });
        this.pendingDir.push(e);
        break;
      case 'rename':
        this.pendingDir.push(e);
        break;
      case 'fsyncDir':
        for (const d of this.pendingDir) applyDir(this.dir, d);
        this.pendingDir = [];
        break;
      case 'mark':
        break;
    }
    return e;
  }

  private opsOf(file: number): ContentEntry[] {
    let ops = this.pendingOps.get(file);
    if (!ops) this.pendingOps.set(file, (ops = []));
    return ops;
  }

  private image(file: number): FileImage {
    const img = this.images.get(file);
    if (!img) throw new Error(`log: file ${file} used before it exists`);
    return img;
  }

  private makeDurable(e: ContentEntry): void {
    const img = this.image(e.file);
    const w = new PageWriter(img, img.size);
    w.apply(e);
    for (const [p, page] of w.own) {
      img.sum = (img.sum - (img.hashes.get(p) ?? 0n)) & MASK64;
      const h = pageHash(p, page);
      if (h === 0n) {
        img.pages.delete(p);
        img.hashes.delete(p);
      } else {
        img.pages.set(p, page);
        img.hashes.set(p, h);
        img.sum = (img.sum + h) & MASK64;
      }
    }
    img.size = w.size;
  }

  /** What may or may not have reached the disk at this point. */
  pending(): Pending {
    const files = new Map<number, ContentEntry[]>();
    for (const [f, ops] of this.pendingOps) if (ops.length > 0) files.set(f, ops);
    return { files, dir: this.pendingDir };
  }

  /** Name -> file number, durable plus the given prefix of pending directory operations. */
  private names(dirOps: number): Map<string, number> {
    const dir = new Map(this.dir);
    for (const d of this.pendingDir.slice(0, dirOps)) applyDir(dir, d);
    return dir;
  }

  /** The crash state in which exactly the selected pending operations reached the disk. */
  build(sel: Selection): CrashState {
    const writers = new Map<number, PageWriter>();
    for (const p of [...sel.ops].sort((a, b) => a.entry.seq - b.entry.seq)) {
      let w = writers.get(p.entry.file);
      if (!w) {
        const img = this.image(p.entry.file);
        writers.set(p.entry.file, (w = new PageWriter(img, img.size)));
      }
      w.apply(p.entry, p.pieces);
    }
    const dir = this.names(sel.dirOps);
    const files = new Map<number, { img: FileImage; own: Map<number, Buffer>; size: number }>();
    const h = crypto.createHash('sha1');
    for (const name of [...dir.keys()].sort()) {
      const id = dir.get(name)!;
      const img = this.image(id);
      const w = writers.get(id);
      let sum = img.sum;
      if (w) {
        for (const [p, page] of w.own) sum = (sum - (img.hashes.get(p) ?? 0n) + pageHash(p, page)) & MASK64;
      }
      const size = w ? w.size : img.size;
      files.set(id, { img, own: w ? w.own : new Map(), size });
      if (!this.hashIgnore(name)) h.update(`${name}\0${sum.toString(16)}\0${size}\n`);
    }
    return new CrashState(h.digest('hex'), dir, files);
  }
}

function applyDir(dir: Map<string, number>, d: DirEntry): void {
  if (d.op === 'create') {
    dir.set(d.name, d.file);
    return;
  }
  const id = dir.get(d.from);
  if (id === undefined) return;
  dir.delete(d.from);
  dir.set(d.to, id);
}

//------------------------------------------------------------------------------
// selections

/** Nothing pending reached the disk. */
export function persistNone(): Selection {
  return { ops: [], dirOps: 0 };
}

/** Everything pending reached the disk. */
export function persistAll(p: Pending): Selection {
  return { ops: [...p.files.values()].flat().map((entry) => ({ entry })), dirOps: p.dir.length };
}

/**
 * A random subset: each pending operation reaches the disk with probability
 * `keep`; one that does is torn with probability `tear` (each of its 512-byte
 * pieces then persists with probability 1/2); a random prefix of the
 * directory operations persists.
 */
export function persistRandom(p: Pending, rand: () => number, keep = 0.5, tear = 0.25): Selection {
  const ops: Persisted[] = [];
  for (const list of p.files.values()) {
    for (const entry of list) {
      if (rand() >= keep) continue;
      const n = pieces(entry).length;
      if (n > 1 && rand() < tear) {
        const mask = Array.from({ length: n }, () => rand() < 0.5);
        ops.push({ entry, pieces: mask });
      } else {
        ops.push({ entry });
      }
    }
  }
  return { ops, dirOps: Math.floor(rand() * (p.dir.length + 1)) };
}
