import type WebSocket from 'ws';
import { PtthError } from '../http/errors.js';
import { MAX_HEAD_BYTES } from '../http/response.js';
import { clientAddress, requestingClient } from '../http/headers.js';
import { noop } from '../shared/noop.js';
import { FLAG_END, FRAME_HEADER, MAX_CHUNK } from '../shared/wsframing.js';
import { channelId, type Channel, type ChannelEvents, type Exchange, type UpgradeExchange } from './channel.js';

/**
 * The WebSocket channel: many visitor requests at once over one WebSocket, each a stream with an id.
 * The framing is documented in the README ("WebSocket channel framing"):
 *
 *  - text frames carry JSON control messages, `t` says which:
 *      gateway -> app  `hello`    {v, name, url, location, window, maxStreams}   once, first
 *      gateway -> app  `request`  {id, method, url, version, headers, client, body}
 *      app -> gateway  `response` {id, status, statusText, headers, body}
 *      both ways       `credit`   {id, bytes}   the receiver consumed `bytes` of the stream's body
 *      both ways       `abort`    {id, message} the sender gives the stream up
 *    `headers` is a flat [name, value, name, value...] list; `body: false` means no body frames follow.
 *  - binary frames carry body bytes: 1 byte of flags (bit 0: END, the last frame of this body), the
 *    stream id as a 32-bit big-endian integer, then up to 64 KiB of payload (the constants are in
 *    src/shared/wsframing.ts, which the browser library shares).
 *  - a text frame is at most MAX_CONTROL_MESSAGE bytes, a binary one MAX_BINARY_MESSAGE: past
 *    either the channel closes with 1009, before anything is parsed.
 *
 * Flow control: each direction of each stream may have `window` bytes in flight; the receiver returns
 * credit as it consumes them (the gateway: once the visitor's socket took them). On top, the gateway
 * stops reading visitors while the WebSocket's own send buffer is over a high-water mark.
 */

/** The largest binary message: a body frame's header and a full chunk. */
export const MAX_BINARY_MESSAGE = FRAME_HEADER + MAX_CHUNK;
/**
 * The largest text (control) message. The largest legitimate one is a `response` whose head is
 * MAX_HEAD_BYTES: as compact JSON each `name: value` CRLF line becomes `"name","value",`, and
 * escaping at most doubles a value (field values hold no control characters but HTAB, and `"`,
 * `\`, HTAB and Latin-1 obs-text each take two bytes), so twice the head plus 1 KiB for the fixed
 * members covers it. Checked before JSON.parse: parsing is what costs the event loop.
 */
export const MAX_CONTROL_MESSAGE = 2 * MAX_HEAD_BYTES + 1024;
/** ws's maxPayload for the channel: no message may exceed either bound (ws closes with 1009 past it). */
export const MAX_MESSAGE = Math.max(MAX_BINARY_MESSAGE, MAX_CONTROL_MESSAGE);

export interface WebSocketChannelOptions {
  /** Milliseconds from the end of the request body to the app's response head (504). */
  readonly responseTimeout: number;
  /** Requests in flight at once on the channel. */
  readonly maxStreams: number;
  /** Bytes of body in flight per stream and direction before credit comes back. */
  readonly window: number;
  /** Milliseconds between pings; a peer that misses one is gone. */
  readonly pingInterval: number;
}

/** Unsent bytes over which the gateway stops reading from visitors until the socket drains. */
const HIGH_WATER = 1024 * 1024;

interface Stream {
  readonly id: number;
  readonly ex: Exchange;
  /** Bytes the gateway may still send the app. */
  credit: number;
  /** Request body chunks waiting for credit or for the socket to drain. */
  readonly out: Buffer[];
  requestEnded: boolean;
  requestSent: boolean;
  responded: boolean;
  /** Response bytes received and not yet credited back. */
  unacked: number;
  /** The visitor's socket is full: credit waits for its 'drain'. */
  waitDrain: boolean;
  timer: NodeJS.Timeout | undefined;
  finished: boolean;
}

export function encodeFrame(id: number, flags: number, payload: Buffer | undefined): Buffer {
  const frame = Buffer.allocUnsafe(FRAME_HEADER + (payload?.length ?? 0));
  frame[0] = flags;
  frame.writeUInt32BE(id, 1);
  if (payload) payload.copy(frame, FRAME_HEADER);
  return frame;
}

