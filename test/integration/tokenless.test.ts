/**
 * A name claimed without a token is held by its claimant's address (README, "Names and tokens"):
 * the npm `reverse-http` client claims `/?name=x` with no token, its server closes the idle reversed
 * connection after a few seconds, and it claims again. That reclaim must get the name back; a claim
 * from another address, or one with a token, must not.
 */
import * as http from 'node:http';
import * as net from 'node:net';
import { describe, expect, it } from 'vitest';
import { MemoryTable } from '../../src/table/table.js';
import { headEnd, readUntil, request, until, type TestGateway } from '../helpers/index.js';
import { track, useGateway } from '../helpers/fixture.js';

function connectFrom(port: number, localAddress: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', localAddress }, () => resolve(s));
    s.once('error', reject);
    track(s);
  });
}

/** A raw PTTH/1.0 claim as the npm client writes it: POST, no token, Content-Length 0. */
async function claimRaw(
  port: number,
  query: string,
  from = '127.0.0.1',
): Promise<{ socket: net.Socket; head: string }> {
  const socket = await connectFrom(port, from);
  socket.on('error', () => {});
  const head = [`POST /${query} HTTP/1.1`, `Host: localhost:${port}`, 'Upgrade: PTTH/1.0', 'Connection: Upgrade'];
  socket.write(`${head.join('\r\n')}\r\nContent-Length: 0\r\n\r\n`);
  const got = await readUntil(socket, headEnd, 5_000);
  const end = got.indexOf('\r\n\r\n');
  const answer = got.subarray(0, end === -1 ? got.length : end + 4).toString('latin1');
  if (end !== -1 && got.length > end + 4) socket.unshift(got.subarray(end + 4));
  return { socket, head: answer };
}

/**
 * Serves HTTP on a reversed socket like the npm client's node server, which closes the connection
 * after one request here (its keep-alive timeout, made immediate): `Connection: close`.
 */
function serveOnce(socket: net.Socket, body: string): void {
  const server = http.createServer((_req, res) => {
    res.setHeader('Connection', 'close');
    res.end(body);
  });
  server.emit('connection', socket);
  socket.resume();
}

function channels(g: TestGateway, name: string): number {
  return g.gateway.table.lookup(name)?.channels.length ?? -1;
}

/** The body of an error answer (the X-Ptth-Error code is in the head). */
async function refusal(
  port: number,
  query: string,
  from: string,
): Promise<{ status: string; code: string; rest: string }> {
  const { socket, head } = await claimRaw(port, query, from);
  const body = await readUntil(socket, () => false, 3_000);
  return {
    status: head.split('\r\n')[0] ?? '',
    code: /x-ptth-error: (\S+)/i.exec(head)?.[1] ?? '',
    rest: body.toString('utf8'),
  };
}

