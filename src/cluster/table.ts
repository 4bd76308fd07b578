import { createHmac } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Channel } from '../channels/channel.js';
import { PtthError, isPtthError } from '../http/errors.js';
import { noop } from '../shared/noop.js';
import { lookupKey, madeUpToken, randomName, randomSecret, tokenHash } from '../table/names.js';
import { claimantError, Registration, type ClaimantRefusal } from '../table/registration.js';
import {
  decideOrThrow,
  keyChannels,
  keyNames,
  tooManyChannels,
  type ChannelLimits,
  type ClaimDecision,
  type ClaimLease,
  type ClaimRequest,
  type RegistrationChanges,
  type RouteTable,
  type TableEvents,
  type TableOptions,
} from '../table/table.js';
import type { ClaimOutcome, ClusterStore, HeldRecord, PeerNode, StoreEvent, StoredRecord } from './store.js';

/** A channel to another node's holding of a name that can leave service without cutting its requests. */
export interface RemoteRoute extends Channel {
  /** No new requests; those in flight finish (src/cluster/hop.ts RemoteChannel.retire). */
  retire(): void;
}

/** Makes the channel that reaches another node's holding of a name (src/cluster/hop.ts RemoteChannel). */
export type RemoteFactory = (peer: PeerNode, name: string) => RemoteRoute;

export interface ClusterTableOptions extends TableOptions {
  /** The cluster's secret: private ids are derived from it (only nodes can make a private URL). */
  readonly secret: string;
  /** Milliseconds before a lease check that Redis could not answer is tried again. */
  readonly retry: number;
}

/** What this node knows of a registration beyond the Registration object. */
interface Meta {
  nonce: string;
  /** The other nodes holding channels of the name, by node id. */
  readonly peers: Map<string, RemoteRoute>;
}

/**
 * The routing table of a cluster node: Redis (ClusterStore) decides claims atomically and keeps
 * every registration; this node keeps a Registration for each name it holds channels of or has
 * routed to (its route cache), with the other nodes' holdings as remote channels. Pub/sub keeps the
 * cache right; a stale entry costs at most one extra hop (the node it names looks the name up again).
 *
 * Lookups stay synchronous on a hit (the hot path); `fetch` asks Redis on a miss.
 */
export class ClusterTable extends EventEmitter<TableEvents> implements RouteTable {
  #store: ClusterStore;
  #options: ClusterTableOptions;
  #remote: RemoteFactory;
  #byName = new Map<string, Registration>();
  /** By lookupKey(privateId), as MemoryTable. */
  #byPrivate = new Map<string, Registration>();
  #meta = new WeakMap<Registration, Meta>();
  /** Channels whose claim already counted them in Redis (the claim reserves). */
  #reserved = new WeakSet<Channel>();
  #fetching = new Map<string, Promise<Registration | undefined>>();
  #restated: (() => void)[] = [];
  #closing = false;

