import { EventEmitter } from 'node:events';
import type { Channel } from '../channels/channel.js';
import { PtthError, isPtthError } from '../http/errors.js';
import { lookupKey, madeUpToken, randomName, type ClaimParams } from './names.js';

import { Registration, type QueueOptions } from './registration.js';

export interface TableOptions extends QueueOptions {
  /** Lease in seconds when a claim names none. */
  readonly defaultLease: number;
}

export interface TableEvents {
  register: [Registration];
  release: [Registration, string];
  'channel-open': [Registration, Channel];
  'channel-close': [Registration, Channel];
}

/** Room a claim that brings a channel must leave: per name, and across the names of its key. */
export interface ChannelLimits {
  /** Channels one name may hold (429 PTTH_ERR_TOO_MANY_CHANNELS past it). */
  readonly perName: number;
  /** Channels the claim's key may hold across its names (429 PTTH_ERR_KEY_CHANNELS past it); undefined: no limit. */
  readonly perKey: number | undefined;
}

/** A claim as the table decides it: the claim's parameters under the grant of its access key. */
export interface ClaimRequest extends ClaimParams {
  /**
   * Limits the claim's channel must fit under: a claim that brings its channel (native, WebSocket).
   * Undefined for one that brings none yet (a Comet registration: its first poll brings it).
   */
  readonly channels?: ChannelLimits | undefined;
}

/**
 * What a granted claim holds until its channel is in service. A claimant can still go away (or,
 * for HTTP/2, lose a race with other claims while its 101 is written): the lease says what then.
 */
export interface ClaimLease {
  readonly registration: Registration;
  /** Whether this claim made the name (a reclaim did not). */
  readonly created: boolean;
  /** The refusal if the channel would no longer fit under the claim's limits now, else undefined. */
  recheck(): PtthError | undefined;
  /** Puts the claim's channel in service. */
  join(channel: Channel): void;
  /**
   * The claim ends without a channel: a name it made goes (it would otherwise sit there for its
   * lease, counted against the key's names); a name it reclaimed stays.
   */
  abandon(reason: string): void;
}

/** What the private URL's PUT may change. */
export interface RegistrationChanges {
  /** Seconds, already clamped. */
  readonly lease?: number | undefined;
  readonly token?: string | undefined;
}

/** The table's answer to a claim: a refusal (the error to answer with), or a registration and its lease. */
export type ClaimDecision =
  | { readonly ok: false; readonly refusal: PtthError }
  | { readonly ok: true; readonly registration: Registration; readonly created: boolean; readonly lease: ClaimLease };

/**
 * The routing table: names -> registrations -> live channels. This is the interface the gateway
 * uses; `MemoryTable` keeps it in this process. A shared store for several gateway nodes is another
 * implementation (claims and releases are async for that reason; lookups stay synchronous because a
 * node can only serve visitors over channels it holds).
 */
export interface RouteTable extends EventEmitter<TableEvents> {
  /**
   * Decides a claim in one step: the token rule (403 PTTH_ERR_TOKEN_MISMATCH), the key's names
   * (429 PTTH_ERR_KEY_NAMES when `keyId` already holds `maxNames`), room for the claim's channel
   * (`channels`), then the lease and the key the name is held under. A refused claim changes
   * nothing; a shared store makes this one atomic operation.
   */
  decide(request: ClaimRequest): Promise<ClaimDecision>;
  /** Room for one more channel of `registration` under `limits` now: the refusal, or undefined. */
  roomFor(registration: Registration, limits: ChannelLimits): PtthError | undefined;
  lookup(name: string): Registration | undefined;
  /**
   * `lookup`, and on a miss whatever a shared store knows of the name (a registration made on
   * another node, or before a restart). Callers use `lookup` first: the hot path stays synchronous.
   */
  fetch(name: string): Promise<Registration | undefined>;
  /** `byPrivateId`, and on a miss the shared store's (as `fetch`). */
  fetchPrivate(id: string): Promise<Registration | undefined>;
  /** Changes a registration's lease or token (the private URL's PUT): in the shared store too. */
  update(registration: Registration, changes: RegistrationChanges): Promise<void>;
  /** Names and channels held under an access key now (for the per-key limits). */
  heldBy(keyId: string): { names: number; channels: number };
  byPrivateId(id: string): Registration | undefined;
  release(registration: Registration, reason: string): void;
  list(): Registration[];
  close(): void;
}

