#!/usr/bin/env node
import { Command, CommanderError, Option } from 'commander';
import { ThinError } from '../../base/errors.js';
import { formatBytes, parseCount, parseSize } from '../../base/size.js';
import { type DevId, MAX_DEV_ID } from '../../base/units.js';
import type { PoolConfig } from '../../pool/config.js';
import { callOp, withSession } from './session.js';
import { dumpCommand, restoreCommand, checkCommand } from './metadata-commands.js';
import { makeOut, type Out, reportError, table } from './output.js';
import { serveCommands, withFrozen } from './serve-commands.js';
import { layerStoreCommands } from './layer-commands.js';
import { snapshotterCommand } from './snapshotter-command.js';
import { faultCommands } from './fault-commands.js';
import { lookCommands, treeLines } from './show-commands.js';
import { applyAutoextend, autoextendOptions, autoextendText, eventsCommand } from './ops-commands.js';

// The `thinfuse` command. Each action parses its arguments, opens the pool
// (taking its lock), does one thing through the pool API, and prints the
// result as text or as --json. Errors become one line and an exit status.
// Engine modules are imported inside the actions that need them: a command
// sent to a serving daemon then loads little more than commander.

interface Common {
  json?: boolean;
}

function devIdArg(text: string): DevId {
  return parseCount(text, 'dev id', MAX_DEV_ID) as DevId;
}

async function deviceSize(text: string): Promise<number> {
  const n = parseSize(text, 'device size');
  const { checkDeviceSize } = await import('../../pool/validate.js');
  checkDeviceSize(n);
  return n;
}

function run<A extends unknown[]>(fn: (out: Out, ...args: A) => Promise<void>) {
  return async (...args: A) => {
    const cmd = args[args.length - 1] as Command;
    const out = makeOut(Boolean(cmd.optsWithGlobals<Common>().json));
    try {
      await fn(out, ...args);
    } catch (e) {
      process.exitCode = reportError(e, out.json);
    }
  };
}

function onOff(v: string): boolean {
  if (v === 'on' || v === 'true' || v === '1') return true;
  if (v === 'off' || v === 'false' || v === '0') return false;
  throw new ThinError('EINVAL_ARG', `expected on or off, got '${v}'`);
}

//------------------------------------------------------------------------------

function poolCommands(program: Command): void {
  const pool = program.command('pool').description('create and configure pools');

  autoextendOptions(pool.command('create <pool>')
    .description('create a pool: POOL/data and POOL/metadata, sparse'))
    .option('--data-size <size>', 'data file size', '100G')
    .option('--metadata-size <size>', 'metadata file size (2M..16G)', '2G')
    .option('--block-size <size>', 'data block size (64k..1G, multiple of 64k)', '64k')
    .option('--low-water-mark <blocks>', 'free data blocks that raise the low-water event', '0')
    .option('--skip-block-zeroing', 'do not zero new blocks on partial writes')
    .option('--error-if-no-space', 'fail writes at once when out of data space')
    .option('--no-discard-passdown', 'unmap on discard but never punch holes in POOL/data')
    .option('--ignore-discard', 'ignore discards')
    .action(run(async (out, dir: string, o: Record<string, string | boolean>) => {
      const [{ checkBlockSize, checkDataSize, checkMetadataSize }, { checkAutoextend, defaultConfig }, { hostSpaceWarning }] = await Promise.all([
        import('../../pool/validate.js'), import('../../pool/config.js'), import('../layers/guards.js'),
      ]);
      const blockSize = parseSize(String(o.blockSize), '--block-size');
      checkBlockSize(blockSize);
      const dataSize = parseSize(String(o.dataSize), '--data-size');
      checkDataSize(dataSize, blockSize);
      const metadataSize = parseSize(String(o.metadataSize), '--metadata-size');
      checkMetadataSize(metadataSize);
      const config = defaultConfig();
      config.lowWaterMark = parseCount(String(o.lowWaterMark), '--low-water-mark');
      config.features.skipBlockZeroing = Boolean(o.skipBlockZeroing);
      config.features.errorIfNoSpace = Boolean(o.errorIfNoSpace);
      config.features.noDiscardPassdown = o.discardPassdown === false;
      config.features.ignoreDiscard = Boolean(o.ignoreDiscard);
      config.autoextend = applyAutoextend(config.autoextend, o as Record<string, string>);
      checkAutoextend(config.autoextend, dataSize);
      const { Pool } = await import('../../pool/pool.js');
      const p = await Pool.create(dir, { dataSize, metadataSize, blockSize, config });
      hostSpaceWarning(dir, dataSize, metadataSize);
      await p.close();
      out.result({ pool: dir, dataSize, metadataSize, blockSize, nrDataBlocks: dataSize / blockSize, config },
        [`created pool ${dir}: ${formatBytes(dataSize)} data in ${dataSize / blockSize} blocks of ${formatBytes(blockSize)}, ${formatBytes(metadataSize)} metadata`]);
    }));

  autoextendOptions(pool.command('set <pool>')
    .description("change what dm keeps in the pool's table line, and LVM's auto-extend settings (POOL/config)"))
    .option('--low-water-mark <blocks>', 'free data blocks that raise the low-water event')
    .option('--no-space-timeout <seconds>', 'how long writes wait for space under queue_if_no_space (0 = forever)')
    .option('--skip-block-zeroing <on|off>')
    .option('--error-if-no-space <on|off>')
    .option('--discard-passdown <on|off>')
    .option('--ignore-discard <on|off>')
    .option('--read-only <on|off>')
    .action(run(async (out, dir: string, o: Record<string, string>) => {
      const config: PoolConfig = await callOp(dir, 'config', {});
      config.autoextend = applyAutoextend(config.autoextend, o);
      if (o.lowWaterMark !== undefined) config.lowWaterMark = parseCount(o.lowWaterMark, '--low-water-mark');
      if (o.noSpaceTimeout !== undefined) config.noSpaceTimeout = parseCount(o.noSpaceTimeout, '--no-space-timeout');
      if (o.skipBlockZeroing !== undefined) config.features.skipBlockZeroing = onOff(o.skipBlockZeroing);
      if (o.errorIfNoSpace !== undefined) config.features.errorIfNoSpace = onOff(o.errorIfNoSpace);
      if (o.discardPassdown !== undefined) config.features.noDiscardPassdown = !onOff(o.discardPassdown);
      if (o.ignoreDiscard !== undefined) config.features.ignoreDiscard = onOff(o.ignoreDiscard);
      if (o.readOnly !== undefined) config.features.readOnly = onOff(o.readOnly);
      await callOp(dir, 'setConfig', { config });
      out.result(config, [JSON.stringify(config)]);
    }));
}

