// Helpers for the pool-operations tests (test/ops-*.test.ts): the events
// journal as `thinfuse events --json` shows it, waiting for a condition,
// the metrics endpoint a serve logged, and the offline check every pool
// test ends with.
import type { ExecutionContext } from 'ava';
import http from 'node:http';
import path from 'node:path';
import type { PoolEvent } from '../../src/pool/events.js';
import { run, sleep, tf, tfJson } from './serve.js';

export function events(pool: string): PoolEvent[] {
  return tfJson<PoolEvent[]>(['events', pool]);
}

export async function waitUntil(what: string, cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(100);
  }
}

/** thin_check and thinfuse check on a pool no process holds. */
export function checkOffline(t: ExecutionContext, pool: string): void {
  const tc = run('thin_check', [path.join(pool, 'metadata')]);
  t.is(tc.status, 0, `thin_check ${pool}/metadata: ${tc.stdout}${tc.stderr}`);
  const ours = tf(['check', pool]);
  t.is(ours.status, 0, `thinfuse check ${pool}: ${ours.stdout}${ours.stderr}`);
}

/** GET a URL's body (the test process is not the FUSE daemon, so this cannot deadlock). */
export function get(url: string): Promise<{ status: number; body: string; type: string }> {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, type: String(res.headers['content-type'] ?? '') }));
    }).on('error', reject);
  });
}

/** One sample's value from Prometheus text (name with its labels exactly as printed, e.g. `x_total{op="read"}`). */
export function sample(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  if (line === undefined) throw new Error(`no sample ${series} in the scrape`);
  return Number(line.slice(series.length + 1));
}