export class WebSocketChannel implements Channel {
  readonly id = channelId();
  readonly transport = 'websocket' as const;
  readonly remote: string;
  readonly openedAt = Date.now();
  readonly upgradable = false;
  events: ChannelEvents | undefined;
  #ws: WebSocket;
  #options: WebSocketChannelOptions;
  #streams = new Map<number, Stream>();
  #nextId = 1;
  #served = 0;
  /** #nextId went past 0xffffffff once: every id may belong to a stream that ended. */
  #wrapped = false;
  #closed = false;
  #alive = true;
  #ping: NodeJS.Timeout;
  /** Streams with request bytes waiting for the socket to drain. */
  #blocked = new Set<Stream>();

  constructor(ws: WebSocket, remote: string, options: WebSocketChannelOptions) {
    this.#ws = ws;
    this.remote = remote;
    this.#options = options;
    ws.on('message', this.#onMessage);
    ws.on('close', this.#onClose);
    ws.on('error', noop);
    ws.on('pong', () => {
      this.#alive = true;
    });
    this.#ping = setInterval(() => {
      if (!this.#alive) {
        ws.terminate();
        return;
      }
      this.#alive = false;
      ws.ping();
    }, options.pingInterval);
    this.#ping.unref();
  }

  get active(): number {
    return this.#streams.size;
  }
  get served(): number {
    return this.#served;
  }
  get available(): boolean {
    return !this.#closed && this.#streams.size < this.#options.maxStreams;
  }
  get closed(): boolean {
    return this.#closed;
  }

  /** The first message: where the app is served, and the flow-control parameters. */
  hello(info: { name: string; url: string; location: string }): void {
    this.#json({ t: 'hello', v: 1, ...info, window: this.#options.window, maxStreams: this.#options.maxStreams });
  }

  close(): void {
    if (this.#closed) return;
    this.#ws.close(1001, 'registration released');
    // A peer that never answers the close handshake is cut off.
    const t = setTimeout(() => this.#ws.terminate(), 2_000);
    t.unref();
    this.#onClose();
  }

  #json(msg: Record<string, unknown>): void {
    if (this.#ws.readyState === this.#ws.OPEN) this.#ws.send(JSON.stringify(msg));
  }

  /** Protocol violations end the channel (RFC 6455 section 7.4.1: 1002 protocol error). */
  #violation(why: string, code = 1002): void {
    if (this.#ws.readyState === this.#ws.OPEN) {
      // RFC 6455 section 5.5: a close reason is at most 123 bytes, and ws throws past that.
      let reason = why.slice(0, 120);
      while (Buffer.byteLength(reason) > 123) reason = reason.slice(0, -1);
      this.#ws.close(code, reason);
    }
    this.#onClose();
  }

  dispatch(ex: Exchange): void {
    const { req, res } = ex;
    const id = this.#nextId;
    if (this.#nextId >= 0xffffffff) this.#wrapped = true;
    this.#nextId = this.#nextId >= 0xffffffff ? 1 : this.#nextId + 1;
    const hasBody = req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0;
    const s: Stream = {
      id,
      ex,
      credit: this.#options.window,
      out: [],
      requestEnded: !hasBody,
      requestSent: !hasBody,
      responded: false,
      unacked: 0,
      waitDrain: false,
      timer: undefined,
      finished: false,
    };
    this.#streams.set(id, s);
    const socket = req.socket;
    const address = clientAddress(socket.remoteAddress);
    this.#json({
      t: 'request',
      id,
      method: req.method,
      url: req.url,
      version: req.httpVersion,
      headers: ex.headers,
      client: requestingClient(address, socket.remotePort ?? 0),
      body: hasBody,
    });
    res.once('close', () => {
      if (s.finished) return;
      // The visitor left before its response was complete.
      this.#json({ t: 'abort', id, message: 'the visitor closed the connection' });
      this.#finish(s);
    });
    if (hasBody) {
      req.on('data', (chunk: Buffer) => {
        if (s.finished) return;
        s.out.push(chunk);
        req.pause();
        this.#pump(s);
      });
      req.on('end', () => {
        if (s.finished) return;
        s.requestEnded = true;
        this.#pump(s);
      });
      req.on('error', () => {
        if (s.finished) return;
        this.#json({ t: 'abort', id, message: "the visitor's request body failed" });
        this.#finish(s);
      });
    } else {
      req.resume();
      this.#armResponseTimer(s);
    }
  }