function deviceCommands(program: Command): void {
  program.command('message <pool> <message>')
    .description('send a dm-thin pool message: create_thin ID, create_snap ID ORIGIN, delete ID, set_transaction_id CUR NEW, reserve_metadata_snap, release_metadata_snap')
    .action(run(async (out, dir: string, msg: string) => {
      await callOp(dir, 'message', { message: msg });
      out.result({ message: msg });
    }));

  program.command('activate <pool> <name>')
    .description('name and size a device made by message (dmsetup create NAME --table "0 SECTORS thin POOL ID")')
    .requiredOption('--dev-id <id>', 'thin device id')
    .requiredOption('--size <size>', 'virtual size')
    .action(run(async (out, dir: string, name: string, o: { devId: string; size: string }) => {
      const d = await callOp(dir, 'activate', { name, devId: devIdArg(o.devId), size: await deviceSize(o.size) });
      out.result(d, [`activated ${d.name} (dev id ${d.devId}, ${formatBytes(d.size)})`]);
    }));

  program.command('create <pool> <name>')
    .description('create a thin device')
    .requiredOption('--size <size>', 'virtual size (may exceed the pool)')
    .option('--dev-id <id>', 'thin device id (default: lowest free)')
    .action(run(async (out, dir: string, name: string, o: { size: string; devId?: string }) => {
      const size = await deviceSize(o.size);
      const d = await callOp(dir, 'create', o.devId === undefined ? { name, size } : { name, size, devId: devIdArg(o.devId) });
      out.result(d, [`created ${d.name} (dev id ${d.devId}, ${formatBytes(d.size)})`]);
    }));

  program.command('snapshot <pool> <origin> <name>')
    .description('snapshot a thin device (O(1), any depth)')
    .option('--size <size>', 'virtual size (default: the origin\'s)')
    .option('--freeze <mounted-dir>', 'fsfreeze the filesystem mounted there around the snapshot')
    .action(run(async (out, dir: string, origin: string, name: string, o: { size?: string; freeze?: string }) => {
      const size = o.size === undefined ? undefined : await deviceSize(o.size);
      const d = await withFrozen(o.freeze, () => callOp(dir, 'snapshot', size === undefined ? { origin, name } : { origin, name, size }));
      out.result(d, [`created snapshot ${d.name} of ${origin} (dev id ${d.devId})`]);
    }));

  program.command('remove <pool> <name>')
    .description('delete a device and its name (lvremove)')
    .action(run(async (out, dir: string, name: string) => {
      await callOp(dir, 'remove', { name });
      out.result({ removed: name }, [`removed ${name}`]);
    }));

  program.command('deactivate <pool> <name>')
    .description('drop only the name and size, keeping the data (dmsetup remove)')
    .action(run(async (out, dir: string, name: string) => {
      await callOp(dir, 'deactivate', { name });
      out.result({ deactivated: name }, [`deactivated ${name}`]);
    }));

  program.command('ls <pool>')
    .description('list thin devices: name, dev id, size, mapped, exclusive and shared bytes')
    .option('--tree', 'as the snapshot tree: each snapshot under its origin (recorded by thinfuse, else inferred and marked *)')
    .action(run(async (out, dir: string, o: { tree?: boolean }) => {
      if (o.tree) {
        const rows = await callOp(dir, 'tree', {});
        out.result(rows, treeLines(rows));
        return;
      }
      const rows = await callOp(dir, 'ls', {});
      out.result(rows,
        table([['NAME', 'DEV', 'SIZE', 'MAPPED', 'EXCLUSIVE', 'SHARED'], ...rows.map((r) => [
          r.name ?? '-', String(r.devId), r.size === null ? '-' : formatBytes(r.size),
          formatBytes(r.mappedBytes), formatBytes(r.exclusiveBytes), formatBytes(r.sharedBytes),
        ])]));
    }));

  program.command('status <pool>')
    .description('dmsetup status lines for the pool and its named devices')
    .action(run(async (out, dir: string) => {
      const s = await callOp(dir, 'status', {});
      const { statusLines } = await import('../../pool/status.js');
      out.result(s, statusLines(s));
    }));

  program.command('info <pool>')
    .description('pool facts: sizes, features, mode, low-water events, caches')
    .action(run(async (out, dir: string) => {
      const s = await callOp(dir, 'info', {});
      const [{ dockerInfo, dockerInfoLines }, { eventLine }] = await Promise.all([import('../layers/info.js'), import('../../pool/events.js')]);
      const docker = dockerInfo(dir, s);
      out.result({ ...docker, ...s }, [
        ...dockerInfoLines(docker),
        `pool ${s.name}: ${s.nrDataBlocks} blocks of ${formatBytes(s.blockSize)}, ${s.data.used} used; metadata ${s.metadata.used}/${s.metadata.total} blocks`,
        `mode ${s.mode}, ${s.discard}, ${s.noSpace}${s.needsCheck ? ', needs_check' : ''}; transaction ${s.transactionId}, time ${s.time}`,
        `low water mark ${s.lowWaterMark} blocks, events ${s.lowWaterEvents}; metadata snapshot ${s.heldRoot ?? '-'}`,
        autoextendText(s.autoextend),
        ...(s.recentEvents.length ? ['recent events:', ...s.recentEvents.map((e) => `  ${eventLine(e)}`)] : []),
        ...(s.mountpoint ? [`served at ${s.mountpoint}; open: ${s.openDevices.join(' ') || '-'}`] : []),
      ]);
    }));
}

