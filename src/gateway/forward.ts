import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Exchange, UpgradeExchange } from '../channels/channel.js';
import { PtthError } from '../http/errors.js';
import { clientAddress, forwardRequestHeaders, hopRequestHeaders, rawHeader, withoutHeaders } from '../http/headers.js';
import { sendError, writeRawError } from '../http/respond.js';
import { checkResponseHead, type ResponseHead } from '../http/response.js';
import { noop } from '../shared/noop.js';
import { targetPath } from '../shared/target.js';
import type { PathPrefix } from './classify.js';
import { requestProto, type GatewayContext, type HopCredentials } from './context.js';
import type { Registration } from '../table/registration.js';
import { Capture, followed, topicOf, type Topic } from './events.js';
import type { RequestEvent } from './eventmap.js';

/**
 * Visitors' requests: look the name up, build the header list once, and hand the exchange to the
 * registration, which picks a channel or queues. The response streams back inside the channel.
 * `via`: the path named the app (docs/PROTOCOL.md section 1).
 */
export function forwardRequest(
  ctx: GatewayContext,
  req: IncomingMessage,
  res: ServerResponse,
  name: string,
  via?: PathPrefix,
): void {
  const reg = ctx.table.lookup(name);
  if (reg === undefined) {
    // Not held here: a shared store may know it (registered on another node, or before a restart).
    fetched(ctx, req, res, name).then(
      (found) => found !== undefined && forwardTo(ctx, req, res, name, found, via),
      () => refuseVisitor(ctx, req, res, name, new PtthError('PTTH_ERR_STORE_UNAVAILABLE')),
    );
    return;
  }
  forwardTo(ctx, req, res, name, reg, via);
}

/**
 * `ctx.table.fetch(name)` for a name the table did not hold; a miss is answered 404 here. Resolves
 * undefined when the request was answered (or its visitor left meanwhile); rejects when the store
 * cannot be asked.
 */
async function fetched(
  ctx: GatewayContext,
  req: IncomingMessage,
  res: ServerResponse,
  name: string,
): Promise<Registration | undefined> {
  const reg = await ctx.table.fetch(name);
  if (res.destroyed) {
    req.resume();
    return undefined;
  }
  if (reg === undefined) refuseVisitor(ctx, req, res, name, notFound(name), false);
  return reg;
}

function notFound(name: string): PtthError {
  return new PtthError('PTTH_ERR_NOT_FOUND', `No app is registered under the name "${name}".`);
}

/** A visitor's request to a registration: `/NAME` alone (path URLs) is redirected, the rest dispatched. */
function forwardTo(
  ctx: GatewayContext,
  req: IncomingMessage,
  res: ServerResponse,
  name: string,
  reg: Registration,
  via: PathPrefix | undefined,
): void {
  // Someone follows a name: one read of a module variable per request while nobody does.
  const topic = followed() ? topicOf(ctx, reg) : undefined;
  const observed = ctx.observed.requests || topic !== undefined;
  if (via?.bare === true) {
    req.resume();
    const ex = observed ? new ObservedExchange(ctx, name, req, res, EMPTY, topic, req.url, undefined) : undefined;
    redirectToSlash(req, res, via.prefix);
    ex?.done();
    return;
  }
  const url = req.url;
  dispatchTo(ctx, req, res, reg, appHeaders(ctx, req, req.socket, via, undefined), url, topic, undefined);
}

/** The exchange of a request to `reg`, observed (timed, counted, published) only when someone looks. */
function dispatchTo(
  ctx: GatewayContext,
  req: IncomingMessage,
  res: ServerResponse,
  reg: Registration,
  headers: string[],
  url: string | undefined,
  topic: Topic | undefined,
  hops: number | undefined,
): void {
  const name = reg.name;
  reg.dispatch(
    ctx.observed.requests || topic !== undefined
      ? new ObservedExchange(ctx, name, req, res, headers, topic, url, hops)
      : new VisitorExchange(ctx, name, req, res, headers, hops),
  );
}

/**
 * A request from another gateway node (the internal hop, docs/PROTOCOL.md section 12): its
 * credentials are checked (403 PTTH_ERR_HOP_FORBIDDEN when they do not hold, or when this gateway
 * is no node of a cluster) and it goes to the registration they name, with the headers the sending
 * node built for the app (forwarding headers are not added twice) and its count of hops.
 */
