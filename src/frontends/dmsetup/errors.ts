import { type ErrorCode, ThinError } from '../../base/errors.js';

// dmsetup's error lines: "device-mapper: IOCTL ioctl on NAME failed: STRERROR",
// with the reason the kernel would log (dmesg) after it, so the one line says
// what went wrong and what to do.

const STRERROR = {
  EINVAL: 'Invalid argument',
  EBUSY: 'Device or resource busy',
  ENXIO: 'No such device or address',
  ENODEV: 'No such device',
  EEXIST: 'File exists',
  ENODATA: 'No data available',
  EOPNOTSUPP: 'Operation not supported',
  ENOSPC: 'No space left on device',
  EIO: 'Input/output error',
  EPERM: 'Operation not permitted',
  ENOTBLK: 'Block device required',
} as const;

export type Errno = keyof typeof STRERROR;

export function dmError(code: ErrorCode, ioctl: string, name: string, errno: Errno, why?: string): ThinError {
  const tail = why ? ` (${why})` : '';
  return new ThinError(code, `device-mapper: ${ioctl} ioctl on ${name} failed: ${STRERROR[errno]}${tail}`, { errno });
}

/** dmsetup's reply for a name it does not know. */
export function noDevice(ioctl: string, name: string): ThinError {
  return dmError('DEV_MISSING', ioctl, name, 'ENXIO', `no device ${name}: see dmsetup ls`);
}

/** The errno a pool-side failure maps to, for a message ioctl. */
export function errnoOf(code: string): Errno {
  switch (code) {
    case 'DEV_EXISTS': return 'EEXIST';
    case 'DEV_MISSING': return 'ENODATA';
    case 'DEV_BUSY': case 'SNAP_HELD': return 'EBUSY';
    case 'READ_ONLY': case 'POOL_FAILED': case 'NOT_SUPPORTED': return 'EOPNOTSUPP';
    case 'NO_DATA_SPACE': case 'NO_METADATA_SPACE': case 'HOST_NO_SPACE': return 'ENOSPC';
    case 'IO_ERROR': return 'EIO';
    default: return 'EINVAL';
  }
}
