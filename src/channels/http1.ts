import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { Client, type Dispatcher } from 'undici';
import { PtthError } from '../http/errors.js';
import { clientAddress, hasToken, headerStrings, rawHeader, withoutHeaders } from '../http/headers.js';
import { noop } from '../shared/noop.js';
import { leaveOnEnd, rawHead, splice } from '../http/relay.js';
import { channelId, type Channel, type ChannelEvents, type Exchange, type UpgradeExchange } from './channel.js';

export interface Http1ChannelOptions {
  /** Milliseconds from the end of the request body to the app's response head (504 past it). */
  readonly responseTimeout: number;
}

/**
 * The longest delay a Node timer takes (about 24.8 days). undici's keep-alive timer cannot be
 * switched off, only set: every source of its value (its default, its maximum, and an app's
 * `Keep-Alive: timeout=N` hint minus the threshold) is pinned here, so an idle channel is never
 * closed by it short of that. A hint below the threshold would otherwise make undici close the
 * connection after the response (client-h1.js, onHeadersComplete).
 */
const NEVER = 2 ** 31 - 1;

/** The error undici's connector reports once the channel's one socket is gone. */
class ChannelGoneError extends Error {
  readonly code = 'PTTH_CHANNEL_GONE';
  constructor() {
    super('the reversed connection is closed');
  }
}

/** RFC 9110 section 9.2.2: methods a client may send again after a connection failed. */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/** undici's codes for an answer that is not valid HTTP/1.1 (llhttp's own codes start with HPE_). */
const BAD_ANSWER = new Set([
  'UND_ERR_HEADERS_OVERFLOW',
  'UND_ERR_RES_CONTENT_LENGTH_MISMATCH',
  'UND_ERR_RES_EXCEEDED_MAX_SIZE',
]);

function badAnswer(err: Error & { code?: unknown }): boolean {
  // llhttp's errors (HTTPParserError) carry no code for some kinds (an invalid status line).
  if (err.name === 'HTTPParserError') return true;
  const code = err.code;
  if (typeof code !== 'string') return false;
  if (code.startsWith('HPE_') || BAD_ANSWER.has(code)) return true;
  // undici's SocketError for a head it refuses after llhttp parsed it (an unexpected 1xx or 101).
  return code === 'UND_ERR_SOCKET' && (err.message === 'bad response' || err.message === 'bad upgrade');
}

/** `Connection: close` among an answer's raw headers. */
function saysClose(raw: readonly string[]): boolean {
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    if (name.length === 10 && name.toLowerCase() === 'connection' && hasToken(raw[i + 1], 'close')) return true;
  }
  return false;
}

/**
 * A reversed HTTP/1.1 connection (PTTH/1.0): the gateway is the client, the app the server. The
 * client is undici's `Client` over the one reversed socket, handed to it through `connect`; each
 * request is one `H1Exchange`, which is undici's handler for it and owns its lifecycle.
 */
export class Http1Channel implements Channel {
  readonly id = channelId();
  readonly transport = 'http1' as const;
  readonly remote: string;
  readonly openedAt = Date.now();
  readonly upgradable = true;
  events: ChannelEvents | undefined;
  /** @internal */ readonly socket: Socket;
  /** @internal */ readonly options: Http1ChannelOptions;
  #client: Client | undefined;
  /** The socket until undici takes it; undefined after. */
  #handoff: Socket | undefined;
  /** @internal */ activeCount = 0;
  #served = 0;
  #closed = false;
  /** @internal False once the app said it will close the connection after the current response. */
  reusable = true;

