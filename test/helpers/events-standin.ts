import * as http from 'node:http';
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';

/**
 * A front for a real gateway on 127.0.0.1 that passes everything through (claims and WebSocket
 * upgrades spliced raw) and answers `GET /_ptth/<id>/events` itself ONLY when the gateway behind it
 * answers 404 there: a stand-in for the gateway's per-name event stream while the gateway lacks it.
 * When the gateway has the stream, the front is a plain pass-through and tests see the real one.
 * Its events follow the contract: `event: request` per visitor exchange (with ?detail=1 the
 * headers and first KiB of each body), `event: released` on DELETE of the private URL.
 */
export interface EventsFront {
  port: number;
  origin: string;
  /** Whether a subscription was answered by the stand-in (false: by the real gateway). */
  standIn(): boolean;
  /** Event-stream subscriptions made so far (stand-in or passed through). */
  subscriptions(): number;
  /** Cuts every event stream open now (stand-in or passed through), as a network hiccup would. */
  dropEvents(): void;
  close(): Promise<void>;
}

interface Sub {
  res: http.ServerResponse;
  detail: boolean;
  id: string;
}

const KIB = 1024;

export async function startEventsFront(gatewayPort: number): Promise<EventsFront> {
  const subs = new Map<string, Set<Sub>>(); // by name
  const idToName = new Map<string, string>();
  const sockets = new Set<net.Socket>();
  let seq = 0;
  let usedStandIn = false;
  let subscriptions = 0;
  const streams = new Set<http.ServerResponse>();

  const publish = (name: string, event: Record<string, unknown>, detail: Record<string, unknown>): void => {
    for (const s of subs.get(name) ?? []) {
      s.res.write(`event: request\ndata: ${JSON.stringify(s.detail ? { ...event, ...detail } : event)}\n\n`);
    }
  };

  /** A claim connection closed: when the registration is gone (or the gateway), its streams end, as the real ones do. */
  const endIfGone = (id: string): void => {
    const end = (): void => {
      for (const set of subs.values()) for (const s of set) if (s.id === id) s.res.destroy();
    };
    const probe = http.get({ host: '127.0.0.1', port: gatewayPort, path: `/_ptth/${id}`, agent: false }, (r) => {
      r.resume();
      if (r.statusCode !== 200) end();
    });
    probe.on('error', end);
  };

  const server = http.createServer((req, res) => {
    const url = req.url ?? '/';
    const ev = /^\/_ptth\/([^/?]+)\/events(\?.*)?$/.exec(url);
    const name = /^([a-z0-9-]+)\.localhost(:\d+)?$/i.exec(req.headers.host ?? '')?.[1]?.toLowerCase();
    const started = Date.now();
    const reqChunks: Buffer[] = [];
    let bytesIn = 0;
    req.on('data', (c: Buffer) => {
      if (bytesIn < KIB) reqChunks.push(c);
      bytesIn += c.length;
    });
    const out = http.request({
      host: '127.0.0.1', port: gatewayPort, method: req.method, path: url, headers: req.rawHeaders, agent: false,
    });
    out.on('response', (gres) => {
      if (ev) {
        subscriptions++;
        streams.add(res);
        res.on('close', () => streams.delete(res));
      }
      const subscribe = (subName: string, id: string): void => {
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store' });
        res.write(': stand-in event stream\n\n');
        const sub: Sub = { res, detail: /[?&]detail=1/.test(ev?.[2] ?? ''), id };
        let set = subs.get(subName);
        if (!set) subs.set(subName, (set = new Set()));
        set.add(sub);
        res.on('close', () => set?.delete(sub));
      };
      if (ev && gres.statusCode === 404) {
        gres.resume();
        usedStandIn = true;
        const id = ev[1] as string;
        const subName = idToName.get(id);
        // As the real stream would: 404 for a registration the gateway no longer has.
        const state = http.get({ host: '127.0.0.1', port: gatewayPort, path: `/_ptth/${id}`, agent: false }, (sres) => {
          sres.resume();
          if (sres.statusCode !== 200 || !subName) {
            res.writeHead(404).end();
            return;
          }
          subscribe(subName, id);
        });
        state.on('error', () => res.destroy());
        return;
      }
      res.writeHead(gres.statusCode ?? 502, gres.statusMessage, gres.rawHeaders);
      res.on('close', () => gres.destroy());
      const resChunks: Buffer[] = [];
      let bytesOut = 0;
      gres.on('data', (c: Buffer) => {
        if (bytesOut < KIB) resChunks.push(c);
        bytesOut += c.length;
        res.write(c);
      });
      gres.on('end', () => {
        res.end();
        const del = /^\/_ptth\/([^/?]+)$/.exec(url);
        if (req.method === 'DELETE' && del) {
          const n = idToName.get(del[1] as string);
          for (const s of subs.get(n ?? '') ?? []) s.res.end('event: released\ndata: {}\n\n');
          subs.delete(n ?? '');
          return;
        }
        if (!name || url.startsWith('/_ptth/')) return;
        const reqBody = Buffer.concat(reqChunks);
        const resBody = Buffer.concat(resChunks);
        publish(
          name,
          {
            id: ++seq, time: started, method: req.method, url, status: gres.statusCode ?? 0, ms: Date.now() - started,
            bytesIn, bytesOut, error: null, remote: req.socket.remoteAddress ?? '',
          },
          {
            request: {
              headers: req.rawHeaders,
              body: reqBody.subarray(0, KIB).toString('base64'),
              bodyBytes: bytesIn,
              truncated: bytesIn > KIB,
            },
            response: {
              headers: gres.rawHeaders, body: resBody.subarray(0, KIB).toString('base64'), truncated: bytesOut > KIB,
            },
          },
        );
      });
    });
    out.on('error', () => res.destroy());
    req.pipe(out);
  });

  server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    const up = net.connect(gatewayPort, '127.0.0.1');
    sockets.add(up);
    up.on('close', () => {
      sockets.delete(up);
      if (claimed) endIfGone(claimed);
    });
    let claimed: string | undefined;
    up.on('error', () => socket.destroy());
    socket.on('error', () => up.destroy());
    const lines = [`${req.method} ${req.url} HTTP/1.1`];
    for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
    up.write(`${lines.join('\r\n')}\r\n\r\n`);
    if (head.length) up.write(head);
    // Learn the registration's private id and name from the 101 (Location and Link headers).
    up.once('data', (c: Buffer) => {
      const text = c.toString('latin1');
      const id = /\r\nLocation: [^\r]*\/_ptth\/([^\s/?]+)/i.exec(text)?.[1];
      const n = /\r\nLink: <https?:\/\/([a-z0-9-]+)\./i.exec(text)?.[1];
      if (id && n) idToName.set(id, n.toLowerCase());
      claimed = id;
    });
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
    standIn: () => usedStandIn,
    subscriptions: () => subscriptions,
    dropEvents: () => {
      for (const s of streams) s.destroy();
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of subs.values()) for (const x of s) x.res.destroy();
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