  constructor(store: ClusterStore, options: ClusterTableOptions, remote: RemoteFactory) {
    super();
    this.#store = store;
    this.#options = options;
    this.#remote = remote;
    store.on('event', (e) => this.#event(e));
    store.on('up', () => void this.#restate());
    store.on('resync', () => void this.#resync());
    this.on('channel-open', (reg, channel) => {
      if (this.#reserved.has(channel)) this.#reserved.delete(channel);
      else this.#store.move(reg.name, 1, this.#nonceOf(reg)).catch(noop);
    });
    this.on('channel-close', (reg) => {
      if (!this.#closing) this.#store.move(reg.name, -1, this.#nonceOf(reg)).catch(noop);
    });
  }

  /** Calls `listener` each time this node has stated again what it holds (Redis back, maybe empty). */
  onRestated(listener: () => void): void {
    this.#restated.push(listener);
  }

  #nonceOf(reg: Registration): string {
    return this.#meta.get(reg)?.nonce ?? '';
  }

  /** The private id of a registration: HMAC of its nonce under the cluster secret (Redis keeps its hash only). */
  privateIdOf(nonce: string): string {
    return createHmac('sha256', this.#options.secret).update(`private|${nonce}`).digest('base64url');
  }

  async decide(request: ClaimRequest): Promise<ClaimDecision> {
    try {
      return await this.#decide(request);
    } catch (err) {
      if (isPtthError(err)) return { ok: false, refusal: err };
      return { ok: false, refusal: new PtthError('PTTH_ERR_STORE_UNAVAILABLE') };
    }
  }

  /** `decide`, throwing the refusal (as MemoryTable.claim). */
  claim(request: ClaimRequest): Promise<{ registration: Registration; created: boolean }> {
    return decideOrThrow(this, request);
  }

  async #decide(request: ClaimRequest): Promise<ClaimDecision> {
    const nonce = randomSecret(128);
    const privateHash = lookupKey(this.privateIdOf(nonce));
    const hash = tokenHash(request.token ?? madeUpToken());
    const pick = request.pickName ?? randomName;
    for (let tries = 1; ; tries++) {
      if (tries > 1000)
        throw new PtthError('PTTH_ERR_BAD_NAME', 'No free random name could be found: name one in the claim.');
      const name = request.name ?? pick();
      const claimId = randomSecret(96);
      const outcome = await this.#store
        .claim({
          name,
          mustCreate: request.name === undefined,
          tokenGiven: request.token !== undefined,
          tokenHash: hash,
          holder: request.token === undefined ? request.holder : undefined,
          keyId: request.keyId,
          maxNames: request.maxNames,
          lease: request.lease,
          defaultLease: this.#options.defaultLease,
          perName: request.channels?.perName,
          perKey: request.channels?.perKey,
          nonce,
          privateHash,
          claimId,
        })
        .catch((err: unknown) => {
          // No answer (a timeout): Redis may still run the claim. What it reserved is given back
          // by the next command on the connection, which Redis runs after it.
          if (request.channels !== undefined) this.#store.abandonClaim(claimId).catch(noop);
          throw err;
        });
      if (outcome.kind === 'taken') continue;
      if (outcome.kind === 'refuse') return { ok: false, refusal: refusal(outcome, name, request) };
      return this.#granted(outcome.record, request.channels !== undefined, claimId);
    }
  }

  #granted(record: StoredRecord, reserved: boolean, claimId: string): ClaimDecision {
    const registration = this.#adopt(record);
    const created = record.created;
    const nonce = record.nonce;
    if (created) this.emit('register', registration);
    let settled = !reserved;
    if (reserved) this.#pend(record.name, 1);
    const lease: ClaimLease = {
      registration,
      created,
      // The claim reserved its channel in Redis: the limits hold cluster-wide until it joins or goes.
      recheck: () => undefined,
      join: (channel) => {
        if (settled) return;
        settled = true;
        this.#pend(registration.name, -1);
        if (registration.released) {
          this.#store.move(registration.name, -1, nonce).catch(noop);
          channel.close();
          return;
        }
        this.#reserved.add(channel);
        registration.addChannel(channel);
      },
      abandon: (reason) => {
        if (settled) {
          if (created && registration.channels.length === 0 && !registration.released)
            this.release(registration, reason);
          return;
        }
        settled = true;
        this.#pend(registration.name, -1);
        this.#store.abandon(registration.name, created, nonce, claimId).catch(noop);
        if (created && registration.channels.length === 0) this.#drop(registration, reason);
      },
    };
    return { ok: true, registration, created, lease };
  }

  /** Claims granted here whose channel has not joined yet, by name: restated with the channels. */
  #pending = new Map<string, number>();

  #pend(name: string, d: number): void {
    const n = (this.#pending.get(name) ?? 0) + d;
    if (n > 0) this.#pending.set(name, n);
    else this.#pending.delete(name);
  }

  /** This node's Registration for a stored record: the cached one brought up to date, or a new one. */
  #adopt(record: StoredRecord): Registration {
    let reg = this.#byName.get(record.name);
    let meta = reg && this.#meta.get(reg);
    if (reg && meta && meta.nonce !== record.nonce) {
      // Another registration holds the name now (the cached one was released meanwhile).
      this.#drop(reg, 'released');
      reg = undefined;
    }
    if (!reg || !meta) {
      reg = new Registration(this, record.name, '', record.lease, this.#options, record.keyId, record.holder, {
        tokenHash: record.tokenHash,
        privateId: this.privateIdOf(record.nonce),
        createdAt: record.createdAt,
      });
      meta = { nonce: record.nonce, peers: new Map() };
      this.#meta.set(reg, meta);
      this.#byName.set(record.name, reg);
      this.#byPrivate.set(lookupKey(reg.privateId), reg);
    } else {
      reg.storedClaimant(record.tokenHash, record.holder);
      reg.keyId = record.keyId;
      reg.lease = record.lease;
    }
    this.#syncPeers(reg, meta, record.holders);
    if (record.pttl >= 0) reg.expireIn(record.pttl);
    return reg;
  }

  #syncPeers(reg: Registration, meta: Meta, holders: readonly PeerNode[]): void {
    const want = new Set(holders.map((p) => p.id));
    for (const [id, ch] of meta.peers) {
      if (want.has(id) && reg.remotes.includes(ch)) continue;
      meta.peers.delete(id);
      reg.removeRemote(ch);
      ch.retire();
    }
    for (const peer of holders) if (!meta.peers.has(peer.id)) this.#addPeer(reg, meta, peer);
  }

