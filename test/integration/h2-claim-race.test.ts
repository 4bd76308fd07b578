import * as https from 'node:https';
import * as tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readUntil, headEnd, until } from '../helpers/index.js';
import { track, useGateway } from '../helpers/fixture.js';
import { serveH2 } from '../helpers/h2app.js';
import { makeCert, type TestCert } from '../helpers/tls.js';

/*
 * src/gateway/claim.ts accept(): an HTTP/2 claim is put in service only once its 101 is written,
 * and the channel limits are checked again then. Over TLS the write completes a turn of the event
 * loop later, so two HTTP/2 claims that arrive together both pass the first check (no channel
 * yet) and race for the last slot under maxChannels: one becomes the channel, the other's
 * connection closes after its 101, and its name is not left counted twice.
 */
let cert: TestCert;
beforeAll(() => {
  cert = makeCert();
});
afterAll(() => cert.remove());

function tlsConnect(port: number): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, ca: cert.cert, servername: 'localhost' }, () => resolve(s));
    s.once('error', reject);
    track(s);
  });
}

const claim = (port: number, name: string): string =>
  `POST /?name=${name}&token=t HTTP/1.1\r\nHost: localhost:${port}\r\nUpgrade: ptth\r\nALPN: h2\r\n` +
  'Connection: Upgrade\r\nContent-Length: 0\r\n\r\n';

function httpsGet(port: number, host: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const tlsOptions = { ca: cert.cert, servername: 'localhost' };
    const req = https.request({ host: '127.0.0.1', port, path: '/', headers: { host }, ...tlsOptions, agent: false });
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('two HTTP/2 claims racing for the last channel slot', () => {
  it('only one joins under maxChannels: the other gets its 101 and then its connection closes', async () => {
    const g = await useGateway({ tls: { cert: cert.cert, key: cert.key }, maxChannels: 1 });
    const [a, b] = await Promise.all([tlsConnect(g.port), tlsConnect(g.port)]);
    if (!a || !b) throw new Error('no sockets');
    const opened: string[] = [];
    g.gateway.on('channel-open', (reg) => opened.push(reg.name));
    // Written in the same turn: the gateway reads both before either 101 is out.
    a.write(claim(g.port, 'race'));
    b.write(claim(g.port, 'race'));
    const [ha, hb] = await Promise.all([readUntil(a, headEnd), readUntil(b, headEnd)]);
    const heads = [ha, hb].map((h) => h.toString('latin1'));
    expect(heads.map((h) => h.slice(0, 12))).toEqual(['HTTP/1.1 101', 'HTTP/1.1 101']);
    const settled = (): boolean => opened.length === 1 && (a.destroyed || b.destroyed);
    await until(settled, 3_000, 'one channel open, one connection closed');
    const loser = a.destroyed ? a : b;
    const winner = loser === a ? b : a;
    expect(winner.destroyed).toBe(false);
    expect(loser.destroyed).toBe(true);
    expect(g.gateway.table.lookup('race')?.channels.length).toBe(1);

    // The winner serves: the name works over the one channel that joined. (node:http2's server
    // takes a TLS socket for HTTP/2 only when its ALPN says so; the 101 agreed on it here.)
    const head = winner === a ? ha : hb;
    winner.alpnProtocol = 'h2';
    await serveH2(winner, head.subarray(head.indexOf('\r\n\r\n') + 4), (stream) => {
      stream.respond({ ':status': 200 });
      stream.end('winner');
    });
    const r = await httpsGet(g.port, g.host('race'));
    expect(r).toEqual({ status: 200, body: 'winner' });
    expect(opened).toEqual(['race']);
    expect(g.gateway.table.lookup('race')?.channels.length).toBe(1);
  });
});
