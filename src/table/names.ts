import { randomBytes, createHash } from 'node:crypto';
import { PtthError } from '../http/errors.js';
import { targetQuery } from '../shared/target.js';

/** One DNS label (RFC 1034 / RFC 1123 section 2.1): letters, digits, hyphen; 1-63; no hyphen at either end. */
const LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
/** Visible ASCII, no spaces (a token travels in query strings, forms and headers). */
const TOKEN = /^[\x21-\x7e]{1,256}$/;

/** Validates a claimed name and returns it lower-cased, or throws PTTH_ERR_BAD_NAME. */
export function normalizeName(raw: string): string {
  const name = raw.toLowerCase();
  if (!LABEL.test(name)) {
    throw new PtthError('PTTH_ERR_BAD_NAME', `${JSON.stringify(raw.slice(0, 80))} is not a valid name: ${ERR_NAME}`);
  }
  return name;
}
const ERR_NAME =
  'a name must be one DNS label, 1 to 63 letters, digits or hyphens, not starting or ending with a hyphen.';

/**
 * The name a claim asks for, for log lines about it (refusals included): the query's (or form's)
 * `name`, lower-cased, when it is a valid name; undefined otherwise (never throws).
 */
export function loggableName(raw: string | null | undefined): string | undefined {
  if (raw === null || raw === undefined) return undefined;
  const name = raw.toLowerCase();
  return LABEL.test(name) ? name : undefined;
}

/** `loggableName` of the `name` in a request target's query string. */
export function queryName(url: string | undefined): string | undefined {
  if (url === undefined || !url.includes('?')) return undefined;
  try {
    return loggableName(new URLSearchParams(targetQuery(url)).get('name'));
  } catch {
    return undefined;
  }
}

export function validateToken(raw: string): string {
  if (!TOKEN.test(raw)) throw new PtthError('PTTH_ERR_BAD_TOKEN');
  return raw;
}

/** Parses a lease in whole seconds and clamps it to `max`. */
export function parseLease(raw: string, max: number): number {
  if (!/^\d{1,10}$/.test(raw)) {
    throw new PtthError(
      'PTTH_ERR_BAD_LEASE',
      `${JSON.stringify(raw.slice(0, 40))} is not a valid lease: it must be a whole number of seconds, 0 or more.`,
    );
  }
  return Math.min(Number(raw), max);
}

const ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';

/** A random label: 12 characters of [a-z0-9] (62 bits), starting with a letter. */
export function randomName(): string {
  const bytes = randomBytes(12);
  let out = ALPHABET[(bytes[0] as number) % 26] as string;
  for (let i = 1; i < 12; i++) out += ALPHABET[(bytes[i] as number) % 36];
  return out;
}

/** The token of a name claimed without one (nobody knows it: only its holder's address reclaims). */
export function madeUpToken(): string {
  return randomSecret(128);
}

/** A secret with `bits` of randomness, URL-safe. */
export function randomSecret(bits = 192): string {
  return randomBytes(Math.ceil(bits / 8)).toString('base64url');
}

/**
 * The key under which a capability (private id, Comet session) is looked up in a Map. A Map
 * compares strings with an early exit, so keying it by the secret itself would let response times
 * reveal how much of a guess matched. Keyed by a hash, the timing only says something about the
 * hash of the guess, which says nothing about any stored secret.
 */
export function lookupKey(secret: string): string {
  return createHash('sha256').update(secret).digest('base64url');
}

/** What is kept of a token: its SHA-256 (base64url), compared in constant time (Registration.tokenMatches). */
export function tokenHash(token: string): string {
  return createHash('sha256').update(token).digest('base64url');
}

export interface ClaimParams {
  /** Lower-cased, validated name; absent: the table assigns one. */
  readonly name?: string | undefined;
  readonly token?: string | undefined;
  /**
   * The claimant's address key (ratelimit.ts addressKey) when it sent no token: a tokenless name is
   * held by that address (src/table/registration.ts, Registration.holder). Absent: the name gets a
   * random token no one knows (a claim whose address is unknown).
   */
  readonly holder?: string | undefined;
  /** Seconds, already clamped. */
  readonly lease?: number | undefined;
  /** The access key the claim was authorized under (src/table/access.ts); absent on an open gateway. */
  readonly keyId?: string | undefined;
  /** Names the key may hold at once (429 PTTH_ERR_KEY_NAMES past it). */
  readonly maxNames?: number | undefined;
  /** Makes up a name when none was asked for (default `randomName`): keeps reserved names and key prefixes right. */
  readonly pickName?: (() => string) | undefined;
}

/** Reads `name`, `token` and `lease` from URL search params (query string or form body). */
export function readClaimParams(params: URLSearchParams, maxLease: number): ClaimParams {
  const name = params.get('name');
  const token = params.get('token');
  const lease = params.get('lease');
  return {
    name: name === null || name === '' ? undefined : normalizeName(name),
    token: token === null || token === '' ? undefined : validateToken(token),
    lease: lease === null || lease === '' ? undefined : parseLease(lease, maxLease),
  };
}