  constructor(socket: Socket, options: Http1ChannelOptions) {
    this.socket = socket;
    this.#handoff = socket;
    this.options = options;
    // One form everywhere (logs, status page, metrics): `127.0.0.1`, not `::ffff:127.0.0.1`.
    this.remote = `${clientAddress(socket.remoteAddress) || '?'}:${socket.remotePort ?? 0}`;
    socket.setNoDelay(true);
    // TCP keepalive probes find dead peers on idle channels without closing live ones.
    socket.setKeepAlive(true, 30_000);
    socket.setTimeout(0);
    socket.on('close', this.#onClose);
    socket.on('error', noop);
    // node:http servers allow half-open sockets: the app's FIN alone would leave this channel open.
    socket.on('end', () => socket.end());
    // docs/PROTOCOL.md section 2: bytes from the app before the first reversed request are a protocol error.
    socket.on('data', this.#onEarlyData);
    // The claim may have paused the socket while reading its body; the channel must see EOF and early data.
    socket.resume();
  }

  get active(): number {
    return this.activeCount;
  }
  get served(): number {
    return this.#served;
  }
  get available(): boolean {
    // destroyed: the channel gave up on its socket and its 'close' event has not run yet.
    return !this.#closed && this.reusable && this.activeCount === 0 && !this.socket.destroyed;
  }
  get closed(): boolean {
    return this.#closed;
  }

  #onEarlyData = (): void => {
    this.socket.destroy();
  };

  #onClose = (): void => {
    if (this.#closed) return;
    this.#closed = true;
    this.#client?.destroy(noop);
    this.events?.closed(this);
  };

  /**
   * undici asks for a connection on the first request, and again whenever it has a request and
   * no socket (after the one it had closed): the first time it gets the reversed socket, later an
   * error, which fails the waiting request. The callback runs on a later tick: undici calls
   * `connect` from inside its dispatch loop, and an immediate callback leaves the client stuck.
   */
  #connect = (_opts: unknown, cb: (err: Error | null, socket: Socket | null) => void): void => {
    const socket = this.#handoff;
    this.#handoff = undefined;
    if (!socket || socket.destroyed) process.nextTick(cb, new ChannelGoneError(), null);
    else process.nextTick(cb, null, socket);
  };

  #start(): Client {
    if (this.#client) return this.#client;
    // From here on undici reads the socket: bytes it did not ask for are its parser's to refuse.
    this.socket.removeListener('data', this.#onEarlyData);
    this.#client = new Client('http://ptth.invalid', {
      connect: this.#connect as unknown as NonNullable<Client.Options['connect']>,
      pipelining: 1,
      // The gateway's own timers (responseTimeout, the upload stall watch) govern an exchange.
      headersTimeout: 0,
      bodyTimeout: 0,
      keepAliveTimeout: NEVER,
      keepAliveMaxTimeout: NEVER,
      keepAliveTimeoutThreshold: -NEVER,
      strictContentLength: true,
    });
    return this.#client;
  }

  close(): void {
    this.socket.destroy();
  }

  /** @internal An exchange is over (not handed back): the channel may take the next one. */
  finished(): void {
    this.activeCount--;
    this.#served++;
    if (this.available) this.events?.available(this);
  }

  /** @internal The channel now carries the visitor's protocol: it leaves the pool. */
  consumed(): void {
    this.#closed = true;
    this.socket.removeListener('close', this.#onClose);
    this.#client?.destroy(noop);
    this.events?.closed(this);
  }

  dispatch(ex: Exchange): void {
    const client = this.#start();
    this.activeCount++;
    const x = new H1Exchange(this, ex);
    const { req } = ex;
    let headers = ex.headers;
    // The gateway's server has answered the visitor's `Expect: 100-continue` itself; passed on, it
    // would draw a 100 from the app, which undici refuses as a response.
    if (req.headers.expect !== undefined) headers = withoutHeaders(headers, 'expect');
    client.dispatch(
      {
        method: req.method as Dispatcher.HttpMethod,
        path: req.url as string,
        headers,
        // undici frames it: Content-Length as declared, or chunked when the length is not declared
        // (whatever the method, RFC 9112 section 6.1), so a body is never sent raw.
        body: x.hasBody ? req : null,
        // Keep the connection whatever the method: undici would close it after a HEAD, or after a
        // body on a GET, and a channel is not cheap to replace.
        reset: false,
      },
      x as unknown as Dispatcher.DispatchHandler,
    );
    if (!x.hasBody && !x.done) req.resume();
  }

  upgrade(ex: UpgradeExchange): void {
    const client = this.#start();
    this.activeCount++;
    const x = new H1Upgrade(this, ex);
    client.dispatch(
      {
        method: ex.req.method as Dispatcher.HttpMethod,
        path: ex.req.url as string,
        // undici writes `Connection: upgrade` and `Upgrade` itself.
        headers: withoutHeaders(ex.headers, 'connection', 'upgrade'),
        upgrade: String(ex.req.headers.upgrade ?? ''),
        // A refusal read to its end leaves the connection between messages, ready for the next.
        reset: false,
      },
      x as unknown as Dispatcher.DispatchHandler,
    );
  }
}

