import type { ShowModel } from './model.js';

// Drawing primitives shared by the pictures: colours, styles, escaping and
// Fragments. A Fragment is SVG elements drawn from (0, 0) with their size,
// so a page can place it anywhere. No script, no external font or image.

export interface Fragment {
  width: number;
  height: number;
  body: string;
}

/** Colours of the block map's device sets, most blocks first (model.ts MAX_SETS of them). */
export const SET_COLOURS = [
  '#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948',
  '#b07aa1', '#ff9da7', '#9c755f', '#17becf', '#bcbd22',
];
/** The "other sets" entry, when there are more sets than colours. */
export const OTHER_COLOUR = '#5f6368';
/** Free blocks (and the empty part of a partly mapped cell). */
export const FREE_COLOUR = '#e6e8eb';
/** The tree's bars: a device's exclusive blocks, and its shared ones. */
export const EXCLUSIVE_COLOUR = '#2f3e46';
export const SHARED_COLOUR = '#9fb3bf';
/** Usage bars: space in use. */
export const USED_COLOUR = '#52606d';

export function setColour(model: ShowModel, index: number): string {
  const s = model.map.sets[index];
  return s && s.devIds.length === 0 ? OTHER_COLOUR : SET_COLOURS[index] ?? OTHER_COLOUR;
}

/** The styles of every part; the HTML page and the SVG document both carry them. */
export const CSS = `
  .title { font: 600 20px "DejaVu Sans", "Liberation Sans", sans-serif; fill: #1f2328; }
  .heading { font: 600 15px "DejaVu Sans", "Liberation Sans", sans-serif; fill: #1f2328; }
  .label { font: 13px "DejaVu Sans", "Liberation Sans", sans-serif; fill: #1f2328; }
  .small { font: 11px "DejaVu Sans", "Liberation Sans", sans-serif; fill: #57606a; }
  .name { font: 600 13px "DejaVu Sans", "Liberation Sans", sans-serif; fill: #1f2328; }
  .node rect.box { fill: #ffffff; stroke: #8c959f; stroke-width: 1; }
  .node.root rect.box { stroke: #1f2328; stroke-width: 1.5; }
  .link { fill: none; stroke: #8c959f; stroke-width: 1.5; }
  .link.inferred { stroke-dasharray: 4 3; }
`;

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' };

/** Text for element content or a double-quoted attribute. */
export function esc(s: string): string {
  return s.replace(/[&<>"]/g, (c) => ESCAPES[c]!);
}

export function text(x: number, y: number, cls: string, s: string, anchor: 'start' | 'end' | 'middle' = 'start'): string {
  const a = anchor === 'start' ? '' : ` text-anchor="${anchor}"`;
  return `<text x="${x}" y="${y}" class="${cls}"${a}>${esc(s)}</text>`;
}

export function rect(x: number, y: number, w: number, h: number, fill: string, extra = ''): string {
  return `<rect x="${round(x)}" y="${round(y)}" width="${round(w)}" height="${round(h)}" fill="${fill}"${extra ? ` ${extra}` : ''}/>`;
}

/** Two decimals at most: shorter files, same picture. */
export function round(n: number): number {
  return Math.round(n * 100) / 100;
}

export function percent(part: number, whole: number): string {
  if (whole === 0) return '0%';
  const p = (100 * part) / whole;
  return p > 0 && p < 0.1 ? '<0.1%' : `${p.toFixed(1)}%`;
}

/** A device as the pictures name it. */
export function deviceLabel(name: string | null, devId: number): string {
  return name ?? `dev ${devId}`;
}

/** Fragments one below the other, `gap` apart. */
export function stack(parts: Fragment[], gap: number): Fragment {
  let y = 0;
  const body: string[] = [];
  for (const p of parts) {
    body.push(`<g transform="translate(0 ${y})">${p.body}</g>`);
    y += p.height + gap;
  }
  return { width: Math.max(0, ...parts.map((p) => p.width)), height: Math.max(0, y - gap), body: body.join('\n') };
}

export function svgElement(f: Fragment, cls: string, standalone = false): string {
  const ns = standalone ? ' xmlns="http://www.w3.org/2000/svg"' : '';
  const style = standalone ? `<style>${CSS}</style>` : '';
  return `<svg${ns} class="${cls}" width="${f.width}" height="${f.height}" viewBox="0 0 ${f.width} ${f.height}">${style}\n${f.body}\n</svg>`;
}
