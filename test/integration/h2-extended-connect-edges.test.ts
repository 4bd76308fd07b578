import { constants, type ServerHttp2Stream, type IncomingHttpHeaders } from 'node:http2';
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { closed, rawClaim, rawConnect, readUntil, until, type TestGateway } from '../helpers/index.js';
import { track, useGateway } from '../helpers/fixture.js';
import { serveH2 } from '../helpers/h2app.js';

/*
 * Visitors' upgrades over a reversed HTTP/2 channel (RFC 8441 extended CONNECT, src/channels/http2.ts
 * upgrade): an app that never answers (504), one that declines with a non-2xx status (relayed,
 * then the visitor's connection closes), and an upgrade to something other than WebSocket, which
 * HTTP/2 cannot carry (502 PTTH_ERR_UPGRADE_UNSUPPORTED, nothing reaches the app).
 */
interface Seen {
  headers: IncomingHttpHeaders;
  stream: ServerHttp2Stream;
  rstCode?: number;
}

/** An HTTP/2-only app for `name` that accepts extended CONNECT; `onStream` answers (or not). */
type OnStream = (s: ServerHttp2Stream, h: IncomingHttpHeaders) => void;

async function h2App(g: TestGateway, name: string, onStream: OnStream): Promise<Seen[]> {
  const c = await rawClaim(
    g.port,
    `POST /?name=${name}&token=t HTTP/1.1\r\nHost: localhost:${g.port}\r\nUpgrade: ptth\r\nALPN: h2\r\n` +
      'Connection: Upgrade\r\nContent-Length: 0\r\n\r\n',
  );
  expect(c.head).toMatch(/^HTTP\/1\.1 101 /);
  c.socket.on('error', () => {});
  track(c.socket);
  const seen: Seen[] = [];
  await serveH2(
    c.socket,
    c.rest,
    (stream, headers) => {
      const rec: Seen = { headers, stream };
      seen.push(rec);
      stream.on('close', () => (rec.rstCode = stream.rstCode));
      onStream(stream, headers);
    },
    { enableConnectProtocol: true },
  );
  const reg = g.gateway.table.lookup(name);
  await until(() => reg?.channels[0]?.upgradable === true, 3_000, 'an HTTP/2 channel that takes extended CONNECT');
  return seen;
}

async function visitorUpgrade(g: TestGateway, name: string, upgrade: string, extra = ''): Promise<Socket> {
  const s = await rawConnect(g.port);
  track(s);
  s.on('error', () => {});
  s.write(
    `GET /chat HTTP/1.1\r\nHost: ${g.host(name)}\r\nConnection: Upgrade\r\nUpgrade: ${upgrade}\r\n` +
      `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n${extra}\r\n`,
  );
  return s;
}

const fullAnswer = (b: Buffer): boolean => {
  const end = b.indexOf('\r\n\r\n');
  if (end === -1) return false;
  const len = /content-length: (\d+)/i.exec(b.subarray(0, end).toString('latin1'));
  return len !== null && b.length >= end + 4 + Number(len[1]);
};

describe('visitor upgrades over reversed HTTP/2 (extended CONNECT)', () => {
  it('not WebSocket: 502 PTTH_ERR_UPGRADE_UNSUPPORTED, no stream opened, the channel stays', async () => {
    const g = await useGateway({ responseTimeout: 300 });
    const seen = await h2App(g, 'notws', (s) => {
      s.respond({ ':status': 200 });
      s.end();
    });
    const v = await visitorUpgrade(g, 'notws', 'foo/1');
    const answer = (await readUntil(v, fullAnswer)).toString('latin1');
    expect(answer).toMatch(/^HTTP\/1\.1 502 /);
    expect(answer).toMatch(/X-Ptth-Error: PTTH_ERR_UPGRADE_UNSUPPORTED/i);
    expect(seen).toEqual([]);
    expect(g.gateway.table.lookup('notws')?.channels[0]?.available).toBe(true);
  });

  it('no answer to the CONNECT: 504 PTTH_ERR_APP_TIMEOUT after responseTimeout, the stream cancelled', async () => {
    const g = await useGateway({ responseTimeout: 300 });
    const seen = await h2App(g, 'silentws', () => {});
    const v = await visitorUpgrade(g, 'silentws', 'websocket');
    const answer = (await readUntil(v, fullAnswer)).toString('latin1');
    expect(answer).toMatch(/^HTTP\/1\.1 504 /);
    expect(answer).toMatch(/X-Ptth-Error: PTTH_ERR_APP_TIMEOUT/i);
    const pseudo = seen.map((s) => [s.headers[':method'], s.headers[':protocol'], s.headers[':path']]);
    expect(pseudo).toEqual([['CONNECT', 'websocket', '/chat']]);
    await until(() => seen[0]?.rstCode !== undefined, 3_000, 'the CONNECT stream to close');
    expect(seen[0]?.rstCode).toBe(constants.NGHTTP2_CANCEL);
  });

  it('the app declines with 403: status, headers and body reach the visitor, then the connection closes', async () => {
    const g = await useGateway({ responseTimeout: 1_000 });
    await h2App(g, 'nows', (s) => {
      s.respond({ ':status': 403, 'content-type': 'text/plain', 'x-why': 'members only' });
      s.end('go away');
    });
    const v = await visitorUpgrade(g, 'nows', 'websocket');
    const done = closed(v, 3_000, false);
    const answer = (await readUntil(v, (b) => b.includes('go away'))).toString('latin1');
    expect(answer).toMatch(/^HTTP\/1\.1 403 /);
    expect(answer).toMatch(/\r\nx-why: members only\r\n/i);
    expect(answer).toMatch(/\r\nConnection: close\r\n/i);
    expect(answer).not.toMatch(/Sec-WebSocket-Accept/i);
    expect(answer.endsWith('go away')).toBe(true);
    v.resume();
    expect(await done).toBe(true);
  });
});
