import { invalid } from './errors.js';
import type { SnapRecord } from './records.js';

// List's filters, the part of containerd's filter syntax that snapshot
// listings use: FIELD==VALUE, FIELD!=VALUE or FIELD alone (present),
// joined by ',' (and); several filters match if any does. Fields: name,
// parent, kind (any case), labels.KEY (KEY optionally "quoted"); values
// optionally "quoted". Anything else is InvalidArgument rather than a silent
// match.

type Test = (r: SnapRecord) => boolean;

const TERM = /^(name|parent|kind|labels\.(?:"[^"]*"|[A-Za-z0-9_.\-/]+))\s*(?:(==|!=)\s*(".*"|[^,"]*))?$/;

function fieldOf(r: SnapRecord, field: string): string | undefined {
  if (field === 'name') return r.key;
  if (field === 'parent') return r.parent;
  if (field === 'kind') return r.kind;
  const label = field.slice('labels.'.length).replace(/^"(.*)"$/, '$1');
  return Object.hasOwn(r.labels, label) ? r.labels[label] : undefined;
}

function term(text: string): Test {
  const m = TERM.exec(text.trim());
  if (!m) throw invalid(`unsupported snapshot filter '${text}': use name, parent, kind or labels.KEY, with == or !=`);
  const [, field, op, raw] = m as unknown as [string, string, string | undefined, string | undefined];
  const unquoted = raw?.replace(/^"(.*)"$/, '$1');
  // containerd's adaptor says active, view, committed; ctr prints Active, View, Committed.
  const value = field === 'kind' ? unquoted?.toLowerCase() : unquoted;
  if (!op) return (r) => fieldOf(r, field!) !== undefined && fieldOf(r, field!) !== '';
  return op === '==' ? (r) => fieldOf(r, field!) === value : (r) => fieldOf(r, field!) !== value;
}

export function matcher(filters: string[]): Test {
  const all = filters.filter((f) => f.trim() !== '').map((f) => f.split(',').map(term));
  if (all.length === 0) return () => true;
  return (r) => all.some((terms) => terms.every((t) => t(r)));
}
