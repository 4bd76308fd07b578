/**
 * Apps that attack the gateway through their own channel: WebSocket control frames sized to cost
 * the event loop, and a reversed HTTP/2 session whose header compression the app breaks. Each one
 * must cost only its own channel: its visitors get a clear answer at once, other names are served.
 */
import { describe, expect, it } from 'vitest';
import { MAX_BINARY_MESSAGE, MAX_CONTROL_MESSAGE } from '../../src/channels/websocket.js';
import { MAX_HEAD_BYTES, MAX_HEADER_FIELDS } from '../../src/http/response.js';
import type { GatewayOptions } from '../../src/gateway/server.js';
import { rawClaim, rawConnect, request, until, type TestGateway } from '../helpers/index.js';
import { cleanup, track, useGateway } from '../helpers/fixture.js';
import { END_HEADERS, END_STREAM, HEADERS, RawH2App, frame, headerBlock } from '../helpers/h2app.js';
import { RawWsApp } from '../helpers/wsapp.js';

function noop(): void {}

/**
 * Nothing here may be answered by a timeout: responses and PINGs wait far longer than any test,
 * so a visitor answered at all was answered because the gateway saw what the app did.
 */
const PATIENT: GatewayOptions = { responseTimeout: 600_000, pingInterval: 600_000, pingTimeout: 600_000 };

function gateway(): Promise<TestGateway> {
  return useGateway(PATIENT);
}

async function wsApp(g: TestGateway, name: string): Promise<RawWsApp> {
  const a = await RawWsApp.connect(g.port, { name, token: 't' });
  cleanup(() => a.close());
  await until(() => g.registration(name).channels.length === 1, 3_000, `${name}'s channel`);
  return a;
}

interface Answer {
  status: number | undefined;
  head: string;
  body: Buffer;
}

/**
 * A visitor on a raw socket: `GET path` to `name`. Resolves once a whole response arrived (its
 * Content-Length read) or the gateway closed the connection; it has no timer of its own, so a
 * visitor left waiting fails the test by vitest's own timeout.
 */
async function visit(g: TestGateway, name: string, path = '/'): Promise<Answer> {
  const s = await rawConnect(g.port);
  s.on('error', noop);
  track(s);
  s.write(`GET ${path} HTTP/1.1\r\nHost: ${g.host(name)}\r\n\r\n`);
  return new Promise((resolve) => {
    let buf = Buffer.alloc(0);
    const answer = (): Answer => {
      const end = buf.indexOf('\r\n\r\n');
      const head = end === -1 ? buf.toString('latin1') : buf.subarray(0, end).toString('latin1');
      const status = /^HTTP\/1\.1 (\d{3})/.exec(head)?.[1];
      const body = end === -1 ? Buffer.alloc(0) : buf.subarray(end + 4);
      return { status: status === undefined ? undefined : Number(status), head, body };
    };
    const done = (): void => {
      s.removeAllListeners('data');
      resolve(answer());
    };
    s.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      const a = answer();
      const length = /\r\ncontent-length: *(\d+)/i.exec(a.head)?.[1];
      if (length !== undefined && a.body.length >= Number(length)) done();
    });
    s.once('close', done);
  });
}

/** A WebSocket app that answers every request with `200 ok`, for "the gateway still serves others". */
async function healthyWsApp(g: TestGateway, name: string): Promise<void> {
  const a = await wsApp(g, name);
  const serve = async (): Promise<void> => {
    for (;;) {
      const r = await a.control('request', undefined, 600_000).catch(() => undefined);
      if (!r) return;
      a.respond(r.id as number, 200, 'ok', ['Content-Length', '2']);
    }
  };
  void serve();
}

