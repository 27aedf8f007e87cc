import { ThinError } from '../base/errors.js';
import { readU64, writeU64 } from '../base/le.js';
import { type DataBlock, type DevId, META_BLOCK_SIZE, MAX_META_BLOCKS, type MetaBlock, type VirtBlock } from '../base/units.js';
import type { BackingFile } from '../io/backing-file.js';
import { BlockManager, writeBlocks } from '../metadata/block-manager.js';
import {
  type BTree, deleteTree, emptyTree, findAtOrAfter, forEach, highestKey, insert, lookup, remove, update,
} from '../metadata/btree/btree.js';
import { u64Value } from '../metadata/btree/node.js';
import { DataSpaceMap } from '../metadata/space-map/data-space-map.js';
import { MetadataSpaceMap } from '../metadata/space-map/metadata-space-map.js';
import { TransactionManager } from '../metadata/transaction-manager.js';
import {
  type BlockTime, blockOf, decodeBlockTime, decodeDetails, decodeSuperblock, DETAILS_SIZE, type DeviceDetails,
  encodeBlockTime, encodeDetails, encodeSuperblock, NEEDS_CHECK, type Superblock, THIN_VERSION,
} from './format.js';

// dm-thin's pool metadata (dm-thin-metadata.c) over the persistent-data
// layer: the two-level mapping tree, the device-details tree, both space
// maps and the superblock. Everything here is synchronous and runs to
// completion within a tick; only `commit` awaits, and the caller keeps
// other changes out while it does.

export interface Mapping extends BlockTime {}

export interface OpenOptions {
  cacheBlocks?: number;
}

export class PoolMetadata {
  readonly bm: BlockManager;
  tm!: TransactionManager;
  msm!: MetadataSpaceMap;
  dsm!: DataSpaceMap;
  sb!: Superblock;
  /** Top level of the mapping tree: dev id -> root of the device's tree. */
  top!: BTree;
  /** Bottom level: virtual block -> packed (data block, time). */
  bottom!: BTree;
  detailsTree!: BTree;
  private details = new Map<number, DeviceDetails>();
  private changedDetails = new Set<number>();
  private removedDetails = new Set<number>();
  private changed = false;
  /** Data blocks whose count reached 0 in this transaction. */
  freedData: DataBlock[] = [];

  private constructor(readonly file: BackingFile, cacheBlocks: number) {
    this.bm = new BlockManager(file, cacheBlocks);
  }

  //----------------------------------------------------------------------------
  // lifecycle

  /** Formats new metadata: empty trees, a data space map of nrDataBlocks. */
  static format(file: BackingFile, dataBlockSize: number, nrDataBlocks: number, opts: OpenOptions = {}): PoolMetadata {
    const md = new PoolMetadata(file, opts.cacheBlocks ?? 8192);
    const nrMeta = Math.min(Math.floor(file.size() / META_BLOCK_SIZE), MAX_META_BLOCKS);
    md.tm = new TransactionManager(md.bm);
    md.msm = MetadataSpaceMap.create(md.tm, nrMeta);
    md.initTrees();
    md.dsm = DataSpaceMap.create(md.tm, nrDataBlocks);
    md.sb = {
      flags: 0, uuid: Buffer.alloc(16), version: THIN_VERSION, time: 0, transId: 0n, heldRoot: 0 as MetaBlock,
      dataSm: md.dsm.root(0), metadataSm: md.msm.root(0),
      mappingRoot: emptyTree(md.top), detailsRoot: emptyTree(md.detailsTree),
      dataBlockSize, metadataNrBlocks: nrMeta, compatFlags: 0, compatRoFlags: 0, incompatFlags: 0,
    };
    md.changed = true;
    return md;
  }

  static open(file: BackingFile, opts: OpenOptions = {}): PoolMetadata {
    const md = new PoolMetadata(file, opts.cacheBlocks ?? 8192);
    md.load();
    return md;
  }

  /** Reads the committed state; also how a transaction is aborted. */
  private load(): void {
    this.bm.reset();
    this.subRoots = { top: 0 as MetaBlock, roots: new Map() };
    const raw = Buffer.alloc(META_BLOCK_SIZE);
    this.file.readSync(raw, 0);
    this.sb = decodeSuperblock(raw, this.file.path);
    if (this.sb.metadataSm.nrBlocks * META_BLOCK_SIZE > this.file.size()) {
      throw new ThinError('BAD_SUPERBLOCK', `${this.file.path}: the metadata file is shorter than its space map (${this.sb.metadataSm.nrBlocks} blocks); restore its full length`);
    }
    this.tm = new TransactionManager(this.bm);
    this.msm = MetadataSpaceMap.open(this.tm, this.sb.metadataSm);
    this.initTrees();
    this.dsm = DataSpaceMap.open(this.tm, this.sb.dataSm);
    this.details.clear();
    this.changedDetails.clear();
    this.removedDetails.clear();
    forEach(this.detailsTree, this.sb.detailsRoot, (k, v) => {
      this.details.set(k, decodeDetails(v));
    });
    this.freedData = [];
    this.changed = false;
  }

