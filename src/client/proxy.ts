import * as http from 'node:http';
import * as https from 'node:https';
import type { Socket } from 'node:net';
import { pipeline } from 'node:stream';
import { unframedBody, withBodyFraming, withoutHeaders, withoutHopByHop } from '../http/headers.js';
import { rawHead, relay, splice } from '../http/relay.js';
import { noop } from '../shared/noop.js';

export interface LocalProxyOptions {
  /** Replace the Host header with the local service's (some dev servers check it). Default false. */
  rewriteHost?: boolean;
  /** For an https: local service: verify its certificate (default false: it is usually self-signed). */
  rejectUnauthorized?: boolean;
  /**
   * Told, per request to the local service, whether it could be reached: the error when a
   * connection to it failed (refused, unknown host...), undefined when it answered.
   */
  onReach?: (err: NodeJS.ErrnoException | undefined) => void;
}

/** Errors that mean the local service is not there (not a request that went wrong halfway). */
export const UNREACHABLE: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EADDRNOTAVAIL',
  'ETIMEDOUT',
]);

/** Where a local proxy sends requests; the Node client's HTTP/2 side uses it directly (see node.ts). */
export interface LocalUpstream {
  readonly request: typeof http.request;
  readonly agent: http.Agent;
  readonly host: string;
  readonly port: number;
  /** Path prefix of the target URL ('' for /). */
  readonly base: string;
  /** Host header to send instead of the visitor's, when --rewrite-host is on. */
  readonly rewriteHost: string | undefined;
  readonly tls: { rejectUnauthorized?: boolean };
  /** The 502 body when the local service cannot be reached. */
  unreachable(err: NodeJS.ErrnoException): string;
}

/** Marks a createLocalProxy() server with its upstream. */
export const LOCAL_UPSTREAM: unique symbol = Symbol('ptth-proxy.localUpstream');

/** `request`, telling `onReach` whether each request reached the local service (unchanged without one). */
function reporting(request: typeof http.request, onReach: LocalProxyOptions['onReach']): typeof http.request {
  if (!onReach) return request;
  return ((...args: Parameters<typeof http.request>) => {
    const req = (request as (...a: Parameters<typeof http.request>) => http.ClientRequest)(...args);
    req.once('response', () => onReach(undefined));
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== undefined && UNREACHABLE.has(err.code)) onReach(err);
    });
    return req;
  }) as typeof http.request;
}

/**
 * An http.Server (never listening) that relays each request it is given to a local HTTP service:
 * what `ptth-proxy connect 3000` serves through the gateway. WebSocket and other upgrades are
 * relayed and spliced too.
 */
