/**
 * Defects found by the review of issue 5 ("Production hardening"), each pinned by a test against a
 * real gateway that failed before its fix.
 */
import * as http from 'node:http';
import * as net from 'node:net';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Tunnel } from '../../src/client/node.js';
import { hashKey } from '../../src/routes/access.js';
import { closed, headEnd, rawConnect, readUntil, request, sleep, startApp, startGateway, until, type TestGateway } from '../helpers/index.js';
import { fetchRaw, parseLinks, rawValues, register } from '../helpers/comet.js';
import { makeCert, type TestCert } from '../helpers/tls.js';

let gw: TestGateway | undefined;
const sockets: net.Socket[] = [];
const tunnels: Tunnel[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(tunnels.splice(0).map((t) => t.close({ graceMs: 100 })));
  await gw?.close();
  gw = undefined;
});

async function raw(port: number, bytes: string): Promise<net.Socket> {
  const s = await rawConnect(port);
  s.on('error', () => {});
  sockets.push(s);
  if (bytes) s.write(bytes);
  return s;
}

/** A full garbage collection (the flag is set at run time, so the suite needs no node option). */
function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

describe('the queue of a busy name', () => {
  it('does not keep visitors that gave up while it never empties (memory any visitor controls)', async () => {
    gw = await startGateway({ queueTimeout: 20_000, queueLimit: 1_000 });
    const g = gw;
    const held: http.ServerResponse[] = [];
    const app = http.createServer((_req, res) => void held.push(res));
    tunnels.push(await startApp(g.port, app, { name: 'busy', connections: 1, http1: true }));
    const reg = g.gateway.table.lookup('busy');
    if (!reg) throw new Error('not registered');
    const get = (path: string): string => `GET ${path} HTTP/1.1\r\nHost: ${g.host('busy')}\r\n\r\n`;
    // A holds the one channel; B waits in the queue all along, so the queue never empties.
    const a = await raw(g.port, get('/a'));
    await until(() => held.length === 1, 3_000, 'A at the app');
    const b = await raw(g.port, get('/b'));
    await until(() => reg.waiting === 1, 3_000, 'B queued');

    const seen: WeakRef<http.IncomingMessage>[] = [];
    g.gateway.server.on('request', (req: http.IncomingMessage) => void seen.push(new WeakRef(req)));
    for (let i = 0; i < 30; i++) {
      const s = await raw(g.port, get(`/gone-${i}`));
      await until(() => reg.waiting === 2, 3_000, 'a queued visitor');
      s.destroy();
      await until(() => reg.waiting === 1, 3_000, 'the visitor gone');
    }
    expect(seen).toHaveLength(30);
    await sleep(50);
    collectGarbage();
    await sleep(10);
    collectGarbage();
    expect(seen.filter((r) => r.deref() !== undefined)).toHaveLength(0);

    // The queue still works: A is answered, then B gets the channel.
    held[0]?.end('A');
    expect((await readUntil(a, (buf) => buf.toString().endsWith('A'))).toString()).toMatch(/^HTTP\/1\.1 200 /);
    await until(() => held.length === 2, 3_000, 'B at the app');
    held[1]?.end('B');
    expect((await readUntil(b, (buf) => buf.toString().endsWith('B'))).toString()).toMatch(/^HTTP\/1\.1 200 /);
  });
});
