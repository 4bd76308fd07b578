/**
 * ptth.js: serve HTTP from a browser tab (or any runtime with fetch, Request, Response and
 * WebSocket) through a ptth-proxy gateway. No dependencies; the gateway serves it at `/ptth.js`.
 *
 * ```js
 * import { serve } from 'http://localhost:8080/ptth.js';
 * const server = serve({ name: 'demo' }, (request) => new Response(`hello from a tab: ${request.url}`));
 * console.log('public at', await server.url);
 * ```
 *
 * It opens the gateway's WebSocket channel (many requests at once, bodies streamed with credit-based
 * flow control) and falls back to the ReverseHttp Comet protocol (long polls) when a WebSocket
 * cannot be opened. It reconnects with exponential backoff and keeps its name across reconnects.
 */

import { nameFromPublicUrl, parseLinks } from '../../shared/link.js';
import { fromLatin1, latin1 } from '../../shared/latin1.js';
import { noop } from '../../shared/noop.js';
import { FLAG_END, FRAME_HEADER, MAX_CHUNK, WS_PROTOCOL } from '../../shared/wsframing.js';

export type Transport = 'websocket' | 'comet';

export interface ServeOptions {
  /** Gateway URL (default: the origin this module was loaded from). */
  gateway?: string | URL;
  /** Name to claim (default: the gateway assigns one, kept across reconnects). */
  name?: string;
  /** Secret that holds the name (default: random per `serve` call). */
  token?: string;
  /**
   * Access key, for gateways that require one. Browsers cannot set headers on a WebSocket, so it
   * travels as the `key` query parameter there and as a `key` form field on Comet registrations.
   */
  key?: string;
  /** Seconds the gateway keeps the name while this tab is disconnected. */
  lease?: number;
  /** `auto` (default): WebSocket, falling back to Comet; or force one. */
  transport?: 'auto' | Transport;
  /**
   * Concurrent Comet long polls (default 2). Browsers open about 6 connections per host, and a
   * reply POST must find one free while the polls wait: keep this at 4 or less.
   */
  pollers?: number;
  /**
   * Ask for pipelined Comet polls (default true): every request queued at the gateway comes in one
   * poll (`Accept: application/http`), and their responses go back in one POST.
   */
  pipeline?: boolean;
  /** First reconnect delay in ms (default 250); doubles per failure up to `maxBackoff` (default 30000). */
  backoff?: number;
  maxBackoff?: number;
  /** Aborting it is `close()`. */
  signal?: AbortSignal;
  /** Called each time the server is (back) online. */
  onListen?: (info: ListenInfo) => void;
  /** Errors: a refused claim (fatal), a lost connection (retried), a handler that threw. */
  onError?: (error: Error) => void;
  /** The WebSocket constructor (default: the global one). */
  WebSocket?: typeof WebSocket;
}

export interface ListenInfo {
  /** Public URL of the app. */
  url: string;
  name: string;
  transport: Transport;
  /** Private URL of the registration (GET state, PUT lease/token, DELETE release). */
  location: string;
}

export interface RequestInfo {
  /** The visitor, `address:port`. */
  remoteAddr: string;
  transport: Transport;
}

export type Handler = (request: Request, info: RequestInfo) => Response | Promise<Response>;

export interface PtthServer {
  /** Resolves with the public URL once online; rejects if the gateway refuses the claim for good. */
  readonly url: Promise<string>;
  readonly name: string | undefined;
  readonly transport: Transport | undefined;
  readonly online: boolean;
  /** Resolves once the server stopped (close(), the signal, or a refusal). */
  readonly finished: Promise<void>;
  /** Stops serving; by default also releases the name (DELETE of the private URL). */
  close(options?: { release?: boolean }): Promise<void>;
}

