import type { IncomingMessage, ServerResponse } from 'node:http';
import { PtthError } from '../http/errors.js';
import { sendError } from '../http/respond.js';
import type { RouteTable } from '../table/table.js';
import type { Registration } from '../table/registration.js';
import type { GatewayContext } from './context.js';

/**
 * A name's event stream (README "Following a name's requests"): `GET <private URL>/events` answers
 * with server-sent events, one `request` event per finished exchange of that name, and `released`
 * when the registration goes. The private URL is the capability: whoever holds it controls the
 * registration already, so it may also see its requests (query strings, and with `?detail=1` heads
 * and the first KiB of bodies).
 *
 * Cost: forward.ts asks `followed()` (one read of a module variable) per request; only while some
 * name has a subscriber does it look the name's topic up, and only while a detail subscriber
 * exists does an exchange copy body bytes.
 */

/** The path under a private URL that serves its event stream. */
export const EVENTS_SUFFIX = '/events';
/** Subscribers one name may have at once (429 PTTH_ERR_TOO_MANY_SUBSCRIBERS past it). */
export const MAX_SUBSCRIBERS = 8;
/** A subscriber with more bytes than this not yet sent is disconnected (it stopped reading). */
export const MAX_UNSENT = 1024 * 1024;
/** Milliseconds between `: keep-alive` comments. */
export const KEEP_ALIVE_MS = 15_000;
/** Body bytes a detail event carries, from the start of each body. */
export const CAPTURE_BYTES = 1024;

/** Names (in all gateways of this process) with at least one subscriber. */
let followedNames = 0;

/** Whether any name has a subscriber: false keeps the per-request path as it was. */
export function followed(): boolean {
  return followedNames !== 0;
}

/** What an exchange reports when it is over (forward.ts's RequestEvent has these fields). */
export interface Finished {
  readonly method: string;
  readonly url: string;
  readonly status: number;
  readonly ms: number;
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly remote: string;
  readonly error: string | undefined;
}

/** The first CAPTURE_BYTES of a request's and a response's bodies (only while a detail subscriber exists). */
export class Capture {
  #request: Buffer[] = [];
  #requestBytes = 0;
  #response: Buffer[] = [];
  #responseBytes = 0;

