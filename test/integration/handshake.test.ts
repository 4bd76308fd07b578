/**
 * The native claim handshake, byte for byte (docs/PROTOCOL.md sections 1 and 2): `Upgrade: PTTH/1.0` with
 * and without `Connection: Upgrade`, names, tokens, leases, bodies, early data and refusals.
 * Every test talks to a real gateway over raw sockets and writes the exact request bytes.
 */
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { closed, headEnd, rawConnect, readUntil, request, until, type TestGateway } from '../helpers/index.js';
import { cleanup, track, useGateway } from '../helpers/fixture.js';
import type { GatewayOptions } from '../../src/gateway/server.js';

/** The gateway's end of every connection it accepted, to see what it read and wrote. */
let accepted: Socket[] = [];

async function start(options: GatewayOptions = {}): Promise<TestGateway> {
  const gw = await useGateway(options);
  gw.gateway.server.on('connection', (s: Socket) => accepted.push(s));
  cleanup(() => {
    accepted = [];
  });
  return gw;
}

/** The gateway's end of the test's connection `socket`. */
function gatewaySide(socket: Socket): Socket {
  const s = accepted.find((a) => a.remotePort === socket.localPort);
  if (!s) throw new Error(`the gateway has no connection from port ${String(socket.localPort)}`);
  return s;
}

/**
 * Writes `first`, waits until the gateway has read all of it (its parser runs as it reads, so it
 * has seen those bytes alone), and only then writes `second`: a split into two reads that the
 * gateway provably saw, where a pause between writes would only make one likely.
 */
async function writeSplit(
  socket: Socket,
  first: string,
  second: string,
  between?: (gateway: Socket) => void,
): Promise<void> {
  socket.write(first);
  const n = Buffer.byteLength(first, 'latin1');
  await until(() => gatewaySide(socket).bytesRead >= n, 5_000, 'the gateway to read the first part');
  expect(gatewaySide(socket).bytesRead, 'nothing but the first part was read').toBe(n);
  between?.(gatewaySide(socket));
  socket.write(second);
}

/** A raw connection, closed after the test. */
async function connect(port: number): Promise<Socket> {
  const s = await rawConnect(port);
  s.on('error', () => {});
  track(s);
  return s;
}

/** A request as exact bytes: head lines joined by CRLF, the blank line, then the body. */
function bytes(lines: readonly string[], body = ''): string {
  return `${lines.join('\r\n')}\r\n\r\n${body}`;
}

/** Writes `data` on a fresh connection and reads the answer head (what follows it is in `rest`). */
async function claim(port: number, data: string): Promise<{ socket: Socket; head: string; rest: Buffer }> {
  const socket = await connect(port);
  socket.write(data);
  const got = await readUntil(socket, headEnd, 5_000);
  const end = got.indexOf('\r\n\r\n');
  return {
    socket,
    head: end === -1 ? got.toString('latin1') : got.subarray(0, end + 4).toString('latin1'),
    rest: end === -1 ? Buffer.alloc(0) : got.subarray(end + 4),
  };
}

/** The standard native claim of docs/PROTOCOL.md section 2, with Connection: Upgrade or without it. */
function ptth(
  port: number,
  query: string,
  opts: { connection?: boolean; host?: string; extra?: string[] } = {},
): string {
  return bytes([
    `POST /${query} HTTP/1.1`,
    `Host: ${opts.host ?? `localhost:${port}`}`,
    'Upgrade: PTTH/1.0',
    ...(opts.connection === false ? [] : ['Connection: Upgrade']),
    ...(opts.extra ?? []),
    'Content-Length: 0',
  ]);
}

const B64URL32 = '[A-Za-z0-9_-]{32}';

/** The byte-exact 101 of docs/PROTOCOL.md section 2 for `name`; group 1 is the private id. */
function exact101(name: string, port: number): RegExp {
  return new RegExp(
    '^HTTP/1\\.1 101 Switching Protocols\\r\\n' +
      'Upgrade: PTTH/1\\.0\\r\\n' +
      'Connection: Upgrade\\r\\n' +
      `Link: <http://${name}\\.localhost:${port}/>; rel="related"\\r\\n` +
      `Location: http://localhost:${port}/_ptth/(${B64URL32})\\r\\n` +
      '\\r\\n$',
  );
}

/**
 * Asserts the exact 101 and that no byte follows it; returns the private id from Location.
 *
 * "No byte follows" is read off the gateway's end of the connection rather than waited for: all
 * it has written on it, by the time the test holds the 101, is what the test read, ending with
 * the 101 (a 100 Continue may come before). Where a test goes on to serve a request (serveOne),
 * the first bytes after the 101 are that request, which shows again that nothing came between.
 */