  private initTrees(): void {
    const tm = this.tm;
    this.bottom = {
      tm,
      vt: {
        size: 8,
        inc: (v) => this.dsm.inc(blockOf(v)),
        dec: (v) => this.decData(blockOf(v)),
        equal: (a, b) => a.equals(b),
      },
    };
    this.top = {
      tm,
      vt: {
        size: 8,
        inc: (v) => tm.inc(readU64(v, 0) as MetaBlock),
        dec: (v) => deleteTree(this.bottom, readU64(v, 0) as MetaBlock),
      },
    };
    this.detailsTree = { tm, vt: { size: DETAILS_SIZE } };
  }

  private decData(b: DataBlock): void {
    if (this.dsm.dec(b) === 0) this.freedData.push(b);
  }

  /** Drops everything since the last commit. */
  abort(): void {
    this.load();
  }

  get dataBlockSize(): number {
    return this.sb.dataBlockSize;
  }

  get needsCheck(): boolean {
    return (this.sb.flags & NEEDS_CHECK) !== 0;
  }

  hasChanges(): boolean {
    return this.changed;
  }

  /** Told of every change (the pool passes it on to a front end that flushes on its own). */
  onTouch: (() => void) | undefined;

  private touch(): void {
    this.changed = true;
    this.onTouch?.();
  }

  //----------------------------------------------------------------------------
  // devices

  devices(): DevId[] {
    return [...this.details.keys()].sort((a, b) => a - b) as DevId[];
  }

  hasDevice(dev: DevId): boolean {
    return this.details.has(dev);
  }

  getDetails(dev: DevId): DeviceDetails {
    const d = this.details.get(dev);
    if (!d) throw new ThinError('DEV_MISSING', `thin device ${dev} does not exist`, { devId: dev });
    return d;
  }

  private setDetails(dev: DevId, d: DeviceDetails): void {
    this.details.set(dev, d);
    this.changedDetails.add(dev);
    this.removedDetails.delete(dev);
    this.touch();
  }

  private requireFree(dev: DevId): void {
    if (this.details.has(dev)) throw new ThinError('DEV_EXISTS', `thin device id ${dev} is already in use; pick another id`, { devId: dev });
  }

  createThin(dev: DevId): void {
    this.requireFree(dev);
    const sub = emptyTree(this.bottom);
    this.sb.mappingRoot = insert(this.top, this.sb.mappingRoot, dev, u64Value(sub));
    this.setDetails(dev, { mappedBlocks: 0, transId: this.sb.transId, creationTime: this.sb.time, snapshottedTime: this.sb.time });
  }

  createSnap(dev: DevId, origin: DevId): void {
    this.requireFree(dev);
    const o = this.details.get(origin);
    if (!o) throw new ThinError('DEV_MISSING', `cannot snapshot thin device ${origin}: it does not exist`, { devId: origin });
    const originRoot = this.subtreeRoot(origin);
    this.tm.inc(originRoot);
    this.sb.mappingRoot = insert(this.top, this.sb.mappingRoot, dev, u64Value(originRoot));
    this.sb.time++;
    this.setDetails(dev, { mappedBlocks: o.mappedBlocks, transId: this.sb.transId, creationTime: this.sb.time, snapshottedTime: this.sb.time });
    this.setDetails(origin, { ...o, snapshottedTime: this.sb.time });
  }

  deleteDevice(dev: DevId): void {
    this.getDetails(dev);
    this.subRoots.roots.delete(dev);
    this.sb.mappingRoot = remove(this.top, this.sb.mappingRoot, dev);
    this.details.delete(dev);
    this.changedDetails.delete(dev);
    this.removedDetails.add(dev);
    this.touch();
  }

  /** Adds a device with given details and an empty mapping tree (restore). */
  restoreDevice(dev: DevId, d: DeviceDetails): void {
    this.requireFree(dev);
    const sub = emptyTree(this.bottom);
    this.sb.mappingRoot = insert(this.top, this.sb.mappingRoot, dev, u64Value(sub));
    this.setDetails(dev, { ...d, mappedBlocks: 0 });
  }

