import { EventEmitter } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createTlsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { PtthError } from '../http/errors.js';
import { sendError, writeRawError } from '../http/respond.js';
import { MemoryTable, type RouteTable } from '../table/table.js';
import { claimFromRequest, claimFromUpgrade } from './claim.js';
import { cometHop } from './comet.js';
import { classify, hostProblem, originForm, SERVICE_PATH, type Route, type UrlMode } from './classify.js';
import { admit, type Admission, type Arrival, type Buckets } from './admission.js';
import { claimantName, refuse, refuseClaim } from './refuse.js';
import { notReady, type ClusterHooks, type GatewayContext, type GatewaySettings } from './context.js';
import {
  boolOption,
  domainOption,
  numberOption,
  OPTIONS,
  OptionError,
  publicUrlOption,
  SHUTDOWN_GRACE_DEFAULT,
} from '../options.js';
import { gatewayHeaders, handleEndpoint, type GatewayInfo } from './endpoints.js';
import { BrowserEndpoints, type BrowserOptions } from './browser.js';
import { RelayEndpoint, relaySettingsFrom, type RelayOptions } from './relay.js';
import type { EmitGatewayEvent, GatewayEvents } from './eventmap.js';
import {
  forwardHop,
  forwardHopUpgrade,
  forwardRequest,
  forwardUpgrade,
  hopCredentials,
  refuseVisitor,
} from './forward.js';
import { VERSION } from '../version.js';
import { GatewayMetrics } from './metrics.js';
import { AccessControl, type AccessConfig } from '../table/access.js';
import { isLoopback, parseRate, RateLimiter, type RateSpec } from './ratelimit.js';
import { AddressCaps } from './addresscaps.js';
import { targetPath } from '../shared/target.js';
import { errorMessage } from '../shared/errormessage.js';

export type { GatewayEvents };

/** PEM certificate chain and private key for HTTPS on the gateway's one port. */
export interface TlsOptions {
  cert: string | Buffer;
  key: string | Buffer;
  /** Passphrase of an encrypted private key. */
  passphrase?: string;
}

/**
 * Options of `createGateway`; every field has a default a public gateway can live with (the options table,
 * src/options.ts, shared with `ptth-proxy serve`). A bad value throws an OptionError: a TypeError with the code
 * `PTTH_ERR_BAD_OPTION`.
 */