/**
 * One visitor request down a channel, from dispatch to its end: undici's handler for it (the
 * legacy callbacks, which undici calls directly) and the one owner of its state and timers.
 * Exactly one ending: `finish` (after an answer, or a failure reported through `fail`; `ex.done`
 * runs and the channel may take the next request), or `handBack` (the request is retried elsewhere).
 */
class H1Exchange {
  readonly channel: Http1Channel;
  readonly ex: Exchange;
  readonly res: ServerResponse;
  readonly hasBody: boolean;
  /** The socket's bytesRead when the request went down: a response byte moves it. */
  readonly readBefore: number;
  /** Sent again on another channel if this one closes before any answer (see onError). */
  readonly replayable: boolean;
  done = false;
  responded = false;
  /** The whole request (head and body) is down the channel. */
  sent = false;
  timer: NodeJS.Timeout | undefined = undefined;
  /** Resumes undici's parser after this exchange paused it (see `resume`). */
  resumeParser: (() => void) | undefined = undefined;
  /** Paused for the visitor to drain. */
  waitDrain = false;
  /** Paused until the request body is down (see onData). */
  waitUpload = false;
  stallTimer: NodeJS.Timeout | undefined = undefined;
  onUploadPause: (() => void) | undefined = undefined;
  onUploadDrain: (() => void) | undefined = undefined;

