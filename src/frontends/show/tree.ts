import { formatBytes } from '../../base/size.js';
import type { TreeRow } from '../device-rows.js';
import { deviceLabel, esc, EXCLUSIVE_COLOUR, FREE_COLOUR, type Fragment, rect, round, SHARED_COLOUR, text } from './draw.js';
import type { ShowModel } from './model.js';

// The snapshot tree, one device a row in ls --tree's order: origins above
// and left of their snapshots, joined by elbow lines (dashed where the
// origin was inferred rather than recorded, see src/pool/snapshot-tree.ts).
// Right of each device, a bar of its mapped blocks: exclusive (no other
// device maps them) then shared, on one scale for all devices, so bars
// compare.

const TOP = 44;
const PITCH = 36;
const BOX_W = 190;
const BOX_H = 30;
const MAX_TREE_W = 560;
const BAR_W = 360;
const BAR_H = 14;
const WIDTH = 1072;

export function treeFragment(model: ShowModel): Fragment {
  const rows = model.devices;
  const head = [text(0, 16, 'heading', 'Snapshot tree'), legend()];
  if (rows.length === 0) return { width: WIDTH, height: TOP + 10, body: [...head, text(0, TOP, 'label', 'no thin devices')].join('\n') };
  const maxDepth = Math.max(...rows.map((r) => r.depth));
  // Deep chains are squeezed rather than drawn off the page.
  const indent = maxDepth === 0 ? 0 : Math.min(26, (MAX_TREE_W - BOX_W) / maxDepth);
  const barX = Math.max(330, maxDepth * indent + BOX_W + 24);
  const scale = Math.max(1, ...rows.map((r) => r.mappedBlocks));
  const at = new Map<number, { x: number; y: number }>();
  rows.forEach((r, i) => at.set(r.devId, { x: r.depth * indent, y: TOP + i * PITCH }));
  const links = rows.map((r) => link(r, at)).filter((s) => s !== '');
  const nodes = rows.map((r) => node(r, at.get(r.devId)!, model.pool.blockBytes));
  const bars = rows.map((r) => usageBar(r, barX, at.get(r.devId)!.y, scale, model.pool.blockBytes));
  const body = [...head, `<g class="links">${links.join('')}</g>`, ...nodes, ...bars];
  return { width: WIDTH, height: TOP + rows.length * PITCH - (PITCH - BOX_H), body: body.join('\n') };
}

function legend(): string {
  const x = 330;
  return [
    rect(x, 5, 14, 14, EXCLUSIVE_COLOUR), text(x + 20, 16, 'small', 'exclusive blocks'),
    rect(x + 140, 5, 14, 14, SHARED_COLOUR), text(x + 160, 16, 'small', 'shared blocks'),
    `<path class="link inferred" d="M ${x + 270} 12 H ${x + 300}"/>`, text(x + 306, 16, 'small', 'origin inferred (not recorded)'),
  ].join('');
}

/** The elbow from a device's origin down to it. */
function link(r: TreeRow, at: Map<number, { x: number; y: number }>): string {
  if (r.origin === null) return '';
  const from = at.get(r.origin);
  const to = at.get(r.devId)!;
  if (!from) return '';
  const cls = r.originSource === 'inferred' ? 'link inferred' : 'link';
  return `<path class="${cls}" d="M ${round(from.x + 12)} ${from.y + BOX_H} V ${to.y + BOX_H / 2} H ${round(to.x)}"/>`;
}

function node(r: TreeRow, p: { x: number; y: number }, blockBytes: number): string {
  const label = clip(deviceLabel(r.name, r.devId), 22);
  const size = r.size === null ? 'no size' : formatBytes(r.size);
  const detail = `dev ${r.devId} · ${size}${r.originSource === 'inferred' ? ' · origin?' : ''}`;
  const cls = r.origin === null ? 'node root' : 'node';
  const title = `${deviceLabel(r.name, r.devId)}: dev id ${r.devId}, created at time ${r.creationTime}, snapshotted at ${r.snapshottedTime}` +
    (r.origin === null ? '' : `, snapshot of dev ${r.origin} (${r.originSource})`) + `; ${r.mappedBlocks} blocks mapped (${formatBytes(r.mappedBlocks * blockBytes)})`;
  return `<g class="${cls}" data-dev="${r.devId}" transform="translate(${round(p.x)} ${p.y})"><title>${esc(title)}</title>` +
    `<rect class="box" x="0" y="0" width="${BOX_W}" height="${BOX_H}" rx="5"/>` +
    text(10, 13, 'name', label) + text(10, 25, 'small', detail) + '</g>';
}

function usageBar(r: TreeRow, x: number, y: number, scale: number, blockBytes: number): string {
  const shared = Math.max(0, r.sharedBlocks);
  const ew = (BAR_W * r.exclusiveBlocks) / scale;
  const sw = (BAR_W * shared) / scale;
  const by = y + (BOX_H - BAR_H) / 2;
  const words = `${r.exclusiveBlocks} exclusive · ${shared} shared · ${r.mappedBlocks} mapped (${formatBytes(r.mappedBlocks * blockBytes)})`;
  return `<g class="bar" data-dev="${r.devId}">` + rect(x, by, BAR_W, BAR_H, FREE_COLOUR) +
    (ew > 0 ? rect(x, by, Math.max(1, ew), BAR_H, EXCLUSIVE_COLOUR, 'class="exclusive"') : '') +
    (sw > 0 ? rect(x + ew, by, Math.max(1, sw), BAR_H, SHARED_COLOUR, 'class="shared"') : '') +
    text(x + BAR_W + 12, by + 11, 'small', words) + '</g>';
}

function clip(s: string, n: number): string {
  return s.length <= n ? s : `${s.slice(0, n - 1)}…`;
}