export interface GatewayOptions extends BrowserOptions, RelayOptions {
  /** Makes the gateway a node of a cluster (with `table` a ClusterTable): see src/cluster/node.ts. */
  cluster?: ClusterHooks;
  /** Apps are served at `name.domain` (default `localhost`). */
  domain?: string;
  /** Base of advertised URLs behind a proxy or TLS terminator, e.g. `https://tunnel.example.com`. */
  publicUrl?: string;
  /**
   * Shape of public URLs (default `'host'`): `'host'` serves apps at `NAME.domain`, `'path'` at
   * `GATEWAY/NAME/` (one host name, no wildcard DNS or certificate; every app then shares one browser
   * origin and can read the others' cookies and storage), `'both'` answers either shape and
   * advertises the host shape. Path-routed requests reach the app without their `/NAME` prefix, which
   * comes in `X-Forwarded-Prefix` (docs/PROTOCOL.md section 1).
   */
  urls?: UrlMode;
  /** Lease in seconds for claims that name none (default 300). */
  defaultLease?: number;
  /** Longest lease a claim may ask for, in seconds (default 86400). */
  maxLease?: number;
  /** Channels one name may hold (default 64; 429 past it). */
  maxChannels?: number;
  /** Largest claim request body in bytes (default 8192; 413 past it). */
  claimBodyLimit?: number;
  /** Milliseconds a claimant has to send its declared body (default 10000). */
  claimTimeout?: number;
  /** Milliseconds from a visitor's request end to the app's response head (default 60000; 504). */
  responseTimeout?: number;
  /** Requests that may wait per name when every channel is busy (default 256; 503 past it). */
  queueLimit?: number;
  /** Milliseconds a request waits for a busy channel (default 15000; 503). */
  queueTimeout?: number;
  /** Milliseconds a request waits while its name has no channel, e.g. between reconnects (default 5000; 503). */
  reconnectWait?: number;
  /** Offer reversed HTTP/2 to clients that send `Upgrade: ptth` with `ALPN: h2` (default true). */
  http2?: boolean;
  /** Milliseconds between HTTP/2 PINGs on a reversed HTTP/2 connection (default 30000). */
  pingInterval?: number;
  /** Milliseconds a PING may go unanswered before the connection is closed (default 10000). */
  pingTimeout?: number;
  /** Streams the gateway opens at once on one HTTP/2 channel (default 256; the app's SETTINGS may lower it). */
  maxStreams?: number;
  /**
   * Drop an app's `Set-Cookie` whose Domain is the gateway's domain or a parent of it (default
   * true): browsers would send it to every app under the domain, so one tenant could set
   * cookies (a session, for fixation) for all the others. Each drop emits `cookie-dropped`.
   */
  cookieGuard?: boolean;
  /** Milliseconds a visitor has to send its request head (default 30000). */
  headersTimeout?: number;
  /** Milliseconds an idle visitor keep-alive connection stays open (default 5000). */
  keepAliveTimeout?: number;
  /** Largest visitor request head in bytes (default 16384). */
  maxHeaderSize?: number;
  /** Header fields a request may carry (default 100; 431 past it). */
  maxHeaders?: number;
  /**
   * Milliseconds a connection may sit with no bytes either way (default 120000; 0 turns it off).
   * Cuts visitors that trickle a body or stop reading a response. Requests waiting for their app
   * are governed by the queue and response timeouts instead; channels and upgrades are exempt.
   */
  idleTimeout?: number;
  /** TCP keepalive probes on every connection after this many idle milliseconds (default 30000; 0 off). */
  tcpKeepAlive?: number;
  /**
   * Claims (every transport) per client address: `'60/m'` (the default), `'10/s:20'` (burst 20),
   * a RateSpec, or `false`/`'0'` for no limit. 429 with `Retry-After` past it.
   */
  claimRate?: RateSpec | string | false;
  /** Visitor requests per client address (default `'100/s:400'`; `false`/`'0'` for no limit). */
  requestRate?: RateSpec | string | false;
  /**
   * Connections one client address may hold open at once, of any kind (default 2048; 0 for no cap).
   * Past it, the connection's first request gets 429 PTTH_ERR_ADDRESS_CONNECTIONS and it closes.
   */
  maxConnectionsPerAddress?: number;
  /** Names one client address may hold, channel or not, until released or expired (default 100; 0 for no cap; 429). */
  maxNamesPerAddress?: number;
  /** Channels one client address may hold across its names and transports (default 512; 0 for no cap; 429). */
  maxChannelsPerAddress?: number;
  /**
   * Apply the rate limits and per-address caps to loopback addresses too (default false). Loopback traffic is the
   * operator's own: local tools, or a reverse proxy on the same host, behind which every visitor
   * would share one address and one bucket.
   */
  limitLoopback?: boolean;
  /**
   * Who sees the names, channels and app addresses on the status page at `/` (default
   * `'loopback'`: requests from this machine only; others see the count). Random names are
   * unguessable URLs: listing them to everyone would give every tunnel away.
   */
  statusList?: 'loopback' | 'everyone' | 'nobody';
  /** Serve HTTPS instead of HTTP (visitors, claims and Comet on the same port). */
  tls?: TlsOptions;
  /**
   * Access keys and reserved names (README "Access keys"; default: none, the gateway is open).
   * Replace it later with `setAccess()`. Invalid: the constructor throws AccessConfigError.
   */
  access?: AccessConfig;
  /** Names nobody may claim, with or without a key (`www`, `admin-*`); kept across `setAccess()`. */
  reserved?: string[];
  /** The routing table (default: a new in-memory table). */
  table?: RouteTable;
  /** Prometheus metrics in `gateway.metrics` and at `/metrics` (default true). */
  metrics?: boolean;
  /** Serve `/metrics` on the gateway host too (default true); false when only an admin port (createAdminServer) should. */
  metricsOnGateway?: boolean;
}

