import type * as dns from 'node:dns';
import * as http from 'node:http';
import * as net from 'node:net';
import * as tls from 'node:tls';
import type { LookupFunction } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createGateway, type Gateway } from '../../src/gateway/server.js';
import { listen, type ListenOptions, type Tunnel } from '../../src/client/node.js';
import type { NodeStatus } from '../../src/client/nodes.js';
import { FAST, request, startGateway, until, type TestGateway } from '../helpers/index.js';
import { cleanup } from '../helpers/fixture.js';
import { spawnCli, type Spawned } from '../helpers/spawn.js';
import { makeCert } from '../helpers/tls.js';

/** Retries short enough for a test: a lost node is tried again within a few hundred ms. */
const QUICK: ListenOptions = { backoff: 20, maxBackoff: 200, claimTimeout: 1_000 };

/** A gateway on 127.0.0.1 (port 0, or `port` after a restart), closed at the test's end unless the test closed it. */
async function gatewayOn(port = 0): Promise<TestGateway> {
  for (let attempt = 1; ; attempt++) {
    try {
      const gw = await startGateway({}, port);
      let closing: Promise<void> | undefined;
      const close = (): Promise<void> => {
        closing ??= gw.close();
        return closing;
      };
      cleanup(close);
      return { ...gw, close };
    } catch (err) {
      // The port was in use moments ago (a restart): the kernel may hold it briefly.
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= 20) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

function app(gateway: NonNullable<ListenOptions['gateway']>, options: ListenOptions = {}): Tunnel {
  const t = listen((req, res) => res.end(`hello ${req.url}`), { gateway, ...QUICK, ...options });
  cleanup(() => t.close({ graceMs: 100 }));
  return t;
}

/** Live channels of `name` on a gateway (0 when it holds no registration of it). */
function channels(gw: { gateway: Gateway }, name: string): number {
  return gw.gateway.table.lookup(name)?.channels.length ?? 0;
}

/** The node events of a tunnel, as they come. */
function nodeEvents(t: Tunnel): NodeStatus[] {
  const seen: NodeStatus[] = [];
  t.on('node', (n) => seen.push(n));
  return seen;
}

/** A lookup that answers `answers[i]` on its i-th call (the last one from then on), and counts its calls. */
function scriptedLookup(answers: string[][]): LookupFunction & { calls: string[] } {
  const calls: string[] = [];
  const fn = ((host: string, _options: dns.LookupOptions, callback: Parameters<LookupFunction>[2]) => {
    calls.push(host);
    const list = answers[Math.min(calls.length, answers.length) - 1] ?? [];
    callback(
      null,
      list.map((address) => ({ address, family: net.isIP(address) })),
    );
  }) as LookupFunction & { calls: string[] };
  fn.calls = calls;
  return fn;
}

describe('Node client: several gateways', () => {
  it('spreads reversed HTTP/1.1 connections over two gateways, moves them off a lost one and back when it returns', async () => {
    const gw1 = await gatewayOn();
    const gw2 = await gatewayOn();
    const t = app([gw1.origin, gw2.origin], { name: 'spread', http1: true, connections: 4 });
    const events = nodeEvents(t);
    await t.ready();
    await until(
      () => channels(gw1, 'spread') === 2 && channels(gw2, 'spread') === 2 && t.connections === 4,
      3_000,
      'two channels on each',
    );
    expect(t.nodes.map((n) => [n.gateway, n.up, n.connections])).toEqual([
      [`${gw1.origin}/`, true, 2],
      [`${gw2.origin}/`, true, 2],
    ]);
    for (const gw of [gw1, gw2]) {
      const r = await request(gw.port, { host: gw.host('spread'), path: '/x' });
      expect(r.status).toBe(200);
      expect(r.body).toBe('hello /x');
    }

    const port1 = gw1.port;
    await gw1.close();
    await until(() => channels(gw2, 'spread') === 4 && t.connections === 4, 5_000, 'all four channels on gateway 2');
    expect(t.nodes[0]?.up).toBe(false);
    expect(events[0]).toMatchObject({ gateway: `${gw1.origin}/`, up: false });
    expect(events[0]?.error?.message).toMatch(/ECONNREFUSED/);
    const served = await request(gw2.port, { host: gw2.host('spread'), path: '/still' });
    expect(served.body).toBe('hello /still');

    const back = await gatewayOn(port1);
    await until(
      () => channels(back, 'spread') === 2 && channels(gw2, 'spread') === 2 && t.connections === 4,
      5_000,
      'two channels on each again',
    );
    expect(t.nodes.map((n) => [n.up, n.connections])).toEqual([
      [true, 2],
      [true, 2],
    ]);
    expect(events.at(-1)).toMatchObject({ gateway: `${gw1.origin}/`, up: true });
    expect(t.connections).toBe(4);
    const again = await request(back.port, { host: back.host('spread'), path: '/back' });
    expect(again.body).toBe('hello /back');
  }, 20_000);

  it('over reversed HTTP/2 keeps one connection on each node by default', async () => {
    const gw1 = await gatewayOn();
    const gw2 = await gatewayOn();
    const t = app([gw1.origin, gw2.origin], { name: 'twofold' });
    await t.ready();
    await until(() => channels(gw1, 'twofold') === 1 && channels(gw2, 'twofold') === 1, 3_000, 'one channel on each');
    expect(t.protocol).toBe('h2');
    for (const gw of [gw1, gw2]) {
      const r = await request(gw.port, { host: gw.host('twofold'), path: '/h2' });
      expect(r.body).toBe('hello /h2');
    }
  });

  it('keeps a connection for WebSocket upgrades on each node when the app takes upgrades', async () => {
    const gw1 = await gatewayOn();
    const gw2 = await gatewayOn();
    const server = http.createServer((_req, res) => res.end('plain'));
    server.on('upgrade', (_req: http.IncomingMessage, socket: net.Socket) => socket.destroy());
    const t = listen(server, { gateway: [gw1.origin, gw2.origin], name: 'upgrades', ...QUICK });
    cleanup(() => t.close({ graceMs: 100 }));
    await t.ready();
    // One reversed HTTP/2 connection and one HTTP/1.1 connection for upgrades on each gateway.
    await until(
      () => channels(gw1, 'upgrades') === 2 && channels(gw2, 'upgrades') === 2 && t.connections === 4,
      3_000,
      'two channels on each',
    );
    expect(t.nodes.map((n) => n.connections)).toEqual([2, 2]);
  });

  it('claims a name the first gateway chose on the others with the same token', async () => {
    const gw1 = await gatewayOn();
    const gw2 = await gatewayOn();
    const t = app([gw1.origin, gw2.origin], { http1: true, connections: 2 });
    await t.ready();
    const name = t.name as string;
    await until(() => channels(gw1, name) === 1 && channels(gw2, name) === 1, 3_000, 'one channel on each');
    expect(gw2.registration(name).tokenMatches(t.token)).toBe(true);
    expect(t.url).toBe(`http://${gw1.host(name)}/`);
  });

  it('releases the name on every gateway when it closes', async () => {
    const gw1 = await gatewayOn();
    const gw2 = await gatewayOn();
    const t = listen((_req, res) => res.end(), { gateway: [gw1.origin, gw2.origin], name: 'leaving', ...QUICK });
    await t.ready();
    // The gateway counts a channel when it writes the 101, the client when it reads it: wait for both.
    await until(
      () => channels(gw1, 'leaving') === 1 && channels(gw2, 'leaving') === 1 && t.connections === 2,
      3_000,
      'one channel on each',
    );
    await t.close({ graceMs: 100 });
    expect(gw1.gateway.table.lookup('leaving')).toBeUndefined();
    expect(gw2.gateway.table.lookup('leaving')).toBeUndefined();
  });

  it('reports one node for one gateway, and collapses duplicates', async () => {
    const gw = await gatewayOn();
    const t = app([gw.origin, `${gw.origin}/`, new URL(gw.origin)], { name: 'single', http1: true, connections: 2 });
    await t.ready();
    await until(() => t.connections === 2, 3_000, 'two connections');
    expect(t.nodes).toEqual([{ gateway: `${gw.origin}/`, address: undefined, up: true, connections: 2 }]);
  });

  it('leaves a node that accepts connections and never answers the claim, past claimTimeout', async () => {
    const gw = await gatewayOn();
    const silent = net.createServer((socket) => socket.resume());
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    cleanup(() => new Promise((resolve) => silent.close(resolve)));
    const silentPort = (silent.address() as net.AddressInfo).port;
    const t = app([`http://127.0.0.1:${silentPort}`, gw.origin], {
      name: 'patient',
      http1: true,
      connections: 2,
      claimTimeout: 200,
    });
    const events = nodeEvents(t);
    await t.ready();
    await until(() => channels(gw, 'patient') === 2 && t.connections === 2, 5_000, 'both channels on the gateway');
    expect(events[0]).toMatchObject({ gateway: `http://127.0.0.1:${silentPort}/`, up: false });
    expect(events[0]?.error?.message).toMatch(/did not answer the claim within 200 ms/);
    expect(t.nodes.map((n) => [n.up, n.connections])).toEqual([
      [false, 0],
      [true, 2],
    ]);
  });

  it('refuses an empty gateway list and a URL that is not http(s) among several', () => {
    expect(() => listen(() => undefined, { gateway: [] })).toThrow(/the list is empty/);
    expect(() => listen(() => undefined, { gateway: ['http://127.0.0.1:1', 'ftp://127.0.0.1:2'] })).toThrow(
      /gateway must be an http: or https: URL, got ftp:\/\/127\.0\.0\.1:2/,
    );
    expect(() => listen(() => undefined, { gateway: ['http://127.0.0.1:1', 'not a url'] })).toThrow(TypeError);
  });

  it('stops with the error when a claim cannot even be written after the name is looked up', async () => {
    const lookup = scriptedLookup([['127.0.0.1', '::1']]);
    const t = listen(() => undefined, { gateway: 'http://spread.test:1', lookup, headers: { 'Bad Header': 'x' } });
    await expect(t.ready()).rejects.toThrow(/Header name must be a valid HTTP token/);
  });
});

/** A second gateway on `[::1]:port`, beside one on 127.0.0.1 with the same port. */
async function ipv6Gateway(port: number): Promise<Gateway> {
  const gateway = createGateway({ ...FAST });
  await gateway.listen(port, '::1');
  cleanup(() => gateway.close(200));
  return gateway;
}

describe('Node client: a gateway name with several addresses', () => {
  it('dials each address as a node of its own', async () => {
    const v4 = await gatewayOn();
    const v6 = await ipv6Gateway(v4.port);
    const lookup = scriptedLookup([['127.0.0.1', '::1']]);
    const t = app(`http://spread.test:${v4.port}`, { name: 'dual', http1: true, connections: 4, lookup });
    await t.ready();
    await until(
      () => channels(v4, 'dual') === 2 && v6.table.lookup('dual')?.channels.length === 2 && t.connections === 4,
      3_000,
      'two on each',
    );
    expect(lookup.calls).toEqual(['spread.test']);
    expect(t.nodes.map((n) => [n.address, n.connections])).toEqual([
      ['127.0.0.1', 2],
      ['::1', 2],
    ]);
  });

  it('keeps the host name in the claim, leaves an address that refuses with a 5xx and looks the name up again', async () => {
    const gw = await gatewayOn();
    // [::1] answers every claim with a 503 and notes the Host it was sent.
    const hosts: string[] = [];
    const refusing = http.createServer((req, res) => {
      hosts.push(String(req.headers.host));
      res.writeHead(503, { 'X-Ptth-Error': 'PTTH_ERR_STORE_UNAVAILABLE', Connection: 'close' });
      res.end('503 Service Unavailable: the store is unreachable');
    });
    refusing.on('upgrade', (req: http.IncomingMessage, socket: net.Socket) => {
      hosts.push(String(req.headers.host));
      socket.end('HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    });
    await new Promise<void>((resolve) => refusing.listen(gw.port, '::1', resolve));
    cleanup(() => new Promise((resolve) => refusing.close(resolve)));
    // After the loss the name answers only 127.0.0.1.
    const lookup = scriptedLookup([['127.0.0.1', '::1'], ['127.0.0.1']]);
    const t = app(`http://spread.test:${gw.port}`, { name: 'moved', http1: true, connections: 4, lookup });
    const events = nodeEvents(t);
    await t.ready();
    await until(
      () => channels(gw, 'moved') === 4 && t.connections === 4 && t.nodes.length === 1,
      5_000,
      'four channels on 127.0.0.1',
    );
    expect(hosts.length).toBeGreaterThan(0);
    expect(new Set(hosts)).toEqual(new Set([`spread.test:${gw.port}`]));
    expect(events[0]).toMatchObject({ address: '::1', up: false });
    expect(events[0]?.error?.message).toMatch(/503/);
    expect(lookup.calls.length).toBeGreaterThanOrEqual(2);
    // The address left keeps its node (and the connections it holds).
    expect(t.nodes).toEqual([
      { gateway: `http://spread.test:${gw.port}/`, address: '127.0.0.1', up: true, connections: 4 },
    ]);
    const r = await request(gw.port, { host: gw.host('moved'), path: '/v4' });
    expect(r.body).toBe('hello /v4');
  });
});

describe('Node client: an https gateway name with several addresses', () => {
  it('sends the host name as TLS server name and Host to each address', async () => {
    const cert = makeCert('spread.test');
    cleanup(() => cert.remove());
    const gateway = createGateway({ ...FAST, domain: 'spread.test', tls: { cert: cert.cert, key: cert.key } });
    const { port } = await gateway.listen(0, '127.0.0.1');
    cleanup(() => gateway.close(200));
    // [::1] notes the server name and Host of each claim and refuses it with a 503.
    const seen: string[] = [];
    const refusing = tls.createServer({ cert: cert.cert, key: cert.key }, (socket) => {
      socket.on('error', () => undefined);
      socket.once('data', (head: Buffer) => {
        const host = /\r\nhost: ([^\r]*)/i.exec(head.toString('latin1'))?.[1];
        seen.push(`${String(socket.servername)} ${String(host)}`);
        socket.end('HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      });
    });
    await new Promise<void>((resolve) => refusing.listen(port, '::1', resolve));
    cleanup(() => new Promise((resolve) => refusing.close(resolve)));
    const lookup = scriptedLookup([['127.0.0.1', '::1']]);
    const t = app(`https://spread.test:${port}`, {
      name: 'secure',
      http1: true,
      connections: 2,
      lookup,
      rejectUnauthorized: false,
    });
    await t.ready();
    await until(() => gateway.table.lookup('secure')?.channels.length === 2 && t.connections === 2, 5_000, 'two on v4');
    await until(() => seen.length > 0, 3_000, 'a claim on [::1]');
    expect(new Set(seen)).toEqual(new Set([`spread.test spread.test:${port}`]));
    expect(t.url).toBe(`https://secure.spread.test:${port}/`);
  });
});

const procs: Spawned[] = [];
afterEach(() => {
  for (const p of procs.splice(0)) p.kill('SIGKILL');
});

describe('ptth-proxy connect with several --gateway', () => {
  it('spreads its channels, says when a node is lost and when it is back', async () => {
    const local = http.createServer((req, res) => res.end(`local ${req.url}`));
    await new Promise<void>((resolve) => local.listen(0, '127.0.0.1', resolve));
    cleanup(() => new Promise((resolve) => local.close(resolve)));
    const localPort = (local.address() as net.AddressInfo).port;
    const gw1 = await gatewayOn();
    const gw2 = await gatewayOn();
    const c = spawnCli([
      'connect',
      String(localPort),
      '--gateway',
      gw1.origin,
      '--gateway',
      gw2.origin,
      '--name',
      'clispread',
      '--quiet',
    ]);
    procs.push(c);
    await c.waitFor(/Forwarding/);
    await until(() => channels(gw1, 'clispread') > 0 && channels(gw2, 'clispread') > 0, 5_000, 'channels on both');
    const port1 = gw1.port;
    await gw1.close();
    await c.waitFor(new RegExp(`lost gateway node http://127\\.0\\.0\\.1:${port1} \\(.*ECONNREFUSED`), 5_000);
    const r = await request(gw2.port, { host: gw2.host('clispread'), path: '/two' });
    expect(r.body).toBe('local /two');
    const back = await gatewayOn(port1);
    await c.waitFor(new RegExp(`gateway node http://127\\.0\\.0\\.1:${port1} is back`), 10_000);
    await until(() => channels(back, 'clispread') > 0, 5_000, 'channels on the returned gateway');
    const again = await request(back.port, { host: back.host('clispread'), path: '/one' });
    expect(again.body).toBe('local /one');
  }, 30_000);
});
