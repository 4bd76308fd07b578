/**
 * One app of the soak run (test/bench/soak.ts), in its own process so that the run can kill it
 * abruptly (SIGKILL) the way a crashing app dies:
 *
 *   node --import tsx test/bench/soak-app.ts <kind> <gatewayUrl> <name> <token>
 *
 *   h1     listen(), reversed HTTP/1.1 only (8 connections: each carries one request at a time, and
 *          each visitor WebSocket takes one away); also echoes visitors' WebSockets at /ws
 *   h2     listen(), reversed HTTP/2 (the library's default when the gateway offers it)
 *   comet  the Comet helper (test/helpers/comet.ts), 8 pollers
 *   ws     the browser library (dist/browser/ptth.js) over the WebSocket channel, in Node with `ws`
 *
 * Prints `READY <public url>` once online. Commands on stdin: `close` (stop and release the name),
 * `leave` (stop and keep it, to be reclaimed with the same token); stdin closing (the run ended or
 * died) is `leave`. Every app serves soak-lib.ts's answer().
 */
import * as http from 'node:http';
import { createInterface } from 'node:readline';
import { WebSocketServer } from 'ws';
import { listen } from '../../src/client/node.js';
import { CometApp } from '../helpers/comet.js';
import { loadLibrary } from '../helpers/wsapp.js';
import { cometHandler, fetchHandler, nodeHandler } from './soak-lib.js';

const [kind, gateway, name, token] = process.argv.slice(2);
const fail = (why: string): never => {
  process.stderr.write(`soak-app ${kind ?? '?'} ${name ?? '?'}: ${why}\n`);
  process.exit(1);
};
if (!kind || !gateway || !name || !token) fail('usage: soak-app.ts h1|h2|comet|ws <gatewayUrl> <name> <token>');
process.on('unhandledRejection', (err) => fail(`unhandled rejection: ${String(err)}`));

/** Reconnect quickly: the soak restarts names under load and wants them back soon. */
const BACKOFF = { backoff: 100, maxBackoff: 2_000 };

async function start(): Promise<{ url: string; close(release: boolean): Promise<void> }> {
  const base = { gateway: gateway as string, name: name as string, token: token as string };
  switch (kind) {
    case 'h1': {
      const server = http.createServer(nodeHandler);
      const wss = new WebSocketServer({ server, path: '/ws' });
      wss.on('connection', (ws) => {
        ws.on('error', () => undefined);
        ws.on('message', (data, binary) => ws.send(data, { binary }));
      });
      const tunnel = listen(server, { ...base, ...BACKOFF, http1: true, connections: 8 });
      tunnel.on('error', (err) => fail(`tunnel stopped: ${err.message}`));
      return { url: await tunnel.ready(), close: (release) => tunnel.close({ release, graceMs: 1_000 }) };
    }
    case 'h2': {
      const tunnel = listen(nodeHandler, { ...base, ...BACKOFF });
      tunnel.on('error', (err) => fail(`tunnel stopped: ${err.message}`));
      const url = await tunnel.ready();
      if (tunnel.protocol !== 'h2') fail(`expected reversed HTTP/2, got ${String(tunnel.protocol)}`);
      return { url, close: (release) => tunnel.close({ release, graceMs: 1_000 }) };
    }
    case 'comet': {
      const app = await CometApp.start(gateway as string, { name: base.name, token: base.token }, cometHandler, 8);
      // A poller that stops is never replaced: say so and exit, so that the run counts the crash and
      // restarts the app, instead of the name quietly losing its pollers one by one (503s).
      app.failed.catch((err: unknown) => fail(`a poller stopped: ${err instanceof Error ? err.message : String(err)}`));
      // CometApp.stop() always releases; leaving is just going away (the gateway notices the idle pollers).
      return { url: app.url, close: (release) => (release ? app.stop() : Promise.resolve()) };
    }
    case 'ws': {
      const serve = await loadLibrary();
      const server = serve({ ...base, ...BACKOFF, transport: 'websocket' }, fetchHandler);
      return { url: await server.url, close: (release) => server.close({ release }) };
    }
    default:
      return fail(`unknown kind ${kind}`);
  }
}

const app = await start();
process.stdout.write(`READY ${app.url}\n`);
let closing = false;
const stop = (release: boolean): void => {
  if (closing) return;
  closing = true;
  void app.close(release).then(
    () => process.exit(0),
    (err: unknown) => fail(`close: ${String(err)}`),
  );
};
const commands = createInterface({ input: process.stdin });
commands.on('line', (line) => stop(line.trim() === 'close'));
commands.on('close', () => stop(false));
