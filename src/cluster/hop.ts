import { createHmac, timingSafeEqual } from 'node:crypto';
import { Agent as HttpAgent, type ClientRequest, type IncomingMessage, request as httpRequest } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import {
  type Channel,
  type ChannelEvents,
  channelId,
  type Exchange,
  type UpgradeExchange,
} from '../channels/channel.js';
import type { HopCredentials } from '../gateway/context.js';
import { PtthError } from '../http/errors.js';
import { HOP_HEADER, idempotent, rawHeader, unframedBody, withBodyFraming, withoutHeaders } from '../http/headers.js';
import { leaveOnEnd, rawHead, relay, splice } from '../http/relay.js';
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
    const t = Math.floor(this.#now());
    const sig = this.#mac(this.nodeId, name, hops, t).toString('base64url');
    return `v1;node=${this.nodeId};name=${name};hops=${hops};t=${t};sig=${sig}`;
  }

  /**
   * The credentials in an X-Ptth-Hop value, or undefined when they are malformed, out of the time
   * window or not signed with this cluster's secret. Never throws (the value is a peer's). An
   * arrow function: it is handed on as `verifyHop` on its own.
   */
  readonly verify = (value: string): HopCredentials | undefined => {
    if (typeof value !== 'string' || value.length > 512) return undefined;
    const m = CREDENTIALS.exec(value);
    if (m === null) return undefined;
    const [, node, name, hopsText, tText, sigText] = m as unknown as [string, string, string, string, string, string];
    const hops = Number(hopsText);
    const t = Number(tText);
    if (hops < 1 || hops > MAX_HOPS || Math.abs(this.#now() - t) > this.#window) return undefined;
    const sig = Buffer.from(sigText, 'base64url');
    const want = this.#mac(node, name, hops, t);
    if (sig.length !== want.length || !timingSafeEqual(sig, want)) return undefined;
    return { node, name, hops };
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

type Agent = HttpAgent | HttpsAgent;

/** One per node: the signer and a keep-alive agent per peer, shared by the peer's RemoteChannels. */
export class HopClient {
  readonly signer: HopSigner;
  /** @internal */ readonly connectTimeout: number;
  /** @internal */ readonly responseTimeout: number;
  readonly #ca: HopClientOptions['ca'];
  readonly #agents = new Map<string, { agent: Agent; users: number }>();
  readonly #channels = new Set<RemoteChannel>();
  #closed = false;

  constructor(signer: HopSigner, options: HopClientOptions = {}) {
    this.signer = signer;
    this.connectTimeout = positive('connectTimeout', options.connectTimeout ?? 5_000);
    this.responseTimeout = positive('responseTimeout', options.responseTimeout ?? 120_000);
    this.#ca = options.ca;
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

  /** Closes every channel (their requests fail with 502) and the agents' connections. */
  close(): void {
    this.#closed = true;
    for (const ch of [...this.#channels]) ch.close();
    for (const { agent } of this.#agents.values()) agent.destroy();
    this.#agents.clear();
  }

  /** @internal The agent for `peer`, counted as used by one more channel. */
  agentFor(peer: HopPeer): Agent {
    const key = `${peer.id} ${peer.url.origin}`;
    let entry = this.#agents.get(key);
    if (!entry) {
      // `timeout` is the idle limit of a pooled socket; node lowers it to the peer's Keep-Alive
      // hint less a second, so a socket the peer is about to close is not reused.
      const options = { keepAlive: true, timeout: 60_000, scheduling: 'lifo' as const };
      const agent =
        peer.url.protocol === 'https:'
          ? new HttpsAgent({ ...options, ...(this.#ca === undefined ? {} : { ca: this.#ca }) })
          : new HttpAgent(options);
      entry = { agent, users: 0 };
      this.#agents.set(key, entry);
    }
    entry.users++;
    return entry.agent;
  }

  /** @internal A channel is closed: its agent goes with the last channel to that peer. */
  released(ch: RemoteChannel): void {
    if (!this.#channels.delete(ch)) return;
    const key = `${ch.peer.id} ${ch.peer.url.origin}`;
    const entry = this.#agents.get(key);
    if (entry && --entry.users === 0) {
      entry.agent.destroy();
      this.#agents.delete(key);
    }
  }
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
  /** @internal */ readonly agent: Agent;
  /** @internal */ activeCount = 0;
  #served = 0;
  #closed = false;
  readonly #inFlight = new Set<InFlight>();

  constructor(client: HopClient, peer: HopPeer, name: string) {
    this.client = client;
    this.peer = peer;
    this.name = name;
    this.remote = peer.url.host;
    this.agent = client.agentFor(peer);
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
    this.client.released(this);
    this.events?.closed(this);
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
    if (!this.#closed) this.events?.available(this);
  }

  /** @internal A request to the peer (not yet sent: the caller writes or ends it). */
  open(method: string, path: string, headers: string[]): ClientRequest {
    const url = this.peer.url;
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    return send({
      agent: this.agent,
      protocol: url.protocol,
      hostname: url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname,
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
 * One visitor request over the hop, from dispatch to its end, and the one owner of its timers and
 * listeners. Its endings: `finish` (answered or failed; `ex.done` runs) or `handBack` (the
 * registration sends it elsewhere). The body is read only once the connection to the peer is
 * open, so a peer that cannot be reached leaves the request whole, to be sent again elsewhere.
 */
class HopExchange implements InFlight {
  readonly channel: RemoteChannel;
  readonly ex: Exchange;
  readonly hasBody: boolean;
  req: ClientRequest | undefined = undefined;
  /** A connection to the peer is open (a failure before it is the peer being unreachable). */
  connected = false;
  /** Part of the visitor's body was read (the request can no longer be sent again). */
  bodyRead = false;
  responded = false;
  /** Attempts on a pooled connection the peer had closed meanwhile, sent again on a fresh one. */
  resent = 0;
  ended = false;
  timer: NodeJS.Timeout | undefined = undefined;

  constructor(channel: RemoteChannel, ex: Exchange) {
    this.channel = channel;
    this.ex = ex;
    this.hasBody = declaresBody(ex.req.headers);
  }

  start(): void {
    this.channel.track(this);
    this.ex.res.on('close', this.onVisitorClose);
    this.send();
  }

  send(): void {
    const { ex } = this;
    let headers = this.channel.hopHeaders(ex);
    // The visitor's `Expect: 100-continue` was answered by this node's server already.
    if (ex.req.headers.expect !== undefined) headers = withoutHeaders(headers, 'expect');
    headers = withBodyFraming(headers, unframedBody(ex.req));
    const req = this.channel.open(ex.req.method ?? 'GET', ex.req.url ?? '/', headers);
    this.req = req;
    this.connected = false;
    req.on('error', (err) => this.onError(req, err));
    req.on('response', (res) => this.onResponse(req, res));
    req.on('socket', (socket: Socket) => this.onSocket(req, socket));
    req.on('finish', () => this.onSent(req));
    this.arm(this.channel.client.connectTimeout, () => req.destroy(connectTimeoutError()));
  }

  onSocket(req: ClientRequest, socket: Socket): void {
    if (req !== this.req || this.ended) return;
    const ready = (): void => {
      if (req !== this.req || this.ended) return;
      this.connected = true;
      this.disarm();
      if (!this.hasBody) {
        req.end();
        return;
      }
      this.bodyRead = true;
      this.ex.req.pipe(req);
    };
    if (socket.connecting)
      socket.once(this.channel.peer.url.protocol === 'https:' ? 'secureConnect' : 'connect', ready);
    else ready();
  }

  /** The whole request is with the peer: its answer has `responseTimeout` to begin. */
  onSent(req: ClientRequest): void {
    if (req !== this.req || this.ended || this.responded) return;
    this.arm(this.channel.client.responseTimeout, () => this.fail(new PtthError('PTTH_ERR_APP_TIMEOUT')));
  }

  onResponse(req: ClientRequest, res: IncomingMessage): void {
    if (req !== this.req || this.ended) {
      res.destroy();
      return;
    }
    this.responded = true;
    this.disarm();
    if (this.ex.respond(res.statusCode, res.statusMessage, res.rawHeaders)) {
      req.destroy();
      this.finish(true);
      return;
    }
    relay(res, this.ex.res, (err) => {
      // An answer that ends before the upload does leaves the peer's connection mid-request.
      if (err || !req.writableFinished) req.destroy();
      this.finish(true);
    });
  }

  onError(req: ClientRequest, err: Error & { code?: unknown }): void {
    if (req !== this.req || this.ended) return;
    this.disarm();
    if (this.ex.req.listenerCount('data') > 0) this.ex.req.unpipe(req);
    if (this.responded) {
      // relay() sees the response fail and ends the exchange.
      return;
    }
    const fresh = this.resent === 0 && !this.bodyRead && idempotent(this.ex.req.method);
    if (this.connected && req.reusedSocket && fresh) {
      // The race every HTTP client meets on a pooled connection: the peer closed it as idle while
      // the request was on its way. Nothing of the request was processed; once more on a new one.
      this.resent++;
      this.send();
      return;
    }
    const unreachable = !this.connected || !req.reusedSocket;
    if (unreachable) this.channel.unreachable();
    const replayable = !this.bodyRead && (!this.connected || idempotent(this.ex.req.method));
    if (replayable && this.ex.retry && !this.ex.req.destroyed) {
      this.handBack();
      return;
    }
    const why = typeof err.code === 'string' ? err.code : err.message;
    this.fail(
      new PtthError('PTTH_ERR_CHANNEL_LOST', `The gateway node holding the app could not be reached (${why}).`),
    );
  }

  // The one closure every exchange needs (a listener on the visitor's response).
  onVisitorClose = (): void => {
    if (this.ended || this.ex.res.writableFinished) return;
    // The visitor left: the peer's request goes too, and with it the app's.
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

  arm(ms: number, fire: () => void): void {
    this.disarm();
    this.timer = setTimeout(fire, ms);
  }

  disarm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  #end(): void {
    this.ended = true;
    this.disarm();
    this.ex.res.removeListener('close', this.onVisitorClose);
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

function connectTimeoutError(): Error {
  return Object.assign(new Error('connect timeout'), { code: 'ETIMEDOUT' });
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
  connected = false;

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
    req.on('socket', (socket: Socket) => {
      if (socket.connecting) socket.once('connect', () => (this.connected = true));
      else this.connected = true;
    });
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
    // The agent's idle limit was for a pooled connection; this one now lives as long as its peers want.
    peer.setTimeout(0);
    visitor.write(rawHead(101, checked.reason, checked.headers));
    if (head.length > 0) visitor.write(head);
    if (ex.head.length > 0) peer.write(ex.head);
    // The connection to the peer now carries the visitor's protocol, outside the agent's pool and
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
    if (!this.connected || !this.req?.reusedSocket) this.channel.unreachable();
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
