/**
 * Bad input from both sides, written as exact bytes on raw sockets against one
 * real gateway: garbage, oversized and flooded heads, conflicting framing, junk in names, tokens
 * and leases on every claim transport, early data, invalid responses from apps over reversed
 * HTTP/1.1 and HTTP/2, slow peers on both sides, and claim floods.
 *
 * Every case must end in a clear status or a closed connection within a bound (never a hang), and
 * runs inside `canaries()`: two healthy apps on the same gateway (reversed HTTP/2 and HTTP/1.1)
 * each hold a request open across the case and answer a fresh one after it, and the gateway
 * process has thrown nothing (uncaught exceptions and rejections are recorded here, not only by
 * vitest) and is still listening.
 */
import type * as http from 'node:http';
import * as http2 from 'node:http2';
import type * as net from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { Tunnel } from '../../src/client/node.js';
import type { GatewayOptions } from '../../src/gateway/server.js';
import {
  closed,
  headEnd,
  rawClaim,
  rawConnect,
  readUntil,
  request,
  sleep,
  startApp,
  startGateway,
  until,
  type Reply,
  type TestGateway,
} from '../helpers/index.js';
import {
  DATA,
  END_HEADERS,
  END_STREAM,
  GOAWAY,
  HEADERS,
  RST_STREAM,
  RawH2App,
  frame,
  headerBlock,
  serveH2,
  u32,
} from '../helpers/h2app.js';

/** Short limits so every timeout below is reached in well under a second or two. */
/** The suite runs on Node 20, 22 and 24; where their HTTP stacks differ, a case says so. */
const NODE_MAJOR = Number(process.versions.node.split('.')[0]);

const OPTIONS: GatewayOptions = {
  headersTimeout: 500,
  responseTimeout: 1_000,
  claimTimeout: 500,
  queueTimeout: 500,
  reconnectWait: 300,
  maxHeaderSize: 8_192,
  maxChannels: 16,
  // PINGs are rare here (the default interval): only a probe after a timeout sends one early.
  pingTimeout: 300,
  bufferLimit: 64 * 1024,
  pollTimeout: 1_000,
};

/**
 * How long a case that waits out a timeout may take before it counts as a hang: ten times the
 * timeout. Wide on purpose (a busy machine runs timers late); what a case asserts about time is
 * that the answer came no earlier than the timeout, and came at all.
 */
const HANG = (timeout: number | undefined): number => 10 * (timeout as number);
/** Slack for timers: node may fire one a millisecond or two early against performance.now(). */
const EARLY = 5;

let gw: TestGateway;
const tunnels: Tunnel[] = [];
const sockets: net.Socket[] = [];
const cleanups: (() => unknown)[] = [];
/** Canary requests held open by the canary apps, by id: calling one answers it. */
const held = new Map<string, () => void>();
/** What escaped the gateway: any entry means the process would have crashed. */
const crashes: unknown[] = [];
const onCrash = (err: unknown): void => {
  crashes.push(err);
};

function noop(): void {}

beforeAll(async () => {
  process.on('uncaughtException', onCrash);
  process.on('unhandledRejection', onCrash);
  gw = await startGateway(OPTIONS);
  const canary =
    (label: string): http.RequestListener =>
    (req, res) => {
      if (req.url?.startsWith('/hold/')) {
        // The head goes out at once (so no response timeout applies) and the body is held open
        // across the case: a response in flight through the gateway the whole time.
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.flushHeaders();
        held.set(req.url.slice('/hold/'.length), () => res.end(`${label} held`));
        return;
      }
      res.end(`${label} ok`);
    };
  // Reversed HTTP/2 (the client library's default) and reversed HTTP/1.1.
  tunnels.push(await startApp(gw.port, canary('h2'), { name: 'canary', token: 'canary-token' }));
  tunnels.push(await startApp(gw.port, canary('h1'), { name: 'canary1', token: 'canary-token', http1: true }));
  expect(tunnels.map((t) => t.protocol)).toEqual(['h2', 'h1']);
});

afterAll(async () => {
  await Promise.all(tunnels.splice(0).map((t) => t.close({ graceMs: 100 })));
  await gw.close();
  process.removeListener('uncaughtException', onCrash);
  process.removeListener('unhandledRejection', onCrash);
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) {
    try {
      await c();
    } catch {
      // best effort
    }
  }
  for (const s of sockets.splice(0)) s.destroy();
});

function visit(name: string, path = '/', extra: Partial<Parameters<typeof request>[1]> = {}): Promise<Reply> {
  return request(gw.port, { host: gw.host(name), path, ...extra });
}

let holds = 0;

/**
 * Runs one bad case while both canaries each hold a request open, then checks that the held
 * requests are answered, fresh ones are too, and the gateway neither crashed nor stopped listening.
 */
async function canaries<T>(fn: () => Promise<T>): Promise<T> {
  const id = String(++holds);
  const keys = [`canary-${id}`, `canary1-${id}`];
  const pending = [visit('canary', `/hold/canary-${id}`), visit('canary1', `/hold/canary1-${id}`)];
  await until(() => keys.every((k) => held.has(k)), 3_000, 'both canaries to hold a request');
  let result: T;
  try {
    result = await fn();
  } finally {
    for (const k of keys) {
      held.get(k)?.();
      held.delete(k);
    }
  }
  const [a, b] = await Promise.all(pending);
  expect([a?.status, a?.body, b?.status, b?.body], 'the canaries answered across the case').toEqual([
    200,
    'h2 held',
    200,
    'h1 held',
  ]);
  const [c, d] = await Promise.all([visit('canary'), visit('canary1')]);
  expect([c.status, c.body, d.status, d.body], 'the canaries answer after the case').toEqual([
    200,
    'h2 ok',
    200,
    'h1 ok',
  ]);
  expect(gw.gateway.server.listening, 'the gateway still listens').toBe(true);
  expect(crashes, 'nothing escaped the gateway').toEqual([]);
  return result;
}

// ---------------------------------------------------------------------------------------------
// Reading what came back

interface Seen {
  /** Status of the first final response, if a head arrived. */
  status: number | undefined;
  text: string;
  /** The gateway closed the connection. */
  closed: boolean;
  /** A whole response (head and framed body) arrived. */
  complete: boolean;
}

/** Splits off a response head; skips interim 1xx responses. */
function finalHead(b: Buffer): { status: number; head: string; bodyAt: number } | undefined {
  let at = 0;
  for (;;) {
    const end = b.indexOf('\r\n\r\n', at);
    if (end === -1) return undefined;
    const head = b.subarray(at, end).toString('latin1');
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1]);
    if (status >= 100 && status < 200 && status !== 101) {
      at = end + 4;
      continue;
    }
    return { status, head, bodyAt: end + 4 };
  }
}

function isComplete(b: Buffer): boolean {
  const h = finalHead(b);
  if (!h) return false;
  // No body whatever the head says (RFC 9110 sections 15.3.5 and 15.4.5).
  if (h.status === 204 || h.status === 304) return true;
  const cl = /\r\ncontent-length:\s*(\d+)/i.exec(h.head);
  if (cl) return b.length >= h.bodyAt + Number(cl[1]);
  if (/\r\ntransfer-encoding:\s*chunked/i.test(h.head)) return b.subarray(h.bodyAt).includes('0\r\n\r\n');
  return h.status === 204 || h.status === 304;
}

/** Reads until a complete response or the connection closes; fails the test on a hang. */
async function outcome(socket: net.Socket, ms = 3_000): Promise<Seen> {
  const buf = await readUntil(socket, isComplete, ms);
  const closed = socket.destroyed;
  const complete = isComplete(buf);
  const text = buf.toString('latin1');
  expect(
    complete || closed,
    `no answer and no close within ${ms} ms (a hang); got ${JSON.stringify(text.slice(0, 200))}`,
  ).toBe(true);
  return { status: finalHead(buf)?.status, text, closed, complete };
}

/** `number`: that status, complete (and, for refusals from the parser, closed); 'closed': no complete response. */
type Expected = number | 'closed';

function check(seen: Seen, expected: Expected, code?: string): void {
  if (expected === 'closed') {
    expect(seen.closed, 'the connection is closed').toBe(true);
    expect(seen.complete, `no complete response; got ${JSON.stringify(seen.text.slice(0, 200))}`).toBe(false);
    return;
  }
  expect(seen.status, seen.text.slice(0, 300)).toBe(expected);
  expect(seen.complete || seen.closed).toBe(true);
  if (code !== undefined) expect(seen.text).toContain(code);
}

async function connect(): Promise<net.Socket> {
  const s = await rawConnect(gw.port);
  s.on('error', noop);
  sockets.push(s);
  return s;
}

