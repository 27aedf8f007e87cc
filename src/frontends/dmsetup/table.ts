import { dmError } from './errors.js';

// dm tables of the two targets thinfuse provides, parsed and checked as the
// kernel's constructors (pool_ctr, thin_ctr in dm-thin.c) check them:
//
//   <start> <len> thin-pool <metadata dev> <data dev> <block sectors> <low water> [<#features> <feature>...]
//   <start> <len> thin <pool dev> <dev id>
//
// A table is a single line (both targets are singletons: the only target of
// their device), start is 0. Devices are paths or MAJ:MIN. Features are
// matched case-insensitively; `table` prints them in the kernel's fixed
// order, from the requested set.

export const FEATURE_ORDER = ['skip_block_zeroing', 'ignore_discard', 'no_discard_passdown', 'read_only', 'error_if_no_space'] as const;
export type Feature = (typeof FEATURE_ORDER)[number];

export interface PoolTable {
  target: 'thin-pool';
  lenSectors: number;
  metadataDev: string;
  dataDev: string;
  blockSectors: number;
  lowWater: number;
  features: Feature[];
}

export interface ThinTable {
  target: 'thin';
  lenSectors: number;
  poolDev: string;
  devId: number;
}

export type Table = PoolTable | ThinTable;

const MAX_DEV_ID = 2 ** 24 - 1;

/** Parses a table (text of --table, a file or stdin: one non-comment line) for `ioctl` (create/reload) of `name`. */
export function parseTable(text: string, ioctl: string, name: string): Table {
  const lines = text.split('\n').map((l) => l.replace(/#.*/, '').trim()).filter((l) => l !== '');
  const bad = (why: string): never => {
    throw dmError('EINVAL_ARG', ioctl, name, 'EINVAL', why);
  };
  if (lines.length === 0) bad('the table is empty: give one line "0 LEN thin-pool ..." or "0 LEN thin ..."');
  if (lines.length > 1) bad(`${lines.length} table lines: thin-pool and thin must be the only target of their device`);
  const words = lines[0]!.split(/\s+/);
  if (words.length < 3 || !/^\d+$/.test(words[0]!) || !/^\d+$/.test(words[1]!)) bad(`invalid table line "${lines[0]}": it starts START LENGTH TARGET`);
  const start = Number(words[0]);
  const lenSectors = Number(words[1]);
  if (start !== 0) bad(`the target starts at sector ${start}: a single-target table starts at 0`);
  if (lenSectors === 0) bad('the target has length 0');
  const args = words.slice(3);
  switch (words[2]) {
    case 'thin-pool':
      return parsePool(lenSectors, args, bad);
    case 'thin':
      return parseThin(lenSectors, args, bad);
    default:
      return bad(`unknown target type "${words[2]}": thinfuse provides thin-pool and thin`);
  }
}

function parsePool(lenSectors: number, a: string[], bad: (why: string) => never): PoolTable {
  if (a.length < 4) bad('thin-pool: invalid argument count: needs METADATA_DEV DATA_DEV BLOCK_SECTORS LOW_WATER [N FEATURES...]');
  const [metadataDev, dataDev, bs, lw] = a as [string, string, string, string];
  if (metadataDev === dataDev) bad('thin-pool: error setting metadata or data device: they are the same device');
  const blockSectors = /^\d+$/.test(bs) ? Number(bs) : NaN;
  if (!(blockSectors >= 128 && blockSectors <= 2097152 && blockSectors % 128 === 0)) {
    bad(`thin-pool: invalid block size ${bs}: give 128 to 2097152 sectors (64 KiB to 1 GiB), a multiple of 128`);
  }
  if (!/^\d+$/.test(lw)) bad(`thin-pool: invalid low water mark "${lw}": give a number of data blocks`);
  const features: Feature[] = [];
  if (a.length > 4) {
    const n = /^\d+$/.test(a[4]!) ? Number(a[4]) : NaN;
    if (!(n >= 0 && n <= 4)) bad(`thin-pool: invalid number of pool feature arguments "${a[4]}": 0 to 4`);
    if (a.length !== 5 + n) bad(`thin-pool: ${n} features announced, ${a.length - 5} given`);
    for (const w of a.slice(5)) {
      const f = w.toLowerCase() as Feature;
      if (!FEATURE_ORDER.includes(f)) bad(`thin-pool: unrecognised pool feature requested: ${w} (known: ${FEATURE_ORDER.join(', ')})`);
      if (!features.includes(f)) features.push(f);
    }
  }
  if (lenSectors < blockSectors) bad(`thin-pool: the length ${lenSectors} is less than one block (${blockSectors} sectors)`);
  return { target: 'thin-pool', lenSectors, metadataDev, dataDev, blockSectors, lowWater: Number(lw), features };
}

function parseThin(lenSectors: number, a: string[], bad: (why: string) => never): ThinTable {
  if (a.length === 3) bad('thin: external origins are not supported by thinfuse; give POOL_DEV DEV_ID');
  if (a.length !== 2) bad('thin: invalid argument count: needs POOL_DEV DEV_ID');
  const [poolDev, id] = a as [string, string];
  const devId = /^\d+$/.test(id) ? Number(id) : NaN;
  if (!(devId <= MAX_DEV_ID)) bad(`thin: invalid device id "${id}": 0 to ${MAX_DEV_ID}`);
  return { target: 'thin', lenSectors, poolDev, devId };
}

/** The features word list `table` prints: the count, then each in the kernel's order, each followed by a space. */
export function featureWords(features: Feature[]): string {
  const on = FEATURE_ORDER.filter((f) => features.includes(f));
  return `${on.length} ${on.map((f) => `${f} `).join('')}`;
}
