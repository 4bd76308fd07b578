import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { fetchRaw, register } from '../helpers/comet.js';
import {
  closed,
  headEnd,
  rawClaim,
  rawConnect,
  readUntil,
  request,
  until,
  type TestGateway,
} from '../helpers/index.js';
import { cleanup, track, useGateway } from '../helpers/fixture.js';
import { RawWsApp, wsRefusal } from '../helpers/wsapp.js';
import type { GatewayOptions } from '../../src/gateway/server.js';

/*
 * Per-address caps for open gateways: connections, names and channels one client address may hold
 * at once. Loopback is exempt unless limitLoopback, so these tests turn it on (with the rate limits
 * off, so only the caps refuse). Every count is released when what it counts goes away.
 */

function gateway(options: GatewayOptions): Promise<TestGateway> {
  return useGateway({ limitLoopback: true, claimRate: false, requestRate: false, ...options });
}

/** Connections the gateway's server holds now. */
function serverConnections(gw: TestGateway): Promise<number> {
  return new Promise((resolve, reject) => {
    gw.gateway.server.getConnections((err, n) => (err ? reject(err) : resolve(n)));
  });
}

async function untilConnections(gw: TestGateway, n: number): Promise<void> {
  const deadline = Date.now() + 3_000;
  while ((await serverConnections(gw)) !== n) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${n} connections`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function claimBytes(gw: TestGateway, query: string, extra = ''): string {
  return (
    `POST /?${query} HTTP/1.1\r\nHost: localhost:${gw.port}\r\n` +
    `Upgrade: PTTH/1.0\r\nConnection: Upgrade\r\n${extra}Content-Length: 0\r\n\r\n`
  );
}

/** A native claim; the socket stays open (it is the channel) after a 101. */
async function claim(gw: TestGateway, query: string, extra = ''): Promise<{ socket: Socket; head: string }> {
  const c = await rawClaim(gw.port, claimBytes(gw, query, extra));
  track(c.socket);
  return c;
}

function code(head: string): string | undefined {
  return /\r\nX-Ptth-Error: (\S+)\r\n/i.exec(head)?.[1];
}

async function refusedClaims(gw: TestGateway, errorCode: string): Promise<number> {
  const text = (await gw.gateway.metrics?.text()) ?? '';
  const m = new RegExp(`^ptth_claims_refused_total\\{code="${errorCode}"\\} (\\d+)$`, 'm').exec(text);
  return Number(m?.[1] ?? 0);
}

describe('connections per address (--max-connections-per-address)', () => {
  it('past the cap the first request gets 429 PTTH_ERR_ADDRESS_CONNECTIONS and the connection closes', async () => {
    const gw = await gateway({ maxConnectionsPerAddress: 3 });
    const held = [await rawConnect(gw.port), await rawConnect(gw.port), await rawConnect(gw.port)];
    for (const s of held) track(s);
    await untilConnections(gw, 3);
    const over = await rawConnect(gw.port);
    track(over);
    over.write(`GET /healthz HTTP/1.1\r\nHost: localhost:${gw.port}\r\n\r\n`);
    const head = (await readUntil(over, headEnd)).toString('latin1');
    expect(head).toMatch(/^HTTP\/1\.1 429 /);
    expect(code(head)).toBe('PTTH_ERR_ADDRESS_CONNECTIONS');
    expect(head).toMatch(/\r\nConnection: close\r\n/i);
    expect(await closed(over)).toBe(true);
    // A visitor request to an app host is refused the same way.
    const visitor = await rawConnect(gw.port);
    track(visitor);
    visitor.write(`GET / HTTP/1.1\r\nHost: ${gw.host('app')}\r\n\r\n`);
    expect(code((await readUntil(visitor, headEnd)).toString('latin1'))).toBe('PTTH_ERR_ADDRESS_CONNECTIONS');
  });

  it('a claim (native or WebSocket) on a connection past the cap gets a raw 429, a refused claim', async () => {
    const gw = await gateway({ maxConnectionsPerAddress: 1 });
    const held = await rawConnect(gw.port);
    track(held);
    await untilConnections(gw, 1);
    const native = await claim(gw, 'name=over');
    expect(native.head).toMatch(/^HTTP\/1\.1 429 /);
    expect(code(native.head)).toBe('PTTH_ERR_ADDRESS_CONNECTIONS');
    expect(native.head).toMatch(/\r\nConnection: close\r\n/i);
    const ws = await wsRefusal(gw.port, { name: 'over-ws' });
    expect(ws).toEqual({ status: 429, code: 'PTTH_ERR_ADDRESS_CONNECTIONS' });
    expect(await refusedClaims(gw, 'PTTH_ERR_ADDRESS_CONNECTIONS')).toBe(2);
    expect(gw.gateway.table.list()).toEqual([]);
  });

  it('the count is released when connections close: the address may connect again (no leak)', async () => {
    const gw = await gateway({ maxConnectionsPerAddress: 2 });
    for (let round = 0; round < 3; round++) {
      const held = [await rawConnect(gw.port), await rawConnect(gw.port)];
      await untilConnections(gw, 2);
      const over = await rawConnect(gw.port);
      over.write(`GET /healthz HTTP/1.1\r\nHost: localhost:${gw.port}\r\n\r\n`);
      expect(code((await readUntil(over, headEnd)).toString('latin1'))).toBe('PTTH_ERR_ADDRESS_CONNECTIONS');
      for (const s of [...held, over]) s.destroy();
      await untilConnections(gw, 0);
      expect(gw.gateway.caps.held('127.0.0.1').connections).toBe(0);
      expect((await request(gw.port, { host: `localhost:${gw.port}`, path: '/healthz' })).status).toBe(200);
    }
  });
});

describe('names per address (--max-names-per-address)', () => {
  it('every claim transport that would create a name past the cap: 429 PTTH_ERR_ADDRESS_NAMES', async () => {
    const gw = await gateway({ maxNamesPerAddress: 2 });
    expect((await claim(gw, 'name=n1&token=t1')).head).toMatch(/^HTTP\/1\.1 101 /);
    expect((await register(gw.origin, { name: 'n2' })).status).toBe(201);
    const native = await claim(gw, 'name=n3');
    expect(native.head).toMatch(/^HTTP\/1\.1 429 /);
    expect(code(native.head)).toBe('PTTH_ERR_ADDRESS_NAMES');
    const random = await claim(gw, 'token=x');
    expect(code(random.head)).toBe('PTTH_ERR_ADDRESS_NAMES');
    const h2 = await rawClaim(gw.port, claimBytes(gw, 'name=n3', 'ALPN: h2\r\n').replace('PTTH/1.0', 'ptth'));
    track(h2.socket);
    expect(code(h2.head)).toBe('PTTH_ERR_ADDRESS_NAMES');
    expect(await wsRefusal(gw.port, { name: 'n3' })).toEqual({ status: 429, code: 'PTTH_ERR_ADDRESS_NAMES' });
    const comet = await register(gw.origin, { name: 'n3' });
    expect(comet.status).toBe(429);
    expect(comet.headers['x-ptth-error']).toBe('PTTH_ERR_ADDRESS_NAMES');
    expect(await refusedClaims(gw, 'PTTH_ERR_ADDRESS_NAMES')).toBe(5);
    expect(
      gw.gateway.table
        .list()
        .map((r) => r.name)
        .sort(),
    ).toEqual(['n1', 'n2']);
    // Reclaiming a name the address holds creates nothing: another channel for n1 is fine.
    expect((await claim(gw, 'name=n1&token=t1')).head).toMatch(/^HTTP\/1\.1 101 /);
  });

  it('a name counts while its lease outlives its channel; once released or expired it frees its place', async () => {
    const gw = await gateway({ maxNamesPerAddress: 1 });
    const first = await claim(gw, 'name=leased&token=t&lease=3600');
    const location = /\r\nLocation: (\S+)\r\n/.exec(first.head)?.[1] ?? '';
    first.socket.destroy();
    await until(() => gw.gateway.table.lookup('leased')?.channels.length === 0, 3_000, 'channel gone');
    expect(code((await claim(gw, 'name=other')).head)).toBe('PTTH_ERR_ADDRESS_NAMES');
    expect((await fetchRaw(location, { method: 'DELETE' })).status).toBe(204);
    expect(gw.gateway.caps.held('127.0.0.1').names).toBe(0);
    // Lease 0: the name ends with its channel, and so does its count.
    const brief = await claim(gw, 'name=brief&lease=0');
    expect(brief.head).toMatch(/^HTTP\/1\.1 101 /);
    brief.socket.destroy();
    await until(() => gw.gateway.table.lookup('brief') === undefined, 3_000, 'lease expiry');
    expect((await claim(gw, 'name=after')).head).toMatch(/^HTTP\/1\.1 101 /);
  });
});

describe('channels per address (--max-channels-per-address)', () => {
  it('every claim transport that would open a channel past the cap: 429 PTTH_ERR_ADDRESS_CHANNELS', async () => {
    const gw = await gateway({ maxChannelsPerAddress: 2 });
    expect((await claim(gw, 'name=c1&token=t')).head).toMatch(/^HTTP\/1\.1 101 /);
    const ws = await RawWsApp.connect(gw.port, { name: 'c2' });
    cleanup(() => ws.close());
    await until(() => gw.gateway.caps.held('127.0.0.1').channels === 2, 3_000, 'two channels counted');
    const native = await claim(gw, 'name=c1&token=t');
    expect(native.head).toMatch(/^HTTP\/1\.1 429 /);
    expect(code(native.head)).toBe('PTTH_ERR_ADDRESS_CHANNELS');
    const h2 = await rawClaim(gw.port, claimBytes(gw, 'name=c3', 'ALPN: h2\r\n').replace('PTTH/1.0', 'ptth'));
    track(h2.socket);
    expect(code(h2.head)).toBe('PTTH_ERR_ADDRESS_CHANNELS');
    expect(await wsRefusal(gw.port, { name: 'c4' })).toEqual({ status: 429, code: 'PTTH_ERR_ADDRESS_CHANNELS' });
    const comet = await register(gw.origin, { name: 'c5' });
    expect(comet.status).toBe(429);
    expect(comet.headers['x-ptth-error']).toBe('PTTH_ERR_ADDRESS_CHANNELS');
    expect(await refusedClaims(gw, 'PTTH_ERR_ADDRESS_CHANNELS')).toBe(4);
    // Refused claims leave no name behind.
    expect(
      gw.gateway.table
        .list()
        .map((r) => r.name)
        .sort(),
    ).toEqual(['c1', 'c2']);
  });

  it('a closed channel gives its place back: the address may open another (no leak)', async () => {
    const gw = await gateway({ maxChannelsPerAddress: 1 });
    for (let round = 0; round < 3; round++) {
      const ch = await claim(gw, 'name=loop&token=t');
      expect(ch.head, `round ${round}`).toMatch(/^HTTP\/1\.1 101 /);
      expect(code((await claim(gw, 'name=loop&token=t')).head)).toBe('PTTH_ERR_ADDRESS_CHANNELS');
      ch.socket.destroy();
      await until(() => gw.gateway.caps.held('127.0.0.1').channels === 0, 3_000, 'channel released');
    }
    const ws = await RawWsApp.connect(gw.port, { name: 'loop-ws' });
    ws.close();
    await until(() => gw.gateway.caps.held('127.0.0.1').channels === 0, 3_000, 'WebSocket channel released');
    expect((await register(gw.origin, { name: 'loop-comet' })).status).toBe(201);
  });
});

describe('exemptions and 0', () => {
  it('loopback is exempt without limitLoopback, and 0 means no cap', async () => {
    const one = { maxConnectionsPerAddress: 1, maxNamesPerAddress: 1, maxChannelsPerAddress: 1 };
    const gw = await useGateway({ claimRate: false, ...one });
    for (const name of ['e1', 'e2', 'e3']) expect((await claim(gw, `name=${name}`)).head).toMatch(/^HTTP\/1\.1 101 /);
    expect(gw.gateway.caps.held('127.0.0.1')).toEqual({ connections: 0, names: 0, channels: 0 });
    await gw.close();
    const open = await gateway({ maxConnectionsPerAddress: 0, maxNamesPerAddress: 0, maxChannelsPerAddress: 0 });
    for (const name of ['z1', 'z2', 'z3']) expect((await claim(open, `name=${name}`)).head).toMatch(/^HTTP\/1\.1 101 /);
    expect(open.gateway.caps.held('127.0.0.1')).toEqual({ connections: 3, names: 3, channels: 3 });
  });
});