function rateFrom(
  name: string,
  value: RateSpec | string | false | undefined,
  fallback: string,
): RateLimiter | undefined {
  if (value === false) return undefined;
  let spec: RateSpec | undefined;
  try {
    spec = typeof value === 'object' ? value : parseRate(value ?? fallback);
  } catch (e) {
    throw new OptionError(name, `${name}: ${errorMessage(e)}`, { cause: e });
  }
  return spec && new RateLimiter(spec);
}

/** `urls`: one of the table's choices (src/options.ts), its default when unset. */
function urlsOption(value: string | undefined): UrlMode {
  const choices: readonly string[] = OPTIONS.urls.choices;
  const mode = value ?? OPTIONS.urls.default;
  if (!choices.includes(mode))
    throw new OptionError('urls', `urls must be one of ${choices.join(', ')}, got ${JSON.stringify(value)}`);
  return mode as UrlMode;
}

/** The gateway's settings from its options: defaults, bounds and the error for a bad value come from the options table (src/options.ts). */
export function settingsFrom(o: GatewayOptions): GatewaySettings {
  const domain = domainOption(o.domain);
  const publicUrl = publicUrlOption(o.publicUrl);
  return {
    domain,
    publicUrl,
    urls: urlsOption(o.urls),
    defaultLease: numberOption('defaultLease', o.defaultLease),
    maxLease: numberOption('maxLease', o.maxLease),
    maxChannels: numberOption('maxChannels', o.maxChannels),
    claimBodyLimit: numberOption('claimBodyLimit', o.claimBodyLimit),
    claimTimeout: numberOption('claimTimeout', o.claimTimeout),
    responseTimeout: numberOption('responseTimeout', o.responseTimeout),
    queueLimit: numberOption('queueLimit', o.queueLimit),
    queueTimeout: numberOption('queueTimeout', o.queueTimeout),
    reconnectWait: numberOption('reconnectWait', o.reconnectWait),
    http2: boolOption('http2', o.http2),
    pingInterval: numberOption('pingInterval', o.pingInterval),
    pingTimeout: numberOption('pingTimeout', o.pingTimeout),
    maxStreams: numberOption('maxStreams', o.maxStreams),
    cookieDomains: boolOption('cookieGuard', o.cookieGuard)
      ? [...new Set([domain, ...(publicUrl ? [publicUrl.hostname] : [])])]
      : undefined,
  };
}

/** What the internal hop adds to a visitor's head: forwarding fields and credentials, with room to spare. */
const HOP_HEAD_ROOM = { fields: 16, bytes: 2048 } as const;

/**
 * The gateway: one node:http server for visitors, claims and its own endpoints.
 *
 *     accept -> classify -> routes (table) -> channel.dispatch -> response streamed back
 */
export class Gateway extends EventEmitter<GatewayEvents> {
  /** node:http, or node:https when `tls` is set (an https.Server is an http.Server too). */
  readonly server: Server | HttpsServer;
  readonly table: RouteTable;
  readonly settings: GatewaySettings;
  #ctx: GatewayContext;
  #info: GatewayInfo;
  /** Comet, the WebSocket channel and /ptth.js (docs/PROTOCOL.md sections 5 and 6). */
  readonly browser: BrowserEndpoints;
  /** The RelayHttp endpoint (docs/PROTOCOL.md section 10), with `relay: true`. */
  readonly relay: RelayEndpoint | undefined;
  /** Prometheus metrics (undefined with `metrics: false`). */
  readonly metrics: GatewayMetrics | undefined;
  /** Who may claim what; `setAccess()` replaces its configuration. */
  readonly access: AccessControl;
  /** What each client address holds (connections, names, channels) against its caps. */
  readonly caps: AddressCaps;
  #closing = false;
  #sockets = new Set<Socket>();
  /** Connections accepted past their address's cap: their first request is refused (429) and they close. */
  #crowded = new WeakSet<Socket>();
  #claimLimit: RateLimiter | undefined;
  #requestLimit: RateLimiter | undefined;
  #maxHeaders: number;
  /** Largest request head in bytes (node's maxHeaderSize for the server). */
  #maxHeaderSize: number;
  /** The rate limits, by bucket (admission.ts). */
  #buckets: Buckets = {
    take: (bucket, address) => (bucket === 'claims' ? this.#claimLimit : this.#requestLimit)?.take(address) ?? 0,
  };
  /** Each connection's latest response, so an idle timeout can tell a visitor waiting for its app. */
  #current = new WeakMap<Socket, { req: IncomingMessage; res: ServerResponse }>();

