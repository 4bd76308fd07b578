import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { HOP_WINDOW_MS, HopClient, HopSigner } from '../../src/cluster/hop.js';
import { forwardRequestHeaders, hopRequestHeaders, idempotent } from '../../src/http/headers.js';

const SECRET = 'a-cluster-secret-of-some-length';

/** A credential built by hand from the documented format (docs/PROTOCOL.md section 12). */
function handMade(secret: string, node: string, name: string, hops: number, t: number): string {
  const sig = createHmac('sha256', secret).update(`v1|${node}|${name}|${hops}|${t}`).digest('base64url');
  return `v1;node=${node};name=${name};hops=${hops};t=${t};sig=${sig}`;
}

describe('HopSigner', () => {
  it('signs in the documented format and verifies its own credentials', () => {
    const now = 1_790_000_000_000;
    const signer = new HopSigner(SECRET, 'node-a', { now: () => now });
    const value = signer.sign('app', 1);
    expect(value).toBe(handMade(SECRET, 'node-a', 'app', 1, now));
    expect(signer.verify(value)).toEqual({ node: 'node-a', name: 'app', hops: 1 });
  });

  it('hands the same credential out for up to a second per name and hop count, then signs anew', () => {
    let now = 1_790_000_000_000;
    const signer = new HopSigner(SECRET, 'a', { now: () => now });
    const first = signer.sign('app', 1);
    now += 999;
    expect(signer.sign('app', 1)).toBe(first);
    expect(signer.sign('app', 2)).toBe(handMade(SECRET, 'a', 'app', 2, now));
    expect(signer.sign('other', 1)).toBe(handMade(SECRET, 'a', 'other', 1, now));
    now += 1;
    expect(signer.sign('app', 1)).toBe(handMade(SECRET, 'a', 'app', 1, now));
    // A clock that went back never hands out a credential from its future.
    now -= 5_000;
    expect(signer.sign('app', 1)).toBe(handMade(SECRET, 'a', 'app', 1, now));
  });

  it('a credential verified before is checked against the window again each time', () => {
    let now = 1_790_000_000_000;
    const signer = new HopSigner(SECRET, 'b', { now: () => now });
    const value = handMade(SECRET, 'a', 'app', 1, now);
    expect(signer.verify(value)).toEqual({ node: 'a', name: 'app', hops: 1 });
    expect(signer.verify(value)).toEqual({ node: 'a', name: 'app', hops: 1 });
    now += HOP_WINDOW_MS + 1;
    expect(signer.verify(value)).toBeUndefined();
    now -= 2 * HOP_WINDOW_MS + 2;
    expect(signer.verify(value)).toBeUndefined();
  });

  it('verify works detached (handed on as ClusterHooks.verifyHop)', () => {
    const a = new HopSigner(SECRET, 'a');
    const { verify } = new HopSigner(SECRET, 'b');
    expect(verify(a.sign('app', 2))).toEqual({ node: 'a', name: 'app', hops: 2 });
  });

  it('accepts credentials within the window either side and refuses them past it', () => {
    let now = 1_790_000_000_000;
    const signer = new HopSigner(SECRET, 'a', { now: () => now });
    const value = signer.sign('app', 1);
    now += HOP_WINDOW_MS;
    expect(signer.verify(value)).toBeDefined();
    now += 1;
    expect(signer.verify(value)).toBeUndefined();
    now = 1_790_000_000_000 - HOP_WINDOW_MS - 1;
    expect(signer.verify(value)).toBeUndefined();
    const short = new HopSigner(SECRET, 'a', { now: () => now, windowMs: 10 });
    expect(short.verify(handMade(SECRET, 'a', 'app', 1, now - 11))).toBeUndefined();
  });

  it('refuses another secret, a changed field, a missing or cut signature', () => {
    const now = Date.now();
    const signer = new HopSigner(SECRET, 'a');
    expect(signer.verify(handMade('another-secret-entirely', 'a', 'app', 1, now))).toBeUndefined();
    const good = handMade(SECRET, 'a', 'app', 1, now);
    expect(signer.verify(good)).toBeDefined();
    expect(signer.verify(good.replace('name=app', 'name=other'))).toBeUndefined();
    expect(signer.verify(good.replace('hops=1', 'hops=2'))).toBeUndefined();
    expect(signer.verify(good.replace('node=a', 'node=b'))).toBeUndefined();
    expect(signer.verify(good.replace(`t=${now}`, `t=${now + 1}`))).toBeUndefined();
    expect(signer.verify(good.slice(0, good.indexOf(';sig=')))).toBeUndefined();
    expect(signer.verify(good.slice(0, -1))).toBeUndefined();
    expect(signer.verify(`${good};x=1`)).toBeUndefined();
    expect(signer.verify(good.replace('v1;', 'v2;'))).toBeUndefined();
  });

  it('refuses hop counts outside 1..MAX_HOPS even when signed', () => {
    const now = Date.now();
    const signer = new HopSigner(SECRET, 'a');
    expect(signer.verify(handMade(SECRET, 'a', 'app', 0, now))).toBeUndefined();
    expect(signer.verify(handMade(SECRET, 'a', 'app', 3, now))).toBeUndefined();
  });

  it('never throws on garbage', () => {
    const signer = new HopSigner(SECRET, 'a');
    const garbage: unknown[] = [
      '',
      'v1',
      ';;;;',
      'v1;node=;name=;hops=;t=;sig=',
      `v1;node=a;name=app;hops=1;t=${'9'.repeat(16)};sig=${'A'.repeat(43)}`,
      `v1;node=a;name=app;hops=1;t=1;sig=${'*'.repeat(43)}`,
      'x'.repeat(100_000),
      '\u0000\uffff',
      undefined,
      42,
      {},
    ];
    for (const g of garbage) expect(signer.verify(g as string)).toBeUndefined();
  });

  it('refuses a short secret, a bad node id, a bad name or hop count at construction or signing', () => {
    expect(() => new HopSigner('short', 'a')).toThrow(TypeError);
    expect(() => new HopSigner(SECRET, 'a;b')).toThrow(TypeError);
    expect(() => new HopSigner(SECRET, '')).toThrow(TypeError);
    const signer = new HopSigner(SECRET, 'a');
    expect(() => signer.sign('Bad;Name', 1)).toThrow(TypeError);
    expect(() => signer.sign('app', 0)).toThrow(TypeError);
    expect(() => signer.sign('app', 3)).toThrow(TypeError);
  });
});

