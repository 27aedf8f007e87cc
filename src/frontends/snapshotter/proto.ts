import { loadPackageDefinition, type ServiceDefinition } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';

// Loads proto/snapshots.proto (our own copy of containerd 1.6's snapshots
// API, see the file) for the server and for clients (the tests). Field
// names stay snake_case as on the wire; enums are their names ("ACTIVE");
// int64s are JS numbers (sizes stay far under 2^53).

export const PROTO_DIR = fileURLToPath(new URL('../../../proto/', import.meta.url));

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Ctor = any;

export function snapshotsService(): { service: ServiceDefinition; Client: Ctor } {
  const def = loadSync('snapshots.proto', {
    includeDirs: [PROTO_DIR],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const pkg = loadPackageDefinition(def) as Ctor;
  const Client = pkg.containerd.services.snapshots.v1.Snapshots;
  return { service: Client.service as ServiceDefinition, Client };
}
