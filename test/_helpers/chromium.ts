// Headless Chromium for the tests that look at a rendered page: a
// screenshot, or the DOM after layout. A missing browser fails the test,
// saying what to install; it is never a skip.

import type { ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { findTool } from './tools.js';

export function requireChromium(): string {
  const p = findTool('chromium') ?? findTool('chromium-browser');
  if (!p) throw new Error('chromium not found: apt-get install chromium (scripts/setup.sh installs it; the show tests draw the page in headless Chromium)');
  return p;
}

/** Runs Chromium headless on `file` with a fresh profile, removed when the test ends. */
function runChromium(t: ExecutionContext, file: string, extra: string[]): string {
  const profile = mkdtempSync(join(tmpdir(), 'thinfuse-chromium-'));
  t.teardown(() => rmSync(profile, { recursive: true, force: true }));
  const args = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    // Colours come out as the page gives them, so the test can count them.
    '--force-color-profile=srgb', '--hide-scrollbars',
    `--user-data-dir=${profile}`, ...extra, pathToFileURL(file).href,
  ];
  const r = spawnSync(requireChromium(), args, { encoding: 'utf8', timeout: 120_000, maxBuffer: 64 << 20 });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`chromium exited ${r.status} on ${file}:\n${r.stderr.slice(-2000)}`);
  return r.stdout;
}

/** A PNG of the page in a window of the given size (the viewport only). */
export function screenshot(t: ExecutionContext, file: string, width: number, height: number): Buffer {
  const dir = mkdtempSync(join(tmpdir(), 'thinfuse-shot-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const png = join(dir, 'out.png');
  runChromium(t, file, [`--screenshot=${png}`, `--window-size=${width},${height}`]);
  return readFileSync(png);
}

/** The page's DOM, serialised after it loaded. */
export function dumpDom(t: ExecutionContext, file: string): string {
  return runChromium(t, file, ['--dump-dom']);
}