/** Writes exact bytes on a fresh connection and reads the outcome. */
async function send(bytes: string | Buffer, ms?: number): Promise<Seen> {
  const s = await connect();
  s.write(bytes);
  return outcome(s, ms);
}

let names = 0;
const fresh = (prefix: string): string => `${prefix}-${++names}`;

// ---------------------------------------------------------------------------------------------
// Visitors

interface Hosts {
  /** Host of the reversed-HTTP/2 canary. */
  h2: string;
  /** Host of the reversed-HTTP/1.1 canary. */
  h1: string;
  /** The gateway's own host. */
  g: string;
}

function hosts(): Hosts {
  return { h2: gw.host('canary'), h1: gw.host('canary1'), g: `localhost:${gw.port}` };
}

const get = (host: string, lines: string[] = [], target = '/'): string =>
  [`GET ${target} HTTP/1.1`, `Host: ${host}`, ...lines, '', ''].join('\r\n');
const post = (host: string, lines: string[], body: string): string =>
  [`POST / HTTP/1.1`, `Host: ${host}`, ...lines, '', body].join('\r\n');

type VisitorCase = [label: string, bytes: (h: Hosts) => string | Buffer, expected: Expected, code?: string];

const VISITOR_CASES: VisitorCase[] = [
  ['binary garbage', () => Buffer.from([0x00, 0x01, 0x02, 0xff, 0xfe, 0x0d, 0x0a, 0x0d, 0x0a]), 400],
  ['the HTTP/2 preface on the HTTP/1.1 port', () => 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 400],
  ['a bare-LF head', (h) => `GET / HTTP/1.1\nHost: ${h.h2}\n\n`, 400],
  ['an unknown HTTP version', (h) => `GET / HTTP/9.9\r\nHost: ${h.h2}\r\n\r\n`, 400],
  ['a control character in the request-target', (h) => get(h.h2, [], '/a\x01b'), 400],
  ['a space in the request-target', (h) => get(h.h2, [], '/a b'), 400],
  ['a request line longer than maxHeaderSize', (h) => get(h.h2, [], `/${'a'.repeat(10_000)}`), 431],
  [
    '2,000 small headers, over maxHeaderSize',
    (h) =>
      get(
        h.h2,
        Array.from({ length: 2_000 }, () => 'a: b'),
      ),
    431,
  ],
  [
    '500 small headers within maxHeaderSize (reversed HTTP/2 app)',
    (h) =>
      get(
        h.h2,
        Array.from({ length: 500 }, (_, i) => `x-${i}: b`),
      ),
    431,
    'PTTH_ERR_TOO_MANY_HEADERS',
  ],
  [
    '500 small headers within maxHeaderSize (reversed HTTP/1.1 app)',
    (h) =>
      get(
        h.h1,
        Array.from({ length: 500 }, (_, i) => `x-${i}: b`),
      ),
    431,
    'PTTH_ERR_TOO_MANY_HEADERS',
  ],
  ['a bare CR in a header value', (h) => get(h.h2, ['X-A: a\rb']), 400],
  ['a NUL in a header value', (h) => get(h.h2, ['X-A: a\0b']), 400],
  ['a LF inside a header name', (h) => get(h.h2, ['X-\nA: b']), 400],
  ['a space before the colon', (h) => `GET / HTTP/1.1\r\nHost : ${h.h2}\r\n\r\n`, 400],
  ['an obs-fold continuation line', (h) => get(h.h1, ['X-A: a', ' folded']), 400],
  ['a header name with separators', (h) => get(h.h2, ['X{}: 1']), 400],
  ['no Host on HTTP/1.1', () => 'GET / HTTP/1.1\r\n\r\n', 400],
  ['a CR in the Host', (h) => `GET / HTTP/1.1\r\nHost: ${h.h2}\rx\r\n\r\n`, 400],
  [
    'Content-Length with Transfer-Encoding: chunked (CL.TE)',
    (h) => post(h.h1, ['Content-Length: 5', 'Transfer-Encoding: chunked'], '0\r\n\r\n'),
    400,
  ],
  [
    'Transfer-Encoding: chunked with Content-Length (TE.CL)',
    (h) => post(h.h2, ['Transfer-Encoding: chunked', 'Content-Length: 5'], '0\r\n\r\n'),
    400,
  ],
  ['two different Content-Lengths', (h) => post(h.h1, ['Content-Length: 5', 'Content-Length: 6'], 'hello!'), 400],
  ['a Content-Length list', (h) => post(h.h2, ['Content-Length: 5, 5'], 'hello'), 400],
  ['a Content-Length with a sign', (h) => post(h.h2, ['Content-Length: +5'], 'hello'), 400],
  ['a negative Content-Length', (h) => post(h.h2, ['Content-Length: -1'], ''), 400],
  ['a Content-Length past 2^64', (h) => post(h.h1, ['Content-Length: 99999999999999999999999'], ''), 400],
  ['chunked not last in Transfer-Encoding', (h) => post(h.h1, ['Transfer-Encoding: chunked, gzip'], '0\r\n\r\n'), 400],
  ['Transfer-Encoding: identity', (h) => post(h.h2, ['Transfer-Encoding: identity'], ''), 400],
  [
    'Transfer-Encoding twice',
    (h) => post(h.h1, ['Transfer-Encoding: chunked', 'Transfer-Encoding: chunked'], '0\r\n\r\n'),
    400,
  ],
  [
    'an invalid chunk size (reversed HTTP/1.1 app)',
    (h) => post(h.h1, ['Transfer-Encoding: chunked'], 'zz\r\nhello\r\n0\r\n\r\n'),
    400,
  ],
  [
    'an invalid chunk size (reversed HTTP/2 app)',
    (h) => post(h.h2, ['Transfer-Encoding: chunked'], 'zz\r\nhello\r\n0\r\n\r\n'),
    400,
  ],
  ['a chunk size past 2^64', (h) => post(h.h2, ['Transfer-Encoding: chunked'], 'fffffffffffffffffff\r\nx\r\n'), 400],
  [
    'a CONNECT to an app host',
    (h) => `CONNECT ${h.h2} HTTP/1.1\r\nHost: ${h.h2}\r\n\r\n`,
    405,
    'PTTH_ERR_METHOD_NOT_ALLOWED',
  ],
  ['a Host with a space in it', (h) => get(`fo o.localhost:${h.g.split(':')[1]}`), 400, 'PTTH_ERR_BAD_HOST'],
  [
    'a Host with a label starting with a hyphen',
    (h) => get(`-x-.localhost:${h.g.split(':')[1]}`),
    404,
    'PTTH_ERR_NOT_FOUND',
  ],
  // Bytes llhttp lets through are the app's business: they reach it and its answer comes back.
  [
    'latin-1 bytes in a header value (reversed HTTP/2 app)',
    (h) => Buffer.from(get(h.h2, ['X-L: \u00e9\u00ff']), 'latin1'),
    200,
  ],
  [
    'latin-1 bytes in a header value (reversed HTTP/1.1 app)',
    (h) => Buffer.from(get(h.h1, ['X-L: \u00e9\u00ff']), 'latin1'),
    200,
  ],
  ['an empty header value', (h) => get(h.h2, ['X-Empty:']), 200],
  ['an absolute-form request-target (reversed HTTP/1.1 app)', (h) => get(h.h1, [], `http://${h.h1}/x?y=1`), 200],
  ['an absolute-form request-target (reversed HTTP/2 app)', (h) => get(h.h2, [], `http://${h.h2}/x?y=1`), 200],
  ['OPTIONS * (reversed HTTP/2 app)', (h) => `OPTIONS * HTTP/1.1\r\nHost: ${h.h2}\r\n\r\n`, 200],
  [
    'an upgrade to an unknown protocol (reversed HTTP/2 app)',
    (h) => get(h.h2, ['Upgrade: foo', 'Connection: Upgrade']),
    502,
    'PTTH_ERR_UPGRADE_UNSUPPORTED',
  ],
];

