// KeyedLock, the per-block lock (the bio prison's role): acquire queues per
// key, tryAcquire takes a free key without waiting and is honoured by the
// acquirers that come after it.
import test from 'ava';
import { KeyedLock } from '../src/base/keyed-lock.js';

test('acquire runs holders of one key one after another, other keys at once', async (t) => {
  const lock = new KeyedLock();
  const order: string[] = [];
  const hold = async (key: string, name: string, ms: number) => {
    const release = await lock.acquire(key);
    order.push(`${name}+`);
    await new Promise((r) => setTimeout(r, ms));
    order.push(`${name}-`);
    release();
  };
  await Promise.all([hold('a', 'a1', 20), hold('a', 'a2', 1), hold('b', 'b1', 5)]);
  t.deepEqual(order.filter((o) => o.startsWith('a')), ['a1+', 'a1-', 'a2+', 'a2-']);
  t.true(order.indexOf('b1+') < order.indexOf('a1-'), 'another key does not wait');
  t.false(lock.isHeld('a'));
  t.is(lock.size, 0);
});

test('tryAcquire takes a free key at once, refuses a held one, and later acquirers wait for it', async (t) => {
  const lock = new KeyedLock();
  const release = lock.tryAcquire('k');
  t.truthy(release);
  t.true(lock.isHeld('k'));
  t.is(lock.tryAcquire('k'), undefined, 'a held key is not taken again');
  let got = false;
  const waiter = lock.acquire('k').then((r) => {
    got = true;
    r();
  });
  await new Promise((r) => setTimeout(r, 10));
  t.false(got, 'acquire waits for the tryAcquire holder');
  release!();
  await waiter;
  t.true(got);
  t.false(lock.isHeld('k'));
  const again = lock.tryAcquire('k');
  t.truthy(again, 'free again after both released');
  again!();
});
