import type { Reporter } from './check-report.js';

// The expected reference count of every data block, taken from the physical
// mapping leaves the btree walker hands over (each distinct leaf once), and
// the range check of every mapped data block. Calls nothing but the reporter.

/** Larger data maps keep their expected counts in a map only. */
const MAX_DENSE_BLOCKS = 2 ** 26;

export class ExpectedDataRefs {
  /** A byte per data block; counts from 255 up overflow into `big`. */
  private readonly dense: Uint8Array | undefined;
  private readonly big = new Map<number, number>();

  private constructor(
    private readonly report: Reporter,
    private readonly nrData: number,
    private readonly counting: boolean,
  ) {
    this.dense = counting && nrData <= MAX_DENSE_BLOCKS ? new Uint8Array(nrData) : undefined;
  }

  /** Checks mapped blocks against the data device's size without counting them (thin_check -m). */
  static rangeOnly(report: Reporter, nrData: number): ExpectedDataRefs {
    return new ExpectedDataRefs(report, nrData, false);
  }

  static counting(report: Reporter, nrData: number): ExpectedDataRefs {
    return new ExpectedDataRefs(report, nrData, true);
  }

  /** A physical mapping leaf, seen once: data block range and expected data counts. */
  addMappingLeaf(buf: Buffer, nr: number, vbase: number, keys: number[], ctx: string): void {
    for (let i = 0; i < nr; i++) {
      const off = vbase + 8 * i;
      // The value is (data block << 24) | time; the block is its top 40 bits.
      const block = buf.readUInt32LE(off + 4) * 256 + (buf.readUInt32LE(off) >>> 24);
      if (block >= this.nrData) {
        this.report.fatal('data-range', `${ctx}: virtual block ${keys[i]} maps to data block ${block}, beyond the end of the data device (${this.nrData} blocks)`);
        continue;
      }
      if (this.counting) this.add(block);
    }
  }

  private add(block: number): void {
    const counts = this.dense;
    if (counts) {
      const c = counts[block]!;
      if (c < 255) counts[block] = c + 1;
      else this.big.set(block, (this.big.get(block) ?? 255) + 1);
    } else {
      this.big.set(block, (this.big.get(block) ?? 0) + 1);
    }
  }

  expected(b: number): number {
    if (this.dense) {
      const c = this.dense[b]!;
      return c < 255 ? c : this.big.get(b) ?? 255;
    }
    return this.big.get(b) ?? 0;
  }
}
