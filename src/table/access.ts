import { createHash, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { PtthError } from '../http/errors.js';
import { randomName, type ClaimParams } from './names.js';
import type { ChannelLimits, ClaimLease, RouteTable } from './table.js';
import type { Registration } from './registration.js';
import { errorMessage } from '../shared/errormessage.js';
import { parseRelayPattern, type RelayPattern } from '../http/relay-policy.js';

/**
 * Who may claim what: access keys with name patterns and limits, and reserved names.
 *
 * Keys are stored as the SHA-256 of the key only. A plain hash (no salt, no slow KDF) is enough
 * because keys are made by `generateKey()` with 192 random bits: nothing to brute-force or look up
 * in a table, unlike passwords. It also makes lookups constant-time with respect to the key: the
 * table is keyed by the hash, so a timing difference tells an attacker about the hash of the key
 * they sent, never about a stored key.
 *
 * Without keys the gateway is open (first come, first served, names held by tokens); reserved
 * names apply either way.
 */

/** One entry of the `keys` array of the access file. */
export interface AccessKey {
  /** Names the key in logs and events; not a secret. */
  readonly id: string;
  /** SHA-256 of the key, 64 hex digits (`ptth-proxy key` prints it). */
  readonly sha256: string;
  /** Patterns of names the key may claim: `*`, a prefix such as `team-*`, or an exact name. */
  readonly names: readonly string[];
  /** Names the key may hold at once (default unlimited; 429 past it). */
  readonly maxNames?: number | undefined;
  /** Channels the key may hold at once across all its names (default unlimited; 429 past it). */
  readonly maxChannels?: number | undefined;
  /**
   * Targets the RelayHttp endpoint (`serve --relay`) may reach for this key: `host[:port]`
   * patterns, `*.` allowed as a prefix (docs/PROTOCOL.md section 10). Absent: none.
   */
  readonly relay?: readonly string[] | undefined;
}

/** The access file (`--keys FILE`) or `PTTH_KEYS`, as JSON. */
export interface AccessConfig {
  /** Absent: the gateway is open. Present (even empty): every claim needs one of these keys. */
  readonly keys?: readonly AccessKey[] | undefined;
  /** Names (or `prefix-*` patterns) nobody may claim, with or without a key. */
  readonly reserved?: readonly string[] | undefined;
}

/** A bad access configuration: the message names the source and the offending entry. */
export class AccessConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AccessConfigError';
  }
}

/** What a claim was allowed under: the key (if any), its limits, and how to pick a random name. */
export interface Grant {
  /** The key's id, or undefined on an open gateway. */
  readonly keyId: string | undefined;
  readonly maxNames: number | undefined;
  readonly maxChannels: number | undefined;
  /** Picks a name for a claim that named none (undefined: the table's own random names). */
  readonly pickName: (() => string) | undefined;
}

/** A compiled pattern: `*` (any), `prefix*`, or an exact name. */
interface Pattern {
  readonly source: string;
  readonly kind: 'any' | 'prefix' | 'exact';
  readonly value: string;
}

interface CompiledKey {
  readonly id: string;
  readonly patterns: readonly Pattern[];
  readonly relay: readonly RelayPattern[];
  readonly maxNames: number | undefined;
  readonly maxChannels: number | undefined;
}

interface Compiled {
  readonly config: AccessConfig;
  /** sha256 hex -> key; undefined when no keys are configured (open gateway). */
  readonly keys: Map<string, CompiledKey> | undefined;
  /** Key id -> key, for the limits of registrations made under it. */
  readonly byId: Map<string, CompiledKey>;
  readonly reserved: readonly Pattern[];
}

const LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
/** A prefix pattern's prefix: the start of a label (it may end with a hyphen, as in `team-*`). */
const PREFIX = /^[a-z0-9][a-z0-9-]{0,61}$/;
const KEY_ID = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;
const SHA256_HEX = /^[0-9a-fA-F]{64}$/;
/** Random characters a prefix-picked name gets at least (41 bits: collisions stay rare). */
const MIN_SUFFIX = 8;

/** SHA-256 of a key, hex: what the access file stores. */
export function hashKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

/** A new access key: `ptth_` and 192 random bits (base64url), with the hash for the access file. */
export function generateKey(): { key: string; sha256: string } {
  const key = `ptth_${randomBytes(24).toString('base64url')}`;
  return { key, sha256: hashKey(key) };
}