async function expect101(
  c: { socket: Socket; head: string; rest: Buffer },
  name: string,
  port: number,
): Promise<string> {
  const m = exact101(name, port).exec(c.head);
  expect(c.head, 'exact 101 head').toMatch(exact101(name, port));
  expect(c.rest.length, 'no body after the 101').toBe(0);
  const written = gatewaySide(c.socket).bytesWritten;
  expect(written, 'all the gateway wrote was read, ending with the 101: nothing after it').toBe(c.socket.bytesRead);
  return (m?.[1] ?? '') as string;
}

interface Parsed {
  statusLine: string;
  status: number;
  headers: [string, string][];
  header(name: string): string | undefined;
  body: string;
}

function parse(buf: Buffer): Parsed {
  const text = buf.toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  const headText = end === -1 ? text : text.slice(0, end);
  const body = end === -1 ? '' : text.slice(end + 4);
  const [statusLine = '', ...lines] = headText.split('\r\n');
  const headers = lines.map((l): [string, string] => {
    const i = l.indexOf(':');
    return [l.slice(0, i), l.slice(i + 1).trim()];
  });
  return {
    statusLine,
    status: Number(statusLine.split(' ')[1]),
    headers,
    header: (name) => headers.find(([k]) => k.toLowerCase() === name.toLowerCase())?.[1],
    body,
  };
}

/** Reads everything until the gateway closes the connection (`ms` only bounds a hang). */
async function readAll(socket: Socket, ms = 5_000): Promise<{ buf: Buffer; closed: boolean }> {
  const buf = await readUntil(socket, () => false, ms);
  return { buf, closed: socket.destroyed };
}

/**
 * A refusal (docs/PROTOCOL.md section 2): an ordinary response with the status, `Connection: close`, a
 * complete body, never a 101, and the connection closes.
 */
