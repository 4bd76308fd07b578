import * as http from 'node:http';
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { headEnd, rawClaim, rawConnect, readUntil, request, type TestGateway } from '../helpers/index.js';
import { track, useApp, useGateway } from '../helpers/fixture.js';

/*
 * Which host a request names: the Host header and, for an absolute-form target, the target's own
 * authority (RFC 9112 section 3.2.2). A mismatch is refused with 400 PTTH_ERR_BAD_TARGET; a match
 * reaches the app in origin-form. A Host whose port is not a decimal port number (RFC 3986 section
 * 3.2.3) is refused with 400 PTTH_ERR_BAD_HOST for visitors, visitor upgrades and every claim.
 * Raw sockets: the exact bytes matter.
 */

const CLAIM_HEADERS = 'Upgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n';
const UPGRADE = 'Upgrade: echo\r\nConnection: Upgrade\r\n\r\n';

interface Seen {
  url: string;
  host: string;
}

/** A gateway with two apps, `victim` and `other`, each recording what it receives (requests and upgrades). */
async function twoApps(): Promise<{ g: TestGateway; seen: Record<string, Seen[]> }> {
  const g = await useGateway();
  const seen: Record<string, Seen[]> = { victim: [], other: [] };
  for (const name of ['victim', 'other']) {
    const server = http.createServer((req, res) => {
      seen[name]?.push({ url: req.url ?? '', host: req.headers.host ?? '' });
      res.end(`${name} saw ${req.url ?? ''}`);
    });
    server.on('upgrade', (req: http.IncomingMessage, socket: Socket) => {
      seen[name]?.push({ url: req.url ?? '', host: req.headers.host ?? '' });
      const head = `HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n`;
      socket.end(`${head}X-Url: ${req.url ?? ''}\r\n\r\n`);
    });
    await useApp(g.port, server, { name, connections: 1 });
  }
  return { g, seen };
}

/** A PTTH/1.0 channel claimed by hand: the socket reads the exact bytes the gateway writes to the app. */
async function rawApp(g: TestGateway, name: string): Promise<Socket> {
  const { socket, head } = await rawClaim(
    g.port,
    `POST /?name=${name} HTTP/1.1\r\nHost: localhost:${g.port}\r\n${CLAIM_HEADERS}`,
  );
  track(socket);
  expect(head).toMatch(/^HTTP\/1\.1 101 /);
  return socket;
}

/** Writes `bytes` on a new connection and reads the answer head (and what follows it, up to a short wait). */
async function raw(port: number, bytes: string): Promise<string> {
  const s = await rawConnect(port);
  track(s);
  s.write(bytes);
  return (await readUntil(s, headEnd)).toString('latin1');
}

function code(head: string): string | undefined {
  return /\r\nX-Ptth-Error: (\S+)\r\n/i.exec(head)?.[1];
}

