import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { ThinError } from '../../base/errors.js';
import { checkName } from '../../pool/registry.js';
import { applyLayer } from './archive/apply.js';
import { writeLayerDiff } from './archive/diff.js';
import { openImageArchive } from './archive/oci-image.js';
import { failpoint } from './failpoints.js';
import type { ContainerRecord, ImageRecord, LayerRecord } from './store-file.js';
import type { LayerStore } from './store.js';

// Images and containers on the layer store, as Docker's layer store used
// the graph driver: an image is a chain of layers (one snapshot per diff,
// id = the OCI chain id, so two images share their common bottom layers);
// a container is `<name>-init` (Docker's init files) on the image's top
// layer and `<name>` (read-write) on that.

const now = () => new Date().toISOString();

/** OCI chain id: the diff id for the bottom layer, then sha256("<parent chain> <diff id>"). */
function chainIds(diffIds: string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) {
    const prev = out[out.length - 1];
    out.push(prev === undefined ? d : `sha256:${crypto.createHash('sha256').update(`${prev} ${d}`).digest('hex')}`);
  }
  return out;
}

const layerIdOf = (chain: string) => chain.replace(/^sha256:/, '');

function checkImageName(name: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,254}$/.test(name)) {
    throw new ThinError('EINVAL_ARG', `invalid image name '${name}': use letters, digits and _.:/@+- (e.g. busybox:latest)`);
  }
}

export function image(store: LayerStore, name: string): ImageRecord {
  const i = store.data.images[name];
  if (!i) throw new ThinError('DEV_MISSING', `no image '${name}' in ${store.pool}; see thinfuse image ls ${store.pool}`);
  return i;
}

export function container(store: LayerStore, name: string): ContainerRecord {
  const c = store.data.containers[name];
  if (!c || c.state === 'creating') throw new ThinError('DEV_MISSING', `no container '${name}' in ${store.pool}; see thinfuse container ls ${store.pool}`);
  return c;
}

/** Streams a layer tar into the layer (mounting it for the time being). */
export async function applyInto(store: LayerStore, id: string, input: NodeJS.ReadableStream, mounted?: () => void): Promise<{ entries: number; whiteouts: number; bytes: number }> {
  return store.withMounted(id, async (dir) => {
    mounted?.();
    const r = await applyLayer(input, dir);
    failpoint('import.layer-applied');
    return r as { entries: number; whiteouts: number; bytes: number };
  });
}

//------------------------------------------------------------------------------
// images

/** onLayer(done, total) reports progress over the layers this import creates. */
export async function importImage(store: LayerStore, file: string, nameArg?: string, onLayer?: (done: number, total: number) => void): Promise<ImageRecord> {
  const tmp = path.join(store.pool, 'tmp');
  fs.mkdirSync(tmp, { recursive: true });
  const archive = await openImageArchive(file, tmp);
  try {
    const name = nameArg ?? archive.name ?? path.basename(file).replace(/\.(tar|tgz|tar\.gz)$/, '');
    checkImageName(name);
    if (store.data.images[name]) throw new ThinError('DEV_EXISTS', `an image '${name}' already exists; remove it (thinfuse image rm) or import with --name`);
    if (archive.layers.length === 0) throw new ThinError('EINVAL_ARG', `${file} has no layers`);
    const ids = chainIds(archive.layers.map((l) => l.diffId)).map(layerIdOf);
    const fresh = ids.map((id, i) => ({ id, i })).filter(({ id }) => !store.data.layers[id]);
    for (const id of ids) if (store.data.layers[id] && store.data.layers[id]!.state !== 'ready') store.readyLayer(id);
    await store.base();
    if (fresh.length > 0) await store.checkSpace();
    for (const { id, i } of fresh) {
      const rec = store.newRecord(id, i === 0 ? null : ids[i - 1]!, 'layer');
      rec.diffId = archive.layers[i]!.diffId;
    }
    store.data.intent = { op: 'create', layers: fresh.map((f) => f.id), image: name };
    store.save();
    failpoint('import.intent');
    onLayer?.(0, fresh.length);
    for (const [done, { id, i }] of fresh.entries()) {
      const rec = store.layer(id);
      await store.snapshotInto(rec);
      store.save();
      failpoint('import.layer-device');
      await applyInto(store, id, archive.openLayer(i), () => failpoint('import.layer-mounted'));
      rec.state = 'ready';
      store.save();
      failpoint('import.layer-ready');
      onLayer?.(done + 1, fresh.length);
    }
    const img: ImageRecord = { name, top: ids[ids.length - 1]!, layers: ids, config: archive.config, created: now() };
    failpoint('import.image');
    store.data.images[name] = img;
    store.data.intent = null;
    store.save();
    return img;
  } finally {
    await archive.close();
  }
}

/** Layers only this image holds (not another image's, nor a container's or other layer's parent), top first. */
function ownLayers(store: LayerStore, img: ImageRecord): string[] {
  const mine = new Set<string>();
  const except = new Set<string>([`image:${img.name}`]);
  for (const id of [...img.layers].reverse()) {
    const users = store.usersOf(id, new Set([...except, ...mine]));
    if (users.length > 0) break;
    mine.add(id);
  }
  return [...mine];
}