  constructor(options: GatewayOptions = {}) {
    super();
    this.settings = settingsFrom(options);
    const s = this.settings;
    this.table =
      options.table ??
      new MemoryTable({
        defaultLease: Math.min(s.defaultLease, s.maxLease),
        queueLimit: s.queueLimit,
        queueTimeout: s.queueTimeout,
        reconnectWait: s.reconnectWait,
      });
    const observed = { requests: false };
    // Typed for every caller; node's emit is generic over GatewayEvents in a way a generic K cannot meet.
    const emit: EmitGatewayEvent = (event, ...args) => {
      (this as EventEmitter).emit(event, ...args);
    };
    this.access = new AccessControl(options.access, options.reserved);
    // Defaults a single real user never meets: browsers keep at most 256 connections in all (6 per
    // host), so 2048 leaves room for a NAT of many; 100 names and 512 channels cover one person's
    // apps at the default 4 HTTP/1.1 channels each (100 x 4 = 400).
    this.caps = new AddressCaps(
      {
        connections: numberOption('maxConnectionsPerAddress', options.maxConnectionsPerAddress),
        names: numberOption('maxNamesPerAddress', options.maxNamesPerAddress),
        channels: numberOption('maxChannelsPerAddress', options.maxChannelsPerAddress),
      },
      this.table,
    );
    if (options.limitLoopback !== true) this.caps.exempt(isLoopback);
    this.#ctx = {
      settings: s,
      table: this.table,
      cluster: options.cluster,
      access: this.access,
      caps: this.caps,
      emit,
      observed,
      closing: () => this.#closing,
    };
    this.browser = new BrowserEndpoints(this.#ctx, options);
    const relay = relaySettingsFrom(options, numberOption('maxHeaderSize', options.maxHeaderSize), s.claimTimeout);
    this.relay = relay
      ? new RelayEndpoint({
          settings: relay,
          lookup: (key) => this.access.relayKey(key),
          report: (e) => emit('relay', e),
        })
      : undefined;
    (this as EventEmitter).on('newListener', (event: string | symbol) => {
      if (event === 'request') observed.requests = true;
    });
    this.table.on('register', (reg) => this.emit('register', reg));
    this.table.on('release', (reg, reason) => this.emit('release', reg, reason));
    this.table.on('channel-open', (reg, channel) => this.emit('channel-open', reg, channel));
    this.table.on('channel-close', (reg, channel) => this.emit('channel-close', reg, channel));
    // After the newListener hook above: the metrics' `request` listener turns per-request events on.
    this.metrics = options.metrics === false ? undefined : new GatewayMetrics(this);
    this.#info = {
      version: VERSION,
      startedAt: Date.now(),
      browser: this.browser,
      relay: this.relay,
      metrics: this.metrics,
      metricsPublic: options.metricsOnGateway !== false,
      statusList: options.statusList ?? OPTIONS.statusList.default,
    };

