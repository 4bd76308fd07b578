import type { Channel, Exchange, UpgradeExchange } from '../channels/channel.js';
import { PtthError } from '../http/errors.js';
import { randomSecret, tokenHash, type ClaimParams } from './names.js';
import { timingSafeEqual } from 'node:crypto';

/**
 * What a registration tells the table that holds it: a channel came or went (the table's events),
 * and its lease ran out. The in-memory table is one; a shared store's node table another.
 */
export interface RegistrationOwner {
  emit(event: 'channel-open' | 'channel-close', registration: Registration, channel: Channel): boolean;
  release(registration: Registration, reason: string): void;
}

export interface QueueOptions {
  /** Requests that may wait for a busy name (503 past it). */
  readonly queueLimit: number;
  /** Milliseconds a request waits when every channel is busy. */
  readonly queueTimeout: number;
  /** Milliseconds a request waits when the name has no channel at all (between reconnects). */
  readonly reconnectWait: number;
}

type Pending =
  | { upgrade: false; ex: Exchange; timer: NodeJS.Timeout | undefined; gone: boolean; avoid?: Channel | undefined }
  | { upgrade: true; ex: UpgradeExchange; timer: NodeJS.Timeout | undefined; gone: boolean };

/**
 * A claimed name: its token, lease, private id and live channels. It spreads requests over idle
 * channels round robin and queues them (bounded, with a deadline) when all are busy.
 */
export class Registration {
  readonly name: string;
  /** The capability in the private URL (192 random bits; a cluster derives it, see src/cluster/store.ts). */
  readonly privateId: string;
  readonly createdAt: number;
  /** tokenHash() of the token: a node of a cluster never learns the token of a name claimed elsewhere. */
  #tokenHash: string;
  /**
   * For a name claimed without a token: the claimant's address as the per-address limits count it
   * (addressKey: IPv4, or the IPv6 /64). A later tokenless claim from there is the same client; from
   * anywhere else, or with a token, it is refused. Undefined for a name claimed with a token, and
   * cleared when a token is set through the private URL.
   */
  holder: string | undefined;
  /**
   * The access key it is held under (undefined on an open gateway): the per-key limits count it.
   * A reclaim with the right token under another key that may claim the name moves it there (a
   * rotated key keeps its apps' names).
   */
  keyId: string | undefined;
  /** Seconds the registration survives with no live channel. */
  lease: number;
  requests = 0;
  readonly channels: Channel[] = [];
  /**
   * Other gateway nodes that hold channels of this name (a cluster, src/cluster/): a request with no
   * local channel available goes over the internal hop to one of them. Never counted as channels.
   */
  readonly remotes: Channel[] = [];
  #queue: Pending[] = [];
  #waiting = 0;
  #rr = 0;
  #rrRemote = 0;
  /** HTTP/2 channels among `channels`: the preference pass in #pick runs only when there are some. */
  #multiplexed = 0;
  #expiry: NodeJS.Timeout | undefined;
  #released = false;
  #options: QueueOptions;
  #table: RegistrationOwner;

  constructor(
    table: RegistrationOwner,
    name: string,
    token: string,
    lease: number,
    options: QueueOptions,
    keyId?: string,
    holder?: string,
    stored?: StoredIdentity,
  ) {
    this.#table = table;
    this.name = name;
    this.#tokenHash = stored?.tokenHash ?? tokenHash(token);
    this.privateId = stored?.privateId ?? randomSecret(192);
    this.createdAt = stored?.createdAt ?? Date.now();
    this.holder = holder;
    this.keyId = keyId;
    this.lease = lease;
    this.#options = options;
    this.#armExpiry();
  }