/**
 * A new key and its entry for the access file (`ptth-proxy key`). `names` defaults to `["*"]`, the
 * id to `key-` and 8 random hex digits. Throws AccessConfigError for a bad id, pattern or limit.
 */
export function createKeyEntry(
  options: {
    id?: string | undefined;
    names?: readonly string[] | undefined;
    maxNames?: number | undefined;
    maxChannels?: number | undefined;
  } = {},
): {
  key: string;
  entry: AccessKey;
} {
  const { key, sha256 } = generateKey();
  const raw = {
    id: options.id ?? `key-${randomBytes(4).toString('hex')}`,
    sha256,
    names: options.names ?? ['*'],
    ...(options.maxNames === undefined ? {} : { maxNames: options.maxNames }),
    ...(options.maxChannels === undefined ? {} : { maxChannels: options.maxChannels }),
  };
  const entry = validateAccessConfig({ keys: [raw] }, 'new key').keys?.[0] as AccessKey;
  return { key, entry };
}

/** The key in `Authorization: Bearer <key>` (RFC 6750 section 2.1; the scheme is case-insensitive). */
export function bearerKey(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const m = /^Bearer[ \t]+([\x21-\x7e]+)[ \t]*$/i.exec(header);
  return m ? m[1] : undefined;
}

function quoted(value: unknown): string {
  const s = JSON.stringify(value);
  return s === undefined ? String(value) : s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function compilePattern(raw: unknown, where: string, allowAny: boolean): Pattern {
  if (typeof raw !== 'string') throw new AccessConfigError(`${where}: a pattern must be a string, got ${quoted(raw)}`);
  const p = raw.toLowerCase();
  if (p === '*') {
    if (!allowAny) throw new AccessConfigError(`${where}: "*" would reserve every name`);
    return { source: p, kind: 'any', value: '' };
  }
  if (p.endsWith('*')) {
    const prefix = p.slice(0, -1);
    if (!PREFIX.test(prefix)) {
      throw new AccessConfigError(
        `${where}: ${quoted(raw)} is not a valid pattern: a prefix pattern is the start of a name (letters, digits, hyphens) followed by one "*", e.g. "team-*"`,
      );
    }
    return { source: p, kind: 'prefix', value: prefix };
  }
  if (!LABEL.test(p)) {
    throw new AccessConfigError(
      `${where}: ${quoted(raw)} is not a valid name or pattern: use "*", a prefix such as "team-*", or one DNS label (1 to 63 letters, digits or hyphens, not starting or ending with a hyphen)`,
    );
  }
  return { source: p, kind: 'exact', value: p };
}

function matches(patterns: readonly Pattern[], name: string): boolean {
  for (const p of patterns) {
    if (p.kind === 'any' || (p.kind === 'exact' ? name === p.value : name.startsWith(p.value))) return true;
  }
  return false;
}

function limit(entry: Record<string, unknown>, field: string, where: string): number | undefined {
  const v = entry[field];
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) {
    throw new AccessConfigError(
      `${where}: ${field} must be a whole number >= 1 (leave it out for no limit), got ${quoted(v)}`,
    );
  }
  return v;
}

const KEY_FIELDS = new Set(['id', 'sha256', 'names', 'maxNames', 'maxChannels', 'relay']);
const TOP_FIELDS = new Set(['keys', 'reserved']);

