import type CliProgress from 'cli-progress';
import { createRequire } from 'node:module';
import { isThinError, type ErrorCode } from '../../base/errors.js';

// The CLI's edge: results as text or a --json envelope, errors as one line
// and an exit status.

export interface Out {
  json: boolean;
  /** A progress bar on stderr for a long command; silent under --json or when stderr is not a terminal. */
  progress(total: number, unit: string): Progress;
  /** Text lines (ignored under --json). */
  lines(lines: string[]): void;
  result(value: unknown, text?: string[]): void;
}

export interface Progress {
  update(done: number): void;
  stop(): void;
}

function progressBar(total: number, unit: string): Progress {
  // Loaded here, not at the top: only a long command on a terminal draws a bar.
  const cliProgress = createRequire(import.meta.url)('cli-progress') as typeof CliProgress;
  const bar = new cliProgress.SingleBar({
    stream: process.stderr,
    format: `{bar} {value}/{total} ${unit}`,
    hideCursor: true,
    clearOnComplete: true,
  }, cliProgress.Presets.shades_classic);
  bar.start(total, 0);
  return { update: (done) => bar.update(done), stop: () => bar.stop() };
}

export function makeOut(json: boolean): Out {
  return {
    json,
    progress(total, unit) {
      if (json || !process.stderr.isTTY) return { update() {}, stop() {} };
      return progressBar(total, unit);
    },
    lines(lines) {
      if (!json && lines.length > 0) process.stdout.write(lines.join('\n') + '\n');
    },
    result(value, text) {
      if (json) process.stdout.write(JSON.stringify({ ok: true, result: value }, (_k, v) => (typeof v === 'bigint' ? String(v) : v)) + '\n');
      else if (text) this.lines(text);
    },
  };
}

const EXIT: Partial<Record<ErrorCode, number>> = {
  EINVAL_ARG: 2,
  CHECK_FAILED: 1,
};

export function reportError(e: unknown, json: boolean): number {
  const code = isThinError(e) ? e.code : 'INTERNAL';
  const message = e instanceof Error ? e.message : String(e);
  if (json) process.stdout.write(JSON.stringify({ ok: false, error: { code, message } }) + '\n');
  process.stderr.write(`thinfuse: ${message.split('\n')[0]}\n`);
  if (!isThinError(e) && process.env.THINFUSE_DEBUG) process.stderr.write(`${(e as Error)?.stack}\n`);
  return isThinError(e) ? EXIT[e.code] ?? 1 : 70;
}

export function table(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  '));
}
