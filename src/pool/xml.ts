// The thin_dump XML format: the text form of a pool's metadata that
// thin-provisioning-tools 0.9.0 `thin_dump` prints and `thin_restore` reads.
// This file is where the format is encoded: a writer that prints exactly what
// thin_dump 0.9.0 prints, and a strict streaming parser.
//
// Document shape (every number is a decimal integer):
//
//   <superblock uuid="" time="1" transaction="3" flags="0" version="2" data_block_size="128" nr_data_blocks="1024">
//     <device dev_id="0" mapped_blocks="6" transaction="0" creation_time="0" snap_time="1">
//       <range_mapping origin_begin="0" data_begin="0" length="4" time="0"/>
//       <single_mapping origin_block="10" data_block="20" time="0"/>
//       <single_mapping origin_block="11" data_block="30" time="1"/>
//     </device>
//     <device dev_id="1" mapped_blocks="0" transaction="1" creation_time="1" snap_time="1">
//     </device>
//   </superblock>
//
// Elements and attributes (attribute order as thin_dump prints them):
//
//   <superblock>      uuid (string; not persisted, always dumped as "")
//                     time            u32  the pool's snapshot epoch
//                     transaction     u64  userspace transaction id
//                     flags           u32  bit 0 = needs_check    (optional on input, default 0)
//                     version         u32  metadata version       (optional on input, default 1)
//                     data_block_size u32  in 512-byte sectors
//                     nr_data_blocks  u64  (at most 2^40)
//                     [metadata_snap] held metadata-snapshot block; read by 1.x,
//                                     never printed by 0.9.0 (even when one is
//                                     held), accepted here and kept in the IR
//   <device>          dev_id, mapped_blocks, transaction, creation_time,
//                     snap_time (the device's snapshotted_time); all required
//   <single_mapping>  origin_block (virtual block), data_block (< 2^40),
//                     time (< 2^24: the on-disk value packs data_block << 24 | time)
//   <range_mapping>   origin_begin, data_begin, length, time: `length`
//                     consecutive virtual blocks mapped to consecutive data
//                     blocks, all with the same time
//
// How thin_dump 0.9.0 prints it (verified against the binary):
//   * Devices in increasing dev_id order, mappings in increasing virtual order.
//   * Merge rule: a mapping extends the current run iff its virtual block is
//     the run's next virtual block AND its data block is the run's next data
//     block AND its time equals the run's time. A run of length 1 prints as
//     <single_mapping>, longer runs as <range_mapping>. Runs are not bounded
//     by btree leaves (a 300000-block run prints as one range) and never
//     continue from one device into the next.
//   * Two-space indentation per level, self-closing mapping tags, "\n" after
//     every line including the last; an empty device prints its open and close
//     tags on two lines, and so does a pool with no devices.
//   * mapped_blocks is the stored details value (thin_restore recomputes it
//     from the mappings, ignoring the attribute).
//
// thin_restore 0.9.0 quirks this parser deliberately refuses (it accepts
// them and stores garbage): a mapping time >= 2^24 carries into the data block
// bits; "-1" is read as the u32 4294967295; "+5" is read as 5. It also ignores
// unknown attributes; here those are errors too, like unknown elements
// (including the 1.x <def>/<ref> shared-subtree elements, which 0.9.0 rejects
// with "unknown tag type"). Duplicate virtual blocks and out-of-order mappings
// are passed through to the visitor: judging them is the restorer's job.

import { StringDecoder } from 'node:string_decoder';
import sax from 'sax';
import { ThinError } from '../base/errors.js';
import { MAX_DATA_BLOCKS } from '../base/units.js';

export interface SuperblockIR {
  uuid: string;
  time: number;
  transaction: bigint;
  flags: number;
  version: number;
  /** In 512-byte sectors. */
  dataBlockSize: number;
  nrDataBlocks: number;
  metadataSnap?: number;
}

export interface DeviceIR {
  devId: number;
  mappedBlocks: number;
  transaction: bigint;
  creationTime: number;
  snapTime: number;
}

/** One virtual block. */
export interface MappingIR {
  originBlock: number;
  dataBlock: number;
  time: number;
}

export interface DumpVisitor {
  superblockBegin(sb: SuperblockIR): void;
  deviceBegin(d: DeviceIR): void;
  mapping(m: MappingIR): void;
  deviceEnd(): void;
  superblockEnd(): void;
}