async function expectRefusal(
  socket: Socket,
  status: number,
  code?: string,
  already = Buffer.alloc(0),
): Promise<Parsed> {
  const { buf, closed: isClosed } = await readAll(socket);
  const all = Buffer.concat([already, buf]);
  const r = parse(all);
  expect(all.toString('latin1'), 'never a 101').not.toMatch(/^HTTP\/1\.\d 101 /m);
  expect(r.statusLine).toBe(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}`);
  expect(r.header('connection')?.toLowerCase()).toBe('close');
  expect(Number(r.header('content-length'))).toBe(Buffer.byteLength(r.body, 'latin1'));
  expect(r.body.length).toBeGreaterThan(0);
  if (code !== undefined) {
    expect(r.header('x-ptth-error')).toBe(code);
    expect(r.body).toContain(code);
  }
  expect(isClosed, 'the gateway closes the connection after a refusal').toBe(true);
  return r;
}

/** Writes the claim and expects a refusal. */
async function refused(port: number, data: string, status: number, code?: string): Promise<Parsed> {
  const socket = await connect(port);
  socket.write(data);
  return expectRefusal(socket, status, code);
}

/**
 * Uses a channel the way the gateway does after the 101: a visitor's GET goes down the socket as
 * a request; a raw response written back reaches the visitor.
 */
async function serveOne(g: TestGateway, socket: Socket, name: string, path = '/hello?x=1'): Promise<void> {
  const visitor = request(g.port, { host: g.host(name), path });
  const got = (await readUntil(socket, headEnd, 5_000)).toString('latin1');
  expect(got.startsWith(`GET ${path} HTTP/1.1\r\n`), got).toBe(true);
  expect(got).toMatch(new RegExp(`\\r\\nhost: ${name}\\.localhost:${g.port}\\r\\n`, 'i'));
  expect(got.endsWith('\r\n\r\n')).toBe(true);
  socket.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello');
  const r = await visitor;
  expect(r.status).toBe(200);
  expect(r.body).toBe('hello');
}

function channels(g: TestGateway, name: string): number | undefined {
  return g.gateway.table.lookup(name)?.channels.length;
}

const LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

describe('the 101 (docs/PROTOCOL.md section 2)', () => {
  it('answers Upgrade: PTTH/1.0 with Connection: Upgrade with exactly the 101 head, no extra header, no body', async () => {
    const g = await start();
    const c = await claim(g.port, ptth(g.port, '?name=foo&token=s3cret'));
    const id = await expect101(c, 'foo', g.port);
    expect(g.gateway.table.lookup('foo')?.privateId).toBe(id);
    expect(channels(g, 'foo')).toBe(1);
  });

  it('answers a claim without Connection: Upgrade (2008 Second Life style) with the same exact 101', async () => {
    const g = await start();
    const c = await claim(g.port, ptth(g.port, '?name=foo&token=s3cret', { connection: false }));
    await expect101(c, 'foo', g.port);
  });

  it('a claim without Connection: Upgrade becomes a working channel: a visitor request goes down it and the raw response comes back', async () => {
    const g = await start();
    const c = await claim(g.port, ptth(g.port, '?name=foo', { connection: false }));
    await expect101(c, 'foo', g.port);
    await serveOne(g, c.socket, 'foo');
    // Persistent connection: the same channel carries a second request.
    await serveOne(g, c.socket, 'foo', '/second');
  });

  it('a claim with Connection: Upgrade becomes a working channel too', async () => {
    const g = await start();
    const c = await claim(g.port, ptth(g.port, '?name=foo'));
    await expect101(c, 'foo', g.port);
    await serveOne(g, c.socket, 'foo');
  });

  it('picks PTTH/1.0 out of a case-insensitive comma list (Upgrade: websocket, ptth/1.0; Connection: keep-alive, upgrade)', async () => {
    const g = await start();
    const c = await claim(
      g.port,
      bytes([
        `POST /?name=foo HTTP/1.1`,
        `Host: localhost:${g.port}`,
        'Upgrade: websocket, ptth/1.0',
        'Connection: keep-alive, upgrade',
        'Content-Length: 0',
      ]),
    );
    await expect101(c, 'foo', g.port);
    await serveOne(g, c.socket, 'foo');
  });

  it('accepts the claim on any path of the gateway host', async () => {
    const g = await start();
    const c = await claim(
      g.port,
      bytes([
        `POST /some/where?name=foo HTTP/1.1`,
        `Host: localhost:${g.port}`,
        'Upgrade: PTTH/1.0',
        'Connection: Upgrade',
        'Content-Length: 0',
      ]),
    );
    await expect101(c, 'foo', g.port);
  });
});

describe('names (docs/PROTOCOL.md sections 1-2)', () => {
  it('takes the name from the Host header (Host: foo.localhost:PORT claims foo)', async () => {
    const g = await start();
    const c = await claim(g.port, ptth(g.port, '', { host: `foo.localhost:${g.port}` }));
    await expect101(c, 'foo', g.port);
    expect(channels(g, 'foo')).toBe(1);
  });

  it('takes the name from the Host header without Connection: Upgrade too', async () => {
    const g = await start();
    const c = await claim(g.port, ptth(g.port, '', { host: `foo.localhost:${g.port}`, connection: false }));
    await expect101(c, 'foo', g.port);
  });

  it('refuses a claim whose query name differs from its Host name with 400', async () => {
    const g = await start();
    const r = await refused(
      g.port,
      ptth(g.port, '?name=bar', { host: `foo.localhost:${g.port}` }),
      400,
      'PTTH_ERR_NAME_MISMATCH',
    );
    expect(r.body).toContain('bar');
    expect(r.body).toContain('foo');
    expect(g.gateway.table.list()).toHaveLength(0);
  });

  it('refuses a query/Host name mismatch without Connection: Upgrade with 400 too', async () => {
    const g = await start();
    await refused(
      g.port,
      ptth(g.port, '?name=bar', { host: `foo.localhost:${g.port}`, connection: false }),
      400,
      'PTTH_ERR_NAME_MISMATCH',
    );
  });

  it('accepts the same name in query and Host when they differ only in case', async () => {
    const g = await start();
    const c = await claim(g.port, ptth(g.port, '?name=FOO', { host: `foo.localhost:${g.port}` }));
    await expect101(c, 'foo', g.port);
  });

  it('case-folds the name to lower case in Link and in the table', async () => {
    const g = await start();
    const c = await claim(g.port, ptth(g.port, '?name=MixedCase'));
    await expect101(c, 'mixedcase', g.port);
    expect(channels(g, 'mixedcase')).toBe(1);
    const h = await claim(g.port, ptth(g.port, '', { host: `UPPER.LOCALHOST:${g.port}` }));
    await expect101(h, 'upper', g.port);
  });

  it('assigns a random name, a valid DNS label, when none is given', async () => {
    const g = await start();
    const c = await claim(g.port, ptth(g.port, ''));
    const m = new RegExp(
      `^HTTP/1\\.1 101 Switching Protocols\\r\\nUpgrade: PTTH/1\\.0\\r\\nConnection: Upgrade\\r\\nLink: <http://([^./]+)\\.localhost:${g.port}/>; rel="related"\\r\\nLocation: http://localhost:${g.port}/_ptth/${B64URL32}\\r\\n\\r\\n$`,
    ).exec(c.head);
    expect(m, c.head).not.toBeNull();
    const name = m?.[1] ?? '';
    expect(name).toMatch(LABEL);
    await expect101(c, name, g.port);
    expect(channels(g, name)).toBe(1);
    await serveOne(g, c.socket, name);
  });

  it('gives two nameless claims different names', async () => {
    const g = await start();
    const nameOf = (head: string): string => /^Link: <http:\/\/([^./]+)\.localhost:\d+\/>/m.exec(head)?.[1] ?? '';
    const a = await claim(g.port, ptth(g.port, ''));
    const b = await claim(g.port, ptth(g.port, '', { connection: false }));
    const na = nameOf(a.head);
    const nb = nameOf(b.head);
    await expect101(a, na, g.port);
    await expect101(b, nb, g.port);
    expect(na).toMatch(LABEL);
    expect(nb).toMatch(LABEL);
    expect(na).not.toBe(nb);
    expect(channels(g, na)).toBe(1);
    expect(channels(g, nb)).toBe(1);
  });

  it('accepts a 63-character name (the longest DNS label)', async () => {
    const g = await start();
    const name = 'a'.repeat(63);
    const c = await claim(g.port, ptth(g.port, `?name=${name}`));
    await expect101(c, name, g.port);
  });

  const BAD_NAMES: [string, string][] = [
    ['leading hyphen', '-foo'],
    ['trailing hyphen', 'foo-'],
    ['64 characters', 'a'.repeat(64)],
    ['underscore', 'a_b'],
    ['dot', 'a.b'],
    ['percent-encoded CR LF', 'foo%0d%0a'],
    ['space', 'a%20b'],
  ];
  it.each(BAD_NAMES)('refuses a bad name in the query (%s: %s) with 400 and a body saying why', async (_what, raw) => {
    const g = await start();
    const r = await refused(g.port, ptth(g.port, `?name=${raw}`), 400, 'PTTH_ERR_BAD_NAME');
    expect(r.body).toMatch(/DNS label/);
    expect(r.body).toMatch(/not a valid name/);
    // A CR LF in the name never reaches the response raw (no header injection).
    expect(r.body).not.toMatch(/foo\r\n/);
    expect(g.gateway.table.list()).toHaveLength(0);
  });

  it.each(BAD_NAMES)('refuses a bad name without Connection: Upgrade (%s: %s) with 400 too', async (_what, raw) => {
    const g = await start();
    const r = await refused(g.port, ptth(g.port, `?name=${raw}`, { connection: false }), 400, 'PTTH_ERR_BAD_NAME');
    expect(r.body).toMatch(/DNS label/);
  });

  it('refuses a name of two labels from the Host (Host: a.b.localhost:PORT) with 400', async () => {
    const g = await start();
    const r = await refused(g.port, ptth(g.port, '', { host: `a.b.localhost:${g.port}` }), 400, 'PTTH_ERR_BAD_NAME');
    expect(r.body).toMatch(/DNS label/);
  });

  it('refuses an empty label from the Host (Host: .localhost:PORT) with 400', async () => {
    const g = await start();
    const r = await refused(g.port, ptth(g.port, '', { host: `.localhost:${g.port}` }), 400);
    expect(r.body.toLowerCase()).toMatch(/name|label|host/);
    expect(g.gateway.table.list()).toHaveLength(0);
  });
});

