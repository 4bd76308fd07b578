/**
 * Defects found by the review of issue 5 ("Production hardening"), each pinned by a test against a
 * real gateway that failed before its fix.
 */
import * as http from 'node:http';
import * as net from 'node:net';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Tunnel } from '../../src/client/node.js';
import { hashKey } from '../../src/routes/access.js';
import { closed, headEnd, rawConnect, readUntil, request, sleep, startApp, startGateway, until, type TestGateway } from '../helpers/index.js';
import { fetchRaw, parseLinks, rawValues, register } from '../helpers/comet.js';
import { makeCert, type TestCert } from '../helpers/tls.js';

let gw: TestGateway | undefined;
const sockets: net.Socket[] = [];
const tunnels: Tunnel[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(tunnels.splice(0).map((t) => t.close({ graceMs: 100 })));
  await gw?.close();
  gw = undefined;
});

async function raw(port: number, bytes: string): Promise<net.Socket> {
  const s = await rawConnect(port);
  s.on('error', () => {});
  sockets.push(s);
  if (bytes) s.write(bytes);
  return s;
}

/** A full garbage collection (the flag is set at run time, so the suite needs no node option). */
function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

describe('the queue of a busy name', () => {
  it('does not keep visitors that gave up while it never empties (memory any visitor controls)', async () => {
    gw = await startGateway({ queueTimeout: 20_000, queueLimit: 1_000 });
    const g = gw;
    const held: http.ServerResponse[] = [];
    const app = http.createServer((_req, res) => void held.push(res));
    tunnels.push(await startApp(g.port, app, { name: 'busy', connections: 1, http1: true }));
    const reg = g.gateway.table.lookup('busy');
    if (!reg) throw new Error('not registered');
    const get = (path: string): string => `GET ${path} HTTP/1.1\r\nHost: ${g.host('busy')}\r\n\r\n`;
    // A holds the one channel; B waits in the queue all along, so the queue never empties.
    const a = await raw(g.port, get('/a'));
    await until(() => held.length === 1, 3_000, 'A at the app');
    const b = await raw(g.port, get('/b'));
    await until(() => reg.waiting === 1, 3_000, 'B queued');

    const seen: WeakRef<http.IncomingMessage>[] = [];
    g.gateway.server.on('request', (req: http.IncomingMessage) => void seen.push(new WeakRef(req)));
    for (let i = 0; i < 30; i++) {
      const s = await raw(g.port, get(`/gone-${i}`));
      await until(() => reg.waiting === 2, 3_000, 'a queued visitor');
      s.destroy();
      await until(() => reg.waiting === 1, 3_000, 'the visitor gone');
    }
    expect(seen).toHaveLength(30);
    // Collected once nothing holds them: a full GC, then a macrotask (a WeakRef read keeps its target
    // alive to the end of the job that read it, and finished work may still hold them for a turn),
    // again until none is left, bounded by a deadline a leak cannot outlast.
    const live = (): number => seen.filter((r) => r.deref() !== undefined).length;
    const deadline = Date.now() + 10_000;
    do {
      await sleep(10);
      collectGarbage();
    } while (live() > 0 && Date.now() < deadline);
    expect(live()).toBe(0);

    // The queue still works: A is answered, then B gets the channel.
    held[0]?.end('A');
    expect((await readUntil(a, (buf) => buf.toString().endsWith('A'))).toString()).toMatch(/^HTTP\/1\.1 200 /);
    await until(() => held.length === 2, 3_000, 'B at the app');
    held[1]?.end('B');
    expect((await readUntil(b, (buf) => buf.toString().endsWith('B'))).toString()).toMatch(/^HTTP\/1\.1 200 /);
  });
});

