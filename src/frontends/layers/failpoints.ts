// Crash points for the crash test: THINFUSE_FAILPOINT=<step> makes the
// process SIGKILL itself when it reaches that step, so a test can crash a
// layer operation at every step without depending on timing. The steps, by
// operation (each listed in FAILPOINTS below):
//
//   layer create:     create.intent (bookkeeping says "creating"), create.device (device made, not yet ready)
//   image import:     import.intent (all new layers recorded), import.layer-device (first new layer's
//                     device made), import.layer-mounted (mounted), import.layer-applied (unpacked, still
//                     mounted), import.layer-ready (first layer done, the rest not), import.image (all layers
//                     ready, image record not yet written)
//   container create: container.intent, container.init-device, container.init-mounted (init files half
//                     written), container.init-ready, container.rw-device, container.record
//   remove:           remove.intent (layers marked "deleting"), remove.unmounted, remove.device-deleted
//                     (first device gone, others left), remove.record
//   snapshotter:      snap.prepare-made (Prepare/View: device made and on a loop, record still "creating"),
//                     snap.remove-marked (record "removing", device not yet removed), snap.commit-released
//                     (Commit: loop detached, record still the active one)
//
// A step never fires in the daemon, only in the CLI process that runs the
// operation.

export const FAILPOINTS = {
  layerCreate: ['create.intent', 'create.device'],
  imageImport: ['import.intent', 'import.layer-device', 'import.layer-mounted', 'import.layer-applied', 'import.layer-ready', 'import.image'],
  containerCreate: ['container.intent', 'container.init-device', 'container.init-mounted', 'container.init-ready', 'container.rw-device', 'container.record'],
  remove: ['remove.intent', 'remove.unmounted', 'remove.device-deleted', 'remove.record'],
  snapshotter: ['snap.prepare-made', 'snap.remove-marked', 'snap.commit-released'],
} as const;

export type FailpointName = (typeof FAILPOINTS)[keyof typeof FAILPOINTS][number];

export const FAILPOINT_ENV = 'THINFUSE_FAILPOINT';

/** Dies here, at once and without cleanup (kill -9), if the environment names this step. */
export function failpoint(step: FailpointName): void {
  if (process.env[FAILPOINT_ENV] === step) process.kill(process.pid, 'SIGKILL');
}
