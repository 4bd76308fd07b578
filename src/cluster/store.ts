import { EventEmitter } from 'node:events';
import { Redis, type RedisOptions } from 'ioredis';
import { randomSecret } from '../table/names.js';
import {
  ABANDON,
  ABANDON_CLAIM,
  CLAIM,
  GET,
  HEARTBEAT,
  LEAVE,
  MOVE,
  RELEASE,
  RESTATE,
  SESSION,
  SESSION_GET,
  UPDATE,
} from './lua.js';

/** Where a node reaches Redis and how it shows itself to the others. */
export interface StoreOptions {
  /** A redis:// or rediss:// URL, a unix socket path, or ioredis options (Sentinel included). */
  readonly redis: string | RedisOptions;
  readonly prefix: string;
  readonly nodeId: string;
  /** Milliseconds between heartbeats. */
  readonly heartbeat: number;
  /** Milliseconds after its last heartbeat a node counts as dead. */
  readonly deadAfter: number;
  /** Milliseconds one Redis command may take before it fails (the claim then gets 503). */
  readonly commandTimeout: number;
}

/** Another node holding channels of a name. */
export interface PeerNode {
  readonly id: string;
  readonly url: URL;
}

/** A node holding channels of a name, and how many. */
export interface HolderNode extends PeerNode {
  readonly channels: number;
}

/** A registration as Redis keeps it, seen from one node. */
export interface StoredRecord {
  readonly name: string;
  readonly created: boolean;
  readonly tokenHash: string;
  readonly holder: string | undefined;
  readonly keyId: string | undefined;
  readonly lease: number;
  readonly nonce: string;
  readonly createdAt: number;
  /** Milliseconds until it expires, or -1 while some node holds a channel of it. */
  readonly pttl: number;
  /** Other live nodes holding channels of it (every node's, for a listing). */
  readonly holders: readonly HolderNode[];
}

/** Why Redis refused a claim (table.ts turns it into the same PtthError a single gateway gives). */
export type StoreRefusal =
  | 'tokenless-held'
  | 'other-address'
  | 'other-key'
  | 'token-needed'
  | 'token-mismatch'
  | 'key-names'
  | 'too-many-channels'
  | 'key-channels';

export type ClaimOutcome =
  | { readonly kind: 'ok'; readonly record: StoredRecord }
  | { readonly kind: 'taken' }
  | { readonly kind: 'refuse'; readonly reason: StoreRefusal; readonly count: number };

export interface StoreClaim {
  readonly name: string;
  /** A made-up name: it must be free (the node picks another when it is not). */
  readonly mustCreate: boolean;
  readonly tokenGiven: boolean;
  readonly tokenHash: string;
  readonly holder: string | undefined;
  readonly keyId: string | undefined;
  readonly maxNames: number | undefined;
  readonly lease: number | undefined;
  readonly defaultLease: number;
  /** Set when the claim brings a channel: the per-name limit (reserved on this node when granted). */
  readonly perName: number | undefined;
  readonly perKey: number | undefined;
  readonly nonce: string;
  readonly privateHash: string;
  /** Names the claim's reservation, for abandonClaim when its answer never comes. */
  readonly claimId: string;
}

/** What the node restates after Redis came back (possibly empty). */
export interface HeldRecord {
  readonly name: string;
  readonly channels: number;
  readonly tokenHash: string;
  readonly holder: string | undefined;
  readonly keyId: string | undefined;
  readonly lease: number;
  readonly nonce: string;
  readonly privateHash: string;
  readonly createdAt: number;
}

/** What other nodes did, as the `ev` pub/sub channel says it. */
export type StoreEvent =
  | { readonly kind: 'open'; readonly name: string; readonly peer: PeerNode }
  | { readonly kind: 'close'; readonly name: string; readonly node: string }
  | { readonly kind: 'release' | 'update'; readonly name: string }
  | { readonly kind: 'gone'; readonly node: string };

export interface StoreEvents {
  event: [StoreEvent];
  /** Redis answers again after it did not (or for the first time): the node restates what it holds. */
  up: [];
  /** The event subscription came back after a gap: events may have been missed. */
  resync: [];
}

