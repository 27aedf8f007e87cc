// A small PNG decoder for screenshots (8-bit greyscale, RGB or RGBA, not
// interlaced: what headless Chromium writes), with node's zlib and nothing
// else, and a pixel census by colour.

import { inflateSync } from 'node:zlib';

export interface Image {
  width: number;
  height: number;
  /** RGBA, 4 bytes a pixel, row after row. */
  rgba: Buffer;
}

const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
const CHANNELS: Record<number, number> = { 0: 1, 2: 3, 4: 2, 6: 4 };

export function decodePng(file: Buffer): Image {
  if (!file.subarray(0, 8).equals(SIGNATURE)) throw new Error('not a PNG file');
  let width = 0;
  let height = 0;
  let channels = 0;
  const idat: Buffer[] = [];
  for (let at = 8; at < file.length;) {
    const len = file.readUInt32BE(at);
    const type = file.toString('latin1', at + 4, at + 8);
    const data = file.subarray(at + 8, at + 8 + len);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      const depth = data[8]!;
      channels = CHANNELS[data[9]!] ?? 0;
      if (depth !== 8 || channels === 0 || data[12] !== 0) throw new Error(`unsupported PNG: depth ${depth}, colour type ${data[9]}, interlace ${data[12]}`);
    } else if (type === 'IDAT') {
      idat.push(data);
    } else if (type === 'IEND') {
      break;
    }
    at += 12 + len;
  }
  const raw = unfilter(inflateSync(Buffer.concat(idat)), width, height, channels);
  return { width, height, rgba: toRgba(raw, width * height, channels) };
}

/** Undoes the per-row filters (none, sub, up, average, Paeth). */
function unfilter(data: Buffer, width: number, height: number, bpp: number): Buffer {
  const stride = width * bpp;
  const out = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = data[y * (stride + 1)]!;
    const src = y * (stride + 1) + 1;
    const row = y * stride;
    for (let x = 0; x < stride; x++) {
      const a = x >= bpp ? out[row + x - bpp]! : 0;
      const b = y > 0 ? out[row - stride + x]! : 0;
      const c = x >= bpp && y > 0 ? out[row - stride + x - bpp]! : 0;
      const v = data[src + x]!;
      out[row + x] = (v + predict(filter, a, b, c)) & 0xff;
    }
  }
  return out;
}

function predict(filter: number, a: number, b: number, c: number): number {
  switch (filter) {
    case 0: return 0;
    case 1: return a;
    case 2: return b;
    case 3: return (a + b) >> 1;
    case 4: {
      const p = a + b - c;
      const pa = Math.abs(p - a);
      const pb = Math.abs(p - b);
      const pc = Math.abs(p - c);
      return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
    }
    default: throw new Error(`bad PNG filter ${filter}`);
  }
}

function toRgba(raw: Buffer, pixels: number, channels: number): Buffer {
  if (channels === 4) return raw;
  const out = Buffer.alloc(pixels * 4);
  for (let i = 0; i < pixels; i++) {
    const s = raw.subarray(i * channels, (i + 1) * channels);
    const [r, g, b, a] = channels === 1 ? [s[0], s[0], s[0], 255] : channels === 2 ? [s[0], s[0], s[0], s[1]] : [s[0], s[1], s[2], 255];
    out[i * 4] = r!;
    out[i * 4 + 1] = g!;
    out[i * 4 + 2] = b!;
    out[i * 4 + 3] = a!;
  }
  return out;
}

/** How many pixels have each colour, as '#rrggbb'. */
export function colourCensus(img: Image): Map<string, number> {
  const counts = new Map<number, number>();
  for (let i = 0; i < img.width * img.height; i++) {
    const v = img.rgba.readUIntBE(i * 4, 3);
    counts.set(v, (counts.get(v) ?? 0) + 1);
  }
  return new Map([...counts].map(([v, n]) => [`#${v.toString(16).padStart(6, '0')}`, n]));
}
