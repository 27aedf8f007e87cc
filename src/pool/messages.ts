import { ThinError } from '../base/errors.js';
import { type DevId, MAX_DEV_ID } from '../base/units.js';

// dm-thin's pool message grammar (dm-thin.c, pool_message): names are
// case-insensitive, argument counts exact, ids decimal and at most 2^24-1.

export type PoolMessage =
  | { kind: 'create_thin'; dev: DevId }
  | { kind: 'create_snap'; dev: DevId; origin: DevId }
  | { kind: 'delete'; dev: DevId }
  | { kind: 'set_transaction_id'; current: bigint; next: bigint }
  | { kind: 'reserve_metadata_snap' }
  | { kind: 'release_metadata_snap' };

const ARITY: Record<PoolMessage['kind'], number> = {
  create_thin: 1,
  create_snap: 2,
  delete: 1,
  set_transaction_id: 2,
  reserve_metadata_snap: 0,
  release_metadata_snap: 0,
};

function parseDevId(s: string): DevId {
  if (!/^\d+$/.test(s) || Number(s) > MAX_DEV_ID) {
    throw new ThinError('BAD_MESSAGE', `invalid device id '${s}': use a decimal number from 0 to ${MAX_DEV_ID}`);
  }
  return Number(s) as DevId;
}

function parseU64(s: string): bigint {
  if (!/^\d+$/.test(s) || BigInt(s) >= 2n ** 64n) {
    throw new ThinError('BAD_MESSAGE', `invalid transaction id '${s}': use a decimal number below 2^64`);
  }
  return BigInt(s);
}

export function parseMessage(text: string): PoolMessage {
  const words = text.trim().split(/\s+/).filter((w) => w !== '');
  const name = (words[0] ?? '').toLowerCase();
  if (!(name in ARITY)) {
    throw new ThinError('UNKNOWN_MESSAGE', `unrecognised thin pool message '${words[0] ?? ''}'; known: ${Object.keys(ARITY).join(', ')}`);
  }
  const kind = name as PoolMessage['kind'];
  const args = words.slice(1);
  if (args.length !== ARITY[kind]) {
    throw new ThinError('BAD_MESSAGE', `message ${kind} received with ${args.length} arguments instead of ${ARITY[kind]}`);
  }
  switch (kind) {
    case 'create_thin':
    case 'delete':
      return { kind, dev: parseDevId(args[0]!) };
    case 'create_snap':
      return { kind, dev: parseDevId(args[0]!), origin: parseDevId(args[1]!) };
    case 'set_transaction_id':
      return { kind, current: parseU64(args[0]!), next: parseU64(args[1]!) };
    default:
      return { kind } as PoolMessage;
  }
}