  request(chunk: unknown, encoding?: unknown): void {
    if (this.#requestBytes >= CAPTURE_BYTES) return;
    this.#requestBytes += keep(this.#request, this.#requestBytes, chunk, encoding);
  }

  response(chunk: unknown, encoding?: unknown): void {
    if (this.#responseBytes >= CAPTURE_BYTES) return;
    this.#responseBytes += keep(this.#response, this.#responseBytes, chunk, encoding);
  }

  get requestBody(): Buffer {
    return Buffer.concat(this.#request);
  }

  get responseBody(): Buffer {
    return Buffer.concat(this.#response);
  }
}

/** Appends what is missing of the first CAPTURE_BYTES to `into`; returns the bytes appended. */
function keep(into: Buffer[], have: number, chunk: unknown, encoding: unknown): number {
  let buf: Buffer;
  if (typeof chunk === 'string') {
    buf = Buffer.from(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8');
  } else if (chunk instanceof Uint8Array) buf = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  else return 0;
  const part = buf.subarray(0, CAPTURE_BYTES - have);
  // A copy: the chunk's memory may be reused once it is written.
  into.push(Buffer.from(part));
  return part.byteLength;
}

interface Subscriber {
  readonly res: ServerResponse;
  readonly detail: boolean;
  readonly timer: NodeJS.Timeout;
  /** Frames not yet written: written together once per turn of the event loop (see Topic.#send). */
  pending: string;
}

/** One name's subscribers. */
export class Topic {
  readonly #hub: Hub;
  readonly #reg: Registration;
  readonly #subs = new Set<Subscriber>();
  #details = 0;
  /** A write of the pending frames is scheduled (setImmediate). */
  #flushing = false;

  constructor(hub: Hub, reg: Registration) {
    this.#hub = hub;
    this.#reg = reg;
  }

  get size(): number {
    return this.#subs.size;
  }

  /** Whether exchanges should copy the start of their bodies. */
  get detail(): boolean {
    return this.#details > 0;
  }

  add(sub: Subscriber): void {
    this.#subs.add(sub);
    if (sub.detail) this.#details++;
  }

  remove(sub: Subscriber): void {
    if (!this.#subs.delete(sub)) return;
    clearInterval(sub.timer);
    if (sub.detail) this.#details--;
    if (this.#subs.size === 0) this.#hub.drop(this.#reg);
  }

  /**
   * Sends one `request` event to every subscriber. `headers` is the flat list forwarded to the app;
   * `capture` holds the bodies' starts when the exchange began with a detail subscriber present.
   */
  publish(ev: Finished, headers: readonly string[], res: ServerResponse, capture: Capture | undefined): void {
    const base = {
      id: this.#hub.nextId++,
      time: Math.round(Date.now() - ev.ms),
      method: ev.method,
      url: ev.url,
      status: ev.status,
      ms: ev.ms,
      bytesIn: ev.bytesIn,
      bytesOut: ev.bytesOut,
      error: ev.error ?? null,
      remote: ev.remote,
    };
    let plain: string | undefined;
    let detailed: string | undefined;
    for (const sub of [...this.#subs]) {
      if (sub.detail) {
        detailed ??= frame('request', { ...base, ...details(ev, headers, res, capture) });
        this.#send(sub, detailed);
      } else {
        plain ??= frame('request', base);
        this.#send(sub, plain);
      }
    }
  }

  /** The registration is gone: `released`, then each stream ends. */
  release(): void {
    const text = frame('released', {});
    for (const sub of [...this.#subs]) {
      this.remove(sub);
      const pending = sub.pending;
      sub.pending = '';
      sub.res.end(pending + text);
    }
  }

  /**
   * Queues `text` for `sub`. Frames finished in one turn of the event loop go out in one write
   * per subscriber: under load many exchanges end per turn, and a write (a system call) per event
   * cost the gateway more than the exchange it reports.
   */
  #send(sub: Subscriber, text: string): void {
    sub.pending += text;
    if (!this.#flushing) {
      this.#flushing = true;
      setImmediate(flushTopic, this);
    }
  }

  /** Writes every subscriber's pending frames (see #send). */
  flush(): void {
    this.#flushing = false;
    for (const sub of [...this.#subs]) {
      if (sub.pending === '') continue;
      const text = sub.pending;
      sub.pending = '';
      sub.res.write(text);
      // Never buffer without bound for a subscriber that stopped reading.
      if (sub.res.writableLength > MAX_UNSENT) {
        this.remove(sub);
        sub.res.destroy();
      }
    }
  }

  /** A keep-alive comment (goes through the same bound). */
  ping(sub: Subscriber): void {
    this.#send(sub, ': keep-alive\n\n');
  }
}

function flushTopic(topic: Topic): void {
  topic.flush();
}

function frame(event: string, data: object): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

function details(
  ev: Finished,
  headers: readonly string[],
  res: ServerResponse,
  capture: Capture | undefined,
): { request: object; response: object | null } {
  // An exchange that began before any detail subscriber copied nothing: its bodies read as truncated.
  const reqBody = capture?.requestBody ?? EMPTY;
  const request = {
    headers: [...headers],
    body: reqBody.toString('base64'),
    bodyBytes: ev.bytesIn,
    truncated: ev.bytesIn > reqBody.byteLength,
  };
  if (ev.status === 0 || !res.headersSent) return { request, response: null };
  const resBody = capture?.responseBody ?? EMPTY;
  const response = {
    headers: sentHeaders(res),
    body: resBody.toString('base64'),
    truncated: ev.bytesOut > resBody.byteLength,
  };
  return { request, response };
}

const EMPTY = Buffer.alloc(0);

/**
 * The response's header fields as they went out (node's own Date, Connection and framing headers
 * included): node keeps the head it wrote in `_header`. Falls back to the stored headers.
 */
function sentHeaders(res: ServerResponse): string[] {
  const raw = (res as unknown as { _header?: unknown })._header;
  const out: string[] = [];
  if (typeof raw === 'string') {
    const lines = raw.split('\r\n');
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i] ?? '';
      const colon = line.indexOf(':');
      if (colon > 0) out.push(line.slice(0, colon), line.slice(colon + 1).trim());
    }
    return out;
  }
  for (const [name, value] of Object.entries(res.getHeaders())) {
    for (const v of Array.isArray(value) ? value : [value]) out.push(name, String(v));
  }
  return out;
}

/** One gateway's topics (by its table) and event ids. */
class Hub {
  nextId = 1;
  readonly topics = new Map<Registration, Topic>();

  constructor(table: RouteTable) {
    table.on('release', (reg: Registration) => this.topics.get(reg)?.release());
  }

  open(reg: Registration): Topic {
    let topic = this.topics.get(reg);
    if (!topic) {
      topic = new Topic(this, reg);
      this.topics.set(reg, topic);
      followedNames++;
    }
    return topic;
  }

  drop(reg: Registration): void {
    if (this.topics.delete(reg)) followedNames--;
  }
}

const hubs = new WeakMap<RouteTable, Hub>();

/** The subscribers of `reg`, if it has any (ask `followed()` first: this is a lookup). */
export function topicOf(ctx: GatewayContext, reg: Registration): Topic | undefined {
  return hubs.get(ctx.table)?.topics.get(reg);
}

/** `GET <private URL>/events`: subscribes the request to `reg`'s exchanges. */
export function followEvents(ctx: GatewayContext, reg: Registration, req: IncomingMessage, res: ServerResponse): void {
  req.resume();
  if (req.method !== 'GET') {
    res.setHeader('Allow', 'GET');
    sendError(res, new PtthError('PTTH_ERR_METHOD_NOT_ALLOWED'), req.headers.accept);
    return;
  }
  let hub = hubs.get(ctx.table);
  if (!hub) {
    hub = new Hub(ctx.table);
    hubs.set(ctx.table, hub);
  }
  if ((hub.topics.get(reg)?.size ?? 0) >= MAX_SUBSCRIBERS) {
    sendError(res, new PtthError('PTTH_ERR_TOO_MANY_SUBSCRIBERS'), req.headers.accept);
    return;
  }
  const topic = hub.open(reg);
  const detail = /[?&]detail=1(&|$)/.test(req.url ?? '');
  const sub: Subscriber = {
    res,
    detail,
    timer: setInterval(() => topic.ping(sub), KEEP_ALIVE_MS).unref(),
    pending: '',
  };
  topic.add(sub);
  res.on('close', () => topic.remove(sub));
  // The stream is meant to idle between requests: the keep-alive comments (and TCP keepalive)
  // watch the connection, not the visitors' idle timeout (which may be shorter than 15 s).
  req.socket.setTimeout(0);
  res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-store' });
  res.write(': ok\n\n');
}