describe('leases (docs/PROTOCOL.md section 2)', () => {
  it.each([['-1'], ['1.5'], ['abc'], ['99999999999']])(
    'refuses lease=%s with 400 and a body saying why',
    async (lease) => {
      const g = await start();
      const r = await refused(g.port, ptth(g.port, `?name=foo&lease=${lease}`), 400, 'PTTH_ERR_BAD_LEASE');
      expect(r.body).toMatch(/lease/i);
      expect(g.gateway.table.list()).toHaveLength(0);
    },
  );

  it('refuses a bad lease without Connection: Upgrade with 400 too', async () => {
    const g = await start();
    await refused(g.port, ptth(g.port, '?name=foo&lease=abc', { connection: false }), 400, 'PTTH_ERR_BAD_LEASE');
  });

  it('clamps a lease above maxLease (seen at the private URL and in the table)', async () => {
    const g = await start({ maxLease: 60 });
    const c = await claim(g.port, ptth(g.port, '?name=foo&lease=3600'));
    const id = await expect101(c, 'foo', g.port);
    expect(g.gateway.table.lookup('foo')?.lease).toBe(60);
    const r = await request(g.port, {
      host: `localhost:${g.port}`,
      path: `/_ptth/${id}`,
      headers: { accept: 'application/json' },
    });
    expect(r.status).toBe(200);
    const state = JSON.parse(r.body) as { name: string; lease: number; channels: unknown[] };
    expect(state.name).toBe('foo');
    expect(state.lease).toBe(60);
    expect(state.channels).toHaveLength(1);
  });
});

describe('HTTP/1.0 (RFC 9110 section 7.8)', () => {
  it('refuses an HTTP/1.0 claim with Connection: Upgrade with 400 and closes, never a 101', async () => {
    const g = await start();
    await refused(
      g.port,
      bytes([
        'POST /?name=foo HTTP/1.0',
        `Host: localhost:${g.port}`,
        'Upgrade: PTTH/1.0',
        'Connection: Upgrade',
        'Content-Length: 0',
      ]),
      400,
      'PTTH_ERR_HTTP10_UPGRADE',
    );
    expect(g.gateway.table.lookup('foo')).toBeUndefined();
  });

  it('refuses an HTTP/1.0 claim without Connection: Upgrade with 400 and closes, never a 101', async () => {
    const g = await start();
    await refused(
      g.port,
      bytes(['POST /?name=foo HTTP/1.0', `Host: localhost:${g.port}`, 'Upgrade: PTTH/1.0', 'Content-Length: 0']),
      400,
      'PTTH_ERR_HTTP10_UPGRADE',
    );
    expect(g.gateway.table.lookup('foo')).toBeUndefined();
  });
});