describe('visitors sending bad bytes', () => {
  it.each(VISITOR_CASES)('%s', async (_label, bytes, expected, code) => {
    await canaries(async () => check(await send(bytes(hosts())), expected, code));
  });

  // A head the parser refuses ends the connection: nothing after it on that connection can be
  // trusted to start a new request.
  it.each<VisitorCase>([
    ['a garbage request line', () => 'GARBAGE\r\n\r\n', 400],
    ['one header longer than maxHeaderSize', (h) => get(h.h1, [`X-Big: ${'b'.repeat(10_000)}`]), 431],
  ])('%s: that status, then the connection closes', async (_label, bytes, expected) => {
    await canaries(async () => {
      const s = await connect();
      s.write(bytes(hosts()));
      check(await outcome(s), expected);
      expect(s.destroyed || (await closed(s, 5_000))).toBe(true);
    });
  });

  // Node folds repeated Host lines to the first; the app would see both (RFC 9112 section 3.2: 400).
  it('two Host headers are refused with 400 (RFC 9112 section 3.2), never routed by one and read by the app as the other', async () => {
    await canaries(async () => {
      const h = hosts();
      check(await send(get(h.h1, [`Host: evil.localhost:${gw.port}`])), 400);
    });
  });

  it('a valid request pipelined with garbage: a 400 and the connection closes, no hang', async () => {
    // llhttp fails on the garbage while the first request is still with its app: the 400 goes
    // out at once (as node's own clientError default does) and the connection ends.
    await canaries(async () => {
      const s = await connect();
      s.write(`${get(hosts().h1)}GARBAGE\r\n\r\n`);
      const got = (await readUntil(s, () => false, 2_000)).toString('latin1');
      expect(got).toMatch(/HTTP\/1\.1 400 /);
      expect(s.destroyed).toBe(true);
    });
  });

  it('8 KiB of empty lines before a request: a clear status, no hang', async () => {
    await canaries(async () => {
      // llhttp skips empty lines before a request line (RFC 9112 section 2.2) without counting them
      // toward maxHeaderSize, on Node 20, 22 and 24 alike: the request is served.
      const seen = await send(`${'\r\n'.repeat(4_096)}${get(hosts().h1)}`);
      check(seen, 200);
      expect(seen.text.endsWith('\r\n\r\nh1 ok'), seen.text.slice(0, 300)).toBe(true);
    });
  });
});

// ---------------------------------------------------------------------------------------------
// Claims: native PTTH/1.0 and ptth + h2, WebSocket channels, Comet

const ptthClaim = (
  g: string,
  query: string,
  lines: string[] = ['Upgrade: PTTH/1.0', 'Connection: Upgrade'],
  body = '',
): string =>
  [`POST /${query} HTTP/1.1`, `Host: ${g}`, ...lines, `Content-Length: ${Buffer.byteLength(body)}`, '', body].join(
    '\r\n',
  );

const wsClaim = (g: string, query: string, lines: string[] = [], method = 'GET'): string =>
  [
    `${method} /${query} HTTP/1.1`,
    `Host: ${g}`,
    'Upgrade: websocket',
    'Connection: Upgrade',
    'Sec-WebSocket-Protocol: ptth.v1',
    ...(lines.length > 0 ? lines : ['Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version: 13']),
    '',
    '',
  ].join('\r\n');

const cometForm = (g: string, form: string, lines: string[] = []): string =>
  [
    `POST /reversehttp HTTP/1.1`,
    `Host: ${g}`,
    'Content-Type: application/x-www-form-urlencoded',
    ...lines,
    `Content-Length: ${Buffer.byteLength(form)}`,
    '',
    form,
  ].join('\r\n');

type ClaimCase = [label: string, bytes: (g: string) => string | Buffer, expected: Expected, code?: string];

