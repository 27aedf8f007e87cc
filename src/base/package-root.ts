import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The thinfuse package root: the nearest ancestor of this file holding its package.json. */
export function packageRoot(): string {
  const start = path.dirname(fileURLToPath(import.meta.url));
  for (let dir = start; ; dir = path.dirname(dir)) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: unknown };
      if (pkg.name === 'thinfuse') return dir;
    } catch {
      // no (readable) package.json here: keep walking up
    }
    if (path.dirname(dir) === dir) break;
  }
  // src/base/package-root.ts or dist/base/package-root.js: two levels up.
  return path.resolve(start, '..', '..');
}