/** The gateway refused the claim (400 bad name/lease/token, 401 key missing or unknown, 403 name held under another token or not allowed for the key...). */
export class ServeError extends Error {
  readonly status: number;
  readonly code: string | undefined;
  // The Node library's ClaimError's order (status, message, code): one shape for both clients.
  constructor(status: number, message: string, code?: string) {
    super(message);
    this.name = 'ServeError';
    this.status = status;
    this.code = code;
  }
}

/** Unsent bytes over which a response body waits for the WebSocket to send what it holds. */
const HIGH_WATER = 1024 * 1024;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function randomToken(): string {
  const bytes = new Uint8Array(18);
  crypto.getRandomValues(bytes);
  return btoa(String.fromCharCode(...bytes))
    .replace(/\+/g, '-')
    .replace(/\//g, '_')
    .replace(/=+$/, '');
}

/** A request head and body for the handler, whichever transport carried it. */
interface Incoming {
  method: string;
  target: string;
  headers: [string, string][];
  body: BodyInit | null;
}

function buildRequest(base: string, inc: Incoming, signal: AbortSignal): Request {
  const headers = new Headers();
  for (const [n, v] of inc.headers) {
    try {
      headers.append(n, v);
    } catch {
      // A name or value the Headers class refuses: the handler cannot see it anyway.
    }
  }
  const init: RequestInit & { duplex?: 'half' } = { method: inc.method, headers, signal };
  if (inc.body !== null && inc.method !== 'GET' && inc.method !== 'HEAD') {
    init.body = inc.body;
    if (inc.body instanceof ReadableStream) init.duplex = 'half';
  }
  const request = new Request(new URL(inc.target, base), init);
  // A Request's own headers drop "forbidden" names (Host, Cookie, ...), which a server needs: the
  // handler sees every header the visitor sent.
  Object.defineProperty(request, 'headers', { value: headers });
  return request;
}

function errorResponse(status: number, text: string): Response {
  return new Response(`${status} ${text}\n`, { status, headers: { 'content-type': 'text/plain; charset=utf-8' } });
}

function responseHeaders(response: Response): string[] {
  const flat: string[] = [];
  response.headers.forEach((value, name) => {
    if (name !== 'set-cookie') flat.push(name, value);
  });
  const cookies = (response.headers as Headers & { getSetCookie?: () => string[] }).getSetCookie?.() ?? [];
  for (const c of cookies) flat.push('set-cookie', c);
  return flat;
}

// ------------------------------------------------------------------------------------------------
// message/http for Comet: the gateway sends the visitor's request as received; the reply goes back
// as an HTTP/1.1 response with a Content-Length.
// ------------------------------------------------------------------------------------------------

function indexOfCrlfCrlf(b: Uint8Array, from = 0): number {
  for (let i = from; i + 3 < b.length; i++)
    if (b[i] === 13 && b[i + 1] === 10 && b[i + 2] === 13 && b[i + 3] === 10) return i;
  return -1;
}

/** A chunked body from `at`: its bytes, and where the message ends (after the last chunk's CRLF). */
function dechunk(b: Uint8Array, at: number): { body: Uint8Array<ArrayBuffer>; end: number } {
  const parts: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    let eol = at;
    while (eol + 1 < b.length && !(b[eol] === 13 && b[eol + 1] === 10)) eol++;
    const size = parseInt(latin1(b.subarray(at, eol)).split(';')[0] ?? '', 16);
    if (!Number.isFinite(size) || size <= 0) {
      // The last chunk, then (no trailers: the gateway relays none) the final CRLF.
      at = Math.min(b.length, eol + 4);
      break;
    }
    parts.push(b.subarray(eol + 2, eol + 2 + size));
    total += size;
    at = eol + 2 + size + 2;
  }
  const out = new Uint8Array(total);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return { body: out, end: at };
}

/**
 * One request message from `at`: the request and where it ends. Without framing, the body is the
 * rest of the bytes when `rest` is set (a lone message/http), else empty (RFC 9112 section 6.3: a
 * request without Content-Length or Transfer-Encoding has no body).
 */
