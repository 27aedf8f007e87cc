import { ThinError } from '../base/errors.js';
import type { DevId } from '../base/units.js';
import type { PoolMetadata } from './pool-metadata.js';

// thin_delta: which blocks differ between two thin devices, printed exactly
// as thin-provisioning-tools 0.9.0 `thin_delta --thin1 L --thin2 R` prints
// it (verified against the binary; the algorithm below is the one 0.9.0
// runs, described in our words).
//
// Output (two-space indentation per level, "\n" after every line):
//
//   <superblock uuid="" time="1" transaction="0" data_block_size="128" nr_data_blocks="1024">
//     <diff left="0" right="1">
//       <same begin="0" length="3"/>
//       <different begin="3" length="1"/>
//       <right_only begin="16" length="1"/>
//       <left_only begin="20" length="1"/>
//     </diff>
//   </superblock>
//
//   * superblock: the committed superblock's time and transaction, the data
//     block size in sectors and the data space map's size; when a metadata
//     snapshot is held, `metadata_snap="BLOCK"` follows nr_data_blocks
//     (thin_delta prints it, thin_dump 0.9.0 does not). No flags, no version.
//   * diff left/right: the two dev ids as given.
//   * begin and length are virtual blocks. `same`: both devices map these
//     blocks to the same data blocks; `different`: both map them, to other
//     data blocks; `left_only`/`right_only`: only one device maps them.
//     Blocks neither device maps are not mentioned. Time stamps are not
//     compared, and device sizes are unknown to the metadata: mappings past
//     a shrunk device's end are compared like any other.
//   * Adjacent pieces of one kind whose virtual ranges touch print as one
//     element (two `same` runs with a gap between them stay two elements).
//
// With --verbose, consecutive pieces of one kind are grouped in an element
// of that kind, one `<range>` per piece and never merged:
//
//       <same>
//         <range begin="0" data_begin="0" length="3"/>
//       </same>
//       <different>
//         <range begin="3" left_data_begin="3" right_data_begin="10" length="1"/>
//       </different>
//
// `data_begin` is the data block of the piece's first block (the left
// device's for left_only, the right's for right_only).
//
// What it reads: thin_delta 0.9.0 reads POOL/metadata as the file is (a
// regular file is not opened exclusively, and without -m it needs no
// metadata snapshot; `-m` on a pool holding none fails with "no current
// metadata snap"), so it sees the last commit. Our callers commit first and
// read the same trees. `-m` (the held snapshot's trees) is not offered here.
//
// How the pieces are found: each device's mappings, in virtual order, are
// cut into runs (consecutive virtual blocks on consecutive data blocks).
// The two run lists are walked together; at each step the run that starts
// first gives a left_only/right_only piece up to where the other begins, or,
// when both start at the same block, a same/different piece as long as the
// shorter of the two. Whatever remains of either list at the end is
// left_only/right_only, run by run. So the pieces are cut where either
// device's runs are cut, which is what the verbose form shows.

/** Consecutive virtual blocks mapped to consecutive data blocks. */
export interface MappingRun {
  begin: number;
  dataBegin: number;
  length: number;
}

export type DeltaKind = 'same' | 'different' | 'left_only' | 'right_only';

/** One piece of the walk: the data blocks are those of its first block; null where a side has none. */
export interface DeltaPiece {
  kind: DeltaKind;
  begin: number;
  length: number;
  leftData: number | null;
  rightData: number | null;
}

/** What the superblock line prints. */
export interface DeltaHeader {
  time: number;
  transaction: bigint;
  /** In 512-byte sectors. */
  dataBlockSize: number;
  nrDataBlocks: number;
  /** The held metadata snapshot's block, 0 when none is held. */
  metadataSnap: number;
  left: number;
  right: number;
}

/** Cuts mappings, given in increasing virtual order, into runs. */
export function mappingRuns(each: (visit: (vb: number, dataBlock: number) => void) => void): MappingRun[] {
  const runs: MappingRun[] = [];
  let cur: MappingRun | undefined;
  each((vb, db) => {
    if (cur && vb === cur.begin + cur.length && db === cur.dataBegin + cur.length) {
      cur.length++;
      return;
    }
    cur = { begin: vb, dataBegin: db, length: 1 };
    runs.push(cur);
  });
  return runs;
}

/** A cursor over a run list that can take part of a run. */
class RunCursor {
  private i = 0;
  private at = 0;

  constructor(private readonly runs: MappingRun[]) {}

  more(): boolean {
    return this.i < this.runs.length;
  }

  /** The rest of the current run. */
  get begin(): number {
    return this.runs[this.i]!.begin + this.at;
  }

  get data(): number {
    return this.runs[this.i]!.dataBegin + this.at;
  }

