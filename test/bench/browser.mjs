// Apps for the browser-facing channels in the benchmark, plain JS on bare node like service.mjs,
// each speaking its protocol directly (no library), serving the same `hello world` as the others.
//
//   node test/bench/browser.mjs comet <gatewayUrl> <name> <pollers>
//       a ReverseHttp Comet app: <pollers> registrations, each a loop of long poll -> reply POST
//       over keep-alive connections; prints `READY <pollers>`
//   node test/bench/browser.mjs comet-pipe <gatewayUrl> <name> <pollers>
//       the same with pipelined polls (docs/PROTOCOL.md section 5.7): each poll says
//       `Accept: application/http` and takes every queued request; one reply POST answers them all
//   node test/bench/browser.mjs ws <gatewayUrl> <name> <channels>
//       <channels> WebSocket channels answering every request with one response frame and one
//       body frame; prints `READY <channels>` once every channel got its hello
//   node test/bench/browser.mjs native <gatewayUrl> <name> <connections> [h1]
//       the same body served through listen() from dist/ (the native channel, the baseline;
//       `h1`: reversed HTTP/1.1 only); prints `READY <protocol>` once online
import * as http from 'node:http';
import WebSocket from 'ws';

const BODY = Buffer.from('hello world');
const REPLY = Buffer.concat([
  Buffer.from(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${BODY.length}\r\n\r\n`),
  BODY,
]);

const [mode, gateway, name, count] = process.argv.slice(2);
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
const fail = (why) => {
  process.stderr.write(`${why}\n`);
  process.exit(1);
};

const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });

function send(url, method, body, accept) {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const req = http.request({
      host: u.hostname === 'localhost' ? '127.0.0.1' : u.hostname,
      port: u.port,
      path: u.pathname + u.search,
      method,
      agent,
      headers: { host: u.host },
    });
    req.on('response', (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode,
          links: res.headers.link ?? '',
          type: res.headers['content-type'],
          clients: res.headers['requesting-client'] ?? '',
          body: Buffer.concat(chunks),
        }),
      );
    });
    req.on('error', reject);
    if (body) req.setHeader('content-type', accept ? 'application/http' : 'message/http');
    if (accept) req.setHeader('accept', 'application/http');
    req.end(body);
  });
}

const rel = (links, want) => {
  for (const m of String(links).matchAll(/<([^>]*)>\s*;\s*rel="?([^",;]+)"?/g)) if (m[2] === want) return m[1];
  return undefined;
};

async function comet(pollers, pipelined) {
  const firsts = [];
  for (let i = 0; i < pollers; i++) {
    const r = await send(`${gateway}/reversehttp?name=${name}&token=bench`, 'POST');
    if (r.status !== 201 && r.status !== 204) fail(`registration refused: ${r.status} ${r.body}`);
    firsts.push(rel(r.links, 'first'));
  }
  process.stdout.write(`READY ${pollers}\n`);
  await Promise.all(
    firsts.map(async (first) => {
      let url = first;
      for (;;) {
        const r = await send(url, 'GET', undefined, pipelined);
        // Every request of the benchmark is a bodyless GET: a pipeline's size is the length of its
        // Requesting-Client list, and one REPLY per request answers it.
        const n = r.type === 'application/http' ? String(r.clients).split(', ').length : 1;
        if (r.status === 200) await send(url, 'POST', n === 1 ? REPLY : Buffer.concat(Array(n).fill(REPLY)), pipelined);
        else if (r.status !== 204) fail(`poll answered ${r.status}`);
        url = rel(r.links, 'next') ?? url;
      }
    }),
  );
}

function ws(channels) {
  let ready = 0;
  const frame = (id, end, payload) => {
    const f = Buffer.alloc(5 + payload.length);
    f[0] = end ? 1 : 0;
    f.writeUInt32BE(id, 1);
    payload.copy(f, 5);
    return f;
  };
  for (let i = 0; i < channels; i++) {
    const sock = new WebSocket(`${gateway.replace(/^http/, 'ws')}/?name=${name}&token=bench`, 'ptth.v1');
    sock.on('message', (data, binary) => {
      if (binary) return; // GET requests only: no request bodies
      const msg = JSON.parse(data.toString());
      if (msg.t === 'hello') {
        if (++ready === channels) process.stdout.write(`READY ${channels}\n`);
      } else if (msg.t === 'request') {
        sock.send(
          JSON.stringify({
            t: 'response',
            id: msg.id,
            status: 200,
            headers: ['Content-Type', 'text/plain', 'Content-Length', String(BODY.length)],
            body: true,
          }),
        );
        sock.send(frame(msg.id, true, BODY));
      }
    });
    sock.on('close', () => fail('a WebSocket channel closed'));
    sock.on('error', (err) => fail(`WebSocket: ${err.message}`));
  }
}

async function native(connections, h1) {
  const { listen } = await import('../../dist/index.js');
  const options = { gateway, name, connections };
  if (h1) options.http1 = true;
  const tunnel = listen((req, res) => {
    req.resume();
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': BODY.length });
    res.end(BODY);
  }, options);
  tunnel.once('online', () => process.stdout.write(`READY ${tunnel.protocol ?? 'h1'}\n`));
  tunnel.on('error', (err) => fail(`tunnel error: ${err.message}`));
}

if (mode === 'comet' || mode === 'comet-pipe') await comet(Number(count), mode === 'comet-pipe');
else if (mode === 'ws') ws(Number(count));
else if (mode === 'native') await native(Number(count), process.argv[6] === 'h1');
else fail('usage: browser.mjs comet|comet-pipe|ws|native <gatewayUrl> <name> <count>');
