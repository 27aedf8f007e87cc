// Per-key mutual exclusion, the role of dm-thin's bio prison: requests that
// touch the same block run one after another, all others run at once.

export class KeyedLock {
  private readonly tails = new Map<string, Promise<void>>();

  async acquire(key: string): Promise<() => void> {
    const prev = this.tails.get(key);
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const tail = prev ? prev.then(() => mine) : mine;
    this.tails.set(key, tail);
    if (prev) await prev;
    return () => {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    };
  }

  /** The key's release function if nobody holds or waits for it, taken at once (no await); else undefined. */
  tryAcquire(key: string): (() => void) | undefined {
    if (this.tails.has(key)) return undefined;
    let release!: () => void;
    const tail = new Promise<void>((r) => (release = r));
    this.tails.set(key, tail);
    return () => {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    };
  }

  /** Whether a request holds (or waits for) the key. */
  isHeld(key: string): boolean {
    return this.tails.has(key);
  }

  get size(): number {
    return this.tails.size;
  }
}

/** Counts users of a key, for "is anything reading this block" questions. */
export class Counter<K> {
  private readonly m = new Map<K, number>();
  inc(k: K): void {
    this.m.set(k, (this.m.get(k) ?? 0) + 1);
  }
  dec(k: K): void {
    const n = (this.m.get(k) ?? 1) - 1;
    if (n === 0) this.m.delete(k);
    else this.m.set(k, n);
  }
  has(k: K): boolean {
    return this.m.has(k);
  }
}