  get length(): number {
    return this.runs[this.i]!.length - this.at;
  }

  take(n: number): void {
    this.at += n;
    if (this.at === this.runs[this.i]!.length) {
      this.i++;
      this.at = 0;
    }
  }
}

/** The pieces, in virtual order, as 0.9.0's walk cuts them. */
export function diffRuns(left: MappingRun[], right: MappingRun[]): DeltaPiece[] {
  const out: DeltaPiece[] = [];
  const l = new RunCursor(left);
  const r = new RunCursor(right);
  const piece = (kind: DeltaKind, begin: number, length: number, leftData: number | null, rightData: number | null) => {
    out.push({ kind, begin, length, leftData, rightData });
  };
  while (l.more() && r.more()) {
    if (l.begin < r.begin) {
      const n = Math.min(l.length, r.begin - l.begin);
      piece('left_only', l.begin, n, l.data, null);
      l.take(n);
    } else if (r.begin < l.begin) {
      const n = Math.min(r.length, l.begin - r.begin);
      piece('right_only', r.begin, n, null, r.data);
      r.take(n);
    } else {
      const n = Math.min(l.length, r.length);
      piece(l.data === r.data ? 'same' : 'different', l.begin, n, l.data, r.data);
      l.take(n);
      r.take(n);
    }
  }
  for (; l.more(); l.take(l.length)) piece('left_only', l.begin, l.length, l.data, null);
  for (; r.more(); r.take(r.length)) piece('right_only', r.begin, r.length, null, r.data);
  return out;
}

/** The whole text, as thin_delta prints it. */
export function formatDelta(h: DeltaHeader, pieces: DeltaPiece[], verbose: boolean): string {
  const snap = h.metadataSnap !== 0 ? ` metadata_snap="${h.metadataSnap}"` : '';
  const lines = [
    `<superblock uuid="" time="${h.time}" transaction="${h.transaction}" data_block_size="${h.dataBlockSize}" nr_data_blocks="${h.nrDataBlocks}"${snap}>`,
    `  <diff left="${h.left}" right="${h.right}">`,
    ...(verbose ? verboseLines(pieces) : simpleLines(pieces)),
    '  </diff>',
    '</superblock>',
  ];
  return lines.join('\n') + '\n';
}

const INDENT = '    ';

function simpleLines(pieces: DeltaPiece[]): string[] {
  const lines: string[] = [];
  let cur: { kind: DeltaKind; begin: number; end: number } | undefined;
  const emit = () => {
    if (cur) lines.push(`${INDENT}<${cur.kind} begin="${cur.begin}" length="${cur.end - cur.begin}"/>`);
  };
  for (const p of pieces) {
    if (cur && cur.kind === p.kind && cur.end === p.begin) {
      cur.end += p.length;
      continue;
    }
    emit();
    cur = { kind: p.kind, begin: p.begin, end: p.begin + p.length };
  }
  emit();
  return lines;
}

function verboseLines(pieces: DeltaPiece[]): string[] {
  const lines: string[] = [];
  let open: DeltaKind | undefined;
  for (const p of pieces) {
    if (open !== p.kind) {
      if (open) lines.push(`${INDENT}</${open}>`);
      lines.push(`${INDENT}<${p.kind}>`);
      open = p.kind;
    }
    const data = p.kind === 'different'
      ? `left_data_begin="${p.leftData}" right_data_begin="${p.rightData}"`
      : `data_begin="${p.kind === 'right_only' ? p.rightData : p.leftData}"`;
    lines.push(`${INDENT}  <range begin="${p.begin}" ${data} length="${p.length}"/>`);
  }
  if (open) lines.push(`${INDENT}</${open}>`);
  return lines;
}

/**
 * thin_delta of two devices of open metadata. The caller commits first when
 * the output must equal thin_delta's on the file: the superblock line shows
 * the in-memory superblock.
 */
export function deviceDelta(md: PoolMetadata, left: DevId, right: DevId, verbose: boolean): string {
  const runsOf = (dev: DevId) => {
    if (!md.hasDevice(dev)) throw new ThinError('DEV_MISSING', `thin device ${dev} does not exist; see thinfuse ls for the dev ids`, { devId: dev });
    return mappingRuns((visit) => md.forEachMapping(dev, (vb, m) => visit(vb, m.block)));
  };
  const l = runsOf(left);
  const r = runsOf(right);
  const header: DeltaHeader = {
    time: md.sb.time,
    transaction: md.sb.transId,
    dataBlockSize: md.dataBlockSize,
    nrDataBlocks: md.nrDataBlocks,
    metadataSnap: md.sb.heldRoot,
    left,
    right,
  };
  return formatDelta(header, diffRuns(l, r), verbose);
}
