/**
 * RateLimiter (token buckets per client address), addressKey and parseRate, with injected time:
 * every `take` gets an explicit `now` in milliseconds, so nothing here waits on a real clock.
 */
import { describe, expect, it } from 'vitest';
import { addressKey, parseRate, RateLimiter } from '../../src/gateway/ratelimit.js';

describe('RateLimiter', () => {
  it('allows a burst, then refuses with the seconds until the next token', () => {
    const rl = new RateLimiter({ rate: 1, burst: 3 });
    expect([rl.take('10.0.0.1', 0), rl.take('10.0.0.1', 0), rl.take('10.0.0.1', 0)]).toEqual([0, 0, 0]);
    expect(rl.take('10.0.0.1', 0)).toBe(1);
    // Refused takes cost nothing: still one second to wait.
    expect(rl.take('10.0.0.1', 0)).toBe(1);
  });

  it('refills over time at the configured rate, never past the burst', () => {
    const rl = new RateLimiter({ rate: 2, burst: 4 });
    for (let i = 0; i < 4; i++) expect(rl.take('a', 0)).toBe(0);
    expect(rl.take('a', 0)).toBe(1);
    // 500 ms at 2/s is one token.
    expect(rl.take('a', 500)).toBe(0);
    expect(rl.take('a', 500)).toBe(1);
    // An hour later the bucket holds the burst (4), not 7200 tokens.
    const later = 3_600_000;
    for (let i = 0; i < 4; i++) expect(rl.take('a', later)).toBe(0);
    expect(rl.take('a', later)).toBeGreaterThan(0);
  });

  it('a partial token is kept: 250 ms twice at 2/s makes one', () => {
    const rl = new RateLimiter({ rate: 2, burst: 1 });
    expect(rl.take('a', 0)).toBe(0);
    expect(rl.take('a', 250)).toBe(1);
    expect(rl.take('a', 500)).toBe(0);
  });

  it.each([
    // [rate per second, burst, ms since the bucket emptied, expected Retry-After]
    [1 / 60, 1, 0, 60], // 1/m: a whole minute
    [1 / 60, 1, 30_000, 30],
    [1 / 60, 1, 59_001, 1],
    [1, 5, 0, 1], // 60/m
    [10, 20, 0, 1], // fast rates still say at least 1 s
    [7 / 60, 1, 0, 9], // 7/m: 8.57 s rounds up, never down
    [1 / 3600, 1, 0, 3600], // 1/h
  ])('Retry-After for rate %f/s burst %i, %i ms after emptying, is %i s', (rate, burst, after, expected) => {
    const rl = new RateLimiter({ rate, burst });
    for (let i = 0; i < burst; i++) expect(rl.take('a', 1000)).toBe(0);
    expect(rl.take('a', 1000 + after)).toBe(expected);
  });

  it('the wait it announces is enough: a take after Retry-After seconds succeeds, one just before does not', () => {
    const rl = new RateLimiter({ rate: 1 / 60, burst: 2 });
    rl.take('a', 0);
    rl.take('a', 0);
    const wait = rl.take('a', 0);
    expect(wait).toBe(60);
    expect(rl.take('a', wait * 1000 - 1)).toBe(1);
    expect(rl.take('a', wait * 1000)).toBe(0);
  });

  it('keeps separate buckets per address', () => {
    const rl = new RateLimiter({ rate: 1, burst: 1 });
    expect(rl.take('10.0.0.1', 0)).toBe(0);
    expect(rl.take('10.0.0.1', 0)).toBe(1);
    expect(rl.take('10.0.0.2', 0)).toBe(0);
    expect(rl.size).toBe(2);
  });

  it('counts IPv6 addresses per /64, and ::ffff:-mapped IPv4 as the IPv4 address', () => {
    const rl = new RateLimiter({ rate: 1, burst: 2 });
    expect(rl.take('2001:db8:1:2::1', 0)).toBe(0);
    expect(rl.take('2001:db8:1:2:ffff:ffff:ffff:ffff', 0)).toBe(0);
    // Same /64 in another spelling: out of tokens.
    expect(rl.take('2001:0DB8:0001:0002:0:0:0:3', 0)).toBe(1);
    // The neighbouring /64 is someone else.
    expect(rl.take('2001:db8:1:3::1', 0)).toBe(0);
    expect(rl.take('192.0.2.7', 0)).toBe(0);
    expect(rl.take('::ffff:192.0.2.7', 0)).toBe(0);
    expect(rl.take('192.0.2.7', 0)).toBe(1);
    expect(rl.size).toBe(3);
  });

  it('exempt addresses are never limited nor tracked', () => {
    const rl = new RateLimiter({ rate: 1, burst: 1 });
    rl.exempt((a) => a.startsWith('127.'));
    for (let i = 0; i < 100; i++) expect(rl.take('127.0.0.1', 0)).toBe(0);
    expect(rl.size).toBe(0);
    expect(rl.take('10.0.0.1', 0)).toBe(0);
    expect(rl.take('10.0.0.1', 0)).toBe(1);
  });

  it('an unknown address (a socket already gone) shares one bucket rather than escaping the limit', () => {
    const rl = new RateLimiter({ rate: 1, burst: 1 });
    expect(rl.take(undefined, 0)).toBe(0);
    expect(rl.take(undefined, 0)).toBe(1);
    expect(rl.take('', 0)).toBe(1);
  });

  it('memory is bounded: never more than maxAddresses buckets, the least recently used dropped first', () => {
    const rl = new RateLimiter({ rate: 1, burst: 1 }, 5);
    for (let i = 0; i < 50; i++) {
      expect(rl.take(`10.0.0.${i}`, i)).toBe(0);
      expect(rl.size).toBeLessThanOrEqual(5);
    }
    expect(rl.size).toBe(5);
    // The last five are still tracked (and out of tokens); an early one was forgotten (a fresh bucket).
    expect(rl.take('10.0.0.49', 50)).toBe(1);
    expect(rl.take('10.0.0.45', 50)).toBe(1);
    expect(rl.take('10.0.0.0', 50)).toBe(0);
  });

  it('a recently used address survives a flood of new ones longer than idle ones', () => {
    const rl = new RateLimiter({ rate: 0.001, burst: 1 }, 3);
    rl.take('keep', 0);
    rl.take('b', 0);
    rl.take('c', 0);
    rl.take('keep', 1); // used again: now the newest
    rl.take('d', 2); // evicts b, the least recently used
    expect(rl.take('keep', 3)).toBeGreaterThan(0);
    expect(rl.take('b', 3)).toBe(0);
  });

  it('sweeps buckets that have refilled completely: idle addresses cost no memory', () => {
    const rl = new RateLimiter({ rate: 1, burst: 2 });
    for (let i = 0; i < 100; i++) rl.take(`10.0.1.${i}`, 0);
    expect(rl.size).toBe(100);
    // Full again after 2 s; the periodic sweep runs at most every 10 s, on a take.
    rl.take('10.9.9.9', 10_001);
    expect(rl.size).toBe(1);
  });

  it('the sweep keeps buckets still refilling', () => {
    const rl = new RateLimiter({ rate: 1 / 60, burst: 1 });
    rl.take('a', 0);
    rl.take('b', 10_001); // a needs 60 s to refill: kept, and still limited
    expect(rl.size).toBe(2);
    expect(rl.take('a', 10_002)).toBeGreaterThan(0);
  });

  it('when full, a new address first sweeps refilled buckets rather than evicting a limited one', () => {
    const rl = new RateLimiter({ rate: 1, burst: 1 }, 3);
    rl.take('old1', 0);
    rl.take('old2', 0);
    rl.take('busy', 5_000); // empty at 5 s, refilled at 6 s
    rl.take('new', 5_500); // old1 and old2 are full again (refilled after 1 s): both swept
    expect(rl.size).toBe(2);
    expect(rl.take('busy', 5_500)).toBe(1);
  });

  it('a clock that steps back takes no tokens away', () => {
    const rl = new RateLimiter({ rate: 1, burst: 2 });
    expect(rl.take('a', 10_000)).toBe(0);
    expect(rl.take('a', 5_000)).toBe(0);
    expect(rl.take('a', 5_000)).toBe(1);
    expect(rl.take('a', 11_000)).toBe(0);
  });

  it('uses the real clock by default', () => {
    const rl = new RateLimiter({ rate: 0.001, burst: 1 });
    expect(rl.take('a')).toBe(0);
    expect(rl.take('a')).toBeGreaterThan(900);
  });

  it.each([
    [{ rate: 0, burst: 1 }],
    [{ rate: -1, burst: 1 }],
    [{ rate: Number.NaN, burst: 1 }],
    [{ rate: Number.POSITIVE_INFINITY, burst: 1 }],
    [{ rate: 1, burst: 0 }],
    [{ rate: 1, burst: Number.NaN }],
  ])('refuses a nonsensical spec %o', (spec) => {
    expect(() => new RateLimiter(spec)).toThrow(TypeError);
  });
});

