/**
 * Apps are peers, not friends (README "Security"): every response head an app sends is checked
 * with the same rules on every transport before the gateway writes any of it. Malformed heads
 * (every control byte in the reason phrase, statuses outside 200-599, header names that are not
 * tokens, values with CR, LF, NUL or other controls, bad trailers) are driven through reversed
 * HTTP/1.1, reversed HTTP/2, the WebSocket channel and Comet from live apps against a gateway
 * running as its own process (`ptth-proxy serve`), so a crash is a dead process, not a vitest
 * report. Each case asserts the visitor's exact answer (`502 Bad Gateway`, never a reused reason
 * such as `502 OK`), that the process is still running, and that a canary app on another name is
 * still served. The cookie guard (apps cannot set cookies for the whole domain) is tested here on
 * every transport too.
 */
import type * as net from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { Tunnel } from '../../src/client/node.js';
import { fetchRaw, register, type Registered } from '../helpers/comet.js';
import { DATA, END_HEADERS, END_STREAM, HEADERS, RawH2App, frame, headerBlock } from '../helpers/h2app.js';
import { headEnd, rawClaim, rawConnect, readUntil, request, startApp, until } from '../helpers/index.js';
import { spawnCli, type Spawned } from '../helpers/spawn.js';
import { RawWsApp } from '../helpers/wsapp.js';

let gateway: Spawned;
let port = 0;
let canary: Tunnel;
const sockets: (net.Socket | WebSocket)[] = [];
let seq = 0;
const fresh = (prefix: string): string => `${prefix}-${++seq}`;

beforeAll(async () => {
  gateway = spawnCli([
    'serve',
    '--port',
    '0',
    '--host',
    '127.0.0.1',
    '--response-timeout',
    '3000',
    '--log-format',
    'json',
  ]);
  const m = await gateway.waitFor(/listening on 127\.0\.0\.1:(\d+)/, 10_000);
  port = Number(m[1]);
  canary = await startApp(port, (_req, res) => res.end('canary ok'), { name: 'canary' });
});

afterAll(async () => {
  await canary?.close({ graceMs: 100 });
  gateway?.kill('SIGKILL');
  await gateway?.exited();
});

afterEach(async () => {
  for (const s of sockets.splice(0)) s instanceof WebSocket ? s.terminate() : s.destroy();
  // The process survived the case, and another tenant is still served.
  expect(gateway.child.exitCode, `the gateway process is running; output:\n${gateway.output().slice(-2000)}`).toBe(
    null,
  );
  const c = await request(port, { host: `canary.localhost:${port}` });
  expect([c.status, c.body]).toEqual([200, 'canary ok']);
});

// ---------------------------------------------------------------------------------------------
// One bad head, in the shapes each transport carries it

interface Head {
  status: unknown;
  /** Reason phrase (not carried by HTTP/2). */
  reason?: unknown;
  /** Flat list, before the gateway's Content-Length for the two-byte body. */
  headers?: unknown[];
  /** Sent after a chunked body (HTTP/1.1, Comet) or as a trailing HEADERS frame (HTTP/2). */
  trailers?: [string, string][];
}

/** The response as HTTP/1.1 bytes (reversed HTTP/1.1 and Comet replies): a body of `ok`. */
function h1Bytes(h: Head): Buffer {
  let s = `HTTP/1.1 ${String(h.status)} ${h.reason === undefined ? 'Fine' : String(h.reason)}\r\n`;
  const list = h.headers ?? [];
  for (let i = 0; i < list.length; i += 2) s += `${String(list[i])}: ${String(list[i + 1])}\r\n`;
  if (h.trailers) {
    s += 'Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n';
    for (const [n, v] of h.trailers) s += `${n}: ${v}\r\n`;
    s += '\r\n';
  } else s += 'Content-Length: 2\r\n\r\nok';
  return Buffer.from(s, 'latin1');
}

interface Outcome {
  status: number;
  text: string;
}

/** A visitor that asks once and reads until the gateway closes the connection. */
async function visitor(name: string): Promise<{ socket: net.Socket; answer: Promise<Outcome> }> {
  const socket = await rawConnect(port);
  sockets.push(socket);
  socket.on('error', () => {});
  socket.write(`GET /x HTTP/1.1\r\nHost: ${name}.localhost:${port}\r\nConnection: close\r\n\r\n`);
  return {
    socket,
    answer: readUntil(socket, () => false, 5_000).then((b) => {
      const text = b.toString('latin1');
      return { status: Number(/^HTTP\/1\.1 (\d{3}) /.exec(text)?.[1] ?? 0), text };
    }),
  };
}

async function viaHttp1(h: Head): Promise<Outcome> {
  const name = fresh('h1');
  const c = await rawClaim(
    port,
    `GET /?name=${name}&token=t HTTP/1.1\r\nHost: localhost:${port}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n`,
  );
  expect(c.head).toMatch(/^HTTP\/1\.1 101 /);
  sockets.push(c.socket);
  c.socket.on('error', () => {});
  const v = await visitor(name);
  await readUntil(c.socket, headEnd);
  c.socket.write(h1Bytes(h));
  return v.answer;
}

