/**
 * What every app of the soak run (test/bench/soak.ts) serves, whatever its channel, so that the
 * visitors can check each answer byte for byte:
 *
 *   GET  /hello          `hello world`
 *   GET  /bytes?n=N      N bytes of a fixed pattern (payload(N))
 *   POST /echo           the request body, back
 *   GET  /slow?ms=N      `hello world` after N ms (requests in flight when a channel dies)
 *
 * One answer() and three adapters: node:http (listen() apps), fetch-style (the browser library
 * over the WebSocket channel) and the Comet helper's.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ParsedRequest, SimpleResponse } from '../helpers/comet.js';

export const HELLO = Buffer.from('hello world');
/** Bounds on what a visitor can ask of an app, so a typo cannot make one allocate gigabytes. */
const MAX_BYTES = 8 * 2 ** 20;
const MAX_DELAY = 10_000;

const payloads = new Map<number, Buffer>();
/** N bytes of a fixed pattern; cached, the soak asks for a handful of sizes. */
export function payload(n: number): Buffer {
  let p = payloads.get(n);
  if (!p) payloads.set(n, (p = Buffer.alloc(n, 'ptth soak ')));
  return p;
}

export interface Answer {
  status: number;
  body: Buffer;
  delay: number;
}

export function answer(method: string, url: string, body: Buffer): Answer {
  const u = new URL(url, 'http://app.invalid');
  const num = (key: string, max: number): number => Math.min(max, Math.max(0, Number(u.searchParams.get(key)) || 0));
  switch (u.pathname) {
    case '/hello':
      return { status: 200, body: HELLO, delay: 0 };
    case '/bytes':
      return { status: 200, body: payload(num('n', MAX_BYTES)), delay: 0 };
    case '/echo':
      return method === 'POST'
        ? { status: 200, body, delay: 0 }
        : { status: 405, body: Buffer.from('POST only'), delay: 0 };
    case '/slow':
      return { status: 200, body: HELLO, delay: num('ms', MAX_DELAY) };
    default:
      return { status: 404, body: Buffer.from('no such path'), delay: 0 };
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const TYPE = 'application/octet-stream';

/** node:http request listener (listen() apps, reversed HTTP/1.1 and HTTP/2). */
export function nodeHandler(req: IncomingMessage, res: ServerResponse): void {
  const chunks: Buffer[] = [];
  // A visitor that aborts mid-request ends the stream with an error: expected in a soak.
  req.on('error', () => undefined);
  res.on('error', () => undefined);
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    const a = answer(req.method ?? 'GET', req.url ?? '/', Buffer.concat(chunks));
    const send = (): void => {
      if (res.destroyed) return;
      res.writeHead(a.status, { 'Content-Type': TYPE, 'Content-Length': a.body.length });
      res.end(a.body);
    };
    if (a.delay > 0) setTimeout(send, a.delay);
    else send();
  });
}

/** Fetch-style handler (the browser library's serve()). */
export async function fetchHandler(request: Request): Promise<Response> {
  const u = new URL(request.url);
  const a = answer(request.method, `${u.pathname}${u.search}`, Buffer.from(await request.arrayBuffer()));
  if (a.delay > 0) await sleep(a.delay);
  return new Response(a.body, { status: a.status, headers: { 'Content-Type': TYPE } });
}

/** The Comet helper's handler (test/helpers/comet.ts CometApp). */
export async function cometHandler(req: ParsedRequest): Promise<SimpleResponse> {
  const a = answer(req.method, req.url, req.body);
  if (a.delay > 0) await sleep(a.delay);
  return { status: a.status, headers: [['Content-Type', TYPE]], body: a.body };
}
