import type { Command } from 'commander';
import type { Out } from './output.js';

// `thinfuse snapshotter POOL`: containerd's proxy snapshotter on the layer
// store (src/frontends/snapshotter/). Runs until SIGTERM or SIGINT, then
// stops serving and unlocks the store; the pool's serve stays up while
// active snapshots keep loop devices attached.

type Run = <A extends unknown[]>(fn: (out: Out, ...args: A) => Promise<void>) => (...args: A) => Promise<void>;

export function snapshotterCommand(program: Command, run: Run): void {
  program.command('snapshotter <pool>')
    .description('serve the pool as a containerd snapshotter (gRPC, for [proxy_plugins]) until SIGTERM')
    .option('--socket <path>', 'unix socket to listen on', '/run/thinfuse/snapshotter.sock')
    .option('--config <file>', 'JSON: base_image_size, fs_type (ext4|xfs), fs_options')
    .action(run(async (out, pool: string, o: { socket: string; config?: string }) => {
      const { startSnapshotter } = await import('../snapshotter/server.js');
      const s = await startSnapshotter(pool, o.socket, o.config);
      out.result({ pool, socket: s.socket, pid: process.pid }, [`serving ${pool} as a containerd snapshotter on ${s.socket}`]);
      await new Promise<void>((resolve) => {
        const stop = () => resolve();
        process.once('SIGTERM', stop);
        process.once('SIGINT', stop);
      });
      await s.stop();
    }));
}
