import { lookup } from 'node:dns/promises';
import { Server, STATUS_CODES, type IncomingMessage } from 'node:http';
import { connect as netConnect, isIP, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { Client } from 'undici';
import { PtthError } from './errors.js';
import { withoutHeaders, withoutHopByHop } from './headers.js';
import { replayConnection } from './message.js';
import { addressAllowed, addressKind, matchTarget, type RelayPattern } from './relay-policy.js';

/**
 * The outbound half of the RelayHttp endpoint (docs/PROTOCOL.md section 10): the request a
 * browser program sent as `message/http` is parsed by llhttp, checked against its key's
 * allow-list, sent to the target over a connection opened to an address checked at connect time,
 * and its response comes back whole as `message/http`.
 */

export interface RelayLimits {
  /** Bytes of the target's response (head and body) the gateway buffers at most. */
  readonly maxResponseBytes: number;
  /** Milliseconds to resolve the target and open the connection. */
  readonly connectTimeout: number;
  /** Milliseconds from the request sent to the whole response received. */
  readonly responseTimeout: number;
  /** Largest response head llhttp accepts from the target. */
  readonly maxHeaderSize: number;
}

/** All addresses a host name resolves to (tests give one that answers what they need). */
export type Resolver = (host: string) => Promise<string[]>;

export const systemResolver: Resolver = async (host) =>
  (await lookup(host, { all: true, verbatim: true })).map((a) => a.address);

export interface RelayTarget {
  /** Host as written, lower case; an IPv6 address without brackets. */
  readonly host: string;
  readonly port: number;
  /** Port 443 is HTTPS; every other port plain HTTP. */
  readonly tls: boolean;
}

/** `HOST[:PORT]` from the endpoint's path (`/relay/HOST[:PORT]`); undefined when it is not one. */
export function parseRelayTarget(text: string): RelayTarget | undefined {
  const m = /^\[([0-9a-fA-F:.]+)\](?::(\d{1,5}))?$/.exec(text) ?? /^([A-Za-z0-9.-]+)(?::(\d{1,5}))?$/.exec(text);
  if (!m) return undefined;
  const host = (m[1] as string).toLowerCase();
  const portText = m[2];
  if (text.startsWith('[') && isIP(host) !== 6) return undefined;
  if (host.length > 253 || host.startsWith('.') || host.endsWith('.') || host.includes('..')) return undefined;
  const port = portText === undefined ? 80 : Number(portText);
  if (!(port >= 1 && port <= 65_535)) return undefined;
  return { host, port, tls: port === 443 };
}

export function targetAuthority(t: RelayTarget): string {
  const host = isIP(t.host) === 6 ? `[${t.host}]` : t.host;
  return t.port === (t.tls ? 443 : 80) ? host : `${host}:${t.port}`;
}

/** A request read out of a `message/http` envelope. */
export interface RelayRequest {
  readonly method: string;
  readonly path: string;
  /** Flat raw header list as written (hop-by-hop fields still in). */
  readonly rawHeaders: string[];
  readonly body: Buffer;
}

/**
 * Parses one complete HTTP/1.1 request with llhttp (node's HTTP server over an in-memory
 * connection that is handed the bytes). Anything llhttp refuses, a body shorter than its framing,
 * an absolute-form target, an upgrade or CONNECT, or bytes after the request (a pipeline: the
 * envelope is `message/http`, one message) is a PtthError 400.
 */
export function parseRelayRequest(bytes: Buffer, maxHeaderSize: number): Promise<RelayRequest> {
  return new Promise((resolve, reject) => {
    let settled = false;
    let seen = 0;
    const bad = (why: string): void => {
      if (settled) return;
      settled = true;
      conn.destroy();
      reject(
        new PtthError('PTTH_ERR_RELAY_BAD_MESSAGE', `The relayed request is not one valid HTTP/1.1 request: ${why}.`),
      );
    };
    // The server's answers (none are made; a 400 of its own on a parse error) go nowhere.
    const conn = replayConnection(bytes);
    const server = new Server({ maxHeaderSize, requestTimeout: 0, headersTimeout: 0, keepAliveTimeout: 0 });
    server.on('clientError', (err: NodeJS.ErrnoException) =>
      bad(err.code?.startsWith('HPE_') ? `${err.code}` : err.message),
    );
    server.on('upgrade', () => bad('an upgrade cannot be relayed'));
    server.on('connect', () => bad('CONNECT cannot be relayed'));
    server.on('request', (req: IncomingMessage) => {
      if (++seen > 1) return bad('more than one request (send one per envelope)');
      const url = req.url ?? '/';
      if (!url.startsWith('/'))
        return bad('the request target must be a path (origin-form); the host is in the relay URL');
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        if (!req.complete) return bad('the body is shorter than its framing says');
        // A second request in the same bytes is emitted after this one: wait a turn for it.
        setImmediate(() => {
          if (settled) return;
          settled = true;
          conn.destroy();
          resolve({ method: req.method ?? 'GET', path: url, rawHeaders: req.rawHeaders, body: Buffer.concat(chunks) });
        });
      });
      req.on('aborted', () => bad('the body is shorter than its framing says'));
    });
    conn.on('close', () => {
      if (seen === 0) bad('no complete request head');
    });
    server.emit('connection', conn);
  });
}

