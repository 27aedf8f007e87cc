import fs from 'node:fs';
import path from 'node:path';

// The pool directory's small files (POOL/config, POOL/devices): the other
// half of a pool's on-disk state besides the two BackingFiles. Everything
// that reads or replaces them goes through this interface, so that a test
// can keep them in memory or record every step of a replacement for crash
// replay (recording-backing.ts). Paths are full paths, as the callers build
// them; the in-memory implementation stands for one directory and keys its
// files by base name.

export interface PoolFiles {
  exists(file: string): boolean;
  /** The whole file as UTF-8; throws (as fs.readFileSync) when it cannot be read. */
  readText(file: string): string;
  /** Creates or truncates `file` and writes `data`; with `fsync`, makes it durable before closing it. */
  writeFile(file: string, data: string, opts?: { fsync?: boolean }): void;
  /** rename(2): replaces `to` atomically. */
  rename(from: string, to: string): void;
  /** fsync(2) of a directory: makes the renames and creations inside it durable. */
  fsyncDir(dir: string): void;
}

/** The host filesystem. */
export const realPoolFiles: PoolFiles = {
  exists(file) {
    return fs.existsSync(file);
  },
  readText(file) {
    return fs.readFileSync(file, 'utf8');
  },
  writeFile(file, data, opts = {}) {
    const fd = fs.openSync(file, 'w', 0o644);
    try {
      fs.writeSync(fd, data);
      if (opts.fsync) fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  },
  rename(from, to) {
    fs.renameSync(from, to);
  },
  fsyncDir(dir) {
    const dfd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  },
};

/**
 * Writes a small file so that a crash leaves either the old or the new one:
 * write a temporary file and fsync it, rename it over the file, fsync the
 * directory.
 */
export function writeFileAtomic(file: string, text: string, files: PoolFiles = realPoolFiles): void {
  const tmp = `${file}.tmp`;
  files.writeFile(tmp, text, { fsync: true });
  files.rename(tmp, file);
  files.fsyncDir(path.dirname(file));
}

/** One directory's small files, in memory (for tests and crash replay). Keys are base names. */
export class MemoryPoolFiles implements PoolFiles {
  readonly files = new Map<string, string>();

  constructor(entries?: Iterable<[string, string]>) {
    if (entries) for (const [k, v] of entries) this.files.set(k, v);
  }

  exists(file: string): boolean {
    return this.files.has(path.basename(file));
  }

  readText(file: string): string {
    const text = this.files.get(path.basename(file));
    if (text === undefined) throw Object.assign(new Error(`ENOENT: no such file or directory, open '${file}'`), { code: 'ENOENT' });
    return text;
  }

  writeFile(file: string, data: string): void {
    this.files.set(path.basename(file), data);
  }

  rename(from: string, to: string): void {
    const text = this.readText(from);
    this.files.delete(path.basename(from));
    this.files.set(path.basename(to), text);
  }

  fsyncDir(): void {}
}
