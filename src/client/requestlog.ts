import * as http from 'node:http';
import * as https from 'node:https';

/**
 * The gateway's per-name event stream (`GET <private URL>/events`, text/event-stream): one
 * `request` event per visitor exchange, `released` when the name is given up. `connect` prints a
 * line per event and feeds its inspector from it, whatever transport the tunnel speaks.
 */

/** A request's or response's head and the start of its body, as a detail event carries them. */
export interface ExchangeHead {
  /** Flat [name, value, ...] as the gateway saw them. */
  headers: string[];
  /** Base64 of the first KiB of the body. */
  body: string;
  truncated: boolean;
}

export interface ExchangeEvent {
  id: string | number;
  /** ms since the epoch, when the request arrived. */
  time: number;
  method: string;
  /** Path and query. */
  url: string;
  /** 0: no response (the visitor or the app went away). */
  status: number;
  ms: number;
  bytesIn: number;
  bytesOut: number;
  /** An error code, or null. */
  error: string | null;
  remote: string;
  /** With ?detail=1. */
  request?: ExchangeHead & { bodyBytes: number };
  response?: ExchangeHead | null;
}

export interface EventWatchOptions {
  /** Ask for headers and the first KiB of the bodies (?detail=1). */
  detail?: boolean;
  onRequest(event: ExchangeEvent): void;
  /** The gateway said the name was released; the stream has ended. */
  onReleased?(): void;
  /** Whether to reconnect when the stream drops (e.g. while the tunnel is online). Default: always. */
  retry?(): boolean;
  /** A connection attempt failed or was refused; reconnecting in `delay` ms (or not, when delay is undefined). */
  onDrop?(reason: string, delay: number | undefined): void;
  rejectUnauthorized?: boolean;
  /** First reconnect delay in ms (default 250); doubles up to 10 s. */
  backoff?: number;
}

export interface EventWatch {
  /** (Re)starts watching if not watching now, e.g. when the tunnel is back online. */
  start(): void;
  close(): void;
}

