import { EventEmitter } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { PtthError } from '../http/errors.js';
import { sendError, writeRawError } from '../http/respond.js';
import { MemoryTable, type Registration, type RouteTable } from '../routes/table.js';
import type { Channel } from '../channels/channel.js';
import { claimFromRequest, claimFromUpgrade } from './claim.js';
import { classify } from './classify.js';
import type { GatewayContext, GatewaySettings } from './context.js';
import { handleEndpoint, type GatewayInfo } from './endpoints.js';
import { BrowserEndpoints, type BrowserOptions } from './browser.js';
import { forwardRequest, forwardUpgrade } from './forward.js';
import { VERSION } from '../version.js';
import { GatewayMetrics } from './metrics.js';
import type { RequestEvent } from './forward.js';

/** Options of `createGateway`; every field has a default a public gateway can live with. */
export interface GatewayOptions extends BrowserOptions {
  /** Apps are served at `name.domain` (default `localhost`). */
  domain?: string;
  /** Base of advertised URLs behind a proxy or TLS terminator, e.g. `https://tunnel.example.com`. */
  publicUrl?: string;
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
  /** Milliseconds a visitor has to send its request head (default 30000). */
  headersTimeout?: number;
  /** Milliseconds an idle visitor keep-alive connection stays open (default 5000). */
  keepAliveTimeout?: number;
  /** Largest visitor request head in bytes (default 16384). */
  maxHeaderSize?: number;
  /** The routing table (default: a new in-memory table). */
  table?: RouteTable;
  /** Prometheus metrics in `gateway.metrics` and at `/metrics` (default true). */
  metrics?: boolean;
  /** Serve `/metrics` on the gateway host too (default true); false when only an admin port (createAdminServer) should. */
  metricsOnGateway?: boolean;
}

export interface GatewayEvents {
  listening: [AddressInfo];
  claim: [{ name: string; url: string; transport: string; remote: string }];
  refuse: [{ code: string; status: number; remote: string | undefined }];
  register: [Registration];
  release: [Registration, string];
  'channel-open': [Registration, Channel];
  'channel-close': [Registration, Channel];
  request: [RequestEvent];
  error: [Error];
}

function positive(name: string, value: number | undefined, fallback: number, min = 0): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value < min) throw new TypeError(`${name} must be a number >= ${min}, got ${String(value)}`);
  return value;
}

function settingsFrom(o: GatewayOptions): GatewaySettings {
  const domain = (o.domain ?? 'localhost').toLowerCase().replace(/\.$/, '');
  if (!/^[a-z0-9.-]+$/.test(domain) || domain.startsWith('.') || domain.includes('..')) {
    throw new TypeError(`domain must be a DNS name, got ${JSON.stringify(o.domain)}`);
  }
  let publicUrl: URL | undefined;
  if (o.publicUrl !== undefined) {
    publicUrl = new URL(o.publicUrl);
    if (publicUrl.protocol !== 'http:' && publicUrl.protocol !== 'https:') {
      throw new TypeError(`publicUrl must be an http or https URL, got ${o.publicUrl}`);
    }
  }
  return {
    domain,
    publicUrl,
    defaultLease: positive('defaultLease', o.defaultLease, 300),
    maxLease: positive('maxLease', o.maxLease, 86_400),
    maxChannels: positive('maxChannels', o.maxChannels, 64, 1),
    claimBodyLimit: positive('claimBodyLimit', o.claimBodyLimit, 8192),
    claimTimeout: positive('claimTimeout', o.claimTimeout, 10_000, 1),
    responseTimeout: positive('responseTimeout', o.responseTimeout, 60_000, 1),
    queueLimit: positive('queueLimit', o.queueLimit, 256),
    queueTimeout: positive('queueTimeout', o.queueTimeout, 15_000, 1),
    reconnectWait: positive('reconnectWait', o.reconnectWait, 5_000, 1),
    http2: o.http2 ?? true,
    pingInterval: positive('pingInterval', o.pingInterval, 30_000, 1),
    pingTimeout: positive('pingTimeout', o.pingTimeout, 10_000, 1),
    maxStreams: positive('maxStreams', o.maxStreams, 256, 1),
  };
}

/**
 * The gateway: one node:http server for visitors, claims and its own endpoints.
 *
 *     accept -> classify -> routes (table) -> channel.dispatch -> response streamed back
 */
