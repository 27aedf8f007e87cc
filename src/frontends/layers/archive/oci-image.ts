// Reads an image tarball and verifies all of it before anything is imported.
//
// Formats read (the tarball itself may be gzip-compressed):
//  - OCI image layout (image-spec image-layout.md): `oci-layout`,
//    `index.json` (an image index: descriptors of manifests, or of nested
//    indexes for multi-platform images), `blobs/sha256/<hex>` (content
//    addressed: manifests, configs, layers). `ctr export` writes this;
//    `docker save` since Docker 25 too (plus manifest.json, and legacy
//    `<id>/layer.tar` symlinks into blobs/);
//  - the legacy `docker save` format: `manifest.json` = [{Config:
//    "<hex>.json", RepoTags: [...], Layers: ["<id>/layer.tar", ...]}],
//    uncompressed layers whose sha256 is their diff_id.
// The config is the OCI/Docker image config; its rootfs.diff_ids lists the
// sha256 of each *uncompressed* layer, in order.
//
// Verification, all before openImageArchive returns: every blob used
// (index, manifest, config, layers) hashes to its digest and has its
// descriptor's size, and every layer, uncompressed, hashes to its diff_id.
// An archive that fails any check is refused whole, so an import fails
// before it creates a layer.
//
// Files are extracted into a fresh directory under tmpDir, named by number,
// never by their (untrusted) archive names; close() removes it, and so does
// a failed open.

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';

import { ThinError } from '../../../base/errors.js';
import { cleanName } from './safe-path.js';
import { decompressed, sniffCompression, tarEntries, type Compression } from './tar.js';

export interface ImageLayer {
  /** Digest of the blob as stored (compressed or not), "sha256:<hex>". */
  digest: string;
  /** Digest of the uncompressed layer tar, from the config's rootfs.diff_ids. */
  diffId: string;
  mediaType: string;
  /** Bytes of the blob as stored. */
  compressedSize: number;
}

export interface ImageArchive {
  /** The image's name from the archive (e.g. "docker.io/library/busybox:latest"), or null. */
  name: string | null;
  /** The image config (OCI/Docker image config JSON). */
  config: Record<string, unknown>;
  layers: ImageLayer[];
  /** Layer i as an uncompressed tar; the stream errors if it no longer matches its diff_id. */
  openLayer(i: number): NodeJS.ReadableStream;
  /** Removes the extracted files. */
  close(): Promise<void>;
}

export interface OpenImageOptions {
  /** Pick the image of this name when the archive holds several. */
  name?: string;
}

interface Stored {
  /** Extracted file, or null for a link to another archive path. */
  host: string | null;
  size: number;
  sha256: string;
  link: string | null;
}

interface Layer extends ImageLayer {
  host: string;
  compression: Compression;
}

interface Picked {
  name: string | null;
  config: Record<string, unknown>;
  layers: Array<Omit<Layer, 'diffId' | 'compression'>>;
}

const MAX_LINKS = 40;
const HEX64 = /^[0-9a-f]{64}$/;

/** Opens and fully verifies the image tarball `file`, extracting into a new directory under tmpDir. */
export async function openImageArchive(file: string, tmpDir: string, opts: OpenImageOptions = {}): Promise<ImageArchive> {
  fs.mkdirSync(tmpDir, { recursive: true });
  const work = fs.mkdtempSync(path.join(tmpDir, 'image-'));
  try {
    const files = await extract(file, work);
    const archive = new Archive(file, files);
    const picked = archive.has('index.json') ? archive.pickOci(opts.name) : archive.pickLegacy(opts.name);
    const layers = await verifyLayers(file, picked);
    return {
      name: picked.name,
      config: picked.config,
      layers: layers.map(({ digest, diffId, mediaType, compressedSize }) => ({ digest, diffId, mediaType, compressedSize })),
      openLayer: (i) => openLayer(layers, i),
      close: async () => fs.promises.rm(work, { recursive: true, force: true }),
    };
  } catch (e) {
    fs.rmSync(work, { recursive: true, force: true });
    throw e;
  }
}

// ---------------------------------------------------------------- extract

