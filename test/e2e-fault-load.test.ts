// The fault matrix under fio load through FUSE (issue 5: "CI runs all idle
// cells and one cell per fault type under load"): one cell per fault type on
// the data file (EIO read, EIO write, fsync failure, dropped writes, latency,
// bit flip, host ENOSPC, torn write) and one on the metadata file (EIO on
// write: read-only + needs_check), each with a real `thinfuse serve`, a loop
// device, fio against it and the fault set through the control socket; see
// test/_helpers/fault-fuse.ts. scripts/fault-matrix.ts runs every cell.
//
// Needs root, /dev/fuse, losetup, fio, dd, thin_check; a missing one fails
// the test. About 9 s per cell (80 s for the file on 2 cores).

import test from 'ava';
import { FUSE_CELLS, runFuseCase } from './_helpers/fault-fuse.js';
import { E2E } from './_helpers/serve.js';

const CI_CELLS = [
  'data/error/read',
  'data/error/write',
  'data/error/flush',
  'data/drop/write',
  'data/delay/write',
  'data/bitflip/read',
  'data/nospace/write (error_if_no_space)',
  'data/torn/write',
  'metadata/error/write',
];

for (const name of CI_CELLS) {
  const cell = FUSE_CELLS.find((c) => c.name === name);
  test.serial(`fault under fio load through FUSE: ${name}`, async (t) => {
    t.timeout(2 * 60_000);
    if (!cell) throw new Error(`no FUSE cell named ${name} in test/_helpers/fault-fuse.ts`);
    const env = await E2E.start(t, 'thinfuse-faultload-');
    const r = await runFuseCase(env, cell);
    t.log(`${r.reaction}; ${r.detail} (${r.ms} ms)`);
    t.pass();
  });
}
