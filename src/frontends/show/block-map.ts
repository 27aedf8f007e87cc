import { formatBytes } from '../../base/size.js';
import { deviceLabel, esc, FREE_COLOUR, type Fragment, rect, setColour, text } from './draw.js';
import type { DeviceSet, ShowModel } from './model.js';

// The block map: the data device's blocks in order, left to right and top
// to bottom, one square cell per block, or per `group` blocks on a large
// pool (model.ts says how a group is coloured; the caption says it on the
// page). Below, the legend: one entry per device set, most blocks first,
// with a swatch the size of a cell, then free blocks.

export const COLUMNS = 64;
export const CELL = 14;
export const PITCH = 16;
const GRID_TOP = 62;
const LEGEND_ROW = 22;
const LEGEND_COL = 352;
const LEGEND_COLUMNS = 3;

export function mapFragment(model: ShowModel): Fragment {
  const m = model.map;
  const cells = m.cellSet.length;
  const rows = Math.ceil(cells / COLUMNS);
  const out = [text(0, 16, 'heading', 'Block map'), ...caption(model).map((line, i) => text(0, 36 + i * 15, 'small', line))];
  const grid: string[] = [];
  for (let c = 0; c < cells; c++) grid.push(cell(model, c, (c % COLUMNS) * PITCH, GRID_TOP + Math.floor(c / COLUMNS) * PITCH));
  out.push(`<g class="grid">${grid.join('')}</g>`);
  const legendTop = GRID_TOP + rows * PITCH + 14;
  const entries = legendEntries(model);
  entries.forEach((e, i) => {
    const x = (i % LEGEND_COLUMNS) * LEGEND_COL;
    const y = legendTop + Math.floor(i / LEGEND_COLUMNS) * LEGEND_ROW;
    out.push(`<g class="legend-entry" data-colour="${e.colour}"><title>${esc(e.title)}</title>${rect(x, y, CELL, CELL, e.colour, 'class="swatch"')}${text(x + CELL + 8, y + 12, 'label', e.label)}</g>`);
  });
  const height = legendTop + Math.ceil(entries.length / LEGEND_COLUMNS) * LEGEND_ROW;
  return { width: Math.max(COLUMNS * PITCH, LEGEND_COLUMNS * LEGEND_COL), height, body: out.join('\n') };
}

function caption(model: ShowModel): string[] {
  const { group, unmappedInUse } = model.map;
  const p = model.pool;
  const lines = group === 1
    ? [`One cell per data block (${p.nrDataBlocks} blocks of ${formatBytes(p.blockBytes)}), in block order; its colour is the set of devices that map the block.`]
    : [
      `Scaled down: each cell is ${group} data blocks (${formatBytes(group * p.blockBytes)}); the pool's ${p.nrDataBlocks} blocks are too many to draw one by one.`,
      'A cell has the colour of the set of devices that maps most of its blocks, filled in proportion to how many of its blocks are mapped.',
    ];
  if (unmappedInUse > 0) lines.push(`${unmappedInUse} blocks in use are mapped by no device (held by a metadata snapshot, or in flight) and are drawn as free.`);
  return lines;
}

function cell(model: ShowModel, c: number, x: number, y: number): string {
  const m = model.map;
  const blocks = Math.min(m.group, model.pool.nrDataBlocks - c * m.group);
  const mapped = m.cellMapped[c]!;
  const set = m.cellSet[c]!;
  const title = `<title>${esc(cellTitle(model, c, blocks))}</title>`;
  if (set < 0) return `<rect class="cell free" x="${x}" y="${y}" width="${CELL}" height="${CELL}" fill="${FREE_COLOUR}">${title}</rect>`;
  const colour = setColour(model, set);
  if (mapped >= blocks) return `<rect class="cell" x="${x}" y="${y}" width="${CELL}" height="${CELL}" fill="${colour}">${title}</rect>`;
  // Partly mapped: filled from the bottom, at least a pixel.
  const h = Math.max(1, Math.round((CELL * mapped) / blocks));
  return `<rect class="cell partial" x="${x}" y="${y}" width="${CELL}" height="${CELL}" fill="${FREE_COLOUR}">${title}</rect>` +
    rect(x, y + CELL - h, CELL, h, colour, 'class="fill"');
}

function cellTitle(model: ShowModel, c: number, blocks: number): string {
  const m = model.map;
  const first = c * m.group;
  const where = blocks === 1 ? `block ${first}` : `blocks ${first}-${first + blocks - 1}`;
  const set = m.cellSet[c]!;
  if (set < 0) return `${where}: free`;
  const who = setNames(model, m.sets[set]!);
  return blocks === 1 ? `${where}: ${who}` : `${where}: ${m.cellMapped[c]} of ${blocks} mapped, most by ${who}`;
}

/** A set of devices in words: names, shortened when there are many. */
export function setLabel(model: ShowModel, s: DeviceSet): string {
  if (s.devIds.length === 0) return model.map.otherSets === 1 ? '1 other set of devices' : `${model.map.otherSets} other sets of devices`;
  const names = new Map(model.devices.map((d) => [d.devId as number, deviceLabel(d.name, d.devId)]));
  const all = model.devices.length;
  if (s.devIds.length === all && all > 2) return `all ${all} devices`;
  const list = s.devIds.map((id) => names.get(id) ?? `dev ${id}`);
  if (list.length === 1) return `${list[0]} only`;
  if (list.join(', ').length <= LABEL_CHARS) return list.join(', ');
  // As many names as fit, then how many are left out (the cells' titles name them all).
  let n = 1;
  while (n < list.length - 1 && `${list.slice(0, n + 1).join(', ')} + ${list.length - n - 1} more`.length <= LABEL_CHARS) n++;
  return `${list.slice(0, n).join(', ')} + ${list.length - n} more`;
}

/** What fits in a legend column before the block count. */
const LABEL_CHARS = 32;

/** A set's full list of names, for titles. */
function setNames(model: ShowModel, s: DeviceSet): string {
  if (s.devIds.length === 0) return setLabel(model, s);
  const names = new Map(model.devices.map((d) => [d.devId as number, deviceLabel(d.name, d.devId)]));
  return s.devIds.map((id) => names.get(id) ?? `dev ${id}`).join(', ');
}

function legendEntries(model: ShowModel): Array<{ colour: string; label: string; title: string }> {
  const m = model.map;
  const mapped = m.sets.reduce((n, s) => n + s.blocks, 0);
  const free = Math.max(0, model.pool.nrDataBlocks - mapped);
  return [
    ...m.sets.map((s, i) => ({ colour: setColour(model, i), label: `${clip(setLabel(model, s), LABEL_CHARS + 8)}: ${plural(s.blocks)}`, title: setNames(model, s) })),
    { colour: FREE_COLOUR, label: `free: ${plural(free)}`, title: 'blocks no device maps' },
  ];
}

function plural(n: number): string {
  return `${n} block${n === 1 ? '' : 's'}`;
}

function clip(s: string, n: number): string {
  return s.length <= n ? s : `${s.slice(0, n - 1)}…`;
}