function parseRequestAt(bytes: Uint8Array, at: number, rest: boolean): { inc: Incoming; end: number } {
  const end = indexOfCrlfCrlf(bytes, at);
  if (end === -1) throw new Error('not an HTTP request message');
  const lines = latin1(bytes.subarray(at, end)).split('\r\n');
  const [method = 'GET', target = '/'] = (lines[0] ?? '').split(' ');
  const headers: [string, string][] = [];
  let length: number | undefined;
  let chunked = false;
  for (const line of lines.slice(1)) {
    const c = line.indexOf(':');
    if (c <= 0) continue;
    const name = line.slice(0, c).trim();
    const value = line.slice(c + 1).trim();
    const lower = name.toLowerCase();
    if (lower === 'content-length') length = Number(value);
    if (lower === 'transfer-encoding' && /chunked\s*$/i.test(value)) chunked = true;
    headers.push([name, value]);
  }
  const start = end + 4;
  if (chunked) {
    const { body, end: after } = dechunk(bytes, start);
    return { inc: { method, target, headers, body: body.length > 0 ? body : null }, end: after };
  }
  const size = length ?? (rest ? bytes.length - start : 0);
  if (!Number.isSafeInteger(size) || size < 0 || start + size > bytes.length)
    throw new Error('an HTTP request message is shorter than its framing');
  const body = bytes.slice(start, start + size);
  return { inc: { method, target, headers, body: body.length > 0 ? body : null }, end: start + size };
}

export function parseRequestMessage(bytes: Uint8Array): Incoming {
  return parseRequestAt(bytes, 0, true).inc;
}

/** An `application/http` pipeline of requests (docs/PROTOCOL.md section 5.7), in order. */
export function parseRequestPipeline(bytes: Uint8Array): Incoming[] {
  const out: Incoming[] = [];
  for (let at = 0; at < bytes.length; ) {
    const { inc, end } = parseRequestAt(bytes, at, false);
    out.push(inc);
    at = end;
  }
  return out;
}

async function serializeResponse(response: Response, method: string): Promise<Uint8Array<ArrayBuffer>> {
  const body =
    method === 'HEAD' || response.body === null ? new Uint8Array(0) : new Uint8Array(await response.arrayBuffer());
  let head = `HTTP/1.1 ${response.status} ${response.statusText}\r\n`;
  const flat = responseHeaders(response);
  let declared: string | undefined;
  for (let i = 0; i < flat.length; i += 2) {
    const name = flat[i] as string;
    if (name === 'content-length') declared = flat[i + 1];
    if (name === 'content-length' || name === 'transfer-encoding' || name === 'connection' || name === 'keep-alive')
      continue;
    head += `${name}: ${flat[i + 1] as string}\r\n`;
  }
  // A HEAD answer keeps the length the GET would have had.
  head += `content-length: ${method === 'HEAD' && declared !== undefined ? declared : body.length}\r\n\r\n`;
  // One buffer rather than a Blob: a Blob upload takes an extra trip through the browser's blob store.
  const headBytes = fromLatin1(head);
  const message = new Uint8Array(headBytes.length + body.length);
  message.set(headBytes, 0);
  message.set(body, headBytes.length);
  return message;
}

