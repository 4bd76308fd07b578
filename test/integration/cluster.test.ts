import * as http from 'node:http';
import { describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { HopSigner } from '../../src/cluster/hop.js';
import { lookupKey } from '../../src/table/names.js';
import { createClusterNode, type ClusterNode } from '../../src/cluster/node.js';
import type { GatewayOptions } from '../../src/gateway/server.js';
import { fetchRaw, parseLinks, parseRequestMessage, rawValues, register, serializeResponse } from '../helpers/comet.js';
import { cleanup, useApp } from '../helpers/fixture.js';
import { FAST, rawClaim, request, startApp } from '../helpers/index.js';
import { useRedisForFile, type RedisServer } from '../helpers/redis.js';

/*
 * Three gateway nodes on one real redis-server, in this process: apps connect to one node,
 * visitors reach them through any node (the internal hop), Comet sessions are served whichever
 * node a poll reaches, and names outlive Redis's and the nodes' restarts.
 */

const redis = useRedisForFile();
let clusters = 0;

interface TestNode {
  node: ClusterNode;
  port: number;
  origin: string;
  host(name: string): string;
}

const NODE_OPTIONS: GatewayOptions = { ...FAST, reconnectWait: 3000 };

async function startNode(
  prefix: string,
  id: string,
  port = 0,
  options: GatewayOptions = {},
  nodeTimeout = 1000,
): Promise<TestNode> {
  const node = await createClusterNode(
    { ...NODE_OPTIONS, ...options },
    { redis: redis().url, nodeId: id, prefix, heartbeat: 100, nodeTimeout, commandTimeout: 500 },
  );
  const addr = await node.listen(port, '127.0.0.1');
  return {
    node,
    port: addr.port,
    origin: `http://127.0.0.1:${addr.port}`,
    host: (name) => `${name}.localhost:${addr.port}`,
  };
}

async function cluster(n = 3, options: GatewayOptions = {}, nodeTimeout?: number): Promise<TestNode[]> {
  const prefix = `c${++clusters}:`;
  const nodes: TestNode[] = [];
  for (let i = 1; i <= n; i++) nodes.push(await startNode(prefix, `n${i}`, 0, options, nodeTimeout));
  cleanup(() => Promise.all(nodes.map((t) => t.node.close(200))));
  return nodes;
}

/** The app answers with where it is and what it got. */
function whoami(req: http.IncomingMessage, res: http.ServerResponse): void {
  let bytes = 0;
  req.on('data', (c: Buffer) => {
    bytes += c.length;
  });
  req.on('end', () => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ url: req.url, bytes, xff: req.headers['x-forwarded-for'], host: req.headers.host }));
  });
}