// ---------------------------------------------------------------------------
// Writer

const DEFAULT_CHUNK = 64 * 1024;

export interface XmlDumpWriterOptions {
  /** Flush to `write` once this many characters are buffered (default 64 KiB). */
  chunkSize?: number;
  /** Print metadata_snap when the IR has one (thin_dump 0.9.0 never does; default false). */
  emitMetadataSnap?: boolean;
}

/** Prints a dump byte-for-byte as thin_dump 0.9.0 does. */
export class XmlDumpWriter implements DumpVisitor {
  private readonly write: (chunk: string) => void;
  private readonly chunkSize: number;
  private readonly emitMetadataSnap: boolean;
  private buf = '';
  // The run being merged; runLength 0 = none.
  private runOrigin = 0;
  private runData = 0;
  private runTime = 0;
  private runLength = 0;

  constructor(write: (chunk: string) => void, opts: XmlDumpWriterOptions = {}) {
    this.write = write;
    this.chunkSize = opts.chunkSize ?? DEFAULT_CHUNK;
    this.emitMetadataSnap = opts.emitMetadataSnap ?? false;
  }

  superblockBegin(sb: SuperblockIR): void {
    const snap = this.emitMetadataSnap && sb.metadataSnap !== undefined ? ` metadata_snap="${sb.metadataSnap}"` : '';
    this.buf +=
      `<superblock uuid="${escapeAttr(sb.uuid)}" time="${sb.time}" transaction="${sb.transaction}"` +
      ` flags="${sb.flags}" version="${sb.version}" data_block_size="${sb.dataBlockSize}"` +
      ` nr_data_blocks="${sb.nrDataBlocks}"${snap}>\n`;
  }

  deviceBegin(d: DeviceIR): void {
    this.runLength = 0;
    this.buf +=
      `  <device dev_id="${d.devId}" mapped_blocks="${d.mappedBlocks}" transaction="${d.transaction}"` +
      ` creation_time="${d.creationTime}" snap_time="${d.snapTime}">\n`;
  }

  mapping(m: MappingIR): void {
    const n = this.runLength;
    if (n !== 0 && m.originBlock === this.runOrigin + n && m.dataBlock === this.runData + n && m.time === this.runTime) {
      this.runLength = n + 1;
      return;
    }
    if (n !== 0) this.endRun();
    this.runOrigin = m.originBlock;
    this.runData = m.dataBlock;
    this.runTime = m.time;
    this.runLength = 1;
  }

  deviceEnd(): void {
    if (this.runLength !== 0) this.endRun();
    this.buf += '  </device>\n';
  }

  superblockEnd(): void {
    this.buf += '</superblock>\n';
    this.flush();
  }

  /** Hands everything buffered to `write`. */
  flush(): void {
    if (this.buf.length === 0) return;
    const chunk = this.buf;
    this.buf = '';
    this.write(chunk);
  }

  private endRun(): void {
    if (this.runLength === 1) {
      this.buf += `    <single_mapping origin_block="${this.runOrigin}" data_block="${this.runData}" time="${this.runTime}"/>\n`;
    } else {
      this.buf +=
        `    <range_mapping origin_begin="${this.runOrigin}" data_begin="${this.runData}"` +
        ` length="${this.runLength}" time="${this.runTime}"/>\n`;
    }
    this.runLength = 0;
    if (this.buf.length >= this.chunkSize) this.flush();
  }
}