  constructor(channel: Http1Channel, ex: Exchange) {
    this.channel = channel;
    this.ex = ex;
    this.res = ex.res;
    const h = ex.req.headers;
    const length = h['content-length'];
    this.hasBody = h['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
    this.readBefore = channel.socket.bytesRead;
    this.replayable = !this.hasBody && channel.served > 0 && IDEMPOTENT.has(ex.req.method as string);
    ex.res.on('close', this.onVisitorClose);
    if (this.hasBody) this.watchUpload();
  }

  // --- undici's handler ---------------------------------------------------------------------

  onConnect(): void {}

  onResponseStarted(): void {}

  onBodySent(): void {}

  /** The whole request is down: the response timer starts. */
  onRequestSent(): void {
    this.sent = true;
    this.unwatchUpload();
    if (this.done) return;
    if (!this.responded) this.timer = setTimeout(exchangeTimeout, this.channel.options.responseTimeout, this);
    else if (this.waitUpload) {
      this.waitUpload = false;
      // undici marks the writing over only after this returns.
      process.nextTick(resumeExchange, this);
    }
  }

  onHeaders(status: number, raw: Buffer[], resume: () => void, reason: string): boolean {
    if (this.done) return false;
    if (status < 200) {
      if (status < 100) {
        this.fail(new PtthError('PTTH_ERR_BAD_RESPONSE', `The app answered with status ${status}.`));
        return false;
      }
      if (status !== 101) return true; // interim answers (102, 103) are not relayed
      // A 101 llhttp did not take for an upgrade: the app broke the exchange either way.
      this.fail(
        new PtthError(
          'PTTH_ERR_BAD_RESPONSE',
          'The app answered 101 Switching Protocols to a request that asked for no upgrade.',
        ),
      );
      return false;
    }
    this.responded = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const headers = headerStrings(raw);
    // `Connection: close`: the app ends this channel after this response.
    if (saysClose(headers)) this.channel.reusable = false;
    if (this.ex.respond(status, reason, headers)) {
      // The rest of this response cannot be trusted to be framed as undici read it: the
      // connection carries nothing more (the app opens a fresh one).
      this.closeChannel();
      this.finish();
      return false;
    }
    if ((status === 204 || status === 304) && declaresLength(headers)) {
      // Content-Length on a 204 or 304 describes no body (RFC 9110 sections 8.6, 15.4.5), but undici
      // fails such a response at its end for the length it did not read. The visitor's answer is
      // complete now (without the field); the channel is closed rather than left to undici.
      this.channel.reusable = false;
      this.res.end();
      this.finish();
      this.closeChannel();
      return false;
    }
    this.resumeParser = resume;
    if (!this.sent && this.hasBody && noBodyFollows(status, headers, this.ex.req.method)) {
      // An answer before the end of the upload: undici would close the connection at the end of
      // the response while the body is still going down. The end is held until the body is sent.
      this.res.flushHeaders();
      this.waitUpload = true;
      return false;
    }
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (this.done) return false;
    const more = this.res.write(chunk);
    if (!more) {
      this.waitDrain = true;
      (this.res as ServerResponse & Drained)[EXCHANGE] = this;
      this.res.once('drain', visitorDrained);
    }
    // While the upload goes on, the response is held after each chunk: its end must wait for the
    // body (see onHeaders), and a chunk cannot tell whether it is the last one.
    if (!this.sent) this.waitUpload = true;
    return more && !this.waitUpload;
  }

  onComplete(): void {
    if (this.done) return;
    this.res.end();
    this.finish();
  }

  onError(err: Error & { code?: unknown }): void {
    if (this.done) return;
    const { ex } = this;
    if (this.responded) {
      // After the head the visitor's connection is closed: the response cannot be completed.
      this.res.destroy();
      this.closeChannel();
      this.finish();
      return;
    }
    if (ex.req.destroyed && !ex.req.complete) {
      // The visitor's upload failed (they left): the channel is mid-message.
      this.closeChannel();
      this.finish();
      return;
    }
    if (err.code === 'UND_ERR_INVALID_ARG') {
      // undici refused the header list or path; nothing was written to the channel.
      ex.fail(new PtthError('PTTH_ERR_BAD_PARAMS', `The request could not be forwarded: ${err.message}`));
      this.finish();
      return;
    }
    if (badAnswer(err)) {
      ex.fail(new PtthError('PTTH_ERR_BAD_RESPONSE', `The app sent an invalid response (${String(err.code)}).`));
      this.closeChannel();
      this.finish();
      return;
    }
    // The channel closed under the request. On a channel that had already served requests this is
    // the race every HTTP client meets on a reused connection (the app closed it as idle while the
    // request was on its way): the request is replayed once if it can be (idempotent, no body) and
    // nothing of an answer came (docs/PROTOCOL.md section 3.3). On a fresh channel it is the app
    // failing, and the visitor learns so.
    this.closeChannel();
    if (ex.retry && this.replayable && this.channel.socket.bytesRead === this.readBefore) {
      this.handBack();
      return;
    }
    ex.fail(new PtthError('PTTH_ERR_CHANNEL_LOST'));
    this.finish();
  }

  // --- the exchange's own events -------------------------------------------------------------

  onTimeout(): void {
    this.timer = undefined;
    this.fail(new PtthError('PTTH_ERR_APP_TIMEOUT'));
  }

  // The one closure every exchange needs (a listener on the visitor's response).
  onVisitorClose = (): void => {
    // The visitor left before the response finished: the channel is mid-message.
    if (this.done || this.res.writableFinished) return;
    this.closeChannel();
    this.finish();
  };

  onVisitorDrain(): void {
    this.waitDrain = false;
    this.resume();
  }

  resume(): void {
    if (this.done || this.waitDrain || this.waitUpload) return;
    this.resumeParser?.();
  }

  /**
   * The upload stall watch: undici pauses the visitor's body when the socket refuses more and
   * resumes it on 'drain'. A pause that no drain ends within responseTimeout is an app that
   * stopped reading (the response timer only starts once the body is sent).
   */
  watchUpload(): void {
    this.onUploadPause = () => {
      if (this.stallTimer || !this.channel.socket.writableNeedDrain) return;
      this.stallTimer = setTimeout(exchangeStall, this.channel.options.responseTimeout, this);
    };
    this.onUploadDrain = () => {
      if (this.stallTimer) clearTimeout(this.stallTimer);
      this.stallTimer = undefined;
    };
    this.ex.req.on('pause', this.onUploadPause);
    this.channel.socket.on('drain', this.onUploadDrain);
  }

  onStall(): void {
    this.stallTimer = undefined;
    if (this.responded) {
      // Mid-message either way: the connection cannot carry another request.
      this.closeChannel();
      return;
    }
    this.fail(new PtthError('PTTH_ERR_APP_TIMEOUT', 'The app stopped reading the request body.'));
  }

  // --- endings ---------------------------------------------------------------------------------

  /** Reports `err` to the visitor and closes the channel (its framing is in doubt). */
  fail(err: PtthError): void {
    if (this.done) return;
    this.ex.fail(err);
    this.closeChannel();
    this.finish();
  }

  closeChannel(): void {
    this.channel.socket.destroy();
  }

  #end(): void {
    this.done = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.res.removeListener('close', this.onVisitorClose);
    this.unwatchUpload();
  }

