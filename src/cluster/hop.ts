import { createHmac, timingSafeEqual } from 'node:crypto';
import { type ClientRequest, type IncomingMessage, request as httpRequest, type ServerResponse } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { buildConnector, Client, type Dispatcher, Pool } from 'undici';
import {
  type Channel,
  type ChannelEvents,
  channelId,
  type Exchange,
  type UpgradeExchange,
} from '../channels/channel.js';
import type { HopCredentials } from '../gateway/context.js';
import { PtthError } from '../http/errors.js';
import { HOP_HEADER, headerStrings, idempotent, rawHeader, withoutHeaders } from '../http/headers.js';
import { leaveOnEnd, rawHead, splice } from '../http/relay.js';
import { noop } from '../shared/noop.js';
import { MAX_HOPS } from '../table/registration.js';

/*
 * The internal hop of a cluster (docs/PROTOCOL.md section 12): a node with a visitor for a name it
 * holds no channel of sends the request to a node that holds one, as an ordinary HTTP/1.1 request
 * with the visitor's headers (forwarding headers already added) and signed credentials in
 * X-Ptth-Hop. The receiving node checks them and routes the request to the named registration
 * without classifying, admitting or rate-limiting it again: the first node did that.
 */

/** How far a credential's timestamp may be from the receiver's clock (replays are bounded by it). */
export const HOP_WINDOW_MS = 60_000;

/** Node ids: what fits between the credential's separators (`;`, `=`, `|`) and a header value. */
const NODE_ID = /^[A-Za-z0-9._~:@+-]{1,128}$/;
/** App names are DNS labels (src/table/names.ts). */
const NAME = /^[a-z0-9-]{1,63}$/;
const CREDENTIALS =
  /^v1;node=([A-Za-z0-9._~:@+-]{1,128});name=([a-z0-9-]{1,63});hops=([0-9]{1,2});t=([0-9]{1,16});sig=([A-Za-z0-9_-]{43})$/;
/** A secret shorter than this would make the HMAC guessable offline from one captured header. */
const MIN_SECRET = 16;
/**
 * Milliseconds a signed credential is handed out again for the same name and hop count: one HMAC
 * a second per name rather than one per request. Reuse changes nothing for a replay, which any
 * captured credential allows within the window anyway; the credential only arrives up to this much
 * older, well inside the window.
 */
const SIGN_REUSE_MS = 1_000;
/** Entries each credential cache (signed, verified) holds at most; it is emptied when full. */
const CACHE_MAX = 4_096;

export interface HopSignerOptions {
  /** Milliseconds a credential stays valid either side of its timestamp (default 60000). */
  readonly windowMs?: number;
  /** The clock (default Date.now); tests move it. */
  readonly now?: () => number;
}

/**
 * Signs and checks the credentials of the internal hop:
 * `v1;node=ID;name=NAME;hops=N;t=UNIX_MS;sig=BASE64URL(HMAC-SHA256(secret, "v1|ID|NAME|N|UNIX_MS"))`.
 * The name travels in them because with path URLs the Host a node receives is the gateway's own.
 */
export class HopSigner {
  readonly nodeId: string;
  readonly #secret: Buffer;
  readonly #window: number;
  readonly #now: () => number;
  /** Credentials signed lately, by `name|hops`. */
  readonly #signed = new Map<string, { t: number; value: string }>();
  /** Credentials that verified, with their timestamp: the HMAC is not computed again for them. */
  readonly #verified = new Map<string, { t: number; credentials: HopCredentials }>();

  constructor(secret: string, nodeId: string, options: HopSignerOptions = {}) {
    if (typeof secret !== 'string' || secret.length < MIN_SECRET)
      throw new TypeError(`the cluster secret must be a string of at least ${MIN_SECRET} characters`);
    if (typeof nodeId !== 'string' || !NODE_ID.test(nodeId))
      throw new TypeError(`the node id ${JSON.stringify(nodeId)} must be 1 to 128 of A-Z a-z 0-9 . _ ~ : @ + -`);
    this.#secret = Buffer.from(secret, 'utf8');
    this.nodeId = nodeId;
    this.#window = options.windowMs ?? HOP_WINDOW_MS;
    this.#now = options.now ?? Date.now;
  }