export function forwardHop(ctx: GatewayContext, req: IncomingMessage, res: ServerResponse): void {
  const credentials = hopCredentials(ctx, req);
  if (credentials === undefined) {
    refuseVisitor(ctx, req, res, '', new PtthError('PTTH_ERR_HOP_FORBIDDEN'), true);
    return;
  }
  const { name, hops } = credentials;
  const reg = ctx.table.lookup(name);
  if (reg !== undefined) {
    hopTo(ctx, req, res, reg, hops);
    return;
  }
  fetched(ctx, req, res, name).then(
    (found) => found !== undefined && hopTo(ctx, req, res, found, hops),
    () => refuseVisitor(ctx, req, res, name, new PtthError('PTTH_ERR_STORE_UNAVAILABLE')),
  );
}

/** The request's X-Ptth-Hop credentials, checked; undefined when absent, bad, or this is no cluster node. */
export function hopCredentials(ctx: GatewayContext, req: IncomingMessage): HopCredentials | undefined {
  const value = req.headers['x-ptth-hop'];
  return typeof value === 'string' && ctx.cluster !== undefined ? ctx.cluster.verifyHop(value) : undefined;
}

function hopTo(ctx: GatewayContext, req: IncomingMessage, res: ServerResponse, reg: Registration, hops: number): void {
  const topic = followed() ? topicOf(ctx, reg) : undefined;
  dispatchTo(ctx, req, res, reg, hopRequestHeaders(req.rawHeaders, undefined), req.url, topic, hops);
}

/**
 * The header list for the app and, with path URLs on, the one place a path-routed request loses
 * its `/NAME` prefix (docs/PROTOCOL.md section 1): every channel, and a visitor's upgrade, reads
 * the target from `req.url`, so each transport sees the same path. The app learns the prefix from
 * `X-Forwarded-Prefix`, the convention Express, Spring and Traefik follow; a visitor's own
 * `X-Forwarded-Prefix` is dropped whenever path URLs are on, since there the gateway asserts it.
 */
function appHeaders(
  ctx: GatewayContext,
  req: IncomingMessage,
  socket: Socket,
  via: PathPrefix | undefined,
  upgrade: string | undefined,
): string[] {
  let headers = forwardRequestHeaders(req.rawHeaders, {
    clientAddress: clientAddress(socket.remoteAddress),
    clientPort: socket.remotePort ?? 0,
    proto: requestProto(req),
    upgrade,
  });
  if (ctx.settings.urls === 'host') return headers;
  if (req.headers['x-forwarded-prefix'] !== undefined) headers = withoutHeaders(headers, 'x-forwarded-prefix');
  if (via !== undefined) {
    headers.push('X-Forwarded-Prefix', via.prefix);
    req.url = stripPrefix(req.url ?? '/', via.prefix);
  }
  return headers;
}

/** `/name/a?b` without `/name`: `/a?b`; `/name?b` (an upgrade to the bare prefix): `/?b`. */
export function stripPrefix(url: string, prefix: string): string {
  const rest = url.slice(prefix.length);
  return rest.startsWith('/') ? rest : `/${rest}`;
}

/**
 * `/NAME` with no slash after it: 308 to `/NAME/`, query kept. Served as the app's `/`, the page's
 * relative links (`href="style.css"`) would resolve against `/` and leave the app's prefix; a 308
 * keeps the method and body (RFC 9110 section 15.4.9), so a POST survives it.
 */
function redirectToSlash(req: IncomingMessage, res: ServerResponse, prefix: string): void {
  const location = `${prefix}/${(req.url ?? prefix).slice(prefix.length)}`;
  const body = `308 Permanent Redirect: the app is at ${location}\n`;
  res.writeHead(308, {
    Location: location,
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    'X-Content-Type-Options': 'nosniff',
  });
  res.end(req.method === 'HEAD' ? undefined : body);
}

/**
 * A visitor request the gateway refuses before routing it (a rate limit, a header flood, a name
 * nobody holds): answered with `err` (and `Connection: close` unless `close` is false), and
 * reported in `request` events and metrics like any other.
 */
