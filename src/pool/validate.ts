import { ThinError } from '../base/errors.js';
import { GiB, KiB, MAX_DATA_BLOCKS, MAX_META_BYTES, MIN_META_BYTES, SECTOR } from '../base/units.js';

// The limits dm-thin enforces on a pool's shape, checked before anything is
// written, so that bad input changes nothing.

export function checkBlockSize(bytes: number): void {
  if (bytes % (64 * KiB) !== 0 || bytes < 64 * KiB || bytes > GiB) {
    throw new ThinError('EINVAL_ARG', `block size ${bytes} bytes is invalid: use a multiple of 64 KiB from 64 KiB to 1 GiB`);
  }
}

export function checkDataSize(bytes: number, blockBytes: number): void {
  if (bytes % blockBytes !== 0) {
    throw new ThinError('EINVAL_ARG', `data size ${bytes} bytes is not a multiple of the block size (${blockBytes} bytes)`);
  }
  if (bytes / blockBytes > MAX_DATA_BLOCKS) {
    throw new ThinError('EINVAL_ARG', `data size ${bytes} bytes is absurd: over 2^40 blocks`);
  }
}

export function checkMetadataSize(bytes: number): void {
  if (bytes % (4 * KiB) !== 0 || bytes < MIN_META_BYTES || bytes > MAX_META_BYTES) {
    throw new ThinError('EINVAL_ARG', `metadata size ${bytes} bytes is invalid: use a multiple of 4 KiB from 2 MiB to 16 GiB`);
  }
}

export function checkDeviceSize(bytes: number): void {
  if (bytes % SECTOR !== 0) throw new ThinError('EINVAL_ARG', `device size ${bytes} bytes is not a multiple of 512`);
  if (bytes / SECTOR > 2 ** 53) throw new ThinError('EINVAL_ARG', `device size ${bytes} bytes is absurd`);
}
