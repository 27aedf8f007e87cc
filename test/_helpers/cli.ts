import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { requireTool } from './tools.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const CLI = path.join(root, 'dist/frontends/cli/main.js');

export interface CliResult {
  status: number;
  stdout: Buffer;
  stderr: string;
}

/** Runs the built CLI (npm test builds it first). */
export function cli(args: string[], input?: Buffer | string): CliResult {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build`);
  const r = spawnSync(process.execPath, [CLI, ...args], { input, maxBuffer: 1 << 30 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr.toString() };
}

export function cliOk(args: string[], input?: Buffer | string): string {
  const r = cli(args, input);
  if (r.status !== 0) throw new Error(`thinfuse ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout.toString();
}

/** Runs one of thin-provisioning-tools; a missing tool fails the test with what to install. */
export function thinTool(tool: string, args: string[]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(requireTool(tool), args, { maxBuffer: 1 << 30 });
  return { status: r.status ?? -1, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

export function sha(file: string): string {
  return execFileSync('sha256sum', [file]).toString().split(' ')[0]!;
}
