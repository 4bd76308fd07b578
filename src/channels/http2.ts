import { createHash } from 'node:crypto';
import {
  connect,
  constants,
  type ClientHttp2Session,
  type ClientHttp2Stream,
  type IncomingHttpHeaders,
  type IncomingHttpStatusHeader,
  type OutgoingHttpHeaders,
} from 'node:http2';
import type { Socket } from 'node:net';
import { Duplex, pipeline } from 'node:stream';
import { PtthError } from '../http/errors.js';
import { clientAddress, hasToken, rawHeader, withoutHeaders } from '../http/headers.js';
import { fromH2Headers, toH2Headers } from '../http/h2headers.js';
import { leaveOnEnd, rawHead, relay, splice } from '../http/relay.js';
import { channelId, type Channel, type ChannelEvents, type Exchange, type UpgradeExchange } from './channel.js';
import { noop } from '../shared/noop.js';
import { errorMessage } from '../shared/errormessage.js';

export interface Http2ChannelOptions {
  /** Milliseconds from the end of the request body to the app's response head (504 past it). */
  readonly responseTimeout: number;
  /** Milliseconds between HTTP/2 PINGs on this connection. */
  readonly pingInterval: number;
  /** Milliseconds a PING may go unanswered before the connection is declared dead. */
  readonly pingTimeout: number;
  /** Streams the gateway opens at once at most, whatever the app's SETTINGS allow. */
  readonly maxStreams: number;
}

/** RFC 8441 section 5 / RFC 6455 section 1.3. */
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const { NGHTTP2_CANCEL, NGHTTP2_NO_ERROR, NGHTTP2_REFUSED_STREAM } = constants;
/** Before the app's SETTINGS arrive (RFC 9113 section 6.5.2 recommends at least 100). */
const ASSUMED_STREAMS = 100;
/** Per-stream and connection receive windows: large enough to stream at loopback speed. */
const STREAM_WINDOW = 1 << 20;
const SESSION_WINDOW = 16 << 20;

/** RFC 9113 section 7, by code. */
const ERROR_NAMES = [
  'NO_ERROR',
  'PROTOCOL_ERROR',
  'INTERNAL_ERROR',
  'FLOW_CONTROL_ERROR',
  'SETTINGS_TIMEOUT',
  'STREAM_CLOSED',
  'FRAME_SIZE_ERROR',
  'REFUSED_STREAM',
  'CANCEL',
  'COMPRESSION_ERROR',
  'CONNECT_ERROR',
  'ENHANCE_YOUR_CALM',
  'INADEQUATE_SECURITY',
  'HTTP_1_1_REQUIRED',
];
/** The client connection preface (RFC 9113 section 3.4): 24 bytes before the first frame. */
const PREFACE_LENGTH = 24;
const FRAME_HEADER = 9;
const GOAWAY = 0x7;

/**
 * The claimed socket as node:http2 sees it, with the gateway's own frames read on their way out.
 *
 * When the app commits a connection error (RFC 9113 section 5.4.1: a header block that is no valid
 * HPACK, a frame over SETTINGS_MAX_FRAME_SIZE, DATA on an idle stream), nghttp2 sends GOAWAY with
 * the error code and then reads and writes nothing more, but node:http2 tells its user nothing: no
 * event, the session stays open, every stream on it waits. The GOAWAY on its way out is the only
 * sign of it, and a native socket handed to node:http2 shows none of its bytes to JavaScript.
 * Frame headers only are read; payloads pass through untouched.
 *
 * Node 22 and later report such an error as the session's 'error' (ERR_HTTP2_ERROR) and close it,
 * so the watch is only put in the way on older versions: a JavaScript stream in place of the
 * native socket costs every byte of the connection (bare HTTP/2 bulk transfers ran about a third
 * slower through it here).
 */
const WATCH_GOAWAY = Number(process.versions.node.split('.')[0]) < 22;

class FrameWatch extends Duplex {
  readonly #socket: Socket;
  readonly #onGoaway: (code: number) => void;
  /** Bytes of the preface still to pass, then of the current frame's payload to skip. */
  #skip = PREFACE_LENGTH;
  /** The frame header being read, then a GOAWAY's first 8 payload bytes (last stream id, error). */
  #head = Buffer.alloc(FRAME_HEADER + 8);
  #have = 0;
  #want = FRAME_HEADER;

