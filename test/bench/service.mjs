// Child processes of the benchmark (test/bench/run.ts), plain JS so that they run on bare node
// against the compiled dist/, exactly as an app would.
//
//   node test/bench/service.mjs backend
//       a node:http server on 127.0.0.1 (port 0); prints `READY <port>`
//   node test/bench/service.mjs app <gatewayUrl> <name> <connections> [h1]
//       the same handler served in-process through listen() from dist/index.js (`h1`: only
//       reversed HTTP/1.1, `connections` of them); prints `READY <protocol>` once online
//   node test/bench/service.mjs bareh2 <gatewayUrl> <name>
//       the same answer from a bare node:http2 server over one reversed HTTP/2 connection it
//       claims itself (no listen(), no bridge into an http.Server); prints `READY <protocol>`
//   node test/bench/service.mjs proxy <backendPort> <connections>
//       reference row: a minimal node:http server + http.request keep-alive proxy; prints `READY <port>`
//   node test/bench/service.mjs undici <backendPort> <connections>
//       reference row: a minimal node:http server + undici Pool.dispatch proxy; prints `READY <port>`
//   node test/bench/service.mjs h2backend
//       the backend's answer from a bare node:http2 server; prints `READY <port>`
//   node test/bench/service.mjs h2proxy <h2backendPort>
//       reference row: a minimal node:http server + one node:http2 client session; prints `READY <port>`
//   node test/bench/service.mjs splice <port>
//       reference row: a TCP server piping each connection to one of its own to <port>; prints `READY <port>`
import * as http from 'node:http';

const BODY = Buffer.from('hello world');

/** The handler both the backend and the listen() app serve: a small fixed body. */
function handler(req, res) {
  req.resume();
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': BODY.length });
  res.end(BODY);
}

/** The handler's answer from a bare node:http2 server (stream events, no compatibility objects). */
function answerStream(stream) {
  stream.on('error', () => {});
  stream.resume();
  stream.respond({ ':status': 200, 'content-type': 'text/plain', 'content-length': BODY.length });
  stream.end(BODY);
}

const [mode, ...args] = process.argv.slice(2);
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));