function concat(parts: readonly Uint8Array[]): Uint8Array<ArrayBuffer> {
  if (parts.length === 1) return parts[0] as Uint8Array<ArrayBuffer>;
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// The WebSocket channel, app side.
// ------------------------------------------------------------------------------------------------

interface Hello {
  name: string;
  url: string;
  location: string;
  window: number;
}

class WsStream {
  readonly id: number;
  readonly abort = new AbortController();
  /** Response bytes we may still send. */
  credit: number;
  #wakeCredit: (() => void) | undefined;
  // Request body.
  #queue: Uint8Array[] = [];
  #ended = false;
  #waiting = false;
  #controller: ReadableStreamDefaultController<Uint8Array> | undefined;
  #consumed = 0;
  #session: WsSession;

  constructor(session: WsSession, id: number, window: number) {
    this.#session = session;
    this.id = id;
    this.credit = window;
  }

  body(): ReadableStream<Uint8Array> {
    return new ReadableStream<Uint8Array>(
      {
        start: (c) => {
          this.#controller = c;
        },
        pull: () => {
          const chunk = this.#queue.shift();
          if (chunk) this.#hand(chunk);
          else if (this.#ended) this.#controller?.close();
          else this.#waiting = true;
        },
        cancel: () => {
          // The handler does not want the rest: keep returning credit so the gateway can finish.
          this.#controller = undefined;
        },
      },
      { highWaterMark: 0 },
    );
  }

  #hand(chunk: Uint8Array): void {
    this.#controller?.enqueue(chunk);
    this.#consumed += chunk.length;
    if (this.#consumed >= this.#session.window / 4 || this.#ended) {
      this.#session.json({ t: 'credit', id: this.id, bytes: this.#consumed });
      this.#consumed = 0;
    }
  }

  data(chunk: Uint8Array, end: boolean): void {
    if (end) this.#ended = true;
    if (!this.#controller) {
      // Cancelled body: consumed at once.
      if (chunk.length > 0) this.#session.json({ t: 'credit', id: this.id, bytes: chunk.length });
      return;
    }
    if (chunk.length > 0) {
      if (this.#waiting) {
        this.#waiting = false;
        this.#hand(chunk);
      } else this.#queue.push(chunk);
    }
    if (this.#ended && this.#queue.length === 0 && this.#waiting) {
      this.#waiting = false;
      this.#controller.close();
    }
  }

  addCredit(bytes: number): void {
    this.credit += bytes;
    const wake = this.#wakeCredit;
    this.#wakeCredit = undefined;
    wake?.();
  }

  waitCredit(): Promise<void> {
    if (this.credit > 0 || this.abort.signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      this.#wakeCredit = resolve;
    });
  }

  fail(reason: string): void {
    this.abort.abort(new Error(reason));
    try {
      this.#controller?.error(new Error(reason));
    } catch {
      // already closed
    }
    this.#controller = undefined;
    this.addCredit(0);
  }
}

class WsSession {
  window = 256 * 1024;
  hello: Hello | undefined;
  #ws: WebSocket;
  #streams = new Map<number, WsStream>();
  #server: Server;

  constructor(server: Server, ws: WebSocket) {
    this.#server = server;
    this.#ws = ws;
  }