describe('claim bodies (docs/PROTOCOL.md section 2)', () => {
  const FORM = 'name=bar&token=t';
  const formClaim = (port: number, connection: boolean, extra: string[] = []): string[] => [
    'POST / HTTP/1.1',
    `Host: localhost:${port}`,
    'Upgrade: PTTH/1.0',
    ...(connection ? ['Connection: Upgrade'] : []),
    'Content-Type: application/x-www-form-urlencoded',
    ...extra,
    `Content-Length: ${FORM.length}`,
  ];

  /**
   * Sends the head alone, then the body once the gateway has read the whole head: the gateway
   * answered nothing to the head alone (its end of the connection has written nothing), and its
   * answer, naming `bar`, can only have been made from the body (the name is in it alone).
   */
  async function withBodyLater(socket: Socket, head: string): Promise<void> {
    const nothingYet = (gateway: Socket): void => {
      expect(gateway.bytesWritten, 'no answer to the head alone').toBe(0);
    };
    await writeSplit(socket, head, FORM, nothingYet);
  }

  it('reads a Content-Length form body before switching and uses its params (name and token)', async () => {
    const g = await start();
    const c = await claim(g.port, bytes(formClaim(g.port, true), FORM));
    await expect101(c, 'bar', g.port);
    // The token from the body holds the name.
    await refused(g.port, ptth(g.port, '?name=bar&token=other'), 403, 'PTTH_ERR_TOKEN_MISMATCH');
    const again = await claim(g.port, ptth(g.port, '?name=bar&token=t'));
    await expect101(again, 'bar', g.port);
    expect(channels(g, 'bar')).toBe(2);
  });

  it('reads a form body without Connection: Upgrade and uses its params', async () => {
    const g = await start();
    const c = await claim(g.port, bytes(formClaim(g.port, false), FORM));
    await expect101(c, 'bar', g.port);
    await refused(g.port, ptth(g.port, '?name=bar&token=other'), 403, 'PTTH_ERR_TOKEN_MISMATCH');
  });

  it('waits for a declared body sent in a later write, then the channel serves requests', async () => {
    const g = await start({ responseTimeout: 500 });
    const socket = await connect(g.port);
    await withBodyLater(socket, bytes(formClaim(g.port, true)));
    const got = await readUntil(socket, headEnd, 5_000);
    await expect101({ socket, head: got.toString('latin1'), rest: Buffer.alloc(0) }, 'bar', g.port);
    await serveOne(g, socket, 'bar');
  });

  it('waits for a declared body sent in a later write without Connection: Upgrade, then the channel serves requests', async () => {
    const g = await start({ responseTimeout: 500 });
    const socket = await connect(g.port);
    await withBodyLater(socket, bytes(formClaim(g.port, false)));
    const got = await readUntil(socket, headEnd, 5_000);
    await expect101({ socket, head: got.toString('latin1'), rest: Buffer.alloc(0) }, 'bar', g.port);
    await serveOne(g, socket, 'bar');
  });

  for (const connection of [true, false]) {
    it(`answers Expect: 100-continue with exactly HTTP/1.1 100 Continue before the 101 (${connection ? 'with' : 'without'} Connection: Upgrade)`, async () => {
      const g = await start({ responseTimeout: 500 });
      const socket = await connect(g.port);
      socket.write(bytes(formClaim(g.port, connection, ['Expect: 100-continue'])));
      const cont = await readUntil(socket, headEnd, 5_000);
      expect(cont.toString('latin1')).toBe('HTTP/1.1 100 Continue\r\n\r\n');
      socket.write(FORM);
      const got = await readUntil(socket, headEnd, 5_000);
      await expect101({ socket, head: got.toString('latin1'), rest: Buffer.alloc(0) }, 'bar', g.port);
      await serveOne(g, socket, 'bar');
    });
  }

  it('refuses a chunked body with Connection: Upgrade with 400', async () => {
    const g = await start();
    await refused(
      g.port,
      bytes(
        [
          'POST / HTTP/1.1',
          `Host: localhost:${g.port}`,
          'Upgrade: PTTH/1.0',
          'Connection: Upgrade',
          'Content-Type: application/x-www-form-urlencoded',
          'Transfer-Encoding: chunked',
        ],
        `10\r\n${FORM}\r\n0\r\n\r\n`,
      ),
      400,
      'PTTH_ERR_CHUNKED_CLAIM',
    );
    expect(g.gateway.table.list()).toHaveLength(0);
  });

  it('accepts a chunked body without Connection: Upgrade (node parses it) and uses its params', async () => {
    const g = await start();
    const c = await claim(
      g.port,
      bytes(
        [
          'POST / HTTP/1.1',
          `Host: localhost:${g.port}`,
          'Upgrade: PTTH/1.0',
          'Content-Type: application/x-www-form-urlencoded',
          'Transfer-Encoding: chunked',
        ],
        `9\r\nname=bar&\r\n7\r\ntoken=t\r\n0\r\n\r\n`,
      ),
    );
    await expect101(c, 'bar', g.port);
    await serveOne(g, c.socket, 'bar');
  });

  it('refuses a Content-Length body larger than claimBodyLimit with 413 (with Connection: Upgrade)', async () => {
    const g = await start({ claimBodyLimit: 8 });
    await refused(g.port, bytes(formClaim(g.port, true), FORM), 413, 'PTTH_ERR_CLAIM_BODY_TOO_LARGE');
    expect(g.gateway.table.list()).toHaveLength(0);
  });

  it('refuses a Content-Length body larger than claimBodyLimit with 413 (without Connection: Upgrade)', async () => {
    const g = await start({ claimBodyLimit: 8 });
    await refused(g.port, bytes(formClaim(g.port, false), FORM), 413, 'PTTH_ERR_CLAIM_BODY_TOO_LARGE');
    expect(g.gateway.table.list()).toHaveLength(0);
  });

  it('refuses a chunked body that grows past claimBodyLimit with 413 (without Connection: Upgrade)', async () => {
    const g = await start({ claimBodyLimit: 8 });
    await refused(
      g.port,
      bytes(
        [
          'POST / HTTP/1.1',
          `Host: localhost:${g.port}`,
          'Upgrade: PTTH/1.0',
          'Content-Type: application/x-www-form-urlencoded',
          'Transfer-Encoding: chunked',
        ],
        `10\r\n${FORM}\r\n0\r\n\r\n`,
      ),
      413,
      'PTTH_ERR_CLAIM_BODY_TOO_LARGE',
    );
    expect(g.gateway.table.list()).toHaveLength(0);
  });

  for (const connection of [true, false]) {
    it(`refuses a declared body that never arrives after claimTimeout and closes (${connection ? 'with' : 'without'} Connection: Upgrade)`, async () => {
      const claimTimeout = 300;
      const g = await start({ claimTimeout });
      const socket = await connect(g.port);
      const t0 = Date.now();
      socket.write(bytes(formClaim(g.port, connection)));
      // Time is the behaviour: the refusal comes after claimTimeout (less timer rounding) and well
      // within 10 x claimTimeout, a bound no busy machine reaches but a hang does.
      const { buf, closed: isClosed } = await readAll(socket, 10 * claimTimeout);
      const elapsed = Date.now() - t0;
      const r = parse(buf);
      expect(elapsed).toBeGreaterThanOrEqual(claimTimeout - 20);
      expect(elapsed).toBeLessThan(10 * claimTimeout);
      expect(buf.toString('latin1'), 'never a 101').not.toMatch(/^HTTP\/1\.\d 101 /m);
      expect(r.statusLine).toMatch(/^HTTP\/1\.1 (400 Bad Request|408 Request Timeout)$/);
      expect(r.header('connection')?.toLowerCase()).toBe('close');
      expect(r.body).toMatch(/in time/);
      expect(isClosed).toBe(true);
      expect(g.gateway.table.list()).toHaveLength(0);
    });
  }
});