function ioCommands(program: Command): void {
  program.command('read <pool> <name>')
    .description('write device bytes to stdout')
    .option('--offset <bytes>', 'start', '0')
    .option('--length <bytes>', 'how many (default: to the end)')
    .action(run(async (_out, dir: string, name: string, o: { offset: string; length?: string }) => {
      const { IO_PIECE } = await import('../ops.js');
      await withSession(dir, async (session) => {
        const d = await session.call('size', { name });
        const offset = parseCount(o.offset, '--offset');
        const length = o.length === undefined ? Math.max(0, d.size - offset) : parseCount(o.length, '--length');
        if (offset + length > d.size) throw new ThinError('OUT_OF_RANGE', `read at ${offset}+${length} is past the end of ${name} (${d.size} bytes)`);
        for (let at = 0; at < length; at += IO_PIECE) {
          const piece = await session.call('read', { name, offset: offset + at, length: Math.min(IO_PIECE, length - at) });
          if (!process.stdout.write(Buffer.from(piece.data, 'base64'))) await new Promise((r) => process.stdout.once('drain', r));
        }
      });
    }));

  program.command('write <pool> <name>')
    .description('write stdin to the device')
    .option('--offset <bytes>', 'start', '0')
    .action(run(async (out, dir: string, name: string, o: { offset: string }) => {
      const { IO_PIECE } = await import('../ops.js');
      const written = await withSession(dir, async (session) => {
        let at = parseCount(o.offset, '--offset');
        const start = at;
        let pending: Buffer[] = [];
        let size = 0;
        const send = async () => {
          const data = Buffer.concat(pending);
          pending = [];
          size = 0;
          if (data.length === 0) return;
          await session.call('write', { name, offset: at, data: data.toString('base64') });
          at += data.length;
        };
        for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
          pending.push(chunk);
          size += chunk.length;
          if (size >= IO_PIECE) await send();
        }
        await send();
        return at - start;
      });
      out.result({ written });
    }));

  program.command('discard <pool> <name>')
    .description('discard a byte range (whole blocks are unmapped)')
    .option('--offset <bytes>', 'start', '0')
    .option('--length <bytes>', 'how many (default: to the end)')
    .action(run(async (out, dir: string, name: string, o: { offset: string; length?: string }) => {
      const offset = parseCount(o.offset, '--offset');
      const r = await callOp(dir, 'discard', o.length === undefined ? { name, offset } : { name, offset, length: parseCount(o.length, '--length') });
      const n = r.unmappedBlocks;
      out.result({ unmappedBlocks: n }, [`unmapped ${n} blocks`]);
    }));

  program.command('resize <pool> [name]')
    .description('grow the pool (--data-size, --metadata-size) or set a device size (NAME --size)')
    .option('--data-size <size>')
    .option('--metadata-size <size>')
    .option('--size <size>', 'new device size')
    .action(run(async (out, dir: string, name: string | undefined, o: { dataSize?: string; metadataSize?: string; size?: string }) => {
      if (name !== undefined) {
        if (o.size === undefined) throw new ThinError('EINVAL_ARG', 'resize POOL NAME needs --size');
        const size = await deviceSize(o.size);
        const d = await callOp(dir, 'resizeDevice', { name, size });
        out.result(d, [`${name} is now ${formatBytes(d.size)}`]);
        return;
      }
      if (o.dataSize === undefined && o.metadataSize === undefined) throw new ThinError('EINVAL_ARG', 'resize POOL needs --data-size or --metadata-size');
      const { checkDataSize, checkMetadataSize } = await import('../../pool/validate.js');
      const args: { dataSize?: number; metadataSize?: number } = {};
      if (o.dataSize !== undefined) args.dataSize = parseSize(o.dataSize, '--data-size');
      if (o.metadataSize !== undefined) {
        args.metadataSize = parseSize(o.metadataSize, '--metadata-size');
        checkMetadataSize(args.metadataSize);
      }
      if (args.dataSize !== undefined) {
        const config = await callOp(dir, 'info', {});
        checkDataSize(args.dataSize, config.blockSize);
      }
      await callOp(dir, 'resizePool', args);
      out.result({ pool: dir }, [`resized ${dir}`]);
    }));

  program.command('trim <pool>')
    .description('punch holes for every free data block')
    .action(run(async (out, dir: string) => {
      const n = (await callOp(dir, 'trim', {})).punchedBlocks;
      out.result({ punchedBlocks: n }, [`punched ${n} free blocks`]);
    }));
}