  /** Adds a mapping to a restored device, taking a new reference on the block. */
  restoreMapping(dev: DevId, vb: VirtBlock, block: DataBlock, time: number): void {
    if (block >= this.dsm.nrBlocks) {
      throw new ThinError('BAD_XML', `mapping beyond end of data device (${block} >= ${this.dsm.nrBlocks})`);
    }
    this.dsm.inc(block);
    this.insertMapping(dev, vb, block, time);
  }

  setTransactionId(current: bigint, next: bigint): void {
    if (this.sb.transId !== current) {
      throw new ThinError('TRANSACTION_MISMATCH', `transaction id is ${this.sb.transId}, not ${current}; nothing was changed`, { actual: String(this.sb.transId) });
    }
    this.sb.transId = next;
    this.touch();
  }

  //----------------------------------------------------------------------------
  // mappings

  /** Per-device tree roots, valid while the top-level root stays the same. */
  private subRoots = { top: 0 as MetaBlock, roots: new Map<number, MetaBlock>() };

  subtreeRoot(dev: DevId): MetaBlock {
    if (this.subRoots.top !== this.sb.mappingRoot) this.subRoots = { top: this.sb.mappingRoot, roots: new Map() };
    const known = this.subRoots.roots.get(dev);
    if (known !== undefined) return known;
    const v = lookup(this.top, this.sb.mappingRoot, dev);
    if (!v) throw new ThinError('BAD_METADATA', `thin device ${dev} has details but no mapping tree; run thinfuse check`, { devId: dev });
    const root = readU64(v, 0) as MetaBlock;
    this.subRoots.roots.set(dev, root);
    return root;
  }

  /** Changes one device's tree (the top level is updated in place or shadowed). */
  private updateSubtree(dev: DevId, fn: (root: MetaBlock) => MetaBlock): void {
    this.subRoots.roots.delete(dev);
    this.sb.mappingRoot = update(this.top, this.sb.mappingRoot, dev, (v) => {
      writeU64(v, 0, fn(readU64(v, 0) as MetaBlock));
    });
  }

  lookup(dev: DevId, vb: VirtBlock): Mapping | undefined {
    const v = lookup(this.bottom, this.subtreeRoot(dev), vb);
    return v ? decodeBlockTime(v) : undefined;
  }

  /** True if the mapping may be shared with another device (dm-thin's time test). */
  isShared(dev: DevId, m: Mapping): boolean {
    return this.getDetails(dev).snapshottedTime > m.time;
  }

  /** Maps vb to a data block whose reference the tree takes over. */
  insertMapping(dev: DevId, vb: VirtBlock, block: DataBlock, time = this.sb.time): void {
    const d = this.getDetails(dev);
    const existed = this.lookup(dev, vb) !== undefined;
    const value = encodeBlockTime(block, time);
    this.updateSubtree(dev, (root) => insert(this.bottom, root, vb, value));
    if (!existed) this.setDetails(dev, { ...d, mappedBlocks: d.mappedBlocks + 1 });
    else this.touch();
  }

  /** Unmaps vb; returns the data block it pointed at, if any. */
  removeMapping(dev: DevId, vb: VirtBlock): DataBlock | undefined {
    const m = this.lookup(dev, vb);
    if (!m) return undefined;
    const d = this.getDetails(dev);
    this.updateSubtree(dev, (root) => remove(this.bottom, root, vb));
    this.setDetails(dev, { ...d, mappedBlocks: d.mappedBlocks - 1 });
    return m.block;
  }

  /** The first mapped block at or after vb. */
  nextMapped(dev: DevId, vb: VirtBlock): (Mapping & { vb: VirtBlock }) | undefined {
    const r = findAtOrAfter(this.bottom, this.subtreeRoot(dev), vb);
    return r ? { vb: r.key as VirtBlock, ...decodeBlockTime(r.value) } : undefined;
  }

  highestMapped(dev: DevId): VirtBlock | undefined {
    return highestKey(this.bottom, this.subtreeRoot(dev)) as VirtBlock | undefined;
  }

  /** Visits a device's mappings in virtual order. */
  forEachMapping(dev: DevId, fn: (vb: VirtBlock, m: Mapping) => void, root?: MetaBlock): void {
    forEach(this.bottom, root ?? this.subtreeRoot(dev), (k, v) => {
      fn(k as VirtBlock, decodeBlockTime(v));
    });
  }