/** A key's `relay` array: `host[:port]` patterns (src/http/relay-policy.ts). */
function relayPatterns(value: unknown, where: string): RelayPattern[] {
  if (value === undefined) return [];
  if (!Array.isArray(value))
    throw new AccessConfigError(`${where}: relay must be an array of "host[:port]" patterns, got ${quoted(value)}`);
  return value.map((p: unknown, j: number) => {
    try {
      return parseRelayPattern(p as string);
    } catch (err) {
      throw new AccessConfigError(`${where}: relay[${j}]: ${errorMessage(err)}`);
    }
  });
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Validates an access configuration strictly (unknown fields, bad patterns, duplicate ids or
 * hashes are errors) and returns it normalised: lower-case hashes and patterns. `source` starts
 * every error message (a file path, `PTTH_KEYS`, ...).
 */
export function validateAccessConfig(value: unknown, source = 'access config'): AccessConfig {
  return compile(value, source).config;
}

function compile(value: unknown, source: string): Compiled {
  if (!isObject(value))
    throw new AccessConfigError(`${source}: must be a JSON object with "keys" and/or "reserved", got ${quoted(value)}`);
  for (const k of Object.keys(value)) {
    if (!TOP_FIELDS.has(k))
      throw new AccessConfigError(`${source}: unknown field ${quoted(k)} (expected "keys" and/or "reserved")`);
  }
  const reservedRaw = value['reserved'];
  if (reservedRaw !== undefined && !Array.isArray(reservedRaw)) {
    throw new AccessConfigError(`${source}: "reserved" must be an array of names, got ${quoted(reservedRaw)}`);
  }
  const reserved = (reservedRaw ?? []).map((r: unknown, i: number) =>
    compilePattern(r, `${source}: reserved[${i}]`, false),
  );

  const keysRaw = value['keys'];
  if (keysRaw !== undefined && !Array.isArray(keysRaw)) {
    throw new AccessConfigError(`${source}: "keys" must be an array of key entries, got ${quoted(keysRaw)}`);
  }
  let keys: Map<string, CompiledKey> | undefined;
  const byId = new Map<string, CompiledKey>();
  const normalised: AccessKey[] = [];
  if (keysRaw !== undefined) {
    keys = new Map();
    (keysRaw as unknown[]).forEach((entry, i) => {
      const named = isObject(entry) && typeof entry['id'] === 'string' ? ` (id ${quoted(entry['id'])})` : '';
      const where = `${source}: keys[${i}]${named}`;
      if (!isObject(entry))
        throw new AccessConfigError(`${where}: a key entry must be an object, got ${quoted(entry)}`);
      for (const k of Object.keys(entry)) {
        if (!KEY_FIELDS.has(k)) {
          throw new AccessConfigError(
            `${where}: unknown field ${quoted(k)} (expected id, sha256, names, maxNames, maxChannels, relay)`,
          );
        }
      }
      const id = entry['id'];
      if (typeof id !== 'string' || !KEY_ID.test(id)) {
        throw new AccessConfigError(
          `${where}: id must be 1 to 64 letters, digits or . _ @ - (starting with a letter or digit), got ${quoted(id)}`,
        );
      }
      if (byId.has(id)) throw new AccessConfigError(`${where}: the id ${quoted(id)} is used by another key too`);
      const hash = entry['sha256'];
      if (typeof hash !== 'string' || !SHA256_HEX.test(hash)) {
        throw new AccessConfigError(
          `${where}: sha256 must be 64 hex digits, the SHA-256 of the key (ptth-proxy key prints it), got ${quoted(hash)}`,
        );
      }
      const sha256 = hash.toLowerCase();
      if (keys?.has(sha256)) throw new AccessConfigError(`${where}: the same key (sha256) is listed twice`);
      const names = entry['names'];
      if (!Array.isArray(names) || names.length === 0) {
        throw new AccessConfigError(
          `${where}: names must be a non-empty array of patterns ("*", "team-*", "alice"), got ${quoted(names)}`,
        );
      }
      const patterns = names.map((p: unknown, j: number) => compilePattern(p, `${where}: names[${j}]`, true));
      const compiled: CompiledKey = {
        id,
        patterns,
        maxNames: limit(entry, 'maxNames', where),
        maxChannels: limit(entry, 'maxChannels', where),
        relay: relayPatterns(entry['relay'], where),
      };
      keys?.set(sha256, compiled);
      byId.set(id, compiled);
      normalised.push({
        id,
        sha256,
        names: patterns.map((p) => p.source),
        ...(compiled.maxNames === undefined ? {} : { maxNames: compiled.maxNames }),
        ...(compiled.maxChannels === undefined ? {} : { maxChannels: compiled.maxChannels }),
        ...(entry['relay'] === undefined ? {} : { relay: compiled.relay.map((p) => p.text) }),
      });
    });
  }
  const config: AccessConfig = {
    ...(keysRaw === undefined ? {} : { keys: normalised }),
    ...(reservedRaw === undefined ? {} : { reserved: reserved.map((p) => p.source) }),
  };
  return { config, keys, byId, reserved };
}

/** Parses and validates the JSON text of an access file (or `PTTH_KEYS`). */
export function parseAccessConfig(text: string, source = 'access config'): AccessConfig {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new AccessConfigError(`${source}: not valid JSON: ${errorMessage(err)}`);
  }
  return validateAccessConfig(value, source);
}

/** Reads, parses and validates an access file; errors name the file. */
export async function readAccessFile(path: string): Promise<AccessConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new AccessConfigError(`${path}: cannot read the keys file: ${errorMessage(err)}`);
  }
  return parseAccessConfig(text, path);
}