describe('early data (docs/PROTOCOL.md section 2)', () => {
  it('refuses bytes sent past a declared body with 400, no 101 (with Connection: Upgrade)', async () => {
    const g = await start();
    await refused(
      g.port,
      bytes(
        [
          'POST / HTTP/1.1',
          `Host: localhost:${g.port}`,
          'Upgrade: PTTH/1.0',
          'Connection: Upgrade',
          'Content-Type: application/x-www-form-urlencoded',
          'Content-Length: 16',
        ],
        'name=bar&token=tearly bytes',
      ),
      400,
    );
    expect(channels(g, 'bar') ?? 0).toBe(0);
  });

  it('refuses bytes sent past a declared body that arrives in a later write with 400, no 101 (with Connection: Upgrade)', async () => {
    const g = await start();
    const socket = await connect(g.port);
    await writeSplit(
      socket,
      bytes([
        'POST / HTTP/1.1',
        `Host: localhost:${g.port}`,
        'Upgrade: PTTH/1.0',
        'Connection: Upgrade',
        'Content-Type: application/x-www-form-urlencoded',
        'Content-Length: 16',
      ]),
      'name=bar&token=tearly bytes',
    );
    await expectRefusal(socket, 400);
    expect(g.gateway.table.lookup('bar')).toBeUndefined();
  });

  // Early bytes of every shape: an invalid method, a partial request line, one byte, a whole pipelined request.
  const EARLY: [string, string][] = [
    ['garbage', 'early bytes'],
    ['one byte', 'P'],
    ['a partial request line', 'GET / HT'],
    ['a whole pipelined request', 'GET / HTTP/1.1\r\nHost: localhost\r\n\r\n'],
  ];

  it.each(EARLY)(
    'refuses %s sent in the same write right after the claim request with 400, no 101 (with Connection: Upgrade)',
    async (_what, early) => {
      const g = await start();
      await refused(g.port, `${ptth(g.port, '?name=foo')}${early}`, 400);
      expect(g.gateway.table.lookup('foo')).toBeUndefined();
    },
  );

  it.each(EARLY)(
    'refuses %s sent in the same write right after the claim request with 400, no 101 (without Connection: Upgrade)',
    async (_what, early) => {
      const g = await start();
      // The refusal, answered and closed, is the end of the claim's handling: no wait after it.
      await refused(g.port, `${ptth(g.port, '?name=foo', { connection: false })}${early}`, 400);
      expect(channels(g, 'foo') ?? 0).toBe(0);
    },
  );

  it('a claim refused for early data does not hold the name (without Connection: Upgrade)', async () => {
    const g = await start();
    await refused(g.port, `${ptth(g.port, '?name=foo', { connection: false })}early bytes`, 400);
    expect(g.gateway.table.lookup('foo'), 'a refused claim leaves no registration behind').toBeUndefined();
    // The claimant retries properly and gets its name.
    const c = await claim(g.port, ptth(g.port, '?name=foo', { connection: false }));
    await expect101(c, 'foo', g.port);
  });

  it('closes the channel when the app sends bytes after the 101 whose claim body came in a later write (with Connection: Upgrade)', async () => {
    const g = await start();
    const socket = await connect(g.port);
    await writeSplit(
      socket,
      bytes([
        'POST / HTTP/1.1',
        `Host: localhost:${g.port}`,
        'Upgrade: PTTH/1.0',
        'Connection: Upgrade',
        'Content-Type: application/x-www-form-urlencoded',
        'Content-Length: 16',
      ]),
      'name=bar&token=t',
    );
    const got = await readUntil(socket, headEnd, 5_000);
    await expect101({ socket, head: got.toString('latin1'), rest: Buffer.alloc(0) }, 'bar', g.port);
    socket.write('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n');
    expect(await closed(socket, 5_000), 'the gateway closes the channel').toBe(true);
    await until(() => channels(g, 'bar') === 0, 5_000, 'the channel to leave the registration');
  });

  for (const connection of [true, false]) {
    it(`closes the channel when the app sends bytes after the 101 and before any reversed request (${connection ? 'with' : 'without'} Connection: Upgrade)`, async () => {
      const g = await start();
      const c = await claim(g.port, ptth(g.port, '?name=foo', { connection }));
      await expect101(c, 'foo', g.port);
      expect(channels(g, 'foo')).toBe(1);
      c.socket.write('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n');
      expect(await closed(c.socket, 5_000), 'the gateway closes the channel').toBe(true);
      await until(() => channels(g, 'foo') === 0, 5_000, 'the channel to leave the registration');
      const r = await request(g.port, { host: `localhost:${g.port}`, headers: { accept: 'application/json' } });
      const state = JSON.parse(r.body) as { registrations: { name: string; channels: unknown[] }[] };
      expect(state.registrations.find((x) => x.name === 'foo')?.channels).toEqual([]);
    });
  }
});