const CLAIM_CASES: ClaimCase[] = [
  // Native claims, with Connection: Upgrade unless said otherwise.
  ['PTTH: CR LF in the name', (g) => ptthClaim(g, '?name=a%0D%0Ab'), 400, 'PTTH_ERR_BAD_NAME'],
  ['PTTH: NUL in the name', (g) => ptthClaim(g, '?name=a%00b'), 400, 'PTTH_ERR_BAD_NAME'],
  ['PTTH: a 300-character name', (g) => ptthClaim(g, `?name=${'a'.repeat(300)}`), 400, 'PTTH_ERR_BAD_NAME'],
  ['PTTH: a non-ASCII name', (g) => ptthClaim(g, '?name=caf%C3%A9'), 400, 'PTTH_ERR_BAD_NAME'],
  ['PTTH: broken percent-encoding in the name', (g) => ptthClaim(g, '?name=%ZZ'), 400, 'PTTH_ERR_BAD_NAME'],
  ['PTTH: two labels in the name', (g) => ptthClaim(g, '?name=a.b'), 400, 'PTTH_ERR_BAD_NAME'],
  [
    'PTTH: junk in the name from the Host',
    (g) => ptthClaim(`a_b.localhost:${g.split(':')[1]}`, ''),
    400,
    'PTTH_ERR_BAD_NAME',
  ],
  [
    'PTTH: junk name without Connection: Upgrade',
    (g) => ptthClaim(g, '?name=a%0Ab', ['Upgrade: PTTH/1.0']),
    400,
    'PTTH_ERR_BAD_NAME',
  ],
  ['PTTH: CR LF in the token', (g) => ptthClaim(g, '?name=tok1&token=a%0D%0Ab'), 400, 'PTTH_ERR_BAD_TOKEN'],
  ['PTTH: NUL in the token', (g) => ptthClaim(g, '?name=tok2&token=a%00b'), 400, 'PTTH_ERR_BAD_TOKEN'],
  ['PTTH: a space in the token', (g) => ptthClaim(g, '?name=tok3&token=a+b'), 400, 'PTTH_ERR_BAD_TOKEN'],
  [
    'PTTH: a 300-character token',
    (g) => ptthClaim(g, `?name=tok4&token=${'t'.repeat(300)}`),
    400,
    'PTTH_ERR_BAD_TOKEN',
  ],
  ['PTTH: CR LF in the lease', (g) => ptthClaim(g, '?name=lease1&lease=5%0D%0A'), 400, 'PTTH_ERR_BAD_LEASE'],
  ['PTTH: a lease in exponent notation', (g) => ptthClaim(g, '?name=lease2&lease=1e3'), 400, 'PTTH_ERR_BAD_LEASE'],
  ['PTTH: a hexadecimal lease', (g) => ptthClaim(g, '?name=lease3&lease=0x10'), 400, 'PTTH_ERR_BAD_LEASE'],
  ['PTTH: a negative lease', (g) => ptthClaim(g, '?name=lease4&lease=-1'), 400, 'PTTH_ERR_BAD_LEASE'],
  [
    'PTTH: junk in a form body',
    (g) =>
      ptthClaim(
        g,
        '',
        ['Upgrade: PTTH/1.0', 'Connection: Upgrade', 'Content-Type: application/x-www-form-urlencoded'],
        'name=a%0Db',
      ),
    400,
    'PTTH_ERR_BAD_NAME',
  ],
  [
    'PTTH: a raw CR in the request line',
    (g) => `POST /?name=a\rb HTTP/1.1\r\nHost: ${g}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n`,
    400,
  ],
  [
    'PTTH: Content-Length with Transfer-Encoding',
    (g) => ptthClaim(g, '?name=clte', ['Upgrade: PTTH/1.0', 'Connection: Upgrade', 'Transfer-Encoding: chunked']),
    400,
  ],
  [
    'PTTH: a chunked body with Connection: Upgrade',
    (g) =>
      `POST /?name=chunky HTTP/1.1\r\nHost: ${g}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
    400,
    'PTTH_ERR_CHUNKED_CLAIM',
  ],
  [
    'PTTH: a body over claimBodyLimit',
    (g) => ptthClaim(g, '?name=fat', ['Upgrade: PTTH/1.0', 'Connection: Upgrade'], 'x'.repeat(9_000)),
    413,
  ],
  [
    'PTTH: early data after the claim',
    (g) => `${ptthClaim(g, '?name=early1')}GET / HTTP/1.1\r\n\r\n`,
    400,
    'PTTH_ERR_BAD_PARAMS',
  ],
  [
    'PTTH: early data after the claim, without Connection: Upgrade',
    (g) => `${ptthClaim(g, '?name=early2', ['Upgrade: PTTH/1.0'])}HTTP/1.1 200 OK\r\n\r\n`,
    400,
  ],
  [
    'PTTH: an HTTP/1.0 claim',
    (g) =>
      `POST /?name=old HTTP/1.0\r\nHost: ${g}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n`,
    400,
    'PTTH_ERR_HTTP10_UPGRADE',
  ],
  [
    'PTTH: a declared body that never comes',
    (g) =>
      ptthClaim(g, '?name=never1', ['Upgrade: PTTH/1.0', 'Connection: Upgrade']).replace(
        'Content-Length: 0',
        'Content-Length: 50',
      ),
    400,
  ],
  [
    'PTTH: a declared body that never comes, without Connection: Upgrade',
    (g) => ptthClaim(g, '?name=never2', ['Upgrade: PTTH/1.0']).replace('Content-Length: 0', 'Content-Length: 50'),
    400,
  ],
  [
    'PTTH: a head over maxHeaderSize',
    (g) => ptthClaim(g, '?name=bighead', ['Upgrade: PTTH/1.0', 'Connection: Upgrade', `X-Big: ${'b'.repeat(10_000)}`]),
    431,
  ],
  [
    'PTTH: 500 small headers',
    (g) =>
      ptthClaim(g, '?name=flood', [
        'Upgrade: PTTH/1.0',
        'Connection: Upgrade',
        ...Array.from({ length: 500 }, (_, i) => `x-${i}: b`),
      ]),
    431,
    'PTTH_ERR_TOO_MANY_HEADERS',
  ],
  [
    'PTTH: CONNECT with Upgrade: PTTH/1.0',
    (g) => `CONNECT ${g} HTTP/1.1\r\nHost: ${g}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n`,
    405,
    'PTTH_ERR_METHOD_NOT_ALLOWED',
  ],
  [
    'ptth: a junk ALPN',
    (g) => ptthClaim(g, '?name=alpn1', ['Upgrade: ptth', 'Connection: Upgrade', 'ALPN: %ZZ']),
    400,
    'PTTH_ERR_UNSUPPORTED_UPGRADE',
  ],
  [
    'ptth: only an ALPN the gateway does not speak',
    (g) => ptthClaim(g, '?name=alpn2', ['Upgrade: ptth', 'Connection: Upgrade', 'ALPN: h3']),
    400,
    'PTTH_ERR_UNSUPPORTED_UPGRADE',
  ],
  [
    'ptth: junk in the name',
    (g) => ptthClaim(g, '?name=%0D%0A', ['Upgrade: ptth', 'Connection: Upgrade', 'ALPN: h2']),
    400,
    'PTTH_ERR_BAD_NAME',
  ],
  [
    'ptth: early data after the claim',
    (g) =>
      `${ptthClaim(g, '?name=early3', ['Upgrade: ptth', 'Connection: Upgrade', 'ALPN: h2'])}PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`,
    400,
    'PTTH_ERR_BAD_PARAMS',
  ],
  // WebSocket channel claims.
  [
    'WebSocket: no Sec-WebSocket-Key',
    (g) => wsClaim(g, '?name=ws1', ['Sec-WebSocket-Version: 13']),
    400,
    'PTTH_ERR_NOT_WEBSOCKET',
  ],
  [
    'WebSocket: a malformed key',
    (g) => wsClaim(g, '?name=ws2', ['Sec-WebSocket-Key: not-base64!', 'Sec-WebSocket-Version: 13']),
    400,
    'PTTH_ERR_NOT_WEBSOCKET',
  ],
  [
    'WebSocket: version 8',
    (g) => wsClaim(g, '?name=ws3', ['Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version: 8']),
    400,
    'PTTH_ERR_NOT_WEBSOCKET',
  ],
  ['WebSocket: POST instead of GET', (g) => wsClaim(g, '?name=ws4', [], 'POST'), 400, 'PTTH_ERR_NOT_WEBSOCKET'],
  ['WebSocket: CR LF in the name', (g) => wsClaim(g, '?name=a%0D%0Ab'), 400, 'PTTH_ERR_BAD_NAME'],
  ['WebSocket: junk in the token', (g) => wsClaim(g, '?name=ws5&token=a%00b'), 400, 'PTTH_ERR_BAD_TOKEN'],
  ['WebSocket: junk in the lease', (g) => wsClaim(g, '?name=ws6&lease=%0A'), 400, 'PTTH_ERR_BAD_LEASE'],
  // Comet registrations and request URLs.
  ['Comet: CR LF in the name', (g) => cometForm(g, 'name=a%0D%0Ab'), 400, 'PTTH_ERR_BAD_NAME'],
  ['Comet: junk in the token', (g) => cometForm(g, 'name=cm1&token=a%0Ab'), 400, 'PTTH_ERR_BAD_TOKEN'],
  ['Comet: junk in the lease', (g) => cometForm(g, 'name=cm2&lease=12abc'), 400, 'PTTH_ERR_BAD_LEASE'],
  ['Comet: a form over claimBodyLimit', (g) => cometForm(g, `name=cm3&pad=${'x'.repeat(9_000)}`), 413],
  ['Comet: GET on the service URL', (g) => get(g, [], '/reversehttp'), 405],
  [
    'Comet: binary junk as a request URL',
    (g) =>
      Buffer.concat([
        Buffer.from('GET /reversehttp/'),
        Buffer.from([0xc3, 0xff, 0x80]),
        Buffer.from(`/0 HTTP/1.1\r\nHost: ${g}\r\n\r\n`),
      ]),
    400,
  ],
  [
    'Comet: a reply to an unknown request URL',
    (g) =>
      post(g, ['Content-Type: message/http', 'Content-Length: 19'], 'HTTP/1.1 200 OK\r\n\r\n').replace(
        'POST /',
        'POST /reversehttp/nosuchsession/0',
      ),
    404,
  ],
];

describe('claimants sending bad bytes', () => {
  it.each(CLAIM_CASES)('%s', async (_label, bytes, expected, code) => {
    await canaries(async () => {
      const seen = await send(bytes(`localhost:${gw.port}`));
      check(seen, expected, code);
      expect(seen.text, 'never a 101').not.toMatch(/^HTTP\/1\.1 101 /m);
    });
  });

  it('refused claims leave no registration behind', async () => {
    // Names the refused cases above claim that would be valid names on their own: each case is
    // driven again here, so this test stands alone, run with the others or by itself.
    const NAMES = [
      'tok1',
      'tok2',
      'lease1',
      'lease2',
      'clte',
      'chunky',
      'fat',
      'early1',
      'early2',
      'early3',
      'old',
      'never1',
      'never2',
      'flood',
      'alpn1',
      'alpn2',
      'ws1',
      'ws2',
      'ws3',
      'ws4',
      'ws5',
      'ws6',
      'cm1',
      'cm2',
      'cm3',
    ];
    const g = `localhost:${gw.port}`;
    const before = gw.gateway.table
      .list()
      .map((r) => r.name)
      .sort();
    for (const name of NAMES) expect(before, `${name} is not held before the refusals`).not.toContain(name);
    const driven = new Set<string>();
    for (const [label, bytes, expected, code] of CLAIM_CASES) {
      const raw = bytes(g);
      const text = typeof raw === 'string' ? raw : raw.toString('latin1');
      for (const name of NAMES) if (new RegExp(`name=${name}(&| |$)`).test(text)) driven.add(name);
      const seen = await send(raw);
      expect(seen.text, `${label}: never a 101`).not.toMatch(/^HTTP\/1\.1 101 /m);
      check(seen, expected, code);
    }
    expect([...driven].sort(), 'every name was claimed by a refused case').toEqual([...NAMES].sort());
    for (const name of NAMES) expect(gw.gateway.table.lookup(name), name).toBeUndefined();
    expect(
      gw.gateway.table
        .list()
        .map((r) => r.name)
        .sort(),
      'no registration came or went',
    ).toEqual(before);
    // The check can fail: the same claim with a valid token registers its name.
    const control = fresh('control');
    const ok = await rawClaim(gw.port, ptthClaim(g, `?name=${control}&token=t`));
    sockets.push(ok.socket);
    expect(ok.head).toMatch(/^HTTP\/1\.1 101 /);
    await until(() => gw.gateway.table.lookup(control) !== undefined, 2_000, 'the control claim to register');
  });

  // The idle timeout never fires while bytes trickle: the registration form has claimTimeout, like native claims.
  it('a Comet registration whose body never arrives is answered within claimTimeout, not held open', async () => {
    await canaries(async () => {
      const s = await connect();
      const started = performance.now();
      s.write(
        cometForm(`localhost:${gw.port}`, 'name=trickle&pad=').replace(/Content-Length: \d+/, 'Content-Length: 200'),
      );
      const trickle = setInterval(() => s.writable && s.write('x'), 100);
      cleanups.push(() => clearInterval(trickle));
      const seen = await outcome(s, HANG(OPTIONS.claimTimeout));
      check(seen, 408, 'PTTH_ERR_BODY_TIMEOUT');
      expect(performance.now() - started).toBeGreaterThanOrEqual(OPTIONS.claimTimeout! - EARLY);
      expect(await closed(s)).toBe(true);
      expect(gw.gateway.table.lookup('trickle')).toBeUndefined();
    });
  });

  it('a private URL update (PUT) whose body never arrives gets 408 within claimTimeout and the connection closes', async () => {
    await canaries(async () => {
      const name = fresh('putslow');
      const claim = await rawClaim(
        gw.port,
        `POST /?name=${name}&token=t HTTP/1.1\r\nHost: localhost:${gw.port}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n`,
      );
      cleanups.push(() => claim.socket.destroy());
      const location = /\r\nLocation: (\S+)\r\n/.exec(claim.head)?.[1] ?? '';
      const path = new URL(location).pathname;
      const s = await connect();
      const started = performance.now();
      s.write(
        `PUT ${path} HTTP/1.1\r\nHost: localhost:${gw.port}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\nlease=`,
      );
      const trickle = setInterval(() => s.writable && s.write('1'), 100);
      cleanups.push(() => clearInterval(trickle));
      const seen = await outcome(s, HANG(OPTIONS.claimTimeout));
      expect(performance.now() - started).toBeGreaterThanOrEqual(OPTIONS.claimTimeout! - EARLY);
      check(seen, 408, 'PTTH_ERR_BODY_TIMEOUT');
      expect(await closed(s)).toBe(true);
    });
  });

  it('a WebSocket channel that sends bytes that are no WebSocket frames is closed; its name stays free of a dead channel', async () => {
    await canaries(async () => {
      const name = fresh('wsjunk');
      const s = await connect();
      s.write(wsClaim(`localhost:${gw.port}`, `?name=${name}`));
      const head = (await readUntil(s, headEnd, 2_000)).toString('latin1');
      expect(head).toMatch(/^HTTP\/1\.1 101 /);
      await until(() => gw.gateway.table.lookup(name)?.channels.length === 1, 2_000, 'the WebSocket channel');
      // Unmasked, reserved opcode, absurd length: ws refuses it (RFC 6455 section 5.1).
      s.write(Buffer.from([0x8f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]));
      await readUntil(s, () => false, 2_000);
      expect(s.destroyed).toBe(true);
      await until(() => gw.registration(name).channels.length === 0, 2_000, 'the channel to leave the registration');
    });
  });

  it('a ptth + h2 claimant that answers the preface with garbage loses its channel; its visitors get a status, not a hang', async () => {
    await canaries(async () => {
      const name = fresh('h2junk');
      const c = await rawClaim(
        gw.port,
        ptthClaim(`localhost:${gw.port}`, `?name=${name}`, ['Upgrade: ptth', 'Connection: Upgrade', 'ALPN: h2']),
      );
      c.socket.on('error', noop);
      sockets.push(c.socket);
      expect(c.head).toMatch(/^HTTP\/1\.1 101 /);
      c.socket.write('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nthis is not HTTP/2');
      c.socket.resume();
      const seen = await outcome(await visitSocket(name), 3_000);
      // The connection never became a channel that takes requests (no SETTINGS ever came), so the
      // visitor waited for one as during a reconnect, and the name has none when that wait ends.
      expect(seen.status).toBe(503);
      expect(seen.text).toContain('X-Ptth-Error: PTTH_ERR_NO_CHANNEL');
      await until(() => gw.registration(name).channels.length === 0, 2_000, 'the channel to close');
      expect(gw.registration(name).waiting).toBe(0);
    });
  });

  it('a Comet app posting a reply that is not HTTP gets 400, and its visitor 502', async () => {
    await canaries(async () => {
      const name = fresh('cometjunk');
      const r = await request(gw.port, {
        host: `localhost:${gw.port}`,
        method: 'POST',
        path: '/reversehttp',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: `name=${name}&token=t`,
      });
      expect(r.status).toBe(201);
      const first = /<([^>]+)>;\s*rel="first"/.exec(String(r.headers.link))?.[1] as string;
      const path = new URL(first).pathname;
      const visitor = visit(name, '/x');
      const poll = await request(gw.port, { host: `localhost:${gw.port}`, path });
      expect(poll.status).toBe(200);
      const reply = await request(gw.port, {
        host: `localhost:${gw.port}`,
        method: 'POST',
        path,
        headers: { 'content-type': 'message/http' },
        body: Buffer.from([0x00, 0xff, 0x0d, 0x0a, 0x0d, 0x0a]),
      });
      expect(reply.status).toBe(400);
      expect((await visitor).status).toBe(502);
    });
  });
});

// ---------------------------------------------------------------------------------------------
// Apps answering with invalid responses: reversed HTTP/1.1

/** A visitor connection that has sent a GET for `name`. */
async function visitSocket(name: string, path = '/'): Promise<net.Socket> {
  const s = await connect();
  s.write(`GET ${path} HTTP/1.1\r\nHost: ${gw.host(name)}\r\n\r\n`);
  return s;
}

/** A raw reversed-HTTP/1.1 app: claims `name` and returns its socket (the test writes its answers). */
async function rawH1App(name: string): Promise<net.Socket> {
  const c = await rawClaim(gw.port, ptthClaim(`localhost:${gw.port}`, `?name=${name}&token=t`));
  expect(c.head).toMatch(/^HTTP\/1\.1 101 /);
  c.socket.on('error', noop);
  sockets.push(c.socket);
  return c.socket;
}

type AppCase = [
  label: string,
  answer: string | Buffer | ((app: net.Socket) => void),
  expected: Expected,
  code?: string,
];

const H1_APP_CASES: AppCase[] = [
  ['garbage', 'GARBAGE\r\n\r\n', 502, 'PTTH_ERR_BAD_RESPONSE'],
  ['binary bytes', Buffer.from([0x00, 0x01, 0xff, 0x0d, 0x0a, 0x0d, 0x0a]), 502, 'PTTH_ERR_BAD_RESPONSE'],
  ['a four-digit status', 'HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n', 502, 'PTTH_ERR_BAD_RESPONSE'],
  ['a status below 100', 'HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n', 502, 'PTTH_ERR_BAD_RESPONSE'],
  ['a status that is not a number', 'HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n', 502, 'PTTH_ERR_BAD_RESPONSE'],
  [
    'Content-Length with Transfer-Encoding: chunked',
    'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
    502,
    'PTTH_ERR_BAD_RESPONSE',
  ],
  [
    'two different Content-Lengths',
    'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!',
    502,
    'PTTH_ERR_BAD_RESPONSE',
  ],
  [
    'a head over 16 KiB',
    `HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(20_000)}\r\nContent-Length: 0\r\n\r\n`,
    502,
    'PTTH_ERR_BAD_RESPONSE',
  ],
  [
    'a bare CR in a header value',
    'HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n',
    502,
    'PTTH_ERR_BAD_RESPONSE',
  ],
  [
    'a NUL in a header value',
    'HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n',
    502,
    'PTTH_ERR_BAD_RESPONSE',
  ],
  [
    'a 101 to a request that asked for no upgrade',
    'HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n',
    502,
    'PTTH_ERR_BAD_RESPONSE',
  ],
  ['only part of a head, then close', (app) => app.end('HTTP/1.1 200 OK\r\nContent-Len'), 502, 'PTTH_ERR_CHANNEL_LOST'],
  ['nothing, then close', (app) => app.end(), 502, 'PTTH_ERR_CHANNEL_LOST'],
  [
    'a head trickled byte by byte, never finished',
    (app) => {
      app.write('HTTP/1.1 200 OK\r\n');
      const t = setInterval(() => (app.writable ? app.write('X') : clearInterval(t)), 50);
      cleanups.push(() => clearInterval(t));
    },
    504,
    'PTTH_ERR_APP_TIMEOUT',
  ],
  ['a body cut short, then close', (app) => app.end('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial'), 'closed'],
  [
    'an invalid chunk after the head',
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n',
    'closed',
  ],
  // Oddities llhttp accepts are relayed as what they mean, except what breaks the rules every
  // transport shares (the README's "Security" section): a status past 599 is not one (RFC 9110 section 15).
  ['a status above 599', 'HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok', 502, 'PTTH_ERR_BAD_RESPONSE'],
  ['an HTTP/1.0 answer delimited by close', (app) => app.end('HTTP/1.0 200 OK\r\n\r\nuntil close'), 200],
  [
    'a thousand interim 1xx responses, then 200',
    `${'HTTP/1.1 102 Processing\r\n\r\n'.repeat(1_000)}HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok`,
    200,
  ],
];

describe('apps answering with invalid responses over reversed HTTP/1.1', () => {
  it.each(H1_APP_CASES)('%s', async (_label, answer, expected, code) => {
    await canaries(async () => {
      const name = fresh('h1app');
      const app = await rawH1App(name);
      const visitor = await visitSocket(name);
      await readUntil(app, headEnd, 2_000);
      if (typeof answer === 'function') answer(app);
      else app.write(answer);
      check(await outcome(visitor), expected, code);
      // Nothing leaks: no request waits, and a channel that misbehaved is gone.
      expect(gw.registration(name).waiting).toBe(0);
      if (expected === 'closed' || code !== undefined) {
        await until(() => gw.registration(name).channels.length === 0, 2_000, 'the misbehaving channel to close');
      }
    });
  });

  const UPGRADE_CASES: AppCase[] = [
    ['garbage', 'GARBAGE\r\n\r\n', 502, 'PTTH_ERR_BAD_RESPONSE'],
    ['nothing, then close', (app) => app.end(), 502, 'PTTH_ERR_CHANNEL_LOST'],
    ['nothing at all', () => {}, 504, 'PTTH_ERR_APP_TIMEOUT'],
    [
      'a 101, then close',
      (app) => app.end('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n'),
      101,
    ],
    ['a refusal with a body', 'HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope', 403],
  ];

  it.each(UPGRADE_CASES)(
    'a visitor WebSocket upgrade answered with %s: a status or a closed connection, nothing leaks',
    async (_label, answer, expected, code) => {
      await canaries(async () => {
        const name = fresh('h1up');
        const app = await rawH1App(name);
        const visitor = await connect();
        visitor.write(
          `GET /ws HTTP/1.1\r\nHost: ${gw.host(name)}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
            'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
        );
        await readUntil(app, headEnd, 2_000);
        if (typeof answer === 'function') answer(app);
        else app.write(answer);
        const seen = await outcome(visitor);
        check(seen, expected, code);
        // An upgrade's answer always ends the visitor connection (spliced, refused, or failed).
        expect(await closed(visitor), 'the visitor connection ends').toBe(true);
        expect(gw.registration(name).waiting).toBe(0);
        if (expected === 403) {
          // An ordinary answer leaves the channel as it was: back in the pool.
          await until(
            () => gw.registration(name).channels[0]?.available === true,
            2_000,
            'the channel to be free again',
          );
        } else
          await until(
            () => gw.registration(name).channels.length === 0,
            2_000,
            'the channel the upgrade used to leave the pool',
          );
      });
    },
  );

  it("an app that sends a second, unsolicited response cannot forge the next visitor's answer", async () => {
    await canaries(async () => {
      const name = fresh('forge');
      const app = await rawH1App(name);
      const visitor = await visitSocket(name);
      await readUntil(app, headEnd, 2_000);
      app.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged');
      const first = await outcome(visitor);
      expect(first.status).toBe(200);
      expect(first.text.endsWith('\r\n\r\nok')).toBe(true);
      await until(() => gw.registration(name).channels.length === 0, 2_000, 'the desynchronised channel to close');
      const next = await outcome(await visitSocket(name));
      expect(next.text).not.toContain('forged');
      expect(next.status).toBe(503);
    });
  });

  it('a 204 with a body (the bytes that would be the next response) cannot forge the next answer', async () => {
    await canaries(async () => {
      const name = fresh('forge204');
      const app = await rawH1App(name);
      const visitor = await visitSocket(name);
      await readUntil(app, headEnd, 2_000);
      app.write(
        'HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged',
      );
      const seen = await outcome(visitor);
      check(seen, 204);
      // RFC 9110 section 8.6: the app's Content-Length is not relayed on a 204.
      expect(seen.text.toLowerCase()).not.toContain('content-length');
      const next = await outcome(await visitSocket(name));
      expect(next.text).not.toContain('forged');
    });
  });
});