  upgrade(ex: UpgradeExchange): void {
    // Never picked (upgradable is false).
    ex.fail(
      new PtthError('PTTH_ERR_BAD_RESPONSE', 'The app serves over a WebSocket channel, which does not carry upgrades.'),
    );
    ex.done();
  }

  /** Sends what credit and the socket's buffer allow; resumes the visitor once its chunks are out. */
  #pump(s: Stream): void {
    if (s.finished || this.#closed) return;
    const ws = this.#ws;
    while (s.out.length > 0 && s.credit > 0) {
      if (ws.bufferedAmount > HIGH_WATER) {
        this.#blocked.add(s);
        return;
      }
      const chunk = s.out[0] as Buffer;
      const n = Math.min(chunk.length, s.credit, MAX_CHUNK);
      const piece = n === chunk.length ? chunk : chunk.subarray(0, n);
      if (n === chunk.length) s.out.shift();
      else s.out[0] = chunk.subarray(n);
      s.credit -= n;
      ws.send(encodeFrame(s.id, 0, piece), { binary: true }, this.#onSent);
    }
    if (s.out.length > 0) return; // waiting for credit
    if (!s.requestEnded) {
      s.ex.req.resume();
      return;
    }
    if (!s.requestSent) {
      s.requestSent = true;
      ws.send(encodeFrame(s.id, FLAG_END, undefined), { binary: true });
      this.#armResponseTimer(s);
    }
  }

  #onSent = (): void => {
    if (this.#blocked.size === 0 || this.#ws.bufferedAmount > HIGH_WATER) return;
    const blocked = [...this.#blocked];
    this.#blocked.clear();
    for (const s of blocked) this.#pump(s);
  };

  #armResponseTimer(s: Stream): void {
    if (s.responded || s.finished) return;
    s.timer = setTimeout(() => {
      if (s.responded || s.finished) return;
      this.#json({ t: 'abort', id: s.id, message: 'response timeout' });
      s.ex.fail(new PtthError('PTTH_ERR_APP_TIMEOUT'));
      this.#finish(s);
    }, this.#options.responseTimeout);
  }

  #finish(s: Stream): void {
    if (s.finished) return;
    s.finished = true;
    if (s.timer) clearTimeout(s.timer);
    s.out.length = 0;
    this.#blocked.delete(s);
    // A body the app no longer wants (it answered early, or the stream failed) is read and
    // discarded, not left paused.
    if (!s.requestEnded) s.ex.req.resume();
    const wasAvailable = this.available;
    this.#streams.delete(s.id);
    this.#served++;
    s.ex.done();
    if (!wasAvailable && this.available) this.events?.available(this);
  }

  #onMessage = (data: WebSocket.RawData, isBinary: boolean): void => {
    this.#alive = true;
    const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
    // Whatever the peer sends, nothing may throw out of ws's 'message' event: that would end the
    // process. An unexpected failure ends this channel only.
    try {
      if (isBinary) this.#onData(buf);
      else this.#onControl(buf);
    } catch {
      this.#ws.terminate();
      this.#onClose();
    }
  };