/** Splits an SSE byte stream into events (`event:` and `data:` lines; comments ignored). */
export class SseParser {
  #buf = '';
  #event = '';
  #data: string[] = [];
  constructor(private readonly onEvent: (event: string, data: string) => void) {}
  push(chunk: string): void {
    this.#buf += chunk;
    for (let nl = this.#buf.search(/\r\n|\r|\n/); nl >= 0; nl = this.#buf.search(/\r\n|\r|\n/)) {
      const line = this.#buf.slice(0, nl);
      const len = this.#buf.startsWith('\r\n', nl) ? 2 : 1;
      // A lone CR at the end of the buffer may be the first half of a CRLF: wait for more.
      if (len === 1 && this.#buf[nl] === '\r' && nl === this.#buf.length - 1) break;
      this.#buf = this.#buf.slice(nl + len);
      this.#line(line);
    }
    if (this.#buf.length > 8 << 20) this.#buf = ''; // a line without end: drop it rather than grow
  }
  #line(line: string): void {
    if (line === '') {
      if (this.#data.length > 0 || this.#event !== '') this.onEvent(this.#event || 'message', this.#data.join('\n'));
      this.#event = '';
      this.#data = [];
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.#event = value;
    else if (field === 'data') this.#data.push(value);
  }
}

/** A `request` event's data, or undefined when it is not one (the gateway's JSON, checked all the same). */
function exchangeOf(data: string): ExchangeEvent | undefined {
  let parsed: ExchangeEvent;
  try {
    parsed = JSON.parse(data) as ExchangeEvent;
  } catch {
    return undefined;
  }
  return parsed && typeof parsed === 'object' && typeof parsed.method === 'string' ? parsed : undefined;
}

/** Follows `<privateUrl>/events`, reconnecting with backoff while `retry()` says so. */
export function watchEvents(privateUrl: string, options: EventWatchOptions): EventWatch {
  const url = new URL(`${privateUrl.replace(/\/$/, '')}/events${options.detail ? '?detail=1' : ''}`);
  const mod = url.protocol === 'https:' ? https : http;
  const base = options.backoff ?? 250;
  let req: http.ClientRequest | undefined;
  let timer: NodeJS.Timeout | undefined;
  let closed = false;
  let attempt = 0;
  let released = false;

  const again = (reason: string): void => {
    req = undefined;
    if (closed || released) return;
    if (options.retry && !options.retry()) {
      options.onDrop?.(reason, undefined);
      return;
    }
    const exp = Math.min(10_000, base * 2 ** Math.min(attempt++, 10));
    const delay = Math.round(exp / 2 + Math.random() * (exp / 2));
    options.onDrop?.(reason, delay);
    timer = setTimeout(() => {
      timer = undefined;
      open();
    }, delay);
  };

  const open = (): void => {
    if (closed || released || req || timer) return;
    const r = mod.request(url, {
      method: 'GET',
      agent: false,
      headers: { Accept: 'text/event-stream' },
      ...(url.protocol === 'https:' ? { rejectUnauthorized: options.rejectUnauthorized ?? true } : {}),
    });
    req = r;
    let done = false;
    const end = (reason: string): void => {
      if (done) return;
      done = true;
      if (req === r) again(reason);
    };
    r.on('response', (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        const reason = `the gateway answered ${res.statusCode ?? 0} to its event stream`;
        if (res.statusCode === 404 || res.statusCode === 405) {
          // A gateway without the event stream: retrying will not make one (start() tries again).
          done = true;
          if (req === r) req = undefined;
          options.onDrop?.(reason, undefined);
          return;
        }
        end(reason);
        return;
      }
      res.setEncoding('utf8');
      const parser = new SseParser((event, data) => {
        if (event === 'released') {
          released = true;
          options.onReleased?.();
          return;
        }
        if (event !== 'request') return;
        attempt = 0; // a working stream resets the backoff
        const exchange = exchangeOf(data);
        if (exchange) options.onRequest(exchange);
      });
      res.on('data', (c: string) => parser.push(c));
      res.on('end', () => end('the event stream ended'));
      res.on('error', (e) => end(e.message));
      res.on('close', () => end('the event stream closed'));
    });
    r.on('error', (e) => end(e.message));
    r.end();
  };

  return {
    start(): void {
      if (closed) return;
      released = false;
      if (timer && attempt > 0) {
        // Back online: try now rather than after the longest backoff.
        clearTimeout(timer);
        timer = undefined;
      }
      attempt = 0;
      open();
    },
    close(): void {
      closed = true;
      if (timer) clearTimeout(timer);
      req?.destroy();
      req = undefined;
    },
  };
}

/** 1234 -> `1.2 KB`. */
export function formatBytes(n: number): string {
  if (n < 1000) return `${n} B`;
  if (n < 1000 * 1000) return `${(n / 1000).toFixed(1)} KB`;
  if (n < 1000 * 1000 * 1000) return `${(n / 1e6).toFixed(1)} MB`;
  return `${(n / 1e9).toFixed(1)} GB`;
}

const pad2 = (n: number): string => String(n).padStart(2, '0');

/** Local time of day, `18:40:02`. */
export function clock(ms: number): string {
  const d = new Date(ms);
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

/** Control characters (a visitor's URL may hold escapes for the terminal) shown as \xNN. */
function printable(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\x00-\x1f\x7f-\x9f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** `18:40:02  GET  /api/x?y=1  200  12 ms  1.2 KB` (status `---` and the error code when none). */
export function formatLine(e: ExchangeEvent): string {
  const status = e.status > 0 ? String(e.status) : '---';
  const tail = e.error ? `  ${printable(e.error)}` : '';
  const size = formatBytes(e.bytesOut);
  const what = `${printable(e.method)}  ${printable(e.url)}`;
  return `${clock(e.time)}  ${what}  ${status}  ${Math.round(e.ms)} ms  ${size}${tail}`;
}
