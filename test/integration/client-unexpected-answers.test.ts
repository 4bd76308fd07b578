import type { IncomingMessage, ServerResponse } from 'node:http';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ClaimError, listen, type Tunnel } from '../../src/client/node.js';
import { until } from '../helpers/index.js';

/*
 * src/client/node.ts against a tiny fake gateway (node:net, then node:http2 as the gateway's side
 * of reversed HTTP/2): claims answered with a 101 for a protocol the client did not offer, or with
 * a refusal it can retry; and the HTTP/2 bridge's answers when the local server fails a request.
 */
const servers: net.Server[] = [];
const sockets: net.Socket[] = [];
const tunnels: Tunnel[] = [];
afterEach(async () => {
  for (const t of tunnels.splice(0)) await t.close({ graceMs: 50, release: false });
  for (const s of sockets.splice(0)) s.destroy();
  for (const s of servers.splice(0)) s.close();
});

interface Claim {
  head: string;
  socket: net.Socket;
}

/** A fake gateway: every claim's head is handed to `answer`, which writes what the test wants. */
async function fakeGateway(answer: (claim: Claim, n: number) => void): Promise<{ port: number; claims: Claim[] }> {
  const claims: Claim[] = [];
  const server = net.createServer((socket) => {
    sockets.push(socket);
    socket.on('error', () => {});
    let buf = Buffer.alloc(0);
    const onData = (c: Buffer): void => {
      buf = Buffer.concat([buf, c]);
      const end = buf.indexOf('\r\n\r\n');
      if (end === -1) return;
      socket.removeListener('data', onData);
      const claim = { head: buf.subarray(0, end).toString('latin1'), socket };
      claims.push(claim);
      answer(claim, claims.length);
    };
    socket.on('data', onData);
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as net.AddressInfo).port, claims };
}

const OK_H2 =
  'HTTP/1.1 101 Switching Protocols\r\nUpgrade: ptth\r\nConnection: Upgrade\r\nALPN: h2\r\n' +
  'Link: <http://bridge.localhost/>; rel="related"\r\nLocation: http://localhost/_ptth/x\r\n\r\n';

function start(
  port: number,
  target: (req: IncomingMessage, res: ServerResponse) => void,
  http1 = false,
): {
  tunnel: Tunnel;
  errors: Error[];
} {
  const gateway = `http://127.0.0.1:${port}`;
  const tunnel = listen(target, { gateway, name: 'fake', backoff: 10, maxBackoff: 20, http1 });
  tunnels.push(tunnel);
  const errors: Error[] = [];
  tunnel.on('reconnecting', ({ error }) => errors.push(error));
  return { tunnel, errors };
}

describe('the client against unexpected claim answers', () => {
  it('a 101 to a protocol it did not offer (websocket): the connection is dropped and the claim retried', async () => {
    const g = await fakeGateway(({ socket }) => {
      socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
    });
    const { tunnel, errors } = start(g.port, (_req, res) => res.end());
    await until(() => g.claims.length >= 2 && errors.length >= 1, 3_000, 'a second claim after the bad 101');
    expect(errors[0]?.message).toMatch(/upgraded to "websocket" \(ALPN none\), which this client does not speak/);
    expect(g.claims[0]?.head).toMatch(/\r\nUpgrade: ptth, PTTH\/1\.0\r\n/i);
    expect(g.claims[0]?.socket.destroyed || (await closedSoon(g.claims[0]?.socket))).toBe(true);
    expect(tunnel.online).toBe(false);
  });

  it('a 101 to reversed HTTP/2 when only PTTH/1.0 was offered: dropped and retried', async () => {
    const g = await fakeGateway(({ socket }) => socket.write(OK_H2));
    const { tunnel, errors } = start(g.port, (_req, res) => res.end(), true);
    await until(() => g.claims.length >= 2 && errors.length >= 1, 3_000, 'a second claim after the bad 101');
    expect(g.claims[0]?.head).toMatch(/\r\nUpgrade: PTTH\/1\.0\r\n/i);
    expect(errors[0]?.message).toMatch(/upgraded to "ptth" \(ALPN h2\)/);
    expect(tunnel.online).toBe(false);
    expect(tunnel.protocol).toBe('h1');
  });

  it('a 503 is retried (ClaimError with status and code); a later 101 brings the tunnel online', async () => {
    const g = await fakeGateway(({ socket }, n) => {
      if (n === 1) {
        const body = 'busy';
        socket.end(
          'HTTP/1.1 503 Service Unavailable\r\nX-Ptth-Error: PTTH_ERR_SHUTTING_DOWN\r\n' +
            `Content-Length: ${body.length}\r\n` +
            `Connection: close\r\n\r\n${body}`,
        );
      } else socket.write(OK_H2);
    });
    const { tunnel, errors } = start(g.port, (_req, res) => res.end());
    await tunnel.ready();
    expect(errors[0]).toBeInstanceOf(ClaimError);
    expect((errors[0] as ClaimError).status).toBe(503);
    expect((errors[0] as ClaimError).code).toBe('PTTH_ERR_SHUTTING_DOWN');
    expect(tunnel.protocol).toBe('h2');
    expect(tunnel.url).toBe('http://bridge.localhost/');
  });
});