if (mode === 'backend') {
  const server = http.createServer({ keepAliveTimeout: 30_000 }, handler);
  // The same accept queue as the gateway's and the references': with node's default of 511, 500
  // visitors overflow it and the kernel's SYN retransmits (1-3 s) become direct's p99.
  server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, () =>
    process.stdout.write(`READY ${server.address().port}\n`),
  );
} else if (mode === 'app') {
  const [gateway, name, connections, h1] = args;
  const { listen } = await import('../../dist/index.js');
  const options = { gateway, name, connections: Number(connections) };
  if (h1 === 'h1') options.http1 = true;
  const tunnel = listen(handler, options);
  tunnel.once('online', () => process.stdout.write(`READY ${tunnel.protocol ?? 'h1'}\n`));
  tunnel.on('reconnecting', ({ delay, error }) =>
    process.stderr.write(`reconnecting in ${delay} ms: ${error.message}\n`),
  );
  tunnel.on('error', (err) => {
    process.stderr.write(`tunnel error: ${err.message}\n`);
    process.exit(1);
  });
} else if (mode === 'bareh2') {
  // A floor, not part of ptth-proxy: an app that claims <name> over reversed HTTP/2 (`Upgrade:
  // ptth`, `ALPN: h2`) and answers every stream from a bare node:http2 server, with no bridge into
  // an http.Server (what listen() adds so that frameworks get IncomingMessage/ServerResponse).
  const [gateway, name] = args;
  const http2 = await import('node:http2');
  const server = http2.createServer({ settings: { maxConcurrentStreams: 256, initialWindowSize: 1 << 20 } });
  server.on('stream', answerStream);
  const req = http.request(`${gateway}/?name=${encodeURIComponent(name)}`, {
    method: 'POST',
    agent: false,
    headers: { Upgrade: 'ptth', ALPN: 'h2', Connection: 'Upgrade', 'Content-Length': '0' },
  });
  req.on('upgrade', (res, socket, head) => {
    socket.setNoDelay(true);
    if (head.length > 0) socket.unshift(head);
    socket.once('close', () => {
      process.stderr.write('bareh2: the gateway closed the connection\n');
      process.exit(1);
    });
    server.emit('connection', socket);
    process.stdout.write(`READY ${res.headers.upgrade}\n`);
  });
  req.on('response', (res) => {
    process.stderr.write(`bareh2: the claim was refused with ${res.statusCode}\n`);
    process.exit(1);
  });
  req.on('error', (err) => {
    process.stderr.write(`bareh2: ${err.message}\n`);
    process.exit(1);
  });
  req.end();
} else if (mode === 'proxy') {
  // A reference, not part of ptth-proxy: the least a Node HTTP/1.1 proxy hop costs here. A plain
  // node:http keep-alive forward proxy to the backend with as many upstream connections as the
  // reversed HTTP/1.1 rows have channels; no routing, no header rewriting, no timers.
  const [backendPort, connections] = args;
  const agent = new http.Agent({ keepAlive: true, maxSockets: Number(connections) });
  const server = http.createServer({ keepAliveTimeout: 30_000 }, (req, res) => {
    const out = http.request(
      { host: '127.0.0.1', port: Number(backendPort), method: req.method, path: req.url, headers: req.headers, agent },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.rawHeaders);
        up.pipe(res);
      },
    );
    out.on('error', () => res.destroy());
    req.pipe(out);
  });
  // The same accept queue as the gateway's (see Gateway.listen).
  server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, () =>
    process.stdout.write(`READY ${server.address().port}\n`),
  );
} else if (mode === 'undici') {
  // A reference, not part of ptth-proxy: node:http on the visitor side, undici's Pool on the
  // backend side through its lowest API (dispatch with a handler: raw header arrays and body chunks,
  // no IncomingMessage or ClientRequest), as fastify's reply-from proxies. Hop-by-hop headers are
  // dropped both ways; the visitor closing early aborts the upstream request.
  const [backendPort, connections] = args;
  const { Pool } = await import('undici');
  const pool = new Pool(`http://127.0.0.1:${backendPort}`, {
    connections: Number(connections),
    pipelining: 1,
    keepAliveTimeout: 30_000,
  });
  const HOP = new Set([
    'connection',
    'keep-alive',
    'proxy-connection',
    'transfer-encoding',
    'te',
    'trailer',
    'upgrade',
  ]);
  const server = http.createServer({ keepAliveTimeout: 30_000 }, (req, res) => {
    const headers = [];
    const raw = req.rawHeaders;
    for (let i = 0; i < raw.length; i += 2) if (!HOP.has(raw[i].toLowerCase())) headers.push(raw[i], raw[i + 1]);
    const body =
      req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined ? req : null;
    // A visitor may leave while its request waits in the pool's queue, before onConnect.
    let gone = false;
    let abortUpstream;
    res.once('close', () => {
      if (res.writableFinished) return;
      gone = true;
      abortUpstream?.(new Error('visitor gone'));
    });
    pool.dispatch(
      { path: req.url, method: req.method, headers, body },
      {
        onConnect(abort) {
          if (gone) abort(new Error('visitor gone'));
          else abortUpstream = abort;
        },
        onHeaders(status, rawHeaders, resume) {
          const out = [];
          for (let i = 0; i < rawHeaders.length; i += 2) {
            const name = rawHeaders[i].toString('latin1');
            if (!HOP.has(name.toLowerCase())) out.push(name, rawHeaders[i + 1].toString('latin1'));
          }
          res.writeHead(status, out);
          res.on('drain', resume);
          return true;
        },
        onData: (chunk) => res.write(chunk),
        onComplete: () => res.end(),
        onError(err) {
          if (res.headersSent) res.destroy(err);
          else res.writeHead(502).end();
        },
      },
    );
  });
  server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, () =>
    process.stdout.write(`READY ${server.address().port}\n`),
  );
} else if (mode === 'h2backend') {
  // The backend of the node:http2 reference: the same answer as `backend`, from a bare node:http2
  // server (stream events, no compatibility objects): the least an HTTP/2 peer costs here.
  const http2 = await import('node:http2');
  const server = http2.createServer({ settings: { maxConcurrentStreams: 256 } });
  server.on('stream', answerStream);
  server.listen({ port: 0, host: '127.0.0.1' }, () => process.stdout.write(`READY ${server.address().port}\n`));
} else if (mode === 'h2proxy') {
  // A reference, not part of ptth-proxy: what the reversed HTTP/2 path amounts to without the
  // gateway. node:http on the visitor side, every request a stream on one node:http2 client session
  // to `h2backend` (as the gateway's requests are streams on an app's one reversed HTTP/2
  // connection); the answer piped back. No routing, header rewriting, limits or timers.
  const [backendPort] = args;
  const http2 = await import('node:http2');
  const session = http2.connect(`http://127.0.0.1:${backendPort}`);
  session.on('error', (err) => {
    process.stderr.write(`h2proxy session: ${err.message}\n`);
    process.exit(1);
  });
  // Fields HTTP/2 forbids (RFC 9113 8.2.2) and the pseudo-header's source.
  const DROP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'host', 'te']);
  const server = http.createServer({ keepAliveTimeout: 30_000 }, (req, res) => {
    const headers = { ':method': req.method, ':path': req.url, ':authority': req.headers.host ?? '127.0.0.1' };
    for (const name in req.headers) if (!DROP.has(name)) headers[name] = req.headers[name];
    const bodyless = req.headers['content-length'] === undefined && req.headers['transfer-encoding'] === undefined;
    const stream = session.request(headers, { endStream: bodyless });
    stream.on('error', () => (res.headersSent ? res.destroy() : res.writeHead(502).end()));
    res.once('close', () => {
      if (!res.writableFinished) stream.close(http2.constants.NGHTTP2_CANCEL);
    });
    if (!bodyless) req.pipe(stream);
    else req.resume();
    stream.on('response', (h) => {
      const out = {};
      for (const name in h) if (name.charCodeAt(0) !== 58 /* : */) out[name] = h[name];
      res.writeHead(h[':status'], out);
      stream.pipe(res);
    });
  });
  server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, () =>
    process.stdout.write(`READY ${server.address().port}\n`),
  );
} else if (mode === 'splice') {
  // A reference, not part of ptth-proxy: a process that only copies bytes, each connection piped
  // both ways to a connection of its own to <port> (the shape of `connect`'s spliced channels,
  // without the gateway's protocol around them). Its CPU per request is what copying costs here.
  const [port] = args;
  const net = await import('node:net');
  const server = net.createServer((visitor) => {
    const upstream = net.connect(Number(port), '127.0.0.1');
    visitor.setNoDelay(true);
    upstream.setNoDelay(true);
    visitor.pipe(upstream);
    upstream.pipe(visitor);
    for (const [a, b] of [
      [visitor, upstream],
      [upstream, visitor],
    ]) {
      a.on('error', () => b.destroy());
      a.on('close', () => b.destroy());
    }
  });
  server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, () =>
    process.stdout.write(`READY ${server.address().port}\n`),
  );
} else {
  process.stderr.write(
    'usage: service.mjs backend | h2backend | app <gatewayUrl> <name> <connections> [h1] | bareh2 <gatewayUrl> <name> | proxy|undici <backendPort> <connections> | h2proxy <h2backendPort> | splice <port>\n',
  );
  process.exit(2);
}