describe('tokens (docs/PROTOCOL.md section 2)', () => {
  it('gives the same name with the same token a second channel (101)', async () => {
    const g = await start();
    const a = await claim(g.port, ptth(g.port, '?name=foo&token=s3cret'));
    const idA = await expect101(a, 'foo', g.port);
    const b = await claim(g.port, ptth(g.port, '?name=foo&token=s3cret', { connection: false }));
    const idB = await expect101(b, 'foo', g.port);
    expect(idB).toBe(idA);
    expect(channels(g, 'foo')).toBe(2);
  });

  it('refuses the same name with another token with 403', async () => {
    const g = await start();
    const a = await claim(g.port, ptth(g.port, '?name=foo&token=s3cret'));
    await expect101(a, 'foo', g.port);
    const r = await refused(g.port, ptth(g.port, '?name=foo&token=other'), 403, 'PTTH_ERR_TOKEN_MISMATCH');
    expect(r.body).toContain('foo');
    await refused(g.port, ptth(g.port, '?name=foo&token=other', { connection: false }), 403, 'PTTH_ERR_TOKEN_MISMATCH');
    expect(channels(g, 'foo')).toBe(1);
  });

  it('refuses the same name with no token with 403', async () => {
    const g = await start();
    const a = await claim(g.port, ptth(g.port, '?name=foo&token=s3cret'));
    await expect101(a, 'foo', g.port);
    await refused(g.port, ptth(g.port, '?name=foo'), 403, 'PTTH_ERR_TOKEN_MISMATCH');
    await refused(g.port, ptth(g.port, '?name=foo', { connection: false }), 403, 'PTTH_ERR_TOKEN_MISMATCH');
    expect(channels(g, 'foo')).toBe(1);
  });

  it('holds a tokenless name by its address: a tokenless claim from there joins, one with a token gets 403', async () => {
    const g = await start();
    const a = await claim(g.port, ptth(g.port, '?name=foo'));
    const id = await expect101(a, 'foo', g.port);
    // Same address, no token: the same client (test/integration/tokenless.test.ts tests other addresses).
    const b = await claim(g.port, ptth(g.port, '?name=foo'));
    expect(await expect101(b, 'foo', g.port)).toBe(id);
    await refused(g.port, ptth(g.port, '?name=foo&token=guess'), 403, 'PTTH_ERR_TOKEN_MISMATCH');
    expect(channels(g, 'foo')).toBe(2);
  });

  it('while the lease runs after every channel dropped, the same token gets the name back and another token gets 403', async () => {
    const g = await start();
    // A lease longer than the test may run: "while the lease runs" holds however slow the machine.
    const a = await claim(g.port, ptth(g.port, '?name=foo&token=s3cret&lease=60'));
    const id = await expect101(a, 'foo', g.port);
    a.socket.destroy();
    await until(() => channels(g, 'foo') === 0, 5_000, 'the channel to drop');
    expect(g.gateway.table.lookup('foo')).toBeDefined();
    await refused(g.port, ptth(g.port, '?name=foo&token=other'), 403, 'PTTH_ERR_TOKEN_MISMATCH');
    await refused(g.port, ptth(g.port, '?name=foo'), 403, 'PTTH_ERR_TOKEN_MISMATCH');
    const b = await claim(g.port, ptth(g.port, '?name=foo&token=s3cret'));
    expect(await expect101(b, 'foo', g.port)).toBe(id);
    expect(channels(g, 'foo')).toBe(1);
  });

  it('after the lease expires with no channel, anyone may claim the name', async () => {
    const g = await start();
    const a = await claim(g.port, ptth(g.port, '?name=foo&token=s3cret&lease=1'));
    const id = await expect101(a, 'foo', g.port);
    a.socket.destroy();
    // Bounded at 10 x the 1 s lease: time is the behaviour, and a busy machine must not fail it.
    await until(() => g.gateway.table.lookup('foo') === undefined, 10_000, 'the lease to expire');
    const b = await claim(g.port, ptth(g.port, '?name=foo&token=other'));
    const id2 = await expect101(b, 'foo', g.port);
    expect(id2).not.toBe(id);
    expect(channels(g, 'foo')).toBe(1);
  });
});

