import { isIPv6 } from 'node:net';

/** Requests allowed per client address: `rate` per second on average, bursts of `burst`. */
export interface RateSpec {
  readonly rate: number;
  readonly burst: number;
}

interface Bucket {
  tokens: number;
  last: number;
}

/**
 * Token buckets per client address, for claims and for visitor requests (issue 5: 429 with
 * `Retry-After`). IPv6 addresses count per /64, since one host usually holds a whole /64 and could
 * otherwise rotate addresses to dodge the limit.
 *
 * Memory is bounded: buckets that have refilled completely carry no state worth keeping and are
 * swept, and past `maxAddresses` the oldest bucket is dropped (a Map iterates in insertion order,
 * and each take re-inserts its bucket at the end).
 */
export class RateLimiter {
  readonly #rate: number;
  readonly #burst: number;
  readonly #max: number;
  #buckets = new Map<string, Bucket>();
  #sweptAt = 0;
  #exempt: ((address: string) => boolean) | undefined;

  constructor(spec: RateSpec, maxAddresses = 100_000) {
    if (!(spec.rate > 0) || !Number.isFinite(spec.rate)) throw new TypeError(`rate must be a number > 0, got ${String(spec.rate)}`);
    if (!(spec.burst >= 1) || !Number.isFinite(spec.burst)) throw new TypeError(`burst must be a number >= 1, got ${String(spec.burst)}`);
    this.#rate = spec.rate;
    this.#burst = spec.burst;
    this.#max = maxAddresses;
  }

  /** Addresses for which take() always allows, e.g. loopback. */
  exempt(test: (address: string) => boolean): void {
    this.#exempt = test;
  }

  /** Addresses currently tracked (for tests and metrics). */
  get size(): number {
    return this.#buckets.size;
  }

  /**
   * Takes one token for `address`. Returns 0 when allowed, otherwise the whole seconds after which
   * a token will be there (for `Retry-After`).
   */
  take(address: string | undefined, now = performance.now()): number {
    if (address !== undefined && this.#exempt?.(address) === true) return 0;
    const key = addressKey(address);
    let b = this.#buckets.get(key);
    if (b === undefined) {
      if (this.#buckets.size >= this.#max) this.#sweep(now, true);
      b = { tokens: this.#burst, last: now };
    } else {
      this.#buckets.delete(key);
      b.tokens = Math.min(this.#burst, b.tokens + ((now - b.last) / 1000) * this.#rate);
      b.last = now;
    }
    this.#buckets.set(key, b);
    if (now - this.#sweptAt > 10_000) this.#sweep(now, false);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return Math.max(1, Math.ceil((1 - b.tokens) / this.#rate));
  }

  /** Drops buckets that are full again; when `force`, also the oldest one to make room. */
  #sweep(now: number, force: boolean): void {
    this.#sweptAt = now;
    const full = (this.#burst / this.#rate) * 1000;
    for (const [key, b] of this.#buckets) {
      if (now - b.last >= full) this.#buckets.delete(key);
    }
    if (force && this.#buckets.size >= this.#max) {
      const oldest = this.#buckets.keys().next();
      if (oldest.done !== true) this.#buckets.delete(oldest.value);
    }
  }
}

/** `::ffff:1.2.3.4` counts as 1.2.3.4; other IPv6 addresses count per /64. */
export function addressKey(address: string | undefined): string {
  if (!address) return '';
  if (address.startsWith('::ffff:') && address.includes('.')) return address.slice(7);
  if (!isIPv6(address)) return address;
  const [head = '', tail = ''] = address.split('::');
  const left = head === '' ? [] : head.split(':');
  const right = tail === '' ? [] : tail.split(':');
  const groups = address.includes('::') ? [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right] : left;
  return `${groups
    .slice(0, 4)
    .map((g) => g.toLowerCase().replace(/^0+(?=.)/, ''))
    .join(':')}::/64`;
}

/**
 * Parses `N/s`, `N/m` or `N/h` (optionally `N/m:B` for a burst of B; default burst N) into a
 * RateSpec; `0` or `off` turns the limit off (undefined).
 */
export function parseRate(text: string): RateSpec | undefined {
  const t = text.trim().toLowerCase();
  if (t === '0' || t === 'off') return undefined;
  const m = /^(\d+(?:\.\d+)?)\s*\/\s*(s|sec|second|m|min|minute|h|hour)(?::(\d+))?$/.exec(t);
  if (!m) throw new TypeError(`expected a rate like 60/m, 10/s or 1000/h (optionally :BURST), or 0 for no limit; got ${JSON.stringify(text)}`);
  const n = Number(m[1]);
  if (!(n > 0)) throw new TypeError(`a rate must be more than 0 (use 0 or off for no limit), got ${JSON.stringify(text)}`);
  const unit = m[2] as string;
  const per = unit.startsWith('s') ? 1 : unit.startsWith('m') ? 60 : 3600;
  const burst = m[3] === undefined ? Math.max(1, n) : Number(m[3]);
  if (!(burst >= 1)) throw new TypeError(`a burst must be 1 or more, got ${JSON.stringify(text)}`);
  return { rate: n / per, burst };
}