export function createLocalProxy(target: URL, options: LocalProxyOptions = {}): http.Server {
  const base0 = target.protocol === 'https:' ? https : http;
  const mod = { request: reporting(base0.request, options.onReach), Agent: base0.Agent };
  const agent = new mod.Agent({ keepAlive: true, maxSockets: 256 });
  const host = target.hostname.replace(/^\[|\]$/g, '');
  const port = Number(target.port || (target.protocol === 'https:' ? 443 : 80));
  const base = target.pathname === '/' ? '' : target.pathname.replace(/\/$/, '');
  const tls = target.protocol === 'https:' ? { rejectUnauthorized: options.rejectUnauthorized ?? false } : {};

  function headersFor(req: http.IncomingMessage, upgrade?: string): string[] {
    const raw = withoutHopByHop(req.rawHeaders);
    if (options.rewriteHost) {
      for (let i = 0; i < raw.length; i += 2) if ((raw[i] as string).toLowerCase() === 'host') raw[i + 1] = target.host;
    }
    if (upgrade !== undefined) raw.push('Connection', 'Upgrade', 'Upgrade', upgrade);
    return raw;
  }

  const unreachable = (err: NodeJS.ErrnoException): string =>
    `502 Bad Gateway: ptth-proxy connect could not reach ${target.origin} (${err.code ?? err.message}).\n`;
  const server = http.createServer() as http.Server & { [LOCAL_UPSTREAM]?: LocalUpstream };
  server[LOCAL_UPSTREAM] = {
    request: mod.request,
    agent,
    host,
    port,
    base,
    rewriteHost: options.rewriteHost ? target.host : undefined,
    tls,
    unreachable,
  };
  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const headers = withBodyFraming(headersFor(req), unframedBody(req));
    const out = mod.request({
      host,
      port,
      method: req.method,
      path: base + (req.url ?? '/'),
      headers,
      setHost: false,
      agent,
      ...tls,
    });
    out.on('response', (local) => {
      res.writeHead(local.statusCode ?? 502, local.statusMessage, withoutHopByHop(local.rawHeaders));
      relay(local, res, noop);
    });
    out.on('error', (err: NodeJS.ErrnoException) => {
      if (res.headersSent) {
        res.destroy(err);
        return;
      }
      const body = unreachable(err);
      res.writeHead(502, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
    });
    relay(req, out, noop);
  });

  server.on('upgrade', (req: http.IncomingMessage, socket: Socket, head: Buffer) => {
    socket.on('error', noop);
    const out = mod.request({
      host,
      port,
      method: req.method,
      path: base + (req.url ?? '/'),
      headers: headersFor(req, req.headers.upgrade),
      setHost: false,
      agent: false,
      ...tls,
    });
    out.on('upgrade', (local: http.IncomingMessage, localSocket: Socket, localHead: Buffer) => {
      socket.write(rawHead(101, local.statusMessage, local.rawHeaders));
      if (localHead.length > 0) socket.write(localHead);
      if (head.length > 0) localSocket.write(head);
      localSocket.on('error', noop);
      splice(socket, localSocket, noop);
    });
    out.on('response', (local: http.IncomingMessage) => {
      const raw = withoutHeaders(withoutHopByHop(local.rawHeaders), 'content-length');
      socket.write(rawHead(local.statusCode ?? 502, local.statusMessage, raw, 'Connection: close\r\n'));
      pipeline(local, socket, noop);
    });
    out.on('error', (err: NodeJS.ErrnoException) => {
      const body = `502 Bad Gateway: ptth-proxy connect could not reach ${target.origin} (${err.code ?? err.message}).\n`;
      socket.end(
        `HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
      );
    });
    out.end();
  });
  server.on('close', () => agent.destroy());
  return server;
}

const TARGET_HINT = 'give a port (3000), host:port (127.0.0.1:3000) or a URL (http://localhost:3000/base)';

function checkPort(port: string, spec: string): void {
  const n = Number(port);
  if (!Number.isInteger(n) || n < 1 || n > 65535) {
    throw new RangeError(`port ${port} is out of range in "${spec}": ports run from 1 to 65535`);
  }
}

/** `3000`, `localhost:3000`, `http://127.0.0.1:3000/base` -> a URL; anything else is refused with a hint. */
export function parseTarget(spec: string): URL {
  if (/^\d+$/.test(spec)) {
    checkPort(spec, spec);
    return new URL(`http://localhost:${Number(spec)}`);
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(spec)) {
    const port = /^[a-z][a-z0-9+.-]*:\/\/(?:[^/?#@]*@)?(?:\[[^\]]*\]|[^/?#:]*):(\d+)(?:[/?#]|$)/i.exec(spec);
    if (port) checkPort(port[1] as string, spec);
    let u: URL;
    try {
      u = new URL(spec);
    } catch {
      throw new TypeError(`"${spec}" is not a valid URL: ${TARGET_HINT}`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:')
      throw new TypeError(`only http and https services can be exposed, got ${u.protocol}`);
    return u;
  }
  const hostPort = /^(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9.-]*[a-z0-9])?):(\d+)$/i.exec(spec);
  if (hostPort) {
    checkPort(hostPort[3] as string, spec);
    try {
      return new URL(`http://${spec}`);
    } catch {
      throw new TypeError(`"${spec}" is not a valid host:port: ${TARGET_HINT}`);
    }
  }
  throw new TypeError(`"${spec}" is not a port, host:port or URL: ${TARGET_HINT}`);
}
