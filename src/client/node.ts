import { EventEmitter } from 'node:events';
import * as http from 'node:http';
import * as https from 'node:https';
import type { TLSSocket } from 'node:tls';
import * as http2 from 'node:http2';
import { BodyPrefix } from '../http/body.js';
import { fromH2Headers, toH2Headers } from '../http/h2headers.js';
import { withBodyFraming, withoutHopByHop } from '../http/headers.js';
import { relay } from '../http/relay.js';
import { duplexPair } from './pair.js';
import { LOCAL_UPSTREAM, type LocalUpstream } from './proxy.js';
import type { Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { PtthError, type ErrorCode } from '../http/errors.js';
import { nameFromPublicUrl, parseLinks } from '../shared/link.js';
import { noop } from '../shared/noop.js';
import type { LookupFunction } from 'node:net';
import {
  gatewayList,
  GatewayNode,
  hostOf,
  pinnedLookup,
  resolveAll,
  spreadsByName,
  type GatewaySpec,
  type NodeStatus,
} from './nodes.js';

/**
 * The app side of PTTH/1.0, the mirror image of the gateway: dial the gateway, claim a name with
 * `Upgrade: PTTH/1.0`, then serve the requests that arrive on that same connection with an
 * ordinary node:http server (the socket is handed to it with `emit('connection')`).
 */

/** Options of `listen()`. */
export interface ListenOptions {
  /**
   * The gateway's URL (default `http://localhost:8080`), or several nodes of one cluster: the
   * connections spread over them (round-robin), leave a node that fails and come back to it when
   * it answers again. A host name that resolves to several addresses counts as several nodes.
   */
  gateway?: GatewaySpec;
  /**
   * Resolves gateway host names (node's `dns.lookup` by default; called with `{ all: true }`), as
   * net.connect's option of that name.
   */
  lookup?: LookupFunction;
  /** The name to claim; absent, the gateway assigns one and the pool keeps it. */
  name?: string;
  /** Shared secret that holds the name; absent, a random one is made for this process. */
  token?: string;
  /** Seconds the gateway keeps the name while no connection is live. */
  lease?: number;
  /** Reversed HTTP/1.1 connections kept open at once when HTTP/1.1 is used (default 4). */
  connections?: number;
  /** Speak only PTTH/1.0 (reversed HTTP/1.1), never reversed HTTP/2. */
  http1?: boolean;
  /** Reversed HTTP/2 connections kept open when the gateway offers HTTP/2 (default 1: it multiplexes). */
  http2Connections?: number;
  /**
   * HTTP/1.1 connections kept beside the HTTP/2 ones for visitors' WebSocket upgrades (default: 1
   * when the target listens for 'upgrade', else 0).
   */
  upgradeConnections?: number;
  /** Streams one HTTP/2 connection carries at once (default 256), announced in SETTINGS. */
  maxStreams?: number;
  /** First reconnect delay in ms (default 250); doubles up to `maxBackoff`, with jitter. */
  backoff?: number;
  /** Longest reconnect delay in ms (default 30000). */
  maxBackoff?: number;
  /**
   * Milliseconds the gateway has to answer a claim (default 10000). A server that accepts the
   * connection and never answers (a wrong port, a stalled proxy) would otherwise hold that
   * connection of the pool forever: past it, the dial is dropped and retried with backoff.
   */
  claimTimeout?: number;
  /** Access key for gateways that require one (sent as `Authorization: Bearer <key>` on every claim). */
  key?: string;
  /** Extra headers on every claim. */
  headers?: Record<string, string>;
  /** For `https:` gateways: verify the certificate (default true). */
  rejectUnauthorized?: boolean;
  /** Internal (see splice.ts): reversed HTTP/1.1 channels are handed to this splicer, not served here. */
  [SPLICER]?: Splicer;
}

/** The option key under which `connect`'s splice mode hands the tunnel its splicer. */
export const SPLICER: unique symbol = Symbol('ptth-proxy.splicer');

/** What a splicer may tell the tunnel about one channel it was given. */
export interface ChannelControl {
  /** The channel carries bytes now (it is joined to a local connection): the pool keeps spares beside it. */
  bound(): void;
  /** The channel was taken by an upgrade (a WebSocket): it leaves the pool, a fresh one replaces it. */
  consumed(): void;
  /**
   * Whether this idle channel may close: a bound one while the pool holds more than its spares, a
   * spare one while there are more spares than the pool keeps beside the bound channels.
   */
  shrinkable(): boolean;
}

/** Joins reversed HTTP/1.1 channels to something else, byte for byte (see splice.ts). */
export interface Splicer {
  /** Idle (not yet bound) channels kept open beside the bound ones. */
  readonly spare: number;
  /**
   * Takes a live channel; its first bytes (the head read past the 101) are already unshifted.
   * `close()` ends the channel at once, or after the answer in flight on it.
   */
  attach(channel: Socket, control: ChannelControl): { close(): void };
}

/** Claim refusals that retrying cannot fix: the tunnel stops and reports them. */
const FATAL = new Set([400, 401, 403, 404, 405, 413]);

/**
 * The gateway refused the claim: its status and `X-Ptth-Error` code. Its arguments come in the
 * browser library's ServeError's order (status, message, code).
 */
export class ClaimError extends Error {
  readonly status: number;
  readonly code: string | undefined;
  constructor(status: number, message: string, code?: string) {
    super(message);
    this.name = 'ClaimError';
    this.status = status;
    this.code = code;
  }
}

export interface TunnelEvents {
  /** The first reversed connection is live; the app is reachable at `url`. */
  online: [url: string];
  /** No reversed connection is live any more; reconnecting. */
  offline: [];
  /** A dial failed or a connection dropped; the next try is in `delay` ms. */
  reconnecting: [{ delay: number; error: Error }];
  /** Live reversed connections changed. */
  connections: [count: number];
  /** A refusal that retrying cannot fix; the tunnel has stopped. */
  error: [Error];
  /** A gateway node was lost (a failed dial, a refused claim) or answers again; see `Tunnel.nodes`. */
  node: [NodeStatus];
  close: [];
}

type Target = http.Server | http.RequestListener;

/**
 * A live claim: a pool of reversed connections for one name. Created by `listen()`.
 */
export class Tunnel extends EventEmitter<TunnelEvents> {
  /** The public URL, once the gateway has answered a claim. */
  url: string | undefined;
  /** The private URL of the registration (GET state, PUT lease/token, DELETE release). */
  privateUrl: string | undefined;
  name: string | undefined;
  readonly token: string;
  /** The gateways given, duplicates collapsed. */
  #gateways: URL[];
  /** The nodes dialled: one per gateway, or one per address of a gateway whose name resolves to several. */
  #nodes: GatewayNode[];
  /** The node of each live connection and each dial in flight. */
  #nodeOf = new WeakMap<object, GatewayNode>();
  /** Gateways whose name is being resolved again. */
  #resolving = new Set<URL>();
  /** Ties between equally loaded nodes go round-robin. */
  #cursor = 0;
  /** Dials beyond the pool's size: to try a lost node again, or to move a connection to a lighter one. */
  #extra = new Set<{ destroy(): void }>();
  /** Connections taken out of the pool to move them to another node, closing once idle. */
  #retiring = new Set<Socket>();
  /** Each gateway's private URL of the registration (a cluster's nodes share one; separate gateways do not). */
  #privateUrls = new Map<string, string>();
  #options: ListenOptions;
  #size: number;
  #server: http.Server;
  #h2server: http2.Http2Server | undefined;
  #memAgent: MemoryAgent | undefined;
  #target: Target;
  /** `connect`'s local service: HTTP/2 streams go straight to it, not through the in-memory hop. */
  #upstream: LocalUpstream | undefined;
  /** Live reversed connections and what they speak. */
  #live = new Map<Socket, Kind>();
  #sessions = new Map<Socket, http2.ServerHttp2Session>();
  #busy = new WeakMap<object, number>();
  /** Dials in progress (and backoff placeholders), by the kind they ask for. */
  #dialing = new Map<{ destroy(): void }, Kind>();
  #splicer: Splicer | undefined;
  /** Channels the splicer has joined to a local connection. */
  #bound = new Set<Socket>();
  /** How to close a channel given to the splicer. */
  #spliced = new WeakMap<Socket, { close(): void }>();
  /** What the gateway speaks, learnt from the first 101: undefined until then. */
  #mode: Kind | undefined;
  #timers = new Set<NodeJS.Timeout>();
  #closed = false;
  #online = false;
  #ready: Promise<string>;
  #resolveReady!: (url: string) => void;
  #rejectReady!: (err: Error) => void;

  constructor(target: Target, options: ListenOptions = {}) {
    super();
    this.#gateways = gatewayList(options.gateway);
    this.#nodes = this.#gateways.map((g) => new GatewayNode(g, undefined));
    this.#options = options;
    this.#size = options.connections ?? 4;
    if (!Number.isInteger(this.#size) || this.#size < 1) throw new TypeError('connections must be a whole number >= 1');
    if (options.key !== undefined && !/^[\x21-\x7e]{1,1024}$/.test(options.key)) {
      throw new TypeError('key must be 1 to 1024 visible ASCII characters (as printed by `ptth-proxy key`)');
    }
    this.name = options.name?.toLowerCase();
    this.token = options.token ?? randomBytes(18).toString('base64url');
    this.#ready = new Promise((resolve, reject) => {
      this.#resolveReady = resolve;
      this.#rejectReady = reject;
    });
    this.#ready.catch(noop);
    this.#target = target;
    this.#upstream =
      typeof target === 'function' ? undefined : (target as { [LOCAL_UPSTREAM]?: LocalUpstream })[LOCAL_UPSTREAM];
    this.#splicer = options[SPLICER];
    if (options.http1 || this.#splicer) this.#mode = 'h1';
    this.#server = this.#makeServer(target);
    const named = this.#gateways.filter(spreadsByName);
    if (named.length === 0) this.#fill();
    else {
      // A dial that throws (a header node refuses) would throw from the constructor without a
      // name to resolve; after one it stops the tunnel with that error instead.
      void Promise.all(named.map((g) => this.#resolve(g)))
        .then(() => this.#fill())
        .catch((err: Error) => this.#stop(err));
    }
  }

  /**
   * Resolves a gateway's name: several addresses make one node each (dialled by address, named
   * by host); one address, or none, keeps the one node that dials the name itself.
   */
  async #resolve(gateway: URL): Promise<void> {
    if (this.#resolving.has(gateway)) return;
    this.#resolving.add(gateway);
    const found = await resolveAll(hostOf(gateway), this.#options.lookup);
    this.#resolving.delete(gateway);
    if (this.#closed) return;
    // A node already pinned to the one address left stays as it is, with its connections.
    const kept = found.length === 1 && this.#nodes.some((n) => n.gateway === gateway && n.address === found[0]);
    const wanted: (string | undefined)[] = found.length >= 2 || kept ? found : [undefined];
    const next: GatewayNode[] = [];
    for (const node of this.#nodes) {
      if (node.gateway !== gateway || wanted.includes(node.address)) next.push(node);
      else clearTimeout(node.timer);
    }
    for (const address of wanted) {
      if (!next.some((n) => n.gateway === gateway && n.address === address)) {
        next.push(new GatewayNode(gateway, address));
      }
    }
    this.#nodes = next;
  }

  /** Which nodes the pool dials, whether each takes connections, and how many it holds. */
  get nodes(): NodeStatus[] {
    return this.#nodes.map((n) => this.#status(n));
  }

  #status(node: GatewayNode, error?: Error): NodeStatus {
    let connections = 0;
    for (const s of this.#live.keys()) if (this.#nodeOf.get(s) === node) connections++;
    return {
      gateway: node.gateway.href,
      address: node.address,
      up: node.up,
      connections,
      ...(error ? { error } : {}),
    };
  }

  /** The internal server that serves the reversed connections. */
  #makeServer(target: Target): http.Server {
    // The gateway keeps reversed connections open while idle: no idle or request timer here.
    const server = http.createServer({ keepAliveTimeout: 0, requestTimeout: 0 });
    // Requests in flight per connection, so close() can end idle connections at once and busy
    // ones when their response is done (a server that never listened tracks nothing itself).
    server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
      const socket = req.socket;
      this.#busy.set(socket, (this.#busy.get(socket) ?? 0) + 1);
      res.once('close', () => {
        const n = (this.#busy.get(socket) ?? 1) - 1;
        this.#busy.set(socket, n);
        if (n === 0 && this.#closed) {
          // Ends after the response is flushed (in-memory bridge connections have no destroySoon).
          if (typeof socket.destroySoon === 'function') socket.destroySoon();
          else socket.end();
        }
      });
    });
    if (typeof target === 'function') {
      server.on('request', target);
      return server;
    }
    server.on('request', (req, res) => target.emit('request', req, res));
    // node only reports upgrades when someone listens; follow the target's listeners so that an
    // app without upgrade handling still sees such requests as ordinary ones.
    const forwardUpgrade = (req: http.IncomingMessage, socket: Socket, head: Buffer): void => {
      this.#consumed(socket);
      target.emit('upgrade', req, socket, head);
    };
    if (target.listenerCount('upgrade') > 0) server.on('upgrade', forwardUpgrade);
    target.on('newListener', (event) => {
      if (event === 'upgrade' && server.listenerCount('upgrade') === 0) server.on('upgrade', forwardUpgrade);
    });
    server.on('clientError', (_err, socket: Socket) => socket.destroy());
    return server;
  }

  /** Resolves with the public URL once the first connection is live; rejects on a fatal refusal. */
  ready(): Promise<string> {
    return this.#ready;
  }

  get online(): boolean {
    return this.#online;
  }

  /** Live reversed connections. */
  get connections(): number {
    return this.#live.size;
  }

  /** `h2` when the gateway speaks reversed HTTP/2 to us, `h1` for HTTP/1.1, undefined before the first claim. */
  get protocol(): Kind | undefined {
    return this.#mode;
  }

  #count(map: Map<unknown, Kind>, kind: Kind): number {
    let n = 0;
    for (const k of map.values()) if (k === kind) n++;
    return n;
  }

  /** Dials what the pool lacks; `attempt` is the failure count of the slot being retried (backoff). */
  #fill(attempt = 0): void {
    if (this.#closed) return;
    // Until the gateway has named us (and said what it speaks), one claim at a time, so that every
    // connection shares the name.
    if (this.name === undefined || this.#mode === undefined) {
      if (this.#live.size + this.#dialing.size === 0) {
        const kind = this.#mode === 'h1' ? 'h1' : 'h2';
        this.#dial(kind, attempt, this.#pick(kind));
      }
      return;
    }
    const want = this.#want();
    for (const kind of ['h2', 'h1'] as const) {
      while (this.#count(this.#live, kind) + this.#count(this.#dialing, kind) < want[kind]) {
        this.#dial(kind, attempt, this.#pick(kind));
      }
    }
  }

  /**
   * Connections the pool keeps of each kind. What defaults to one (HTTP/2, the upgrade connection,
   * a splicer's spares) defaults to one per node, so that every node can serve at once.
   */
  #want(): Record<Kind, number> {
    const nodes = this.#nodes.length;
    if (this.#mode === 'h1') {
      if (this.#splicer) return { h1: Math.min(this.#size, this.#bound.size + this.#spares()), h2: 0 };
      return { h1: this.#options.connections ?? Math.max(this.#size, nodes), h2: 0 };
    }
    return {
      h2: this.#options.http2Connections ?? nodes,
      h1: this.#options.upgradeConnections ?? (this.#wantsUpgrades() ? nodes : 0),
    };
  }

  /** Idle spliced channels kept beside the bound ones: the splicer's spares, at least one per node. */
  #spares(): number {
    return Math.max(this.#splicer?.spare ?? 0, this.#nodes.length);
  }

  /** Connections of `kind`, live or being dialled, on each node. */
  #load(kind: Kind): Map<GatewayNode, number> {
    const counts = new Map<GatewayNode, number>();
    for (const n of this.#nodes) counts.set(n, 0);
    for (const map of [this.#live, this.#dialing]) {
      for (const [c, k] of map) {
        const node = this.#nodeOf.get(c);
        if (k === kind && node !== undefined) counts.set(node, (counts.get(node) ?? 0) + 1);
      }
    }
    return counts;
  }

  /** The node for the next connection of `kind`: the least loaded of those that take connections (or of all, when none does). */
  #pick(kind: Kind): GatewayNode {
    const nodes = this.#nodes;
    if (nodes.length === 1) return nodes[0] as GatewayNode;
    const usable = nodes.filter((n) => n.usable);
    const pool = usable.length > 0 ? usable : nodes;
    const counts = this.#load(kind);
    let best = pool[0] as GatewayNode;
    let least = Number.POSITIVE_INFINITY;
    for (let i = 0; i < pool.length; i++) {
      const node = pool[(this.#cursor + i) % pool.length] as GatewayNode;
      const n = counts.get(node) ?? 0;
      if (n < least) {
        best = node;
        least = n;
      }
    }
    this.#cursor = (this.#cursor + 1) % nodes.length;
    return best;
  }

  #wantsUpgrades(): boolean {
    return typeof this.#target !== 'function' && this.#target.listenerCount('upgrade') > 0;
  }

  /**
   * Retries a failed slot after a delay. Each slot counts its own failures, so fifty connections
   * failing at once (a gateway restart) all start at the first delay, not at the fiftieth.
   */
  #schedule(error: Error, kind: Kind, attempt: number): void {
    if (this.#closed) return;
    const delay = this.#delay(attempt);
    this.emit('reconnecting', { delay, error });
    // Hold the slot while waiting so #fill does not dial again at once.
    const placeholder = { destroy() {} };
    this.#dialing.set(placeholder, kind);
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      this.#dialing.delete(placeholder);
      this.#fill(attempt + 1);
    }, delay);
    this.#timers.add(timer);
  }

  /** The delay before retry number `attempt + 1`: doubling from `backoff` up to `maxBackoff`. */
  #delay(attempt: number): number {
    const base = this.#options.backoff ?? 250;
    const max = this.#options.maxBackoff ?? 30_000;
    const exp = Math.min(max, base * 2 ** Math.min(attempt, 20));
    // Jitter (half to full delay) so that many clients do not reconnect in step after a restart.
    return Math.round(exp / 2 + Math.random() * (exp / 2));
  }

  #dial(kind: Kind, attempt: number, node: GatewayNode, extra = false): void {
    const req = this.#claimRequest(kind, node);
    this.#dialing.set(req, kind);
    this.#nodeOf.set(req, node);
    if (extra) this.#extra.add(req);
    let settled = false;
    const claimTimeout = this.#options.claimTimeout ?? 10_000;
    const deadline = setTimeout(() => {
      req.destroy(new Error(`the gateway did not answer the claim within ${claimTimeout} ms`));
    }, claimTimeout);
    const fail = (err: Error): void => {
      clearTimeout(deadline);
      if (settled) return;
      settled = true;
      this.#dialing.delete(req);
      this.#extra.delete(req);
      if (this.#closed) return;
      if (err instanceof ClaimError && FATAL.has(err.status)) {
        this.#stop(err);
        return;
      }
      // Any other refusal (a 5xx, a 409 or 429 of that node) sends the next dials to the other nodes.
      this.#nodeDown(node, err);
      // A dial beyond the pool's size has no slot to retry: the node's own timer tries it again.
      if (extra) this.#fill();
      else this.#schedule(err, kind, attempt);
    };
    req.on('upgrade', (res: http.IncomingMessage, socket: Socket, head: Buffer) => {
      clearTimeout(deadline);
      settled = true;
      this.#dialing.delete(req);
      this.#extra.delete(req);
      if (this.#closed) {
        socket.destroy();
        return;
      }
      const got = upgradedTo(res, kind);
      if (got instanceof Error) {
        socket.destroy();
        this.#nodeDown(node, got);
        if (extra) this.#fill();
        else this.#schedule(got, kind, attempt);
        return;
      }
      // The gateway's answer decides the mode (it may change across gateway restarts).
      if (kind === 'h2' || this.#mode === undefined) this.#mode = got;
      this.#claimed(res, node);
      this.#nodeOf.set(socket, node);
      this.#nodeUp(node);
      this.#adopt(socket, head, got);
      if (extra) this.#trim(got, node);
      this.#rebalance();
    });
    req.on('response', (res: http.IncomingMessage) => {
      clearTimeout(deadline);
      const prefix = new BodyPrefix(4096);
      res.on('data', (c: Buffer) => prefix.add(c));
      res.on('end', () => {
        const body = prefix.kept().toString('utf8').trim().slice(0, 500);
        const code = res.headers['x-ptth-error'];
        // The gateway's bodies start with the status ("403 Forbidden: ..."): do not say it twice.
        const status = String(res.statusCode ?? 0);
        const said = body.startsWith(`${status} `) ? body : `${status} ${body}`;
        const errCode = typeof code === 'string' ? code : undefined;
        fail(new ClaimError(res.statusCode ?? 0, `the gateway refused the claim: ${said}`, errCode));
      });
      res.on('error', (err) => fail(err));
    });
    req.on('error', fail);
    req.end();
  }

  /** The claim request (not yet sent) for a connection of `kind` to `node`. */
  #claimRequest(kind: Kind, node: GatewayNode): http.ClientRequest {
    const g = node.gateway;
    const params = new URLSearchParams();
    if (this.name !== undefined) params.set('name', this.name);
    params.set('token', this.token);
    if (this.#options.lease !== undefined) params.set('lease', String(this.#options.lease));
    const base = g.pathname.endsWith('/') ? g.pathname : `${g.pathname}/`;
    const mod = g.protocol === 'https:' ? https : http;
    const auth = this.#options.key === undefined ? undefined : { Authorization: `Bearer ${this.#options.key}` };
    // A node pinned to one address of its name is dialled there, still by name (Host, TLS server name).
    const lookup = node.address !== undefined ? pinnedLookup(node.address) : this.#options.lookup;
    return mod.request({
      protocol: g.protocol,
      hostname: hostOf(g),
      port: g.port || (g.protocol === 'https:' ? 443 : 80),
      method: 'POST',
      path: `${base}?${params.toString()}`,
      agent: false,
      ...(lookup ? { lookup } : {}),
      // Offering both tokens lets a gateway without HTTP/2 pick PTTH/1.0 in the same round trip.
      headers:
        kind === 'h2'
          ? {
              ...this.#options.headers,
              ...auth,
              Upgrade: 'ptth, PTTH/1.0',
              ALPN: 'h2',
              Connection: 'Upgrade',
              'Content-Length': '0',
            }
          : { ...this.#options.headers, ...auth, Upgrade: 'PTTH/1.0', Connection: 'Upgrade', 'Content-Length': '0' },
      ...(g.protocol === 'https:' ? { rejectUnauthorized: this.#options.rejectUnauthorized ?? true } : {}),
    });
  }

  /** What a 101 says: the public URL (and so the name, when the gateway chose it) and the private URL. */
  #claimed(res: http.IncomingMessage, node: GatewayNode): void {
    // With several gateways the first answer names the app; separate gateways (not one cluster)
    // would each advertise their own URL.
    const first = this.#gateways.length === 1 || this.url === undefined;
    const link = parseLinks(res.headers.link).get('related');
    if (link && first) {
      this.url = link;
      // The public URL names the app (docs/PROTOCOL.md section 1): its first path segment in path mode
      // (`http://gateway/NAME/`), its first host label otherwise (`http://NAME.domain/`).
      if (this.name === undefined) this.name = nameFromPublicUrl(link);
    }
    const location = res.headers.location;
    if (location) {
      this.#privateUrls.set(node.gateway.href, location);
      if (this.#gateways.length === 1 || this.privateUrl === undefined) this.privateUrl = location;
    }
  }

  /** A node failed a dial or refused a claim (not for good): dials go to the others until its retry. */
  #nodeDown(node: GatewayNode, error: Error): void {
    if (!this.#nodes.includes(node)) return;
    node.retry = false;
    if (node.up) {
      node.up = false;
      this.emit('node', this.#status(node, error));
    }
    // Its name may point elsewhere now (a replaced machine, a shrunk DNS round-robin).
    if (spreadsByName(node.gateway)) {
      void this.#resolve(node.gateway)
        .then(() => {
          this.#fill();
          this.#rebalance();
        })
        .catch((err: Error) => this.#stop(err));
    }
    // One node alone needs no timer of its own: the pool's retries are its retries.
    if (this.#nodes.length < 2 || node.timer !== undefined) return;
    const delay = this.#delay(node.failures);
    node.failures++;
    node.timer = setTimeout(() => {
      node.timer = undefined;
      this.#retryNode(node);
    }, delay);
  }

  /** A lost node's retry time: one connection beyond the pool's size tries it, without taking one from the others. */
  #retryNode(node: GatewayNode): void {
    if (this.#closed || !this.#nodes.includes(node) || node.up) return;
    node.retry = true;
    if (this.name === undefined || this.#mode === undefined) {
      this.#fill();
      return;
    }
    this.#dial(this.#mode, 0, node, true);
  }

  #nodeUp(node: GatewayNode): void {
    node.retry = false;
    node.failures = 0;
    clearTimeout(node.timer);
    node.timer = undefined;
    if (node.up) return;
    node.up = true;
    if (this.#nodes.includes(node)) this.emit('node', this.#status(node));
  }

  /**
   * Moves connections toward an even spread: a node that holds two or more fewer of a kind than
   * the busiest gets one more, and the busiest gives one up once it is live (see #trim).
   */
  #rebalance(): void {
    if (this.#closed || this.#nodes.length < 2 || this.name === undefined || this.#mode === undefined) return;
    for (const kind of ['h2', 'h1'] as const) {
      let moving = false;
      for (const d of this.#extra) if (this.#dialing.get(d) === kind) moving = true;
      if (moving) continue;
      const counts = this.#load(kind);
      let least: GatewayNode | undefined;
      let most: GatewayNode | undefined;
      for (const node of this.#nodes) {
        if (!node.up) continue;
        const n = counts.get(node) ?? 0;
        if (least === undefined || n < (counts.get(least) ?? 0)) least = node;
        if (most === undefined || n > (counts.get(most) ?? 0)) most = node;
      }
      if (least === undefined || most === undefined) continue;
      if ((counts.get(most) ?? 0) - (counts.get(least) ?? 0) < 2 || !this.#idleOn(most, kind)) continue;
      this.#dial(kind, 0, least, true);
    }
  }

  /** A connection beyond the pool's size landed on `landed`: the busiest other node gives up an idle one. */
  #trim(kind: Kind, landed: GatewayNode): void {
    const counts = this.#load(kind);
    let from: Socket | undefined;
    let most = 0;
    for (const [node, n] of counts) {
      if (node === landed || n <= most) continue;
      const idle = this.#idleOn(node, kind);
      if (idle) {
        from = idle;
        most = n;
      }
    }
    if (from) this.#retire(from);
  }

  /** A connection of `kind` on `node` that can close without cutting anything short. */
  #idleOn(node: GatewayNode, kind: Kind): Socket | undefined {
    for (const [s, k] of this.#live) {
      if (k !== kind || this.#nodeOf.get(s) !== node) continue;
      // HTTP/2 closes with GOAWAY: its streams in flight finish.
      if (kind === 'h2') return s;
      if (this.#splicer ? !this.#bound.has(s) : (this.#busy.get(s) ?? 0) === 0) return s;
    }
    return undefined;
  }

  /** Takes a connection out of the pool (its replacement goes to the least loaded node) and closes it once idle. */
  #retire(socket: Socket): void {
    const kind = this.#live.get(socket);
    if (kind === undefined) return;
    this.#live.delete(socket);
    this.#retiring.add(socket);
    socket.once('close', () => this.#retiring.delete(socket));
    const session = this.#sessions.get(socket);
    if (session) session.close();
    else {
      const spliced = this.#spliced.get(socket);
      if (spliced) spliced.close();
      else socket.destroy();
    }
    this.#changed();
    this.#fill();
  }

  /** Hands a reversed connection to the internal server (HTTP/1.1) or the HTTP/2 server. */
  #adopt(socket: Socket, head: Buffer, kind: Kind): void {
    this.#live.set(socket, kind);
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30_000);
    socket.once('close', () => {
      this.#bound.delete(socket);
      if (!this.#live.delete(socket)) return;
      this.#changed();
      if (!this.#closed) this.#fill();
    });
    // Bytes read past the 101 belong to the first reversed request (or the HTTP/2 preface).
    if (head.length > 0) socket.unshift(head);
    if (kind === 'h2') {
      // node creates the session synchronously in its 'connection' listener; keep it by the raw
      // socket (session.socket is a proxy object, not this socket).
      const h2 = this.#h2();
      h2.once('session', (session: http2.ServerHttp2Session) => {
        this.#sessions.set(socket, session);
        socket.once('close', () => this.#sessions.delete(socket));
      });
      // Over an https: gateway the socket is a TLSSocket whose ALPN (negotiated for the claim
      // request) is not h2; node:http2's server would take it for an HTTP/1.1 client and drop it.
      // The 101 (draft-kazuho-ptth-ptth: `ALPN: h2`) is what agreed on HTTP/2 here.
      if ('alpnProtocol' in socket) (socket as TLSSocket).alpnProtocol = 'h2';
      h2.emit('connection', socket);
    } else if (this.#splicer) {
      const control: ChannelControl = {
        bound: () => {
          if (!this.#live.has(socket) || this.#bound.has(socket)) return;
          this.#bound.add(socket);
          this.#fill();
        },
        consumed: () => {
          this.#bound.delete(socket);
          this.#consumed(socket);
        },
        shrinkable: () => {
          const spare = this.#spares();
          if (this.#bound.has(socket)) return this.#live.size > spare;
          return this.#live.size - this.#bound.size > spare;
        },
      };
      this.#spliced.set(socket, this.#splicer.attach(socket, control));
    } else this.#server.emit('connection', socket);
    this.#changed();
    this.#fill();
  }

  /**
   * The HTTP/2 side: one node:http2 server for every reversed HTTP/2 connection. Each stream is
   * handed to the internal HTTP/1.1 server over an in-memory connection, so that an http.Server's
   * own listeners (Express, Fastify, Koa...) see genuine IncomingMessage/ServerResponse objects;
   * node's HTTP/2 compatibility objects are not what those frameworks extend.
   */
  #h2(): http2.Http2Server {
    if (this.#h2server) return this.#h2server;
    const server = http2.createServer({
      settings: { maxConcurrentStreams: this.#options.maxStreams ?? 256, initialWindowSize: 1 << 20 },
    });
    this.#memAgent = new MemoryAgent(this.#server);
    server.on('session', (session: http2.ServerHttp2Session) => {
      session.on('error', noop);
      session.on('connect', () => session.setLocalWindowSize(16 << 20));
    });
    // node passes the raw header list as a 4th argument (not in @types/node 20).
    server.on(
      'stream',
      (
        stream: http2.ServerHttp2Stream,
        headers: http2.IncomingHttpHeaders,
        flags: number,
        rawHeaders?: readonly string[],
      ) => this.#bridge(stream, headers, flags, rawHeaders),
    );
    this.#h2server = server;
    return server;
  }

  #bridge(
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    flags: number,
    rawHeaders: readonly string[] | undefined,
  ): void {
    stream.on('error', noop);
    // A body follows the HEADERS frame: without a declared length it must be framed explicitly on
    // the HTTP/1.1 side (see withBodyFraming), or a GET's body would reach the server as a request.
    const unframed = (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) === 0 && headers['content-length'] === undefined;
    let raw: string[] = [];
    const authority = headers[':authority'];
    if (authority) raw.push('Host', authority);
    if (rawHeaders) {
      // Fields in the order and number they came (HTTP/2 names are lower-case by definition).
      for (let i = 0; i < rawHeaders.length; i += 2) {
        if ((rawHeaders[i] as string).charCodeAt(0) !== 58 /* : */)
          raw.push(rawHeaders[i] as string, rawHeaders[i + 1] as string);
      }
    } else fromH2Headers(headers, raw);
    const up = this.#upstream;
    raw = withBodyFraming(raw, unframed);
    let out: http.ClientRequest;
    try {
      if (up) {
        if (up.rewriteHost !== undefined && raw[0] === 'Host') raw[1] = up.rewriteHost;
        out = up.request({
          host: up.host,
          port: up.port,
          agent: up.agent,
          method: headers[':method'] ?? 'GET',
          path: up.base + (headers[':path'] ?? '/'),
          headers: raw,
          setHost: false,
          ...up.tls,
        });
      } else {
        out = http.request({
          agent: this.#memAgent as MemoryAgent,
          method: headers[':method'] ?? 'GET',
          path: headers[':path'] ?? '/',
          headers: raw,
          setHost: false,
        });
      }
    } catch {
      stream.respond({ ':status': 400 }, { endStream: true });
      return;
    }
    out.on('response', (res: http.IncomingMessage) => {
      const h = toH2Headers(withoutHopByHop(res.rawHeaders), { ':status': res.statusCode ?? 502 }, false);
      if (stream.destroyed) {
        res.destroy();
        return;
      }
      try {
        stream.respond(h);
      } catch {
        stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
        res.destroy();
        return;
      }
      relay(res, stream, noop);
      res.once('end', () => {
        if (!stream.readableEnded) {
          stream.unpipe(out);
          out.destroy();
          stream.resume();
        }
      });
    });
    out.on('error', (err: NodeJS.ErrnoException) => {
      if (!stream.headersSent && !stream.destroyed) {
        if (up) {
          const body = up.unreachable(err);
          stream.respond({
            ':status': 502,
            'content-type': 'text/plain; charset=utf-8',
            'content-length': Buffer.byteLength(body),
          });
          stream.end(body);
        } else stream.respond({ ':status': 502 }, { endStream: true });
      } else if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
    });
    // The request body goes down with plain pipe(), not pipeline(): when the app answers before
    // reading the whole body (as node:http allows), the rest is discarded here, as node's own
    // server does, rather than the stream being reset under the visitor's upload.
    stream.pipe(out);
    stream.on('close', () => {
      if (!out.writableFinished) out.destroy();
    });
  }

  /** A connection taken by a visitor's upgrade leaves the pool; a fresh one replaces it. */
  #consumed(socket: Socket): void {
    if (!this.#live.delete(socket)) return;
    this.#changed();
    this.#fill();
  }

  #changed(): void {
    this.emit('connections', this.#live.size);
    if (this.#live.size > 0 && !this.#online) {
      this.#online = true;
      const url = this.url ?? '';
      this.#resolveReady(url);
      this.emit('online', url);
    } else if (this.#live.size === 0 && this.#online) {
      this.#online = false;
      if (!this.#closed) this.emit('offline');
    }
  }

  #stop(err: Error): void {
    this.#rejectReady(err);
    void this.close({ release: false }).then(() => {
      if (this.listenerCount('error') > 0) this.emit('error', err);
    });
  }

  /**
   * Stops: no more dials, idle connections close at once, busy ones when their response is done
   * (or after `graceMs`). With `release` (the default) the name is given back to the gateway.
   */
  async close(options: { release?: boolean; graceMs?: number } = {}): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#rejectReady(new Error('the tunnel was closed before it came online'));
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    for (const node of this.#nodes) clearTimeout(node.timer);
    for (const req of this.#dialing.keys()) req.destroy();
    this.#dialing.clear();
    for (const [s, kind] of this.#live) {
      if (kind === 'h2')
        this.#sessions.get(s)?.close(); // GOAWAY: streams in flight finish
      else if (this.#splicer) {
        // A spliced channel is closed at once unless a request went down it and no answer came yet.
        const spliced = this.#spliced.get(s);
        if (spliced) spliced.close();
        else s.destroy();
      } else if ((this.#busy.get(s) ?? 0) === 0) s.destroy();
    }
    const deadline = Date.now() + (options.graceMs ?? 5_000);
    while (this.#live.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
    for (const s of this.#live.keys()) s.destroy();
    this.#live.clear();
    for (const s of this.#retiring) s.destroy();
    this.#retiring.clear();
    this.#memAgent?.destroy();
    // Released last, so that requests in flight finish before the gateway drops the name; on
    // every gateway that gave a private URL (nodes of one cluster share it: released once).
    if (options.release ?? true) {
      const urls = new Set<string>(this.#privateUrls.values());
      if (this.privateUrl) urls.add(this.privateUrl);
      await Promise.all([...urls].map((u) => this.#release(u).catch(noop)));
    }
    this.#online = false;
    this.emit('close');
  }

  #release(privateUrl: string): Promise<void> {
    const u = new URL(privateUrl);
    const mod = u.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
      const req = mod.request(u, {
        method: 'DELETE',
        agent: false,
        timeout: 2_000,
        headers: this.#options.headers ?? {},
        ...(u.protocol === 'https:' ? { rejectUnauthorized: this.#options.rejectUnauthorized ?? true } : {}),
      });
      req.on('response', (res) => {
        res.resume();
        res.on('end', () => resolve());
      });
      req.on('timeout', () => req.destroy(new Error('release timed out')));
      req.on('error', reject);
      req.end();
    });
  }
}

type Kind = 'h1' | 'h2';

/** What the gateway's 101 switched the connection to (a claim offered `kind`), or why this client cannot speak it. */
function upgradedTo(res: http.IncomingMessage, kind: Kind): Kind | Error {
  const upgrade = (res.headers.upgrade ?? '').trim().toLowerCase();
  const alpn = String(res.headers['alpn'] ?? '')
    .trim()
    .toLowerCase();
  if (upgrade === 'ptth' && alpn === 'h2' && kind === 'h2') return 'h2';
  if (upgrade === 'ptth/1.0' || (upgrade === 'ptth' && (alpn === '' || alpn === 'http/1.1'))) return 'h1';
  const offered = JSON.stringify(res.headers.upgrade);
  return new Error(`the gateway upgraded to ${offered} (ALPN ${alpn || 'none'}), which this client does not speak`);
}

/**
 * Keep-alive connections to the internal HTTP/1.1 server, in memory: what HTTP/2 streams are
 * bridged over (see Tunnel#h2).
 */
class MemoryAgent extends http.Agent {
  #server: http.Server;
  constructor(server: http.Server) {
    super({ keepAlive: true, maxFreeSockets: 64 });
    this.#server = server;
  }
  override createConnection(): Socket {
    const [client, server] = duplexPair();
    this.#server.emit('connection', server);
    return client as unknown as Socket;
  }
  override keepSocketAlive(): boolean {
    return true;
  }
}

/**
 * Serves `target` (an `http.Server` such as an Express or Fastify app's, or a request listener)
 * through a ptth-proxy gateway. The server does not need to listen on any port.
 */
export function listen(target: Target, options: ListenOptions = {}): Tunnel {
  return new Tunnel(target, options);
}

export type { ErrorCode };
export { PtthError };
