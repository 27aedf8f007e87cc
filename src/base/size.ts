import bytes from 'bytes';
import { ThinError } from './errors.js';

// Sizes on the command line: a number with an optional K, M, G, T or P
// (powers of 1024, any case, optionally followed by iB or B). Anything else
// is an error, never a silent guess.

const SIZE_RE = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$/i;
/** Over 2^63 bytes is absurd (dm's sector counts are u64). */
export const MAX_BYTES = 2 ** 63;

export function parseSize(text: string, what: string): number {
  const m = SIZE_RE.exec(text);
  if (!m) throw new ThinError('EINVAL_ARG', `${what}: cannot parse size '${text}'; use a number with K, M, G or T (e.g. 64k, 10G)`);
  const unit = m[2]!.toLowerCase();
  const n = unit === '' ? Number(m[1]) : bytes.parse(`${m[1]}${unit}b`);
  if (n === null || !Number.isFinite(n)) throw new ThinError('EINVAL_ARG', `${what}: cannot parse size '${text}'`);
  if (n >= MAX_BYTES) throw new ThinError('EINVAL_ARG', `${what}: ${text} is absurdly large (over 2^63 bytes)`);
  if (!Number.isInteger(n)) throw new ThinError('EINVAL_ARG', `${what}: ${text} is not a whole number of bytes`);
  if (n === 0) throw new ThinError('EINVAL_ARG', `${what}: size must not be 0`);
  return n;
}

export function parseCount(text: string, what: string, max = Number.MAX_SAFE_INTEGER): number {
  if (!/^\d+$/.test(text.trim()) || Number(text) > max) {
    throw new ThinError('EINVAL_ARG', `${what}: '${text}' is not a whole number from 0 to ${max}`);
  }
  return Number(text);
}

export function formatBytes(n: number): string {
  const s = bytes.format(n, { unitSeparator: '', decimalPlaces: 1 }) ?? String(n);
  return /^\d+(?:\.\d+)?B$/.test(s) ? s : s.replace(/B$/, 'iB');
}
