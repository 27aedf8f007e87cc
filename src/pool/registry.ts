import path from 'node:path';
import { ThinError } from '../base/errors.js';
import { type DevId, MAX_DEV_ID, SECTOR } from '../base/units.js';
import { type PoolFiles, realPoolFiles, writeFileAtomic } from '../io/pool-files.js';

// Names and virtual sizes of thin devices. dm-thin keeps these outside its
// metadata (in dm tables, LVM metadata, Docker's JSON files); so do we, in
// POOL/devices, beside the metadata rather than inside it, where thin_check
// would count them as leaked blocks. A change that also changes the
// metadata goes through an intent record: write the intent, commit the
// metadata, then finish. On open only the dev id of an unfinished intent is
// reconciled with the metadata; unnamed devices are never touched.

export const REGISTRY_FILE = 'devices';

export interface NamedDevice {
  name: string;
  devId: DevId;
  /** Virtual size in bytes. */
  size: number;
}

export type Intent =
  | { op: 'add'; device: NamedDevice }
  | { op: 'remove'; device: NamedDevice };

interface RegistryFile {
  devices: NamedDevice[];
  intent: Intent | null;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.+:@-]{0,127}$/;

export function checkName(name: string): void {
  if (!NAME_RE.test(name)) {
    throw new ThinError('EINVAL_ARG', `invalid device name '${name}': use letters, digits and _.+:@- (at most 128), not starting with a symbol`);
  }
}

/**
 * Devices of the layer store are named `layer/<id>`: a namespace no name a
 * user gives `create` or `snapshot` can reach (checkName refuses '/'). Only
 * the layer store's own operations pass `namespaced`.
 */
export const LAYER_NAMESPACE = 'layer';

export function checkNamespacedName(name: string): void {
  const slash = name.indexOf('/');
  if (name.slice(0, slash) !== LAYER_NAMESPACE || !NAME_RE.test(name.slice(slash + 1))) {
    throw new ThinError('EINVAL_ARG', `invalid layer device name '${name}': expected ${LAYER_NAMESPACE}/ID with ID of letters, digits and _.+:@-`);
  }
}

export interface NameOptions {
  /** The name is in the layer namespace (`layer/<id>`), not a user's. */
  namespaced?: boolean;
}

export class Registry {
  private devices = new Map<string, NamedDevice>();
  intent: Intent | null = null;

  private constructor(private readonly file: string, private readonly files: PoolFiles) {}

  static load(dir: string, files: PoolFiles = realPoolFiles): Registry {
    const r = new Registry(path.join(dir, REGISTRY_FILE), files);
    if (!files.exists(r.file)) return r;
    let raw: RegistryFile;
    try {
      raw = JSON.parse(files.readText(r.file)) as RegistryFile;
    } catch (e) {
      throw new ThinError('EINVAL_ARG', `${r.file} is not valid JSON (${(e as Error).message}); restore it from a backup or remove it (names are lost, data is not)`);
    }
    checkShape(r.file, raw);
    for (const d of raw.devices ?? []) r.devices.set(d.name, d);
    r.intent = raw.intent ?? null;
    return r;
  }

  list(): NamedDevice[] {
    return [...this.devices.values()].sort((a, b) => a.devId - b.devId || a.name.localeCompare(b.name));
  }

  get(name: string): NamedDevice {
    const d = this.devices.get(name);
    if (!d) throw new ThinError('DEV_MISSING', `no thin device named '${name}'; see thinfuse ls`, { name });
    return d;
  }

  find(name: string): NamedDevice | undefined {
    return this.devices.get(name);
  }

  byId(devId: DevId): NamedDevice | undefined {
    for (const d of this.devices.values()) if (d.devId === devId) return d;
    return undefined;
  }

  requireFreeName(name: string, o: NameOptions = {}): void {
    if (o.namespaced) checkNamespacedName(name);
    else checkName(name);
    if (this.devices.has(name)) throw new ThinError('DEV_EXISTS', `a thin device named '${name}' already exists; pick another name`, { name });
  }

  /** Records what is about to happen; the metadata commit comes next. */
  begin(intent: Intent): void {
    this.intent = intent;
    this.save();
  }

  /** Applies the intent to the names and clears it. */
  finish(): void {
    const i = this.intent;
    if (i?.op === 'add') this.devices.set(i.device.name, i.device);
    if (i?.op === 'remove') this.devices.delete(i.device.name);
    this.intent = null;
    this.save();
  }

  /** Drops an intent that did not reach the metadata. */
  cancel(): void {
    this.intent = null;
    this.save();
  }

  /** Changes that touch only the names (deactivate, resize). */
  set(d: NamedDevice): void {
    this.devices.set(d.name, d);
    this.save();
  }

  delete(name: string): void {
    this.devices.delete(name);
    this.save();
  }

  private save(): void {
    const body: RegistryFile = { devices: this.list(), intent: this.intent };
    writeFileAtomic(this.file, JSON.stringify(body, null, 2) + '\n', this.files);
  }
}

/** A registry that parsed as JSON but is not what save() writes is refused, naming the first problem. */
function checkShape(file: string, raw: unknown): asserts raw is RegistryFile {
  const bad = (why: string): never => {
    throw new ThinError('EINVAL_ARG', `${file} is damaged (${why}); restore it from a backup or remove it (names are lost, data is not)`);
  };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) bad('not a JSON object');
  const o = raw as { devices?: unknown; intent?: unknown };
  if (o.devices !== undefined && !Array.isArray(o.devices)) bad('"devices" is not a list');
  const names = new Set<string>();
  for (const d of (o.devices ?? []) as unknown[]) {
    checkDevice(d, bad);
    if (names.has((d as NamedDevice).name)) bad(`the name '${(d as NamedDevice).name}' appears twice`);
    names.add((d as NamedDevice).name);
  }
  if (o.intent === undefined || o.intent === null) return;
  const i = o.intent as { op?: unknown; device?: unknown };
  if (typeof i !== 'object' || (i.op !== 'add' && i.op !== 'remove')) bad('the intent is not an add or a remove');
  checkDevice(i.device, bad);
}

function checkDevice(d: unknown, bad: (why: string) => never): void {
  const x = d as Partial<NamedDevice> | null;
  if (typeof x !== 'object' || x === null) bad('a device entry is not an object');
  if (typeof x.name !== 'string' || x.name.length === 0 || x.name.length > 256) bad('a device has no valid name');
  if (!Number.isSafeInteger(x.devId) || x.devId! < 0 || x.devId! > MAX_DEV_ID) bad(`device '${x.name}' has an invalid dev id`);
  if (!Number.isSafeInteger(x.size) || x.size! < 0 || x.size! % SECTOR !== 0) bad(`device '${x.name}' has an invalid size`);
}