describe('Comet replies', () => {
  it('count against the buffer budget while they are read: past 8 x --buffer-limit a reply gets 503, not memory', async () => {
    gw = await startGateway({ bufferLimit: 1_000, pollTimeout: 5_000, replyTimeout: 5_000, queueTimeout: 5_000 });
    const g = gw;
    const reg = await register(g.origin, { name: 'hoarder', token: 't' });
    expect(reg.status).toBe(201);
    // Twelve visitors, each polled to the app (one delivery each), none answered yet.
    const visitors = Array.from({ length: 12 }, (_, i) => request(g.port, { host: g.host('hoarder'), path: `/v${i}` }));
    const slots: string[] = [];
    let next = reg.links.first as string;
    for (let i = 0; i < 12; i++) {
      const poll = await fetchRaw(next);
      expect(poll.status).toBe(200);
      slots.push(next);
      next = parseLinks(rawValues(poll.rawHeaders, 'link')).next as string;
    }
    // Each reply is 939 bytes, declared whole but sent short of its last byte: all are being read at once.
    const body = 'x'.repeat(900);
    const reply = `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
    const posts = await Promise.all(
      slots.map((url) => {
        const u = new URL(url);
        return raw(g.port, `POST ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\nContent-Type: message/http\r\nContent-Length: ${reply.length}\r\n\r\n${reply.slice(0, -1)}`);
      }),
    );
    // Eight fit in the 8,000-byte budget (7,504 bytes); the other four are refused at once. Each
    // POST's first answer head: the four refusals come while the eight are still being read.
    const heads: (string | undefined)[] = posts.map(() => undefined);
    const firstHeads = posts.map((s, i) => readUntil(s, headEnd, 10_000).then((b) => void (heads[i] = b.toString())));
    await until(() => heads.filter((h) => h !== undefined).length >= 4, 5_000, 'four replies refused');
    const isRefusal = (h: string | undefined): boolean =>
      h !== undefined && /^HTTP\/1\.1 503 /.test(h) && h.includes('PTTH_ERR_QUEUE_FULL');
    const refused = heads.filter(isRefusal);
    expect(refused).toHaveLength(4);
    const reading = posts.filter((_, i) => heads[i] === undefined);
    expect(reading).toHaveLength(8);
    // The eight complete their replies: the first thing each hears is its 202 (nothing refused it
    // meanwhile); their visitors are answered.
    for (const s of reading) s.write(reply.slice(-1));
    await Promise.all(firstHeads);
    expect(heads.filter((h) => h !== undefined && /^HTTP\/1\.1 202 /.test(h))).toHaveLength(8);
    const answers = await Promise.all(visitors);
    expect(answers.filter((r) => r.status === 200 && r.body === body)).toHaveLength(8);
    expect(answers.filter((r) => r.status === 503)).toHaveLength(4);
  });

  it('a reply that trickles in is cut after --reply-timeout instead of holding its buffer', async () => {
    gw = await startGateway({ bufferLimit: 100_000, pollTimeout: 5_000, replyTimeout: 400 });
    const g = gw;
    const reg = await register(g.origin, { name: 'trickle', token: 't' });
    const visitor = request(g.port, { host: g.host('trickle') });
    const poll = await fetchRaw(reg.links.first as string);
    expect(poll.status).toBe(200);
    const u = new URL(reg.links.first as string);
    const s = await raw(g.port, `POST ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\nContent-Length: 50000\r\n\r\nHTTP/1.1 200 OK\r\n`);
    const timer = setInterval(() => s.write('X-Slow: 1\r\n'), 50);
    try {
      const got = (await readUntil(s, headEnd, 3_000)).toString();
      expect(got).toMatch(/^HTTP\/1\.1 408 /);
      expect(await closed(s)).toBe(true);
    } finally {
      clearInterval(timer);
    }
    // The delivery's own --reply-timeout (armed at the poll, before the POST began) answers the visitor.
    expect((await visitor).status).toBe(504);
  });
});

describe('TLS', () => {
  let cert: TestCert;
  beforeAll(() => {
    cert = makeCert('tls.localhost', 'review');
  });
  afterAll(() => cert.remove());

  it.each([
    ['sends nothing', ''],
    ['sends half a ClientHello', '\x16\x03\x01\x02\x00\x01'],
  ])('a connection that %s is closed within --headers-timeout, as on plain HTTP (slowloris on the handshake)', async (_label, bytes) => {
    gw = await startGateway({ domain: 'tls.localhost', tls: { cert: cert.cert, key: cert.key }, headersTimeout: 300 });
    const s = await raw(gw.port, bytes);
    expect(await closed(s, 3_000)).toBe(true);
  });
});

describe('random names under a key', () => {
  const KEY = 'ptth_review-0123456789abcdefghijklmnop';

  it('a key whose prefix is entirely reserved gets 403 for a claim without a name, and the gateway keeps serving', async () => {
    gw = await startGateway({
      access: { keys: [{ id: 'team', sha256: hashKey(KEY), names: ['team-*'] }], reserved: ['team*'] },
    });
    const claim = `POST / HTTP/1.1\r\nHost: localhost:${gw.port}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nAuthorization: Bearer ${KEY}\r\nContent-Length: 0\r\n\r\n`;
    const s = await raw(gw.port, claim);
    const head = (await readUntil(s, headEnd, 3_000)).toString();
    expect(head).toMatch(/^HTTP\/1\.1 403 /);
    expect(head).toContain('X-Ptth-Error: PTTH_ERR_NAME_RESERVED');
    expect((await request(gw.port, { path: '/healthz', host: `localhost:${gw.port}` })).status).toBe(200);
  });
});

describe('revoked keys and Comet', () => {
  const KEY = 'ptth_comet-0123456789abcdefghijklmnopq';

  it('a Comet session whose channel went idle cannot open a new one by polling once its key is revoked', async () => {
    gw = await startGateway({
      access: { keys: [{ id: 'c', sha256: hashKey(KEY), names: ['*'] }] },
      pollTimeout: 100,
      cometIdleTimeout: 150,
    });
    const g = gw;
    const reg = await register(g.origin, { name: 'revoked', token: 't', key: KEY });
    expect(reg.status).toBe(201);
    const first = reg.links.first as string;
    expect((await fetchRaw(first)).status).toBe(204);
    const registration = g.gateway.table.lookup('revoked');
    await until(() => registration?.channels.length === 0, 3_000, 'the idle Comet channel closed');
    g.gateway.setAccess({ keys: [] });
    const poll = await fetchRaw(first, { headers: { accept: 'application/json' } });
    expect(poll.status).toBe(401);
    expect(poll.headers['x-ptth-error']).toBe('PTTH_ERR_KEY_INVALID');
    expect(registration?.channels).toHaveLength(0);
  });
});
