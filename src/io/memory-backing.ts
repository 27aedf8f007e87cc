import { OverlayBacking, PAGE } from './overlay-backing.js';

/** A sparse in-memory file: pages exist only once written. For tests. */
export class MemoryBacking extends OverlayBacking {
  private readonly pages: Map<number, Buffer>;

  constructor(path: string, length: number) {
    const pages = new Map<number, Buffer>();
    super(path, new Map(), pages, length);
    this.pages = pages;
  }

  /** Bytes actually held, the analogue of a sparse file's allocated blocks. */
  allocatedBytes(): number {
    return this.pages.size * PAGE;
  }
}
