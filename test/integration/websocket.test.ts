import * as http from 'node:http';
import { describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import type { Tunnel } from '../../src/client/node.js';
import { rawConnect, readUntil, headEnd, request, until, type TestGateway } from '../helpers/index.js';
import { cleanup, useApp, useGateway } from '../helpers/fixture.js';

async function echoApp(name: string): Promise<{ gw: TestGateway; tunnel: Tunnel }> {
  const gw = await useGateway();
  const server = http.createServer((_req, res) => res.end('plain http'));
  const wss = new WebSocketServer({ server, path: '/chat' });
  cleanup(() => wss.close());
  wss.on('connection', (ws, req) => {
    ws.send(`hello ${String(req.headers['x-forwarded-for'])}`);
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
  const tunnel = await useApp(gw.port, server, { name, connections: 2 });
  return { gw, tunnel };
}

type Message = { data: Buffer; binary: boolean };
const inbox = new WeakMap<WebSocket, { queue: Message[]; waiters: ((m: Message) => void)[] }>();

/** Opens a WebSocket to the app's public host; messages are queued from the first byte on. */
function open(port: number, host: string, path = '/chat'): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}${path}`, { headers: { Host: host } });
    const box = { queue: [] as Message[], waiters: [] as ((m: Message) => void)[] };
    inbox.set(ws, box);
    ws.on('message', (data, binary) => {
      const m = { data: data as Buffer, binary };
      const w = box.waiters.shift();
      if (w) w(m);
      else box.queue.push(m);
    });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

function next(ws: WebSocket): Promise<Message> {
  const box = inbox.get(ws);
  if (!box) throw new Error('not opened with open()');
  const m = box.queue.shift();
  return m ? Promise.resolve(m) : new Promise((resolve) => box.waiters.push(resolve));
}

describe('visitor WebSocket upgrades', () => {
  it('are spliced to the app after its 101, text and binary both ways', async () => {
    const { gw } = await echoApp('chat');
    const ws = await open(gw.port, gw.host('chat'));
    const hello = await next(ws);
    expect(hello.data.toString()).toBe('hello 127.0.0.1');
    ws.send('ping');
    expect((await next(ws)).data.toString()).toBe('ping');
    const blob = Buffer.alloc(3 * 1024 * 1024, 7);
    ws.send(blob);
    const echoed = await next(ws);
    expect(echoed.binary).toBe(true);
    expect(echoed.data.equals(blob)).toBe(true);
    ws.close();
  });

  it('take the channel out of the pool, and the client opens a replacement', async () => {
    const { gw, tunnel } = await echoApp('pool');
    await until(() => gw.gateway.table.lookup('pool')?.channels.length === 2);
    const sockets = [await open(gw.port, gw.host('pool')), await open(gw.port, gw.host('pool'))];
    await until(
      () => gw.gateway.table.lookup('pool')?.channels.length === 2 && tunnel.connections === 2,
      3_000,
      'replacements',
    );
    // Plain requests still work while both WebSockets stay open.
    expect((await request(gw.port, { host: gw.host('pool') })).body).toBe('plain http');
    for (const ws of sockets) {
      ws.send('still spliced');
      expect((await next(ws)).data.toString()).toMatch(/^hello /);
      expect((await next(ws)).data.toString()).toBe('still spliced');
      ws.close();
    }
  });

  it("relay the app's refusal and close the visitor connection", async () => {
    const { gw } = await echoApp('refuse');
    const s = await rawConnect(gw.port);
    s.write(
      `GET /not-chat HTTP/1.1\r\nHost: ${gw.host('refuse')}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
    );
    const got = (await readUntil(s, () => false, 2_000)).toString('latin1');
    expect(got).toMatch(/^HTTP\/1\.1 400 /);
    expect(got).toMatch(/\r\nConnection: close\r\n/i);
    expect(s.destroyed || s.readableEnded).toBe(true);
    s.destroy();
  });

  it('to an unknown name get a 404 and a closed connection', async () => {
    const gw = await useGateway();
    const s = await rawConnect(gw.port);
    s.write(`GET / HTTP/1.1\r\nHost: ${gw.host('ghost')}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n`);
    const got = (await readUntil(s, headEnd)).toString('latin1');
    expect(got).toMatch(/^HTTP\/1\.1 404 Not Found\r\n/);
    expect(got).toContain('Connection: close');
    s.destroy();
  });
});
