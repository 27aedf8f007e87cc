// Errors carry a stable `code` (what callers branch on and what the edges
// translate: errno at FUSE, exit status and --json at the CLI) and a message
// for humans that names the problem and what to do about it.

export type ErrorCode =
  | 'EINVAL_ARG'        // bad command-line or API argument (size, id, option)
  | 'POOL_EXISTS'       // pool create over an existing pool
  | 'POOL_MISSING'      // no pool at that path
  | 'POOL_LOCKED'       // another process holds the pool
  | 'BAD_SUPERBLOCK'    // wrong magic, bad checksum, unreadable superblock
  | 'BAD_METADATA'      // a corrupt metadata block found during I/O
  | 'UNKNOWN_MESSAGE'   // a pool message dm-thin does not know
  | 'BAD_MESSAGE'       // a known message with wrong arguments
  | 'DEV_EXISTS'        // dev id (or name) already in use
  | 'DEV_MISSING'       // no such dev id or name
  | 'DEV_BUSY'          // device open elsewhere
  | 'TRANSACTION_MISMATCH'
  | 'SNAP_HELD'         // a metadata snapshot is already held
  | 'SNAP_NOT_HELD'
  | 'OUT_OF_RANGE'      // I/O past the end of a device
  | 'NO_DATA_SPACE'     // out of data space (ENOSPC)
  | 'NO_METADATA_SPACE'
  | 'READ_ONLY'         // pool is read-only (needs_check, or opened read-only)
  | 'POOL_FAILED'       // pool is in fail mode
  | 'IO_ERROR'          // the backing file failed
  | 'HOST_NO_SPACE'     // the host filesystem under the sparse files is full
  | 'NOT_SUPPORTED'     // operation the pool's mode or features refuse
  | 'CHECK_FAILED'
  | 'BAD_XML'
  | 'BAD_ARCHIVE';      // a layer tar or image archive that is malformed, unsafe or fails its digests

export class ThinError extends Error {
  readonly code: ErrorCode;
  readonly data: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, data: Record<string, unknown> = {}, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'ThinError';
    this.code = code;
    this.data = data;
  }
}

export function isThinError(e: unknown, code?: ErrorCode): e is ThinError {
  return e instanceof ThinError && (code === undefined || e.code === code);
}

export function fail(code: ErrorCode, message: string, data?: Record<string, unknown>): never {
  throw new ThinError(code, message, data);
}
