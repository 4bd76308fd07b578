import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { splice, type SpliceOptions } from '../../src/client/splice.js';
import type { ListenOptions, Tunnel } from '../../src/client/node.js';
import { rawConnect, readUntil, request, until, type TestGateway } from '../helpers/index.js';
import { cleanup, useGateway } from '../helpers/fixture.js';
import { spawnCli } from '../helpers/spawn.js';
import { makeCert } from '../helpers/tls.js';

/**
 * `connect`'s splice mode: reversed HTTP/1.1 channels joined byte for byte to connections to the
 * local service (src/client/splice.ts), against a real gateway and real local servers.
 */
function gateway(): Promise<TestGateway> {
  return useGateway();
}

async function listenOn(server: net.Server): Promise<number> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  cleanup(() => {
    (server as http.Server).closeAllConnections?.();
    return new Promise((r) => server.close(() => r(undefined)));
  });
  return (server.address() as AddressInfo).port;
}

async function spliced(
  g: TestGateway,
  port: number,
  name: string,
  options: ListenOptions = {},
  local: SpliceOptions = {},
): Promise<Tunnel> {
  const t = splice(
    new URL(`http://127.0.0.1:${port}`),
    { gateway: g.origin, name, backoff: 50, maxBackoff: 500, ...options },
    local,
  );
  cleanup(() => t.close({ graceMs: 200 }));
  await t.ready();
  return t;
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe('connect splices reversed HTTP/1.1 channels to the local service', () => {
  it('serves requests in turn from a backend that closes its connection after every response', async () => {
    const g = await gateway();
    let connections = 0;
    const server = http.createServer((req, res) => {
      res.setHeader('Connection', 'close');
      res.end(`#${req.url}`);
    });
    server.on('connection', () => connections++);
    const port = await listenOn(server);
    await spliced(g, port, 'closer');
    for (let i = 0; i < 5; i++) {
      const r = await request(g.port, { host: g.host('closer'), path: `/${i}` });
      expect(r.status).toBe(200);
      expect(r.body).toBe(`#/${i}`);
    }
    expect(connections).toBe(5);
  });

  it('passes a raw `Connection: close` answer whose body ends with the connection', async () => {
    const g = await gateway();
    const server = net.createServer((s) => {
      s.on('error', () => {});
      s.once('data', () =>
        s.end('HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\nuntil the end'),
      );
    });
    const port = await listenOn(server);
    await spliced(g, port, 'eof');
    for (let i = 0; i < 2; i++) {
      const r = await request(g.port, { host: g.host('eof') });
      expect(r.status).toBe(200);
      expect(r.body).toBe('until the end');
    }
  });

  it('reuses one local connection for keep-alive requests on a channel', async () => {
    const g = await gateway();
    let connections = 0;
    const server = http.createServer({ keepAliveTimeout: 60_000 }, (_req, res) => res.end(String(connections)));
    server.on('connection', () => connections++);
    const port = await listenOn(server);
    await spliced(g, port, 'keep', { connections: 2 }, { spare: 1 });
    const bodies: string[] = [];
    for (let i = 0; i < 6; i++) bodies.push((await request(g.port, { host: g.host('keep') })).body);
    // At most two channels, each joined to one local connection that carries all its requests.
    expect(connections).toBeLessThanOrEqual(2);
    expect(bodies.every((b) => Number(b) >= 1)).toBe(true);
  });

  it('streams a chunked response as it is written', async () => {
    const g = await gateway();
    let next: (() => void) | undefined;
    const server = http.createServer((_req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.write('first,');
      next = () => res.end('second');
    });
    const port = await listenOn(server);
    await spliced(g, port, 'chunks');
    const s = await rawConnect(g.port);
    cleanup(() => s.destroy());
    s.write(`GET / HTTP/1.1\r\nHost: ${g.host('chunks')}\r\n\r\n`);
    const head = await readUntil(s, (b) => b.includes('first,'));
    expect(head.toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    expect(head.toString('latin1')).toMatch(/transfer-encoding: chunked/i);
    next?.();
    const rest = await readUntil(s, (b) => b.includes('0\r\n\r\n'));
    expect(rest.toString('latin1')).toContain('second');
  });

  it('takes a large upload and returns a large download intact (checksummed)', async () => {
    const g = await gateway();
    const down = randomBytes(24 << 20);
    const server = http.createServer((req, res) => {
      const hash = createHash('sha256');
      let size = 0;
      req.on('data', (c: Buffer) => {
        hash.update(c);
        size += c.length;
      });
      req.on('end', () => {
        if (req.url === '/down') res.end(down);
        else res.end(`${size} ${hash.digest('hex')}`);
      });
    });
    const port = await listenOn(server);
    await spliced(g, port, 'big');
    const up = randomBytes(32 << 20);
    const r = await request(g.port, { host: g.host('big'), method: 'POST', path: '/up', body: up });
    expect(r.status).toBe(200);
    expect(r.body).toBe(`${up.length} ${sha(up)}`);
    const d = await request(g.port, { host: g.host('big'), path: '/down' });
    expect(d.bytes.length).toBe(down.length);
    expect(sha(d.bytes)).toBe(sha(down));
  }, 60_000);

  it('passes a WebSocket upgrade through; the channel leaves the pool and a fresh one replaces it', async () => {
    const g = await gateway();
    const server = http.createServer((_req, res) => res.end('plain'));
    const wss = new WebSocketServer({ server });
    wss.on('connection', (ws) => ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary })));
    cleanup(() => wss.close());
    const port = await listenOn(server);
    const t = await spliced(g, port, 'sock', { connections: 4 }, { spare: 1 });
    await until(() => t.connections === 1, 3_000, 'one spare channel');
    const ws = new WebSocket(`ws://127.0.0.1:${g.port}/`, { headers: { Host: g.host('sock') } });
    cleanup(() => ws.terminate());
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    const echoed = new Promise<string>((resolve) => ws.once('message', (d) => resolve(String(d))));
    ws.send('ping through the splice');
    expect(await echoed).toBe('ping through the splice');
    // The upgraded channel is consumed: the pool counts only the fresh spare.
    await until(
      () => t.connections === 1 && g.gateway.table.lookup('sock')?.channels.length === 1,
      3_000,
      'a fresh spare',
    );
    expect((await request(g.port, { host: g.host('sock') })).body).toBe('plain');
    const again = new Promise<string>((resolve) => ws.once('message', (d) => resolve(String(d))));
    ws.send('still open');
    expect(await again).toBe('still open');
  });

  it('answers 502 with Connection: close when the local service is down, and says when it is back', async () => {
    const g = await gateway();
    // A port with nobody listening (freed at once).
    const probe = net.createServer();
    const port = await new Promise<number>((r) =>
      probe.listen(0, '127.0.0.1', () => r((probe.address() as AddressInfo).port)),
    );
    await new Promise((r) => probe.close(r));
    const reach: (string | undefined)[] = [];
    const t = await spliced(g, port, 'down', {}, { onReach: (e) => reach.push(e?.code) });
    const s = await rawConnect(g.port);
    cleanup(() => s.destroy());
    s.write(`GET / HTTP/1.1\r\nHost: ${g.host('down')}\r\n\r\n`);
    const got = (await readUntil(s, (b) => b.includes('ECONNREFUSED).\n'))).toString('latin1');
    expect(got).toMatch(/^HTTP\/1\.1 502 /);
    expect(got).toContain(`could not reach http://127.0.0.1:${port} (ECONNREFUSED)`);
    expect(reach).toEqual(['ECONNREFUSED']);
    // The refused channel closed; the pool still serves once the service is back on that port.
    const server = http.createServer((_req, res) => res.end('back'));
    await new Promise<void>((r) => server.listen(port, '127.0.0.1', () => r()));
    cleanup(() => {
      server.closeAllConnections();
      return new Promise((r) => server.close(() => r(undefined)));
    });
    await until(() => t.connections >= 1, 3_000, 'a live channel');
    const r = await request(g.port, { host: g.host('down') });
    expect(r.status).toBe(200);
    expect(r.body).toBe('back');
    expect(reach).toEqual(['ECONNREFUSED', undefined]);
  });

  it('a channel the gateway closes takes its local connection with it, and the reverse', async () => {
    const g = await gateway();
    const sockets = new Set<net.Socket>();
    const server = http.createServer({ keepAliveTimeout: 60_000 }, (_req, res) => res.end('x'));
    server.on('connection', (s: net.Socket) => {
      sockets.add(s);
      s.once('close', () => sockets.delete(s));
    });
    const port = await listenOn(server);
    const t = await spliced(g, port, 'pair', { connections: 2 }, { spare: 1 });
    expect((await request(g.port, { host: g.host('pair') })).body).toBe('x');
    await until(() => sockets.size === 1 && t.connections === 2, 3_000, 'one bound channel and a spare');
    // The local service drops its connection: the bound channel goes, the pool keeps a spare.
    const [local] = sockets;
    local?.destroy();
    await until(
      () => t.connections === 1 && g.gateway.table.lookup('pair')?.channels.length === 1,
      3_000,
      'the bound channel closed',
    );
    expect((await request(g.port, { host: g.host('pair') })).body).toBe('x');
    await until(() => sockets.size === 1, 3_000, 'a new local connection');
    // The tunnel closes: every local connection goes with its channel.
    await t.close({ graceMs: 500 });
    await until(() => sockets.size === 0, 3_000, 'local connections closed');
  });

  it('grows with concurrent requests up to --connections and shrinks to its spares when quiet', async () => {
    const g = await gateway();
    const held: http.ServerResponse[] = [];
    const sockets = new Set<net.Socket>();
    const server = http.createServer({ keepAliveTimeout: 60_000 }, (_req, res) => held.push(res));
    server.on('connection', (s: net.Socket) => {
      sockets.add(s);
      s.once('close', () => sockets.delete(s));
    });
    const port = await listenOn(server);
    const t = await spliced(g, port, 'grow', { connections: 4 }, { spare: 1, idleTimeout: 150 });
    await until(() => t.connections === 1, 3_000, 'one spare');
    const agent = new http.Agent({ keepAlive: false });
    const replies = Array.from({ length: 6 }, (_, i) =>
      request(g.port, { host: g.host('grow'), path: `/${i}`, agent }),
    );
    // Four requests reach the service (the most channels), the other two wait at the gateway.
    await until(() => held.length === 4 && t.connections === 4, 5_000, 'four spliced channels');
    let max = t.connections;
    t.on('connections', (n) => (max = Math.max(max, n)));
    for (const res of held.splice(0)) res.end('done');
    await until(() => held.length === 2, 3_000, 'the waiting two');
    for (const res of held.splice(0)) res.end('done');
    for (const r of await Promise.all(replies)) expect(r.body).toBe('done');
    expect(max).toBe(4);
    // Quiet: the spliced channels close after their idle time, with their local connections; one spare stays.
    await until(() => t.connections === 1 && sockets.size === 0, 5_000, 'the pool shrunk to one spare');
    expect(g.gateway.table.lookup('grow')?.channels.length).toBe(1);
    expect(
      await request(g.port, { host: g.host('grow') }).then(
        () => 'served',
        () => 'failed',
      ),
    ).toBe('served');
  }, 20_000);

  it('splices to an https: service over TLS (a self-signed certificate is accepted)', async () => {
    const g = await gateway();
    const cert = makeCert();
    cleanup(() => cert.remove());
    const server = https.createServer({ cert: cert.cert, key: cert.key }, (req, res) => res.end(`tls ${req.url}`));
    const port = await listenOn(server);
    const t = splice(new URL(`https://127.0.0.1:${port}`), { gateway: g.origin, name: 'secure', backoff: 50 });
    cleanup(() => t.close({ graceMs: 200 }));
    await t.ready();
    for (const path of ['/a', '/b'])
      expect((await request(g.port, { host: g.host('secure'), path })).body).toBe(`tls ${path}`);
  });

  it('close() waits for an answer in flight on a spliced channel, and closes idle ones at once', async () => {
    const g = await gateway();
    let answer: (() => void) | undefined;
    const server = http.createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
      if (req.url === '/slow') answer = () => res.end('finished');
      else res.end('quick');
    });
    const port = await listenOn(server);
    const t = await spliced(g, port, 'bye', { connections: 4 }, { spare: 1 });
    expect((await request(g.port, { host: g.host('bye'), path: '/quick' })).body).toBe('quick');
    const reply = request(g.port, { host: g.host('bye'), path: '/slow' });
    await until(() => answer !== undefined, 3_000, 'the slow request at the service');
    const closing = t.close({ graceMs: 10_000, release: false });
    // Only the channel with the request in flight is left.
    await until(() => t.connections === 1, 3_000, 'idle channels closed');
    answer?.();
    expect((await reply).body).toBe('finished');
    // Well before the 10 s grace (the test's own deadline is shorter): the channel closed after its answer.
    await closing;
    expect(t.connections).toBe(0);
  }, 8_000);

  it('does not close a spliced channel for idleness while a request awaits its answer', async () => {
    const g = await gateway();
    let answer: (() => void) | undefined;
    const server = http.createServer({ keepAliveTimeout: 60_000 }, (_req, res) => {
      answer = () => res.end('late but whole');
    });
    const port = await listenOn(server);
    const t = await spliced(g, port, 'slow', { connections: 3 }, { spare: 1, idleTimeout: 50 });
    const reply = request(g.port, { host: g.host('slow') });
    await until(() => answer !== undefined, 3_000, 'the request at the service');
    // Longer than the idle time, measured by the tunnel's own count: the bound channel and its spare stay.
    const stay = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(true), 300);
      t.once('connections', () => {
        clearTimeout(timer);
        resolve(false);
      });
    });
    expect(stay).toBe(true);
    answer?.();
    expect((await reply).body).toBe('late but whole');
  });
});

