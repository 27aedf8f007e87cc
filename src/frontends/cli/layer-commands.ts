import { type Command, Option } from 'commander';
import { Writable } from 'node:stream';
import { ThinError } from '../../base/errors.js';
import { formatBytes } from '../../base/size.js';
import type { LayerStore } from '../layers/store.js';
import { type Out, type Progress, table } from './output.js';

// The layer store's commands (Docker's devicemapper graph driver, image and
// container operations): `thinfuse layer|image|container ... POOL ...`.
// Each takes the store's lock, reconciles it, does one thing, and stops the
// serve it started itself once nothing is mounted.
// The store and archive modules are imported inside the actions: loading them
// is most of a short command's time, and other commands never need them.

type Run = <A extends unknown[]>(fn: (out: Out, ...args: A) => Promise<void>) => (...args: A) => Promise<void>;

interface StoreFlags {
  storageOpt?: string[];
}

function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

function storageOpt(): Option {
  return new Option('--storage-opt <dm.key=value>', 'a Docker devicemapper option (repeatable; also POOL/layers.conf)').argParser(collect);
}

/** Opens the store, runs fn, and on failure rolls back what fn left half-made; always closes. */
async function withStore<T>(pool: string, o: StoreFlags, fn: (s: LayerStore) => Promise<T>, createPool = false): Promise<T> {
  const [{ LayerStore }, { loadOptions }] = await Promise.all([import('../layers/store.js'), import('../layers/options.js')]);
  const store = await LayerStore.open(pool, loadOptions(pool, o.storageOpt ?? []), { createPool });
  try {
    return await fn(store);
  } catch (e) {
    if (store.data.intent) await store.reconcile().catch(() => undefined);
    throw e;
  } finally {
    await store.close();
  }
}

function sub(parent: Command, spec: string, description: string): Command {
  return parent.command(spec).description(description).addOption(storageOpt());
}

function layerCommands(program: Command, run: Run): void {
  const layer = program.command('layer').description('the layer store: a base device and thin snapshots of it (Docker devicemapper)');

  sub(layer, 'init <pool>', 'make the base device once (dm.basesize, dm.fs, dm.mkfsarg); creates the pool if there is none')
    .action(run(async (out, pool: string, o: StoreFlags) => {
      const b = await withStore(pool, o, (s) => s.init(), true);
      out.result(b, [`base device ${b.device} (${formatBytes(b.size)})`]);
    }));

  sub(layer, 'create <pool> <id>', "snapshot the parent layer (or the base) as a new layer")
    .option('--parent <id>', 'parent layer (default: the base device)')
    .action(run(async (out, pool: string, id: string, o: StoreFlags & { parent?: string }) => {
      const l = await withStore(pool, o, (s) => s.createLayer(id, o.parent ?? null));
      out.result(l, [`created layer ${id}${o.parent ? ` on ${o.parent}` : ''}`]);
    }));

  sub(layer, 'apply <pool> <id>', 'unpack a layer tar (plain or gzip, with whiteouts) from stdin into the layer')
    .action(run(async (out, pool: string, id: string, o: StoreFlags) => {
      const r = await withStore(pool, o, async (s) => {
        s.readyLayer(id);
        const { applyInto } = await import('../layers/images.js');
        return applyInto(s, id, process.stdin);
      });
      out.result(r, [`applied ${r.entries} entries (${r.whiteouts} whiteouts, ${formatBytes(r.bytes)}) to ${id}`]);
    }));

  sub(layer, 'mount <pool> <id> [dir]', 'attach and mount the layer (default dir POOL/mnt/ID); counted')
    .action(run(async (out, pool: string, id: string, dir: string | undefined, o: StoreFlags) => {
      const d = await withStore(pool, o, async (s) => {
        s.readyLayer(id);
        return s.mount(id, dir);
      });
      out.result({ id, dir: d }, [d]);
    }));

  sub(layer, 'unmount <pool> <id> [dir]', 'count one mount down; the last unmounts and detaches (and finishes a deferred removal)')
    .action(run(async (out, pool: string, id: string, dir: string | undefined, o: StoreFlags) => {
      await withStore(pool, o, (s) => s.unmount(id, dir));
      out.result({ unmounted: id }, [`unmounted ${id}`]);
    }));

  sub(layer, 'remove <pool> <id>', 'remove a layer; a mounted one is removed when it is unmounted (deferred)')
    .action(run(async (out, pool: string, id: string, o: StoreFlags) => {
      const r = await withStore(pool, o, async (s) => {
        const { BASE_ID } = await import('../layers/store-file.js');
        if (id === BASE_ID) throw new ThinError('EINVAL_ARG', 'the base device is not removed by layer remove; it is the start of every layer');
        s.layer(id);
        const users = s.usersOf(id);
        if (users.length > 0) throw new ThinError('DEV_BUSY', `layer '${id}' is used by ${users.join(', ')}; remove those first`);
        return s.removeLayers([id]);
      });
      out.result(r, [r.deferred.length ? `removal of ${id} deferred until it is unmounted` : `removed ${id}`]);
    }));

  sub(layer, 'diff <pool> <id>', "write the layer's changes against its parent to stdout as a tar (whiteouts for deletions)")
    .action(run(async (out, pool: string, id: string, o: StoreFlags) => {
      const r = await withStore(pool, o, async (s) => {
        const l = s.readyLayer(id);
        const { writeLayerDiff } = await import('../layers/archive/diff.js');
        const sink = out.json ? new Writable({ write: (_c, _e, cb) => cb() }) : process.stdout;
        const upperDiff = (lower: string | null) => s.withMounted(id, (upper) => writeLayerDiff(lower, upper, sink));
        if (l.parent === null) return upperDiff(null);
        return s.withMounted(l.parent, (lower) => upperDiff(lower));
      });
      out.result(r);
    }));

  sub(layer, 'ls <pool>', 'list layers: id, kind, parent, device, size, state, mounts')
    .action(run(async (out, pool: string, o: StoreFlags) => {
      const layers = await withStore(pool, o, async (s) => Object.values(s.data.layers));
      out.result(layers, table([['ID', 'KIND', 'PARENT', 'DEV', 'SIZE', 'STATE', 'MOUNTED'], ...layers.map((l) => [
        l.id, l.kind, l.parent ?? '-', String(l.devId ?? '-'), formatBytes(l.size), l.state, l.mounts.map((m) => m.dir).join(',') || '-',
      ])]));
    }));
}