function closedSoon(socket: net.Socket | undefined): Promise<boolean> {
  if (!socket || socket.destroyed) return Promise.resolve(true);
  return new Promise((resolve) => socket.once('close', () => resolve(true)));
}

/** The fake gateway's side of a reversed HTTP/2 connection: an HTTP/2 client over the claimed socket. */
type Handler = (req: IncomingMessage, res: ServerResponse) => void;

async function reversedH2(handler: Handler): Promise<http2.ClientHttp2Session> {
  let claimed: net.Socket | undefined;
  const g = await fakeGateway(({ socket }) => {
    socket.write(OK_H2);
    claimed = socket;
  });
  const { tunnel } = start(g.port, handler);
  await tunnel.ready();
  await until(() => claimed !== undefined, 3_000, 'the claim');
  const session = http2.connect('http://bridge.localhost', { createConnection: () => claimed as net.Socket });
  session.on('error', () => {});
  await new Promise<void>((resolve) => session.once('remoteSettings', () => resolve()));
  return session;
}

interface H2Answer {
  status: number | undefined;
  body: string;
  rstCode: number | undefined;
}

function h2Request(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders): Promise<H2Answer> {
  return new Promise((resolve) => {
    const pseudo = { ':method': 'GET', ':scheme': 'http', ':authority': 'bridge.localhost' };
    const stream = session.request({ ...pseudo, ...headers });
    let status: number | undefined;
    let body = '';
    stream.on('response', (h) => (status = Number(h[':status'])));
    stream.setEncoding('utf8');
    stream.on('data', (c: string) => (body += c));
    stream.on('error', () => {});
    stream.on('close', () => resolve({ status, body, rstCode: stream.rstCode }));
  });
}

describe("the client's HTTP/2 bridge when the local server fails", () => {
  it('a server that drops the request before answering: 502 on the stream; the next stream is served', async () => {
    const session = await reversedH2((req, res) => {
      if (req.url === '/drop') req.socket.destroy();
      else res.end(`ok ${req.url ?? ''}`);
    });
    try {
      const dropped = await h2Request(session, { ':path': '/drop' });
      expect(dropped.status).toBe(502);
      expect(dropped.rstCode).toBe(http2.constants.NGHTTP2_NO_ERROR);
      const next = await h2Request(session, { ':path': '/next' });
      expect([next.status, next.body]).toEqual([200, 'ok /next']);
    } finally {
      session.destroy();
    }
  });

  it('a server that fails after its head: the stream is reset (INTERNAL_ERROR), never ended whole', async () => {
    const session = await reversedH2((req, res) => {
      res.writeHead(200, { 'content-length': '100' });
      res.write('partial');
      setImmediate(() => req.socket.destroy());
    });
    try {
      const cut = await h2Request(session, { ':path': '/cut' });
      expect(cut.status).toBe(200);
      expect(cut.rstCode).toBe(http2.constants.NGHTTP2_INTERNAL_ERROR);
      expect(cut.body.length).toBeLessThan(100);
    } finally {
      session.destroy();
    }
  });

  it('a head node:http2 will not send (Content-Type twice): the stream is reset, the next is served', async () => {
    const session = await reversedH2((req, res) => {
      if (req.url === '/twice') res.setHeader('content-type', ['text/plain', 'text/html']);
      res.end(`body of ${req.url ?? ''}`);
    });
    try {
      const bad = await h2Request(session, { ':path': '/twice' });
      expect(bad.status).toBeUndefined();
      expect(bad.rstCode).toBe(http2.constants.NGHTTP2_INTERNAL_ERROR);
      const next = await h2Request(session, { ':path': '/fine' });
      expect([next.status, next.body]).toEqual([200, 'body of /fine']);
    } finally {
      session.destroy();
    }
  });
});
