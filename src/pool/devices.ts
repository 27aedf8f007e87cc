import { ThinError } from '../base/errors.js';
import { KeyedLock } from '../base/keyed-lock.js';
import type { DevId } from '../base/units.js';
import type { Transactions } from './commit.js';
import type { PoolContext } from './context.js';
import { parseMessage, type PoolMessage } from './messages.js';
import type { PoolModes } from './modes.js';
import type { Quiesce } from './quiesce.js';
import type { NamedDevice, NameOptions } from './registry.js';

// Thin devices: dm-thin's pool messages (create_thin, create_snap, delete,
// set_transaction_id, metadata snapshots) and the named devices of the
// registry (create, snapshot, activate, remove, deactivate, resize). A name
// changes with an intent in the registry around the metadata change and its
// commit, so a crash leaves no dangling name (reconcile finishes or drops
// it at the next open). Snapshots' origins, which dm-thin does not keep, are
// recorded in the registry too. Calls the transactions, the modes and the
// quiesce.

export class Devices {
  /** Serializes changes to device names: the registry has one intent slot. */
  private readonly naming = new KeyedLock();

  constructor(
    private readonly ctx: PoolContext,
    private readonly modes: PoolModes,
    private readonly tx: Transactions,
    private readonly quiesce: Quiesce,
  ) {}

  /** Finishes or drops an intent a crash left behind: only its dev id is looked at. */
  reconcile(): void {
    const registry = this.ctx.registry;
    const intent = registry.intent;
    if (!intent) return;
    const inMetadata = this.ctx.md.hasDevice(intent.device.devId);
    if ((intent.op === 'add') === inMetadata) registry.finish();
    else registry.cancel();
  }

  //----------------------------------------------------------------------------
  // messages

  /** Runs a dm-thin pool message; every successful message is committed. */
  async message(text: string): Promise<void> {
    const msg = parseMessage(text);
    const mode = this.modes.mode;
    if (mode === 'read_only' || mode === 'fail') {
      throw new ThinError('NOT_SUPPORTED', `pool ${this.ctx.name} is ${mode === 'fail' ? 'failed' : 'read-only'}: messages are refused`);
    }
    await this.runMessage(msg);
  }

  private async runMessage(msg: PoolMessage): Promise<void> {
    const md = this.ctx.md;
    switch (msg.kind) {
      case 'create_thin':
        await this.tx.change(() => md.createThin(msg.dev));
        break;
      case 'create_snap':
        await this.snapshotNow(msg.dev, msg.origin);
        break;
      case 'delete':
        await this.deleteDevice(msg.dev);
        break;
      case 'set_transaction_id':
        await this.tx.change(() => md.setTransactionId(msg.current, msg.next));
        break;
      case 'reserve_metadata_snap':
        await this.tx.commit();
        await this.tx.change(() => md.reserveMetadataSnap());
        break;
      case 'release_metadata_snap':
        await this.tx.change(() => md.releaseMetadataSnap());
        break;
    }
    await this.tx.commit();
  }

  /**
   * Snapshots origin as dev at a consistent point: writes to the origin
   * held, the speculative blocks settled and the origin's in-place writes
   * revoked in the step that shares its blocks, then committed.
   */
  private async snapshotNow(dev: DevId, origin: DevId): Promise<void> {
    await this.quiesce.quiesced(origin, async () => {
      await this.tx.change(() => {
        this.tx.settleSpeculative();
        this.ctx.hooks?.revoke(origin, 'writes');
        this.ctx.md.createSnap(dev, origin);
      });
      await this.tx.commit();
    });
    this.recordOrigin(dev, origin);
  }

  /**
   * Writes down which device a snapshot was taken of (registry.ts): dm-thin's
   * metadata does not keep it, and `ls --tree` and `show` draw it. After the
   * commit, and never failing the snapshot: without a record the tree
   * infers the origin (snapshot-tree.ts).
   */
  private recordOrigin(dev: DevId, origin: DevId): void {
    const md = this.ctx.md;
    try {
      if (md.hasDevice(dev) && md.hasDevice(origin)) this.ctx.registry.recordOrigin({ devId: dev, origin, time: md.getDetails(dev).creationTime });
    } catch {
      // See above: the origin is inferred instead.
    }
  }