/** Every file of the tarball, by normalised archive path; regular files are written to work/<n> and hashed. */
async function extract(file: string, work: string): Promise<Map<string, Stored>> {
  const files = new Map<string, Stored>();
  let input: fs.ReadStream;
  try {
    input = fs.createReadStream(file);
    await new Promise((resolve, reject) => input.once('open', resolve).once('error', reject));
  } catch (e) {
    throw new ThinError('EINVAL_ARG', `cannot read image archive ${file}: ${(e as Error).message}`);
  }
  const tar = await decompressed(input, `image archive ${file}`);
  for await (const { header, body } of tarEntries(tar)) {
    const name = cleanName(header.name, 'archive entry');
    if (header.type === 'file' || header.type === 'contiguous-file') {
      const host = path.join(work, String(files.size));
      const hash = createHash('sha256');
      let size = 0;
      await pipeline(
        body,
        new Transform({
          transform(chunk: Buffer, _enc, done) {
            hash.update(chunk);
            size += chunk.length;
            done(null, chunk);
          },
        }),
        fs.createWriteStream(host, { flags: 'wx' }),
      );
      files.set(name, { host, size, sha256: hash.digest('hex'), link: null });
    } else if (header.type === 'symlink') {
      // docker save points <id>/layer.tar at ../blobs/sha256/<hex>.
      files.set(name, { host: null, size: 0, sha256: '', link: path.posix.join(path.posix.dirname(name), header.linkname ?? '') });
    } else if (header.type === 'link') {
      files.set(name, { host: null, size: 0, sha256: '', link: header.linkname ?? '' });
    }
  }
  return files;
}

// ---------------------------------------------------------- the archive

class Archive {
  constructor(
    private readonly file: string,
    private readonly files: Map<string, Stored>,
  ) {}

  has(name: string): boolean {
    return this.files.has(name);
  }

  /** The stored file at `name`, links followed; throws naming `what` if missing. */
  get(name: string, what: string): Stored {
    let at = cleanName(name, what);
    for (let i = 0; i < MAX_LINKS; i++) {
      const f = this.files.get(at);
      if (f === undefined) throw this.bad(`${what} (${name}) is missing from the archive`);
      if (f.link === null) return f;
      at = cleanName(f.link, what);
    }
    throw this.bad(`${what} (${name}) is a loop of links`);
  }

  json(name: string, what: string): unknown {
    return this.parse(this.get(name, what), name, what);
  }

  /** The blob of a descriptor, checked against its digest and size. */
  blob(desc: unknown, what: string): Stored & { host: string; digest: string; mediaType: string } {
    const d = asObject(desc, what, this.file);
    const digest = String(d.digest ?? '');
    const [alg, hex] = digest.split(':');
    if (alg !== 'sha256' || hex === undefined || !HEX64.test(hex)) {
      throw this.bad(`${what} has digest ${JSON.stringify(digest)}; thinfuse checks sha256 digests only`);
    }
    const stored = this.get(`blobs/sha256/${hex}`, `${what} blob ${digest}`);
    if (stored.sha256 !== hex) {
      throw this.bad(`${what} blob ${digest} does not match its digest (its content hashes to sha256:${stored.sha256})`);
    }
    if (typeof d.size === 'number' && d.size !== stored.size) {
      throw this.bad(`${what} blob ${digest} is ${stored.size} bytes but its descriptor says ${d.size}`);
    }
    return { ...stored, host: stored.host as string, digest, mediaType: String(d.mediaType ?? '') };
  }

  blobJson(desc: unknown, what: string): { json: Record<string, unknown>; digest: string } {
    const b = this.blob(desc, what);
    return { json: asObject(this.parse(b, b.digest, what), what, this.file), digest: b.digest };
  }

  // ----------------------------------------------------------- OCI layout

  pickOci(name: string | undefined): Picked {
    const index = asObject(this.json('index.json', 'index.json'), 'index.json', this.file);
    const top = this.pickFromIndex(index, name, 'index.json');
    const annotations = asObject(top.annotations ?? {}, 'annotations', this.file);
    const manifest = this.resolveManifest(top, 'the image manifest');
    const { json: config, digest: configDigest } = this.blobJson(manifest.config, 'the image config');
    const descs = Array.isArray(manifest.layers) ? manifest.layers : [];
    const layers = descs.map((desc, i) => {
      const b = this.blob(desc, `layer ${i + 1}`);
      return { digest: b.digest, mediaType: b.mediaType, compressedSize: b.size, host: b.host };
    });
    const imageName =
      stringOr(annotations['io.containerd.image.name']) ??
      stringOr(annotations['org.opencontainers.image.ref.name']) ??
      this.repoTagOf(configDigest);
    return { name: imageName, config, layers };
  }

