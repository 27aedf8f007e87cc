// The checker's messages: fatal and non-fatal problems, with each kind of
// problem capped so that one corrupt structure cannot bury the others.

export class Reporter {
  readonly fatals: string[] = [];
  readonly nonFatals: string[] = [];
  private readonly counts = new Map<string, { n: number; fatal: boolean }>();

  constructor(private readonly max: number) {}

  fatal(kind: string, msg: string): void {
    this.add(kind, msg, true);
  }

  nonFatal(kind: string, msg: string): void {
    this.add(kind, msg, false);
  }

  private add(kind: string, msg: string, fatal: boolean): void {
    const key = `${fatal ? 'F' : 'N'}:${kind}`;
    const c = this.counts.get(key) ?? { n: 0, fatal };
    c.n++;
    this.counts.set(key, c);
    if (c.n <= this.max) (fatal ? this.fatals : this.nonFatals).push(msg.replace(/\s*\n\s*/g, ' '));
  }

  finish(): void {
    for (const [key, c] of this.counts) {
      if (c.n > this.max) {
        (c.fatal ? this.fatals : this.nonFatals).push(`... and ${c.n - this.max} more like these (${key.slice(2)})`);
      }
    }
  }
}