export function buildProgram(): Command {
  const program = new Command('thinfuse')
    .description('dm-thin thin provisioning in userspace: a pool in two sparse files')
    .addOption(new Option('--json', 'print the result as JSON'))
    .showHelpAfterError(false)
    .exitOverride();
  poolCommands(program);
  deviceCommands(program);
  ioCommands(program);
  dumpCommand(program, run);
  restoreCommand(program, run);
  checkCommand(program, run);
  serveCommands(program, run);
  layerStoreCommands(program, run);
  snapshotterCommand(program, run);
  faultCommands(program, run);
  lookCommands(program, run);
  eventsCommand(program, run);
  // Only for --help: main() hands `thinfuse dmsetup ...` to dmsetup-command.ts.
  program.command('dmsetup [args...]').description("dmsetup's grammar and output for thin-pool and thin devices (thinfuse dmsetup help)");
  for (const c of program.commands) {
    c.addOption(new Option('--json', 'print the result as JSON'));
    for (const s of c.commands) s.addOption(new Option('--json', 'print the result as JSON'));
  }
  return program;
}

export async function main(argv: string[]): Promise<void> {
  // dmsetup's grammar is not commander's (options anywhere, its own errors).
  if (argv[2] === 'dmsetup') {
    const { dmsetupMain } = await import('./dmsetup-command.js');
    process.exitCode = await dmsetupMain(argv.slice(3));
    return;
  }
  const program = buildProgram();
  program.configureOutput({ writeErr: (s) => process.stderr.write(s.startsWith('error:') ? `thinfuse: ${s.slice(7)}` : s) });
  for (const c of program.commands) c.exitOverride();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      process.exitCode = e.exitCode === 0 ? 0 : 2;
      return;
    }
    throw e;
  }
}

process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
});

await main(process.argv);
