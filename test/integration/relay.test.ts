import * as http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { generateKey } from '../../src/table/access.js';
import type { RelayEvent } from '../../src/gateway/eventmap.js';
import type { GatewayOptions } from '../../src/gateway/server.js';
import { parseResponse } from '../../src/http/message.js';
import { cleanup, useGateway, useSocket } from '../helpers/fixture.js';
import { attachLogger, createLogger } from '../../src/log.js';

/*
 * The RelayHttp endpoint through a real gateway (docs/PROTOCOL.md section 10): POST /relay/HOST[:PORT]
 * with one request as message/http, answered with the target's response as message/http. Every
 * target is a loopback server of the test's own, named by address in the test's allow-list.
 */

interface Target {
  port: number;
  connections(): number;
}

async function useTarget(handler: http.RequestListener): Promise<Target> {
  const server = http.createServer(handler);
  const sockets = new Set<Socket>();
  let connections = 0;
  server.on('connection', (s: Socket) => {
    connections++;
    sockets.add(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanup(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => server.close(r));
  });
  return { port: (server.address() as AddressInfo).port, connections: () => connections };
}

const relayer = generateKey();
const plain = generateKey();

function keysFor(relay: string[]): NonNullable<GatewayOptions['access']> {
  return {
    keys: [
      { id: 'relayer', sha256: relayer.sha256, names: ['*'], relay },
      { id: 'plain', sha256: plain.sha256, names: ['*'] },
    ],
  };
}

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

function post(
  port: number,
  path: string,
  body: string | Buffer,
  headers: http.OutgoingHttpHeaders = {},
  method = 'POST',
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    // Content-Length always: node sends a GET's body unframed otherwise.
    const framed = { 'Content-Length': Buffer.byteLength(body), ...headers };
    const req = http.request({ host: '127.0.0.1', port, path, method, agent: false, headers: framed }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const envelope = (_text: string): Record<string, string> => ({
  'Content-Type': 'message/http',
  Authorization: `Bearer ${relayer.key}`,
});
const GET = 'GET /hello?x=1 HTTP/1.1\r\nHost: target\r\nX-Asked: yes\r\n\r\n';

async function relayGateway(allow: (t: Target) => string[], t: Target, extra: GatewayOptions = {}) {
  const gw = await useGateway({ relay: true, access: keysFor(allow(t)), ...extra });
  const events: RelayEvent[] = [];
  gw.gateway.on('relay', (e) => events.push(e));
  return { gw, events };
}

describe('the RelayHttp endpoint', () => {
  it('relays a request to a listed target and answers with its response as message/http; logs and counts it', async () => {
    let asked: string | undefined;
    const t = await useTarget((req, res) => {
      asked = `${req.method} ${req.url} ${String(req.headers['x-asked'])}`;
      res.setHeader('X-From', 'target');
      res.end('hello back');
    });
    const { gw, events } = await relayGateway((x) => [`127.0.0.1:${x.port}`], t);
    const a = await post(gw.port, `/relay/127.0.0.1:${t.port}`, GET, envelope(GET));
    expect(a.status).toBe(200);
    expect(a.headers['content-type']).toBe('message/http');
    const inner = await parseResponse(a.body, 'GET');
    expect(inner.status).toBe(200);
    expect(inner.body.toString()).toBe('hello back');
    expect(inner.rawHeaders).toContain('x-from');
    expect(asked).toBe('GET /hello?x=1 yes');
    expect(events).toEqual([
      expect.objectContaining({
        keyId: 'relayer',
        target: `127.0.0.1:${t.port}`,
        method: 'GET',
        path: '/hello',
        status: 200,
        error: undefined,
      }),
    ]);
    const metrics = await gw.gateway.metrics!.text();
    expect(metrics).toMatch(/ptth_relay_requests_total\{status="200",code=""\} 1/);
  });

  it('writes one access-log line per relay: info when served, warn when the gateway failed it, never the query', async () => {
    const t = await useTarget((req, res) => {
      if (req.url?.startsWith('/slow')) return; // never answers
      res.end('ok');
    });
    const { gw } = await relayGateway((x) => [`127.0.0.1:${x.port}`], t, { relayTimeout: 200 });
    const lines: Record<string, unknown>[] = [];
    attachLogger(
      gw.gateway,
      createLogger({
        destination: { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) },
      }),
    );
    const ok = 'GET /fine?secret=1 HTTP/1.1\r\nHost: t\r\n\r\n';
    expect((await post(gw.port, `/relay/127.0.0.1:${t.port}`, ok, envelope(ok))).status).toBe(200);
    const slow = 'GET /slow HTTP/1.1\r\nHost: t\r\n\r\n';
    expect((await post(gw.port, `/relay/127.0.0.1:${t.port}`, slow, envelope(slow))).status).toBe(504);
    const relays = lines.filter((l) => l['event'] === 'relay');
    expect(relays).toEqual([
      expect.objectContaining({ level: 30, keyId: 'relayer', path: '/fine', status: 200 }),
      expect.objectContaining({
        level: 40,
        keyId: 'relayer',
        path: '/slow',
        status: 504,
        error: 'PTTH_ERR_RELAY_TIMEOUT',
      }),
    ]);
    expect(JSON.stringify(relays)).not.toContain('secret');
  });

  it('is off by default: 404, and the target never hears of it', async () => {
    const t = await useTarget((_req, res) => res.end());
    const gw = await useGateway({ access: keysFor([`127.0.0.1:${t.port}`]) });
    const a = await post(gw.port, `/relay/127.0.0.1:${t.port}`, GET, envelope(GET));
    expect(a.status).toBe(404);
    expect(t.connections()).toBe(0);
  });

  it.each([
    ['no key', {}, 401, 'PTTH_ERR_RELAY_KEY_REQUIRED'],
    ['an unknown key', { Authorization: 'Bearer not-a-key' }, 401, 'PTTH_ERR_KEY_INVALID'],
    ['a key without a relay list', { Authorization: `Bearer ${plain.key}` }, 403, 'PTTH_ERR_RELAY_FORBIDDEN'],
  ])('asks for a key with the target in its list: %s gets %s', async (_what, auth, status, code) => {
    const t = await useTarget((_req, res) => res.end());
    const { gw, events } = await relayGateway((x) => [`127.0.0.1:${x.port}`], t);
    const a = await post(gw.port, `/relay/127.0.0.1:${t.port}`, GET, { 'Content-Type': 'message/http', ...auth });
    expect(a.status).toBe(status);
    expect(a.headers['x-ptth-error']).toBe(code);
    expect(t.connections()).toBe(0);
    expect(events[0]).toMatchObject({ status, error: code });
  });

  it('asks for a key even on a gateway without keys (no allow-list can exist there)', async () => {
    const gw = await useGateway({ relay: true });
    const a = await post(gw.port, '/relay/127.0.0.1:9', GET, envelope(GET));
    expect(a.status).toBe(401);
    expect(a.headers['x-ptth-error']).toBe('PTTH_ERR_KEY_INVALID');
  });

  it.each([
    ['GET', 'GET', '/relay/127.0.0.1:PORT', 'message/http', 405, 'PTTH_ERR_METHOD_NOT_ALLOWED'],
    [
      'an application/http pipeline',
      'POST',
      '/relay/127.0.0.1:PORT',
      'application/http',
      415,
      'PTTH_ERR_RELAY_MEDIA_TYPE',
    ],
    ['another media type', 'POST', '/relay/127.0.0.1:PORT', 'text/plain', 415, 'PTTH_ERR_RELAY_MEDIA_TYPE'],
    ['a target that is no HOST[:PORT]', 'POST', '/relay/user@host/x', 'message/http', 400, 'PTTH_ERR_RELAY_BAD_TARGET'],
    ['a target outside the list', 'POST', '/relay/127.0.0.2:PORT', 'message/http', 403, 'PTTH_ERR_RELAY_FORBIDDEN'],
  ])('refuses %s', async (_what, method, path, type, status, code) => {
    const t = await useTarget((_req, res) => res.end());
    const { gw } = await relayGateway((x) => [`127.0.0.1:${x.port}`], t);
    const a = await post(
      gw.port,
      path.replace('PORT', String(t.port)),
      GET,
      { 'Content-Type': type, Authorization: `Bearer ${relayer.key}` },
      method,
    );
    expect(a.status).toBe(status);
    expect(a.headers['x-ptth-error']).toBe(code);
    expect(t.connections()).toBe(0);
  });

  it('refuses an envelope that is not one valid request (400) and one over --relay-max-request (413)', async () => {
    const t = await useTarget((_req, res) => res.end());
    const { gw } = await relayGateway((x) => [`127.0.0.1:${x.port}`], t, { relayMaxRequest: 1024 });
    const bad = await post(gw.port, `/relay/127.0.0.1:${t.port}`, 'nonsense\r\n\r\n', envelope(''));
    expect(bad.status).toBe(400);
    expect(bad.headers['x-ptth-error']).toBe('PTTH_ERR_RELAY_BAD_MESSAGE');
    const big = `POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n${'a'.repeat(2000)}`;
    const large = await post(gw.port, `/relay/127.0.0.1:${t.port}`, big, envelope(big));
    expect(large.status).toBe(413);
    expect(large.headers['x-ptth-error']).toBe('PTTH_ERR_RELAY_REQUEST_TOO_LARGE');
    expect(t.connections()).toBe(0);
  });

  it("answers 408 when the envelope does not arrive within --claim-timeout, and frees the key's slot", async () => {
    const t = await useTarget((_req, res) => res.end());
    const { gw, events } = await relayGateway((x) => [`127.0.0.1:${x.port}`], t, {
      claimTimeout: 200,
      relayMaxPerKey: 1,
    });
    const s = await useSocket(gw.port);
    s.write(
      `POST /relay/127.0.0.1:${t.port} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: message/http\r\n` +
        `Authorization: Bearer ${relayer.key}\r\nContent-Length: 100\r\n\r\nGET / HTTP/1.1\r\n`,
    );
    const head = await new Promise<string>((resolve) => {
      let got = '';
      s.on('data', (c: Buffer) => {
        got += c.toString('latin1');
        if (got.includes('\r\n\r\n')) resolve(got);
      });
    });
    expect(head).toMatch(/^HTTP\/1\.1 408 /);
    expect(head).toContain('X-Ptth-Error: PTTH_ERR_BODY_TIMEOUT');
    expect(events[0]).toMatchObject({ status: 408, error: 'PTTH_ERR_BODY_TIMEOUT' });
    expect(gw.gateway.relay?.inflight('relayer')).toBe(0);
    expect(t.connections()).toBe(0);
  });

  it('refuses a listed name that resolves to loopback when loopback is not listed by address (DNS rebinding)', async () => {
    const t = await useTarget((_req, res) => res.end('secret'));
    const { gw } = await relayGateway((x) => [`localhost:${x.port}`], t);
    const a = await post(gw.port, `/relay/localhost:${t.port}`, GET, envelope(GET));
    expect(a.status).toBe(403);
    expect(a.headers['x-ptth-error']).toBe('PTTH_ERR_RELAY_FORBIDDEN');
    expect(a.body.toString()).toContain('loopback');
    expect(t.connections()).toBe(0);
  });

  it('answers 502 for a response over --relay-max-response and 504 past --relay-timeout', async () => {
    const t = await useTarget((req, res) => {
      if (req.url === '/big') res.end(Buffer.alloc(4096));
      // /slow: never answers
    });
    const { gw } = await relayGateway((x) => [`127.0.0.1:${x.port}`], t, { relayMaxResponse: 1024, relayTimeout: 300 });
    const big = 'GET /big HTTP/1.1\r\nHost: t\r\n\r\n';
    const a = await post(gw.port, `/relay/127.0.0.1:${t.port}`, big, envelope(big));
    expect(a.status).toBe(502);
    expect(a.headers['x-ptth-error']).toBe('PTTH_ERR_RELAY_TOO_LARGE');
    const slow = 'GET /slow HTTP/1.1\r\nHost: t\r\n\r\n';
    const b = await post(gw.port, `/relay/127.0.0.1:${t.port}`, slow, envelope(slow));
    expect(b.status).toBe(504);
    expect(b.headers['x-ptth-error']).toBe('PTTH_ERR_RELAY_TIMEOUT');
  });

  it('answers 502 PTTH_ERR_RELAY_UNREACHABLE when a listed target refuses the connection', async () => {
    // A loopback port nothing listens on any more.
    const probe = http.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const port = (probe.address() as AddressInfo).port;
    await new Promise((r) => probe.close(r));
    const gw = await useGateway({ relay: true, access: keysFor([`127.0.0.1:${port}`]) });
    const a = await post(gw.port, `/relay/127.0.0.1:${port}`, GET, envelope(GET));
    expect(a.status).toBe(502);
    expect(a.headers['x-ptth-error']).toBe('PTTH_ERR_RELAY_UNREACHABLE');
  });

  it('holds a key to --relay-max-per-key relays in flight (429 past it), and frees the slot when one ends', async () => {
    let release: (() => void) | undefined;
    let arrived: (() => void) | undefined;
    const first = new Promise<void>((r) => (arrived = r));
    let held = 0;
    const t = await useTarget((_req, res) => {
      // The first request is held until the test lets it go; later ones are answered at once.
      if (held++ > 0) return void res.end('done');
      arrived?.();
      release = () => res.end('done');
    });
    const { gw } = await relayGateway((x) => [`127.0.0.1:${x.port}`], t, { relayMaxPerKey: 1 });
    const one = post(gw.port, `/relay/127.0.0.1:${t.port}`, GET, envelope(GET));
    await first;
    const two = await post(gw.port, `/relay/127.0.0.1:${t.port}`, GET, envelope(GET));
    expect(two.status).toBe(429);
    expect(two.headers['x-ptth-error']).toBe('PTTH_ERR_RELAY_BUSY');
    release?.();
    expect((await one).status).toBe(200);
    expect(gw.gateway.relay?.inflight('relayer')).toBe(0);
    const three = await post(gw.port, `/relay/127.0.0.1:${t.port}`, GET, envelope(GET));
    expect(three.status).toBe(200);
  });

  it('answers a CORS preflight so a page on another origin can relay with its key', async () => {
    const t = await useTarget((_req, res) => res.end());
    const { gw } = await relayGateway((x) => [`127.0.0.1:${x.port}`], t);
    const a = await post(
      gw.port,
      `/relay/127.0.0.1:${t.port}`,
      '',
      {
        Origin: 'http://page.example',
        'Access-Control-Request-Method': 'POST',
        'Access-Control-Request-Headers': 'authorization, content-type',
      },
      'OPTIONS',
    );
    expect(a.status).toBe(204);
    expect(a.headers['access-control-allow-origin']).toBe('http://page.example');
    expect(a.headers['access-control-allow-headers']).toContain('authorization');
  });

  it('refuses a keys file whose relay list is not host[:port] patterns, saying where', async () => {
    await expect(useGateway({ relay: true, access: keysFor(['*.bad.*']) })).rejects.toThrow(/keys\[0\].*relay\[0\]/);
  });
});
