import { formatBytes } from '../../base/size.js';
import { FREE_COLOUR, type Fragment, percent, rect, text, USED_COLOUR } from './draw.js';
import type { ShowModel } from './model.js';

// The page's header (the pool and its sizes) and the pool's usage: a bar for
// the data device and one for the metadata device. The metadata bar shows
// allocated blocks and, lighter, the kernel's reserve, which dmsetup status
// counts as used.

const BAR_X = 96;
const BAR_W = 480;
const BAR_H = 18;
const RESERVE_COLOUR = '#aab4be';

export function poolHeader(model: ShowModel): Fragment {
  const p = model.pool;
  const sub = `${formatBytes(p.nrDataBlocks * p.blockBytes)} of data in ${p.nrDataBlocks} blocks of ${formatBytes(p.blockBytes)}` +
    ` · ${model.devices.length} thin device${model.devices.length === 1 ? '' : 's'} · transaction ${p.transactionId} · time ${p.time}`;
  return {
    width: 1072,
    height: 46,
    body: [text(0, 20, 'title', `thinfuse pool ${p.name}`), text(0, 42, 'small', sub)].join('\n'),
  };
}

export function usageFragment(model: ShowModel): Fragment {
  const p = model.pool;
  const dataText = `${p.dataUsed} of ${p.nrDataBlocks} blocks used (${percent(p.dataUsed, p.nrDataBlocks)}), ` +
    `${formatBytes(p.dataUsed * p.blockBytes)} of ${formatBytes(p.nrDataBlocks * p.blockBytes)}`;
  const used = p.metadataAllocated + p.metadataReserve;
  const metaText = `${p.metadataAllocated} + ${p.metadataReserve} reserved of ${p.metadataTotal} blocks ` +
    `(${percent(Math.min(used, p.metadataTotal), p.metadataTotal)}, as dmsetup status counts), ${formatBytes(p.metadataTotal * p.metadataBlockBytes)}`;
  const body = [
    text(0, 16, 'heading', 'Pool usage'),
    bar(30, 'Data', [[p.dataUsed, USED_COLOUR]], p.nrDataBlocks, dataText, 'usage-data'),
    bar(62, 'Metadata', [[p.metadataAllocated, USED_COLOUR], [p.metadataReserve, RESERVE_COLOUR]], p.metadataTotal, metaText, 'usage-metadata'),
  ];
  return { width: 1072, height: 86, body: body.join('\n') };
}

/** One usage bar: coloured parts left to right over a free background, and what it says in words. */
function bar(y: number, label: string, parts: Array<[number, string]>, total: number, words: string, cls: string): string {
  const out = [`<g class="${cls}">`, text(0, y + 14, 'label', label), rect(BAR_X, y, BAR_W, BAR_H, FREE_COLOUR, 'rx="3"')];
  let x = BAR_X;
  for (const [n, colour] of parts) {
    const w = total === 0 ? 0 : Math.min(BAR_W - (x - BAR_X), (BAR_W * n) / total);
    // A used part too thin to see is drawn one pixel wide: it is not nothing.
    const shown = n > 0 ? Math.max(1, w) : 0;
    out.push(rect(x, y, shown, BAR_H, colour));
    x += shown;
  }
  out.push(text(BAR_X + BAR_W + 12, y + 14, 'small', words), '</g>');
  return out.join('');
}