/** `table.decide`, throwing the refusal: for callers that hold no channel (tests, tools). */
export async function decideOrThrow(
  table: Pick<RouteTable, 'decide'>,
  request: ClaimRequest,
): Promise<{ registration: Registration; created: boolean }> {
  const decision = await table.decide(request);
  if (!decision.ok) throw decision.refusal;
  return { registration: decision.registration, created: decision.created };
}

/** 429 PTTH_ERR_TOO_MANY_CHANNELS: `name` holds `count` channels, the most allowed. */
export function tooManyChannels(name: string, count: number): PtthError {
  return new PtthError(
    'PTTH_ERR_TOO_MANY_CHANNELS',
    `The name "${name}" already has ${count} channels, the most this gateway allows.`,
  );
}

/** 429 PTTH_ERR_KEY_CHANNELS. */
export function keyChannels(keyId: string, held: number, max: number): PtthError {
  return new PtthError(
    'PTTH_ERR_KEY_CHANNELS',
    `The access key "${keyId}" already holds ${held} channels, the most it may (maxChannels ${max}).`,
  );
}

/** 429 PTTH_ERR_KEY_NAMES. */
export function keyNames(keyId: string, held: number, max: number): PtthError {
  return new PtthError(
    'PTTH_ERR_KEY_NAMES',
    `The access key "${keyId}" already holds ${held} names, the most it may (maxNames ${max}).`,
  );
}

export class MemoryTable extends EventEmitter<TableEvents> implements RouteTable {
  #byName = new Map<string, Registration>();
  /** By lookupKey(privateId): the private URL is a capability, see lookupKey. */
  #byPrivate = new Map<string, Registration>();
  #byKey = new Map<string, Set<Registration>>();
  #options: TableOptions;

  constructor(options: TableOptions) {
    super();
    this.#options = options;
  }

  async decide(request: ClaimRequest): Promise<ClaimDecision> {
    try {
      const existing = request.name === undefined ? undefined : this.#byName.get(request.name);
      return existing ? this.#reclaim(existing, request) : this.#create(request);
    } catch (err) {
      if (isPtthError(err)) return { ok: false, refusal: err };
      throw err;
    }
  }

  /**
   * `decide`, throwing the refusal: for callers that hold no channel (tests, tools). Resolves with
   * the registration and whether this claim made it.
   */
  claim(params: ClaimRequest): Promise<{ registration: Registration; created: boolean }> {
    return decideOrThrow(this, params);
  }