describe('HopClient', () => {
  it('refuses node URLs that are not http: or https:, bad names, and use after close', () => {
    const client = new HopClient(new HopSigner(SECRET, 'a'));
    expect(() => client.channel({ id: 'b', url: new URL('ftp://x') }, 'app')).toThrow(TypeError);
    expect(() => client.channel({ id: 'b', url: new URL('http://x') }, 'No Name')).toThrow(TypeError);
    const ch = client.channel({ id: 'b', url: new URL('http://127.0.0.1:1') }, 'app');
    expect(ch.transport).toBe('node');
    expect(ch.available).toBe(true);
    expect(ch.remote).toBe('127.0.0.1:1');
    client.close();
    expect(ch.closed).toBe(true);
    expect(ch.available).toBe(false);
    expect(() => client.channel({ id: 'b', url: new URL('http://x') }, 'app')).toThrow(/closed/);
  });

  it('refuses timeouts that are not positive', () => {
    const signer = new HopSigner(SECRET, 'a');
    expect(() => new HopClient(signer, { connectTimeout: 0 })).toThrow(TypeError);
    expect(() => new HopClient(signer, { responseTimeout: Number.NaN })).toThrow(TypeError);
  });
});

describe('hop headers', () => {
  const info = { clientAddress: '203.0.113.9', clientPort: 5000, proto: 'http' };

  it("drops a visitor's own X-Ptth-Hop, whatever its case, before the app", () => {
    const out = forwardRequestHeaders(['Host', 'a.localhost', 'X-Ptth-Hop', 'v1;forged', 'x-ptth-HOP', 'x'], info);
    expect(out.map((h) => h.toLowerCase())).not.toContain('x-ptth-hop');
    expect(out.slice(0, 2)).toEqual(['Host', 'a.localhost']);
  });

  it("drops a visitor's own X-Ptth-Hop-Kind before the app", () => {
    const out = forwardRequestHeaders(['Host', 'a.localhost', 'X-Ptth-Hop-Kind', 'comet'], info);
    expect(out.map((h) => h.toLowerCase())).not.toContain('x-ptth-hop-kind');
  });

  it('a hop request keeps what its node built for the app, without credentials or hop-by-hop fields', () => {
    const raw = [
      'X-Ptth-Hop',
      'v1;...',
      'Host',
      'a.localhost',
      'X-Forwarded-For',
      '203.0.113.9',
      'Connection',
      'keep-alive, X-Private',
      'X-Private',
      'p',
      'Transfer-Encoding',
      'chunked',
      'Accept',
      '*/*',
    ];
    expect(hopRequestHeaders(raw, undefined)).toEqual([
      'Host',
      'a.localhost',
      'X-Forwarded-For',
      '203.0.113.9',
      'Accept',
      '*/*',
    ]);
    const up = hopRequestHeaders(['X-Ptth-Hop', 'v', 'Connection', 'Upgrade', 'Upgrade', 'websocket'], 'websocket');
    expect(up).toEqual(['Connection', 'Upgrade', 'Upgrade', 'websocket']);
  });

  it('knows the idempotent methods (RFC 9110 section 9.2.2)', () => {
    for (const m of ['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']) expect(idempotent(m)).toBe(true);
    for (const m of ['POST', 'PATCH', 'CONNECT', undefined]) expect(idempotent(m)).toBe(false);
  });
});
