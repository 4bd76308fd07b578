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
 * Token buckets per client address, for claims and for visitor requests: an address past its
 * rate gets 429 with `Retry-After` rather than the capacity every other client shares. IPv6
 * addresses count per /64, since one host usually holds a whole /64 and could otherwise rotate
 * addresses to dodge the limit.
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
    if (!(spec.rate > 0) || !Number.isFinite(spec.rate))
      throw new TypeError(`rate must be a number > 0, got ${String(spec.rate)}`);
    if (!(spec.burst >= 1) || !Number.isFinite(spec.burst))
      throw new TypeError(`burst must be a number >= 1, got ${String(spec.burst)}`);
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
      // A clock that steps back (only injected times can) must not take tokens away.
      const elapsed = Math.max(0, now - b.last);
      b.tokens = Math.min(this.#burst, b.tokens + (elapsed / 1000) * this.#rate);
      b.last = Math.max(b.last, now);
    }
    this.#buckets.set(key, b);
    if (now - this.#sweptAt > 10_000) this.#sweep(now, false);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return Math.max(1, Math.ceil((1 - b.tokens) / this.#rate));
  }

  /**
   * Drops buckets that are full again; when `force`, also the oldest one to make room. The Map is
   * in order of last use, so the full buckets are a prefix of it: the sweep stops at the first one
   * still in use, and a flood of new addresses against a full table costs O(1) each, not a scan.
   */
  #sweep(now: number, force: boolean): void {
    this.#sweptAt = now;
    const full = (this.#burst / this.#rate) * 1000;
    for (const [key, b] of this.#buckets) {
      if (now - b.last < full) break;
      this.#buckets.delete(key);
    }
    if (force && this.#buckets.size >= this.#max) {
      const oldest = this.#buckets.keys().next();
      if (oldest.done !== true) this.#buckets.delete(oldest.value);
    }
  }
}

/**
 * The bucket key of a client address: IPv4 addresses as they are, IPv4-mapped IPv6 addresses
 * (`::ffff:1.2.3.4`, in any spelling) as their IPv4 address, other IPv6 addresses as their /64
 * (`2001:db8:0:1::/64`), whatever their spelling (case, leading zeros, `::`, a zone id or an
 * embedded dotted quad).
 */
export function addressKey(address: string | undefined): string {
  if (!address) return '';
  const a = address.toLowerCase().replace(/%.*$/, '');
  if (!isIPv6(a)) return a;
  const g = ipv6Groups(a);
  if (g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0xffff) {
    const [hi = 0, lo = 0] = g.slice(6);
    return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  }
  return `${g
    .slice(0, 4)
    .map((x) => x.toString(16))
    .join(':')}::/64`;
}

/** The eight 16-bit groups of a valid IPv6 address (without zone id). */
function ipv6Groups(address: string): number[] {
  const side = (text: string): number[] => {
    if (text === '') return [];
    const out: number[] = [];
    for (const part of text.split(':')) {
      if (part.includes('.')) {
        // An embedded IPv4 address is the last 32 bits: two groups.
        const [a = 0, b = 0, c = 0, d = 0] = part.split('.').map(Number);
        out.push((a << 8) | b, (c << 8) | d);
      } else {
        out.push(parseInt(part, 16));
      }
    }
    return out;
  };
  const gap = address.indexOf('::');
  if (gap === -1) return side(address);
  const left = side(address.slice(0, gap));
  const right = side(address.slice(gap + 2));
  return [...left, ...Array<number>(8 - left.length - right.length).fill(0), ...right];
}

/**
 * Parses `N/s`, `N/m` or `N/h` (optionally `N/m:B` for a burst of B; default burst N) into a
 * RateSpec; `0` or `off` turns the limit off (undefined).
 */
export function parseRate(text: string): RateSpec | undefined {
  const t = text.trim().toLowerCase();
  if (t === '0' || t === 'off') return undefined;
  const m = /^(\d+(?:\.\d+)?)\s*\/\s*(s|sec|second|m|min|minute|h|hour)(?::(\d+))?$/.exec(t);
  if (!m)
    throw new TypeError(
      `expected a rate like 60/m, 10/s or 1000/h (optionally :BURST), or 0 for no limit; got ${JSON.stringify(text)}`,
    );
  const n = Number(m[1]);
  if (!(n > 0))
    throw new TypeError(`a rate must be more than 0 (use 0 or off for no limit), got ${JSON.stringify(text)}`);
  const unit = m[2] as string;
  const per = unit.startsWith('s') ? 1 : unit.startsWith('m') ? 60 : 3600;
  const burst = m[3] === undefined ? Math.max(1, n) : Number(m[3]);
  if (!(burst >= 1)) throw new TypeError(`a burst must be 1 or more, got ${JSON.stringify(text)}`);
  return { rate: n / per, burst };
}

/** 127.0.0.0/8, ::1 and IPv4-mapped loopback: this machine. */
export function isLoopback(address: string): boolean {
  return address === '::1' || address.startsWith('127.') || address.startsWith('::ffff:127.');
}
