import { isThinError, type ErrorCode } from '../../base/errors.js';

// The CLI's edge: results as text or a --json envelope, errors as one line
// and an exit status.

export interface Out {
  json: boolean;
  /** Text lines (ignored under --json). */
  lines(lines: string[]): void;
  result(value: unknown, text?: string[]): void;
}

export function makeOut(json: boolean): Out {
  return {
    json,
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