export interface RelayResponse {
  readonly status: number;
  readonly reason: string;
  /** Flat raw header list, hop-by-hop fields and framing removed. */
  readonly rawHeaders: string[];
  readonly body: Buffer;
}

/** The response as `message/http`: status line, headers, Content-Length, body. */
export function serializeRelayResponse(r: RelayResponse): Buffer {
  let head = `HTTP/1.1 ${r.status} ${r.reason.replace(/[\r\n]/g, ' ')}\r\n`;
  for (let i = 0; i < r.rawHeaders.length; i += 2) head += `${r.rawHeaders[i]}: ${r.rawHeaders[i + 1]}\r\n`;
  head += `Content-Length: ${r.body.length}\r\n\r\n`;
  return Buffer.concat([Buffer.from(head, 'latin1'), r.body]);
}

/**
 * Sends `request` to `target` when the key's patterns allow it, and reads the whole response.
 * Refusals are PtthErrors: 403 PTTH_ERR_RELAY_FORBIDDEN (by name, or by what the name resolved
 * to), 502 PTTH_ERR_RELAY_UNREACHABLE, 504 PTTH_ERR_RELAY_TIMEOUT, 502 PTTH_ERR_RELAY_TOO_LARGE.
 */
export async function relayRequest(
  target: RelayTarget,
  request: RelayRequest,
  patterns: readonly RelayPattern[],
  limits: RelayLimits,
  resolve: Resolver = systemResolver,
): Promise<RelayResponse> {
  if (!matchTarget(patterns, target.host, target.port)) {
    throw new PtthError(
      'PTTH_ERR_RELAY_FORBIDDEN',
      `${targetAuthority(target)} is not in this key's relay allow-list.`,
    );
  }
  const origin = `${target.tls ? 'https' : 'http'}://${targetAuthority(target)}`;
  const client = new Client(origin, {
    connect: (_opts, callback) => {
      openChecked(target, patterns, limits.connectTimeout, resolve).then(
        (socket) => callback(null, socket),
        (err: Error) => callback(err, null),
      );
    },
    headersTimeout: limits.responseTimeout,
    bodyTimeout: limits.responseTimeout,
    maxHeaderSize: limits.maxHeaderSize,
    maxResponseSize: limits.maxResponseBytes,
    pipelining: 1,
  });
  const headers = withoutHeaders(withoutHopByHop(request.rawHeaders), 'content-length');
  const deadline = AbortSignal.timeout(limits.connectTimeout + limits.responseTimeout);
  try {
    return await send(client, request, headers, limits, deadline);
  } finally {
    client.destroy().catch(() => {});
  }
}

async function send(
  client: Client,
  request: RelayRequest,
  headers: string[],
  limits: RelayLimits,
  signal: AbortSignal,
): Promise<RelayResponse> {
  let res: Awaited<ReturnType<Client['request']>>;
  const bodyless = request.body.length === 0 && !['POST', 'PUT', 'PATCH'].includes(request.method);
  try {
    res = await client.request({
      method: request.method as 'GET',
      path: request.path,
      headers,
      body: bodyless ? null : request.body,
      signal,
    });
  } catch (err) {
    throw outboundError(err);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > limits.maxResponseBytes) throw new PtthError('PTTH_ERR_RELAY_TOO_LARGE');
      chunks.push(chunk);
    }
  } catch (err) {
    throw outboundError(err);
  }
  return {
    status: res.statusCode,
    reason: STATUS_CODES[res.statusCode] ?? '',
    rawHeaders: withoutHeaders(withoutHopByHop(flatten(res.headers)), 'content-length'),
    body: Buffer.concat(chunks, size),
  };
}