// ---------------------------------------------------------------------------------------------
// Apps answering with invalid responses: reversed HTTP/2

/** Claims `name` with `Upgrade: ptth` + `ALPN: h2`; returns the socket and what followed the 101. */
async function h2Claim(name: string): Promise<{ socket: net.Socket; rest: Buffer }> {
  const c = await rawClaim(
    gw.port,
    ptthClaim(`localhost:${gw.port}`, `?name=${name}&token=t`, ['Upgrade: ptth', 'Connection: Upgrade', 'ALPN: h2']),
  );
  expect(c.head).toMatch(/^HTTP\/1\.1 101 [^]*ALPN: h2/);
  c.socket.on('error', noop);
  sockets.push(c.socket);
  return { socket: c.socket, rest: c.rest };
}

const hdrs = (id: number, fields: [string, string][], flags = END_HEADERS | END_STREAM): Buffer =>
  frame(HEADERS, flags, id, headerBlock(fields));

/** `connectionError`: the app broke the whole connection (RFC 9113 section 5.4.1), not one stream. */
type H2Case = [
  label: string,
  answer: (app: RawH2App, id: number) => void,
  expected: Expected,
  code?: string | undefined,
  connectionError?: boolean,
];

const H2_APP_CASES: H2Case[] = [
  ['no :status', (a, id) => a.write(hdrs(id, [['content-type', 'text/plain']])), 502, 'PTTH_ERR_BAD_RESPONSE'],
  ['a four-digit :status', (a, id) => a.write(hdrs(id, [[':status', '2000']])), 502, 'PTTH_ERR_BAD_RESPONSE'],
  ['a :status that is not a number', (a, id) => a.write(hdrs(id, [[':status', 'abc']])), 502, 'PTTH_ERR_BAD_RESPONSE'],
  ['a :status below 100', (a, id) => a.write(hdrs(id, [[':status', '099']])), 502, 'PTTH_ERR_BAD_RESPONSE'],
  [
    'a :status of 101 (forbidden in HTTP/2)',
    (a, id) => a.write(hdrs(id, [[':status', '101']])),
    502,
    'PTTH_ERR_BAD_RESPONSE',
  ],
  [
    'a request pseudo-header in a response',
    (a, id) =>
      a.write(
        hdrs(id, [
          [':status', '200'],
          [':path', '/x'],
        ]),
      ),
    502,
    'PTTH_ERR_BAD_RESPONSE',
  ],
  [
    'an unknown pseudo-header',
    (a, id) =>
      a.write(
        hdrs(id, [
          [':status', '200'],
          [':foo', 'x'],
        ]),
      ),
    502,
    'PTTH_ERR_BAD_RESPONSE',
  ],
  [
    'a pseudo-header after a regular field',
    (a, id) =>
      a.write(
        hdrs(id, [
          ['x-a', '1'],
          [':status', '200'],
        ]),
      ),
    502,
    'PTTH_ERR_BAD_RESPONSE',
  ],
  [
    'two :status fields',
    (a, id) =>
      a.write(
        hdrs(id, [
          [':status', '200'],
          [':status', '204'],
        ]),
      ),
    502,
    'PTTH_ERR_BAD_RESPONSE',
  ],
  [
    'an upper-case field name',
    (a, id) =>
      a.write(
        hdrs(id, [
          [':status', '200'],
          ['Content-Type', 'x'],
        ]),
      ),
    502,
    'PTTH_ERR_BAD_RESPONSE',
  ],
  [
    'a connection-specific field',
    (a, id) =>
      a.write(
        hdrs(id, [
          [':status', '200'],
          ['connection', 'close'],
        ]),
      ),
    502,
    'PTTH_ERR_BAD_RESPONSE',
  ],
  [
    'RST_STREAM before any response',
    (a, id) => a.write(frame(RST_STREAM, 0, id, u32(2))),
    502,
    'PTTH_ERR_BAD_RESPONSE',
  ],
  // A stream error (RFC 9113 section 8.1.1) on Node 20; the nghttp2 of Node 22 and later makes it a
  // connection error, and the connection closes (README "Node versions").
  [
    'a DATA frame longer than its content-length',
    (a, id) => {
      a.write(
        hdrs(
          id,
          [
            [':status', '200'],
            ['content-length', '5'],
          ],
          END_HEADERS,
        ),
      );
      a.write(frame(DATA, END_STREAM, id, Buffer.from('hello world')));
    },
    'closed',
    undefined,
    NODE_MAJOR >= 22,
  ],
  [
    'RST_STREAM after part of the body',
    (a, id) => {
      a.write(
        hdrs(
          id,
          [
            [':status', '200'],
            ['content-length', '100'],
          ],
          END_HEADERS,
        ),
      );
      a.write(frame(DATA, 0, id, Buffer.from('partial')));
      setTimeout(() => a.write(frame(RST_STREAM, 0, id, u32(2))), 50);
    },
    'closed',
  ],
  [
    'GOAWAY that refuses the stream in flight',
    (a) => a.write(frame(GOAWAY, 0, 0, Buffer.concat([u32(0), u32(2)]))),
    502,
    'PTTH_ERR_CHANNEL_LOST',
  ],
  // Connection errors (RFC 9113 section 5.4.1): nghttp2 answers GOAWAY, which node:http2 tells
  // nobody; the gateway sees it leave, answers 502 at once and closes the channel.
  [
    'a header block that is no valid HPACK',
    (a, id) => {
      a.write(frame(HEADERS, END_HEADERS | END_STREAM, id, Buffer.from([0x80, 0xff, 0xff])));
    },
    502,
    'PTTH_ERR_BAD_RESPONSE',
    true,
  ],
  [
    'a frame over SETTINGS_MAX_FRAME_SIZE',
    (a, id) => {
      a.write(frame(DATA, 0, id, Buffer.alloc(70_000)));
    },
    502,
    'PTTH_ERR_BAD_RESPONSE',
    true,
  ],
  [
    'DATA before HEADERS',
    (a, id) => {
      a.write(frame(DATA, END_STREAM, id, Buffer.from('hello')));
    },
    502,
    'PTTH_ERR_BAD_RESPONSE',
    true,
  ],
  // What nghttp2 accepts is relayed as what it means.
  [
    'interim 103, then 200',
    (a, id) => {
      a.write(
        hdrs(
          id,
          [
            [':status', '103'],
            ['link', '</a>; rel=preload'],
          ],
          END_HEADERS,
        ),
      );
      a.write(
        hdrs(
          id,
          [
            [':status', '200'],
            ['content-length', '2'],
          ],
          END_HEADERS,
        ),
      );
      a.write(frame(DATA, END_STREAM, id, Buffer.from('ok')));
    },
    200,
  ],
];

