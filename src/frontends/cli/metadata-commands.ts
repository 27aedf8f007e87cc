import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { ThinError } from '../../base/errors.js';
import { parseSize } from '../../base/size.js';
import { SECTOR } from '../../base/units.js';
import { callOp } from './session.js';
import type { Out } from './output.js';

// dump, restore and check: the thin_dump / thin_restore / thin_check trio on
// a pool directory. The engine modules are imported inside the actions, so
// that other commands start without loading them.

type Run = <A extends unknown[]>(fn: (out: Out, ...args: A) => Promise<void>) => (...args: A) => Promise<void>;

export function dumpCommand(program: Command, run: Run): void {
  program.command('dump <pool>')
    .description("print the metadata as thin_dump's XML (byte-identical)")
    .option('-m, --metadata-snap', 'dump the held metadata snapshot')
    .action(run(async (_out, dir: string, o: { metadataSnap?: boolean }) => {
      const { xml } = await callOp(dir, 'dump', { metadataSnap: Boolean(o.metadataSnap) });
      process.stdout.write(xml);
    }));
}

export function restoreCommand(program: Command, run: Run): void {
  program.command('restore <pool>')
    .description("build the pool's metadata from thin_dump XML (the data file is kept, or made sparse)")
    .requiredOption('-i, --input <file>', 'XML file, - for stdin')
    .option('--metadata-size <size>', 'size of a new metadata file', '2G')
    .action(run(async (out, dir: string, o: { input: string; metadataSize: string }) => {
      const [{ FileBacking }, { lockPool }, { DATA_FILE, METADATA_FILE }, { restoreMetadata }, { checkMetadataSize }] = await Promise.all([
        import('../../io/file-backing.js'), import('../../io/lock.js'), import('../../pool/pool.js'), import('../../pool/restore.js'), import('../../pool/validate.js'),
      ]);
      const input = o.input === '-' ? process.stdin : fs.createReadStream(o.input);
      if (o.input !== '-' && !fs.existsSync(o.input)) throw new ThinError('EINVAL_ARG', `input file ${o.input} does not exist`);
      fs.mkdirSync(dir, { recursive: true });
      const lock = lockPool(dir);
      const metaPath = path.join(dir, METADATA_FILE);
      const tmpPath = `${metaPath}.restore`;
      try {
        let size = fs.existsSync(metaPath) ? fs.statSync(metaPath).size : parseSize(o.metadataSize, '--metadata-size');
        if (!fs.existsSync(metaPath)) checkMetadataSize(size);
        fs.rmSync(tmpPath, { force: true });
        const file = FileBacking.create(tmpPath, size);
        let nrDataBlocks = 0;
        let blockBytes = 0;
        try {
          const md = await restoreMetadata(file, input);
          nrDataBlocks = md.nrDataBlocks;
          blockBytes = md.dataBlockSize * SECTOR;
        } finally {
          await file.close();
        }
        const dataPath = path.join(dir, DATA_FILE);
        const need = nrDataBlocks * blockBytes;
        if (!fs.existsSync(dataPath)) fs.closeSync(fs.openSync(dataPath, 'w'));
        if (fs.statSync(dataPath).size < need) fs.truncateSync(dataPath, need);
        fs.renameSync(tmpPath, metaPath);
        size = fs.statSync(metaPath).size;
        out.result({ pool: dir, nrDataBlocks, blockSize: blockBytes }, [`restored ${dir}: ${nrDataBlocks} data blocks of ${blockBytes} bytes`]);
      } catch (e) {
        fs.rmSync(tmpPath, { force: true });
        throw e;
      } finally {
        lock.release();
      }
    }));
}

export function checkCommand(program: Command, run: Run): void {
  program.command('check <pool>')
    .description('check the metadata: everything thin_check checks, plus data reference counts and mapped-block counts')
    .option('-q, --quiet', 'exit status only')
    .option('--clear-needs-check-flag', 'clear needs_check when the check passes')
    .option('--repair', 'rebuild consistent metadata from what is readable into a new file (thin_repair), and report what was lost')
    .option('--output <file>', 'with --repair: where to write the repaired metadata (default POOL/metadata.repaired)')
    .option('--in-place', 'with --repair: replace POOL/metadata (needs --backup)')
    .option('--backup <file>', 'with --in-place: copy the old metadata here first')
    .option('--data-block-size <size>', 'with --repair: the data block size, when the superblock cannot tell it')
    .option('--transaction-id <n>', 'with --repair: the transaction id, when the superblock cannot tell it')
    .action(run(async (out, dir: string, o: CheckFlags) => {
      const [{ FileBacking }, { lockPool }, { METADATA_FILE }, { checkMetadata }, { NEEDS_CHECK, decodeSuperblock, encodeSuperblock }] = await Promise.all([
        import('../../io/file-backing.js'), import('../../io/lock.js'), import('../../pool/pool.js'), import('../../pool/check.js'), import('../../pool/format.js'),
      ]);
      const metaPath = path.join(dir, METADATA_FILE);
      if (!fs.existsSync(metaPath)) throw new ThinError('POOL_MISSING', `no pool in ${dir} (no metadata file)`);
      if (o.repair || o.output || o.inPlace || o.backup || o.dataBlockSize || o.transactionId) {
        await repairCommand(out, dir, o);
        return;
      }
      const lock = lockPool(dir);
      try {
        const file = FileBacking.open(metaPath, Boolean(o.clearNeedsCheckFlag));
        try {
          const report = checkMetadata(file);
          if (!o.quiet) {
            out.result(
              { ok: report.ok, fatal: report.fatal, nonFatal: report.nonFatal, transactionId: String(report.info.transactionId), metadataFreeBlocks: report.info.metadataFreeBlocks },
              [...report.fatal.map((s) => `error: ${s}`), ...report.nonFatal.map((s) => `warning: ${s}`), `TRANSACTION_ID=${report.info.transactionId}`, `METADATA_FREE_BLOCKS=${report.info.metadataFreeBlocks}`],
            );
          }
          if (!report.ok) throw new ThinError('CHECK_FAILED', `${dir}: metadata check failed (${report.fatal.length} errors, ${report.nonFatal.length} warnings)`);
          if (o.clearNeedsCheckFlag) {
            const raw = Buffer.alloc(4096);
            file.readSync(raw, 0);
            const sb = decodeSuperblock(raw, metaPath);
            if (sb.flags & NEEDS_CHECK) {
              sb.flags &= ~NEEDS_CHECK;
              file.writeSync(encodeSuperblock(sb), 0);
              file.flushSync();
            }
          }
        } finally {
          await file.close();
        }
      } finally {
        lock.release();
      }
    }));
}

interface CheckFlags {
  quiet?: boolean;
  clearNeedsCheckFlag?: boolean;
  repair?: boolean;
  output?: string;
  inPlace?: boolean;
  backup?: string;
  dataBlockSize?: string;
  transactionId?: string;
}

async function repairCommand(out: Out, dir: string, o: CheckFlags): Promise<void> {
  if (!o.repair) throw new ThinError('EINVAL_ARG', '--output, --in-place, --backup, --data-block-size and --transaction-id go with --repair');
  if (o.clearNeedsCheckFlag) throw new ThinError('EINVAL_ARG', '--repair clears needs_check by itself when the result is consistent; drop --clear-needs-check-flag');
  const { repairPool } = await import('./repair-command.js');
  await repairPool(out, dir, o);
}