  #addPeer(reg: Registration, meta: Meta, peer: PeerNode): void {
    const ch = this.#remote(peer, reg.name);
    meta.peers.set(peer.id, ch);
    reg.addRemote(ch);
    const events = ch.events;
    if (!events) return;
    // The hop could not reach the peer and the channel dropped out (its request went elsewhere).
    // The peer may still hold channels (a blip, or not yet found dead): ask the store again soon.
    ch.events = {
      available: events.available,
      closed: (c) => {
        events.closed(c);
        if (meta.peers.get(peer.id) !== c) return;
        meta.peers.delete(peer.id);
        setTimeout(() => void this.#refresh(reg), this.#options.retry).unref();
      },
    };
  }

  #removePeer(reg: Registration, node: string): void {
    const meta = this.#meta.get(reg);
    const ch = meta?.peers.get(node);
    if (!meta || !ch) return;
    meta.peers.delete(node);
    reg.removeRemote(ch);
    ch.retire();
  }

  #event(e: StoreEvent): void {
    if (e.kind === 'gone') {
      for (const reg of this.#byName.values()) this.#removePeer(reg, e.node);
      return;
    }
    const reg = this.#byName.get(e.name);
    if (!reg) return;
    if (e.kind === 'open') {
      const meta = this.#meta.get(reg);
      const known = meta?.peers.get(e.peer.id);
      if (meta && (!known || !reg.remotes.includes(known))) {
        meta.peers.delete(e.peer.id);
        this.#addPeer(reg, meta, e.peer);
      }
    } else if (e.kind === 'close') this.#removePeer(reg, e.node);
    else void this.#refresh(reg);
  }

  /** Reads the name again (an update or release elsewhere; Redis back after an outage). */
  async #refresh(reg: Registration): Promise<void> {
    let record: StoredRecord | undefined;
    try {
      record = await this.#store.get(reg.name);
    } catch {
      return;
    }
    if (this.#byName.get(reg.name) !== reg) return;
    if (!record || record.nonce !== this.#meta.get(reg)?.nonce) this.#drop(reg, 'released');
    else this.#adopt(record);
  }

  /** Redis answers again: state what this node holds (Redis may have lost it), then re-read every cached name. */
  async #restate(): Promise<void> {
    const held: HeldRecord[] = [];
    for (const reg of this.#byName.values()) {
      const meta = this.#meta.get(reg);
      const channels = reg.channels.length + (this.#pending.get(reg.name) ?? 0);
      if (!meta || channels === 0) continue;
      held.push({
        name: reg.name,
        channels,
        tokenHash: reg.tokenHash,
        holder: reg.holder,
        keyId: reg.keyId,
        lease: reg.lease,
        nonce: meta.nonce,
        privateHash: lookupKey(reg.privateId),
        createdAt: reg.createdAt,
      });
    }
    let stale: string[];
    try {
      stale = await this.#store.restate(held);
      await this.#store.epochChanged();
    } catch {
      return;
    }
    // Names another app holds now (released and claimed again while this node was cut off).
    for (const name of stale) {
      const reg = this.#byName.get(name);
      if (reg) this.#drop(reg, 'released');
    }
    for (const listener of this.#restated) listener();
    await this.#refreshAll();
  }

  /**
   * The event subscription came back: events may have been missed. If Redis lost everything
   * meanwhile, this node states what it holds (reading first would drop names it still serves);
   * otherwise it reads again what it caches.
   */
  async #resync(): Promise<void> {
    let emptied: boolean;
    try {
      emptied = await this.#store.epochChanged();
    } catch {
      return;
    }
    if (emptied) await this.#restate();
    else await this.#refreshAll();
  }

  async #refreshAll(): Promise<void> {
    for (const reg of [...this.#byName.values()]) await this.#refresh(reg);
  }

  roomFor(registration: Registration, limits: ChannelLimits): PtthError | undefined {
    // This node's view: its channels and the other nodes holding some (each at least one).
    const count = registration.channels.length + registration.remotes.length;
    if (count >= limits.perName) return tooManyChannels(registration.name, count);
    const keyId = registration.keyId;
    if (limits.perKey === undefined || keyId === undefined) return undefined;
    const held = this.heldBy(keyId).channels;
    return held >= limits.perKey ? keyChannels(keyId, held, limits.perKey) : undefined;
  }

  lookup(name: string): Registration | undefined {
    return this.#byName.get(name);
  }

  fetch(name: string): Promise<Registration | undefined> {
    const local = this.#byName.get(name);
    if (local) return Promise.resolve(local);
    let pending = this.#fetching.get(name);
    if (!pending) {
      pending = this.#store
        .get(name)
        .then((record) => {
          if (!record) return undefined;
          const reg = this.#adopt(record);
          // Nobody holds a channel yet: an `open` published while this read was on its way was
          // not for a cached name, so it was dropped. One more look catches it.
          if (record.holders.length === 0 && reg.channels.length === 0)
            setTimeout(() => void this.#refresh(reg), this.#options.retry).unref();
          return reg;
        })
        .finally(() => this.#fetching.delete(name));
      this.#fetching.set(name, pending);
    }
    return pending;
  }

  byPrivateId(id: string): Registration | undefined {
    return this.#byPrivate.get(lookupKey(id));
  }

  async fetchPrivate(id: string): Promise<Registration | undefined> {
    const local = this.byPrivateId(id);
    if (local) return local;
    const hash = lookupKey(id);
    const name = await this.#store.byPrivate(hash);
    const reg = name === undefined ? undefined : await this.fetch(name);
    return reg && lookupKey(reg.privateId) === hash ? reg : undefined;
  }

  async update(reg: Registration, changes: RegistrationChanges): Promise<void> {
    await this.#store.update(
      reg.name,
      changes.lease,
      changes.token === undefined ? undefined : tokenHash(changes.token),
    );
    if (changes.lease !== undefined) reg.setLease(changes.lease);
    if (changes.token !== undefined) reg.token = changes.token;
  }

  heldBy(keyId: string): { names: number; channels: number } {
    let names = 0;
    let channels = 0;
    for (const reg of this.#byName.values()) {
      if (reg.keyId !== keyId) continue;
      names++;
      channels += reg.channels.length;
    }
    return { names, channels };
  }

  release(reg: Registration, reason: string): void {
    if (this.#byName.get(reg.name) !== reg) return;
    if (reason === 'lease expired') {
      void this.#expired(reg);
      return;
    }
    this.#store.release(reg.name).catch(noop);
    this.#drop(reg, reason);
  }

  /**
   * The local countdown of a lease ran out: Redis decides (its key expires with the lease). Gone
   * there: gone here. Still there: another node holds a channel, or the lease was renewed.
   */
  async #expired(reg: Registration): Promise<void> {
    let record: StoredRecord | undefined;
    try {
      record = await this.#store.get(reg.name);
    } catch {
      // Redis is unreachable: keep serving the name, ask again later.
      reg.expireIn(this.#options.retry);
      return;
    }
    if (this.#byName.get(reg.name) !== reg) return;
    if (!record || record.nonce !== this.#meta.get(reg)?.nonce) this.#drop(reg, 'lease expired');
    else this.#adopt(record);
  }

  #drop(reg: Registration, reason: string): void {
    if (this.#byName.get(reg.name) !== reg) return;
    this.#byName.delete(reg.name);
    this.#byPrivate.delete(lookupKey(reg.privateId));
    reg.end();
    this.emit('release', reg, reason);
  }

  list(): Registration[] {
    return [...this.#byName.values()];
  }

  /** Ends this node's part: channels close here; Redis keeps every registration (store.close leaves). */
  close(): void {
    this.#closing = true;
    for (const reg of this.list()) this.#drop(reg, 'gateway closed');
  }
}

function refusal(outcome: ClaimOutcome & { kind: 'refuse' }, name: string, request: ClaimRequest): PtthError {
  const { reason, count } = outcome;
  const key = request.keyId ?? '';
  if (reason === 'key-names') return keyNames(key, count, request.maxNames ?? count);
  if (reason === 'too-many-channels') return tooManyChannels(name, count);
  if (reason === 'key-channels') return keyChannels(key, count, request.channels?.perKey ?? count);
  return claimantError(reason satisfies ClaimantRefusal, name);
}