/**
 * The access configuration `serve` starts (and reloads) with: the `--keys` file when given,
 * otherwise `PTTH_KEYS` from `env` (the same JSON inline), otherwise undefined (open gateway).
 * Throws AccessConfigError with a message that names the file or variable and the bad entry.
 */
export async function loadAccessConfig(
  options: { file?: string | undefined; env?: NodeJS.ProcessEnv | undefined } = {},
): Promise<AccessConfig | undefined> {
  if (options.file !== undefined) return readAccessFile(options.file);
  const inline = options.env?.['PTTH_KEYS'];
  if (inline !== undefined && inline.trim() !== '') return parseAccessConfig(inline, 'PTTH_KEYS');
  return undefined;
}

/**
 * Decides claims: which key (if any) may claim which name, reserved names, and the per-key limits.
 * `set()` swaps the whole configuration at once; claims in progress finish under the one they
 * started with, registrations made before keep going (their next claim uses the new config).
 */
export class AccessControl {
  #compiled: Compiled;
  /** Reserved names given at construction (`--reserved`): they survive `set()`. */
  #fixedReserved: readonly Pattern[];

  constructor(config: AccessConfig | undefined = undefined, reserved: readonly string[] = []) {
    this.#fixedReserved = reserved.map((r, i) => compilePattern(r, `reserved[${i}] (${quoted(r)})`, false));
    this.#compiled = compile(config ?? {}, 'access config');
  }

  /** Replaces the configuration; throws AccessConfigError (keeping the old one) if it is invalid. */
  set(config: AccessConfig | undefined, source = 'access config'): void {
    this.#compiled = compile(config ?? {}, source);
  }

  /** The configuration in force, normalised. */
  get config(): AccessConfig {
    return this.#compiled.config;
  }

  /** True when no keys are configured: anyone may claim any unreserved name. */
  get open(): boolean {
    return this.#compiled.keys === undefined;
  }