describe('apps answering with invalid responses over reversed HTTP/2', () => {
  it.each(H2_APP_CASES)('%s', async (_label, answer, expected, code, connectionError) => {
    await canaries(async () => {
      const name = fresh('h2app');
      const { socket, rest } = await h2Claim(name);
      const app = new RawH2App(socket, rest);
      await until(() => gw.registration(name).channels[0]?.available === true, 2_000, 'the HTTP/2 channel to be ready');
      const visitor = await visitSocket(name);
      answer(app, await app.request());
      check(await outcome(visitor), expected, code);
      expect(gw.registration(name).waiting).toBe(0);
      if (connectionError === true || code === 'PTTH_ERR_CHANNEL_LOST') {
        // The connection is dead (or going): the channel leaves.
        await until(() => gw.registration(name).channels.length === 0, 2_000, 'the broken connection to close');
      } else {
        // A stream error: the connection itself carries on, as RFC 9113 section 5.4.2 says.
        expect(gw.registration(name).channels.length).toBe(1);
        const next = await visitSocket(name);
        const id = await app.request(2);
        app.write(
          hdrs(id, [
            [':status', '200'],
            ['content-length', '0'],
          ]),
        );
        check(await outcome(next), 200);
      }
    });
  });

  it('CR LF inside a field value never reaches the visitor as a header line of its own', async () => {
    await canaries(async () => {
      const name = fresh('h2crlf');
      const { socket, rest } = await h2Claim(name);
      const app = new RawH2App(socket, rest);
      await until(() => gw.registration(name).channels[0]?.available === true, 2_000, 'the HTTP/2 channel to be ready');
      const visitor = await visitSocket(name);
      const id = await app.request();
      app.write(
        hdrs(id, [
          [':status', '200'],
          ['x-a', 'a\r\nx-injected: 1'],
          ['content-length', '0'],
        ]),
      );
      const seen = await outcome(visitor);
      // nghttp2 drops a field whose value holds CR, LF or NUL (RFC 9113 section 8.2.1) before node
      // sees it: the response goes through without it.
      expect(seen.status).toBe(200);
      expect(seen.text.toLowerCase()).not.toContain('x-a:');
      expect(seen.text.toLowerCase()).not.toContain('\r\nx-injected');
    });
  });

  it('node:http2 app: RST_STREAM before the response gives 502; the connection keeps serving', async () => {
    await canaries(async () => {
      const name = fresh('h2rst');
      const { socket, rest } = await h2Claim(name);
      await serveH2(socket, rest, (stream, headers) => {
        if (headers[':path'] === '/reset') stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
        else {
          stream.respond({ ':status': 200 });
          stream.end('fine');
        }
      });
      check(await outcome(await visitSocket(name, '/reset')), 502, 'PTTH_ERR_BAD_RESPONSE');
      expect((await visit(name, '/next')).body).toBe('fine');
    });
  });

  it('node:http2 app: RST_STREAM mid-body closes that visitor connection after the partial body; others are served', async () => {
    await canaries(async () => {
      const name = fresh('h2cut');
      const { socket, rest } = await h2Claim(name);
      await serveH2(socket, rest, (stream, headers) => {
        if (headers[':path'] === '/cut') {
          stream.respond({ ':status': 200, 'content-length': '1000' });
          stream.write('partial', () => setTimeout(() => stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR), 20));
        } else {
          stream.respond({ ':status': 200 });
          stream.end('fine');
        }
      });
      const seen = await outcome(await visitSocket(name, '/cut'));
      check(seen, 'closed');
      expect(seen.status).toBe(200);
      expect(seen.text).toContain('partial');
      expect((await visit(name, '/next')).body).toBe('fine');
      expect(gw.registration(name).waiting).toBe(0);
    });
  });

  it('node:http2 app: GOAWAY(PROTOCOL_ERROR, last stream 0) with a stream in flight: 502, the channel goes, the name gets 503 until another one comes', async () => {
    await canaries(async () => {
      const name = fresh('h2goaway');
      const { socket, rest } = await h2Claim(name);
      await serveH2(socket, rest, (_stream, _headers, session) =>
        session.goaway(http2.constants.NGHTTP2_PROTOCOL_ERROR, 0),
      );
      check(await outcome(await visitSocket(name)), 502, 'PTTH_ERR_CHANNEL_LOST');
      await until(() => gw.registration(name).channels.length === 0, 2_000, 'the channel to go');
      check(await outcome(await visitSocket(name)), 503, 'PTTH_ERR_NO_CHANNEL');
    });
  });
});