  //----------------------------------------------------------------------------
  // data blocks

  get nrDataBlocks(): number {
    return this.dsm.nrBlocks;
  }

  allocData(skip?: (b: number) => boolean): DataBlock | undefined {
    const b = this.dsm.alloc(skip);
    if (b === undefined) return undefined;
    this.dsm.inc(b);
    this.touch();
    return b as DataBlock;
  }

  /** Drops a reference the caller holds that no tree took (a failed write). */
  releaseData(b: DataBlock): void {
    this.decData(b);
    this.touch();
  }

  dataCount(b: DataBlock): number {
    return this.dsm.count(b);
  }

  resizeData(nrBlocks: number): void {
    this.dsm.extend(nrBlocks);
    this.touch();
  }

  resizeMetadata(nrBlocks: number): void {
    this.msm.extend(Math.min(nrBlocks, MAX_META_BLOCKS));
    this.touch();
  }

  //----------------------------------------------------------------------------
  // metadata snapshot (held root)

  reserveMetadataSnap(): void {
    if (this.sb.heldRoot !== 0) throw new ThinError('SNAP_HELD', 'a metadata snapshot is already held; release it first (release_metadata_snap)');
    this.writeDetails();
    const { b, buf } = this.tm.newBlock('superblock');
    encodeSuperblock(this.sb, b, true).copy(buf);
    this.tm.inc(this.sb.mappingRoot);
    this.tm.inc(this.sb.detailsRoot);
    this.sb.heldRoot = b;
    this.touch();
  }

  releaseMetadataSnap(): void {
    const held = this.sb.heldRoot;
    if (held === 0) throw new ThinError('SNAP_NOT_HELD', 'no metadata snapshot is held');
    const snap = decodeSuperblock(this.tm.read(held, 'superblock'), this.file.path, held);
    deleteTree(this.top, snap.mappingRoot);
    deleteTree(this.detailsTree, snap.detailsRoot);
    this.tm.dec(held);
    this.sb.heldRoot = 0 as MetaBlock;
    this.touch();
  }

  //----------------------------------------------------------------------------
  // commit

  /**
   * Writes the transaction. Order: details into their tree, data space map,
   * metadata space map; then, at once, `flushData` (the data file's flush)
   * and all new metadata blocks followed by a flush; only when both are
   * durable, the superblock, followed by a flush.
   */
  async commit(flushData: () => Promise<void>): Promise<void> {
    const { blocks, sb } = this.prepareCommit();
    const writeMetadata = async () => {
      await writeBlocks(this.file, blocks);
      await this.file.flush();
    };
    await Promise.all([flushData(), writeMetadata()]);
    await this.file.write(sb, 0);
    await this.file.flush();
  }

  /** Puts changed device details into their tree (the kernel does this at commit). */
  private writeDetails(): void {
    for (const dev of this.removedDetails) this.sb.detailsRoot = remove(this.detailsTree, this.sb.detailsRoot, dev);
    for (const dev of this.changedDetails) {
      this.sb.detailsRoot = insert(this.detailsTree, this.sb.detailsRoot, dev, encodeDetails(this.details.get(dev)!));
    }
    this.removedDetails.clear();
    this.changedDetails.clear();
  }

  private prepareCommit(): { blocks: Array<[MetaBlock, Buffer]>; sb: Buffer } {
    this.writeDetails();
    this.sb.dataSm = this.dsm.commit();
    this.sb.metadataSm = this.msm.commit();
    const sb = encodeSuperblock(this.sb);
    const blocks = this.bm.takeDirty();
    this.tm.endTransaction();
    this.changed = false;
    return { blocks, sb };
  }

  /** Sets needs_check in the on-disk superblock (after an abort), the one write allowed. */
  async writeNeedsCheck(): Promise<void> {
    const raw = Buffer.alloc(META_BLOCK_SIZE);
    this.file.readSync(raw, 0);
    const sb = decodeSuperblock(raw, this.file.path);
    sb.flags |= NEEDS_CHECK;
    this.sb.flags |= NEEDS_CHECK;
    await this.file.write(encodeSuperblock(sb), 0);
    await this.file.flush();
  }

  /** Metadata blocks in use, counting the kernel's reserve as used. */
  metadataUsage(): { used: number; total: number } {
    const total = this.msm.nrBlocks;
    const reserve = Math.min(4096, Math.floor(total / 10));
    return { used: Math.min(total, this.msm.nrAllocated + reserve), total };
  }
}
