import type { IncomingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import { describe, expect, it } from 'vitest';
import { rawClaim, rawConnect, readUntil, request, until } from '../helpers/index.js';
import { track, useApp, useGateway } from '../helpers/fixture.js';
import type { TestGateway } from '../helpers/index.js';
import { serveH2 } from '../helpers/h2app.js';

/*
 * Requests llhttp accepts from a visitor but node's client refuses to send (the catch around
 * `session.request` in src/channels/http2.ts): a field HTTP/2 allows only once (RFC 9110 gives
 * Content-Type and User-Agent one value), sent twice. node:http2 throws
 * ERR_HTTP2_HEADER_SINGLE_VALUE before anything is written: 400 PTTH_ERR_BAD_PARAMS, the app sees
 * nothing, the channel carries on. Over HTTP/1.1 the same request goes through as sent.
 *
 * The HTTP/1.1 channel's catch around `request(...)` has no such input: node's client validates
 * paths, names and values with the same character classes node's llhttp enforces on visitors
 * (tab or form feed in a path, DEL, NUL or controls in a value, obs-fold: all refused by the
 * parser first, 400 HPE_*), so nothing llhttp passes makes it throw.
 */
async function h2App(g: TestGateway, name: string, seen: IncomingHttpHeaders[]): Promise<void> {
  const c = await rawClaim(
    g.port,
    `POST /?name=${name}&token=t HTTP/1.1\r\nHost: localhost:${g.port}\r\nUpgrade: ptth\r\nALPN: h2\r\n` +
      'Connection: Upgrade\r\nContent-Length: 0\r\n\r\n',
  );
  expect(c.head).toMatch(/^HTTP\/1\.1 101 /);
  c.socket.on('error', () => {});
  track(c.socket);
  await serveH2(
    c.socket,
    c.rest,
    (stream: ServerHttp2Stream, headers) => {
      seen.push(headers);
      stream.respond({ ':status': 200 });
      stream.end(`h2 ${String(headers[':path'])}`);
    },
    { enableConnectProtocol: true },
  );
  const reg = g.gateway.table.lookup(name);
  await until(() => reg?.channels[0]?.upgradable === true, 3_000, `${name}'s HTTP/2 channel`);
}

async function raw(g: TestGateway, bytes: string): Promise<string> {
  const s = await rawConnect(g.port);
  track(s);
  s.on('error', () => {});
  s.write(bytes);
  const got = await readUntil(s, (b) => {
    const end = b.indexOf('\r\n\r\n');
    const len = end === -1 ? null : /content-length: (\d+)/i.exec(b.subarray(0, end).toString('latin1'));
    return len !== null && b.length >= end + 4 + Number(len[1]);
  });
  return got.toString('latin1');
}

describe('a request node:http2 refuses to send', () => {
  it('Content-Type twice: 400 PTTH_ERR_BAD_PARAMS, the HTTP/2 app sees nothing, the channel serves on', async () => {
    const g = await useGateway({ responseTimeout: 1_000 });
    const seen: IncomingHttpHeaders[] = [];
    await h2App(g, 'twice', seen);
    const answer = await raw(
      g,
      `POST /form HTTP/1.1\r\nHost: ${g.host('twice')}\r\nContent-Type: text/plain\r\nContent-Type: text/html\r\n` +
        'Content-Length: 2\r\n\r\nhi',
    );
    expect(answer).toMatch(/^HTTP\/1\.1 400 /);
    expect(answer).toMatch(/X-Ptth-Error: PTTH_ERR_BAD_PARAMS/i);
    expect(answer).toMatch(/could not be forwarded over HTTP\/2: .*content-type/i);
    expect(seen).toEqual([]);
    const next = await request(g.port, { host: g.host('twice'), path: '/next' });
    expect([next.status, next.body]).toEqual([200, 'h2 /next']);
    expect(seen.map((h) => h[':path'])).toEqual(['/next']);
  });

  it('a WebSocket upgrade with User-Agent twice: 400 PTTH_ERR_BAD_PARAMS before any CONNECT stream opens', async () => {
    const g = await useGateway({ responseTimeout: 1_000 });
    const seen: IncomingHttpHeaders[] = [];
    await h2App(g, 'twiceup', seen);
    const answer = await raw(
      g,
      `GET /chat HTTP/1.1\r\nHost: ${g.host('twiceup')}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
        'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n' +
        'User-Agent: a\r\nUser-Agent: b\r\n\r\n',
    );
    expect(answer).toMatch(/^HTTP\/1\.1 400 /);
    expect(answer).toMatch(/X-Ptth-Error: PTTH_ERR_BAD_PARAMS/i);
    expect(seen).toEqual([]);
    expect(g.gateway.table.lookup('twiceup')?.channels[0]?.available).toBe(true);
  });

  it('over HTTP/1.1 the same request is forwarded as sent: both values reach the app', async () => {
    const g = await useGateway({ responseTimeout: 1_000 });
    await useApp(g.port, (req, res) => res.end(JSON.stringify(req.headersDistinct['content-type'])), {
      name: 'twice1',
      http1: true,
      connections: 1,
    });
    const answer = await raw(
      g,
      `POST /form HTTP/1.1\r\nHost: ${g.host('twice1')}\r\nContent-Type: text/plain\r\nContent-Type: text/html\r\n` +
        'Content-Length: 2\r\n\r\nhi',
    );
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    expect(answer.endsWith('["text/plain","text/html"]')).toBe(true);
  });
});
