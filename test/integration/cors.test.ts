import { describe, expect, it } from 'vitest';
import { fetchRaw, register, type HttpReply } from '../helpers/comet.js';
import { rawClaim, request, startApp, type TestGateway } from '../helpers/index.js';
import { useGateway } from '../helpers/fixture.js';

/*
 * Cross-origin reads of the gateway's own endpoints: only what the browser clients need (Comet,
 * /ptth.js, and DELETE of a private URL to release a name) answers CORS. Everything else (status
 * page, metrics, health, other private URL methods) sends no CORS headers, so a page on another
 * origin open in a browser on the gateway's machine cannot read names, app addresses or counts.
 * Gateway-made responses carry nosniff and refuse framing; responses relayed from apps are untouched.
 */

const ORIGIN = 'http://evil.example';
function gateway(): Promise<TestGateway> {
  return useGateway();
}

function claimBytes(name: string, port: number): string {
  return (
    `POST /?name=${name} HTTP/1.1\r\nHost: localhost:${port}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n` +
    'Content-Length: 0\r\n\r\n'
  );
}

function expectNoCors(r: HttpReply, what: string): void {
  const cors = Object.keys(r.headers).filter((h) => h.startsWith('access-control-'));
  expect(cors, what).toEqual([]);
}

function expectPageHeaders(r: HttpReply, what: string): void {
  expect(r.headers['x-content-type-options'], what).toBe('nosniff');
  expect(r.headers['x-frame-options'], what).toBe('DENY');
  expect(r.headers['content-security-policy'], what).toBe("frame-ancestors 'none'");
}