async function until(check: () => boolean | Promise<boolean>, ms = 5000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('a cluster of gateway nodes', () => {
  it('serves an app connected to one node through every node', async () => {
    const [a, b, c] = (await cluster()) as [TestNode, TestNode, TestNode];
    await useApp(a.port, whoami, { name: 'hello', token: 'secret-token' });
    for (const n of [a, b, c]) {
      const r = await request(n.port, { host: n.host('hello'), path: '/x?y=1' });
      expect(r.status).toBe(200);
      const got = JSON.parse(r.body) as { url: string; xff: string; host: string };
      expect(got.url).toBe('/x?y=1');
      // The visitor's address, not a node's: the hop carries the first node's forwarding headers.
      expect(got.xff).toBe('127.0.0.1');
      expect(got.host).toBe(n.host('hello'));
    }
  });

  it("carries a visitor's head at the field limit across the hop with the forwarding fields intact", async () => {
    const [a, b] = (await cluster(2)) as [TestNode, TestNode];
    await useApp(a.port, whoami, { name: 'fields', token: 'secret-token' });
    // Host, Connection (node's) and 98: the default limit of 100 fields; the hop adds its own on top.
    const headers: Record<string, string> = {};
    for (let i = 0; i < 98; i++) headers[`x-f${i}`] = 'v';
    const r = await request(b.port, { host: b.host('fields'), headers });
    expect(r.status).toBe(200);
    expect((JSON.parse(r.body) as { xff: string }).xff).toBe('127.0.0.1');
    // One more is the visitor's own excess: refused where the visitor arrived.
    headers['x-f98'] = 'v';
    expect((await request(b.port, { host: b.host('fields'), headers })).status).toBe(431);
  });

  it('keeps a visitor of a reconnecting app waiting on another node, and serves it when the app comes back anywhere', async () => {
    const [a, b, c] = (await cluster()) as [TestNode, TestNode, TestNode];
    const first = await startApp(a.port, whoami, { name: 'mover', token: 'secret-token' });
    expect((await request(b.port, { host: b.host('mover') })).status).toBe(200);
    const onB = b.node.table.lookup('mover');
    await first.close({ release: false, graceMs: 100 });
    await until(() => onB?.remotes.length === 0, 5000, 'b to see the app gone');
    const started = Date.now();
    const waiting = request(b.port, { host: b.host('mover'), path: '/waited' });
    await until(() => onB?.waiting === 1, 5000, 'the visitor to wait on b');
    // Back through another node, with its token.
    await useApp(c.port, whoami, { name: 'mover', token: 'secret-token' });
    const r = await waiting;
    expect(r.status).toBe(200);
    expect((JSON.parse(r.body) as { url: string }).url).toBe('/waited');
    expect(Date.now() - started).toBeLessThan(NODE_OPTIONS.reconnectWait as number);
  });

  it('gives a name two nodes race to claim to exactly one native claimant', async () => {
    const [a, b] = (await cluster(2)) as [TestNode, TestNode];
    for (let round = 0; round < 5; round++) {
      const claim = (n: TestNode, token: string) =>
        rawClaim(
          n.port,
          `GET /?name=race${round}&token=${token} HTTP/1.1\r\nHost: 127.0.0.1:${n.port}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n`,
        );
      const answers = await Promise.all([claim(a, 'token-a'), claim(b, 'token-b')]);
      cleanup(() => {
        for (const x of answers) x.socket.destroy();
      });
      const statuses = answers.map((x) => Number(x.head.split(' ')[1])).sort();
      expect(statuses).toEqual([101, 403]);
    }
  });

  it('streams a 100 MB body each way across nodes', async () => {
    const [a, b] = (await cluster(2)) as [TestNode, TestNode];
    const SIZE = 100 * 1024 * 1024;
    const chunk = Buffer.alloc(1024 * 1024, 7);
    await useApp(
      a.port,
      (req, res) => {
        if (req.method === 'POST') return whoami(req, res);
        res.writeHead(200, { 'content-length': SIZE });
        let sent = 0;
        const pump = (): void => {
          while (sent < SIZE) {
            sent += chunk.length;
            if (!res.write(chunk)) return void res.once('drain', pump);
          }
          res.end();
        };
        pump();
      },
      { name: 'big', token: 'secret-token' },
    );
    const up = await new Promise<{ bytes: number }>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: b.port, method: 'POST', headers: { host: b.host('big') } });
      req.on('response', (res) => {
        let body = '';
        res.on('data', (d: Buffer) => {
          body += d.toString();
        });
        res.on('end', () => resolve(JSON.parse(body) as { bytes: number }));
      });
      req.on('error', reject);
      let sent = 0;
      const pump = (): void => {
        while (sent < SIZE) {
          sent += chunk.length;
          if (!req.write(chunk)) return void req.once('drain', pump);
        }
        req.end();
      };
      pump();
    });
    expect(up.bytes).toBe(SIZE);
    const down = await new Promise<number>((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port: b.port, headers: { host: b.host('big') } }, (res) => {
          let n = 0;
          res.on('data', (d: Buffer) => {
            n += d.length;
          });
          res.on('end', () => resolve(n));
        })
        .on('error', reject);
    });
    expect(down).toBe(SIZE);
  }, 60_000);

  it('carries a WebSocket across nodes', async () => {
    const [a, b] = (await cluster(2)) as [TestNode, TestNode];
    const server = http.createServer((_req, res) => res.end('plain'));
    const wss = new WebSocketServer({ server });
    wss.on('connection', (ws, req) => {
      ws.send(`hello ${String(req.headers['x-forwarded-for'])}`);
      ws.on('message', (data) => ws.send(`echo ${String(data)}`));
    });
    cleanup(() => wss.close());
    await useApp(a.port, server, { name: 'chat', token: 'secret-token' });
    const ws = new WebSocket(`ws://127.0.0.1:${b.port}/`, { headers: { host: b.host('chat') } });
    cleanup(() => ws.terminate());
    const messages: string[] = [];
    const next = (): Promise<string> =>
      new Promise((resolve) => {
        const have = messages.shift();
        if (have !== undefined) return resolve(have);
        ws.once('message', () => resolve(messages.shift() as string));
      });
    ws.on('message', (d) => messages.push(String(d)));
    expect(await next()).toBe('hello 127.0.0.1');
    ws.send('ping');
    expect(await next()).toBe('echo ping');
  });

  it('serves a Comet app whichever node its polls and its visitors reach', async () => {
    const [a, b, c] = (await cluster()) as [TestNode, TestNode, TestNode];
    const reg = await register(a.origin, { name: 'comet', token: 'secret-token' });
    expect(reg.status).toBe(201);
    // The request URL as node a wrote it, polled through node b.
    const first = new URL(reg.links['first'] as string);
    first.port = String(b.port);
    const poll = fetchRaw(first.href);
    // The poll brings the channel on node a (the session's node): c learns it and routes there.
    await until(async () => (await c.node.table.fetch('comet'))?.remotes.length === 1, 5000, 'c to route to a');
    const visitor = request(c.port, { host: c.host('comet'), path: '/hi', method: 'POST', body: 'from c' });
    const delivered = await poll;
    expect(delivered.status).toBe(200);
    const msg = await parseRequestMessage(delivered.body);
    expect([msg.method, msg.url, msg.body.toString()]).toEqual(['POST', '/hi', 'from c']);
    // The reply goes to node b too (a load balancer may send it anywhere).
    const replyUrl = new URL(first.href);
    const reply = await fetchRaw(replyUrl.href, {
      method: 'POST',
      headers: { 'content-type': 'message/http' },
      body: serializeResponse({ status: 201, headers: [['x-app', 'comet']], body: 'made' }),
    });
    expect(reply.status).toBe(202);
    const r = await visitor;
    expect([r.status, r.headers['x-app'], r.body]).toEqual([201, 'comet', 'made']);
    // The client keeps the origin it polls: node b's, though node a serves the session.
    const next = parseLinks(rawValues(delivered.rawHeaders, 'link'))['next'];
    expect(next).toContain(`:${b.port}/`);
  });

  it('opens a Comet session over the hop only with credentials for its app, and never registers over it', async () => {
    const [a, b] = (await cluster(2)) as [TestNode, TestNode];
    const reg = await register(a.origin, { name: 'guarded', token: 'secret-token' });
    expect(reg.status).toBe(201);
    const first = new URL(reg.links['first'] as string);
    // Credentials are signed with the cluster secret, kept in Redis when none was configured.
    const secret = await b.node.store.secret();
    const signer = new HopSigner(secret, 'intruder');
    const hop = (name: string, path: string, method = 'GET') =>
      fetchRaw(`${a.origin}${path}`, {
        method,
        headers: { 'x-ptth-hop': signer.sign(name, 1), 'x-ptth-hop-kind': 'comet' },
      });
    const other = await hop('another-app', first.pathname);
    expect([other.status, other.headers['x-ptth-error']]).toEqual([403, 'PTTH_ERR_HOP_FORBIDDEN']);
    const registration = await hop('guarded', '/reversehttp', 'POST');
    expect([registration.status, registration.headers['x-ptth-error']]).toEqual([403, 'PTTH_ERR_HOP_FORBIDDEN']);
    const unsigned = await fetchRaw(`${a.origin}${first.pathname}`, {
      headers: { 'x-ptth-hop': 'v1;forged', 'x-ptth-hop-kind': 'comet' },
    });
    expect(unsigned.status).toBe(403);
  });

  it("answers 503 PTTH_ERR_NO_CHANNEL when the session's node is still a member but cannot be reached", async () => {
    const [a, b] = (await cluster(2, {}, 60_000)) as [TestNode, TestNode];
    const reg = await register(a.origin, { name: 'unreached', token: 'secret-token' });
    expect(reg.status).toBe(201);
    // a stops taking connections but keeps its heartbeat: the others still count it a member.
    a.node.gateway.server.close();
    a.node.gateway.server.closeAllConnections();
    const viaB = new URL(reg.links['first'] as string);
    viaB.port = String(b.port);
    const poll = await fetchRaw(viaB.href);
    expect([poll.status, poll.headers['x-ptth-error']]).toEqual([503, 'PTTH_ERR_NO_CHANNEL']);
  });

  it('shares its Comet sessions again when Redis comes back empty: polls through other nodes still reach them', async () => {
    const [a, b] = (await cluster(2)) as [TestNode, TestNode];
    const reg = await register(a.origin, { name: 'survivor', token: 'secret-token' });
    const first = reg.links['first'] as string;
    // The first poll brings the channel on a.
    const poll = fetchRaw(first);
    await until(async () => (await b.node.table.fetch('survivor'))?.remotes.length === 1, 5000, 'b to route to a');
    await redis().restart();
    const ready = async (n: TestNode) => (await request(n.port, { path: '/readyz' })).status === 200;
    await until(async () => (await ready(a)) && (await ready(b)), 10_000, 'both nodes ready again');
    // Through b, which has never seen the session: Redis must know it is a's again.
    const viaB = new URL(first);
    viaB.port = String(b.port);
    const hash = lookupKey(viaB.pathname.split('/')[2] as string);
    await until(async () => (await b.node.store.sessionOf(hash))?.node === 'n1', 10_000, 'the session shared again');
    const visitor = request(b.port, { host: b.host('survivor'), path: '/after-restart' });
    const delivered = await poll;
    expect(delivered.status).toBe(200);
    const reply = await fetchRaw(viaB.href, {
      method: 'POST',
      headers: { 'content-type': 'message/http' },
      body: serializeResponse({ status: 200, headers: [], body: 'kept' }),
    });
    expect(reply.status).toBe(202);
    expect((await visitor).body).toBe('kept');
  }, 30_000);

  it('answers claims with 503 PTTH_ERR_STORE_UNAVAILABLE while Redis is down, keeps serving what it holds, and recovers', async () => {
    const [a, b] = (await cluster(2)) as [TestNode, TestNode];
    await useApp(a.port, whoami, { name: 'steady', token: 'secret-token' });
    expect((await request(b.port, { host: b.host('steady') })).status).toBe(200);
    await (redis() as RedisServer).kill();
    await until(() => !a.node.store.ready && !b.node.store.ready, 5000, 'the nodes to see Redis gone');
    const claim = await fetchRaw(`${b.origin}/reversehttp`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: 'name=fresh&token=secret-token',
    });
    expect([claim.status, claim.headers['x-ptth-error']]).toEqual([503, 'PTTH_ERR_STORE_UNAVAILABLE']);
    const ready = await request(a.port, { path: '/readyz' });
    expect([ready.status, ready.body]).toEqual([503, 'the shared store (Redis) is unreachable\n']);
    // Held and cached routes keep serving.
    expect((await request(a.port, { host: a.host('steady') })).status).toBe(200);
    expect((await request(b.port, { host: b.host('steady') })).status).toBe(200);
    await redis().restart();
    await until(async () => (await request(a.port, { path: '/readyz' })).status === 200, 10_000, 'ready again');
    // a restated 'steady' into the empty Redis: a third node finds it.
    const c = await startNode(a.node.store.options.prefix, 'n3');
    cleanup(() => c.node.close(200));
    await until(
      async () => (await request(c.port, { host: c.host('steady') })).status === 200,
      10_000,
      'c to serve steady',
    );
    const again = await register(b.origin, { name: 'fresh', token: 'secret-token' });
    expect(again.status).toBe(201);
  }, 30_000);

  it('keeps names and Comet request URLs across a restart of every node', async () => {
    const prefix = `c${++clusters}:`;
    let a = await startNode(prefix, 'a1');
    let b = await startNode(prefix, 'b1');
    const ports = [a.port, b.port] as const;
    const reg = await register(a.origin, { name: 'durable', token: 'secret-token', lease: '60' });
    expect(reg.status).toBe(201);
    const first = reg.links['first'] as string;
    const privateUrl = reg.location as string;
    await Promise.all([a.node.close(100), b.node.close(100)]);
    // New processes (new node ids) on the same ports.
    a = await startNode(prefix, 'a2', ports[0]);
    b = await startNode(prefix, 'b2', ports[1]);
    cleanup(() => Promise.all([a.node.close(200), b.node.close(200)]));
    // The old request URL still polls (through b: the session is adopted there), and serves a visitor of a.
    const polled = new URL(first);
    polled.port = String(b.port);
    const poll = fetchRaw(polled.href);
    await until(async () => (await a.node.table.fetch('durable'))?.remotes.length === 1, 5000, 'a to route to b');
    const visitor = request(a.port, { host: a.host('durable'), path: '/after' });
    const delivered = await poll;
    expect(delivered.status).toBe(200);
    expect((await parseRequestMessage(delivered.body)).url).toBe('/after');
    const reply = await fetchRaw(polled.href, {
      method: 'POST',
      headers: { 'content-type': 'message/http' },
      body: serializeResponse({ status: 200, headers: [], body: 'still here' }),
    });
    expect(reply.status).toBe(202);
    expect((await visitor).body).toBe('still here');
    // The private URL too, on either node; and the token rule holds.
    const priv = new URL(privateUrl);
    priv.port = String(a.port);
    expect((await fetchRaw(priv.href, { headers: { accept: 'application/json' } })).status).toBe(200);
    const wrong = await register(b.origin, { name: 'durable', token: 'wrong-token' });
    expect(wrong.status).toBe(403);
  }, 30_000);
});