function flatten(headers: Record<string, string | string[] | undefined>): string[] {
  const out: string[] = [];
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    if (Array.isArray(value)) for (const v of value) out.push(name, v);
    else out.push(name, value);
  }
  return out;
}

function outboundError(err: unknown): PtthError {
  if (err instanceof PtthError) return err;
  const e = err as NodeJS.ErrnoException;
  const cause = e.cause instanceof PtthError ? e.cause : undefined;
  if (cause) return cause;
  switch (e.code) {
    case 'UND_ERR_HEADERS_TIMEOUT':
    case 'UND_ERR_BODY_TIMEOUT':
    case 'UND_ERR_CONNECT_TIMEOUT':
      return new PtthError('PTTH_ERR_RELAY_TIMEOUT');
    case 'UND_ERR_RES_EXCEEDED_MAX_SIZE':
      return new PtthError('PTTH_ERR_RELAY_TOO_LARGE');
    default:
      if (e.name === 'TimeoutError' || e.name === 'AbortError') return new PtthError('PTTH_ERR_RELAY_TIMEOUT');
      return new PtthError(
        'PTTH_ERR_RELAY_UNREACHABLE',
        `The relay target could not be reached (${e.code ?? e.message}).`,
      );
  }
}

/**
 * Resolves the target and connects to the first of its addresses the patterns allow, checked
 * here, at connect time, and connected to by address: nothing resolves the name a second time
 * between the check and the connection (DNS rebinding).
 */
async function openChecked(
  target: RelayTarget,
  patterns: readonly RelayPattern[],
  timeout: number,
  resolve: Resolver,
): Promise<Socket> {
  const started = Date.now();
  let addresses: string[];
  try {
    addresses = isIP(target.host) ? [target.host] : await withTimeout(resolve(target.host), timeout);
  } catch (err) {
    if (err instanceof PtthError) throw err;
    throw new PtthError(
      'PTTH_ERR_RELAY_UNREACHABLE',
      `${target.host} does not resolve (${(err as NodeJS.ErrnoException).code ?? 'no address'}).`,
    );
  }
  const allowed = addresses.find((a) => addressAllowed(patterns, a, target.port));
  if (allowed === undefined) {
    const kinds = [...new Set(addresses.map(addressKind))].join(', ');
    throw new PtthError(
      'PTTH_ERR_RELAY_FORBIDDEN',
      `${target.host} resolves to ${kinds || 'no'} addresses, which a relay reaches only when its key lists the address itself.`,
    );
  }
  const left = Math.max(1, timeout - (Date.now() - started));
  return new Promise((ok, fail) => {
    const socket = target.tls
      ? tlsConnect({
          host: allowed,
          port: target.port,
          servername: isIP(target.host) ? '' : target.host,
          ALPNProtocols: ['http/1.1'],
        })
      : netConnect({ host: allowed, port: target.port });
    const timer = setTimeout(() => socket.destroy(new PtthError('PTTH_ERR_RELAY_TIMEOUT')), left);
    socket.once(target.tls ? 'secureConnect' : 'connect', () => {
      clearTimeout(timer);
      socket.removeListener('error', onError);
      ok(socket);
    });
    const onError = (err: Error): void => {
      clearTimeout(timer);
      fail(
        err instanceof PtthError
          ? err
          : new PtthError(
              'PTTH_ERR_RELAY_UNREACHABLE',
              `${targetAuthority(target)}: ${(err as NodeJS.ErrnoException).code ?? err.message}.`,
            ),
      );
    };
    socket.once('error', onError);
  });
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new PtthError('PTTH_ERR_RELAY_TIMEOUT')), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        ok(v);
      },
      (err: unknown) => {
        clearTimeout(timer);
        fail(err);
      },
    );
  });
}