  unwatchUpload(): void {
    if (!this.onUploadPause || !this.onUploadDrain) return;
    this.onUploadDrain();
    this.ex.req.removeListener('pause', this.onUploadPause);
    this.channel.socket.removeListener('drain', this.onUploadDrain);
    this.onUploadPause = this.onUploadDrain = undefined;
  }

  finish(): void {
    if (this.done) return;
    this.#end();
    this.ex.done();
    this.channel.finished();
  }

  /** Hands the request back to its registration (retried once on another channel or queued). */
  handBack(): void {
    this.#end();
    this.channel.activeCount--;
    const retry = this.ex.retry as (refusedBy: Channel) => void;
    retry(this.channel);
  }
}

/** A Content-Length other than 0 among an answer's raw headers. */
function declaresLength(headers: readonly string[]): boolean {
  const length = rawHeader(headers, 'content-length');
  return length !== undefined && length.trim() !== '0';
}

/**
 * Where a visitor's response points at the exchange whose parser waits for its 'drain', so that
 * one listener function (visitorDrained) serves every pause: no closure per pause.
 */
const EXCHANGE = Symbol('ptth.h1exchange');
interface Drained {
  [EXCHANGE]?: H1Exchange;
}
function visitorDrained(this: ServerResponse & Drained): void {
  this[EXCHANGE]?.onVisitorDrain();
}

function exchangeTimeout(x: H1Exchange): void {
  x.onTimeout();
}
function exchangeStall(x: H1Exchange): void {
  x.onStall();
}
function resumeExchange(x: H1Exchange): void {
  x.resume();
}

/** Whether a response's head is all of it (no body follows), per RFC 9112 section 6.3. */
function noBodyFollows(status: number, headers: readonly string[], method: string | undefined): boolean {
  if (method === 'HEAD' || status === 204 || status === 304) return true;
  return rawHeader(headers, 'content-length')?.trim() === '0';
}

/**
 * A visitor's upgrade request down a channel: spliced to the app after its 101, or the app's
 * refusal relayed and the visitor's connection closed. `finish` (and so `ex.done`) runs exactly
 * once, on every path.
 */
class H1Upgrade {
  readonly channel: Http1Channel;
  readonly ex: UpgradeExchange;
  readonly visitor: Duplex;
  done = false;
  timer: NodeJS.Timeout | undefined;
  resumeParser: (() => void) | undefined = undefined;
  refused = false;

