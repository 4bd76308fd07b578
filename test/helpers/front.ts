import * as http from 'node:http';
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';

/**
 * A pass-through front for a real gateway on 127.0.0.1: requests are relayed with node:http,
 * claims and WebSocket upgrades spliced raw. It exists so a test can cut the event streams open
 * through it (`dropEvents`), as a network hiccup would, while the gateway and the apps stay up.
 */
export interface EventsFront {
  port: number;
  origin: string;
  /** Cuts every event stream (`/_ptth/<id>/events`) open through the front now. */
  dropEvents(): void;
  close(): Promise<void>;
}

export async function startEventsFront(gatewayPort: number): Promise<EventsFront> {
  const sockets = new Set<net.Socket>();
  const streams = new Set<http.ServerResponse>();
  const server = http.createServer((req, res) => {
    const url = req.url ?? '/';
    const out = http.request({
      host: '127.0.0.1',
      port: gatewayPort,
      method: req.method,
      path: url,
      headers: req.rawHeaders,
      agent: false,
    });
    out.on('response', (gres) => {
      if (/^\/_ptth\/[^/?]+\/events(\?.*)?$/.test(url)) {
        streams.add(res);
        res.on('close', () => streams.delete(res));
      }
      res.writeHead(gres.statusCode ?? 502, gres.statusMessage, gres.rawHeaders);
      res.on('close', () => gres.destroy());
      gres.pipe(res);
    });
    out.on('error', () => res.destroy());
    req.pipe(out);
  });
  server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
    const up = net.connect(gatewayPort, '127.0.0.1');
    for (const s of [socket, up]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    }
    up.on('error', () => socket.destroy());
    socket.on('error', () => up.destroy());
    const lines = [`${req.method} ${req.url} HTTP/1.1`];
    for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
    up.write(`${lines.join('\r\n')}\r\n\r\n`);
    if (head.length) up.write(head);
    up.pipe(socket);
    socket.pipe(up);
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    origin: `http://127.0.0.1:${port}`,
    dropEvents: () => {
      for (const s of streams) s.destroy();
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