export function refuseVisitor(
  ctx: GatewayContext,
  req: IncomingMessage,
  res: ServerResponse,
  name: string,
  err: PtthError,
  close = true,
): void {
  req.resume();
  const reg = followed() ? ctx.table.lookup(name) : undefined;
  const topic = reg === undefined ? undefined : topicOf(ctx, reg);
  if (ctx.observed.requests || topic !== undefined) {
    const ex = new ObservedExchange(ctx, name, req, res, EMPTY, topic, req.url, undefined);
    ex.fail(err, close);
    ex.done();
  } else sendError(res, err, req.headers.accept, close);
}

/** An exchange nobody observes: no timing, no counting (methods on the prototype, no closures). */
class VisitorExchange implements Exchange {
  readonly ctx: GatewayContext;
  /** The app name the visitor addressed. */
  readonly name: string;
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly headers: string[];
  /** Gateway nodes crossed (the internal hop); undefined for a visitor's own request. */
  readonly hops: number | undefined;

  constructor(
    ctx: GatewayContext,
    name: string,
    req: IncomingMessage,
    res: ServerResponse,
    headers: string[],
    hops: number | undefined,
  ) {
    this.ctx = ctx;
    this.name = name;
    this.req = req;
    this.res = res;
    this.headers = headers;
    this.hops = hops;
  }

  /** `close`: ask the visitor to close the connection after the answer. */
  fail(err: PtthError, close = false): void {
    if (this.res.headersSent) this.res.destroy(err);
    else sendError(this.res, err, this.req.headers.accept, close);
  }

  respond(status: unknown, reason: unknown, headers: readonly unknown[]): PtthError | undefined {
    const head = checkHead(this.ctx, this.name, status, reason, headers, false);
    if (head instanceof PtthError) {
      this.fail(head);
      return head;
    }
    try {
      this.res.writeHead(head.status, head.reason, head.headers);
    } catch (err) {
      // Nothing an app sends gets here (it was checked above), but the error path must hold anyway.
      const refused = new PtthError('PTTH_ERR_BAD_RESPONSE', `The app's response could not be relayed: ${String(err)}`);
      this.fail(refused);
      return refused;
    }
    return undefined;
  }

  done(): void {}
}

/**
 * An app's response head checked against the shared rules (README "Security"); the cookie guard's
 * drops are reported as `cookie-dropped`.
 */
function checkHead(
  ctx: GatewayContext,
  name: string,
  status: unknown,
  reason: unknown,
  headers: readonly unknown[],
  upgrade: boolean,
): ResponseHead | PtthError {
  const head = checkResponseHead(status, reason, headers, ctx.settings.cookieDomains, upgrade);
  if (!(head instanceof PtthError) && head.cookiesDropped > 0)
    ctx.emit('cookie-dropped', { name, count: head.cookiesDropped });
  return head;
}

/** Headers of an exchange that never goes down a channel (404). */
const EMPTY: string[] = [];

type Push = (chunk: unknown, encoding?: BufferEncoding) => boolean;
type Write = (chunk: unknown, encoding?: unknown, cb?: unknown) => boolean;
type End = (chunk?: unknown, encoding?: unknown, cb?: unknown) => ServerResponse;
/** The exchange a request or response being counted belongs to. */
const EXCHANGE = Symbol('ptth.exchange');
interface Counted {
  [EXCHANGE]: ObservedExchange;
}