  constructor(socket: Socket, onGoaway: (code: number) => void) {
    super({ allowHalfOpen: true });
    this.#socket = socket;
    this.#onGoaway = onGoaway;
    socket.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) socket.pause();
    });
    socket.on('end', this.#eof);
    // What the app sent before it closed is read to the end first, as from a native socket: the
    // session sees it all, then EOF (node:http2 then cancels the streams left), then the close.
    socket.on('close', () => {
      this.#eof();
      if (this.readableEnded) this.destroy();
      else this.once('end', () => this.destroy());
    });
  }

  #ended = false;
  #eof = (): void => {
    if (this.#ended) return;
    this.#ended = true;
    this.push(null);
  };

  override _read(): void {
    this.#socket.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.#scan(chunk);
    this.#send(chunk, callback);
  }

  override _writev(chunks: { chunk: Buffer }[], callback: (err?: Error | null) => void): void {
    for (const { chunk } of chunks) this.#scan(chunk);
    this.#send(Buffer.concat(chunks.map((c) => c.chunk)), callback);
  }

  override _final(callback: () => void): void {
    this.#socket.end();
    callback();
  }

  override _destroy(err: Error | null, callback: (err: Error | null) => void): void {
    this.#socket.destroy();
    callback(err);
  }

  #send(bytes: Buffer, callback: (err?: Error | null) => void): void {
    const socket = this.#socket;
    if (socket.destroyed || !socket.writable) return callback();
    if (socket.write(bytes)) return callback();
    const done = (): void => {
      socket.removeListener('drain', done);
      socket.removeListener('close', done);
      callback();
    };
    socket.once('drain', done);
    socket.once('close', done);
  }

  #scan(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.#skip > 0) {
        const n = Math.min(this.#skip, chunk.length - at);
        this.#skip -= n;
        at += n;
        continue;
      }
      const n = Math.min(this.#want - this.#have, chunk.length - at);
      chunk.copy(this.#head, this.#have, at, at + n);
      this.#have += n;
      at += n;
      if (this.#have < this.#want) return;
      const length = this.#head.readUIntBE(0, 3);
      if (this.#want === FRAME_HEADER && this.#head[3] === GOAWAY && length >= 8) {
        this.#want = FRAME_HEADER + 8; // read on into the error code
        continue;
      }
      if (this.#want > FRAME_HEADER) this.#onGoaway(this.#head.readUInt32BE(FRAME_HEADER + 4));
      this.#skip = length - (this.#want - FRAME_HEADER);
      this.#have = 0;
      this.#want = FRAME_HEADER;
    }
  }
}

/**
 * `:path` for a visitor's request-target (RFC 9113 section 8.3.1). Origin-form and `*` go as they
 * are; an absolute-form target (RFC 9112 section 3.2.2, which HTTP/1.1 servers must accept) keeps
 * only its path and query, byte for byte: HTTP/2 carries scheme and authority in pseudo-headers of
 * their own, and an app's HTTP/2 server resets a stream whose `:path` is a whole URL.
 */
export function h2Path(url: string | undefined): string {
  if (!url) return '/';
  if (url.charCodeAt(0) === 47 /* / */ || url === '*') return url;
  const m = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*/.exec(url);
  if (!m) return url;
  const rest = url.slice(m[0].length);
  return rest.startsWith('/') ? rest : `/${rest}`;
}

/** An HTTP/2 response header object as a flat list for node:http's writeHead (pseudo-headers dropped). */
function flatResponseHeaders(headers: IncomingHttpHeaders, status: number): string[] {
  // RFC 9110 section 8.6: no Content-Length in a 1xx or 204 response.
  return fromH2Headers(headers, [], status < 200 || status === 204 ? 'content-length' : undefined);
}

/**
 * A reversed HTTP/2 connection (draft-kazuho-ptth-ptth): after the 101 the gateway speaks HTTP/2
 * with prior knowledge as the client (node:http2 over the claimed socket), visitors' requests as
 * concurrent streams with HTTP/2 flow control end to end.
 */
export class Http2Channel implements Channel {
  readonly id = channelId();
  readonly transport = 'http2' as const;
  readonly remote: string;
  readonly openedAt = Date.now();
  events: ChannelEvents | undefined;
  #session: ClientHttp2Session;
  #socket: Socket;
  #options: Http2ChannelOptions;
  #active = 0;
  #served = 0;
  #closed = false;
  #closing = false;
  /** The app's SETTINGS have arrived. */
  #settled = false;
  #ping: NodeJS.Timeout | undefined;
  #pingDeadline: NodeJS.Timeout | undefined;
  /** Exchanges in flight, each with what ends it when the connection breaks under it. */
  #inflight = new Set<Breakable>();
  /** What node:http2 reads and writes: the socket, or FrameWatch around it (WATCH_GOAWAY). */
  #watch: Socket | FrameWatch;

  constructor(socket: Socket, options: Http2ChannelOptions) {
    this.#socket = socket;
    this.#options = options;
    // One form everywhere (logs, status page, metrics): `127.0.0.1`, not `::ffff:127.0.0.1`.
    this.remote = `${clientAddress(socket.remoteAddress) || '?'}:${socket.remotePort ?? 0}`;
    socket.setNoDelay(true);
    socket.setTimeout(0);
    socket.on('error', noop);
    // node:http servers allow half-open sockets: the app's FIN alone would leave the session open.
    socket.on('end', () => socket.end());
    const watched = WATCH_GOAWAY ? new FrameWatch(socket, this.#onGoawaySent) : socket;
    this.#watch = watched;
    watched.on('error', noop);
    this.#session = connect('http://ptth.invalid', {
      createConnection: () => watched,
      settings: { enablePush: false, initialWindowSize: STREAM_WINDOW },
    });
    const session = this.#session;
    // A connection error the app committed (broken HPACK, an oversized frame, DATA before
    // HEADERS), as Node 22 and later report it: nghttp2's own error, before the session closes.
    session.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ERR_HTTP2_ERROR') this.#broken(`${err.message.toLowerCase()}, RFC 9113 section 5.4.1`);
    });
    session.on('connect', () => session.setLocalWindowSize(SESSION_WINDOW));
    session.on('remoteSettings', () => {
      this.#settled = true;
      if (!this.#closed) this.events?.available(this);
    });
    // The app is going away: finish what is in flight, take nothing new.
    session.on('goaway', () => {
      this.#closing = true;
    });
    session.on('close', this.#onClose);
    // Not the socket's own 'close': bytes it read may still be on their way through the watch.
    watched.once('close', this.#onClose);
    this.#ping = setInterval(this.#sendPing, options.pingInterval);
    this.#ping.unref();
  }

  get active(): number {
    return this.#active;
  }
  get served(): number {
    return this.#served;
  }
  get closed(): boolean {
    return this.#closed;
  }
  /** Streams the app allows at once (its SETTINGS_MAX_CONCURRENT_STREAMS), capped by the gateway. */
  get capacity(): number {
    const remote = this.#settled ? this.#session.remoteSettings.maxConcurrentStreams : undefined;
    return Math.min(this.#options.maxStreams, remote ?? ASSUMED_STREAMS);
  }
  get available(): boolean {
    // A session node:http2 already closed or destroyed (a connection error, its 'close' not yet
    // run) opens no stream: a request handed to it would fail with 502 though nothing was sent.
    const session = this.#session;
    return !this.#closed && !this.#closing && !session.closed && !session.destroyed && this.#active < this.capacity;
  }
  /** RFC 8441: the app said it accepts extended CONNECT. */
  get upgradable(): boolean {
    return this.#settled && this.#session.remoteSettings.enableConnectProtocol === true;
  }

  #sendPing = (): void => {
    // A session can be destroyed before its 'close' event has run: ping() would throw then.
    if (this.#closed || this.#pingDeadline || this.#session.destroyed || this.#session.closed) return;
    this.#pingDeadline = setTimeout(() => {
      // No PING ACK in time: the peer is gone even if TCP has not noticed.
      this.#session.destroy(new Error('HTTP/2 PING timed out'));
      this.#socket.destroy();
    }, this.#options.pingTimeout);
    this.#pingDeadline.unref();
    let sent = false;
    try {
      sent = this.#session.ping((err) => {
        if (this.#pingDeadline) clearTimeout(this.#pingDeadline);
        this.#pingDeadline = undefined;
        if (err && !this.#closed) this.#session.destroy(err);
      });
    } catch {
      sent = false;
    }
    if (!sent) {
      clearTimeout(this.#pingDeadline);
      this.#pingDeadline = undefined;
    }
  };

  /**
   * A PING now, after a stream timed out: the connection may be dead without node saying so (a
   * peer gone without a FIN or RST); this one finds out within pingTimeout instead of at the next
   * periodic PING. Connection errors the app commits are seen at once, by FrameWatch.
   */
  #probe(): void {
    this.#sendPing();
  }

  /**
   * nghttp2 sent GOAWAY. With NO_ERROR it is the gateway's own close(); with an error code while
   * the session is up, the app broke the protocol and the connection is dead (RFC 9113 section
   * 5.4.1: after a connection error the endpoint closes the TCP connection). Every exchange in
   * flight fails now with 502 PTTH_ERR_BAD_RESPONSE: the app, not the network, lost them.
   */
  #onGoawaySent = (code: number): void => {
    if (code === NGHTTP2_NO_ERROR || this.#closed || this.#session.destroyed) return;
    // Called from inside node:http2's write: the session is torn down once that returned.
    setImmediate(() => this.#broken(`${ERROR_NAMES[code] ?? `error ${code}`}, RFC 9113 section 5.4.1`));
  };

  /** The app broke the connection: everything in flight fails with 502 at once, and it closes. */
  #broken(why: string): void {
    if (this.#closed) return;
    const err = new PtthError(
      'PTTH_ERR_BAD_RESPONSE',
      `The app broke the HTTP/2 connection (${why}); the gateway closed it.`,
    );
    // Nothing new goes down it: the exchanges failing below would otherwise hand it queued requests.
    this.#closing = true;
    for (const exchange of [...this.#inflight]) exchange.broken(err);
    this.#session.destroy();
    this.#socket.destroy();
  }

  #onClose = (): void => {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#ping) clearInterval(this.#ping);
    if (this.#pingDeadline) clearTimeout(this.#pingDeadline);
    // Streams still open lost their connection: CANCEL, as node:http2 itself closes them when its
    // socket closes, so a body cut short never ends as if it were complete (rstCode 0). Without
    // an error node:http2 takes the code for NO_ERROR (its `error` parameter defaults to 0).
    this.#session.destroy(new Error('the reversed HTTP/2 connection closed'), NGHTTP2_CANCEL);
    this.#watch.destroy();
    this.#socket.destroy();
    this.events?.closed(this);
  };

  /** GOAWAY: streams in flight finish, then the connection closes (the client reconnects). */
  close(): void {
    if (this.#closed) return;
    this.#closing = true;
    this.#session.close();
    const timer = setTimeout(() => this.#socket.destroy(), 5_000);
    timer.unref();
  }

  #open(headers: OutgoingHttpHeaders, endStream: boolean): ClientHttp2Stream {
    return this.#session.request(headers, { endStream });
  }

  dispatch(ex: Exchange): void {
    this.#active++;
    const exchange = new H2Exchange(this, ex);
    this.#inflight.add(exchange);
    exchange.start();
  }

  /** Opens a stream for an exchange; throws as `session.request` does. */
  open(headers: OutgoingHttpHeaders, endStream: boolean): ClientHttp2Stream {
    return this.#open(headers, endStream);
  }

  get responseTimeout(): number {
    return this.#options.responseTimeout;
  }

  /** See #probe: a stream timed out, the connection may be dead. */
  probe(): void {
    this.#probe();
  }

  /** An exchange is over or went back to its registration: its stream no longer counts. */
  release(exchange: Breakable, served: boolean): void {
    this.#inflight.delete(exchange);
    this.#active--;
    if (served) this.#served++;
  }

  /** Tells the registration the channel can take another request, unless it is going away. */
  offer(): void {
    if (!this.#closed && !this.#closing) this.events?.available(this);
  }

  get gone(): boolean {
    return this.#closed;
  }

  /** A visitor's WebSocket upgrade as RFC 8441 extended CONNECT; the gateway writes the 101. */
  upgrade(ex: UpgradeExchange): void {
    const { req, socket: visitor } = ex;
    const key = req.headers['sec-websocket-key'];
    if (!hasToken(req.headers.upgrade, 'websocket') || typeof key !== 'string') {
      ex.fail(
        new PtthError(
          'PTTH_ERR_UPGRADE_UNSUPPORTED',
          'Over HTTP/2 the gateway can only carry WebSocket upgrades (RFC 8441).',
        ),
      );
      ex.done();
      if (!this.#closed) this.events?.available(this);
      return;
    }
    this.#active++;
    let finished = false;
    let answered = false;
    const finish = (): void => {
      if (finished) return;
      finished = true;
      this.#inflight.delete(entry);
      this.#active--;
      this.#served++;
      ex.done();
      if (!this.#closed && !this.#closing) this.events?.available(this);
    };
    const broken = (err: PtthError): void => {
      if (finished) return;
      if (answered) visitor.destroy();
      else ex.fail(err);
      finish();
    };
    const entry: Breakable = { broken };
    this.#inflight.add(entry);
    const raw = withoutHeaders(ex.headers, 'sec-websocket-key', 'connection', 'upgrade');
    let stream: ClientHttp2Stream;
    try {
      stream = this.#open(
        toH2Headers(
          raw,
          {
            ':method': 'CONNECT',
            ':protocol': 'websocket',
            ':scheme': (req.socket as { encrypted?: boolean }).encrypted ? 'https' : 'http',
            ':path': req.url ?? '/',
            ':authority': rawHeader(ex.headers, 'host') ?? 'localhost',
          },
          true,
        ),
        false,
      );
    } catch (err) {
      ex.fail(new PtthError('PTTH_ERR_BAD_PARAMS', `The upgrade could not be forwarded: ${errorMessage(err)}`));
      finish();
      return;
    }
    const timer = setTimeout(() => {
      ex.fail(new PtthError('PTTH_ERR_APP_TIMEOUT'));
      stream.close(NGHTTP2_CANCEL);
      finish();
      this.#probe();
    }, this.#options.responseTimeout);
    visitor.on('error', noop);
    stream.on('error', noop);
    visitor.once('close', () => {
      clearTimeout(timer);
      if (!stream.destroyed) stream.close(NGHTTP2_CANCEL);
      finish();
    });
    stream.on('response', (headers: IncomingHttpHeaders & IncomingHttpStatusHeader) => {
      clearTimeout(timer);
      answered = true;
      answerUpgrade(ex, stream, visitor, key, headers, finish);
    });
    stream.on('close', () => {
      clearTimeout(timer);
      if (!finished && !visitor.destroyed && visitor.writable && stream.rstCode !== undefined && stream.rstCode !== 0) {
        ex.fail(new PtthError('PTTH_ERR_CHANNEL_LOST'));
      }
      finish();
    });
  }
}

/** The app's answer to an extended CONNECT: on 2xx the 101 to the visitor and a splice, otherwise its answer as it is. */
function answerUpgrade(
  ex: UpgradeExchange,
  stream: ClientHttp2Stream,
  visitor: Duplex,
  key: string,
  headers: IncomingHttpHeaders & IncomingHttpStatusHeader,
  finish: () => void,
): void {
  const head = ex.check(Number(headers[':status']), undefined, flatResponseHeaders(headers, 200));
  if (head instanceof PtthError || head.status === 101) {
    ex.fail(
      head instanceof PtthError
        ? head
        : new PtthError('PTTH_ERR_BAD_RESPONSE', 'An HTTP/2 app answered 101 (RFC 9113 section 8.6).'),
    );
    stream.close(NGHTTP2_CANCEL);
    finish();
    return;
  }
  const { status, headers: flat } = head;
  if (status >= 200 && status < 300) {
    const accept = createHash('sha1').update(`${key}${WS_GUID}`).digest('base64');
    visitor.write(
      rawHead(101, 'Switching Protocols', [
        'Upgrade',
        'websocket',
        'Connection',
        'Upgrade',
        'Sec-WebSocket-Accept',
        accept,
        ...flat,
      ]),
    );
    splice(visitor, stream, finish);
    return;
  }
  // The app declined: relay its answer and close the visitor's connection.
  visitor.write(rawHead(status, head.reason, withoutHeaders(flat, 'content-length'), 'Connection: close\r\n'));
  leaveOnEnd(visitor);
  pipeline(stream, visitor, finish);
}

/** What the channel ends when the connection breaks under it: an exchange or an upgrade. */
interface Breakable {
  broken(err: PtthError): void;
}

/**
 * One visitor request on a reversed HTTP/2 connection, start to end: its stream, its response
 * timer, and the once-only transitions (finish, hand-back) that give the stream back to the channel.
 */
class H2Exchange implements Breakable {
  readonly #channel: Http2Channel;
  readonly #ex: Exchange;
  readonly #bodyless: boolean;
  #stream: ClientHttp2Stream | undefined;
  #finished = false;
  #responded = false;
  #timer: NodeJS.Timeout | undefined;

  constructor(channel: Http2Channel, ex: Exchange) {
    this.#channel = channel;
    this.#ex = ex;
    const h = ex.req.headers;
    this.#bodyless = h['content-length'] === undefined && h['transfer-encoding'] === undefined;
  }

  start(): void {
    const stream = this.#open();
    if (!stream) return;
    this.#stream = stream;
    stream.on('response', this.#onResponse);
    stream.on('error', this.#onStreamError);
    stream.on('close', this.#onStreamClose);
    this.#ex.res.on('close', this.#onVisitorClose);
    const { req } = this.#ex;
    if (this.#bodyless) {
      req.resume();
      this.#startTimer();
    } else {
      relay(req, stream, this.#onUploadEnd, {
        // An app that takes none of the body for responseTimeout (its stream window stays
        // shut) never will: the response timer only starts once the body is sent.
        ms: this.#channel.responseTimeout,
        onStall: this.#onUploadStall,
      });
    }
  }

  /** The connection broke: before the head the visitor gets the error, after it a cut connection. */
  broken(err: PtthError): void {
    if (this.#finished) return;
    if (this.#responded) this.#ex.res.destroy();
    else this.#ex.fail(err);
    this.#finish();
  }

  #finish(): void {
    if (this.#finished) return;
    this.#finished = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#channel.release(this, true);
    this.#ex.done();
    this.#channel.offer();
  }

  /** Back to the registration, unserved: the app provably did not process it. */
  #handBack(retry: (refusedBy: Channel) => void, available: boolean): void {
    this.#finished = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#channel.release(this, false);
    retry(this.#channel);
    if (available) this.#channel.offer();
  }

  #open(): ClientHttp2Stream | undefined {
    const ex = this.#ex;
    const { req } = ex;
    const encrypted = (req.socket as { encrypted?: boolean }).encrypted === true;
    try {
      const headers = toH2Headers(
        ex.headers,
        {
          ':method': req.method ?? 'GET',
          ':path': h2Path(req.url),
          ':scheme': encrypted ? 'https' : 'http',
          ':authority': rawHeader(ex.headers, 'host') ?? 'localhost',
        },
        true,
      );
      return this.#channel.open(headers, this.#bodyless);
    } catch (err) {
      // The session is already going away (GOAWAY received, not yet seen): nothing was sent.
      const code = (err as NodeJS.ErrnoException).code;
      const gone = code === 'ERR_HTTP2_GOAWAY_SESSION' || code === 'ERR_HTTP2_INVALID_SESSION';
      if (gone && ex.retry) {
        this.#handBack(ex.retry, false);
        return undefined;
      }
      ex.fail(
        gone
          ? new PtthError('PTTH_ERR_CHANNEL_LOST')
          : new PtthError(
              'PTTH_ERR_BAD_PARAMS',
              `The request could not be forwarded over HTTP/2: ${errorMessage(err)}`,
            ),
      );
      this.#finish();
      return undefined;
    }
  }

  /**
   * Node 20 sends no RST_STREAM for close() while our side of the stream is still open: a cut
   * upload is reset with destroy(err), so the app never sees it as a complete body.
   */
  #cancel = (): void => {
    const stream = this.#stream;
    if (!stream || stream.destroyed) return;
    if (stream.writableEnded) stream.close(NGHTTP2_CANCEL);
    else stream.destroy(new Error('The visitor went away.'));
  };

  #startTimer(): void {
    if (this.#responded || this.#finished) return;
    this.#timer = setTimeout(this.#onTimeout, this.#channel.responseTimeout);
  }

  #onTimeout = (): void => {
    this.#ex.fail(new PtthError('PTTH_ERR_APP_TIMEOUT'));
    this.#stream?.close(NGHTTP2_CANCEL);
    this.#finish();
    this.#channel.probe();
  };

  #onResponse = (headers: IncomingHttpHeaders & IncomingHttpStatusHeader): void => {
    const stream = this.#stream as ClientHttp2Stream;
    const { res } = this.#ex;
    this.#responded = true;
    if (this.#timer) clearTimeout(this.#timer);
    const status = Number(headers[':status']);
    // A bad head costs this stream only: HTTP/2 framing keeps the connection's other streams whole.
    if (this.#ex.respond(status, undefined, flatResponseHeaders(headers, status))) {
      stream.close(NGHTTP2_CANCEL);
      this.#finish();
      return;
    }
    // When the connection dies mid-body (the app crashed), node ends the stream as if its body
    // were complete: no 'error', no 'aborted', only rstCode says so. Registered before the
    // relay's pipe, so the visitor's connection is cut before the pipe could end the response
    // (a chunked one would otherwise look whole).
    stream.once('end', () => {
      if (stream.rstCode !== undefined && stream.rstCode !== NGHTTP2_NO_ERROR) res.destroy();
    });
    // A slow visitor slows only this stream: the relay stops reading, HTTP/2 flow control holds the app.
    relay(stream, res, this.#onDownloadEnd);
  };

  #onDownloadEnd = (err?: Error | null): void => {
    const { req, res } = this.#ex;
    if (err) res.destroy();
    // The app answered before the visitor's body was complete: when the visitor goes away,
    // the rest of the upload will never come, so the stream is reset.
    else if (!req.complete) {
      if (req.socket.destroyed) this.#cancel();
      else req.socket.once('close', this.#cancel);
    }
    this.#finish();
  };

  /**
   * The app refused the stream without processing it (it is closing: GOAWAY, or RST_STREAM
   * REFUSED_STREAM): nothing was read of a bodyless request, so it is safe to send it again
   * down another channel (RFC 9113 section 8.7) rather than answer 502.
   */
  #refused(): boolean {
    const { retry } = this.#ex;
    if (this.#finished || this.#responded || !this.#bodyless || !retry) return false;
    if (this.#stream?.rstCode !== NGHTTP2_REFUSED_STREAM) return false;
    this.#handBack(retry, true);
    return true;
  }

  #onStreamError = (err: NodeJS.ErrnoException): void => {
    if (this.#finished || this.#responded || this.#refused()) return;
    this.#ex.fail(
      err.code === 'ERR_HTTP2_STREAM_ERROR' && !this.#channel.gone
        ? new PtthError('PTTH_ERR_BAD_RESPONSE', `The app reset the stream (${err.message}).`)
        : // Node 22 and later destroy the streams with the session's error before reporting it.
          err.code === 'ERR_HTTP2_ERROR'
          ? new PtthError(
              'PTTH_ERR_BAD_RESPONSE',
              `The app broke the HTTP/2 connection (${err.message.toLowerCase()}).`,
            )
          : new PtthError('PTTH_ERR_CHANNEL_LOST'),
    );
    this.#finish();
  };

  #onStreamClose = (): void => {
    if (!this.#responded && !this.#finished && !this.#refused()) {
      this.#ex.fail(new PtthError('PTTH_ERR_CHANNEL_LOST'));
      this.#finish();
    }
  };

  /** The visitor left: cancel this stream only; the connection carries on. */
  #onVisitorClose = (): void => {
    if (!this.#ex.res.writableFinished && !this.#finished) {
      this.#cancel();
      this.#finish();
    }
  };

  #onUploadEnd = (err?: Error | null): void => {
    if (err) {
      this.#cancel();
      this.#finish();
      return;
    }
    this.#startTimer();
  };

  #onUploadStall = (): void => {
    if (!this.#finished)
      this.#ex.fail(new PtthError('PTTH_ERR_APP_TIMEOUT', 'The app stopped reading the request body.'));
    this.#cancel();
    this.#finish();
    this.#channel.probe();
  };
}