describe('absolute-form request targets (RFC 9112 section 3.2.2)', () => {
  it('a target naming another host than Host is refused with 400, and neither app sees it', async () => {
    const { g, seen } = await twoApps();
    const head = await raw(g.port, `GET http://${g.host('other')}/x HTTP/1.1\r\nHost: ${g.host('victim')}\r\n\r\n`);
    expect(head).toMatch(/^HTTP\/1\.1 400 /);
    expect(code(head)).toBe('PTTH_ERR_BAD_TARGET');
    expect(head).toMatch(/\r\nConnection: close\r\n/i);
    // The next request to each app is the first it sees.
    expect((await request(g.port, { host: g.host('victim'), path: '/after' })).body).toBe('victim saw /after');
    expect((await request(g.port, { host: g.host('other'), path: '/after' })).body).toBe('other saw /after');
    expect(seen['victim']).toEqual([{ url: '/after', host: g.host('victim') }]);
    expect(seen['other']).toEqual([{ url: '/after', host: g.host('other') }]);
  });

  it('a target naming the same host (any case) reaches the app in origin-form as sent, query kept', async () => {
    const g = await useGateway();
    const app = await rawApp(g, 'same');
    const visitor = await rawConnect(g.port);
    track(visitor);
    const target = `http://SAME.localhost:${g.port}/p/a%2Fb/../c?q=1&r=2`;
    visitor.write(`GET ${target} HTTP/1.1\r\nHost: ${g.host('same')}\r\n\r\n`);
    const line = (await readUntil(app, headEnd)).toString('latin1').split('\r\n')[0];
    expect(line).toBe('GET /p/a%2Fb/../c?q=1&r=2 HTTP/1.1');
    app.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    const answer = await readUntil(visitor, (b) => b.toString('latin1').endsWith('ok'));
    expect(answer.toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    visitor.write(`GET http://${g.host('same')}?only=query HTTP/1.1\r\nHost: ${g.host('same')}\r\n\r\n`);
    const second = (await readUntil(app, headEnd)).toString('latin1').split('\r\n')[0];
    expect(second).toBe('GET /?only=query HTTP/1.1');
  });

  it('a target with userinfo or a scheme other than http(s) is refused with 400', async () => {
    const { g, seen } = await twoApps();
    for (const target of [`http://user@${g.host('victim')}/`, `ftp://${g.host('victim')}/`]) {
      const head = await raw(g.port, `GET ${target} HTTP/1.1\r\nHost: ${g.host('victim')}\r\n\r\n`);
      expect(head, target).toMatch(/^HTTP\/1\.1 400 /);
      expect(code(head), target).toBe('PTTH_ERR_BAD_TARGET');
    }
    expect(seen['victim']).toEqual([]);
  });

  it('a visitor upgrade with a mismatched target is refused; a matching one gets origin-form', async () => {
    const { g, seen } = await twoApps();
    const target = `http://${g.host('other')}/ws`;
    const bad = await raw(g.port, `GET ${target} HTTP/1.1\r\nHost: ${g.host('victim')}\r\n${UPGRADE}`);
    expect(bad).toMatch(/^HTTP\/1\.1 400 /);
    expect(code(bad)).toBe('PTTH_ERR_BAD_TARGET');
    expect(seen['other']).toEqual([]);
    expect(seen['victim']).toEqual([]);
    const app = await rawApp(g, 'rawup');
    const visitor = await rawConnect(g.port);
    track(visitor);
    visitor.write(`GET http://${g.host('rawup')}/ws?x=1 HTTP/1.1\r\nHost: ${g.host('rawup')}\r\n${UPGRADE}`);
    const line = (await readUntil(app, headEnd)).toString('latin1').split('\r\n')[0];
    expect(line).toBe('GET /ws?x=1 HTTP/1.1');
  });

  it('a native claim with a mismatched target is refused and names nothing', async () => {
    const g = await useGateway();
    const head = await raw(
      g.port,
      `POST http://${g.host('elsewhere')}/?name=elsewhere HTTP/1.1\r\nHost: ${g.host('claimed')}\r\n${CLAIM_HEADERS}`,
    );
    expect(head).toMatch(/^HTTP\/1\.1 400 /);
    expect(code(head)).toBe('PTTH_ERR_BAD_TARGET');
    expect(g.gateway.table.list()).toEqual([]);
  });
});

const BAD_PORTS = ['abc', '', '99999', '80:90', '+80', '8 0', '0x50'];

describe('a Host with a port that is not a port number (RFC 3986 section 3.2.3)', () => {
  it.each(BAD_PORTS)('visitor request, Host "victim.localhost:%s": 400 PTTH_ERR_BAD_HOST', async (port) => {
    const { g, seen } = await twoApps();
    const head = await raw(g.port, `GET /x HTTP/1.1\r\nHost: victim.localhost:${port}\r\n\r\n`);
    expect(head).toMatch(/^HTTP\/1\.1 400 /);
    expect(code(head)).toBe('PTTH_ERR_BAD_HOST');
    expect(seen['victim']).toEqual([]);
  });

  it('a Host that is only ":" is refused too', async () => {
    const g = await useGateway();
    const head = await raw(g.port, 'GET / HTTP/1.1\r\nHost: :\r\n\r\n');
    expect(head).toMatch(/^HTTP\/1\.1 400 /);
    expect(code(head)).toBe('PTTH_ERR_BAD_HOST');
  });

  it('visitor upgrade: 400 PTTH_ERR_BAD_HOST, the app never sees it', async () => {
    const { g, seen } = await twoApps();
    const head = await raw(g.port, `GET /ws HTTP/1.1\r\nHost: victim.localhost:abc\r\n${UPGRADE}`);
    expect(head).toMatch(/^HTTP\/1\.1 400 /);
    expect(code(head)).toBe('PTTH_ERR_BAD_HOST');
    expect(seen['victim']).toEqual([]);
  });

  it('native claims (Connection: Upgrade or not, gateway host or app host): 400, nothing registered', async () => {
    const g = await useGateway();
    const claims = [
      `POST /?name=a1 HTTP/1.1\r\nHost: localhost:abc\r\n${CLAIM_HEADERS}`,
      `POST / HTTP/1.1\r\nHost: a2.localhost:99999\r\n${CLAIM_HEADERS}`,
      'POST /?name=a3 HTTP/1.1\r\nHost: localhost:\r\nUpgrade: PTTH/1.0\r\nContent-Length: 0\r\n\r\n',
      'POST / HTTP/1.1\r\nHost: a4.localhost:x\r\nUpgrade: ptth\r\nConnection: Upgrade\r\nALPN: h2\r\n' +
        'Content-Length: 0\r\n\r\n',
    ];
    for (const bytes of claims) {
      const head = await raw(g.port, bytes);
      expect(head, bytes).toMatch(/^HTTP\/1\.1 400 /);
      expect(code(head), bytes).toBe('PTTH_ERR_BAD_HOST');
    }
    expect(g.gateway.table.list()).toEqual([]);
  });

  it('WebSocket channel and Comet registration on the gateway host: 400, nothing registered', async () => {
    const g = await useGateway();
    const ws = await raw(
      g.port,
      'GET /?name=w1 HTTP/1.1\r\nHost: localhost:abc\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n' +
        'Sec-WebSocket-Protocol: ptth.v1\r\n\r\n',
    );
    expect(ws).toMatch(/^HTTP\/1\.1 400 /);
    expect(code(ws)).toBe('PTTH_ERR_BAD_HOST');
    const comet = await raw(
      g.port,
      'POST /reversehttp HTTP/1.1\r\nHost: 127.0.0.1:abc\r\n' +
        'Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\nname=c1',
    );
    expect(comet).toMatch(/^HTTP\/1\.1 400 /);
    expect(code(comet)).toBe('PTTH_ERR_BAD_HOST');
    expect(g.gateway.table.list()).toEqual([]);
  });

  it('valid Hosts still route: a name with a port, IPv4 and IPv6 literals, no port at all', async () => {
    const { g } = await twoApps();
    expect((await request(g.port, { host: g.host('victim'), path: '/ok' })).body).toBe('victim saw /ok');
    expect((await request(g.port, { host: 'victim.localhost', path: '/ok' })).body).toBe('victim saw /ok');
    for (const host of [`127.0.0.1:${g.port}`, `[::1]:${g.port}`, 'localhost']) {
      const r = await request(g.port, { host, path: '/healthz' });
      expect(r.status, host).toBe(200);
    }
  });
});
