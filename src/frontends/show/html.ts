import { mapFragment } from './block-map.js';
import { CSS, esc, svgElement } from './draw.js';
import type { ShowModel } from './model.js';
import { treeFragment } from './tree.js';
import { poolHeader, usageFragment } from './usage.js';

// `thinfuse show --html`: one self-contained page. Each part is an inline
// SVG (the same drawings as --svg) in a section of its own; the styles are
// in the page, there is no script and nothing is fetched, so the file can be
// mailed, opened offline or put on a lab's web page as it is.

const PAGE_CSS = `
  body { margin: 24px; background: #ffffff; color: #1f2328; font-family: "DejaVu Sans", "Liberation Sans", sans-serif; }
  section { margin: 0 0 22px 0; }
  svg { display: block; overflow: visible; }
  footer { font-size: 11px; color: #57606a; }
${CSS}`;

export function pageHtml(model: ShowModel): string {
  const parts: Array<[string, string]> = [
    ['header', svgElement(poolHeader(model), 'header')],
    ['usage', svgElement(usageFragment(model), 'usage')],
    ['tree', svgElement(treeFragment(model), 'tree')],
    ['map', svgElement(mapFragment(model), 'map')],
  ];
  return [
    '<!DOCTYPE html>',
    '<html lang="en">',
    '<head>',
    '<meta charset="utf-8">',
    `<title>thinfuse pool ${esc(model.pool.name)}</title>`,
    `<style>${PAGE_CSS}</style>`,
    '</head>',
    '<body>',
    ...parts.map(([id, svg]) => `<section id="${id}">\n${svg}\n</section>`),
    '<footer>Drawn by thinfuse show. Exclusive and shared are counted as thin_ls counts them; origins come from POOL/devices or are inferred (dashed).</footer>',
    '</body>',
    '</html>',
    '',
  ].join('\n');
}