  /** The descriptor to import from an index: the one named `name`, or the only image. */
  private pickFromIndex(index: Record<string, unknown>, name: string | undefined, what: string): Record<string, unknown> {
    const all = (Array.isArray(index.manifests) ? index.manifests : []).map((m) => asObject(m, `${what} entry`, this.file));
    if (all.length === 0) throw this.bad(`${what} lists no images`);
    const names = all.map((m) => namesOf(m));
    if (name !== undefined) {
      const found = all.filter((_, i) => names[i]?.some((n) => sameImageName(n, name)));
      if (found.length === 0) throw this.bad(`no image named ${name} (it holds: ${names.flat().join(', ') || 'unnamed images'})`);
      return found[0] as Record<string, unknown>;
    }
    const distinct = new Set(all.map((m) => m.digest));
    if (distinct.size > 1) {
      throw new ThinError('EINVAL_ARG', `${this.file} holds ${distinct.size} images (${names.flat().join(', ') || 'unnamed'}): pick one with --name`);
    }
    return all[0] as Record<string, unknown>;
  }

  /** Follows nested indexes (multi-platform images) down to one image manifest for this host's platform. */
  private resolveManifest(desc: Record<string, unknown>, what: string, depth = 0): Record<string, unknown> {
    const { json } = this.blobJson(desc, what);
    if (!Array.isArray(json.manifests)) return json;
    if (depth > 4) throw this.bad(`${what}: image indexes nested too deep`);
    const wanted = { os: 'linux', architecture: GO_ARCH[process.arch] ?? process.arch };
    const entries = json.manifests.map((m) => asObject(m, `${what} entry`, this.file));
    const images = entries.filter((m) => {
      const p = asObject(m.platform ?? {}, 'platform', this.file);
      return p.os !== 'unknown'; // attestation manifests
    });
    const match =
      images.length === 1
        ? images[0]
        : images.find((m) => {
            const p = asObject(m.platform ?? {}, 'platform', this.file);
            return p.os === wanted.os && p.architecture === wanted.architecture;
          });
    if (match === undefined) throw this.bad(`${what} has no image for ${wanted.os}/${wanted.architecture}`);
    return this.resolveManifest(match, what, depth + 1);
  }

  /** docker save's manifest.json names the image when index.json does not. */
  private repoTagOf(configDigest: string): string | null {
    if (!this.has('manifest.json')) return null;
    const hex = configDigest.slice('sha256:'.length);
    const entries = this.json('manifest.json', 'manifest.json');
    if (!Array.isArray(entries)) return null;
    for (const e of entries) {
      const entry = asObject(e, 'manifest.json entry', this.file);
      if (String(entry.Config ?? '').includes(hex)) return stringOr((entry.RepoTags as unknown[] | undefined)?.[0]);
    }
    return null;
  }

  // ----------------------------------------------------------- docker save

  pickLegacy(name: string | undefined): Picked {
    if (!this.has('manifest.json')) {
      throw this.bad('has neither index.json (OCI image layout) nor manifest.json (docker save): not an image archive');
    }
    const list = this.json('manifest.json', 'manifest.json');
    if (!Array.isArray(list) || list.length === 0) throw this.bad('manifest.json lists no images');
    const all = list.map((e) => asObject(e, 'manifest.json entry', this.file));
    const tags = all.map((e) => (Array.isArray(e.RepoTags) ? e.RepoTags.map(String) : []));
    let entry: Record<string, unknown> | undefined;
    if (name !== undefined) entry = all.find((_, i) => tags[i]?.some((t) => sameImageName(t, name)));
    else if (all.length === 1) entry = all[0];
    else throw new ThinError('EINVAL_ARG', `${this.file} holds ${all.length} images (${tags.flat().join(', ')}): pick one with --name`);
    if (entry === undefined) throw this.bad(`no image named ${name} (it holds: ${tags.flat().join(', ') || 'untagged images'})`);

    const configName = String(entry.Config ?? '');
    const configFile = this.get(configName, 'the image config');
    const id = path.posix.basename(configName).replace(/\.json$/, '');
    if (HEX64.test(id) && configFile.sha256 !== id) {
      throw this.bad(`the image config ${configName} does not match its digest (its content hashes to sha256:${configFile.sha256})`);
    }
    const config = asObject(this.parse(configFile, configName, 'the image config'), 'the image config', this.file);
    const layerNames = Array.isArray(entry.Layers) ? entry.Layers.map(String) : [];
    const layers = layerNames.map((layerName, i) => {
      const f = this.get(layerName, `layer ${i + 1}`);
      const mediaType = 'application/vnd.docker.image.rootfs.diff.tar';
      return { digest: `sha256:${f.sha256}`, mediaType, compressedSize: f.size, host: f.host as string };
    });
    const tag = tags[all.indexOf(entry)]?.[0] ?? null;
    return { name: tag, config, layers };
  }

  // --------------------------------------------------------------- common

  private parse(f: Stored, name: string, what: string): unknown {
    try {
      return JSON.parse(fs.readFileSync(f.host as string, 'utf8'));
    } catch (e) {
      throw this.bad(`${what} (${name}) is not valid JSON: ${(e as Error).message}`);
    }
  }

