// Where the system tools the tests run live: PATH plus the sbin directories
// (Debian puts thin-provisioning-tools in /usr/sbin).
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

export function findTool(name: string): string | undefined {
  const dirs = [...(process.env['PATH'] ?? '').split(delimiter), '/usr/sbin', '/sbin', '/usr/local/sbin'];
  for (const dir of dirs) {
    if (dir === '') continue;
    const p = join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // keep looking
    }
  }
  return undefined;
}

/** A thin-provisioning-tools program; a missing one fails the test with what to install. */
export function requireTool(name: string): string {
  const p = findTool(name);
  if (!p) throw new Error(`${name} not found: install thin-provisioning-tools (0.9.0; apt-get install thin-provisioning-tools)`);
  return p;
}
