// Builds image layers and image tarballs from small specs, for the archive
// and layer tests: layer tars (every entry kind Docker writes, xattrs as
// SCHILY.xattr PAX records, whiteouts, opaque markers), OCI image layouts
// (as `ctr export` / `docker save` write them) and the legacy `docker save`
// format. Options corrupt an image on purpose to test its verification.

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import zlib from 'node:zlib';

import tarStream from 'tar-stream';

import { writeEntry, type EntrySpec } from '../../src/frontends/layers/archive/tar.js';

interface Owned {
  /** Path inside the layer, without leading '/': 'bin/sh'. */
  path: string;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: Date;
  xattrs?: Record<string, Buffer | string>;
}

export type LayerEntry =
  | (Owned & { type: 'file'; content?: string | Buffer })
  | (Owned & { type: 'dir' })
  | (Owned & { type: 'symlink'; target: string })
  /** A hard link to `target`, a path earlier in this layer or in a lower one. */
  | (Owned & { type: 'hardlink'; target: string })
  | (Owned & { type: 'char' | 'block'; major: number; minor: number })
  | (Owned & { type: 'fifo' })
  /** Deletes `path` of the lower layers (written as DIR/.wh.NAME). */
  | { type: 'whiteout'; path: string }
  /** Hides the lower content of directory `path` (written as PATH/.wh..wh.opq). */
  | { type: 'opaque'; path: string };

export type LayerSpec = LayerEntry[];

export interface BuildOptions {
  /** Image name, e.g. 'busybox:latest' (index annotation / RepoTags). */
  name?: string;
  /** gzip the layer blobs (OCI layout only). */
  compress?: boolean;
  /** 'blob': flip a byte of the first layer blob; 'diffid': give the last layer a wrong diff_id. */
  corrupt?: 'blob' | 'diffid';
  /** 'oci' (default): OCI layout plus docker save's manifest.json; 'docker-legacy': manifest.json + <id>/layer.tar only. */
  format?: 'oci' | 'docker-legacy';
}

export interface BuiltImage {
  /** "sha256:<hex>" of each uncompressed layer. */
  diffIds: string[];
  /** "sha256:<hex>" of each layer blob as stored. */
  digests: string[];
  configDigest: string;
}

const FIXED_MTIME = new Date('2024-01-02T03:04:05Z');

function sha256(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

async function collect(stream: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c);
  return Buffer.concat(chunks);
}

function specOf(e: Exclude<LayerEntry, { type: 'whiteout' | 'opaque' }>): EntrySpec {
  const xattrs = new Map(Object.entries(e.xattrs ?? {}).map(([k, v]) => [k, Buffer.from(v)]));
  const common = { name: e.path, uid: e.uid ?? 0, gid: e.gid ?? 0, mtime: e.mtime ?? FIXED_MTIME, xattrs };
  switch (e.type) {
    case 'file':
      return { ...common, type: 'file', mode: e.mode ?? 0o644 };
    case 'dir':
      return { ...common, type: 'directory', mode: e.mode ?? 0o755 };
    case 'symlink':
      return { ...common, type: 'symlink', mode: e.mode ?? 0o777, linkname: e.target };
    case 'hardlink':
      return { ...common, type: 'link', mode: e.mode ?? 0o644, linkname: e.target };
    case 'char':
    case 'block':
      return { ...common, type: e.type === 'char' ? 'character-device' : 'block-device', mode: e.mode ?? 0o666, devmajor: e.major, devminor: e.minor };
    case 'fifo':
      return { ...common, type: 'fifo', mode: e.mode ?? 0o644 };
  }
}