    this.#claimLimit = rateFrom('claimRate', options.claimRate, OPTIONS.claimRate.default);
    this.#requestLimit = rateFrom('requestRate', options.requestRate, OPTIONS.requestRate.default);
    if (options.limitLoopback !== true) {
      this.#claimLimit?.exempt(isLoopback);
      this.#requestLimit?.exempt(isLoopback);
    }
    this.#maxHeaders = numberOption('maxHeaders', options.maxHeaders);
    this.#maxHeaderSize = numberOption('maxHeaderSize', options.maxHeaderSize);
    // A cluster node also reads hop requests: a visitor's head plus the sending node's forwarding
    // fields and credentials (docs/PROTOCOL.md section 12.4). Visitors are still held to the limits
    // by #badHead's count; the byte limit grows by that much for them too.
    const hop = options.cluster === undefined ? { fields: 0, bytes: 0 } : HOP_HEAD_ROOM;
    this.server = visitorServer(options, this.#maxHeaderSize + hop.bytes);
    // node:http keeps the first maxHeadersCount fields and silently drops the rest; one more than
    // the limit is enough to see a flood and refuse it with 431 instead.
    this.server.maxHeadersCount = this.#maxHeaders + 1 + hop.fields;
    this.server.timeout = numberOption('idleTimeout', options.idleTimeout);
    this.server.on('timeout', this.#onTimeout);
    this.#listenTo(Boolean(options.tls), numberOption('tcpKeepAlive', options.tcpKeepAlive));
  }

  /** What the server hears: connections (tracked and capped per address), requests, upgrades, errors. */
  #listenTo(tls: boolean, keepAlive: number): void {
    const connection = tls ? 'secureConnection' : 'connection';
    // Every socket, so close() can end the ones node:http no longer tracks (channels, spliced upgrades).
    this.server.on(connection, (socket: Socket) => {
      this.#sockets.add(socket);
      const held = this.caps.connect(socket.remoteAddress);
      if (!held.ok) this.#crowded.add(socket);
      socket.once('close', () => {
        this.#sockets.delete(socket);
        held.release();
      });
      // Dead peers of idle channels and keep-alive connections are found by the kernel.
      if (keepAlive > 0) socket.setKeepAlive(true, keepAlive);
    });
    if (tls) {
      // A TLS handshake that fails (plain HTTP on the HTTPS port, bad client hello) only closes that socket.
      this.server.on('tlsClientError', (_err: Error, socket: Socket) => socket.destroy());
    }
    this.server.on('request', this.#onRequest);
    this.server.on('upgrade', this.#onUpgrade);
    this.server.on('clientError', this.#onClientError);
    // The gateway is no forward proxy: a CONNECT gets a status that says so, not a silent close.
    this.server.on('connect', (req: IncomingMessage, socket: Socket) => {
      socket.setTimeout(0);
      refuse(
        req,
        socket,
        new PtthError(
          'PTTH_ERR_METHOD_NOT_ALLOWED',
          'CONNECT is not forwarded: ptth-proxy is a gateway for named apps, not a forward proxy.',
        ),
      );
    });
  }

  #onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const ctx = this.#ctx;
    this.#current.set(req.socket, { req, res });
    // Another node's request (the internal hop): its node classified and admitted it already.
    if (req.headers['x-ptth-hop'] !== undefined) {
      if (req.headers['x-ptth-hop-kind'] === 'comet') return this.#hopComet(req, res);
      return forwardHop(ctx, req, res);
    }
    const arrival = this.#arrive(req, false);
    const route = arrival.route;
    // The gateway's own headers even on a refusal: its answers are never framed or sniffed.
    if (route.kind === 'gateway' || route.kind === 'comet') gatewayHeaders(req, res, targetPath(req.url));
    const admission = admit(arrival, this.#buckets);
    if (!admission.admitted) {
      if (route.kind === 'visitor') return refuseVisitor(ctx, req, res, route.name, admission.error);
      return this.#refuse(req, res, route, admission);
    }
    if (route.kind === 'visitor') forwardRequest(ctx, req, res, route.name, route.via);
    else if (route.kind === 'claim') claimFromRequest(ctx, req, res, route.hostName);
    else handleEndpoint(ctx, this.#info, req, res);
  };

  /**
   * A Comet poll or reply another node sent on (its session is served here, or this node adopts
   * it): checked as every hop is, then handled as if it had come here (docs/PROTOCOL.md section 12).
   */
  #hopComet(req: IncomingMessage, res: ServerResponse): void {
    const credentials = hopCredentials(this.#ctx, req);
    const path = targetPath(req.url);
    gatewayHeaders(req, res, path);
    // A request URL only (`/reversehttp/SESSION/SLOT`): never a registration, which admission and
    // the rate limits must see with the claimant's own address.
    const parts = path.startsWith(`${SERVICE_PATH}/`) ? path.slice(SERVICE_PATH.length + 1).split('/') : [];
    if (!credentials || parts.length !== 2 || parts.some((p) => p === '')) {
      req.resume();
      sendError(res, new PtthError('PTTH_ERR_HOP_FORBIDDEN'), req.headers.accept, true);
      return;
    }
    cometHop(req, credentials.name);
    handleEndpoint(this.#ctx, this.#info, req, res);
  }

  /**
   * What admission decides on: the road of a request or upgrade (classify.ts) and what is wrong with
   * it already. #badHead rewrites an absolute-form target first, so every later step (classify
   * included) sees the origin-form path.
   */
  #arrive(req: IncomingMessage, upgraded: boolean): Arrival {
    const socket = req.socket;
    const problem = this.#crowded.has(socket) ? this.caps.connectionsError() : this.#badHead(req);
    const { host, upgrade } = req.headers;
    // The path of an upgrade too: with path URLs on, a visitor's WebSocket to /NAME/ is the app's.
    const path = targetPath(req.url);
    const head = upgraded ? { host, upgrade, path } : { host, upgrade, method: req.method, path };
    const { domain, urls, publicUrl } = this.#ctx.settings;
    const route = classify(head, domain, urls, publicUrl?.hostname);
    return { route, upgraded, upgrade, problem, closing: this.#closing, address: socket.remoteAddress };
  }

  /** A refused claim is logged and counted by reason, whichever check refused it. */
  #refuse(
    req: IncomingMessage,
    to: ServerResponse | Socket,
    route: Route,
    refused: Admission & { admitted: false },
  ): void {
    if (!refused.claim) return refuse(req, to, refused.error);
    refuseClaim(
      this.#ctx,
      req,
      to,
      refused.error,
      claimantName(req, route.kind === 'claim' ? route.hostName : undefined),
    );
  }

  /**
   * Heads llhttp accepts but the gateway must not: a header flood (node keeps the first
   * maxHeadersCount fields and drops the rest silently), a repeated Host, which node folds to the
   * first while the app would see both, a Host that is no host[:port] (RFC 9112 section 3.2: 400),
   * and an absolute-form target naming another authority than Host (classify.ts originForm). A
   * matching absolute-form target is rewritten to origin-form here, before anything routes or
   * forwards it: every later step (claims, Comet, channels) sees what an ordinary request has.
   */
  #badHead(req: IncomingMessage): PtthError | undefined {
    const raw = req.rawHeaders;
    if (raw.length > this.#maxHeaders * 2) return new PtthError('PTTH_ERR_TOO_MANY_HEADERS');
    let hosts = 0;
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i] as string;
      if (name.length === 4 && name.toLowerCase() === 'host' && ++hosts > 1) return new PtthError('PTTH_ERR_BAD_HOST');
    }
    const host = req.headers.host;
    const problem = hostProblem(host);
    if (problem !== undefined) return new PtthError('PTTH_ERR_BAD_HOST', problem);
    const url = req.url ?? '/';
    if (url.startsWith('/') || url === '*') return undefined;
    const target = originForm(url, host);
    if ('problem' in target) return new PtthError('PTTH_ERR_BAD_TARGET', target.problem);
    req.url = target.path;
    return undefined;
  }

  /**
   * A connection with no bytes either way for `idleTimeout`: a visitor trickling its body or not
   * reading its response is cut; one whose request is complete and waits for its app's first byte
   * is left to the queue and response timeouts (which answer it with 503 or 504).
   */
  #onTimeout = (socket: Socket): void => {
    const cur = this.#current.get(socket);
    if (cur?.req.complete && !cur.res.headersSent && !cur.res.writableEnded && !socket.destroyed) return;
    socket.destroy();
  };

  #onUpgrade = (req: IncomingMessage, socket: Socket, head: Buffer): void => {
    const ctx = this.#ctx;
    // Channels and spliced upgrades live as long as their peers want; the idle timeout is for
    // plain HTTP exchanges (channels have PING, TCP keepalive and their own timers).
    socket.setTimeout(0);
    if (req.headers['x-ptth-hop'] !== undefined) return forwardHopUpgrade(ctx, req, socket, head);
    const arrival = this.#arrive(req, true);
    const { route } = arrival;
    const admission = admit(arrival, this.#buckets);
    if (!admission.admitted) return this.#refuse(req, socket, route, admission);
    if (route.kind === 'claim') claimFromUpgrade(ctx, req, socket, head, route.hostName);
    else if (route.kind === 'visitor') forwardUpgrade(ctx, req, socket, head, route.name, route.via);
    // Admission refused every other upgrade of the gateway host.
    else this.browser.upgrade(req, socket, head);
  };

  /** Bad bytes from the network: a clear status when the connection can still take one, never a crash. */
  #onClientError = (err: NodeJS.ErrnoException & { bytesParsed?: number }, socket: Socket): void => {
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    // Past maxHeadersCount, Node 22 and later fail the parse with HPE_HEADER_OVERFLOW where Node 20
    // kept the first fields (and #badHead counted one too many). A head that overflowed before
    // reaching maxHeaderSize bytes overflowed by its number of fields: the same answer as on 20.
    if (err.code === 'HPE_HEADER_OVERFLOW' && (err.bytesParsed ?? Infinity) < this.#maxHeaderSize) {
      writeRawError(socket, new PtthError('PTTH_ERR_TOO_MANY_HEADERS'), undefined);
      return;
    }
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    const reason =
      status === 431 ? 'Request Header Fields Too Large' : status === 408 ? 'Request Timeout' : 'Bad Request';
    const body = `${status} ${reason}: the request could not be parsed (${err.code ?? 'error'}).\n`;
    socket.end(
      `HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n` +
        'X-Content-Type-Options: nosniff\r\n' +
        `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
    socket.destroySoon();
  };

  /** Starts listening; resolves with the bound address. */
  listen(port = 8080, host?: string): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.server.once('error', onError);
      const done = (): void => {
        this.server.removeListener('error', onError);
        this.server.on('error', (err) => this.emit('error', err));
        const addr = this.server.address() as AddressInfo;
        this.emit('listening', addr);
        resolve(addr);
      };
      // A deep accept queue: when many visitors connect at once while the gateway is busy, node's
      // default of 511 overflows, the kernel drops their SYNs and each of them waits out a 1 s
      // (then 3 s) retransmit; that, not the gateway's queueing, was the p99 at 500 visitors.
      // The kernel caps it at net.core.somaxconn.
      this.server.listen({ port, backlog: 4096, ...(host === undefined ? {} : { host }) }, done);
    });
  }

  /** The node id when this gateway is a node of a cluster (logs and metrics name it), else undefined. */
  get nodeId(): string | undefined {
    return this.#ctx.cluster?.nodeId;
  }

  /** The cluster hooks of a node (the status page lists the whole cluster through them). */
  get cluster(): ClusterHooks | undefined {
    return this.#ctx.cluster;
  }

  /** True when the gateway serves HTTPS. */
  get secure(): boolean {
    return 'setSecureContext' in this.server;
  }

  /** New certificate and key for an HTTPS gateway (SIGHUP); throws and keeps the old pair if they do not load. */
  setTls(tls: TlsOptions): void {
    reloadTls(this.server, tls);
  }

  /**
   * Replaces the access configuration at once (SIGHUP reload). New claims use it; registrations
   * made before are kept, and their next claim (a reconnect) is decided by it. Throws
   * AccessConfigError if it is invalid, keeping the configuration in force.
   */
  setAccess(config: AccessConfig | undefined, source?: string): void {
    this.access.set(config, source);
  }

  /** Listening and accepting (what /readyz reports): false before listen(), once close() began, and while a cluster node's Redis is unreachable. */
  get ready(): boolean {
    return this.server.listening && notReady(this.#ctx) === undefined;
  }

  /** Why `ready` is false (the body of a 503 on /readyz). */
  get notReadyReason(): string {
    return (this.server.listening ? notReady(this.#ctx) : undefined) ?? 'shutting down';
  }

  address(): AddressInfo | null {
    const a = this.server.address();
    return a && typeof a === 'object' ? a : null;
  }

  /**
   * Stops accepting, refuses new claims, lets requests in flight finish up to `graceMs`
   * (default 10000, as `serve --shutdown-grace`), then releases every registration (channels
   * close, so clients reconnect elsewhere) and closes whatever is still open.
   */
  async close(graceMs = SHUTDOWN_GRACE_DEFAULT): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeIdleConnections();
    const deadline = Date.now() + graceMs;
    // HTTP/2 channels hear GOAWAY at once: no new streams, those in flight finish, then the
    // connection closes and the client reconnects elsewhere.
    for (const r of this.table.list()) for (const c of [...r.channels]) if (c.transport === 'http2') c.close();
    const busy = (): boolean => this.table.list().some((r) => r.waiting > 0 || r.channels.some((c) => c.active > 0));
    while (busy() && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 25));
      this.server.closeIdleConnections();
    }
    this.table.close();
    this.server.closeIdleConnections();
    // Visitor connections get what is left of the grace period to finish their responses.
    const rest = Math.max(0, deadline - Date.now());
    const timer = setTimeout(() => {
      this.server.closeAllConnections();
      for (const s of this.#sockets) s.destroy();
    }, rest);
    timer.unref();
    await closed;
    clearTimeout(timer);
  }
}

/**
 * Replaces the certificate and key of an HTTPS gateway (SIGHUP reload): new connections use them,
 * open ones keep theirs. Throws, keeping the old pair, when the PEM does not load.
 */
export function reloadTls(server: Server | HttpsServer, tls: TlsOptions): void {
  if (!('setSecureContext' in server))
    throw new TypeError('this gateway was started without TLS; restart it with a certificate to serve HTTPS');
  server.setSecureContext(tlsContext(tls));
}

/** The node:http (or node:https) server visitors, claimants and Comet clients reach, with the head limits and timeouts. */
function visitorServer(options: GatewayOptions, maxHeaderSize: number): Server | HttpsServer {
  const headersTimeout = numberOption('headersTimeout', options.headersTimeout);
  const serverOptions = {
    // Visitors' bodies stream for as long as they take; slow heads are cut by headersTimeout,
    // stalled bodies by the idle timeout.
    requestTimeout: 0,
    headersTimeout,
    // node checks headersTimeout only this often (30 s by default): a slowloris head would
    // otherwise live up to 30 s past the configured timeout.
    connectionsCheckingInterval: Math.min(30_000, Math.max(100, Math.floor(headersTimeout / 4))),
    keepAliveTimeout: numberOption('keepAliveTimeout', options.keepAliveTimeout),
    maxHeaderSize,
  };
  return options.tls
    ? // The TLS handshake comes before the head, outside node's headersTimeout: without this a
      // slowloris handshake would hold its connection for tls's default of 120 s.
      createTlsServer({ ...serverOptions, handshakeTimeout: headersTimeout, ...tlsContext(options.tls) })
    : createServer(serverOptions);
}

function tlsContext(tls: TlsOptions): { cert: string | Buffer; key: string | Buffer; passphrase?: string } {
  return { cert: tls.cert, key: tls.key, ...(tls.passphrase === undefined ? {} : { passphrase: tls.passphrase }) };
}

/** Creates a gateway (not yet listening). */
export function createGateway(options: GatewayOptions = {}): Gateway {
  return new Gateway(options);
}