const SCRIPTS = {
  ptthClaim: CLAIM,
  ptthMove: MOVE,
  ptthAbandon: ABANDON,
  ptthAbandonClaim: ABANDON_CLAIM,
  ptthRelease: RELEASE,
  ptthGet: GET,
  ptthUpdate: UPDATE,
  ptthHeartbeat: HEARTBEAT,
  ptthLeave: LEAVE,
  ptthRestate: RESTATE,
  ptthSession: SESSION,
  ptthSessionGet: SESSION_GET,
} as const;
type ScriptName = keyof typeof SCRIPTS;
type Reply = null | string | number | Reply[];

/**
 * The shared routing table in Redis, for one node: the scripts of lua.ts, the node's heartbeat, and
 * the event channel. Commands fail at once while Redis is unreachable (no offline queue): a claim
 * then gets 503 PTTH_ERR_STORE_UNAVAILABLE instead of hanging, and what the node holds keeps serving.
 */
export class ClusterStore extends EventEmitter<StoreEvents> {
  readonly options: StoreOptions;
  #redis: Redis;
  #sub: Redis;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  #wasUp = false;
  #nodeUrl = '';
  #lastError: Error | undefined;
  #epoch: string | undefined;
  /** The cluster secret when it came from Redis (a configured one is never written there). */
  #secret: string | undefined;