// ---------------------------------------------------------------------------------------------
// Slow peers

describe('slow peers', () => {
  // node checks headersTimeout only every connectionsCheckingInterval (30 s by default); the
  // gateway sets it to a quarter of headersTimeout.
  it('a slowloris visitor trickling its head gets 408 within headersTimeout (plus slack) and is closed', async () => {
    await canaries(async () => {
      const s = await connect();
      const started = performance.now();
      s.write(`GET / HTTP/1.1\r\nHost: ${hosts().h1}\r\n`);
      const trickle = setInterval(() => s.writable && s.write('X-A: b\r\n'), 50);
      cleanups.push(() => clearInterval(trickle));
      const seen = await outcome(s, HANG(OPTIONS.headersTimeout));
      check(seen, 408);
      expect(performance.now() - started).toBeGreaterThanOrEqual(OPTIONS.headersTimeout! - EARLY);
    });
  });

  it('a claimant trickling its declared body gets 400 after claimTimeout and is closed', async () => {
    await canaries(async () => {
      const s = await connect();
      s.write(
        ptthClaim(`localhost:${gw.port}`, '', [
          'Upgrade: PTTH/1.0',
          'Connection: Upgrade',
          'Content-Type: application/x-www-form-urlencoded',
        ]).replace('Content-Length: 0', 'Content-Length: 500'),
      );
      const started = performance.now();
      const trickle = setInterval(() => s.writable && s.write('a'), 50);
      cleanups.push(() => clearInterval(trickle));
      const seen = await outcome(s, HANG(OPTIONS.claimTimeout));
      check(seen, 400);
      expect(performance.now() - started).toBeGreaterThanOrEqual(OPTIONS.claimTimeout! - EARLY);
      expect(await closed(s)).toBe(true);
    });
  });

  it('a slow upload whose app answered early: the next visitor waits in the queue (503 after queueTimeout), never inside the channel, and is served once the upload is done', async () => {
    await canaries(async () => {
      const name = fresh('early-answer');
      const app = await rawH1App(name);
      let seen = '';
      app.on('data', (d: Buffer) => {
        seen += d.toString('latin1');
      });
      app.resume();
      // Visitor A uploads slowly; the app answers before the body is complete (a 200 here, a 413 in life).
      const a = await connect();
      a.write(`POST /a HTTP/1.1\r\nHost: ${gw.host(name)}\r\nContent-Length: 1000\r\n\r\nhello`);
      await until(() => seen.includes('hello'), 2_000, 'the start of the upload at the app');
      app.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly');
      check(await outcome(a), 200);
      let sent = 'hello'.length;
      const trickle = setInterval(() => {
        if (!a.writable || sent >= 900) return;
        a.write('x');
        sent++;
      }, 50);
      cleanups.push(() => clearInterval(trickle));
      // The only channel still carries A's body: B waits in the registration's queue, with its timeout.
      const started = Date.now();
      check(await outcome(await visitSocket(name, '/b'), HANG(OPTIONS.queueTimeout)), 503, 'PTTH_ERR_NO_CHANNEL');
      expect(Date.now() - started).toBeGreaterThanOrEqual(OPTIONS.queueTimeout! - 50);
      expect(seen).not.toContain('GET /b');
      // Once A's body is down, the channel takes the next request.
      clearInterval(trickle);
      a.write('y'.repeat(1000 - sent));
      await until(() => seen.endsWith('y'), 2_000, 'the rest of the upload at the app');
      await until(() => gw.registration(name).channels[0]?.available === true, 2_000, 'the channel to be free');
      const c = await visitSocket(name, '/c');
      await until(() => seen.includes('GET /c'), 2_000, 'request C at the app');
      app.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
      check(await outcome(c), 200);
      expect(gw.registration(name).waiting).toBe(0);
    });
  });

  /** An app that streams `/big` for as long as it is let, counting what it wrote. */
  async function bigApp(name: string, http1: boolean): Promise<{ written(): number; paused(): boolean }> {
    let written = 0;
    let waiting = false;
    const chunk = Buffer.alloc(64 * 1024, 0x78);
    const t = await startApp(
      gw.port,
      (req, res) => {
        if (req.url !== '/big') return void res.end('small');
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        const pump = (): void => {
          waiting = false;
          while (written < 512 * 1024 * 1024 && !res.destroyed) {
            written += chunk.length;
            if (!res.write(chunk)) {
              waiting = true;
              res.once('drain', pump);
              return;
            }
          }
          res.end();
        };
        pump();
      },
      { name, token: 't', ...(http1 ? { http1: true } : {}) },
    );
    cleanups.push(() => t.close({ graceMs: 100 }));
    return { written: () => written, paused: () => waiting };
  }

  it.each([
    ['reversed HTTP/2', false],
    ['reversed HTTP/1.1', true],
  ])(
    'a visitor that never reads a big response: the app is held back by backpressure (%s), nothing piles up in the gateway',
    async (_label, http1) => {
      await canaries(async () => {
        const name = fresh('big');
        const app = await bigApp(name, http1);
        const s = await visitSocket(name, '/big');
        s.pause();
        await until(() => app.paused() && app.written() > 0, 3_000, 'the app to be held back');
        // Held back for good: socket buffers and flow-control windows fill, then the writes stop
        // (no growth over 250 ms; the kernel may still grow a buffer now and then, hence the bound).
        const deadline = Date.now() + 5_000;
        for (let last = -1; app.written() !== last && Date.now() < deadline; ) {
          last = app.written();
          await sleep(250);
        }
        await sleep(300);
        expect(app.paused(), 'the app is waiting for drain').toBe(true);
        // Kernel buffers on both loopback hops plus HTTP/2 windows: megabytes, not the 512 MiB offered.
        expect(app.written()).toBeLessThan(48 * 1024 * 1024);
        // The same app still serves other visitors meanwhile (over HTTP/2 on the same connection).
        expect((await visit(name, '/small')).body).toBe('small');
        s.destroy();
      });
    },
  );

  it.each([
    ['reversed HTTP/2', false],
    ['reversed HTTP/1.1', true],
  ])(
    'an app that never reads the request body nor answers (%s): the upload stalls, then 504 after responseTimeout',
    async (_label, http1) => {
      await canaries(async () => {
        const name = fresh('deaf');
        let seen = 0;
        const t = await startApp(
          gw.port,
          () => {
            seen++; // never reads, never answers
          },
          { name, token: 't', ...(http1 ? { http1: true } : {}) },
        );
        cleanups.push(() => t.close({ graceMs: 100 }));
        const s = await connect();
        const total = 1 << 30;
        s.write(`POST / HTTP/1.1\r\nHost: ${gw.host(name)}\r\nContent-Length: ${total}\r\n\r\n`);
        let sent = 0;
        const block = Buffer.alloc(64 * 1024);
        const fill = (): void => {
          while (!s.destroyed && sent < total) {
            sent += block.length;
            if (!s.write(block)) {
              s.once('drain', fill);
              return;
            }
          }
        };
        fill();
        const started = Date.now();
        const got = await outcome(s, HANG(OPTIONS.responseTimeout));
        check(got, 504, 'PTTH_ERR_APP_TIMEOUT');
        expect(Date.now() - started).toBeGreaterThanOrEqual(OPTIONS.responseTimeout! - 50);
        expect(seen).toBe(1);
        // Bounded: the upload stopped at buffer sizes, far short of the gigabyte declared.
        expect(sent).toBeLessThan(64 * 1024 * 1024);
        expect(gw.registration(name).waiting).toBe(0);
      });
    },
  );
});

