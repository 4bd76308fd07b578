// Child process of test/bench/stream.ts: an app that sinks uploads (any method but GET: curl -T
// sends PUT) and sources downloads.
//   node stream-service.mjs backend                       -> READY <port>
//   node stream-service.mjs app <gatewayUrl> <name> <h1|h2> -> READY <protocol>
import * as http from 'node:http';

const CHUNK = Buffer.alloc(256 * 1024, 'ptth-proxy streaming benchmark ');

function handler(req, res) {
  if (req.method !== 'GET') {
    let size = 0;
    req.on('data', (c) => (size += c.length));
    req.on('end', () => res.end(String(size)));
    return;
  }
  const total = Number(new URL(req.url, 'http://x').searchParams.get('bytes') ?? 0);
  res.writeHead(200, { 'Content-Length': total, 'Content-Type': 'application/octet-stream' });
  let sent = 0;
  const pump = () => {
    while (sent < total) {
      const n = Math.min(CHUNK.length, total - sent);
      sent += n;
      if (!res.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) return res.once('drain', pump);
    }
    res.end();
  };
  pump();
}

const [mode, gateway, name, proto] = process.argv.slice(2);
process.on('SIGTERM', () => process.exit(0));
if (mode === 'backend') {
  const server = http.createServer(handler);
  server.listen(0, '127.0.0.1', () => process.stdout.write(`READY ${server.address().port}\n`));
} else {
  const { listen } = await import('../../dist/index.js');
  const tunnel = listen(handler, { gateway, name, connections: 1, http1: proto === 'h1' });
  tunnel.once('online', () => process.stdout.write(`READY ${tunnel.protocol}\n`));
  tunnel.on('error', (err) => {
    process.stderr.write(`tunnel error: ${err.message}\n`);
    process.exit(1);
  });
}