describe('addressKey', () => {
  it.each([
    ['192.0.2.1', '192.0.2.1'],
    ['::ffff:192.0.2.1', '192.0.2.1'],
    ['::FFFF:192.0.2.1', '192.0.2.1'],
    ['0:0:0:0:0:ffff:c000:201', '192.0.2.1'],
    ['::ffff:7f00:1', '127.0.0.1'],
    ['2001:db8::1', '2001:db8:0:0::/64'],
    ['2001:DB8:0:0:1::', '2001:db8:0:0::/64'],
    ['2001:0db8:0000:0000:dead:beef:0:1', '2001:db8:0:0::/64'],
    ['2001:db8:aa:bb:1:2:3:4', '2001:db8:aa:bb::/64'],
    ['::1', '0:0:0:0::/64'],
    ['::', '0:0:0:0::/64'],
    ['fe80::1%eth0', 'fe80:0:0:0::/64'],
    // An embedded dotted quad is two groups: the /64 before it must still be right.
    ['1::2:3:4:5:192.0.2.1', '1:0:2:3::/64'],
    ['64:ff9b::192.0.2.1', '64:ff9b:0:0::/64'],
    ['', ''],
    [undefined, ''],
  ])('%s -> %s', (address, key) => {
    expect(addressKey(address)).toBe(key);
  });
});

