import { EventEmitter } from 'node:events';
import * as http from 'node:http';
import * as https from 'node:https';
import type { Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { PtthError, type ErrorCode } from '../http/errors.js';

/**
 * The app side of PTTH/1.0, the mirror image of the gateway: dial the gateway, claim a name with
 * `Upgrade: PTTH/1.0`, then serve the requests that arrive on that same connection with an
 * ordinary node:http server (the socket is handed to it with `emit('connection')`).
 */
export interface ListenOptions {
  /** The gateway's URL (default `http://localhost:8080`). */
  gateway?: string | URL;
  /** The name to claim; absent, the gateway assigns one and the pool keeps it. */
  name?: string;
  /** Shared secret that holds the name; absent, a random one is made for this process. */
  token?: string;
  /** Seconds the gateway keeps the name while no connection is live. */
  lease?: number;
  /** Reversed connections kept open at once (default 4). */
  connections?: number;
  /** First reconnect delay in ms (default 250); doubles up to `maxBackoff`, with jitter. */
  backoff?: number;
  /** Longest reconnect delay in ms (default 30000). */
  maxBackoff?: number;
  /** Extra headers on every claim (e.g. `Authorization: Bearer <key>`). */
  headers?: Record<string, string>;
  /** For `https:` gateways: verify the certificate (default true). */
  rejectUnauthorized?: boolean;
}

/** Claim refusals that retrying cannot fix: the tunnel stops and reports them. */
const FATAL = new Set([400, 401, 403, 404, 405, 413]);

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
  close: [];
}

type Target = http.Server | http.RequestListener;

