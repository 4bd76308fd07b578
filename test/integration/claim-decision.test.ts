/**
 * A claim is decided in one step (RouteTable.decide) and refused in one way (gateway/refuse.ts), on
 * a real gateway with raw sockets: a refused claim leaves the table as it found it, and every
 * refused claim, whichever check refused it, reaches the `refuse` event.
 */
import type { Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { GatewayOptions } from '../../src/gateway/server.js';
import { hashKey } from '../../src/table/access.js';
import { headEnd, rawConnect, readUntil, startGateway, type TestGateway } from '../helpers/index.js';

const KEY = 'ptth_decide-0123456789abcdefghijklmnop';

let gw: TestGateway | undefined;
const sockets: Socket[] = [];

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await gw?.close();
  gw = undefined;
});

async function start(options: GatewayOptions): Promise<TestGateway> {
  gw = await startGateway(options);
  return gw;
}

/** Writes `lines` as one request head and reads the answer's head. */
async function exchange(port: number, lines: string[]): Promise<string> {
  const socket = await rawConnect(port);
  socket.on('error', () => {});
  sockets.push(socket);
  socket.write(`${lines.join('\r\n')}\r\n\r\n`);
  const got = (await readUntil(socket, headEnd, 2_000)).toString('latin1');
  return got.slice(0, got.indexOf('\r\n\r\n') + 4);
}

function claim(port: number, query: string, extra: string[] = []): Promise<string> {
  return exchange(port, [
    `POST /${query} HTTP/1.1`,
    `Host: localhost:${port}`,
    'Upgrade: PTTH/1.0',
    'Connection: Upgrade',
    ...extra,
    'Content-Length: 0',
  ]);
}

describe('a claim decided in one step', () => {
  it("makes no name for a claim refused for its key's channels: no register, no release", async () => {
    const g = await start({ access: { keys: [{ id: 'k', sha256: hashKey(KEY), names: ['*'], maxChannels: 1 }] } });
    const events: string[] = [];
    g.gateway.on('register', (r) => events.push(`register ${r.name}`));
    g.gateway.on('release', (r, reason) => events.push(`release ${r.name} ${reason}`));
    g.gateway.on('refuse', (r) => events.push(`refuse ${r.name ?? ''} ${r.code}`));
    expect(await claim(g.port, '?name=one&token=t', [`Authorization: Bearer ${KEY}`])).toMatch(/^HTTP\/1\.1 101 /);
    const refused = await claim(g.port, '?name=two&token=t', [`Authorization: Bearer ${KEY}`]);
    expect(refused).toMatch(/^HTTP\/1\.1 429 /);
    expect(refused).toContain('X-Ptth-Error: PTTH_ERR_KEY_CHANNELS');
    expect(g.gateway.table.lookup('two')).toBeUndefined();
    expect(events).toEqual(['register one', 'refuse two PTTH_ERR_KEY_CHANNELS']);
  });

  it('leaves the lease of a name as it was when its reclaim is refused for room', async () => {
    const g = await start({ maxChannels: 1 });
    expect(await claim(g.port, '?name=full&token=t&lease=30')).toMatch(/^HTTP\/1\.1 101 /);
    const refused = await claim(g.port, '?name=full&token=t&lease=5');
    expect(refused).toContain('X-Ptth-Error: PTTH_ERR_TOO_MANY_CHANNELS');
    expect(g.gateway.table.lookup('full')?.lease).toBe(30);
  });

  it('counts a Comet registration refused for its head as a refused claim', async () => {
    // A Host whose port is out of range: node parses it (on every version), the gateway refuses the head.
    const g = await start({});
    const refused: string[] = [];
    g.gateway.on('refuse', (r) => refused.push(`${r.name ?? ''} ${r.code}`));
    const head = await exchange(g.port, [
      'POST /reversehttp?name=flood HTTP/1.1',
      'Host: localhost:99999',
      'Content-Length: 0',
    ]);
    expect(head).toMatch(/^HTTP\/1\.1 400 /);
    expect(head).toContain('X-Ptth-Error: PTTH_ERR_BAD_HOST');
    expect(refused).toEqual(['flood PTTH_ERR_BAD_HOST']);
  });
});