  #onControl(buf: Buffer): void {
    // RFC 6455 section 7.4.1: 1009, a message too big to process. ws's maxPayload is the larger
    // binary bound, so a text message between the two bounds ends here, before JSON.parse.
    if (buf.length > MAX_CONTROL_MESSAGE) return this.#violation('control frame too large', 1009);
    let msg: Record<string, unknown>;
    try {
      const parsed: unknown = JSON.parse(buf.toString('utf8'));
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not an object');
      msg = parsed as Record<string, unknown>;
    } catch {
      return this.#violation('control frames are JSON objects');
    }
    const id = msg['id'];
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 1 || id > 0xffffffff) {
      return this.#violation('control frames carry a numeric id');
    }
    // Ids the gateway never opened cannot be frames that crossed a stream's end in flight.
    if (!this.#wrapped && id >= this.#nextId) return this.#violation('a stream id the gateway never opened');
    // Frames for a stream that just ended (the visitor left, a timeout) cross in flight: ignored.
    const s = this.#streams.get(id);
    switch (msg['t']) {
      case 'response':
        if (s) this.#onResponse(s, msg);
        return;
      case 'credit': {
        const bytes = msg['bytes'];
        if (typeof bytes !== 'number' || !Number.isInteger(bytes) || bytes <= 0)
          return this.#violation('credit needs a positive byte count');
        if (!s) return;
        s.credit += bytes;
        this.#pump(s);
        return;
      }
      case 'abort':
        if (!s) return;
        s.ex.fail(
          new PtthError(
            'PTTH_ERR_BAD_RESPONSE',
            `The app gave up on the request${typeof msg['message'] === 'string' ? `: ${msg['message'].slice(0, 200)}` : ''}.`,
          ),
        );
        this.#finish(s);
        return;
      default:
        // The peer's text stays out of the close reason (it could be any length or encoding).
        this.#violation('unknown control frame type');
    }
  }

  #onResponse(s: Stream, msg: Record<string, unknown>): void {
    if (s.responded) return this.#violation('a second response for one stream');
    const headers = msg['headers'] ?? [];
    s.responded = true;
    if (s.timer) clearTimeout(s.timer);
    // The body arrives in our own frames, not framed by llhttp: node must hold it to the declared
    // Content-Length, or an app could write past its response into the visitor's next one.
    s.ex.res.strictContentLength = true;
    if (!Array.isArray(headers) || s.ex.respond(msg['status'], msg['statusText'] ?? undefined, headers)) {
      if (!Array.isArray(headers))
        s.ex.fail(
          new PtthError(
            'PTTH_ERR_BAD_RESPONSE',
            'The app sent an invalid response: headers must be a flat list of strings.',
          ),
        );
      // The frames around it are intact: only this stream ends.
      this.#json({ t: 'abort', id: s.id, message: 'invalid response head' });
      this.#finish(s);
      return;
    }
    // With a body, frames follow until END (for HEAD node drops them); without, the response is complete.
    if (msg['body'] !== true) {
      this.#end(s);
      this.#finish(s);
    }
  }

  /** Ends the visitor's response; a body shorter than its Content-Length cuts the connection instead. */
  #end(s: Stream): void {
    try {
      s.ex.res.end();
    } catch {
      s.ex.res.destroy();
    }
  }

  #onData(buf: Buffer): void {
    if (buf.length < FRAME_HEADER) return this.#violation('binary frames start with flags and a stream id');
    // Only reached when a raised --max-http-header-size lifts ws's maxPayload over this bound.
    if (buf.length > MAX_BINARY_MESSAGE) return this.#violation('body frame too large', 1009);
    const flags = buf[0] as number;
    const id = buf.readUInt32BE(1);
    const s = this.#streams.get(id);
    if (!s) return;
    if (!s.responded) return this.#violation('body bytes before the response head');
    const payload = buf.subarray(FRAME_HEADER);
    const { res } = s.ex;
    if (payload.length > 0) {
      s.unacked += payload.length;
      if (s.unacked > this.#options.window) return this.#violation('more body bytes than the window allows');
      let ok: boolean;
      try {
        ok = res.write(payload);
      } catch {
        // More bytes than the declared Content-Length: the visitor's connection is cut, never desynchronised.
        this.#json({ t: 'abort', id: s.id, message: 'body longer than its Content-Length' });
        res.destroy();
        this.#finish(s);
        return;
      }
      if (!ok && !s.waitDrain) {
        s.waitDrain = true;
        res.once('drain', () => {
          s.waitDrain = false;
          this.#ack(s, true);
        });
      } else if (!s.waitDrain) {
        this.#ack(s, false);
      }
    }
    if (flags & FLAG_END) {
      this.#end(s);
      this.#finish(s);
    }
  }

  /** Returns credit in batches (a quarter window), or all of it once the visitor's socket drained. */
  #ack(s: Stream, force: boolean): void {
    if (s.finished || s.unacked === 0) return;
    if (!force && s.unacked < this.#options.window / 4) return;
    this.#json({ t: 'credit', id: s.id, bytes: s.unacked });
    s.unacked = 0;
  }

  #onClose = (): void => {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#ping);
    for (const s of [...this.#streams.values()]) {
      s.ex.fail(new PtthError('PTTH_ERR_CHANNEL_LOST'));
      this.#finish(s);
    }
    this.events?.closed(this);
  };
}