function byteLength(chunk: unknown, encoding?: unknown): number {
  if (typeof chunk === 'string')
    return Buffer.byteLength(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8');
  return chunk instanceof Uint8Array ? chunk.byteLength : 0;
}

/**
 * An exchange someone listens to (`request` events, metrics, the name's event stream): timed, bytes
 * counted, error code kept; the start of both bodies copied while the name has a detail subscriber.
 */
class ObservedExchange extends VisitorExchange {
  readonly #started = performance.now();
  readonly #remote: string;
  /** The target as the visitor sent it (a path-routed one reaches the app without its prefix). */
  readonly #url: string;
  #reported = false;
  #bytesIn = 0;
  #bytesOut = 0;
  #error: string | undefined = undefined;
  /** The name's subscribers when the exchange began (events.ts). */
  readonly #topic: Topic | undefined;
  readonly #capture: Capture | undefined;
  readonly #push: Push;
  readonly #write: Write;
  readonly #end: End;

  /*
   * Body bytes are counted where they pass: node's HTTP parser hands each body chunk to the
   * visitor's request with `push`, and every relay (pipe) or gateway answer writes the response
   * with `write` and `end`. Wrapping those three on the instance counts bytes without listening to
   * 'data' (which would switch the request to flowing mode and lose a queued request's body) and
   * without a stream in the path. The wrappers are shared (no closure per request); the instance
   * only gains a reference to its exchange.
   */
  static #countPush(this: IncomingMessage & Counted, chunk: unknown, encoding?: BufferEncoding): boolean {
    const ex = this[EXCHANGE];
    ex.#bytesIn += byteLength(chunk, encoding);
    if (ex.#capture !== undefined) ex.#capture.request(chunk, encoding);
    return ex.#push.call(this, chunk, encoding);
  }

  static #countWrite(this: ServerResponse & Counted, chunk: unknown, encoding?: unknown, cb?: unknown): boolean {
    const ex = this[EXCHANGE];
    ex.#bytesOut += byteLength(chunk, encoding);
    if (ex.#capture !== undefined) ex.#capture.response(chunk, encoding);
    return ex.#write.call(this, chunk, encoding, cb);
  }

  static #countEnd(this: ServerResponse & Counted, chunk?: unknown, encoding?: unknown, cb?: unknown): ServerResponse {
    const ex = this[EXCHANGE];
    if (typeof chunk !== 'function') {
      ex.#bytesOut += byteLength(chunk, encoding);
      if (ex.#capture !== undefined) ex.#capture.response(chunk, encoding);
    }
    return ex.#end.call(this, chunk, encoding, cb);
  }

  constructor(
    ctx: GatewayContext,
    name: string,
    req: IncomingMessage,
    res: ServerResponse,
    headers: string[],
    topic: Topic | undefined,
    url: string | undefined,
    hops: number | undefined,
  ) {
    super(ctx, name, req, res, headers, hops);
    this.#url = url ?? '/';
    this.#topic = topic;
    this.#capture = topic?.detail === true ? new Capture() : undefined;
    // Over the hop the connection is the sending node's: the visitor is the last X-Forwarded-For.
    this.#remote = hops === undefined ? clientAddress(req.socket.remoteAddress) : lastForwardedFor(headers);
    this.#push = req.push as Push;
    this.#write = res.write as Write;
    this.#end = res.end as End;
    // Bodyless requests (most) never push body bytes; HEAD responses never send theirs.
    if (req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined) {
      (req as IncomingMessage & Counted)[EXCHANGE] = this;
      req.push = ObservedExchange.#countPush as IncomingMessage['push'];
    }
    if (req.method !== 'HEAD') {
      (res as ServerResponse & Counted)[EXCHANGE] = this;
      res.write = ObservedExchange.#countWrite as ServerResponse['write'];
      res.end = ObservedExchange.#countEnd as ServerResponse['end'];
    }
  }

  override fail(err: PtthError, close = false): void {
    this.#error = err.code;
    super.fail(err, close);
  }

  override done(): void {
    // Exchange.done is called once; the guard keeps a double call from counting twice in metrics.
    if (this.#reported) return;
    this.#reported = true;
    const { req, res } = this;
    const url = this.#url;
    const event: RequestEvent = {
      name: this.name,
      method: req.method ?? 'GET',
      url,
      path: targetPath(url),
      status: res.headersSent ? res.statusCode : 0,
      ms: performance.now() - this.#started,
      bytesIn: this.#bytesIn,
      bytesOut: this.#bytesOut,
      remote: this.#remote,
      error: this.#error,
      hops: this.hops,
    };
    if (this.ctx.observed.requests) this.ctx.emit('request', event);
    if (this.#topic !== undefined) this.#topic.publish(event, this.headers, res, this.#capture);
  }
}

/** The visitor's address a sending node put last in X-Forwarded-For ('' when there is none). */
function lastForwardedFor(headers: readonly string[]): string {
  const xff = rawHeader(headers, 'x-forwarded-for');
  if (xff === undefined) return '';
  return xff.slice(xff.lastIndexOf(',') + 1).trim();
}

/** Visitors' upgrade requests (WebSocket and others): spliced to the app after its 101. `via`: the path named the app. */
export function forwardUpgrade(
  ctx: GatewayContext,
  req: IncomingMessage,
  socket: Socket,
  head: Buffer,
  name: string,
  via?: PathPrefix,
): void {
  socket.on('error', noop);
  const reg = ctx.table.lookup(name);
  if (reg !== undefined) upgradeTo(ctx, req, socket, head, reg, upgradeHeaders(ctx, req, socket, via), undefined);
  else
    fetchedUpgrade(ctx, req, socket, name).then(
      (found) =>
        found !== undefined &&
        upgradeTo(ctx, req, socket, head, found, upgradeHeaders(ctx, req, socket, via), undefined),
      () => writeRawError(socket, new PtthError('PTTH_ERR_STORE_UNAVAILABLE'), req.headers.accept),
    );
}

function upgradeHeaders(
  ctx: GatewayContext,
  req: IncomingMessage,
  socket: Socket,
  via: PathPrefix | undefined,
): string[] {
  // An upgrade cannot follow a redirect (browsers fail a WebSocket handshake answered with
  // one): `/NAME` alone reaches the app as `/`.
  return appHeaders(ctx, req, socket, via, req.headers.upgrade);
}

/** `ctx.table.fetch(name)` for an upgrade to a name the table did not hold: a miss is answered 404. */
async function fetchedUpgrade(
  ctx: GatewayContext,
  req: IncomingMessage,
  socket: Socket,
  name: string,
): Promise<Registration | undefined> {
  const reg = await ctx.table.fetch(name);
  if (socket.destroyed) return undefined;
  if (reg === undefined) writeRawError(socket, notFound(name), req.headers.accept);
  return reg;
}

/**
 * An upgrade from another gateway node (the internal hop): checked and routed as `forwardHop`
 * does; refusals are raw, as for a visitor's upgrade.
 */
export function forwardHopUpgrade(ctx: GatewayContext, req: IncomingMessage, socket: Socket, head: Buffer): void {
  socket.on('error', noop);
  const credentials = hopCredentials(ctx, req);
  if (credentials === undefined) {
    writeRawError(socket, new PtthError('PTTH_ERR_HOP_FORBIDDEN'), req.headers.accept);
    return;
  }
  const { name, hops } = credentials;
  const headers = hopRequestHeaders(req.rawHeaders, req.headers.upgrade);
  const reg = ctx.table.lookup(name);
  if (reg !== undefined) upgradeTo(ctx, req, socket, head, reg, headers, hops);
  else
    fetchedUpgrade(ctx, req, socket, name).then(
      (found) => found !== undefined && upgradeTo(ctx, req, socket, head, found, headers, hops),
      () => writeRawError(socket, new PtthError('PTTH_ERR_STORE_UNAVAILABLE'), req.headers.accept),
    );
}

function upgradeTo(
  ctx: GatewayContext,
  req: IncomingMessage,
  socket: Socket,
  head: Buffer,
  reg: Registration,
  headers: string[],
  hops: number | undefined,
): void {
  if (req.httpVersionMajor !== 1 || req.httpVersionMinor < 1) {
    writeRawError(socket, new PtthError('PTTH_ERR_HTTP10_UPGRADE'), req.headers.accept);
    return;
  }
  // llhttp stops at the head of an upgrade request: a body would reach the app as the first bytes
  // of the new protocol, or, when the app declines, as the start of the channel's next request
  // (the next visitor's bytes read as this body). WebSocket handshakes never have one (RFC 6455
  // section 4.1), so a declared body is refused rather than framed.
  const length = req.headers['content-length'];
  if (req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0')) {
    writeRawError(socket, new PtthError('PTTH_ERR_UPGRADE_BODY'), req.headers.accept);
    return;
  }
  const name = reg.name;
  const ex: UpgradeExchange = {
    req,
    socket,
    head,
    headers,
    fail: (err) => writeRawError(socket, err, req.headers.accept),
    check: (status, reason, headers) => checkHead(ctx, name, status, reason, headers, true),
    done: noop,
    hops,
  };
  reg.upgrade(ex);
}
