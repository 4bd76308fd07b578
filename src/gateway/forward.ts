import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Exchange, UpgradeExchange } from '../channels/channel.js';
import { PtthError } from '../http/errors.js';
import { clientAddress, forwardRequestHeaders, withoutHeaders } from '../http/headers.js';
import { sendError, writeRawError } from '../http/respond.js';
import { checkResponseHead, type ResponseHead } from '../http/response.js';
import { noop } from '../shared/noop.js';
import { targetPath } from '../shared/target.js';
import type { PathPrefix } from './classify.js';
import { requestProto, type GatewayContext } from './context.js';
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
  // Someone follows a name: one read of a module variable per request while nobody does.
  const topic = reg !== undefined && followed() ? topicOf(ctx, reg) : undefined;
  const observed = ctx.observed.requests || topic !== undefined;
  if (!reg || via?.bare === true) {
    req.resume();
    const ex = observed ? new ObservedExchange(ctx, name, req, res, EMPTY, topic, req.url) : undefined;
    if (reg) redirectToSlash(req, res, via?.prefix ?? '');
    else {
      const err = new PtthError('PTTH_ERR_NOT_FOUND', `No app is registered under the name "${name}".`);
      if (ex) ex.fail(err);
      else sendError(res, err, req.headers.accept);
    }
    ex?.done();
    return;
  }
  const url = req.url;
  const headers = appHeaders(ctx, req, req.socket, via, undefined);
  reg.dispatch(
    observed
      ? new ObservedExchange(ctx, name, req, res, headers, topic, url)
      : new VisitorExchange(ctx, name, req, res, headers),
  );
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
 * A visitor request the gateway refuses before routing it (a rate limit, a header flood): answered
 * with `err` and `Connection: close`, and reported in `request` events and metrics like any other.
 */
export function refuseVisitor(
  ctx: GatewayContext,
  req: IncomingMessage,
  res: ServerResponse,
  name: string,
  err: PtthError,
): void {
  req.resume();
  const reg = followed() ? ctx.table.lookup(name) : undefined;
  const topic = reg === undefined ? undefined : topicOf(ctx, reg);
  if (ctx.observed.requests || topic !== undefined) {
    const ex = new ObservedExchange(ctx, name, req, res, EMPTY, topic, req.url);
    ex.fail(err, true);
    ex.done();
  } else sendError(res, err, req.headers.accept, true);
}

/** An exchange nobody observes: no timing, no counting (methods on the prototype, no closures). */
class VisitorExchange implements Exchange {
  readonly ctx: GatewayContext;
  /** The app name the visitor addressed. */
  readonly name: string;
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly headers: string[];

  constructor(ctx: GatewayContext, name: string, req: IncomingMessage, res: ServerResponse, headers: string[]) {
    this.ctx = ctx;
    this.name = name;
    this.req = req;
    this.res = res;
    this.headers = headers;
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
  ) {
    super(ctx, name, req, res, headers);
    this.#url = url ?? '/';
    this.#topic = topic;
    this.#capture = topic?.detail === true ? new Capture() : undefined;
    this.#remote = clientAddress(req.socket.remoteAddress);
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
    };
    if (this.ctx.observed.requests) this.ctx.emit('request', event);
    if (this.#topic !== undefined) this.#topic.publish(event, this.headers, res, this.#capture);
  }
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
  if (!reg) {
    writeRawError(
      socket,
      new PtthError('PTTH_ERR_NOT_FOUND', `No app is registered under the name "${name}".`),
      req.headers.accept,
    );
    return;
  }
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
  const ex: UpgradeExchange = {
    req,
    socket,
    head,
    // An upgrade cannot follow a redirect (browsers fail a WebSocket handshake answered with
    // one): `/NAME` alone reaches the app as `/`.
    headers: appHeaders(ctx, req, socket, via, req.headers.upgrade),
    fail: (err) => writeRawError(socket, err, req.headers.accept),
    check: (status, reason, headers) => checkHead(ctx, name, status, reason, headers, true),
    done: noop,
  };
  reg.upgrade(ex);
}