  json(msg: Record<string, unknown>): void {
    if (this.#ws.readyState === 1) this.#ws.send(JSON.stringify(msg));
  }

  message(data: unknown): void {
    if (typeof data === 'string') {
      const msg = JSON.parse(data) as Record<string, unknown>;
      const id = msg['id'] as number;
      switch (msg['t']) {
        case 'hello':
          this.window = Number(msg['window']) || this.window;
          this.hello = msg as unknown as Hello;
          this.#server.listening({
            url: this.hello.url,
            name: this.hello.name,
            location: this.hello.location,
            transport: 'websocket',
          });
          return;
        case 'request':
          void this.#serve(msg);
          return;
        case 'credit':
          this.#streams.get(id)?.addCredit(Number(msg['bytes']));
          return;
        case 'abort':
          this.#streams.get(id)?.fail(String(msg['message'] ?? 'aborted by the gateway'));
          this.#streams.delete(id);
          return;
        default:
          return;
      }
    }
    const frame = new Uint8Array(data as ArrayBuffer);
    const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
    const flags = frame[0] ?? 0;
    const stream = this.#streams.get(view.getUint32(1));
    stream?.data(frame.slice(FRAME_HEADER), (flags & FLAG_END) !== 0);
  }

  closed(): void {
    for (const s of this.#streams.values()) s.fail('the connection to the gateway was lost');
    this.#streams.clear();
  }

  async #serve(msg: Record<string, unknown>): Promise<void> {
    const id = msg['id'] as number;
    const stream = new WsStream(this, id, this.window);
    this.#streams.set(id, stream);
    const flat = (msg['headers'] as string[] | undefined) ?? [];
    const headers: [string, string][] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) headers.push([flat[i] as string, flat[i + 1] as string]);
    const method = String(msg['method']);
    const info: RequestInfo = { remoteAddr: String(msg['client'] ?? ''), transport: 'websocket' };
    let response: Response;
    try {
      const body = msg['body'] === true ? stream.body() : null;
      if (body && (method === 'GET' || method === 'HEAD')) void body.cancel();
      const request = buildRequest(
        this.hello?.url ?? 'http://localhost/',
        { method, target: String(msg['url']), headers, body },
        stream.abort.signal,
      );
      response = await this.#server.handle(request, info);
    } catch (err) {
      this.#server.error(err);
      response = errorResponse(500, 'Internal Server Error');
    }
    if (stream.abort.signal.aborted) return;
    const hasBody = response.body !== null && method !== 'HEAD';
    this.json({
      t: 'response',
      id,
      status: response.status,
      statusText: response.statusText,
      headers: responseHeaders(response),
      body: hasBody,
    });
    if (!hasBody) {
      this.#streams.delete(id);
      return;
    }
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    stream.abort.signal.addEventListener('abort', () => void reader.cancel().catch(noop));
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        let at = 0;
        while (at < value.length) {
          await stream.waitCredit();
          while (this.#ws.bufferedAmount > HIGH_WATER && !stream.abort.signal.aborted) await sleep(5);
          if (stream.abort.signal.aborted) return;
          const n = Math.min(value.length - at, stream.credit, MAX_CHUNK);
          this.#frame(id, 0, value.subarray(at, at + n));
          stream.credit -= n;
          at += n;
        }
      }
      this.#frame(id, FLAG_END, new Uint8Array(0));
    } catch (err) {
      if (!stream.abort.signal.aborted) {
        this.#server.error(err);
        this.json({ t: 'abort', id, message: 'the response body failed' });
      }
    } finally {
      this.#streams.delete(id);
    }
  }

  #frame(id: number, flags: number, payload: Uint8Array): void {
    const frame = new Uint8Array(FRAME_HEADER + payload.length);
    frame[0] = flags;
    new DataView(frame.buffer).setUint32(1, id);
    frame.set(payload, FRAME_HEADER);
    if (this.#ws.readyState === 1) this.#ws.send(frame);
  }
}

// ------------------------------------------------------------------------------------------------
// The server: claim, serve, reconnect.
// ------------------------------------------------------------------------------------------------

class Server implements PtthServer {
  readonly url: Promise<string>;
  readonly finished: Promise<void>;
  name: string | undefined;
  transport: Transport | undefined;
  #options: ServeOptions;
  #handler: Handler;
  #gateway: URL;
  #token: string;
  #location: string | undefined;
  #resolveUrl!: (url: string) => void;
  #rejectUrl!: (err: Error) => void;
  #listened = false;
  #online = false;
  #stopped = false;
  #stop = new AbortController();
  #closeWs: (() => void) | undefined;
  #WebSocket: typeof WebSocket | undefined;

  constructor(options: ServeOptions, handler: Handler) {
    this.#options = options;
    this.#handler = handler;
    this.#gateway = new URL(options.gateway ?? new URL('/', import.meta.url).href);
    this.#token = options.token ?? randomToken();
    this.name = options.name;
    this.#WebSocket = options.WebSocket ?? (typeof WebSocket === 'function' ? WebSocket : undefined);
    this.url = new Promise((resolve, reject) => {
      this.#resolveUrl = resolve;
      this.#rejectUrl = reject;
    });
    // An unobserved rejection is not an error of the page: onError and finished report it too.
    this.url.catch(noop);
    options.signal?.addEventListener('abort', () => void this.close());
    this.finished = this.#run();
  }