function escapeAttr(s: string): string {
  return /[&<>"]/.test(s)
    ? s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;')
    : s;
}

// ---------------------------------------------------------------------------
// Parser

const U24_MAX = 2 ** 24 - 1;
const U32_MAX = 2 ** 32 - 1;
const U64_MAX = 2n ** 64n - 1n;
const DATA_BLOCK_MAX = MAX_DATA_BLOCKS - 1;
const SAFE_MAX = Number.MAX_SAFE_INTEGER;

const SUPERBLOCK_ATTRS = new Set([
  'uuid', 'time', 'transaction', 'flags', 'version', 'data_block_size', 'nr_data_blocks', 'metadata_snap',
]);
const DEVICE_ATTRS = new Set(['dev_id', 'mapped_blocks', 'transaction', 'creation_time', 'snap_time']);
const SINGLE_ATTRS = new Set(['origin_block', 'data_block', 'time']);
const RANGE_ATTRS = new Set(['origin_begin', 'data_begin', 'length', 'time']);

type Attrs = Record<string, string>;
type Where = 'top' | 'superblock' | 'device' | 'mapping' | 'done';

/**
 * Reads a thin_dump XML document, calling `visitor` as it goes; a
 * range_mapping becomes one `mapping` call per block. Rejects anything
 * thin_restore 0.9.0 would not restore faithfully with ThinError BAD_XML.
 */
export async function parseDumpXml(input: NodeJS.ReadableStream | string, visitor: DumpVisitor): Promise<void> {
  const p = new DumpXmlParser(visitor);
  if (typeof input === 'string') {
    p.write(input);
  } else {
    const decoder = new StringDecoder('utf8');
    for await (const chunk of input) {
      p.write(typeof chunk === 'string' ? chunk : decoder.write(chunk));
    }
    p.write(decoder.end());
  }
  p.end();
}

class DumpXmlParser {
  private readonly sax: sax.SAXParser;
  private readonly visitor: DumpVisitor;
  private where: Where = 'top';
  private mappingTag = '';

  constructor(visitor: DumpVisitor) {
    this.visitor = visitor;
    const s = sax.parser(true, { position: true });
    this.sax = s;
    s.onerror = (e) => this.fail(`malformed XML: ${(e.message.split('\n')[0] ?? '').trim()}`);
    s.onopentag = (tag) => this.open(tag.name, tag.attributes as Attrs);
    s.onclosetag = (name) => this.close(name);
    s.ontext = (text) => this.text(text);
    s.oncdata = (text) => this.text(text);
  }

  write(s: string): void {
    if (s.length > 0) this.sax.write(s);
  }

  end(): void {
    this.sax.close();
    if (this.where !== 'done') this.fail('no <superblock> element');
  }

  private fail(msg: string, line = this.sax.line + 1): never {
    throw new ThinError('BAD_XML', `thin_dump XML line ${line}: ${msg}`, { line });
  }

  private open(name: string, a: Attrs): void {
    switch (name) {
      case 'single_mapping':
      case 'range_mapping':
        if (this.where !== 'device') this.misplaced(name, '<device>');
        this.where = 'mapping';
        this.mappingTag = name;
        if (name === 'single_mapping') this.single(a);
        else this.range(a);
        return;
      case 'device':
        if (this.where !== 'superblock') this.misplaced(name, '<superblock>');
        this.where = 'device';
        this.device(a);
        return;
      case 'superblock':
        if (this.where !== 'top') this.fail('<superblock> must be the one top-level element');
        this.where = 'superblock';
        this.superblock(a);
        return;
      case 'def':
      case 'ref':
        this.fail(`unknown element <${name}> (a thin_dump 1.x shared-subtree element; 0.9.0 cannot restore it)`);
      default:
        this.fail(`unknown element <${name}>`);
    }
  }

  private misplaced(name: string, parent: string): never {
    const inside = this.where === 'mapping' ? `<${this.mappingTag}>` : this.where === 'top' || this.where === 'done' ? 'the document top level' : `<${this.where}>`;
    this.fail(`<${name}> must be directly inside ${parent}, found in ${inside}`);
  }

  private close(name: string): void {
    // sax (strict) has already checked that open and close tags pair up.
    switch (name) {
      case 'single_mapping':
      case 'range_mapping':
        this.where = 'device';
        return;
      case 'device':
        this.where = 'superblock';
        this.visitor.deviceEnd();
        return;
      case 'superblock':
        this.where = 'done';
        this.visitor.superblockEnd();
        return;
    }
  }

  private text(t: string): void {
    if (/^\s*$/.test(t)) return;
    // sax hands text over when the next tag starts; report where it began.
    const body = t.trimStart();
    const after = body.split('\n').length - 1;
    this.fail(`unexpected text ${show(body.trimEnd())}`, this.sax.line + 1 - after);
  }

  private superblock(a: Attrs): void {
    this.known('superblock', a, SUPERBLOCK_ATTRS);
    const uuid = a['uuid'];
    if (uuid === undefined) this.missing('superblock', 'uuid');
    const sb: SuperblockIR = {
      uuid,
      time: this.num('superblock', a, 'time', U32_MAX),
      transaction: this.big('superblock', a, 'transaction'),
      flags: a['flags'] === undefined ? 0 : this.num('superblock', a, 'flags', U32_MAX),
      version: a['version'] === undefined ? 1 : this.num('superblock', a, 'version', U32_MAX),
      dataBlockSize: this.num('superblock', a, 'data_block_size', U32_MAX),
      nrDataBlocks: this.num('superblock', a, 'nr_data_blocks', MAX_DATA_BLOCKS),
    };
    if (a['metadata_snap'] !== undefined) sb.metadataSnap = this.num('superblock', a, 'metadata_snap', SAFE_MAX);
    this.visitor.superblockBegin(sb);
  }

  private device(a: Attrs): void {
    this.known('device', a, DEVICE_ATTRS);
    this.visitor.deviceBegin({
      devId: this.num('device', a, 'dev_id', U32_MAX),
      mappedBlocks: this.num('device', a, 'mapped_blocks', SAFE_MAX),
      transaction: this.big('device', a, 'transaction'),
      creationTime: this.num('device', a, 'creation_time', U32_MAX),
      snapTime: this.num('device', a, 'snap_time', U32_MAX),
    });
  }

  private single(a: Attrs): void {
    this.known('single_mapping', a, SINGLE_ATTRS);
    this.visitor.mapping({
      originBlock: this.num('single_mapping', a, 'origin_block', SAFE_MAX),
      dataBlock: this.num('single_mapping', a, 'data_block', DATA_BLOCK_MAX),
      time: this.num('single_mapping', a, 'time', U24_MAX),
    });
  }

  private range(a: Attrs): void {
    this.known('range_mapping', a, RANGE_ATTRS);
    const origin = this.num('range_mapping', a, 'origin_begin', SAFE_MAX);
    const data = this.num('range_mapping', a, 'data_begin', DATA_BLOCK_MAX);
    const length = this.num('range_mapping', a, 'length', SAFE_MAX);
    const time = this.num('range_mapping', a, 'time', U24_MAX);
    if (length === 0) this.fail('<range_mapping> has length="0"');
    if (origin + (length - 1) > SAFE_MAX) this.fail(`<range_mapping> runs past virtual block ${SAFE_MAX}`);
    if (data + (length - 1) > DATA_BLOCK_MAX) this.fail(`<range_mapping> runs past data block ${DATA_BLOCK_MAX} (2^40 - 1)`);
    const v = this.visitor;
    for (let i = 0; i < length; i++) v.mapping({ originBlock: origin + i, dataBlock: data + i, time });
  }

  /** Unknown attributes are errors (0.9.0 ignores them; a typo should not pass). */
  private known(tag: string, a: Attrs, allowed: Set<string>): void {
    for (const k in a) if (!allowed.has(k)) this.fail(`<${tag}> has unknown attribute "${k}"`);
  }

  private missing(tag: string, attr: string): never {
    this.fail(`<${tag}> is missing required attribute "${attr}"`);
  }

  /** A non-negative decimal integer no larger than `max` (max <= 2^53 - 1). */
  private num(tag: string, a: Attrs, attr: string, max: number): number {
    const s = a[attr];
    if (s === undefined) this.missing(tag, attr);
    const len = s.length;
    let n = 0;
    for (let i = 0; i < len; i++) {
      const d = s.charCodeAt(i) - 48;
      if (d < 0 || d > 9) this.notNumber(tag, attr, s);
      n = n * 10 + d;
    }
    if (len === 0) this.notNumber(tag, attr, s);
    if (n > max) this.fail(`<${tag}> ${attr}=${show(s)} is out of range (max ${max})`);
    return n;
  }

  private big(tag: string, a: Attrs, attr: string): bigint {
    const s = a[attr];
    if (s === undefined) this.missing(tag, attr);
    if (!/^[0-9]+$/.test(s)) this.notNumber(tag, attr, s);
    const n = BigInt(s);
    if (n > U64_MAX) this.fail(`<${tag}> ${attr}=${show(s)} is out of range (max ${U64_MAX})`);
    return n;
  }

  private notNumber(tag: string, attr: string, s: string): never {
    this.fail(`<${tag}> ${attr}=${show(s)} is not a non-negative decimal integer`);
  }
}

/** A value quoted for a one-line message (JSON escapes newlines), shortened. */
function show(s: string): string {
  return JSON.stringify(s.length > 40 ? `${s.slice(0, 40)}...` : s);
}