describe('WebSocket channel: control frames are bounded before they are parsed', () => {
  it('a text frame over the bound closes that channel with 1009; its visitor gets 502, others are served', async () => {
    const g = await gateway();
    await healthyWsApp(g, 'bystander');
    const evil = await wsApp(g, 'bigcontrol');
    const visitor = visit(g, 'bigcontrol');
    const req = await evil.control('request');
    // A response for the visitor's own stream, one byte over the bound.
    const msg = { t: 'response', id: req.id, status: 200, headers: ['x-pad', ''], body: false };
    const base = JSON.stringify(msg).length;
    msg.headers[1] = 'a'.repeat(MAX_CONTROL_MESSAGE + 1 - base);
    const text = JSON.stringify(msg);
    expect(text.length).toBe(MAX_CONTROL_MESSAGE + 1);
    evil.ws.send(text);
    expect(await evil.closed()).toBe(1009);
    const seen = await visitor;
    expect(seen.status).toBe(502);
    expect(seen.head).toContain('X-Ptth-Error: PTTH_ERR_CHANNEL_LOST');
    expect((await request(g.port, { host: g.host('bystander') })).body).toBe('ok');
  });

  it('a control frame for a stream that already ended is just as bounded (1009), not parsed and dropped', async () => {
    const g = await gateway();
    await healthyWsApp(g, 'bystander');
    const evil = await wsApp(g, 'unknownid');
    const visitor = visit(g, 'unknownid');
    const req = await evil.control('request');
    evil.respond(req.id as number, 200, 'ok', ['Content-Length', '2']);
    expect((await visitor).status).toBe(200);
    evil.ws.send(JSON.stringify({ t: 'abort', id: req.id, message: 'm'.repeat(MAX_CONTROL_MESSAGE) }));
    expect(await evil.closed()).toBe(1009);
    expect((await request(g.port, { host: g.host('bystander') })).body).toBe('ok');
  });

  it('a binary frame over 64 KiB + 5 bytes closes the channel with 1009', async () => {
    const g = await gateway();
    await healthyWsApp(g, 'bystander');
    const evil = await wsApp(g, 'bigbody');
    const big = Buffer.alloc(MAX_BINARY_MESSAGE + 1);
    big.writeUInt32BE(7, 1);
    evil.ws.send(big);
    expect(await evil.closed()).toBe(1009);
    expect((await request(g.port, { host: g.host('bystander') })).body).toBe('ok');
  });

  it('a control frame for a stream id the gateway never opened closes the channel with 1002', async () => {
    const g = await gateway();
    const evil = await wsApp(g, 'neveropened');
    evil.send({ t: 'credit', id: 4242, bytes: 1 });
    expect(await evil.closed()).toBe(1002);
  });

  it('a head just under both bounds (fields of `"`, twice their size as JSON) is relayed whole', async () => {
    const g = await gateway();
    const a = await wsApp(g, 'manyheaders');
    const visitor = visit(g, 'manyheaders');
    const req = await a.control('request');
    // Every value is `"`: one byte in the head, two in JSON. The head stops just short of
    // MAX_HEAD_BYTES, counted as the HTTP/1.1 channel's parser would count it.
    const headers: string[] = ['Content-Length', '2'];
    let head = 'HTTP/1.1 200 OK\r\n'.length + 'Content-Length: 2\r\n'.length + 2;
    for (let i = 0; head + 8 + 4 + 200 <= MAX_HEAD_BYTES - 64; i++) {
      const name = `x-${String(i).padStart(6, '0')}`;
      headers.push(name, '"'.repeat(200));
      head += name.length + 200 + 4;
    }
    const msg = { t: 'response', id: req.id as number, status: 200, statusText: 'OK', headers, body: true };
    const size = JSON.stringify(msg).length;
    expect(size).toBeLessThanOrEqual(MAX_CONTROL_MESSAGE);
    expect(size).toBeGreaterThan(MAX_CONTROL_MESSAGE * 0.9);
    a.send(msg);
    a.frame(req.id as number, Buffer.from('ok'), true);
    const seen = await visitor;
    expect(seen.status).toBe(200);
    expect(seen.body.toString()).toBe('ok');
    for (let i = 2; i < headers.length; i += 2) {
      expect(seen.head).toContain(`\r\n${headers[i] as string}: ${'"'.repeat(200)}`);
    }
  });

  it.each([
    ["a head over the HTTP/1.1 channel's size", ['x-big', 'b'.repeat(MAX_HEAD_BYTES)]],
    ['more fields than the HTTP/1.1 channel keeps', new Array<string>(2 * (MAX_HEADER_FIELDS + 1)).fill('a')],
  ])('%s: 502 PTTH_ERR_BAD_RESPONSE and an abort; the channel carries on', async (_label, headers) => {
    const g = await gateway();
    const a = await wsApp(g, 'bighead');
    const visitor = visit(g, 'bighead');
    const req = await a.control('request');
    a.send({ t: 'response', id: req.id as number, status: 200, headers, body: false });
    const seen = await visitor;
    expect(seen.status).toBe(502);
    expect(seen.head).toContain('X-Ptth-Error: PTTH_ERR_BAD_RESPONSE');
    expect(await a.control('abort', req.id)).toMatchObject({ t: 'abort', id: req.id });
    const next = visit(g, 'bighead');
    const again = await a.control('request');
    a.respond(again.id as number, 200, 'ok', ['Content-Length', '2']);
    expect((await next).body.toString()).toBe('ok');
  });
});

/** `Upgrade: ptth` + `ALPN: h2` on a raw socket: a bare-frames reversed-HTTP/2 app for `name`. */
async function rawH2App(g: TestGateway, name: string): Promise<RawH2App> {
  const claim = [
    `POST /?name=${name}&token=t HTTP/1.1`,
    `Host: localhost:${g.port}`,
    'Upgrade: ptth',
    'Connection: Upgrade',
    'ALPN: h2',
    'Content-Length: 0',
    '',
    '',
  ];
  const c = await rawClaim(g.port, claim.join('\r\n'));
  expect(c.head).toMatch(/^HTTP\/1\.1 101 [^]*ALPN: h2/);
  c.socket.on('error', noop);
  track(c.socket);
  const app = new RawH2App(c.socket, c.rest);
  await until(() => g.registration(name).channels[0]?.available === true, 3_000, `${name}'s HTTP/2 channel`);
  return app;
}

describe('reversed HTTP/2: an app that breaks the connection', () => {
  it('a header block that is no valid HPACK: every visitor in flight gets 502 at once, the channel goes', async () => {
    const g = await gateway();
    const bystander = await rawH2App(g, 'h2bystander');
    const evil = await rawH2App(g, 'h2hpack');
    const first = visit(g, 'h2hpack', '/first');
    const second = visit(g, 'h2hpack', '/second');
    const id = await evil.request(1);
    await evil.request(2);
    // RFC 7541 section 6.1: index 0 is not a field; 0xff 0xff runs past both tables. A
    // COMPRESSION_ERROR is a connection error (RFC 9113 section 4.3): nghttp2 sends GOAWAY.
    evil.write(frame(HEADERS, END_HEADERS | END_STREAM, id, Buffer.from([0x80, 0xff, 0xff])));
    for (const seen of [await first, await second]) {
      expect(seen.status).toBe(502);
      expect(seen.head).toContain('X-Ptth-Error: PTTH_ERR_BAD_RESPONSE');
    }
    await until(() => g.registration('h2hpack').channels.length === 0, 3_000, 'the broken session to be released');
    const other = visit(g, 'h2bystander');
    const next = await bystander.request(1);
    const ok = headerBlock([
      [':status', '200'],
      ['content-length', '0'],
    ]);
    bystander.write(frame(HEADERS, END_HEADERS | END_STREAM, next, ok));
    expect((await other).status).toBe(200);
  });
});