async function viaHttp2(h: Head): Promise<Outcome> {
  const name = fresh('h2');
  const c = await rawClaim(
    port,
    `GET /?name=${name}&token=t HTTP/1.1\r\nHost: localhost:${port}\r\nUpgrade: ptth\r\nConnection: Upgrade\r\nALPN: h2\r\n\r\n`,
  );
  expect(c.head).toMatch(/^HTTP\/1\.1 101 /);
  sockets.push(c.socket);
  c.socket.on('error', () => {});
  const app = new RawH2App(c.socket, c.rest);
  const v = await visitor(name);
  const id = await app.request(1, 3_000);
  const fields: [string, string][] = [[':status', String(h.status)]];
  const list = h.headers ?? [];
  // HTTP/2 field names are lower case (RFC 9113 section 8.2.1).
  for (let i = 0; i < list.length; i += 2) fields.push([String(list[i]).toLowerCase(), String(list[i + 1])]);
  fields.push(['content-length', '2']);
  app.write(frame(HEADERS, END_HEADERS, id, headerBlock(fields)));
  if (h.trailers) {
    app.write(frame(DATA, 0, id, Buffer.from('ok')));
    app.write(frame(HEADERS, END_HEADERS | END_STREAM, id, headerBlock(h.trailers)));
  } else app.write(frame(DATA, END_STREAM, id, Buffer.from('ok')));
  return v.answer;
}

async function viaWebSocket(h: Head): Promise<Outcome> {
  const name = fresh('ws');
  const app = await RawWsApp.connect(port, { name });
  sockets.push(app.ws);
  const v = await visitor(name);
  const req = await app.control('request');
  const id = req['id'] as number;
  const headers = Array.isArray(h.headers) ? [...h.headers, 'Content-Length', '2'] : h.headers;
  app.ws.send(JSON.stringify({ t: 'response', id, status: h.status, statusText: h.reason, headers, body: true }));
  const end = Buffer.alloc(7);
  end[0] = 1;
  end.writeUInt32BE(id, 1);
  end.write('ok', 5);
  app.ws.send(end, { binary: true });
  return v.answer;
}

/** Comet: the reply POST gets its own answer; the visitor's is returned. */
let lastReply = 0;
async function viaComet(h: Head): Promise<Outcome> {
  const name = fresh('comet');
  const r: Registered = await register(`http://127.0.0.1:${port}`, { name });
  expect(r.status).toBe(201);
  const first = r.links['first'] as string;
  const polled = fetchRaw(first);
  const v = await visitor(name);
  expect((await polled).status).toBe(200);
  const answered = await fetchRaw(first, {
    method: 'POST',
    headers: { 'content-type': 'message/http' },
    body: h1Bytes(h),
  });
  lastReply = answered.status;
  return v.answer;
}

/** The gateway's own 502: the standard reason (never a reason left over from the app), and its code. */
function expectBadResponse(o: Outcome): void {
  expect(o.text.slice(0, o.text.indexOf('\r\n'))).toBe('HTTP/1.1 502 Bad Gateway');
  expect(o.text).toContain('\r\nX-Ptth-Error: PTTH_ERR_BAD_RESPONSE\r\n');
}

// ---------------------------------------------------------------------------------------------
// The cases

const CONTROLS = [...Array.from({ length: 32 }, (_, i) => i).filter((c) => c !== 9), 0x7f];
const hex = (c: number): string => `0x${c.toString(16).padStart(2, '0')}`;

const REASONS: [string, Head][] = CONTROLS.map((c) => [
  `reason phrase with ${hex(c)}`,
  { status: 200, reason: `O${String.fromCharCode(c)}K` },
]);
const STATUSES: [string, Head][] = [0, 99, 600, 1000].map((s) => [`status ${s}`, { status: s }]);
const NAMES: [string, Head][] = ['X A', 'X(A)', 'X,A', 'X;A', 'X/A', 'X"A', 'X\u00e9', 'X@A'].map((n) => [
  `header name ${JSON.stringify(n)}`,
  { status: 200, headers: [n, 'v'] },
]);
const VALUES: [string, Head][] = [
  ['CR', 'a\rb'],
  ['LF', 'a\nb'],
  ['NUL', 'a\0b'],
  ['0x01', 'a\x01b'],
  ['DEL', 'a\x7fb'],
].map(([label, v]) => [`header value with ${label as string}`, { status: 200, headers: ['X-A', v as string] }]);
const TRAILERS: [string, Head][] = [
  ['a trailer name with a space', { status: 200, trailers: [['X T', 'v']] }],
  ['a trailer value with 0x01', { status: 200, trailers: [['X-T', 'a\x01b']] }],
  ['a trailer value with NUL', { status: 200, trailers: [['X-T', 'a\0b']] }],
];

const BAD_HEADS = [...REASONS, ...STATUSES, ...NAMES, ...VALUES];
/** HTTP/2 carries no reason phrase; its bad fields are tested on their own below. */
const H2_BAD_HEADS = STATUSES;

