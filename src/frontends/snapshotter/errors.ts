import { status } from '@grpc/grpc-js';
import { ThinError } from '../../base/errors.js';

// Errors of the snapshotter, and their gRPC status as containerd's errdefs
// reads it (errdefs.FromGRPC): NotFound, AlreadyExists, FailedPrecondition,
// InvalidArgument. Each is a ThinError whose data names its status; other
// ThinErrors map by code, anything else is Unknown. One line, always.

type Grpc = 'NOT_FOUND' | 'ALREADY_EXISTS' | 'FAILED_PRECONDITION' | 'INVALID_ARGUMENT';

function err(code: ThinError['code'], grpc: Grpc, message: string): ThinError {
  return new ThinError(code, message, { grpc });
}

export const notFound = (m: string) => err('DEV_MISSING', 'NOT_FOUND', m);
export const alreadyExists = (m: string) => err('DEV_EXISTS', 'ALREADY_EXISTS', m);
export const precondition = (m: string) => err('DEV_BUSY', 'FAILED_PRECONDITION', m);
export const invalid = (m: string) => err('EINVAL_ARG', 'INVALID_ARGUMENT', m);

const BY_CODE: Partial<Record<ThinError['code'], status>> = {
  DEV_MISSING: status.NOT_FOUND,
  DEV_EXISTS: status.ALREADY_EXISTS,
  DEV_BUSY: status.FAILED_PRECONDITION,
  EINVAL_ARG: status.INVALID_ARGUMENT,
  NO_DATA_SPACE: status.RESOURCE_EXHAUSTED,
  NO_METADATA_SPACE: status.RESOURCE_EXHAUSTED,
  NOT_SUPPORTED: status.UNIMPLEMENTED,
};

/** The gRPC status and one-line message for an error thrown by a handler. */
export function grpcError(e: unknown): { code: status; details: string } {
  const line = (s: string) => s.split('\n')[0]!;
  if (e instanceof ThinError) {
    const named = e.data.grpc as Grpc | undefined;
    return { code: named ? status[named] : BY_CODE[e.code] ?? status.UNKNOWN, details: line(e.message) };
  }
  return { code: status.UNKNOWN, details: line(e instanceof Error ? e.message : String(e)) };
}
