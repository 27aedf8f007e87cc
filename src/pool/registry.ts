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
//
// POOL/devices is JSON:
//
//   { "devices": [{ "name": "base", "devId": 0, "size": 268435456 }, ...],
//     "intent": null | { "op": "add" | "remove", "device": { name, devId, size } },
//     "origins": [{ "devId": 1, "origin": 0, "time": 1 }, ...] }
//
// `origins` (added later; a file without it reads as none, and older
// thinfuse ignores it) records which device each snapshot thinfuse made was
// taken of: dm-thin's metadata does not keep it. `time` is the snapshot's
// creation_time, so a record can be checked against the metadata: it holds
// only while device `devId` has that creation_time and device `origin` was
// created before it (a dev id reused after a delete gets a later time). A
// record is written after the snapshot's commit, so a crash in between
// leaves the snapshot without one (thinfuse ls --tree then infers it).
// Records of any device, named or not, are kept; a removal drops the
// removed device's own record.

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

/** The origin a snapshot was taken of, as recorded when thinfuse made it. */
export interface OriginRecord {
  devId: DevId;
  origin: DevId;
  /** The snapshot's creation_time: the record holds only while the device still has it. */
  time: number;
}

interface RegistryFile {
  devices: NamedDevice[];
  intent: Intent | null;
  origins?: OriginRecord[];
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
  /** Recorded snapshot origins by the snapshot's dev id. */
  private originRecords = new Map<number, OriginRecord>();
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
    for (const o of raw.origins ?? []) r.originRecords.set(o.devId, o);
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
    if (i?.op === 'remove') {
      this.devices.delete(i.device.name);
      this.originRecords.delete(i.device.devId);
    }
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

  /** The recorded origins, by snapshot dev id (check them against the metadata before use). */
  origins(): OriginRecord[] {
    return [...this.originRecords.values()].sort((a, b) => a.devId - b.devId);
  }

  /** Records what a snapshot just made was taken of (after its commit). */
  recordOrigin(o: OriginRecord): void {
    this.originRecords.set(o.devId, { devId: o.devId, origin: o.origin, time: o.time });
    this.save();
  }

  /** Drops a deleted device's record, so its dev id starts clean when reused. */
  forgetOrigin(devId: DevId): void {
    if (this.originRecords.delete(devId)) this.save();
  }

  private save(): void {
    const body: RegistryFile = { devices: this.list(), intent: this.intent };
    // Written only when there is one, so a pool without snapshots keeps the old file exactly.
    if (this.originRecords.size > 0) body.origins = this.origins();
    writeFileAtomic(this.file, JSON.stringify(body, null, 2) + '\n', this.files);
  }
}

/** A registry that parsed as JSON but is not what save() writes is refused, naming the first problem. */
function checkShape(file: string, raw: unknown): asserts raw is RegistryFile {
  const bad = (why: string): never => {
    throw new ThinError('EINVAL_ARG', `${file} is damaged (${why}); restore it from a backup or remove it (names are lost, data is not)`);
  };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) bad('not a JSON object');
  const o = raw as { devices?: unknown; intent?: unknown; origins?: unknown };
  if (o.devices !== undefined && !Array.isArray(o.devices)) bad('"devices" is not a list');
  const names = new Set<string>();
  for (const d of (o.devices ?? []) as unknown[]) {
    checkDevice(d, bad);
    if (names.has((d as NamedDevice).name)) bad(`the name '${(d as NamedDevice).name}' appears twice`);
    names.add((d as NamedDevice).name);
  }
  checkOrigins(o.origins, bad);
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

function checkOrigins(origins: unknown, bad: (why: string) => never): void {
  if (origins === undefined) return;
  if (!Array.isArray(origins)) bad('"origins" is not a list');
  const isId = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) <= MAX_DEV_ID;
  for (const x of origins as Array<Partial<OriginRecord> | null>) {
    if (typeof x !== 'object' || x === null) bad('an origin entry is not an object');
    if (!isId(x.devId) || !isId(x.origin)) bad('an origin entry has an invalid dev id');
    if (!Number.isSafeInteger(x.time) || x.time! < 0 || x.time! >= 2 ** 32) bad(`the origin entry of device ${x.devId} has an invalid time`);
  }
}