describe('a malformed response head gets the visitor 502 Bad Gateway, on every transport, and the gateway keeps serving', () => {
  it.each(BAD_HEADS)('reversed HTTP/1.1: %s', async (_label, head) => {
    expectBadResponse(await viaHttp1(head));
  });

  it.each(H2_BAD_HEADS)('reversed HTTP/2: %s', async (_label, head) => {
    expectBadResponse(await viaHttp2(head));
  });

  // nghttp2 itself drops a field whose name is not a lower-case token, or whose value holds a
  // control character, before node sees it (its default without an invalid-header callback,
  // RFC 9113 section 8.2.1): such a field never reaches the gateway's check, nor the visitor.
  it.each([...NAMES, ...VALUES])('reversed HTTP/2: %s is never relayed', async (_label, head) => {
    const o = await viaHttp2(head);
    const name = String(head.headers?.[0]).toLowerCase();
    expect(o.status).toBe(200);
    expect(o.text.toLowerCase()).not.toContain(`\r\n${name}:`);
  });

  const WS_ONLY: [string, Head][] = [
    ['status 100', { status: 100 }],
    ['status 101', { status: 101 }],
    ['status "200" as a string', { status: '200' }],
    ['status 200.5', { status: 200.5 }],
    ['a reason phrase past Latin-1', { status: 200, reason: 'O\u2028K' }],
    ['a reason phrase that is a number', { status: 200, reason: 42 }],
    ['headers that are not a list', { status: 200, headers: { 'x-a': 'b' } as unknown as unknown[] }],
    ['a header list of odd length', { status: 200, headers: ['X-A'] }],
    ['a header value that is not text', { status: 200, headers: ['X-A', 7] }],
    ['a header value past Latin-1', { status: 200, headers: ['X-A', '\u2603'] }],
    ['a Content-Length that is not a number', { status: 200, headers: ['Content-Length', 'two'] }],
  ];
  it.each([...BAD_HEADS, ...WS_ONLY])('WebSocket channel: %s', async (_label, head) => {
    expectBadResponse(await viaWebSocket(head));
  });

  it.each(BAD_HEADS)('Comet reply: %s (the reply POST gets 400)', async (_label, head) => {
    expectBadResponse(await viaComet(head));
    expect(lastReply).toBe(400);
  });
});

describe('bad trailers are never relayed and never stop the gateway', () => {
  const cases = TRAILERS.flatMap(
    ([label, head]) =>
      [
        ['reversed HTTP/1.1', label, head, viaHttp1],
        ['reversed HTTP/2', label, head, viaHttp2],
        ['Comet reply', label, head, viaComet],
      ] as const,
  );
  it.each(cases)('%s: %s', async (_transport, _label, head, via) => {
    const o = await via(head);
    // The head was valid, so it may have gone out; the trailer's bytes never do.
    expect([0, 200, 502]).toContain(o.status);
    for (const [n] of head.trailers ?? []) expect(o.text).not.toContain(n);
  });
});

// ---------------------------------------------------------------------------------------------
// The cookie guard

const COOKIES = ['whole=1; Domain=localhost; Path=/', 'dotted=1; Domain=.LOCALHOST; Path=/', 'own=1; Path=/'];

describe("an app cannot set cookies for the gateway's domain (other tenants' sites)", () => {
  const transports = [
    ['reversed HTTP/1.1', viaHttp1],
    ['reversed HTTP/2', viaHttp2],
    ['WebSocket channel', viaWebSocket],
    ['Comet reply', viaComet],
  ] as const;
  it.each(transports)(
    '%s: Set-Cookie with Domain=localhost is dropped, logged and counted; its own cookies pass',
    async (_t, via) => {
      const before = await droppedCount();
      const seen = gateway.output().length;
      // A cookie scoped to one app's host covers no other tenant: it passes.
      const o = await via({
        status: 200,
        headers: [...COOKIES.flatMap((c) => ['Set-Cookie', c]), 'Set-Cookie', 'host=1; Domain=app.localhost'],
      });
      expect(o.status).toBe(200);
      const cookies = o.text.split('\r\n').filter((l) => /^set-cookie:/i.test(l));
      expect(cookies.map((l) => l.replace(/^set-cookie: /i, ''))).toEqual([
        'own=1; Path=/',
        'host=1; Domain=app.localhost',
      ]);
      expect(await droppedCount()).toBe(before + 2);
      // This exchange's own log line (earlier transports printed theirs before `seen`).
      const line = /"event":"cookie-dropped","name":"[a-z0-9]+-\d+","count":2/;
      await until(() => line.test(gateway.output().slice(seen)), 5_000, "this exchange's cookie-dropped line");
    },
  );
});

async function droppedCount(): Promise<number> {
  const r = await fetchRaw(`http://127.0.0.1:${port}/metrics`);
  return Number(/^ptth_cookies_dropped_total (\d+)/m.exec(r.body.toString())?.[1] ?? NaN);
}