describe('ptth-proxy connect (spliced by default)', () => {
  it('says it splices, serves, and refuses --http1 with --http2', async () => {
    const g = await gateway();
    const port = await listenOn(http.createServer((_req, res) => res.end('spliced')));
    const c = spawnCli(['connect', String(port), '--gateway', g.origin, '--name', 'cli-splice', '-q']);
    cleanup(() => c.kill('SIGKILL'));
    await c.waitFor(
      /Forwarding http:\/\/cli-splice\.localhost:\d+\/ -> http:\/\/localhost:\d+ \(reversed HTTP\/1\.1, spliced\)/,
    );
    expect((await request(g.port, { host: g.host('cli-splice') })).body).toBe('spliced');
    const both = spawnCli(['connect', '3000', '--http1', '--http2']);
    cleanup(() => both.kill('SIGKILL'));
    expect(await both.exited()).toBe(2);
    expect(both.output()).toMatch(/--http1 and --http2 exclude each other/);
  });

  it('--http2 relays over reversed HTTP/2 as before', async () => {
    const g = await gateway();
    const port = await listenOn(http.createServer((_req, res) => res.end('relayed')));
    const c = spawnCli(['connect', String(port), '--gateway', g.origin, '--name', 'cli-h2', '-q', '--http2']);
    cleanup(() => c.kill('SIGKILL'));
    await c.waitFor(/Forwarding .* \(reversed HTTP\/2\)/);
    expect((await request(g.port, { host: g.host('cli-h2') })).body).toBe('relayed');
  });
});