/** Link: <url>; rel="related" (also inside a comma-joined Link list). */
function linkRel(value: string | undefined, rel: string): string | undefined {
  if (!value) return undefined;
  const re = /<([^>]*)>\s*;([^,]*)/g;
  for (let m = re.exec(value); m; m = re.exec(value)) {
    if (new RegExp(`rel="?${rel}"?`, 'i').test(m[2] as string)) return m[1];
  }
  return undefined;
}

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
  #gateway: URL;
  #options: ListenOptions;
  #size: number;
  #server: http.Server;
  #live = new Set<Socket>();
  #busy = new WeakMap<Socket, number>();
  #dialing = new Set<http.ClientRequest>();
  #timers = new Set<NodeJS.Timeout>();
  #attempt = 0;
  #closed = false;
  #online = false;
  #ready: Promise<string>;
  #resolveReady!: (url: string) => void;
  #rejectReady!: (err: Error) => void;

  constructor(target: Target, options: ListenOptions = {}) {
    super();
    this.#gateway = new URL(String(options.gateway ?? 'http://localhost:8080'));
    if (this.#gateway.protocol !== 'http:' && this.#gateway.protocol !== 'https:') {
      throw new TypeError(`gateway must be an http: or https: URL, got ${String(options.gateway)}`);
    }
    this.#options = options;
    this.#size = options.connections ?? 4;
    if (!Number.isInteger(this.#size) || this.#size < 1) throw new TypeError('connections must be a whole number >= 1');
    this.name = options.name?.toLowerCase();
    this.token = options.token ?? randomBytes(18).toString('base64url');
    this.#ready = new Promise((resolve, reject) => {
      this.#resolveReady = resolve;
      this.#rejectReady = reject;
    });
    this.#ready.catch(() => {});
    this.#server = this.#makeServer(target);
    this.#fill();
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
        if (n === 0 && this.#closed) socket.destroySoon();
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

  #fill(): void {
    if (this.#closed) return;
    // Until the gateway has named us, one claim at a time so that every connection shares the name.
    const want = this.name === undefined ? 1 : this.#size;
    while (this.#live.size + this.#dialing.size < want) this.#dial();
  }

  #schedule(error: Error): void {
    if (this.#closed) return;
    const base = this.#options.backoff ?? 250;
    const max = this.#options.maxBackoff ?? 30_000;
    const exp = Math.min(max, base * 2 ** Math.min(this.#attempt, 20));
    this.#attempt++;
    // Jitter (half to full delay) so that many clients do not reconnect in step after a restart.
    const delay = Math.round(exp / 2 + Math.random() * (exp / 2));
    this.emit('reconnecting', { delay, error });
    // Hold the slot while waiting so #fill does not dial again at once.
    const placeholder = { destroy() {} } as unknown as http.ClientRequest;
    this.#dialing.add(placeholder);
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      this.#dialing.delete(placeholder);
      this.#fill();
    }, delay);
    this.#timers.add(timer);
  }

  #dial(): void {
    const g = this.#gateway;
    const params = new URLSearchParams();
    if (this.name !== undefined) params.set('name', this.name);
    params.set('token', this.token);
    if (this.#options.lease !== undefined) params.set('lease', String(this.#options.lease));
    const base = g.pathname.endsWith('/') ? g.pathname : `${g.pathname}/`;
    const mod = g.protocol === 'https:' ? https : http;
    const req = mod.request({
      protocol: g.protocol,
      hostname: g.hostname.replace(/^\[|\]$/g, ''),
      port: g.port || (g.protocol === 'https:' ? 443 : 80),
      method: 'POST',
      path: `${base}?${params.toString()}`,
      agent: false,
      headers: {
        ...this.#options.headers,
        Upgrade: 'PTTH/1.0',
        Connection: 'Upgrade',
        'Content-Length': '0',
      },
      ...(g.protocol === 'https:' ? { rejectUnauthorized: this.#options.rejectUnauthorized ?? true } : {}),
    });
    this.#dialing.add(req);
    let settled = false;
    const fail = (err: Error): void => {
      if (settled) return;
      settled = true;
      this.#dialing.delete(req);
      if (this.#closed) return;
      if (err instanceof ClaimError && FATAL.has(err.status)) {
        this.#stop(err);
        return;
      }
      this.#schedule(err);
    };
    req.on('upgrade', (res: http.IncomingMessage, socket: Socket, head: Buffer) => {
      settled = true;
      this.#dialing.delete(req);
      if (this.#closed) {
        socket.destroy();
        return;
      }
      if (!/(^|,)\s*ptth\/1\.0\s*(,|$)/i.test(res.headers.upgrade ?? '')) {
        socket.destroy();
        this.#schedule(new Error(`the gateway upgraded to ${JSON.stringify(res.headers.upgrade)}, not PTTH/1.0`));
        return;
      }
      const rawLink = res.headers.link;
      const link = linkRel(Array.isArray(rawLink) ? rawLink.join(', ') : rawLink, 'related');
      if (link) {
        this.url = link;
        if (this.name === undefined) this.name = new URL(link).hostname.split('.')[0];
      }
      if (res.headers.location) this.privateUrl = res.headers.location;
      this.#attempt = 0;
      this.#adopt(socket, head);
    });
    req.on('response', (res: http.IncomingMessage) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        if (size < 4096) chunks.push(c);
        size += c.length;
      });
      res.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8').trim().slice(0, 500);
        const code = res.headers['x-ptth-error'];
        fail(new ClaimError(res.statusCode ?? 0, `the gateway refused the claim: ${res.statusCode} ${body}`, typeof code === 'string' ? code : undefined));
      });
      res.on('error', (err) => fail(err));
    });
    req.on('error', fail);
    req.end();
  }

  /** Hands a reversed connection to the internal server. */
  #adopt(socket: Socket, head: Buffer): void {
    this.#live.add(socket);
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30_000);
    socket.once('close', () => {
      if (!this.#live.delete(socket)) return;
      this.#changed();
      if (!this.#closed) this.#fill();
    });
    // Bytes read past the 101 belong to the first reversed request.
    if (head.length > 0) socket.unshift(head);
    this.#server.emit('connection', socket);
    this.#changed();
    this.#fill();
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
    for (const req of this.#dialing) req.destroy();
    this.#dialing.clear();
    for (const s of this.#live) if ((this.#busy.get(s) ?? 0) === 0) s.destroy();
    const deadline = Date.now() + (options.graceMs ?? 5_000);
    while (this.#live.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
    for (const s of this.#live) s.destroy();
    this.#live.clear();
    // Released last, so that requests in flight finish before the gateway drops the name.
    if ((options.release ?? true) && this.privateUrl) await this.#release(this.privateUrl).catch(() => {});
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

/**
 * Serves `target` (an `http.Server` such as an Express or Fastify app's, or a request listener)
 * through a ptth-proxy gateway. The server does not need to listen on any port.
 */
export function listen(target: Target, options: ListenOptions = {}): Tunnel {
  return new Tunnel(target, options);
}

export type { ErrorCode };
export { PtthError };