  bad(msg: string): ThinError {
    return new ThinError('BAD_ARCHIVE', `image archive ${this.file}: ${msg}`);
  }
}

/** Node's process.arch -> the OCI platform architecture (Go's GOARCH). */
const GO_ARCH: Partial<Record<string, string>> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x' };

function namesOf(desc: Record<string, unknown>): string[] {
  const a = (desc.annotations ?? {}) as Record<string, unknown>;
  return [a['io.containerd.image.name'], a['org.opencontainers.image.ref.name']].filter((n): n is string => typeof n === 'string');
}

/** Image names compare as Docker's short forms: "busybox" = "busybox:latest" = "docker.io/library/busybox:latest". */
export function sameImageName(a: string, b: string): boolean {
  return normaliseImageName(a) === normaliseImageName(b);
}

function normaliseImageName(name: string): string {
  let n = name.replace(/^docker\.io\//, '').replace(/^library\//, '');
  if (!/[:@][^/]*$/.test(n)) n += ':latest';
  return n;
}

function stringOr(v: unknown): string | null {
  return typeof v === 'string' && v !== '' ? v : null;
}

function asObject(v: unknown, what: string, file: string): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) {
    throw new ThinError('BAD_ARCHIVE', `image archive ${file}: ${what} is not a JSON object`);
  }
  return v as Record<string, unknown>;
}

// ------------------------------------------------------------ layers

const ZSTD_TYPES = /\+zstd$|\.zstd$/;

async function verifyLayers(file: string, picked: Picked): Promise<Layer[]> {
  const rootfs = (picked.config.rootfs ?? {}) as Record<string, unknown>;
  const diffIds = Array.isArray(rootfs.diff_ids) ? rootfs.diff_ids.map(String) : [];
  const bad = (msg: string): ThinError => new ThinError('BAD_ARCHIVE', `image archive ${file}: ${msg}`);
  if (diffIds.length !== picked.layers.length) {
    throw bad(`the config lists ${diffIds.length} diff_ids for ${picked.layers.length} layers`);
  }
  const layers: Layer[] = [];
  for (const [i, l] of picked.layers.entries()) {
    const what = `layer ${i + 1} (${l.digest})`;
    if (ZSTD_TYPES.test(l.mediaType)) throw bad(`${what} is zstd-compressed (${l.mediaType}); thinfuse reads plain and gzip layers only`);
    const compression = sniffLayer(l.host, what);
    const diffId = diffIds[i] as string;
    const actual = await hashUncompressed(l.host, compression, what, bad);
    if (`sha256:${actual}` !== diffId) {
      throw bad(`${what} does not match its diff_id: uncompressed it hashes to sha256:${actual}, the config says ${diffId}`);
    }
    layers.push({ ...l, diffId, compression });
  }
  return layers;
}

function sniffLayer(host: string, what: string): Compression {
  const fd = fs.openSync(host, 'r');
  try {
    const head = Buffer.alloc(6);
    const n = fs.readSync(fd, head, 0, head.length, 0);
    return sniffCompression(head.subarray(0, n), what);
  } finally {
    fs.closeSync(fd);
  }
}

async function hashUncompressed(host: string, compression: Compression, what: string, bad: (m: string) => ThinError): Promise<string> {
  const hash = createHash('sha256');
  try {
    for await (const chunk of uncompressed(host, compression)) hash.update(chunk as Buffer);
  } catch (e) {
    throw bad(`${what} does not decompress: ${(e as Error).message}`);
  }
  return hash.digest('hex');
}

function uncompressed(host: string, compression: Compression): Readable {
  const raw = fs.createReadStream(host);
  if (compression === 'none') return raw;
  const gunzip = zlib.createGunzip();
  raw.on('error', (e) => gunzip.destroy(e));
  return raw.pipe(gunzip);
}

function openLayer(layers: Layer[], i: number): NodeJS.ReadableStream {
  const layer = layers[i];
  if (layer === undefined) throw new ThinError('EINVAL_ARG', `no layer ${i} (the image has ${layers.length})`);
  const hash = createHash('sha256');
  const check = new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      done(null, chunk);
    },
    flush(done) {
      const actual = `sha256:${hash.digest('hex')}`;
      if (actual === layer.diffId) done();
      else done(new ThinError('BAD_ARCHIVE', `layer ${i + 1} changed since it was verified: it hashes to ${actual}, not ${layer.diffId}`));
    },
  });
  const source = uncompressed(layer.host, layer.compression);
  source.on('error', (e) => check.destroy(e));
  return source.pipe(check);
}
