import { ThinError } from '../base/errors.js';
import { type DataBlock, type DevId, MAX_BLOCK_SECTORS, MAX_DEV_ID, MIN_BLOCK_SECTORS, type VirtBlock } from '../base/units.js';
import type { BackingFile } from '../io/backing-file.js';
import { type OpenOptions, PoolMetadata } from './pool-metadata.js';
import { type DeviceIR, type DumpVisitor, type MappingIR, parseDumpXml, type SuperblockIR } from './xml.js';

// Builds fresh metadata on `file` from a thin_dump XML document, the way
// thin_restore 0.9.0 does: new metadata is formatted over the whole file, the
// superblock gets time, transaction, flags and version from the XML (uuid is
// not persisted), every device is added with its details and its mappings,
// and each device's mapped_blocks is recounted from the mappings it really
// has (the attribute is ignored). Every device gets its own tree, so a data
// block mapped by n devices has reference count n.
//
// Stricter than thin_restore 0.9.0 (which accepts these and stores metadata
// the kernel cannot use or that leaks): a data_block_size the kernel refuses,
// a dev_id above 2^24 - 1, and a virtual block mapped twice in one device are
// BAD_XML errors. Mappings out of virtual order are accepted.
//
// Nothing reaches the file until the whole document has been read and
// applied: all new blocks stay in memory, then the commit writes them and the
// superblock (block 0) last. On any error the file is left as it was, except
// for blocks other than 0 if the commit itself fails; the caller decides what
// to do with it.

export type RestoreOptions = OpenOptions;

export async function restoreMetadata(
  file: BackingFile,
  input: NodeJS.ReadableStream | string,
  opts: RestoreOptions = {},
): Promise<PoolMetadata> {
  const r = new Restorer(file, opts);
  await parseDumpXml(input, r);
  const md = r.result();
  await md.commit(async () => {});
  return md;
}

class Restorer implements DumpVisitor {
  private md: PoolMetadata | undefined;
  private dev: DevId | undefined;
  /** Highest virtual block seen in the current device; below it a lookup finds duplicates. */
  private last = -1;

  constructor(
    private readonly file: BackingFile,
    private readonly opts: RestoreOptions,
  ) {}

  result(): PoolMetadata {
    if (!this.md) throw new ThinError('BAD_XML', 'restore: the XML has no <superblock>');
    return this.md;
  }

  superblockBegin(sb: SuperblockIR): void {
    const bs = sb.dataBlockSize;
    if (bs < MIN_BLOCK_SECTORS || bs > MAX_BLOCK_SECTORS || bs % MIN_BLOCK_SECTORS !== 0) {
      throw new ThinError(
        'BAD_XML',
        `restore: data_block_size ${bs} is not a multiple of ${MIN_BLOCK_SECTORS} sectors between ${MIN_BLOCK_SECTORS} and ${MAX_BLOCK_SECTORS}; dm-thin cannot use it`,
      );
    }
    const md = PoolMetadata.format(this.file, bs, sb.nrDataBlocks, this.opts);
    md.sb.time = sb.time;
    md.sb.transId = sb.transaction;
    md.sb.flags = sb.flags;
    md.sb.version = sb.version;
    this.md = md;
  }

  deviceBegin(d: DeviceIR): void {
    const md = this.result();
    if (d.devId > MAX_DEV_ID) {
      throw new ThinError('BAD_XML', `restore: dev_id ${d.devId} is above dm-thin's limit of ${MAX_DEV_ID} (24 bits)`);
    }
    const dev = d.devId as DevId;
    if (md.hasDevice(dev)) {
      throw new ThinError('DEV_EXISTS', `restore: device ${dev} appears twice in the XML`, { devId: dev });
    }
    md.restoreDevice(dev, { mappedBlocks: 0, transId: d.transaction, creationTime: d.creationTime, snapshottedTime: d.snapTime });
    this.dev = dev;
    this.last = -1;
  }

  mapping(m: MappingIR): void {
    const md = this.result();
    const dev = this.dev!;
    const vb = m.originBlock as VirtBlock;
    if (vb <= this.last) {
      if (md.lookup(dev, vb) !== undefined) {
        throw new ThinError('BAD_XML', `restore: device ${dev} maps virtual block ${vb} twice`, { devId: dev });
      }
    } else {
      this.last = vb;
    }
    if (m.dataBlock >= md.nrDataBlocks) {
      throw new ThinError(
        'BAD_XML',
        `restore: device ${dev}, virtual block ${vb}: mapping beyond end of data device (${m.dataBlock} >= ${md.nrDataBlocks})`,
        { devId: dev },
      );
    }
    md.restoreMapping(dev, vb, m.dataBlock as DataBlock, m.time);
  }

  deviceEnd(): void {
    this.dev = undefined;
  }

  superblockEnd(): void {}
}