describe('limits and refusals', () => {
  it('refuses a third channel past maxChannels: 2 with 429 and Retry-After', async () => {
    const g = await start({ maxChannels: 2 });
    await expect101(await claim(g.port, ptth(g.port, '?name=foo&token=s')), 'foo', g.port);
    await expect101(await claim(g.port, ptth(g.port, '?name=foo&token=s')), 'foo', g.port);
    const r = await refused(g.port, ptth(g.port, '?name=foo&token=s'), 429, 'PTTH_ERR_TOO_MANY_CHANNELS');
    expect(r.header('retry-after')).toMatch(/^\d+$/);
    const r2 = await refused(
      g.port,
      ptth(g.port, '?name=foo&token=s', { connection: false }),
      429,
      'PTTH_ERR_TOO_MANY_CHANNELS',
    );
    expect(r2.header('retry-after')).toMatch(/^\d+$/);
    expect(channels(g, 'foo')).toBe(2);
  });

  // (Upgrade: websocket on the gateway host is a WebSocket channel claim: test/integration/wschannel.test.ts.)
  it('refuses a non-PTTH upgrade (Upgrade: h2c) on the gateway host with 400 and closes', async () => {
    const g = await start();
    await refused(
      g.port,
      bytes([
        'GET / HTTP/1.1',
        `Host: localhost:${g.port}`,
        'Upgrade: h2c',
        'Connection: Upgrade, HTTP2-Settings',
        'HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA',
      ]),
      400,
      'PTTH_ERR_UNSUPPORTED_UPGRADE',
    );
  });

  it('refusals are ordinary responses with Connection: close and the socket closes (both ways in, JSON when asked)', async () => {
    const g = await start();
    for (const connection of [true, false]) {
      const r = await refused(
        g.port,
        ptth(g.port, '?name=-bad', { connection, extra: ['Accept: application/json'] }),
        400,
        'PTTH_ERR_BAD_NAME',
      );
      expect(r.header('content-type')).toMatch(/^application\/json/);
      const json = JSON.parse(r.body) as { error: { code: string; status: number; message: string } };
      expect(json.error.code).toBe('PTTH_ERR_BAD_NAME');
      expect(json.error.status).toBe(400);
      expect(json.error.message).toMatch(/DNS label/);
    }
  });
});