describe('parseRate', () => {
  it.each([
    ['60/m', { rate: 1, burst: 60 }],
    ['60/min', { rate: 1, burst: 60 }],
    ['60/minute', { rate: 1, burst: 60 }],
    ['10/s', { rate: 10, burst: 10 }],
    ['10/sec', { rate: 10, burst: 10 }],
    ['10/second', { rate: 10, burst: 10 }],
    ['3600/h', { rate: 1, burst: 3600 }],
    ['3600/hour', { rate: 1, burst: 3600 }],
    ['10/s:20', { rate: 10, burst: 20 }],
    ['100/s:400', { rate: 100, burst: 400 }],
    ['1/m:1', { rate: 1 / 60, burst: 1 }],
    ['0.5/s', { rate: 0.5, burst: 1 }],
    [' 30 / M ', { rate: 0.5, burst: 30 }],
  ])('%j -> %o', (text, spec) => {
    expect(parseRate(text)).toEqual(spec);
  });

  it.each(['0', 'off', 'OFF', ' 0 '])('%j turns the limit off', (text) => {
    expect(parseRate(text)).toBeUndefined();
  });

  it.each([
    '',
    '60',
    '60/d',
    '/m',
    '-1/s',
    '0/s',
    '0.0/m',
    '1e3/s',
    '10/s:0',
    '10/s:1.5',
    '10/s:',
    'ten/s',
    '10 per second',
    '10/s:20:30',
  ])('refuses %j with a message that shows the expected form', (text) => {
    expect(() => parseRate(text)).toThrow(TypeError);
    expect(() => parseRate(text)).toThrow(/60\/m|more than 0|burst/);
  });
});