export class Gateway extends EventEmitter<GatewayEvents> {
  readonly server: Server;
  readonly table: RouteTable;
  readonly settings: GatewaySettings;
  #ctx: GatewayContext;
  #info: GatewayInfo;
  /** Comet, the WebSocket channel and /ptth.js (PROTOCOL.md section 4). */
  readonly browser: BrowserEndpoints;
  /** Prometheus metrics (undefined with `metrics: false`). */
  readonly metrics: GatewayMetrics | undefined;
  #closing = false;
  #sockets = new Set<Socket>();

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
    const emit = (event: string, ...args: unknown[]): void => {
      (this.emit as (e: string, ...a: unknown[]) => boolean)(event, ...args);
    };
    this.#ctx = { settings: s, table: this.table, emit, observed, closing: () => this.#closing };
    this.browser = new BrowserEndpoints(this.#ctx, options);
    (this as EventEmitter).on('newListener', (event: string | symbol) => {
      if (event === 'request') observed.requests = true;
    });
    for (const event of ['register', 'release', 'channel-open', 'channel-close'] as const) {
      this.table.on(event, (...args: unknown[]) => emit(event, ...args));
    }
    // After the newListener hook above: the metrics' `request` listener turns per-request events on.
    this.metrics = options.metrics === false ? undefined : new GatewayMetrics(this);
    this.#info = {
      version: VERSION,
      startedAt: Date.now(),
      browser: this.browser,
      metrics: this.metrics,
      metricsPublic: options.metricsOnGateway !== false,
    };

    this.server = createServer({
      // Visitors' bodies stream for as long as they take; slow heads are cut by headersTimeout.
      requestTimeout: 0,
      headersTimeout: positive('headersTimeout', options.headersTimeout, 30_000, 1),
      keepAliveTimeout: positive('keepAliveTimeout', options.keepAliveTimeout, 5_000),
      maxHeaderSize: positive('maxHeaderSize', options.maxHeaderSize, 16_384, 1024),
    });
    // Every socket, so close() can end the ones node:http no longer tracks (channels, spliced upgrades).
    this.server.on('connection', (socket: Socket) => {
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
    });
    this.server.on('request', this.#onRequest);
    this.server.on('upgrade', this.#onUpgrade);
    this.server.on('clientError', this.#onClientError);
  }

  #onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const ctx = this.#ctx;
    const route = classify({ host: req.headers.host, upgrade: req.headers.upgrade }, ctx.settings.domain);
    if (route.kind === 'visitor') {
      forwardRequest(ctx, req, res, route.name);
    } else if (route.kind === 'claim') {
      if (this.#closing) return refuse(req, res, new PtthError('PTTH_ERR_SHUTTING_DOWN'));
      claimFromRequest(ctx, req, res, route.hostName);
    } else {
      handleEndpoint(ctx, this.#info, req, res);
    }
  };

  #onUpgrade = (req: IncomingMessage, socket: Socket, head: Buffer): void => {
    const ctx = this.#ctx;
    const route = classify({ host: req.headers.host, upgrade: req.headers.upgrade }, ctx.settings.domain);
    if (route.kind === 'claim') {
      if (this.#closing) {
        socket.on('error', noop);
        writeRawError(socket, new PtthError('PTTH_ERR_SHUTTING_DOWN'), req.headers.accept);
        return;
      }
      claimFromUpgrade(ctx, req, socket, head, route.hostName);
    } else if (route.kind === 'visitor') {
      forwardUpgrade(ctx, req, socket, head, route.name);
    } else if (route.kind === 'websocket') {
      if (this.#closing) {
        socket.on('error', noop);
        writeRawError(socket, new PtthError('PTTH_ERR_SHUTTING_DOWN'), req.headers.accept);
        return;
      }
      this.browser.upgrade(req, socket, head);
    } else {
      socket.on('error', noop);
      writeRawError(
        socket,
        new PtthError('PTTH_ERR_UNSUPPORTED_UPGRADE', `The gateway host only upgrades to PTTH/1.0 or ptth, not to ${JSON.stringify(req.headers.upgrade ?? '')}.`),
        req.headers.accept,
      );
    }
  };

  /** Bad bytes from the network: a clear status when the connection can still take one, never a crash. */
  #onClientError = (err: NodeJS.ErrnoException, socket: Socket): void => {
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    const reason = status === 431 ? 'Request Header Fields Too Large' : status === 408 ? 'Request Timeout' : 'Bad Request';
    const body = `${status} ${reason}: the request could not be parsed (${err.code ?? 'error'}).\n`;
    socket.end(
      `HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n` +
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
      if (host === undefined) this.server.listen(port, done);
      else this.server.listen(port, host, done);
    });
  }

  /** Listening and accepting (what /readyz reports): false before listen() and once close() began. */
  get ready(): boolean {
    return this.server.listening && !this.#closing;
  }

  address(): AddressInfo | null {
    const a = this.server.address();
    return a && typeof a === 'object' ? a : null;
  }

  /**
   * Stops accepting, refuses new claims, lets requests in flight finish up to `graceMs`, then
   * releases every registration (channels close, so clients reconnect elsewhere) and closes
   * whatever is still open.
   */
  async close(graceMs = 5_000): Promise<void> {
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

function refuse(req: IncomingMessage, res: ServerResponse, err: PtthError): void {
  req.resume();
  sendError(res, err, req.headers.accept, true);
}

function noop(): void {}

/** Creates a gateway (not yet listening). */
export function createGateway(options: GatewayOptions = {}): Gateway {
  return new Gateway(options);
}