function imageCommands(program: Command, run: Run): void {
  const img = program.command('image').description('images: chains of layers imported from OCI/Docker image tarballs');

  sub(img, 'import <pool> <file>', 'import an OCI image layout tarball (docker save, ctr export): one layer per diff, digests checked')
    .option('--name <name>', 'image name (default: from the tarball, else its file name)')
    .action(run(async (out, pool: string, file: string, o: StoreFlags & { name?: string }) => {
      let bar: Progress | undefined;
      const onLayer = (done: number, total: number) => {
        bar ??= out.progress(total, 'layers');
        bar.update(done);
      };
      const { importImage } = await import('../layers/images.js');
      const i = await withStore(pool, o, (s) => importImage(s, file, o.name, onLayer)).finally(() => bar?.stop());
      out.result(i, [`imported ${i.name}: ${i.layers.length} layers, top ${i.top}`]);
    }));

  sub(img, 'ls <pool>', 'list images')
    .action(run(async (out, pool: string, o: StoreFlags) => {
      const images = await withStore(pool, o, async (s) => Object.values(s.data.images));
      out.result(images, table([['NAME', 'LAYERS', 'TOP', 'CREATED'], ...images.map((i) => [i.name, String(i.layers.length), i.top.slice(0, 12), i.created])]));
    }));

  sub(img, 'rm <pool> <name>', 'remove an image and the layers no other image or container uses')
    .action(run(async (out, pool: string, name: string, o: StoreFlags) => {
      const { image, removeImage } = await import('../layers/images.js');
      const r = await withStore(pool, o, async (s) => {
        image(s, name);
        return removeImage(s, name);
      });
      out.result({ image: name, ...r }, [`removed image ${name} (${r.removed.length} layers${r.deferred.length ? `, ${r.deferred.length} deferred until unmounted` : ''})`]);
    }));
}

function containerCommands(program: Command, run: Run): void {
  const ctr = program.command('container').description('containers: an -init layer and a read-write layer on an image');

  sub(ctr, 'create <pool> <image> <name>', "make the container's -init layer (Docker's init files) and its read-write layer")
    .action(run(async (out, pool: string, imageName: string, name: string, o: StoreFlags) => {
      const { createContainer } = await import('../layers/images.js');
      const c = await withStore(pool, o, (s) => createContainer(s, imageName, name));
      out.result(c, [`created container ${name} of ${imageName}`]);
    }));

  sub(ctr, 'mount <pool> <name> [dir]', "mount the container's root filesystem (default dir POOL/mnt/NAME)")
    .action(run(async (out, pool: string, name: string, dir: string | undefined, o: StoreFlags) => {
      const { container } = await import('../layers/images.js');
      const d = await withStore(pool, o, async (s) => s.mount(container(s, name).rw, dir));
      out.result({ container: name, dir: d }, [d]);
    }));

  sub(ctr, 'unmount <pool> <name> [dir]', "unmount the container's root filesystem")
    .action(run(async (out, pool: string, name: string, dir: string | undefined, o: StoreFlags) => {
      const { container } = await import('../layers/images.js');
      await withStore(pool, o, async (s) => s.unmount(container(s, name).rw, dir));
      out.result({ unmounted: name }, [`unmounted ${name}`]);
    }));

  sub(ctr, 'commit <pool> <name> <image>', "turn the container's changes into a new image (its image's layers plus one)")
    .action(run(async (out, pool: string, name: string, newImage: string, o: StoreFlags) => {
      const { commitContainer } = await import('../layers/images.js');
      const i = await withStore(pool, o, (s) => commitContainer(s, name, newImage));
      out.result(i, [`committed ${name} as ${i.name} (layer ${i.top})`]);
    }));

  sub(ctr, 'ls <pool>', 'list containers')
    .action(run(async (out, pool: string, o: StoreFlags) => {
      const cs = await withStore(pool, o, async (s) => Object.values(s.data.containers).map((c) => ({ ...c, mounts: s.data.layers[c.rw]?.mounts.map((m) => m.dir) ?? [] })));
      out.result(cs, table([['NAME', 'IMAGE', 'STATE', 'MOUNTED'], ...cs.map((c) => [c.name, c.image, c.state, c.mounts.join(',') || '-'])]));
    }));

  sub(ctr, 'rm <pool> <name>', 'remove a container; a mounted one goes when it is unmounted (deferred deletion)')
    .action(run(async (out, pool: string, name: string, o: StoreFlags) => {
      const { removeContainer } = await import('../layers/images.js');
      const r = await withStore(pool, o, (s) => removeContainer(s, name));
      out.result({ container: name, ...r }, [r.deferred.length ? `removal of ${name} deferred until it is unmounted` : `removed container ${name}`]);
    }));
}

export function layerStoreCommands(program: Command, run: Run): void {
  layerCommands(program, run);
  imageCommands(program, run);
  containerCommands(program, run);
}