  constructor(options: StoreOptions) {
    super();
    this.options = options;
    const common: RedisOptions = {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      commandTimeout: options.commandTimeout,
      lazyConnect: true,
      // Reconnect forever, at most every two seconds: a node outlives its Redis.
      retryStrategy: (times) => Math.min(100 * times, 2000),
    };
    this.#redis = connection(options.redis, common);
    // The subscriber keeps its subscription across reconnects: ioredis re-subscribes on its own, a
    // command nobody awaits, which without an offline queue rejects unhandled when the connection
    // drops again meanwhile (and an unhandled rejection ends the process). It sends nothing else.
    this.#sub = connection(options.redis, {
      ...common,
      commandTimeout: undefined,
      enableOfflineQueue: true,
      maxRetriesPerRequest: null,
    });
    for (const [name, lua] of Object.entries(SCRIPTS)) this.#redis.defineCommand(name, { numberOfKeys: 0, lua });
    this.#redis.on('ready', () => this.#up());
    this.#redis.on('error', (err: Error) => {
      this.#lastError = err;
    });
    this.#sub.on('error', () => {});
    this.#sub.on('message', (_channel: string, message: string) => this.#message(message));
    // Events published while the subscriber was reconnecting are lost: the table reads again what it caches.
    let subscribed = false;
    this.#sub.on('ready', () => {
      if (subscribed && !this.#closed) this.emit('resync');
      subscribed = true;
    });
  }

  /** Connects both connections and subscribes. Rejects when Redis cannot be reached. */
  async connect(): Promise<void> {
    try {
      await Promise.all([this.#redis.connect(), this.#sub.connect()]);
      await this.#sub.subscribe(`${this.options.prefix}ev`);
      await this.epochChanged();
    } catch (err) {
      // ioredis rejects with "Connection is closed."; the reason (ECONNREFUSED, NOAUTH, ...) came as an error event.
      throw this.#lastError ?? err;
    }
  }

  /** Joins the cluster at `nodeUrl` (known once the gateway listens): the first heartbeat, then one every interval. */
  async join(nodeUrl: string): Promise<void> {
    this.#nodeUrl = nodeUrl;
    // A node restarted under the same --node-id must not inherit the counts of channels that died
    // with its previous process: those end (their leases start) before it says it is alive.
    if (!this.#timer) await this.#run('ptthLeave', this.options.nodeId);
    await this.heartbeat();
    // Joined already (a worker's own hop listener): the new URL goes out with the heartbeat.
    if (this.#timer) return;
    this.#timer = setInterval(() => {
      this.heartbeat().catch(() => {});
    }, this.options.heartbeat);
    this.#timer.unref();
  }

  /** Where other nodes reach this one. */
  get nodeUrl(): string {
    return this.#nodeUrl;
  }

  /** Whether Redis answers now. */
  get ready(): boolean {
    return this.#redis.status === 'ready';
  }

  #up(): void {
    if (this.#closed) return;
    const again = this.#wasUp;
    this.#wasUp = true;
    if (!again) return;
    // A Redis that came back empty lost the cluster's secret: put back the one this node uses, so
    // nodes that start now sign the hop as the running ones do.
    const secret = this.#secret;
    const restore = secret === undefined ? Promise.resolve() : this.#redis.set(this.#secretKey, secret, 'NX');
    restore.then(
      () => this.emit('up'),
      () => this.emit('up'),
    );
  }

  get #secretKey(): string {
    return `${this.options.prefix}secret`;
  }

  #message(message: string): void {
    const [kind, a = '', b = '', c = ''] = message.split(' ');
    if (kind === 'open') {
      if (b === this.options.nodeId) return;
      const url = parseUrl(c);
      if (url) this.emit('event', { kind, name: a, peer: { id: b, url } });
    } else if (kind === 'close') {
      if (b !== this.options.nodeId) this.emit('event', { kind, name: a, node: b });
    } else if (kind === 'release' || kind === 'update') this.emit('event', { kind, name: a });
    else if (kind === 'gone' && a !== this.options.nodeId) this.emit('event', { kind, node: a });
  }

  async #run(script: ScriptName, ...args: (string | number)[]): Promise<Reply> {
    const o = this.options;
    const fn = (this.#redis as unknown as Record<ScriptName, (...a: (string | number)[]) => Promise<Reply>>)[script];
    return fn.call(this.#redis, o.prefix, Date.now(), o.deadAfter, ...args);
  }

  async heartbeat(): Promise<void> {
    const o = this.options;
    const reply = (await this.#run('ptthHeartbeat', o.nodeId, this.#nodeUrl, Math.max(3 * o.deadAfter, 10_000))) as [
      number,
      number,
    ];
    // The others found this node dead (a stall longer than --node-timeout, with the connection
    // up): its counts are gone from Redis, so it states them again.
    if (reply[1] === 1 && this.#timer !== undefined && !this.#closed) this.emit('up');
  }

  async claim(c: StoreClaim): Promise<ClaimOutcome> {
    const o = this.options;
    const reply = await this.#run(
      'ptthClaim',
      o.nodeId,
      this.#nodeUrl,
      c.name,
      c.mustCreate ? '1' : '0',
      c.tokenGiven ? '1' : '0',
      c.tokenHash,
      c.holder ?? '',
      c.keyId ?? '',
      c.maxNames ?? '',
      c.lease ?? '',
      c.defaultLease,
      c.perName ?? '',
      c.perKey ?? '',
      c.nonce,
      c.privateHash,
      c.claimId,
    );
    const r = reply as Reply[];
    if (r[0] === 'taken') return { kind: 'taken' };
    if (r[0] === 'refuse') return { kind: 'refuse', reason: r[1] as StoreRefusal, count: Number(r[2]) };
    return { kind: 'ok', record: toRecord(r) };
  }

  /**
   * This node's channels of `name` moved by `delta` (a channel came without a claim's reservation,
   * or went); `nonce`: the registration they belong to (a successor's counts are left alone).
   */
  async move(name: string, delta: number, nonce: string): Promise<void> {
    await this.#run('ptthMove', this.options.nodeId, this.#nodeUrl, name, delta, nonce);
  }

  async abandon(name: string, created: boolean, nonce: string, claimId: string): Promise<void> {
    await this.#run('ptthAbandon', this.options.nodeId, this.#nodeUrl, name, created ? '1' : '0', nonce, claimId);
  }

  /** Gives back a claim's reservation if Redis ran the claim after all (its answer never came). */
  async abandonClaim(claimId: string): Promise<void> {
    await this.#run('ptthAbandonClaim', this.options.nodeId, this.#nodeUrl, claimId);
  }

  async release(name: string): Promise<void> {
    await this.#run('ptthRelease', name);
  }

  /** The record of `name`; its holders leave out this node (`all`: not even this one, for a listing). */
  async get(name: string, all = false): Promise<StoredRecord | undefined> {
    const reply = await this.#run('ptthGet', all ? '' : this.options.nodeId, name);
    return reply === null ? undefined : toRecord(reply as Reply[]);
  }

  /** The name a private URL's hash belongs to. */
  async byPrivate(hash: string): Promise<string | undefined> {
    const name = await this.#redis.get(`${this.options.prefix}p:${hash}`);
    return name ?? undefined;
  }

  async update(name: string, lease: number | undefined, tokenHash: string | undefined): Promise<void> {
    await this.#run('ptthUpdate', name, lease ?? '', tokenHash ?? '');
  }

  /** States what this node holds; resolves with the names another registration holds now. */
  async restate(held: readonly HeldRecord[]): Promise<string[]> {
    const args: (string | number)[] = [];
    for (const h of held) {
      args.push(h.name, h.channels, h.tokenHash, h.holder ?? '', h.keyId ?? '', h.lease, h.nonce, h.privateHash);
      args.push(h.createdAt);
    }
    return (await this.#run('ptthRestate', this.options.nodeId, this.#nodeUrl, ...args)) as string[];
  }

  /** Records that this node serves a Comet session (`expected`: only if it is still that node's). */
  async session(hash: string, name: string, expected?: string): Promise<boolean> {
    return (await this.#run('ptthSession', hash, name, this.options.nodeId, expected ?? '')) === 1;
  }

  async sessionOf(hash: string): Promise<{ name: string; node: string; url: URL | undefined } | undefined> {
    const reply = await this.#run('ptthSessionGet', hash);
    if (reply === null) return undefined;
    const [name, node, url] = reply as string[];
    return { name: name as string, node: node as string, url: parseUrl(url ?? '') };
  }

  /** The live nodes and their URLs. */
  async nodes(): Promise<PeerNode[]> {
    const p = this.options.prefix;
    const ids = await this.#redis.zrangebyscore(`${p}nodes`, Date.now() - this.options.deadAfter, '+inf');
    const out: PeerNode[] = [];
    for (const id of ids) {
      const url = parseUrl((await this.#redis.hget(`${p}node:${id}`, 'url')) ?? '');
      if (url) out.push({ id, url });
    }
    return out;
  }

  /** Every registration in the cluster (the status page), with the nodes holding its channels. */
  async list(limit: number): Promise<StoredRecord[]> {
    const p = this.options.prefix;
    const out: StoredRecord[] = [];
    let cursor = '0';
    do {
      const [next, keys] = await this.#redis.scan(cursor, 'MATCH', `${p}r:*`, 'COUNT', 200);
      cursor = next;
      for (const key of keys) {
        if (out.length >= limit) return out;
        const record = await this.get(key.slice(p.length + 2), true);
        if (record) out.push(record);
      }
    } while (cursor !== '0');
    return out;
  }

  /**
   * Whether Redis lost everything since this node last looked (a restart without persistence): the
   * store's epoch, a random value the first node to look sets, is gone or another. Reads it anew.
   */
  async epochChanged(): Promise<boolean> {
    const key = `${this.options.prefix}epoch`;
    await this.#redis.set(key, randomSecret(96), 'NX');
    const now = (await this.#redis.get(key)) ?? undefined;
    const changed = this.#epoch !== undefined && now !== this.#epoch;
    this.#epoch = now;
    return changed;
  }

  /** The cluster's secret for the internal hop and private URLs, made once by the first node. */
  async secret(): Promise<string> {
    const key = this.#secretKey;
    await this.#redis.set(key, randomSecret(256), 'NX');
    const value = await this.#redis.get(key);
    if (!value) throw new Error('Redis lost the cluster secret just after setting it');
    this.#secret = value;
    return value;
  }

  /** Leaves the cluster (its channels stop counting now) and closes both connections. */
  async close(): Promise<void> {
    if (this.#closed) return;
    if (this.#timer) clearInterval(this.#timer);
    try {
      if (this.ready) await this.#run('ptthLeave', this.options.nodeId);
    } catch {
      // Redis is gone: the node's heartbeat expires and the others reap it.
    }
    this.#closed = true;
    this.#redis.disconnect();
    this.#sub.disconnect();
  }
}

function connection(redis: string | RedisOptions, common: RedisOptions): Redis {
  // ioredis's option types are not written for exactOptionalPropertyTypes; the values are.
  const options = typeof redis === 'string' ? common : { ...redis, ...common };
  return typeof redis === 'string' ? new Redis(redis, options as never) : new Redis(options as never);
}

function parseUrl(s: string): URL | undefined {
  if (s === '') return undefined;
  try {
    return new URL(s);
  } catch {
    return undefined;
  }
}

function toRecord(r: Reply[]): StoredRecord {
  const s = (i: number): string => String(r[i] ?? '');
  const flat = (r[10] ?? []) as (string | number)[];
  const holders: HolderNode[] = [];
  for (let i = 0; i + 2 < flat.length; i += 3) {
    const url = parseUrl(String(flat[i + 1]));
    if (url) holders.push({ id: String(flat[i]), url, channels: Number(flat[i + 2]) });
  }
  return {
    created: s(1) === '1',
    name: s(2),
    tokenHash: s(3),
    holder: s(4) || undefined,
    keyId: s(5) || undefined,
    lease: Number(s(6)),
    nonce: s(7),
    createdAt: Number(s(8)),
    pttl: Number(s(9)),
    holders,
  };
}