/** The layer as an uncompressed tar (gzip with `compress`). */
export async function layerTar(spec: LayerSpec, opts: { compress?: boolean } = {}): Promise<Buffer> {
  const pack = tarStream.pack();
  const out = collect(pack as AsyncIterable<Buffer>);
  const byPath = new Map(spec.map((e) => [e.path, e]));
  for (const given of spec) {
    // A hard link's header describes the shared inode: unless told
    // otherwise, give it its target's metadata, as real tar writers do.
    const target = given.type === 'hardlink' ? byPath.get(given.target.replace(/^\/+/, '')) : undefined;
    const e = target !== undefined && given.type === 'hardlink' ? { ...target, ...given } : given;
    if (e.type === 'whiteout' || e.type === 'opaque') {
      const dir = e.type === 'opaque' ? e.path : e.path.split('/').slice(0, -1).join('/');
      const base = e.type === 'opaque' ? '.wh..wh..opq' : `.wh.${e.path.split('/').pop()}`;
      const name = dir === '' ? base : `${dir}/${base}`;
      await writeEntry(pack, { name, type: 'file', mode: 0, uid: 0, gid: 0, mtime: FIXED_MTIME });
      continue;
    }
    const body = e.type === 'file' ? Buffer.from(e.content ?? '') : undefined;
    await writeEntry(pack, { ...specOf(e), size: body?.length ?? 0 }, body);
  }
  pack.finalize();
  const tar = await out;
  return opts.compress ? zlib.gzipSync(tar) : tar;
}

/** Writes an image tarball with one layer per spec, in order (first = bottom). */
export async function buildOciImage(file: string, layers: LayerSpec[], opts: BuildOptions = {}): Promise<BuiltImage> {
  const tars = await Promise.all(layers.map((l) => layerTar(l)));
  const diffIds = tars.map((t) => `sha256:${sha256(t)}`);
  const blobs = opts.format !== 'docker-legacy' && opts.compress ? tars.map((t) => zlib.gzipSync(t)) : tars;
  const digests = blobs.map((b) => `sha256:${sha256(b)}`);
  const configDiffIds = [...diffIds];
  if (opts.corrupt === 'diffid') configDiffIds[configDiffIds.length - 1] = `sha256:${sha256(Buffer.from('not this layer'))}`;
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['/bin/sh'] },
      rootfs: { type: 'layers', diff_ids: configDiffIds },
      history: layers.map((_, i) => ({ created: FIXED_MTIME.toISOString(), created_by: `test layer ${i + 1}` })),
    }),
  );
  const configHex = sha256(config);
  if (opts.corrupt === 'blob' && blobs[0] !== undefined) {
    const b = Buffer.from(blobs[0]);
    b[b.length >> 1] = (b[b.length >> 1] ?? 0) ^ 0xff; // after the digest was taken
    blobs[0] = b;
  }
  const files = opts.format === 'docker-legacy' ? legacyFiles(blobs, diffIds, config, configHex, opts) : ociFiles(blobs, digests, config, configHex, opts);
  await writeTar(file, files);
  return { diffIds, digests, configDigest: `sha256:${configHex}` };
}

type ArchiveFile = { name: string; data: Buffer } | { name: string; symlink: string };

function ociFiles(blobs: Buffer[], digests: string[], config: Buffer, configHex: string, opts: BuildOptions): ArchiveFile[] {
  const layerType = opts.compress ? 'application/vnd.oci.image.layer.v1.tar+gzip' : 'application/vnd.oci.image.layer.v1.tar';
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${configHex}`, size: config.length },
      layers: blobs.map((b, i) => ({ mediaType: layerType, digest: digests[i], size: b.length })),
    }),
  );
  const manifestHex = sha256(manifest);
  const annotations = opts.name
    ? { 'io.containerd.image.name': opts.name, 'org.opencontainers.image.ref.name': opts.name.split(':').pop() }
    : undefined;
  const index = {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${manifestHex}`, size: manifest.length, annotations }],
  };
  // docker save (25+) writes manifest.json too, pointing into blobs/.
  const dockerManifest = [
    { Config: `blobs/sha256/${configHex}`, RepoTags: opts.name ? [opts.name] : null, Layers: digests.map((d) => `blobs/sha256/${d.slice(7)}`) },
  ];
  return [
    ...blobs.map((b, i) => ({ name: `blobs/sha256/${(digests[i] as string).slice(7)}`, data: b })),
    { name: `blobs/sha256/${configHex}`, data: config },
    { name: `blobs/sha256/${manifestHex}`, data: manifest },
    { name: 'oci-layout', data: Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' })) },
    { name: 'index.json', data: Buffer.from(JSON.stringify(index)) },
    { name: 'manifest.json', data: Buffer.from(JSON.stringify(dockerManifest)) },
  ];
}