  /** No channel of this name is live, here or (cluster) on another node: its lease runs. */
  get #unserved(): boolean {
    return this.channels.length === 0 && this.remotes.length === 0;
  }

  get released(): boolean {
    return this.#released;
  }
  /** Requests waiting for a channel now. */
  get waiting(): number {
    return this.#waiting;
  }
  /** When the registration ends if no channel comes back (ms since epoch), or undefined while live. */
  expiresAt: number | undefined;

  /** tokenHash() of the name's token (what a shared store keeps). */
  get tokenHash(): string {
    return this.#tokenHash;
  }
  /** A token set after the claim (private URL PUT) makes the name held by the token, not the address. */
  set token(value: string) {
    this.#tokenHash = tokenHash(value);
    this.holder = undefined;
  }
  /** Takes the token hash and holder a shared store reports (another node changed them). */
  storedClaimant(hash: string, holder: string | undefined): void {
    this.#tokenHash = hash;
    this.holder = holder;
  }

  /** Constant time: both sides are SHA-256 digests of the same length. */
  tokenMatches(token: string): boolean {
    return timingSafeEqual(Buffer.from(tokenHash(token)), Buffer.from(this.#tokenHash));
  }

  /**
   * Throws 403 PTTH_ERR_TOKEN_MISMATCH unless `params` are the holder's: the same token for a name
   * claimed with one; no token, the same address (`params.holder`) and the same access key for a
   * name claimed without.
   */
  checkClaimant(params: Pick<ClaimParams, 'token' | 'holder' | 'keyId'>): void {
    const refused = this.#claimantRefusal(params);
    if (refused) throw claimantError(refused, this.name);
  }

  #claimantRefusal(params: Pick<ClaimParams, 'token' | 'holder' | 'keyId'>): ClaimantRefusal | undefined {
    if (this.holder !== undefined) {
      if (params.token !== undefined) return 'tokenless-held';
      if (params.holder !== this.holder) return 'other-address';
      // An address can be shared (NAT): on a gateway with keys, another key's tenant there is another client.
      if (params.keyId !== this.keyId) return 'other-key';
      return undefined;
    }
    if (params.token === undefined) return 'token-needed';
    return this.tokenMatches(params.token) ? undefined : 'token-mismatch';
  }

  /** Puts a live channel into service. */
  addChannel(channel: Channel): void {
    if (this.#released) {
      channel.close();
      return;
    }
    this.#disarmExpiry();
    this.channels.push(channel);
    if (channel.transport === 'http2') this.#multiplexed++;
    channel.events = {
      available: (ch) => this.#serveWaiting(ch),
      closed: (ch) => this.#remove(ch),
    };
    this.#table.emit('channel-open', this, channel);
    this.#serveWaiting(channel);
  }

  #remove(channel: Channel): void {
    const i = this.channels.indexOf(channel);
    if (i === -1) return;
    this.channels.splice(i, 1);
    if (channel.transport === 'http2') this.#multiplexed--;
    this.#table.emit('channel-close', this, channel);
    this.#leaseRuns();
  }

  /** The lease counts down (`ms`, default all of it) if the name is held and no channel is live. */
  #leaseRuns(ms?: number): void {
    if (this.#unserved && !this.#released) this.#armExpiry(ms);
  }

  #armExpiry(ms = this.lease * 1000): void {
    this.#disarmExpiry();
    this.expiresAt = Date.now() + ms;
    this.#expiry = setTimeout(() => this.#table.release(this, 'lease expired'), ms);
    this.#expiry.unref();
  }

  /**
   * The lease ends `ms` from now unless a channel comes: what is left of it when a shared store
   * started it elsewhere. Nothing while a channel (here or on another node) is live.
   */
  expireIn(ms: number): void {
    this.#leaseRuns(Math.max(0, ms));
  }

  #disarmExpiry(): void {
    if (this.#expiry) clearTimeout(this.#expiry);
    this.#expiry = undefined;
    this.expiresAt = undefined;
  }

  /** Changes the lease; restarts the countdown if no channel is live. */
  setLease(seconds: number): void {
    this.lease = seconds;
    this.#leaseRuns();
  }

  #pick(upgrade: boolean, hops: number, avoid?: Channel): Channel | undefined {
    const list = this.channels;
    const n = list.length;
    if (!upgrade && n > 1 && this.#multiplexed > 0) {
      // Multiplexed channels first: an app that keeps an HTTP/1.1 channel beside its HTTP/2 one
      // keeps it for upgrades (the Node client does), and one HTTP/2 connection carries many requests.
      for (let k = 0; k < n; k++) {
        const i = (this.#rr + k) % n;
        const ch = list[i] as Channel;
        if (ch.transport === 'http2' && ch.available && ch !== avoid) {
          this.#rr = i + 1;
          return ch;
        }
      }
    }
    for (let k = 0; k < n; k++) {
      const i = (this.#rr + k) % n;
      const ch = list[i] as Channel;
      if (ch.available && (!upgrade || ch.upgradable) && ch !== avoid) {
        this.#rr = i + 1;
        return ch;
      }
    }
    return hops < MAX_HOPS ? this.#pickRemote(avoid) : undefined;
  }

  /** Another node that holds a channel of this name, round robin (local channels always go first). */
  #pickRemote(avoid: Channel | undefined): Channel | undefined {
    const list = this.remotes;
    const n = list.length;
    for (let k = 0; k < n; k++) {
      const i = (this.#rrRemote + k) % n;
      const ch = list[i] as Channel;
      if (ch.available && ch !== avoid) {
        this.#rrRemote = i + 1;
        return ch;
      }
    }
    return undefined;
  }

  /** Puts another node's holding of this name in service (cluster): waiting requests go to it. */
  addRemote(channel: Channel): void {
    if (this.#released || this.remotes.includes(channel)) return;
    this.remotes.push(channel);
    channel.events = {
      available: (ch) => this.#serveWaiting(ch),
      closed: (ch) => this.removeRemote(ch),
    };
    this.#disarmExpiry();
    this.#serveWaiting(channel);
  }

  removeRemote(channel: Channel): void {
    const i = this.remotes.indexOf(channel);
    if (i === -1) return;
    this.remotes.splice(i, 1);
    this.#leaseRuns();
  }

  dispatch(ex: Exchange): void {
    this.requests++;
    // A request an app refused unprocessed (a closing HTTP/2 connection) goes round once more.
    ex.retry = (refusedBy) => {
      ex.retry = undefined;
      if (this.#released) {
        ex.fail(new PtthError('PTTH_ERR_NO_CHANNEL'));
        ex.done();
        return;
      }
      this.#send(ex, refusedBy);
    };
    this.#send(ex);
  }

  #send(ex: Exchange, avoid?: Channel): void {
    const ch = this.#waiting === 0 ? this.#pick(false, ex.hops ?? 0, avoid) : undefined;
    if (ch) ch.dispatch(ex);
    else this.#enqueue({ upgrade: false, ex, timer: undefined, gone: false, avoid });
  }

  upgrade(ex: UpgradeExchange): void {
    this.requests++;
    const ch = this.#waiting === 0 ? this.#pick(true, ex.hops ?? 0) : undefined;
    if (ch) ch.upgrade(ex);
    else if (this.channels.length > 0 && this.remotes.length === 0 && !this.channels.some((c) => c.upgradable)) {
      // Waiting would not help: no live channel of this app can ever carry an upgrade.
      ex.fail(new PtthError('PTTH_ERR_UPGRADE_UNSUPPORTED'));
      ex.done();
    } else this.#enqueue({ upgrade: true, ex, timer: undefined, gone: false });
  }

  #enqueue(p: Pending): void {
    if (this.#waiting >= this.#options.queueLimit) {
      p.ex.fail(new PtthError('PTTH_ERR_QUEUE_FULL'));
      p.ex.done();
      return;
    }
    const wait = this.#unserved ? this.#options.reconnectWait : this.#options.queueTimeout;
    p.timer = setTimeout(() => this.#giveUp(p, new PtthError('PTTH_ERR_NO_CHANNEL')), wait);
    const onGone = (): void => this.#giveUp(p, undefined);
    if (p.upgrade) p.ex.socket.once('close', onGone);
    else p.ex.res.once('close', onGone);
    this.#queue.push(p);
    this.#waiting++;
    // An entry already waiting may be one no available channel can take (a request avoiding the
    // channel that refused it, an upgrade waiting for an upgradable channel), and an idle channel
    // signals nothing more: without this, every later request would queue behind it until its
    // timeout while that channel sat idle.
    if (this.#waiting > 1)
      for (const ch of [...this.channels, ...this.remotes]) if (ch.available) this.#serveWaiting(ch);
  }

  #giveUp(p: Pending, err: PtthError | undefined): void {
    if (p.gone) return;
    p.gone = true;
    this.#waiting--;
    if (p.timer) clearTimeout(p.timer);
    if (err) p.ex.fail(err);
    p.ex.done();
    // Out of the queue at once: a queue that never empties (a busy name) would otherwise keep every
    // visitor that gave up, with its request and response, and #serveWaiting would scan them all.
    const i = this.#queue.indexOf(p);
    if (i !== -1) this.#queue.splice(i, 1);
  }

  #serveWaiting(channel: Channel): void {
    while (this.#waiting > 0 && channel.available) {
      const remote = channel.transport === 'node';
      const idx = this.#queue.findIndex(
        (p) =>
          !p.gone && (!remote || (p.ex.hops ?? 0) < MAX_HOPS) && (p.upgrade ? channel.upgradable : p.avoid !== channel),
      );
      if (idx === -1) return;
      const p = this.#queue[idx] as Pending;
      // Entries before idx are upgrades this channel cannot take: they stay queued.
      if (idx === 0) this.#queue.shift();
      else this.#queue.splice(idx, 1);
      p.gone = true;
      this.#waiting--;
      if (p.timer) clearTimeout(p.timer);
      if (p.upgrade) channel.upgrade(p.ex);
      else channel.dispatch(p.ex);
    }
  }

  /** Ends the registration: channels close, waiting requests fail. */
  end(): void {
    if (this.#released) return;
    this.#released = true;
    this.#disarmExpiry();
    for (const p of this.#queue.splice(0))
      this.#giveUp(p, new PtthError('PTTH_ERR_NOT_FOUND', 'The registration was released.'));
    for (const ch of [...this.channels]) ch.close();
    for (const ch of this.remotes.splice(0)) ch.close();
  }
}

/** Why a claim for a held name is not its holder's (a shared store decides the same, src/cluster/lua.ts). */
export type ClaimantRefusal = 'tokenless-held' | 'other-address' | 'other-key' | 'token-needed' | 'token-mismatch';

/** 403 PTTH_ERR_TOKEN_MISMATCH with the sentence for `why`. */
export function claimantError(why: ClaimantRefusal, name: string): PtthError {
  const say = (message: string): PtthError => new PtthError('PTTH_ERR_TOKEN_MISMATCH', message);
  switch (why) {
    case 'tokenless-held':
      return say(
        `The name "${name}" is held by a client that claimed it without a token: a claim with a token ` +
          'cannot take it over while the registration lives.',
      );
    case 'other-address':
      return say(
        `The name "${name}" is held by a client at another address that claimed it without a token. ` +
          'Pick another name or wait for its lease to end; claim with a token to keep a name from any address.',
      );
    case 'other-key':
      return say(
        `The name "${name}" is held, without a token, under another access key: claim it with a token to move it.`,
      );
    case 'token-needed':
      return say(`The name "${name}" is held under another token: claim it with the token it was claimed with.`);
    case 'token-mismatch':
      return say(`The name "${name}" is held under another token.`);
  }
}

/**
 * Hops a request may take between gateway nodes: a visitor's node sends it to a node that holds a
 * channel; that node, if its channel went meanwhile, may send it once more (a stale route costs
 * one extra hop, never an error); after that only local channels serve it.
 */
export const MAX_HOPS = 2;

/** A registration as a shared store keeps it: made on another node (or before a restart). */
export interface StoredIdentity {
  readonly tokenHash: string;
  readonly privateId: string;
  readonly createdAt: number;
}

/** What the table emits, with its payloads (the gateway relays them as its own events). */