describe('CORS only where browsers need it', () => {
  it('the status page (HTML and JSON) sends no CORS headers, and nosniff and a frame-ancestors policy', async () => {
    const gw = await gateway();
    await rawClaim(gw.port, claimBytes('secret-app', gw.port));
    const html = await fetchRaw(`${gw.origin}/`, { headers: { origin: ORIGIN } });
    expect(html.status).toBe(200);
    expectNoCors(html, 'status page');
    expectPageHeaders(html, 'status page');
    const json = await fetchRaw(`${gw.origin}/`, { headers: { origin: ORIGIN, accept: 'application/json' } });
    expect(json.body.toString()).toContain('secret-app');
    expectNoCors(json, 'status JSON');
    expectPageHeaders(json, 'status JSON');
  });

  it('a preflight for the status page gets no CORS headers', async () => {
    const gw = await gateway();
    const pre = await fetchRaw(`${gw.origin}/`, {
      method: 'OPTIONS',
      headers: { origin: ORIGIN, 'access-control-request-method': 'GET', 'access-control-request-headers': 'accept' },
    });
    expectNoCors(pre, 'status page preflight');
    expect(pre.status).toBe(405);
  });

  it('/metrics, /healthz, /readyz and unknown paths send no CORS headers, with nosniff and no framing', async () => {
    const gw = await gateway();
    for (const path of ['/metrics', '/healthz', '/readyz', '/no-such-page']) {
      const r = await fetchRaw(`${gw.origin}${path}`, { headers: { origin: ORIGIN } });
      expectNoCors(r, path);
      expectPageHeaders(r, path);
    }
  });

  it('a private URL answers GET and PUT without CORS; a DELETE (what /ptth.js sends to release) has CORS', async () => {
    const gw = await gateway();
    const claim = await rawClaim(gw.port, claimBytes('priv', gw.port));
    const location = /\r\nLocation: (\S+)\r\n/.exec(claim.head)?.[1] ?? '';
    const url = location.replace(/^http:\/\/localhost:/, 'http://127.0.0.1:');
    const get = await fetchRaw(url, { headers: { origin: ORIGIN, accept: 'application/json' } });
    expect(get.status).toBe(200);
    expectNoCors(get, 'private GET');
    expectPageHeaders(get, 'private GET');
    const preflight = (method: string): Promise<HttpReply> =>
      fetchRaw(url, { method: 'OPTIONS', headers: { origin: ORIGIN, 'access-control-request-method': method } });
    const prePut = await preflight('PUT');
    expectNoCors(prePut, 'private PUT preflight');
    const preDelete = await preflight('DELETE');
    expect(preDelete.status).toBe(204);
    expect(preDelete.headers['access-control-allow-origin']).toBe(ORIGIN);
    expect(String(preDelete.headers['access-control-allow-methods'])).toMatch(/\bDELETE\b/);
    expect(String(preDelete.headers['access-control-allow-methods'])).not.toMatch(/\b(PUT|GET)\b/);
    const del = await fetchRaw(url, { method: 'DELETE', headers: { origin: ORIGIN } });
    expect(del.status).toBe(204);
    expect(del.headers['access-control-allow-origin']).toBe(ORIGIN);
    expect(gw.gateway.table.lookup('priv')).toBeUndefined();
    claim.socket.destroy();
  });

  it('the Comet endpoint answers CORS: preflight, registration, poll and its errors', async () => {
    const gw = await gateway();
    const pre = await fetchRaw(`${gw.origin}/reversehttp`, {
      method: 'OPTIONS',
      headers: {
        origin: ORIGIN,
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'authorization',
      },
    });
    expect(pre.status).toBe(204);
    expect(pre.headers['access-control-allow-origin']).toBe(ORIGIN);
    const reg = await fetchRaw(`${gw.origin}/reversehttp`, {
      method: 'POST',
      headers: { origin: ORIGIN },
      body: 'name=cometcors',
    });
    expect(reg.status).toBe(201);
    expect(reg.headers['access-control-allow-origin']).toBe(ORIGIN);
    expect(String(reg.headers['access-control-expose-headers']).split(/\s*,\s*/)).toEqual(
      expect.arrayContaining(['Link', 'Location', 'Requesting-Client', 'X-Ptth-Error']),
    );
    expect(reg.headers['x-content-type-options']).toBe('nosniff');
    const unknown = await fetchRaw(`${gw.origin}/reversehttp/nope/0`, { headers: { origin: ORIGIN } });
    expect(unknown.status).toBe(404);
    expect(unknown.headers['access-control-allow-origin']).toBe(ORIGIN);
  });

  it('/ptth.js answers CORS (module scripts are fetched in cors mode)', async () => {
    const gw = await gateway();
    const js = await fetchRaw(`${gw.origin}/ptth.js`, { headers: { origin: ORIGIN } });
    expect(js.status).toBe(200);
    expect(js.headers['access-control-allow-origin']).toBe(ORIGIN);
    expect(js.headers['x-content-type-options']).toBe('nosniff');
  });

  it('a rate-limited Comet registration is still readable cross-origin (the library reads its 429)', async () => {
    const g = await useGateway({ claimRate: '1/m', limitLoopback: true });
    const first = await register(g.origin, { name: 'rl-a' });
    expect(first.status).toBe(201);
    const second = await fetchRaw(`${g.origin}/reversehttp`, {
      method: 'POST',
      headers: { origin: ORIGIN },
      body: 'name=rl-b',
    });
    expect(second.status).toBe(429);
    expect(second.headers['access-control-allow-origin']).toBe(ORIGIN);
  });

  it('responses relayed from an app get none of the gateway page headers', async () => {
    const gw = await gateway();
    const tunnel = await startApp(gw.port, (_req, res) => res.end('from the app'), { name: 'plain' });
    try {
      const r = await request(gw.port, { host: gw.host('plain'), headers: { origin: ORIGIN } });
      expect(r.body).toBe('from the app');
      const pageHeaders = ['x-content-type-options', 'x-frame-options', 'content-security-policy'];
      for (const h of [...pageHeaders, 'access-control-allow-origin']) expect(r.headers[h], h).toBeUndefined();
    } finally {
      await tunnel.close();
    }
  });

  it('gateway-made errors for visitors carry nosniff', async () => {
    const gw = await gateway();
    const r = await request(gw.port, { host: gw.host('nobody-here') });
    expect(r.status).toBe(404);
    expect(r.headers['x-content-type-options']).toBe('nosniff');
  });
});