  get online(): boolean {
    return this.#online;
  }

  handle(request: Request, info: RequestInfo): Promise<Response> {
    return Promise.resolve(this.#handler(request, info));
  }

  error(err: unknown): void {
    this.#options.onError?.(err instanceof Error ? err : new Error(String(err)));
  }

  listening(info: ListenInfo): void {
    this.name = info.name;
    this.transport = info.transport;
    this.#location = info.location;
    this.#online = true;
    if (!this.#listened) {
      this.#listened = true;
      this.#resolveUrl(info.url);
    }
    this.#options.onListen?.(info);
  }

  #params(): URLSearchParams {
    const p = new URLSearchParams();
    if (this.name) p.set('name', this.name);
    p.set('token', this.#token);
    if (this.#options.key !== undefined) p.set('key', this.#options.key);
    if (this.#options.lease !== undefined) p.set('lease', String(this.#options.lease));
    return p;
  }

  async #run(): Promise<void> {
    const mode = this.#options.transport ?? 'auto';
    const base = this.#options.backoff ?? 250;
    const max = this.#options.maxBackoff ?? 30_000;
    let failures = 0;
    while (!this.#stopped) {
      let served = false;
      try {
        if (mode !== 'comet' && this.#WebSocket) served = await this.#websocket();
        if (!served && !this.#stopped && mode !== 'websocket') served = await this.#comet();
        if (!served && !this.#stopped) throw new Error('could not reach the gateway');
      } catch (err) {
        if (err instanceof ServeError && err.status !== 429 && err.status < 500) {
          this.error(err);
          this.#stopped = true;
          this.#rejectUrl(err);
          return;
        }
        if (!this.#stopped) this.error(err);
      }
      this.#online = false;
      if (this.#stopped) break;
      failures = served ? 0 : failures + 1;
      const delay = Math.min(max, base * 2 ** failures);
      await sleep(delay / 2 + Math.random() * (delay / 2));
    }
    this.#rejectUrl(new Error('closed'));
  }

  /** One WebSocket session; true if it came online (then it ended), false if it never opened. */
  #websocket(): Promise<boolean> {
    const Ctor = this.#WebSocket as typeof WebSocket;
    const u = new URL('/', this.#gateway);
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    u.search = this.#params().toString();
    return new Promise((resolve) => {
      let ws: WebSocket;
      try {
        ws = new Ctor(u.href, WS_PROTOCOL);
      } catch {
        resolve(false);
        return;
      }
      ws.binaryType = 'arraybuffer';
      const session = new WsSession(this, ws);
      this.#closeWs = () => ws.close(1000, 'closed');
      ws.onmessage = (ev: MessageEvent) => {
        try {
          session.message(ev.data);
        } catch (err) {
          this.error(err);
          ws.close(1002, 'protocol error');
        }
      };
      ws.onclose = () => {
        this.#closeWs = undefined;
        session.closed();
        if (session.hello && !this.#stopped) this.error(new Error('the WebSocket to the gateway closed'));
        resolve(session.hello !== undefined);
      };
      ws.onerror = noop;
    });
  }

  async #register(): Promise<{ first: string; related: string; location: string; created: boolean }> {
    const res = await fetch(new URL('/reversehttp', this.#gateway), {
      method: 'POST',
      body: this.#params(),
      signal: this.#stop.signal,
    });
    if (res.status !== 201 && res.status !== 204) {
      const text = await res.text().catch(() => '');
      throw new ServeError(
        res.status,
        text.trim() || `the gateway answered ${res.status}`,
        res.headers.get('x-ptth-error') ?? undefined,
      );
    }
    const links = parseLinks(res.headers.get('link'));
    const first = links.get('first');
    const related = links.get('related');
    if (!first || !related) throw new Error('the registration answer has no Link rel="first" and rel="related"');
    return { first, related, location: res.headers.get('location') ?? '', created: res.status === 201 };
  }

  /** One Comet session: a registration and its pollers; true if it came online. */
  async #comet(): Promise<boolean> {
    const reg = await this.#register();
    const name = nameFromPublicUrl(reg.related);
    this.listening({ url: reg.related, name, location: reg.location, transport: 'comet' });
    const chains = [reg.first];
    // Every poller has a chain of its own: one registration refresh each.
    for (let i = 1; i < (this.#options.pollers ?? 2); i++) chains.push((await this.#register()).first);
    await Promise.all(chains.map((url) => this.#pollLoop(url, reg.related)));
    return true;
  }

  async #pollLoop(first: string, base: string): Promise<void> {
    let url = first;
    while (!this.#stopped) {
      let res: Response;
      try {
        // Accept: application/http asks for every queued request at once (section 5.7); it is a
        // CORS-safelisted header, so the poll needs no preflight.
        const headers: Record<string, string> = this.#options.pipeline === false ? {} : { accept: 'application/http' };
        res = await fetch(url, { cache: 'no-store', headers, signal: this.#stop.signal });
      } catch (err) {
        if (!this.#stopped) this.error(err);
        return;
      }
      const next = parseLinks(res.headers.get('link')).get('next');
      if (res.status === 204 && next) {
        url = next;
        continue;
      }
      if (res.status !== 200 || !next) return; // 404, 410: the registration is gone; reconnect
      const bytes = new Uint8Array(await res.arrayBuffer());
      const pipelined = (res.headers.get('content-type') ?? '').toLowerCase().startsWith('application/http');
      const clients = (res.headers.get('requesting-client') ?? '').split(', ');
      let reply: Uint8Array<ArrayBuffer>;
      try {
        const incs = pipelined ? parseRequestPipeline(bytes) : [parseRequestMessage(bytes)];
        // A pipeline's requests are handled concurrently; their responses go back in order, in one POST.
        reply = concat(await Promise.all(incs.map((inc, i) => this.#answer(inc, base, clients[i] ?? ''))));
      } catch (err) {
        // Requests that cannot even be read: an empty pipeline answers none of them (the gateway
        // gives their visitors 502), a lone message gets a 500.
        this.error(err);
        reply = pipelined
          ? new Uint8Array(0)
          : await serializeResponse(errorResponse(500, 'Internal Server Error'), 'GET');
      }
      try {
        // A CORS-safelisted Content-Type: no preflight for each new request URL. The gateway takes
        // the message/http bytes whatever the type says.
        await fetch(url, {
          method: 'POST',
          body: reply,
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          signal: this.#stop.signal,
        });
      } catch (err) {
        if (!this.#stopped) this.error(err);
        return;
      }
      url = next;
    }
  }

  /** One request of a poll answer: the handler's response as HTTP/1.1 bytes (a 500 if it threw). */
  async #answer(inc: Incoming, base: string, remoteAddr: string): Promise<Uint8Array<ArrayBuffer>> {
    const info: RequestInfo = { remoteAddr, transport: 'comet' };
    try {
      const response = await this.handle(buildRequest(base, inc, this.#stop.signal), info);
      return await serializeResponse(response, inc.method);
    } catch (err) {
      this.error(err);
      return serializeResponse(errorResponse(500, 'Internal Server Error'), inc.method);
    }
  }

  async close(options: { release?: boolean } = {}): Promise<void> {
    if (!this.#stopped) {
      this.#stopped = true;
      this.#stop.abort();
      this.#closeWs?.();
      if ((options.release ?? true) && this.#location) {
        await fetch(this.#location, { method: 'DELETE' }).catch(noop);
      }
    }
    await this.finished;
  }
}

/** Serves `handler` at a public URL of the gateway, from this page. */
export function serve(options: ServeOptions, handler: Handler): PtthServer {
  return new Server(options, handler);
}

// RelayHttp from a page: fetch() through the gateway (docs/PROTOCOL.md section 10).
export { relay, RelayError, type RelayInit } from './relay.js';
