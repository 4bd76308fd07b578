import * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { closed, rawConnect, readUntil, request, startGateway, until, type TestGateway } from '../helpers/index.js';
import { fetchRaw, register } from '../helpers/comet.js';

/** Defects a review found in the browser-facing channels, each pinned by a test. */
let gw: TestGateway | undefined;
const sockets: (net.Socket | WebSocket)[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s instanceof WebSocket ? s.terminate() : s.destroy();
  await gw?.close();
  gw = undefined;
});

function wsApp(port: number, name: string, onRequest?: (ws: WebSocket, m: { id: number }) => void): Promise<WebSocket> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/?name=${name}`, 'ptth.v1', { headers: { Host: `localhost:${port}` } });
  sockets.push(ws);
  ws.on('message', (data, binary) => {
    if (binary) return;
    const m = JSON.parse(String(data)) as { t: string; id: number };
    if (m.t === 'request') onRequest?.(ws, m);
  });
  ws.on('error', () => {});
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws));
    ws.once('unexpected-response', () => reject(new Error('refused')));
  });
}

/** The gateway's side of the next connection it accepts. */
function serverSocket(g: TestGateway): Promise<net.Socket> {
  return new Promise((resolve) => g.gateway.server.once('connection', (c: net.Socket) => resolve(c)));
}

const frame = (id: number, flags: number, text = ''): Buffer => {
  const p = Buffer.from(text);
  const b = Buffer.alloc(5 + p.length);
  b[0] = flags;
  b.writeUInt32BE(id, 1);
  p.copy(b, 5);
  return b;
};

describe('hardening of the WebSocket channel', () => {
  it('a control frame with a long non-ASCII type closes that channel with 1002 and never the gateway', async () => {
    gw = await startGateway();
    const ws = await wsApp(gw.port, 'crash');
    const code = new Promise<number>((resolve) => ws.once('close', (c) => resolve(c)));
    ws.send(JSON.stringify({ t: '\u00e9'.repeat(60), id: 1 }));
    expect(await code).toBe(1002);
    // Still serving: another app claims and answers.
    await wsApp(gw.port, 'alive', (app, m) => {
      app.send(JSON.stringify({ t: 'response', id: m.id, status: 200, headers: ['Content-Length', '2'], body: true }));
      app.send(frame(m.id, 1, 'ok'), { binary: true });
    });
    expect((await request(gw.port, { host: gw.host('alive') })).body).toBe('ok');
  });

  it('an app writing past its Content-Length cuts the visitor connection instead of forging the next response', async () => {
    gw = await startGateway();
    await wsApp(gw.port, 'evil', (app, m) => {
      app.send(JSON.stringify({ t: 'response', id: m.id, status: 200, headers: ['Content-Length', '5'], body: true }));
      app.send(frame(m.id, 0, 'helloHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged'), { binary: true });
      app.send(frame(m.id, 1), { binary: true });
    });
    const s = await rawConnect(gw.port);
    sockets.push(s);
    const cut = closed(s, 5_000);
    s.write(`GET / HTTP/1.1\r\nHost: ${gw.host('evil')}\r\n\r\n`);
    // Everything the visitor gets until its connection closes (readUntil ends at the close): once
    // closed, nothing more can come, so the absence of the forged response is final.
    const got = (await readUntil(s, () => false, 5_000)).toString('latin1');
    expect(await cut).toBe(true);
    expect(got).not.toContain('forged');
  });

  it('an app ending short of its Content-Length cuts the visitor connection too', async () => {
    gw = await startGateway();
    await wsApp(gw.port, 'short', (app, m) => {
      app.send(JSON.stringify({ t: 'response', id: m.id, status: 200, headers: ['Content-Length', '10'], body: true }));
      app.send(frame(m.id, 1, 'abc'), { binary: true });
    });
    const s = await rawConnect(gw.port);
    sockets.push(s);
    s.write(`GET / HTTP/1.1\r\nHost: ${gw.host('short')}\r\n\r\n`);
    expect(await closed(s)).toBe(true);
  });
});

describe('hardening of WebSocket claims', () => {
  it('a handshake that ws itself refuses leaves no registration behind', async () => {
    gw = await startGateway();
    const g = gw;
    const registered: string[] = [];
    g.gateway.on('register', (reg) => registered.push(reg.name));
    const s = await rawConnect(gw.port);
    sockets.push(s);
    // Passes the gateway's own checks (GET, a key, version 13) but not ws's: Upgrade is a list here.
    s.write(
      `GET /?name=leftover HTTP/1.1\r\nHost: localhost:${gw.port}\r\nUpgrade: websocket, foo\r\nConnection: Upgrade\r\n` +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
    );
    const got = (await readUntil(s, (b) => b.includes('\r\n\r\n'))).toString('latin1');
    expect(got).toMatch(/^HTTP\/1\.1 400 /);
    expect(await closed(s)).toBe(true);
    // The claim passed the gateway's own checks (it registered the name), so ws's refusal is the
    // path under test; the name is released once the gateway sees the socket close.
    expect(registered).toEqual(['leftover']);
    await until(() => g.gateway.table.lookup('leftover') === undefined, 3_000, 'the leftover name released');
  });
});

describe('hardening of Comet', () => {
  it('a body that trickles in gets 408 after the queue timeout instead of holding a queue place forever', async () => {
    gw = await startGateway({ queueTimeout: 300 });
    const reg = await register(gw.origin, { name: 'slow', token: 't' });
    expect(reg.status).toBe(201);
    const s = await rawConnect(gw.port);
    sockets.push(s);
    s.write(`POST / HTTP/1.1\r\nHost: ${gw.host('slow')}\r\nContent-Length: 1000\r\n\r\nx`);
    const got = (await readUntil(s, (b) => b.includes('\r\n\r\n'), 3_000)).toString('latin1');
    expect(got).toMatch(/^HTTP\/1\.1 408 /);
    expect(got).toContain('PTTH_ERR_BODY_TIMEOUT');
  });

  it('bodies buffered for Comet apps are capped in total (8 x --buffer-limit), past it 503', async () => {
    const g = await startGateway({ bufferLimit: 1_000, pollTimeout: 100, queueTimeout: 2_000 });
    gw = g;
    const reg = await register(g.origin, { name: 'hoard', token: 't' });
    // One poll that times out: the name now has a Comet channel, and nobody polls again.
    const poll = await fetchRaw(reg.links.first as string);
    expect(poll.status).toBe(204);
    const body = 'x'.repeat(900);
    const replies = await Promise.all(
      Array.from({ length: 12 }, () => request(g.port, { host: g.host('hoard'), method: 'POST', body, headers: { accept: 'application/json' } })),
    );
    // Eight bodies fit (7,200 of 8,000 bytes) and wait for a poller; the rest are refused rather than buffered.
    const refused = replies.filter((r) => r.status === 503 && r.headers['x-ptth-error'] === 'PTTH_ERR_QUEUE_FULL');
    expect(refused.length).toBe(4);
    expect(refused[0]?.body).toContain('buffering as much as it allows');
  });

  it('registrations are refused with 503 while the gateway shuts down', async () => {
    gw = await startGateway();
    const registered: string[] = [];
    gw.gateway.on('register', (reg) => registered.push(reg.name));
    const atGateway = serverSocket(gw);
    const s = await rawConnect(gw.port);
    sockets.push(s);
    // Half a request, so the connection is busy (not idle) when close() starts: close() waits
    // until the gateway has read those bytes.
    const half = `POST /reversehttp HTTP/1.1\r\nHost: localhost:${gw.port}\r\n`;
    s.write(half);
    const conn = await atGateway;
    await until(() => conn.bytesRead === half.length, 3_000, 'the half request read by the gateway');
    const closing = gw.gateway.close(2_000);
    s.write('Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 11\r\n\r\nname=latecm');
    const got = (await readUntil(s, (b) => b.includes('\r\n\r\n'))).toString('latin1');
    expect(got).toMatch(/^HTTP\/1\.1 503 /);
    await closing;
    // close() releases every name, so the table alone could not tell: the name was never registered.
    expect(registered).toEqual([]);
    expect(gw.gateway.table.lookup('latecm')).toBeUndefined();
    gw = undefined;
  });
});