  /** Whether `name` (lower-case) is reserved. */
  reserved(name: string): boolean {
    return matches(this.#fixedReserved, name) || matches(this.#compiled.reserved, name);
  }

  /** The limits of a key id in the current configuration (undefined: no such key, no limits). */
  limitsOf(keyId: string | undefined): { maxNames: number | undefined; maxChannels: number | undefined } | undefined {
    if (keyId === undefined) return undefined;
    const k = this.#compiled.byId.get(keyId);
    return k ? { maxNames: k.maxNames, maxChannels: k.maxChannels } : undefined;
  }

  /**
   * Whether `key` may claim `name` (lower-case, validated; undefined: a random name). Throws
   * PtthError: KEY_REQUIRED or KEY_INVALID (401), NAME_RESERVED or KEY_FORBIDDEN (403).
   * The per-key limits are the table's to check (RouteTable.decide), from the Grant.
   */
  authorize(key: string | undefined, name: string | undefined): Grant {
    const c = this.#compiled;
    let k: CompiledKey | undefined;
    if (c.keys !== undefined) {
      if (key === undefined || key === '') throw new PtthError('PTTH_ERR_KEY_REQUIRED');
      k = c.keys.get(hashKey(key));
      if (!k) throw new PtthError('PTTH_ERR_KEY_INVALID');
    }
    if (name !== undefined && this.reserved(name)) {
      throw new PtthError(
        'PTTH_ERR_NAME_RESERVED',
        `The name "${name}" is reserved by this gateway and cannot be claimed.`,
      );
    }
    if (!k) return { keyId: undefined, maxNames: undefined, maxChannels: undefined, pickName: this.#picker('') };
    const grant = { keyId: k.id, maxNames: k.maxNames, maxChannels: k.maxChannels };
    if (name !== undefined) {
      if (!matches(k.patterns, name)) {
        throw new PtthError(
          'PTTH_ERR_KEY_FORBIDDEN',
          `The access key "${k.id}" may not claim "${name}": it may claim ${list(k.patterns)}.`,
        );
      }
      return { ...grant, pickName: undefined };
    }
    // No name asked for: a random one if the key may claim any; otherwise a random name under its
    // first prefix pattern that leaves room for enough random characters; otherwise refuse.
    if (k.patterns.some((p) => p.kind === 'any')) return { ...grant, pickName: this.#picker('') };
    const prefix = k.patterns.find((p) => p.kind === 'prefix' && p.value.length <= 63 - MIN_SUFFIX);
    if (prefix) return { ...grant, pickName: this.#picker(prefix.value) };
    throw new PtthError(
      'PTTH_ERR_KEY_FORBIDDEN',
      `The access key "${k.id}" may only claim the names it lists (${list(k.patterns)}): name one in the claim.`,
    );
  }

  /**
   * Throws like authorize() when the configuration in force no longer lets `name` be held under
   * `keyId` (the key was revoked, its patterns changed, the name became reserved). For channels
   * that join a registration without a claim of their own: a Comet poll after its channel idled out.
   */
  recheck(keyId: string | undefined, name: string): void {
    if (this.reserved(name))
      throw new PtthError(
        'PTTH_ERR_NAME_RESERVED',
        `The name "${name}" is reserved by this gateway and cannot be claimed.`,
      );
    if (this.#compiled.keys === undefined) return;
    const k = keyId === undefined ? undefined : this.#compiled.byId.get(keyId);
    if (!k)
      throw new PtthError(
        'PTTH_ERR_KEY_INVALID',
        `The access key the name "${name}" was claimed with is no longer accepted: register again with a valid key.`,
      );
    if (!matches(k.patterns, name)) {
      throw new PtthError(
        'PTTH_ERR_KEY_FORBIDDEN',
        `The access key "${k.id}" may no longer hold "${name}": it may claim ${list(k.patterns)}.`,
      );
    }
  }

  /**
   * A random-name generator under `prefix` that never yields a reserved name (undefined: none
   * needed). Reserved patterns may cover the whole prefix (`team*` reserved, a key for `team-*`):
   * it gives up with 403 then rather than spin, which would stop the whole gateway. (10,000 tries
   * take a few milliseconds and miss a name only where fewer than 1 in 2,000 are free.)
   */
  #picker(prefix: string): (() => string) | undefined {
    if (prefix === '' && this.#fixedReserved.length === 0 && this.#compiled.reserved.length === 0) return undefined;
    return () => {
      for (let tries = 0; tries < 10_000; tries++) {
        const name = prefix + randomName().slice(0, Math.min(12, 63 - prefix.length));
        if (!this.reserved(name)) return name;
      }
      throw new PtthError(
        'PTTH_ERR_NAME_RESERVED',
        `Every random name${prefix === '' ? '' : ` under "${prefix}"`} is reserved by this gateway: name one in the claim.`,
      );
    };
  }

  /**
   * Authorizes the claim, then has `table` decide it under the key's grant (its names limit, and
   * with `maxPerName` room for the claim's channel: per name, and per key as the configuration in
   * force says). Rejects with the refusal; resolves with the registration and its lease.
   */
  async claim(
    table: RouteTable,
    params: ClaimParams,
    key: string | undefined,
    maxPerName?: number,
  ): Promise<{ registration: Registration; created: boolean; lease: ClaimLease }> {
    const grant = this.authorize(key, params.name);
    const channels = maxPerName === undefined ? undefined : { perName: maxPerName, perKey: grant.maxChannels };
    const decision = await table.decide({
      ...params,
      keyId: grant.keyId,
      maxNames: grant.maxNames,
      pickName: grant.pickName,
      channels,
    });
    if (!decision.ok) throw decision.refusal;
    return decision;
  }

  /**
   * The relay rights of `key` (the RelayHttp endpoint asks for a key on every request, whatever
   * the claim rules). Throws 401 PTTH_ERR_KEY_INVALID for a key the gateway does not know, and
   * on a gateway without keys, where no key can carry an allow-list.
   */
  relayKey(key: string): { id: string; patterns: readonly RelayPattern[] } {
    const keys = this.#compiled.keys;
    if (keys === undefined) {
      throw new PtthError(
        'PTTH_ERR_KEY_INVALID',
        'This gateway has no access keys, and the relay endpoint serves only keys that list their targets (--keys).',
      );
    }
    const k = keys.get(hashKey(key));
    if (!k) throw new PtthError('PTTH_ERR_KEY_INVALID');
    return { id: k.id, patterns: k.relay };
  }

  /** The channel limits of `reg` under the configuration in force: the gateway's per name, its key's. */
  channelLimits(reg: Registration, maxPerName: number): ChannelLimits {
    return { perName: maxPerName, perKey: this.limitsOf(reg.keyId)?.maxChannels };
  }
}

function list(patterns: readonly Pattern[]): string {
  return patterns.map((p) => p.source).join(', ');
}