/** Legacy docker save: layer i in <id>/layer.tar; from the second layer on as a symlink into blobs/ (as Docker 25 links them). */
function legacyFiles(blobs: Buffer[], diffIds: string[], config: Buffer, configHex: string, opts: BuildOptions): ArchiveFile[] {
  const files: ArchiveFile[] = [{ name: `${configHex}.json`, data: config }];
  const layerNames: string[] = [];
  blobs.forEach((b, i) => {
    const id = sha256(Buffer.from(`${diffIds[i]}-${i}`));
    layerNames.push(`${id}/layer.tar`);
    files.push({ name: `${id}/VERSION`, data: Buffer.from('1.0') });
    if (i === 0) {
      files.push({ name: `${id}/layer.tar`, data: b });
    } else {
      const hex = sha256(b);
      files.push({ name: `blobs/sha256/${hex}`, data: b });
      files.push({ name: `${id}/layer.tar`, symlink: `../blobs/sha256/${hex}` });
    }
  });
  files.push({ name: 'manifest.json', data: Buffer.from(JSON.stringify([{ Config: `${configHex}.json`, RepoTags: opts.name ? [opts.name] : null, Layers: layerNames }])) });
  return files;
}

async function writeTar(file: string, files: ArchiveFile[]): Promise<void> {
  const pack = tarStream.pack();
  const out = collect(pack as AsyncIterable<Buffer>);
  for (const f of files) {
    if ('symlink' in f) await writeEntry(pack, { name: f.name, type: 'symlink', mode: 0o777, uid: 0, gid: 0, mtime: FIXED_MTIME, linkname: f.symlink });
    else await writeEntry(pack, { name: f.name, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: FIXED_MTIME, size: f.data.length }, f.data);
  }
  pack.finalize();
  fs.writeFileSync(file, await out);
}

// ---------------------------------------------------------------- busybox

/** Where Debian's busybox-static puts the binary (apt-get install busybox-static; scripts/setup.sh does). */
export const BUSYBOX = '/bin/busybox';

const APPLETS = ['sh', 'ls', 'cat', 'echo', 'rm', 'mkdir', 'touch', 'test', 'true', 'false', 'stat', 'grep', 'sed', 'mv', 'cp', 'sleep', 'id', 'wc'];

/**
 * A root filesystem layer: /bin/busybox (a copy of the host's static
 * busybox) with the usual applets as symlinks, /etc/passwd and /etc/group,
 * /tmp (1777), /root (0700) and /dev/null (char 1:3).
 */
export function busyboxLayer(): LayerSpec {
  let binary: Buffer;
  try {
    binary = fs.readFileSync(BUSYBOX);
  } catch {
    throw new Error(`${BUSYBOX} not found: apt-get install busybox-static (scripts/setup.sh installs it)`);
  }
  return [
    { type: 'dir', path: 'bin' },
    { type: 'file', path: 'bin/busybox', content: binary, mode: 0o755 },
    ...APPLETS.map((a): LayerEntry => ({ type: 'symlink', path: `bin/${a}`, target: 'busybox' })),
    { type: 'dir', path: 'dev' },
    { type: 'char', path: 'dev/null', major: 1, minor: 3, mode: 0o666 },
    { type: 'dir', path: 'etc' },
    { type: 'file', path: 'etc/passwd', content: 'root:x:0:0:root:/root:/bin/sh\n' },
    { type: 'file', path: 'etc/group', content: 'root:x:0:\n' },
    { type: 'dir', path: 'root', mode: 0o700 },
    { type: 'dir', path: 'tmp', mode: 0o1777 },
  ];
}