  #mac(node: string, name: string, hops: number, t: number): Buffer {
    return createHmac('sha256', this.#secret).update(`v1|${node}|${name}|${hops}|${t}`).digest();
  }

  /** The X-Ptth-Hop value for a request on its `hops`th crossing (1 from the visitor's node). */
  sign(name: string, hops: number): string {
    if (!NAME.test(name)) throw new TypeError(`${JSON.stringify(name)} is not an app name`);
    if (!Number.isInteger(hops) || hops < 1 || hops > MAX_HOPS)
      throw new TypeError(`hops must be an integer from 1 to ${MAX_HOPS}, got ${hops}`);
    const now = Math.floor(this.#now());
    const key = `${name}|${hops}`;
    const recent = this.#signed.get(key);
    if (recent !== undefined && now >= recent.t && now - recent.t < SIGN_REUSE_MS) return recent.value;
    const sig = this.#mac(this.nodeId, name, hops, now).toString('base64url');
    const value = `v1;node=${this.nodeId};name=${name};hops=${hops};t=${now};sig=${sig}`;
    if (this.#signed.size >= CACHE_MAX) this.#signed.clear();
    this.#signed.set(key, { t: now, value });
    return value;
  }

  /**
   * The credentials in an X-Ptth-Hop value, or undefined when they are malformed, out of the time
   * window or not signed with this cluster's secret. Never throws (the value is a peer's). An
   * arrow function: it is handed on as `verifyHop` on its own.
   */
  readonly verify = (value: string): HopCredentials | undefined => {
    if (typeof value !== 'string' || value.length > 512) return undefined;
    const known = this.#verified.get(value);
    if (known !== undefined) return Math.abs(this.#now() - known.t) > this.#window ? undefined : known.credentials;
    const m = CREDENTIALS.exec(value);
    if (m === null) return undefined;
    const [, node, name, hopsText, tText, sigText] = m as unknown as [string, string, string, string, string, string];
    const hops = Number(hopsText);
    const t = Number(tText);
    if (hops < 1 || hops > MAX_HOPS || Math.abs(this.#now() - t) > this.#window) return undefined;
    const sig = Buffer.from(sigText, 'base64url');
    const want = this.#mac(node, name, hops, t);
    if (sig.length !== want.length || !timingSafeEqual(sig, want)) return undefined;
    // Only a value signed with the secret enters the cache: a forged one is checked in full each time.
    const credentials: HopCredentials = Object.freeze({ node, name, hops });
    if (this.#verified.size >= CACHE_MAX) this.#verified.clear();
    this.#verified.set(value, { t, credentials });
    return credentials;
  };
}

/** Another node of the cluster, as the hop reaches it. */
export interface HopPeer {
  readonly id: string;
  /** Its node URL (`http:` or `https:`): where its gateway listens for hop traffic. */
  readonly url: URL;
}

export interface HopClientOptions {
  /** Milliseconds to open a connection to a peer (default 5000): past it the peer counts as unreachable. */
  readonly connectTimeout?: number;
  /**
   * Milliseconds from the end of a request to the peer's response head (default 120000; 504 past
   * it). Longer than a node's own queue and response timeouts, which answer first when the peer
   * is alive: this one only catches a peer that went silent.
   */
  readonly responseTimeout?: number;
  /** Certificate authorities for `https:` peers (default: the system's). */
  readonly ca?: string | Buffer | (string | Buffer)[];
}

/**
 * A connection of a peer's pool: undici's Client, which also counts the requests its current
 * socket carried (neither the pool nor undici's handler API tells), so that a request can tell a
 * pooled connection from a fresh one (see HopExchange.onError).
 */
class PeerClient extends Client {
  /** Requests put on the current socket so far. */
  uses = 0;

  constructor(origin: URL, options: Client.Options, connector: buildConnector.connector) {
    const self: { client?: PeerClient } = {};
    super(origin, {
      ...options,
      connect: (opts, cb) =>
        connector(opts, (...args) => {
          (self.client as PeerClient).uses = 0;
          cb(...args);
        }),
    });
    self.client = this;
  }

  override dispatch(options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    // The pool hands each request to one of its clients unchanged: the exchange learns which.
    if (handler instanceof HopExchange) handler.client = this;
    return super.dispatch(options, handler);
  }
}

/** One per node: the signer and an undici Pool per peer, shared by the peer's RemoteChannels. */
export class HopClient {
  readonly signer: HopSigner;
  /** @internal */ readonly connectTimeout: number;
  /** @internal */ readonly responseTimeout: number;
  readonly #ca: HopClientOptions['ca'];
  readonly #pools = new Map<string, { pool: Pool; users: number }>();
  readonly #channels = new Set<RemoteChannel>();
  #closed = false;

  constructor(signer: HopSigner, options: HopClientOptions = {}) {
    this.signer = signer;
    this.connectTimeout = positive('connectTimeout', options.connectTimeout ?? 5_000);
    this.responseTimeout = positive('responseTimeout', options.responseTimeout ?? 120_000);
    this.#ca = options.ca;
  }

  /** @internal The CAs for `https:` peers (upgrades, which go over node:http, take them too). */
  get ca(): HopClientOptions['ca'] {
    return this.#ca;
  }

  /** A channel to `peer` for the app `name`, for `Registration.addRemote`. */
  channel(peer: HopPeer, name: string): RemoteChannel {
    if (this.#closed) throw new Error('the hop client is closed');
    if (peer.url.protocol !== 'http:' && peer.url.protocol !== 'https:')
      throw new TypeError(`a node URL must be http: or https:, got ${peer.url.href}`);
    if (!NAME.test(name)) throw new TypeError(`${JSON.stringify(name)} is not an app name`);
    const ch = new RemoteChannel(this, peer, name);
    this.#channels.add(ch);
    return ch;
  }

  /** Closes every channel (their requests fail with 502) and the pools' connections. */
  close(): void {
    this.#closed = true;
    for (const ch of [...this.#channels]) ch.close();
    for (const { pool } of this.#pools.values()) pool.destroy(noop);
    this.#pools.clear();
  }

  /** @internal The pool for `peer`, counted as used by one more channel. */
  poolFor(peer: HopPeer): Pool {
    const key = `${peer.id} ${peer.url.origin}`;
    let entry = this.#pools.get(key);
    if (!entry) {
      const base = buildConnector({
        timeout: this.connectTimeout,
        ...(this.#ca === undefined ? {} : { ca: this.#ca }),
      });
      // No SNI for a peer named by its address: its certificate is checked against that address.
      const connector: buildConnector.connector = isIP(bare(peer.url.hostname))
        ? ({ servername: _, ...opts }, cb) => base(opts, cb)
        : base;
      const pool = new Pool(peer.url.origin, {
        // Any number of connections, one request at a time on each (as node's agent had).
        connections: null,
        pipelining: 1,
        // The exchange's own timer covers the wait for the answer from the end of the request
        // (responseTimeout). undici's headers timer would run from the first byte of the request
        // and cut a long upload; a body timer would cut a visitor who reads slowly, and the peer
        // bounds a silent app itself (its own response timeout).
        headersTimeout: 0,
        bodyTimeout: 0,
        // undici closes an idle connection at the peer's `Keep-Alive: timeout=N` hint less 2 s (4 s
        // without a hint), before the peer does; a race with the peer closing it anyway is met by
        // HopExchange (sent again once when idempotent).
        keepAliveTimeout: 4_000,
        keepAliveTimeoutThreshold: 2_000,
        strictContentLength: true,
        factory: (origin, options) => new PeerClient(origin, options as Client.Options, connector),
      });
      entry = { pool, users: 0 };
      this.#pools.set(key, entry);
    }
    entry.users++;
    return entry.pool;
  }

  /** @internal A channel is closed: its pool goes with the last channel to that peer. */
  released(ch: RemoteChannel): void {
    if (!this.#channels.delete(ch)) return;
    const key = `${ch.peer.id} ${ch.peer.url.origin}`;
    const entry = this.#pools.get(key);
    if (entry && --entry.users === 0) {
      entry.pool.destroy(noop);
      this.#pools.delete(key);
    }
  }
}

/** A URL's hostname without the brackets of an IPv6 address. */
function bare(hostname: string): string {
  return hostname.startsWith('[') ? hostname.slice(1, -1) : hostname;
}

function positive(name: string, value: number): number {
  if (!Number.isFinite(value) || value <= 0) throw new TypeError(`${name} must be a positive number of milliseconds`);
  return value;
}

/** What a hop attempt in flight offers its channel: to be cut when the channel closes. */
interface InFlight {
  abort(err: PtthError): void;
}

/**
 * Another node's holding of an app name, as a channel of the registration (`transport: 'node'`):
 * each request goes to the peer over HTTP/1.1 with X-Ptth-Hop credentials. Available while not
 * closed (the peer has its own queue). It closes itself when the peer cannot be reached, and the
 * registration then drops it; the cluster table adds a new one when the peer is back.
 */
export class RemoteChannel implements Channel {
  readonly id = channelId();
  readonly transport = 'node' as const;
  /** The peer's `host:port` (what the status page shows as the channel's address). */
  readonly remote: string;
  readonly openedAt = Date.now();
  readonly upgradable = true;
  readonly peer: HopPeer;
  readonly name: string;
  events: ChannelEvents | undefined;
  /** @internal */ readonly client: HopClient;
  /** @internal The peer's pool, shared with the other channels to it. */ readonly pool: Pool;
  /** @internal */ activeCount = 0;
  #served = 0;
  #closed = false;
  readonly #inFlight = new Set<InFlight>();

  constructor(client: HopClient, peer: HopPeer, name: string) {
    this.client = client;
    this.peer = peer;
    this.name = name;
    this.remote = peer.url.host;
    this.pool = client.poolFor(peer);
  }

  get active(): number {
    return this.activeCount;
  }
  get served(): number {
    return this.#served;
  }
  get available(): boolean {
    return !this.#closed;
  }
  get closed(): boolean {
    return this.#closed;
  }

  /** Closes the channel: requests in flight fail with 502, the registration drops it. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const x of [...this.#inFlight]) x.abort(new PtthError('PTTH_ERR_CHANNEL_LOST'));
    this.client.released(this);
    this.events?.closed(this);
  }

  /** @internal The peer cannot be reached: the channel leaves the registration, keeping what is in flight. */
  unreachable(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#releaseWhenIdle();
    this.events?.closed(this);
  }

  /**
   * Leaves service quietly (the peer no longer holds the name, or the route cache moved on): no new
   * requests, those in flight finish, and the pool is given back after the last one.
   */
  retire(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#releaseWhenIdle();
  }

  #releasePending = false;

  /** The pool may be shared with other channels to the peer: destroying it cuts their requests too. */
  #releaseWhenIdle(): void {
    if (this.#inFlight.size === 0) this.client.released(this);
    else this.#releasePending = true;
  }

  /** @internal */
  track(x: InFlight): void {
    this.#inFlight.add(x);
    this.activeCount++;
  }

  /** @internal An exchange is over; `served`: it was answered (not handed back). */
  untrack(x: InFlight, served: boolean): void {
    if (!this.#inFlight.delete(x)) return;
    this.activeCount--;
    if (served) this.#served++;
    if (this.#releasePending && this.#inFlight.size === 0) {
      this.#releasePending = false;
      this.client.released(this);
    }
    if (!this.#closed) this.events?.available(this);
  }

  /**
   * @internal An upgrade request to the peer (not yet sent: the caller ends it), over node:http on
   * a connection of its own: once upgraded it is spliced and never returns to a pool.
   */
  open(method: string, path: string, headers: string[]): ClientRequest {
    const url = this.peer.url;
    const ca = this.client.ca;
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    return send({
      agent: false,
      ...(ca === undefined ? {} : { ca }),
      protocol: url.protocol,
      hostname: bare(url.hostname),
      port: url.port === '' ? undefined : Number(url.port),
      method,
      path,
      headers,
      // The peer's answer is relayed as the app's: its head passes checkResponseHead there.
      setHost: false,
    });
  }

  /** The header list for the peer: the credentials first (a peer cut at its field limit keeps them). */
  hopHeaders(ex: { readonly headers: string[]; readonly hops?: number | undefined }): string[] {
    const out = [HOP_HEADER, this.client.signer.sign(this.name, (ex.hops ?? 0) + 1), ...ex.headers];
    // A visitor's HTTP/1.0 request may come without Host; the peer's server requires one.
    if (rawHeader(ex.headers, 'host') === undefined) out.push('Host', this.peer.url.host);
    return out;
  }

  dispatch(ex: Exchange): void {
    if (this.#closed) {
      ex.fail(new PtthError('PTTH_ERR_CHANNEL_LOST'));
      ex.done();
      return;
    }
    new HopExchange(this, ex).start();
  }

  upgrade(ex: UpgradeExchange): void {
    if (this.#closed) {
      ex.fail(new PtthError('PTTH_ERR_CHANNEL_LOST'));
      ex.done();
      return;
    }
    new HopUpgrade(this, ex).start();
  }
}

/** Whether a request declares a body (a chunked one, or a Content-Length other than 0). */
function declaresBody(headers: IncomingMessage['headers']): boolean {
  const length = headers['content-length'];
  return headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/**
 * One visitor request over the hop, from dispatch to its end: undici's handler for it (the legacy
 * callbacks, as H1Exchange in src/channels/http1.ts) and the one owner of its timer and listeners.
 * Its endings: `finish` (answered or failed; `ex.done` runs) or `handBack` (the registration sends
 * it elsewhere). undici reads the body only once a connection to the peer is open, so a peer that
 * cannot be reached leaves the request whole, to be sent again elsewhere.
 */
class HopExchange implements InFlight {
  readonly channel: RemoteChannel;
  readonly ex: Exchange;
  readonly res: ServerResponse;
  readonly hasBody: boolean;
  /** @internal Set by the peer's pool when it gives the attempt a connection (PeerClient.dispatch). */
  client: PeerClient | undefined = undefined;
  /** Cuts the attempt's connection (undici's, from onConnect). */
  cancel: ((err?: Error) => void) | undefined = undefined;
  /** The attempt has a connection (a failure before it is the peer being unreachable). */
  connected = false;
  /** The attempt's connection had carried requests before it (a pooled one). */
  reused = false;
  responded = false;
  /** Attempts on a pooled connection the peer had closed meanwhile, sent again on another. */
  resent = 0;
  ended = false;
  timer: NodeJS.Timeout | undefined = undefined;
  /** Resumes undici's parser after this exchange paused it for the visitor to drain. */
  resumeParser: (() => void) | undefined = undefined;

  constructor(channel: RemoteChannel, ex: Exchange) {
    this.channel = channel;
    this.ex = ex;
    this.res = ex.res;
    this.hasBody = declaresBody(ex.req.headers);
  }

  start(): void {
    this.channel.track(this);
    this.res.on('close', this.onVisitorClose);
    this.send();
    if (!this.hasBody && !this.ended) this.ex.req.resume();
  }

  send(): void {
    const { ex } = this;
    let headers = this.channel.hopHeaders(ex);
    // The visitor's `Expect: 100-continue` was answered by this node's server already (and undici
    // refuses the field).
    if (ex.req.headers.expect !== undefined) headers = withoutHeaders(headers, 'expect');
    this.client = this.cancel = undefined;
    this.connected = this.reused = false;
    const options: Dispatcher.DispatchOptions & { servername: string } = {
      method: ex.req.method as Dispatcher.HttpMethod,
      path: ex.req.url as string,
      headers,
      // The peer's name, not the visitor's Host, is what its certificate is checked against (and
      // undici opens a new connection when a request's name differs from its connection's).
      servername: this.channel.peer.url.hostname,
      // undici frames it: Content-Length as declared, or chunked when the length is not declared
      // (whatever the method), so a body is never sent raw.
      body: this.hasBody ? ex.req : null,
      // Keep the connection after a HEAD or a GET with a body: the peer is a gateway node, whose
      // server frames both correctly.
      reset: false,
    };
    this.channel.pool.dispatch(options, this as unknown as Dispatcher.DispatchHandler);
  }

  // --- undici's handler ---------------------------------------------------------------------

  onConnect(cancel: (err?: Error) => void): void {
    // The visitor left (or the channel closed) while the connection was being opened.
    if (this.ended) return cancel();
    this.cancel = cancel;
    this.connected = true;
    const client = this.client;
    this.reused = client !== undefined && client.uses++ > 0;
  }

  onResponseStarted(): void {}

  onBodySent(): void {}

  /** The whole request is with the peer: its answer has `responseTimeout` to begin. */
  onRequestSent(): void {
    if (this.ended || this.responded) return;
    this.timer = setTimeout(hopTimeout, this.channel.client.responseTimeout, this);
  }

  onHeaders(status: number, raw: Buffer[], resume: () => void, reason: string): boolean {
    if (this.ended) return false;
    if (status < 200) {
      // Interim answers (102, 103) are not relayed; the peer's server sends no 100 (no Expect goes
      // to it) and no 101 to a request that asked for no upgrade.
      if (status >= 102) return true;
      this.fail(new PtthError('PTTH_ERR_BAD_RESPONSE', `The gateway node holding the app answered ${status}.`));
      return false;
    }
    this.responded = true;
    this.disarm();
    const headers = headerStrings(raw);
    if (this.ex.respond(status, reason, headers)) {
      this.finish(true);
      this.cancel?.();
      return false;
    }
    if ((status === 204 || status === 304) && (rawHeader(headers, 'content-length')?.trim() ?? '0') !== '0') {
      // Content-Length on a 204 or 304 describes no body (RFC 9110 sections 8.6, 15.4.5), but undici
      // fails such a response at its end for the length it did not read: the visitor's answer is
      // complete now, and the connection is not reused.
      this.res.end();
      this.finish(true);
      this.cancel?.();
      return false;
    }
    this.resumeParser = resume;
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (this.ended) return false;
    if (this.res.write(chunk)) return true;
    // The visitor reads slower than the peer sends: undici's parser (and so the peer) waits.
    (this.res as ServerResponse & Drained)[EXCHANGE] = this;
    this.res.once('drain', visitorDrained);
    return false;
  }

  onComplete(): void {
    if (this.ended) return;
    this.res.end();
    this.finish(true);
  }

  onError(err: Error & { code?: unknown }): void {
    if (this.ended) return;
    this.disarm();
    const { ex } = this;
    if (this.responded || (ex.req.destroyed && !ex.req.complete)) {
      // After the head the visitor's connection is closed: the response cannot be completed. Or
      // the visitor's upload failed (they left).
      this.res.destroy();
      this.finish(true);
      return;
    }
    if (err.code === 'UND_ERR_INVALID_ARG') {
      // undici refused the header list or path; nothing was sent.
      ex.fail(new PtthError('PTTH_ERR_BAD_PARAMS', `The request could not be forwarded: ${err.message}`));
      this.finish(true);
      return;
    }
    const { connected, reused } = this;
    const idem = idempotent(ex.req.method);
    if (connected && reused && this.resent === 0 && !this.hasBody && idem) {
      // The race every HTTP client meets on a pooled connection: the peer closed it as idle while
      // the request was on its way (undici does not send a request again). Nothing of the request
      // was processed; once more, on another connection.
      this.resent++;
      this.send();
      return;
    }
    if (!connected || !reused) this.channel.unreachable();
    // undici reads the body only on a connection: before one the request is whole.
    const replayable = !connected || (idem && !this.hasBody);
    // A request without a body was read to its end (and destroyed) already; one with a body is whole
    // unless the visitor's upload failed.
    if (replayable && ex.retry && (ex.req.complete || !ex.req.destroyed)) {
      this.handBack();
      return;
    }
    const why = typeof err.code === 'string' ? err.code : err.message;
    this.fail(
      new PtthError('PTTH_ERR_CHANNEL_LOST', `The gateway node holding the app could not be reached (${why}).`),
    );
  }

  // --- the exchange's own events -------------------------------------------------------------

  // The one closure every exchange needs (a listener on the visitor's response).
  onVisitorClose = (): void => {
    if (this.ended || this.res.writableFinished) return;
    // The visitor left: the peer's request goes too, and with it the app's.
    this.finish(true);
    this.cancel?.();
  };

  onVisitorDrain(): void {
    if (!this.ended) this.resumeParser?.();
  }

  abort(err: PtthError): void {
    this.fail(err);
  }

  fail(err: PtthError): void {
    if (this.ended) return;
    this.ex.fail(err);
    this.finish(true);
    this.cancel?.();
  }

  disarm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  #end(): void {
    this.ended = true;
    this.disarm();
    this.res.removeListener('close', this.onVisitorClose);
  }

  finish(served: boolean): void {
    if (this.ended) return;
    this.#end();
    this.ex.done();
    this.channel.untrack(this, served);
  }

  /** Hands the request back to its registration (sent once more elsewhere, or queued). */
  handBack(): void {
    this.#end();
    this.channel.untrack(this, false);
    (this.ex.retry as (refusedBy: Channel) => void)(this.channel);
  }
}

function hopTimeout(x: HopExchange): void {
  x.timer = undefined;
  x.fail(new PtthError('PTTH_ERR_APP_TIMEOUT'));
}

/**
 * Where a visitor's response points at the exchange whose parser waits for its 'drain', so that
 * one listener function (visitorDrained) serves every pause: no closure per pause.
 */
const EXCHANGE = Symbol('ptth.hopexchange');
interface Drained {
  [EXCHANGE]?: HopExchange;
}
function visitorDrained(this: ServerResponse & Drained): void {
  this[EXCHANGE]?.onVisitorDrain();
}

/**
 * A visitor's upgrade over the hop: the peer's 101 is checked (`ex.check`) and both sockets are
 * spliced; a refusal is relayed and the visitor's connection closed. `finish` runs exactly once.
 */
class HopUpgrade implements InFlight {
  readonly channel: RemoteChannel;
  readonly ex: UpgradeExchange;
  readonly visitor: Duplex;
  req: ClientRequest | undefined = undefined;
  ended = false;
  timer: NodeJS.Timeout | undefined = undefined;

  constructor(channel: RemoteChannel, ex: UpgradeExchange) {
    this.channel = channel;
    this.ex = ex;
    this.visitor = ex.socket;
  }

  start(): void {
    this.channel.track(this);
    this.visitor.on('error', noop);
    this.visitor.once('close', this.onVisitorClose);
    const { ex } = this;
    const req = this.channel.open(ex.req.method ?? 'GET', ex.req.url ?? '/', this.channel.hopHeaders(ex));
    this.req = req;
    req.on('error', (err: Error & { code?: unknown }) => this.onError(err));
    req.on('upgrade', (res: IncomingMessage, socket: Socket, head: Buffer) => this.onUpgrade(res, socket, head));
    req.on('response', (res: IncomingMessage) => this.onRefusal(res));
    req.end();
    const client = this.channel.client;
    this.timer = setTimeout(() => this.fail(new PtthError('PTTH_ERR_APP_TIMEOUT')), client.responseTimeout);
  }

  onUpgrade(res: IncomingMessage, peer: Socket, head: Buffer): void {
    peer.on('error', noop);
    if (this.ended) {
      peer.destroy();
      return;
    }
    this.clearTimer();
    const { ex, visitor } = this;
    const checked = ex.check(res.statusCode, res.statusMessage, res.rawHeaders);
    if (visitor.destroyed || checked instanceof PtthError) {
      if (checked instanceof PtthError) ex.fail(checked);
      peer.destroy();
      this.finish(true);
      return;
    }
    visitor.removeListener('close', this.onVisitorClose);
    peer.setTimeout(0);
    visitor.write(rawHead(101, checked.reason, checked.headers));
    if (head.length > 0) visitor.write(head);
    if (ex.head.length > 0) peer.write(ex.head);
    // The connection to the peer now carries the visitor's protocol, outside the pool and
    // the channel: closing the channel leaves it, as closing a reversed HTTP/1.1 channel leaves
    // the upgrades it carried.
    this.ended = true;
    this.channel.untrack(this, true);
    splice(visitor, peer, () => this.ex.done());
  }

  /** The app (or the peer) declined the upgrade: its answer is relayed and the connection closed. */
  onRefusal(res: IncomingMessage): void {
    if (this.ended) {
      res.destroy();
      return;
    }
    this.clearTimer();
    const head = this.ex.check(res.statusCode, res.statusMessage, res.rawHeaders);
    if (head instanceof PtthError) {
      res.destroy();
      this.fail(head);
      return;
    }
    const { visitor } = this;
    visitor.write(
      rawHead(head.status, head.reason, withoutHeaders(head.headers, 'content-length'), 'Connection: close\r\n'),
    );
    leaveOnEnd(visitor);
    res.on('error', noop);
    res.on('data', (chunk: Buffer) => {
      if (!visitor.write(chunk)) {
        res.pause();
        visitor.once('drain', () => res.resume());
      }
    });
    res.on('end', () => {
      visitor.end();
      this.finish(true);
    });
    res.on('close', () => {
      if (!res.complete) visitor.destroy();
      this.finish(true);
    });
  }

  onError(err: Error & { code?: unknown }): void {
    if (this.ended) return;
    // Its connection was its own (never a pooled one): a failure before the answer is the peer's.
    this.channel.unreachable();
    const why = typeof err.code === 'string' ? err.code : err.message;
    this.fail(
      new PtthError('PTTH_ERR_CHANNEL_LOST', `The gateway node holding the app could not be reached (${why}).`),
    );
  }

  onVisitorClose = (): void => {
    if (this.ended) return;
    this.req?.destroy();
    this.finish(true);
  };

  abort(err: PtthError): void {
    this.fail(err);
  }

  fail(err: PtthError): void {
    if (this.ended) return;
    this.req?.destroy();
    this.ex.fail(err);
    this.finish(true);
  }

  clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  finish(served: boolean): void {
    if (this.ended) return;
    this.ended = true;
    this.clearTimer();
    this.visitor.removeListener('close', this.onVisitorClose);
    this.ex.done();
    this.channel.untrack(this, served);
  }
}