export async function removeImage(store: LayerStore, name: string): Promise<{ removed: string[]; deferred: string[] }> {
  const img = image(store, name);
  const users = Object.values(store.data.containers).filter((c) => c.image === name);
  if (users.length > 0) throw new ThinError('DEV_BUSY', `image '${name}' is used by container ${users.map((c) => c.name).join(', ')}; remove the containers first`);
  return store.removeLayers(ownLayers(store, img), { image: name });
}

//------------------------------------------------------------------------------
// containers

/** Docker's init layer: mount points and placeholder files the runtime binds over. */
function writeInitFiles(root: string, name: string): void {
  for (const d of ['dev', 'dev/pts', 'dev/shm', 'proc', 'sys', 'etc']) {
    const p = path.join(root, d);
    if (!fs.existsSync(p)) fs.mkdirSync(p, { mode: 0o755 });
  }
  for (const f of ['etc/hosts', 'etc/resolv.conf']) {
    const p = path.join(root, f);
    if (!fs.existsSync(p)) fs.writeFileSync(p, '', { mode: 0o644 });
  }
  failpoint('container.init-mounted');
  const hostname = path.join(root, 'etc/hostname');
  if (!fs.existsSync(hostname)) fs.writeFileSync(hostname, `${name}\n`, { mode: 0o644 });
  const mtab = path.join(root, 'etc/mtab');
  let have = true;
  try {
    fs.lstatSync(mtab);
  } catch {
    have = false;
  }
  if (!have) fs.symlinkSync('/proc/mounts', mtab);
}

export async function createContainer(store: LayerStore, imageName: string, name: string): Promise<ContainerRecord> {
  checkName(name);
  const img = image(store, imageName);
  if (store.data.containers[name]) throw new ThinError('DEV_EXISTS', `a container '${name}' already exists; pick another name`);
  const initId = `${name}-init`;
  store.checkNewId(initId);
  store.checkNewId(name);
  store.readyLayer(img.top);
  await store.checkSpace();
  const init = store.newRecord(initId, img.top, 'init');
  const rw = store.newRecord(name, initId, 'container');
  const c: ContainerRecord = { name, image: imageName, init: initId, rw: name, state: 'creating', created: now() };
  store.data.containers[name] = c;
  store.data.intent = { op: 'create', layers: [initId, name], container: name };
  store.save();
  failpoint('container.intent');
  await store.snapshotInto(init);
  store.save();
  failpoint('container.init-device');
  await store.withMounted(initId, async (dir) => writeInitFiles(dir, name));
  init.state = 'ready';
  store.save();
  failpoint('container.init-ready');
  await store.snapshotInto(rw);
  store.save();
  failpoint('container.rw-device');
  rw.state = 'ready';
  c.state = 'ready';
  failpoint('container.record');
  store.data.intent = null;
  store.save();
  return c;
}

export async function removeContainer(store: LayerStore, name: string): Promise<{ removed: string[]; deferred: string[] }> {
  const c = container(store, name);
  const ids = [c.rw, c.init].filter((id) => store.data.layers[id]);
  return store.removeLayers(ids, { container: name });
}

/** sha256 of everything passing through. */
function hashing(h: crypto.Hash): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      h.update(chunk);
      cb(null, chunk);
    },
  });
}

/**
 * docker commit: the container's changes (its rw layer against its -init
 * layer, so the init files stay out) as a tar, applied to a new snapshot of
 * the image's top layer; the new image is the old one's layers plus that.
 */
export async function commitContainer(store: LayerStore, name: string, newImage: string): Promise<ImageRecord> {
  checkImageName(newImage);
  const c = container(store, name);
  const img = image(store, c.image);
  if (store.data.images[newImage]) throw new ThinError('DEV_EXISTS', `an image '${newImage}' already exists; pick another name`);
  await store.checkSpace();
  const tmp = path.join(store.pool, 'tmp');
  fs.mkdirSync(tmp, { recursive: true });
  const tarFile = path.join(tmp, `commit-${process.pid}.tar`);
  const h = crypto.createHash('sha256');
  await store.withMounted(c.init, (lower) =>
    store.withMounted(c.rw, async (upper) => {
      const pass = hashing(h);
      const out = fs.createWriteStream(tarFile);
      const piped = pipeline(pass, out);
      await writeLayerDiff(lower, upper, pass);
      await piped;
    }),
  );
  const diffId = `sha256:${h.digest('hex')}`;
  const topChain = `sha256:${img.top}`;
  const id = `${crypto.createHash('sha256').update(`${topChain} ${diffId}`).digest('hex')}`;
  try {
    if (!store.data.layers[id]) {
      const rec: LayerRecord = store.newRecord(id, img.top, 'layer');
      rec.diffId = diffId;
      store.data.intent = { op: 'create', layers: [id], image: newImage };
      store.save();
      await store.snapshotInto(rec);
      store.save();
      await applyInto(store, id, fs.createReadStream(tarFile));
      rec.state = 'ready';
    }
    const config = JSON.parse(JSON.stringify(img.config ?? {})) as { rootfs?: { diff_ids?: string[] } };
    if (config.rootfs?.diff_ids) config.rootfs.diff_ids.push(diffId);
    const made: ImageRecord = { name: newImage, top: id, layers: [...img.layers, id], config, created: now() };
    store.data.images[newImage] = made;
    store.data.intent = null;
    store.save();
    return made;
  } finally {
    fs.rmSync(tarFile, { force: true });
  }
}
