// Writes a small OCI image layout tarball built from Debian's busybox-static,
// for the demo and for trying the layer store by hand: layer 1 is busybox with
// its applet links, /etc/passwd and a file /etc/gone.txt; layer 2 deletes
// /etc/gone.txt through a whiteout and adds /etc/motd.
//
//   npx tsx scripts/busybox-image.ts busybox.tar [--name busybox:demo]

import { buildOciImage, busyboxLayer } from '../test/_helpers/oci-build.js';

const file = process.argv[2];
if (!file || file.startsWith('-')) {
  process.stderr.write('usage: npx tsx scripts/busybox-image.ts FILE.tar [--name NAME]\n');
  process.exit(2);
}
const at = process.argv.indexOf('--name');
const name = at > 0 ? process.argv[at + 1] : 'busybox:demo';

await buildOciImage(file, [
  [...busyboxLayer(), { type: 'file', path: 'etc/gone.txt', content: 'deleted by layer 2\n' }],
  [{ type: 'whiteout', path: 'etc/gone.txt' }, { type: 'file', path: 'etc/motd', content: 'hello from layer 2\n' }],
], { name, compress: true });
process.stdout.write(`${file}: OCI image ${name}, 2 layers\n`);