describe('a name claimed without a token', () => {
  it('127.0.0.2 is usable as a second loopback source address here', async () => {
    const gw = await useGateway();
    const s = await connectFrom(gw.port, '127.0.0.2');
    expect(s.localAddress).toBe('127.0.0.2');
  });

  it('comes back to its claimant after the app closes the reversed connection; another address gets 403', async () => {
    const g = await useGateway();
    const first = await claimRaw(g.port, '?name=npmapp');
    expect(first.head).toMatch(/^HTTP\/1\.1 101 /);
    serveOnce(first.socket, 'one');
    const r1 = await request(g.port, { host: g.host('npmapp') });
    expect(r1.body).toBe('one');
    // The app side closed after that request: the channel is gone, the name waits for its lease.
    await until(() => channels(g, 'npmapp') === 0, 5_000, 'the channel to close');

    // Another machine (address) cannot take the name, with or without a token.
    const other = await refusal(g.port, '?name=npmapp', '127.0.0.2');
    expect(other.status).toBe('HTTP/1.1 403 Forbidden');
    expect(other.code).toBe('PTTH_ERR_TOKEN_MISMATCH');
    expect(other.rest).toContain('held by a client at another address');
    expect(other.rest).toContain('token');
    const withToken = await refusal(g.port, '?name=npmapp&token=guess', '127.0.0.1');
    expect(withToken.code).toBe('PTTH_ERR_TOKEN_MISMATCH');
    expect(withToken.rest).toContain('without a token');

    // The same client reclaims without a token: 101 and it serves again, in the same registration.
    const id = g.gateway.table.lookup('npmapp')?.privateId;
    const second = await claimRaw(g.port, '?name=npmapp');
    expect(second.head).toMatch(/^HTTP\/1\.1 101 /);
    serveOnce(second.socket, 'two');
    const r2 = await request(g.port, { host: g.host('npmapp') });
    expect(r2.status).toBe(200);
    expect(r2.body).toBe('two');
    expect(g.gateway.table.lookup('npmapp')?.privateId).toBe(id);
  });

  it('another address gets 403 while the claimant is connected too; the claimant may add channels', async () => {
    const g = await useGateway();
    const a = await claimRaw(g.port, '?name=busy');
    expect(a.head).toMatch(/^HTTP\/1\.1 101 /);
    const b = await claimRaw(g.port, '?name=busy');
    expect(b.head).toMatch(/^HTTP\/1\.1 101 /);
    await until(() => channels(g, 'busy') === 2, 5_000, 'two channels');
    const other = await refusal(g.port, '?name=busy', '127.0.0.2');
    expect(other.code).toBe('PTTH_ERR_TOKEN_MISMATCH');
    expect(channels(g, 'busy')).toBe(2);
  });

  it('a name claimed from 127.0.0.2 without a token is held by 127.0.0.2, not by the rest of loopback', async () => {
    const g = await useGateway();
    const a = await claimRaw(g.port, '?name=two', '127.0.0.2');
    expect(a.head).toMatch(/^HTTP\/1\.1 101 /);
    expect((await refusal(g.port, '?name=two', '127.0.0.1')).code).toBe('PTTH_ERR_TOKEN_MISMATCH');
    const again = await claimRaw(g.port, '?name=two', '127.0.0.2');
    expect(again.head).toMatch(/^HTTP\/1\.1 101 /);
  });

  it('a tokenless claim never matches a name claimed with a token, even from the same address', async () => {
    const g = await useGateway();
    const a = await claimRaw(g.port, '?name=tok&token=s3cret');
    expect(a.head).toMatch(/^HTTP\/1\.1 101 /);
    const r = await refusal(g.port, '?name=tok', '127.0.0.1');
    expect(r.code).toBe('PTTH_ERR_TOKEN_MISMATCH');
    expect(r.rest).toContain('held under another token');
  });

  it('setting a token through the private URL makes the token, not the address, hold the name', async () => {
    const g = await useGateway();
    const a = await claimRaw(g.port, '?name=later');
    const location = /Location: http:\/\/[^/]+(\/_ptth\/\S+)/.exec(a.head)?.[1] ?? '';
    const put = await request(g.port, {
      method: 'PUT',
      path: location,
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: 'token=now-secret',
    });
    expect(put.status).toBe(204);
    expect((await refusal(g.port, '?name=later', '127.0.0.1')).code).toBe('PTTH_ERR_TOKEN_MISMATCH');
    const b = await claimRaw(g.port, '?name=later&token=now-secret', '127.0.0.2');
    expect(b.head).toMatch(/^HTTP\/1\.1 101 /);
  });
});

describe('MemoryTable: tokenless holders', () => {
  it('the same holder joins; another holder, access key or a token is refused; no address holds nothing', async () => {
    const t = new MemoryTable({ defaultLease: 30, queueLimit: 1, queueTimeout: 100, reconnectWait: 100 });
    try {
      const { registration } = await t.claim({ name: 'v6', holder: '2001:db8:0:1::/64' });
      expect((await t.claim({ name: 'v6', holder: '2001:db8:0:1::/64' })).registration).toBe(registration);
      await expect(t.claim({ name: 'v6', holder: '2001:db8:0:2::/64' })).rejects.toMatchObject({ status: 403 });
      await expect(t.claim({ name: 'v6', token: 'x' })).rejects.toMatchObject({ code: 'PTTH_ERR_TOKEN_MISMATCH' });
      // Behind one address (NAT), a tokenless claim under another access key is another client.
      await t.claim({ name: 'keyed', holder: '192.0.2.7', keyId: 'alice' });
      const bob = t.claim({ name: 'keyed', holder: '192.0.2.7', keyId: 'bob' });
      await expect(bob).rejects.toMatchObject({ status: 403 });
      await expect(t.claim({ name: 'keyed', holder: '192.0.2.7' })).rejects.toMatchObject({ status: 403 });
      expect((await t.claim({ name: 'keyed', holder: '192.0.2.7', keyId: 'alice' })).created).toBe(false);
      await t.claim({ name: 'nobody' });
      await expect(t.claim({ name: 'nobody' })).rejects.toMatchObject({ code: 'PTTH_ERR_TOKEN_MISMATCH' });
    } finally {
      t.close();
    }
  });
});