  constructor(channel: Http1Channel, ex: UpgradeExchange) {
    this.channel = channel;
    this.ex = ex;
    this.visitor = ex.socket;
    this.visitor.on('error', noop);
    this.visitor.once('close', this.onVisitorClose);
    this.timer = setTimeout(this.onTimeout, channel.options.responseTimeout);
  }

  onConnect(): void {}
  onResponseStarted(): void {}
  onBodySent(): void {}
  onRequestSent(): void {}

  onUpgrade(_status: number, raw: Buffer[] | string[] | null, appSocket: Duplex): void {
    if (this.done) {
      appSocket.destroy();
      return;
    }
    this.clearTimer();
    // The reversed connection now carries the visitor's protocol: it leaves the pool.
    this.channel.consumed();
    appSocket.on('error', noop);
    const { ex, visitor } = this;
    // undici does not pass the 101's reason phrase on: the standard one is relayed.
    const head = ex.check(101, undefined, headerStrings(raw));
    if (visitor.destroyed || head instanceof PtthError) {
      if (head instanceof PtthError) ex.fail(head);
      appSocket.destroy();
      this.finish();
      return;
    }
    // The relayed 101 is written by hand: undici has already parsed it (docs/PROTOCOL.md section 8).
    // undici calls nothing more on this handler; the splice's end is the exchange's.
    visitor.removeListener('close', this.onVisitorClose);
    visitor.write(rawHead(101, head.reason, head.headers));
    if (ex.head.length > 0) appSocket.write(ex.head);
    splice(visitor, appSocket, () => this.finish());
  }

  onHeaders(status: number, raw: Buffer[], resume: () => void, reason: string): boolean {
    if (this.done) return false;
    if (status < 200) return true;
    // The app declined the upgrade: relay its answer and close the visitor's connection.
    this.clearTimer();
    const head = this.ex.check(status, reason, headerStrings(raw));
    if (head instanceof PtthError) {
      this.fail(head);
      return false;
    }
    this.refused = true;
    this.resumeParser = resume;
    this.visitor.write(
      rawHead(head.status, head.reason, withoutHeaders(head.headers, 'content-length'), 'Connection: close\r\n'),
    );
    leaveOnEnd(this.visitor);
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (this.done) return false;
    if (this.visitor.write(chunk)) return true;
    this.visitor.once('drain', this.onVisitorDrain);
    return false;
  }

  onComplete(): void {
    if (this.done) return;
    // Read to its end: the reversed connection is between messages and takes the next request.
    this.visitor.end();
    this.finish();
  }

  onError(err: Error & { code?: unknown }): void {
    if (this.done) return;
    if (this.refused) {
      this.visitor.destroy();
      this.channel.socket.destroy();
      this.finish();
      return;
    }
    if (err.code === 'UND_ERR_INVALID_ARG') {
      this.ex.fail(new PtthError('PTTH_ERR_BAD_PARAMS', `The upgrade could not be forwarded: ${err.message}`));
      this.finish();
      return;
    }
    this.fail(badAnswer(err) ? new PtthError('PTTH_ERR_BAD_RESPONSE') : new PtthError('PTTH_ERR_CHANNEL_LOST'));
  }

  onTimeout = (): void => {
    this.timer = undefined;
    this.fail(new PtthError('PTTH_ERR_APP_TIMEOUT'));
  };

  onVisitorClose = (): void => {
    if (this.done) return;
    // Mid-exchange either way (a refusal cut short, or no answer yet): the channel carries nothing more.
    this.channel.socket.destroy();
    this.finish();
  };

  onVisitorDrain = (): void => {
    this.resumeParser?.();
  };

  fail(err: PtthError): void {
    if (this.done) return;
    this.ex.fail(err);
    this.channel.socket.destroy();
    this.finish();
  }

  clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  finish(): void {
    if (this.done) return;
    this.done = true;
    this.clearTimer();
    this.visitor.removeListener('close', this.onVisitorClose);
    this.ex.done();
    this.channel.finished();
  }
}
