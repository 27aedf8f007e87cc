import { mapFragment } from './block-map.js';
import { type Fragment, rect, stack, svgElement } from './draw.js';
import type { ShowModel } from './model.js';
import { treeFragment } from './tree.js';
import { poolHeader, usageFragment } from './usage.js';

// The whole picture as one SVG document (`thinfuse show --svg`): the pool's
// header and usage, the snapshot tree, the block map, one below the other
// on a white page, with the styles inside. No script, no external asset.

/** The whole picture as one SVG document: header, usage, tree, block map. */
export function pageSvg(model: ShowModel): string {
  const margin = 24;
  const parts = [poolHeader(model), usageFragment(model), treeFragment(model), mapFragment(model)];
  const all = stack(parts, 22);
  const page: Fragment = {
    width: all.width + 2 * margin,
    height: all.height + 2 * margin,
    body: `${rect(0, 0, all.width + 2 * margin, all.height + 2 * margin, '#ffffff')}\n<g transform="translate(${margin} ${margin})">${all.body}</g>`,
  };
  return `<?xml version="1.0" encoding="UTF-8"?>\n${svgElement(page, 'thinfuse-show', true)}\n`;
}
