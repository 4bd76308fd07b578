/**
 * An app in its own process for the fault tests (test/integration/faults.test.ts): serves through a
 * gateway with the library's listen(), so that a test can SIGKILL it mid-request, SIGSTOP it to
 * stall its connections, and start it again under the same name and token.
 *
 *     node --import tsx test/helpers/child-app.ts <gateway-url> <name> <token> [h1|h2] [connections]
 *
 * Prints one line per event, for the test to wait on: `online <url>`, `offline`,
 * `request <path>`, `partial sent`.
 *
 * Routes: `/hello` answers `hello from <pid>`; `/hang` never answers; `/partial` sends its head
 * (Content-Length 1000) and 7 bytes of body, then nothing more; `/chunked` the same without a
 * length (chunked).
 */
import * as http from 'node:http';
import { listen } from '../../src/client/node.js';

const [gateway, name, token, mode = 'h2', connections = '2'] = process.argv.slice(2);
if (!gateway || !name || !token) {
  process.stderr.write('usage: child-app.ts <gateway-url> <name> <token> [h1|h2] [connections]\n');
  process.exit(2);
}

const server = http.createServer((req, res) => {
  process.stdout.write(`request ${req.url ?? ''}\n`);
  if (req.url === '/hang') return;
  if (req.url === '/partial' || req.url === '/chunked') {
    // A declared length, or chunked: cut short, the visitor must never see a complete response.
    res.writeHead(
      200,
      req.url === '/partial'
        ? { 'content-type': 'text/plain', 'content-length': '1000' }
        : { 'content-type': 'text/plain' },
    );
    res.write('partial', () => process.stdout.write('partial sent\n'));
    return;
  }
  res.end(`hello from ${process.pid}`);
});

const tunnel = listen(server, {
  gateway,
  name,
  token,
  connections: Number(connections),
  ...(mode === 'h1' ? { http1: true } : {}),
  // Fast reconnects: the tests restart gateways and stall connections on purpose.
  backoff: 50,
  maxBackoff: 300,
});
tunnel.on('online', (url) => process.stdout.write(`online ${url}\n`));
tunnel.on('offline', () => process.stdout.write('offline\n'));
tunnel.on('error', (err) => {
  process.stderr.write(`error ${err.message}\n`);
  process.exit(1);
});