  /** docs/PROTOCOL.md section 2: the same token gets the name back; another token gets 403. */
  #reclaim(existing: Registration, request: ClaimRequest): ClaimDecision {
    // A name claimed without a token is held by its claimant's address (Registration.holder).
    existing.checkClaimant(request);
    const keyId = request.keyId !== undefined && request.keyId !== existing.keyId ? request.keyId : undefined;
    if (keyId !== undefined) this.#checkNames(request);
    const refusal = request.channels && this.#room(existing.name, existing, keyId ?? existing.keyId, request.channels);
    if (refusal) return { ok: false, refusal };
    if (keyId !== undefined) {
      this.#unindexKey(existing);
      existing.keyId = keyId;
      this.#indexKey(existing);
    }
    if (request.lease !== undefined) existing.setLease(request.lease);
    return this.#granted(existing, false, request.channels);
  }

  #create(request: ClaimRequest): ClaimDecision {
    let name = request.name;
    if (name === undefined) {
      const pick = request.pickName ?? randomName;
      // A short prefix-picked suffix could in theory run out of free names: give up rather than spin.
      let tries = 0;
      do {
        if (++tries > 1000)
          throw new PtthError('PTTH_ERR_BAD_NAME', 'No free random name could be found: name one in the claim.');
        name = pick();
      } while (this.#byName.has(name));
    }
    this.#checkNames(request);
    // Before the name is made: a refused claim must not leave a name behind.
    const refusal = request.channels && this.#room(name, undefined, request.keyId, request.channels);
    if (refusal) return { ok: false, refusal };
    const reg = new Registration(
      this,
      name,
      request.token ?? madeUpToken(),
      request.lease ?? this.#options.defaultLease,
      this.#options,
      request.keyId,
      request.token === undefined ? request.holder : undefined,
    );
    this.#byName.set(name, reg);
    this.#byPrivate.set(lookupKey(reg.privateId), reg);
    this.#indexKey(reg);
    this.emit('register', reg);
    return this.#granted(reg, true, request.channels);
  }

  #granted(registration: Registration, created: boolean, limits: ChannelLimits | undefined): ClaimDecision {
    const lease: ClaimLease = {
      registration,
      created,
      recheck: () => (limits === undefined ? undefined : this.roomFor(registration, limits)),
      join: (channel) => registration.addChannel(channel),
      abandon: (reason) => {
        if (created && registration.channels.length === 0 && !registration.released) this.release(registration, reason);
      },
    };
    return { ok: true, registration, created, lease };
  }

  roomFor(registration: Registration, limits: ChannelLimits): PtthError | undefined {
    return this.#room(registration.name, registration, registration.keyId, limits);
  }

  /**
   * Room for one more channel of `name` (`reg`, or a name not made yet) held under `keyId`: the
   * gateway's per-name limit, then the key's, counting `reg`'s channels under `keyId` when the claim
   * moves it there.
   */
  #room(
    name: string,
    reg: Registration | undefined,
    keyId: string | undefined,
    limits: ChannelLimits,
  ): PtthError | undefined {
    const count = reg?.channels.length ?? 0;
    if (count >= limits.perName) return tooManyChannels(name, count);
    const max = limits.perKey;
    if (max === undefined || keyId === undefined) return undefined;
    const held = this.heldBy(keyId).channels + (reg !== undefined && reg.keyId !== keyId ? count : 0);
    return held >= max ? keyChannels(keyId, held, max) : undefined;
  }

  /** Throws PTTH_ERR_KEY_NAMES when the claim's key may not hold one more name. */
  #checkNames(params: ClaimParams): void {
    if (params.keyId === undefined || params.maxNames === undefined) return;
    const held = this.#byKey.get(params.keyId)?.size ?? 0;
    if (held >= params.maxNames) throw keyNames(params.keyId, held, params.maxNames);
  }

  #indexKey(reg: Registration): void {
    if (reg.keyId === undefined) return;
    let set = this.#byKey.get(reg.keyId);
    if (!set) {
      set = new Set();
      this.#byKey.set(reg.keyId, set);
    }
    set.add(reg);
  }

  #unindexKey(reg: Registration): void {
    if (reg.keyId === undefined) return;
    const set = this.#byKey.get(reg.keyId);
    if (!set) return;
    set.delete(reg);
    if (set.size === 0) this.#byKey.delete(reg.keyId);
  }

  heldBy(keyId: string): { names: number; channels: number } {
    const set = this.#byKey.get(keyId);
    let channels = 0;
    if (set) for (const reg of set) channels += reg.channels.length;
    return { names: set?.size ?? 0, channels };
  }

  lookup(name: string): Registration | undefined {
    return this.#byName.get(name);
  }

  byPrivateId(id: string): Registration | undefined {
    return this.#byPrivate.get(lookupKey(id));
  }

  async fetch(name: string): Promise<Registration | undefined> {
    return this.lookup(name);
  }

  async fetchPrivate(id: string): Promise<Registration | undefined> {
    return this.byPrivateId(id);
  }

  async update(reg: Registration, changes: RegistrationChanges): Promise<void> {
    if (changes.lease !== undefined) reg.setLease(changes.lease);
    if (changes.token !== undefined) reg.token = changes.token;
  }

  release(reg: Registration, reason: string): void {
    if (this.#byName.get(reg.name) !== reg) return;
    this.#byName.delete(reg.name);
    this.#byPrivate.delete(lookupKey(reg.privateId));
    this.#unindexKey(reg);
    reg.end();
    this.emit('release', reg, reason);
  }

  list(): Registration[] {
    return [...this.#byName.values()];
  }

  close(): void {
    for (const reg of this.list()) this.release(reg, 'gateway closed');
  }
}