// ---------------------------------------------------------------------------------------------
// Claim floods

describe('claim floods from one address', () => {
  // Loopback is exempt from per-address rate limits by default; these assert what holds either
  // way: the gateway survives, answers each claim with a status, and the canaries are served.
  const CLAIMS = 150;

  async function claimAll(bytes: (i: number) => string): Promise<string[]> {
    const conns = await Promise.all(Array.from({ length: CLAIMS }, () => connect()));
    conns.forEach((s, i) => {
      s.write(bytes(i));
    });
    const heads = await Promise.all(conns.map((s) => readUntil(s, headEnd, 5_000)));
    return heads.map((h) => h.toString('latin1').split('\r\n')[0] ?? '');
  }

  it(`${CLAIMS} PTTH claims of distinct names at once: each gets 101 or 429, the gateway keeps serving`, async () => {
    await canaries(async () => {
      const lines = await claimAll((i) => ptthClaim(`localhost:${gw.port}`, `?name=flood-a${i}&lease=1`));
      for (const l of lines) expect(l).toMatch(/^HTTP\/1\.1 (101|429) /);
      for (const s of sockets.splice(0)) s.destroy();
      await until(
        () => gw.gateway.table.list().every((r) => !r.name.startsWith('flood-a') || r.channels.length === 0),
        3_000,
        'the flood channels to close',
      );
    });
  });

  it(`${CLAIMS} PTTH claims of one name at once: maxChannels get 101, the rest 429, the gateway keeps serving`, async () => {
    await canaries(async () => {
      const lines = await claimAll(() => ptthClaim(`localhost:${gw.port}`, '?name=flood-one&token=same&lease=1'));
      const accepted = lines.filter((l) => l.startsWith('HTTP/1.1 101 ')).length;
      expect(accepted).toBeLessThanOrEqual(OPTIONS.maxChannels!);
      expect(accepted).toBeGreaterThan(0);
      for (const l of lines) expect(l).toMatch(/^HTTP\/1\.1 (101|429) /);
      expect(gw.registration('flood-one').channels.length).toBe(accepted);
    });
  });

  it(`${CLAIMS} ptth + h2 claims, WebSocket claims and Comet registrations at once: each gets a status, the gateway keeps serving`, async () => {
    await canaries(async () => {
      const g = `localhost:${gw.port}`;
      const lines = await claimAll((i) =>
        i % 3 === 0
          ? ptthClaim(g, `?name=flood-h${i}&lease=1`, ['Upgrade: ptth', 'Connection: Upgrade', 'ALPN: h2'])
          : i % 3 === 1
            ? wsClaim(g, `?name=flood-w${i}&lease=1`)
            : cometForm(g, `name=flood-c${i}&lease=1`),
      );
      lines.forEach((l, i) => {
        expect(l).toMatch(i % 3 === 2 ? /^HTTP\/1\.1 (201|429) / : /^HTTP\/1\.1 (101|429) /);
      });
    });
  });

  it('a WebSocket client library flood: 50 channels opened and dropped, the registrations end up with none', async () => {
    await canaries(async () => {
      const opened = await Promise.all(
        Array.from({ length: 50 }, (_, i) => {
          const ws = new WebSocket(`ws://127.0.0.1:${gw.port}/?name=wsflood-${i}&lease=1`, 'ptth.v1', {
            headers: { Host: `localhost:${gw.port}` },
          });
          ws.on('error', noop);
          return new Promise<WebSocket>((resolve) => ws.once('message', () => resolve(ws)));
        }),
      );
      for (const ws of opened) ws.terminate();
      await until(
        () => gw.gateway.table.list().every((r) => !r.name.startsWith('wsflood-') || r.channels.length === 0),
        3_000,
        'the channels to go',
      );
    });
  });
});