  /** Deletes a device; a named one loses its name in the same step. */
  private async deleteDevice(dev: DevId): Promise<void> {
    await this.renaming(() => this.deleteDeviceNow(dev));
  }

  private async deleteDeviceNow(dev: DevId): Promise<void> {
    const registry = this.ctx.registry;
    this.ctx.md.getDetails(dev);
    if (this.quiesce.busy(dev)) throw new ThinError('DEV_BUSY', `thin device ${dev} is busy (I/O in flight)`);
    const named = registry.byId(dev);
    if (named) registry.begin({ op: 'remove', device: named });
    try {
      await this.tx.change(() => {
        this.ctx.hooks?.revoke(dev, 'all');
        this.ctx.md.deleteDevice(dev);
      });
      await this.tx.canaryPunch();
      await this.tx.commit();
    } catch (e) {
      if (named) registry.cancel();
      throw e;
    }
    if (named) registry.finish();
    registry.forgetOrigin(dev);
  }

  //----------------------------------------------------------------------------
  // named devices

  device(name: string): NamedDevice {
    return this.ctx.registry.get(name);
  }

  lowestFreeDevId(): DevId {
    let id = 0;
    while (this.ctx.md.hasDevice(id as DevId)) id++;
    return id as DevId;
  }

  /** Runs a change of names (and the metadata change behind it) alone. */
  private async renaming<T>(fn: () => Promise<T>): Promise<T> {
    const release = await this.naming.acquire('registry');
    try {
      return await fn();
    } finally {
      release();
    }
  }

  /** Intent, metadata change and commit, then the name: a crash leaves no dangling name. */
  private async addNamed(d: NamedDevice, makeIt: () => Promise<void>, o: NameOptions = {}): Promise<NamedDevice> {
    const registry = this.ctx.registry;
    registry.requireFreeName(d.name, o);
    registry.begin({ op: 'add', device: d });
    try {
      await makeIt();
      await this.tx.commit();
    } catch (e) {
      registry.cancel();
      throw e;
    }
    registry.finish();
    return d;
  }

  /** Names and sizes an existing device (dmsetup create ... thin POOL ID). */
  async activate(name: string, devId: DevId, size: number): Promise<NamedDevice> {
    return this.renaming(async () => {
      this.ctx.md.getDetails(devId);
      const other = this.ctx.registry.byId(devId);
      if (other) throw new ThinError('DEV_EXISTS', `thin device ${devId} is already active as '${other.name}'`);
      return this.addNamed({ name, devId, size }, async () => {});
    });
  }

  async createDevice(name: string, size: number, devId?: DevId, o: NameOptions = {}): Promise<NamedDevice> {
    return this.renaming(async () => {
      this.ctx.registry.requireFreeName(name, o);
      this.modes.requireWritable();
      const id = devId ?? this.lowestFreeDevId();
      return this.addNamed({ name, devId: id, size }, () => this.tx.change(() => this.ctx.md.createThin(id)), o);
    });
  }

  async snapshot(originName: string, name: string, size?: number, o: NameOptions = {}): Promise<NamedDevice> {
    return this.renaming(async () => {
      const origin = this.ctx.registry.get(originName);
      this.ctx.registry.requireFreeName(name, o);
      this.modes.requireWritable();
      const id = this.lowestFreeDevId();
      return this.addNamed({ name, devId: id, size: size ?? origin.size }, () => this.snapshotNow(id, origin.devId), o);
    });
  }

  /** Deletes the device and its name (lvremove). */
  async remove(name: string): Promise<void> {
    const d = this.ctx.registry.get(name);
    this.modes.requireWritable();
    await this.deleteDevice(d.devId);
  }

  /** Drops the name and size only (dmsetup remove); the data stays. */
  async deactivate(name: string): Promise<void> {
    await this.renaming(async () => {
      const d = this.ctx.registry.get(name);
      this.ctx.hooks?.revoke(d.devId, 'all');
      this.ctx.registry.delete(name);
    });
  }

  async resizeDevice(name: string, size: number): Promise<NamedDevice> {
    return this.renaming(async () => {
      const d = { ...this.ctx.registry.get(name), size };
      this.ctx.hooks?.revoke(d.devId, 'all');
      this.ctx.registry.set(d);
      return d;
    });
  }
}
