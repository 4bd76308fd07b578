/**
 * Who may claim what (README "Access keys"): keys, their name patterns and limits, reserved names,
 * and reloads, on a real gateway over every claim transport: native (raw sockets, exact bytes),
 * Comet (form POSTs) and the WebSocket channel; then the Node client, the browser library and
 * the CLI with keys.
 */
import type { Socket } from 'node:net';
import * as http from 'node:http';
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { ClaimError, listen } from '../../src/client/node.js';
import type { GatewayOptions } from '../../src/gateway/server.js';
import { AccessConfigError, hashKey, type AccessConfig } from '../../src/table/access.js';
import {
  closed,
  headEnd,
  rawConnect,
  readUntil,
  request,
  startApp,
  startGateway,
  until,
  type TestGateway,
} from '../helpers/index.js';
import { cleanup, track, useGateway } from '../helpers/fixture.js';
import { fetchRaw, CometApp, register } from '../helpers/comet.js';
import { spawnCli, type Spawned } from '../helpers/spawn.js';
import { loadLibrary, RawWsApp, wsRefusal } from '../helpers/wsapp.js';

const KEY_ALICE = 'ptth_alice-0123456789abcdefghijklmnop';
const KEY_OPS = 'ptth_ops-0123456789abcdefghijklmnopqrs';
const KEY_EXACT = 'ptth_exact-0123456789abcdefghijklmnopq';

/** alice: her own name and team-* (2 names, 3 channels); ops: anything; exact: one name, no prefix. */
const KEYS: AccessConfig = {
  keys: [
    { id: 'alice', sha256: hashKey(KEY_ALICE), names: ['alice', 'team-*'], maxNames: 2, maxChannels: 3 },
    { id: 'ops', sha256: hashKey(KEY_OPS), names: ['*'] },
    { id: 'exact', sha256: hashKey(KEY_EXACT), names: ['only-me'] },
  ],
  reserved: ['www', 'admin-*'],
};

function start(options: GatewayOptions = { access: KEYS }): Promise<TestGateway> {
  return useGateway(options);
}

/** A native claim written byte for byte; `connection: false` takes node's request path instead. */
async function nativeClaim(
  port: number,
  query: string,
  extra: string[] = [],
  opts: { connection?: boolean; host?: string } = {},
): Promise<{ socket: Socket; head: string; rest: string }> {
  const socket = await rawConnect(port);
  socket.on('error', () => {});
  track(socket);
  const lines = [
    `POST /${query} HTTP/1.1`,
    `Host: ${opts.host ?? `localhost:${port}`}`,
    'Upgrade: PTTH/1.0',
    ...(opts.connection === false ? [] : ['Connection: Upgrade']),
    ...extra,
    'Content-Length: 0',
  ];
  socket.write(`${lines.join('\r\n')}\r\n\r\n`);
  const got = (await readUntil(socket, headEnd, 2_000)).toString('latin1');
  const end = got.indexOf('\r\n\r\n');
  return { socket, head: end === -1 ? got : got.slice(0, end + 4), rest: end === -1 ? '' : got.slice(end + 4) };
}

const bearer = (key: string): string => `Authorization: Bearer ${key}`;

function expectRefusal(head: string, status: number, code: string): void {
  expect(head).toMatch(new RegExp(`^HTTP/1\\.1 ${status} `));
  expect(head).toContain(`X-Ptth-Error: ${code}\r\n`);
  expect(head).toMatch(/\r\nConnection: close\r\n/i);
}

/** A Comet registration POST with form fields (and headers). */
function comet(origin: string, form: Record<string, string>, headers: http.OutgoingHttpHeaders = {}) {
  return fetchRaw(`${origin}/reversehttp`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: new URLSearchParams(form).toString(),
  });
}

async function wsApp(port: number, query: Record<string, string>): Promise<RawWsApp> {
  const a = await RawWsApp.connect(port, query);
  cleanup(() => a.close());
  return a;
}

/** A WebSocket channel claim with headers (ws can set them; browsers cannot). */
function wsWithHeaders(
  port: number,
  query: Record<string, string>,
  headers: Record<string, string>,
): Promise<number | 'open'> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/?${new URLSearchParams(query).toString()}`, 'ptth.v1', {
      headers,
    });
    ws.once('open', () => {
      resolve('open');
      ws.close();
    });
    ws.once('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? 0);
      res.resume();
      ws.terminate();
    });
    ws.once('error', () => undefined);
  });
}

describe('native claims with keys', () => {
  it('401 without a key, with a non-Bearer Authorization, and with an unknown key', async () => {
    const g = await start();
    expectRefusal((await nativeClaim(g.port, '?name=alice')).head, 401, 'PTTH_ERR_KEY_REQUIRED');
    expectRefusal(
      (await nativeClaim(g.port, '?name=alice', ['Authorization: Basic YTpi'])).head,
      401,
      'PTTH_ERR_KEY_REQUIRED',
    );
    const invalid = await nativeClaim(g.port, '?name=alice', [bearer(`${KEY_ALICE}x`)]);
    expectRefusal(invalid.head, 401, 'PTTH_ERR_KEY_INVALID');
    // RFC 9110 section 11.6.1: a 401 says which authentication scheme would work.
    expect(invalid.head).toContain('\r\nWWW-Authenticate: Bearer realm="ptth-proxy"\r\n');
    expect(await closed(invalid.socket)).toBe(true);
    expect(g.gateway.table.lookup('alice')).toBeUndefined();
  });

  it('401 on the path without Connection: Upgrade too', async () => {
    const g = await start();
    const { head } = await nativeClaim(g.port, '?name=alice', [], { connection: false });
    expectRefusal(head, 401, 'PTTH_ERR_KEY_REQUIRED');
    expect(head).toContain('\r\nWWW-Authenticate: Bearer realm="ptth-proxy"\r\n');
    const ok = await nativeClaim(g.port, '?name=alice&token=t', [bearer(KEY_ALICE)], { connection: false });
    expect(ok.head).toMatch(/^HTTP\/1\.1 101 /);
  });

  it('101 for a name the key may claim; the registration remembers the key', async () => {
    const g = await start();
    const claims: unknown[] = [];
    g.gateway.on('claim', (c) => claims.push(c));
    const { head } = await nativeClaim(g.port, '?name=team-red&token=t', [bearer(KEY_ALICE)]);
    expect(head).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\nUpgrade: PTTH\/1\.0\r\nConnection: Upgrade\r\n/);
    expect(head).toContain(`Link: <http://team-red.localhost:${g.port}/>; rel="related"`);
    expect(g.gateway.table.lookup('team-red')?.keyId).toBe('alice');
    expect(claims[0]).toMatchObject({ name: 'team-red', transport: 'http1', key: 'alice' });
    // The scheme is case-insensitive (RFC 9110 section 11.1).
    expect((await nativeClaim(g.port, '?name=alice&token=t', [`Authorization: bearer ${KEY_ALICE}`])).head).toMatch(
      /^HTTP\/1\.1 101 /,
    );
  });

  it("403 for a name outside the key's patterns, named in the query or the Host", async () => {
    const g = await start();
    const q = await nativeClaim(g.port, '?name=bob', [bearer(KEY_ALICE), 'Accept: application/json']);
    expectRefusal(q.head, 403, 'PTTH_ERR_KEY_FORBIDDEN');
    const body = q.rest.includes('}\n')
      ? q.rest
      : q.rest + (await readUntil(q.socket, (b) => b.includes('}\n'), 1_000)).toString();
    expect(JSON.parse(body)).toEqual({
      error: {
        code: 'PTTH_ERR_KEY_FORBIDDEN',
        status: 403,
        message: 'The access key "alice" may not claim "bob": it may claim alice, team-*.',
      },
    });
    expectRefusal(
      (await nativeClaim(g.port, '', [bearer(KEY_ALICE)], { host: `bob.localhost:${g.port}` })).head,
      403,
      'PTTH_ERR_KEY_FORBIDDEN',
    );
    expect(g.gateway.table.list()).toHaveLength(0);
  });

  it('403 for reserved names, even for a key that may claim anything', async () => {
    const g = await start();
    expectRefusal((await nativeClaim(g.port, '?name=www', [bearer(KEY_OPS)])).head, 403, 'PTTH_ERR_NAME_RESERVED');
    expectRefusal(
      (await nativeClaim(g.port, '?name=Admin-Panel', [bearer(KEY_OPS)])).head,
      403,
      'PTTH_ERR_NAME_RESERVED',
    );
    expect((await nativeClaim(g.port, '?name=admin&token=t', [bearer(KEY_OPS)])).head).toMatch(/^HTTP\/1\.1 101 /);
  });

  it('a claim without a name gets a random one under "*", one under the key\'s prefix, or 403 for exact names only', async () => {
    const g = await start();
    const any = await nativeClaim(g.port, '?token=t', [bearer(KEY_OPS)]);
    expect(any.head).toMatch(/Link: <http:\/\/[a-z][a-z0-9]{11}\.localhost:\d+\/>; rel="related"/);
    const prefixed = await nativeClaim(g.port, '?token=t', [bearer(KEY_ALICE)]);
    const m = /Link: <http:\/\/(team-[a-z][a-z0-9]{11})\.localhost:\d+\/>/.exec(prefixed.head);
    expect(m).not.toBeNull();
    expect(g.gateway.table.lookup(m?.[1] as string)?.keyId).toBe('alice');
    const exact = await nativeClaim(g.port, '?token=t', [bearer(KEY_EXACT)]);
    expectRefusal(exact.head, 403, 'PTTH_ERR_KEY_FORBIDDEN');
    expect((await nativeClaim(g.port, '?name=only-me&token=t', [bearer(KEY_EXACT)])).head).toMatch(/^HTTP\/1\.1 101 /);
  });

  it('a key whose prefix is entirely reserved gets 403 for a claim without a name, and the gateway keeps serving', async () => {
    const key = 'ptth_review-0123456789abcdefghijklmnop';
    const g = await start({
      access: { keys: [{ id: 'team', sha256: hashKey(key), names: ['team-*'] }], reserved: ['team*'] },
    });
    const { head } = await nativeClaim(g.port, '', [bearer(key)]);
    expect(head).toMatch(/^HTTP\/1\.1 403 /);
    expect(head).toContain('X-Ptth-Error: PTTH_ERR_NAME_RESERVED');
    expect((await request(g.port, { path: '/healthz', host: `localhost:${g.port}` })).status).toBe(200);
  });

  it('reserved names apply without keys too; the gateway is otherwise open', async () => {
    const g = await start({ reserved: ['www'] });
    expectRefusal((await nativeClaim(g.port, '?name=www')).head, 403, 'PTTH_ERR_NAME_RESERVED');
    expectRefusal(
      (await nativeClaim(g.port, '', [], { host: `www.localhost:${g.port}` })).head,
      403,
      'PTTH_ERR_NAME_RESERVED',
    );
    expect((await nativeClaim(g.port, '?name=foo')).head).toMatch(/^HTTP\/1\.1 101 /);
    // A key sent to an open gateway is not needed and not refused.
    expect((await nativeClaim(g.port, '?name=bar', [bearer('anything')])).head).toMatch(/^HTTP\/1\.1 101 /);
    expect(g.gateway.table.lookup('bar')?.keyId).toBeUndefined();
  });
});

describe('per-key limits', () => {
  it('429 past maxNames, with Retry-After; a released name makes room', async () => {
    const g = await start();
    expect((await nativeClaim(g.port, '?name=alice&token=t', [bearer(KEY_ALICE)])).head).toMatch(/^HTTP\/1\.1 101 /);
    expect((await nativeClaim(g.port, '?name=team-a&token=t', [bearer(KEY_ALICE)])).head).toMatch(/^HTTP\/1\.1 101 /);
    const third = await nativeClaim(g.port, '?name=team-b&token=t', [bearer(KEY_ALICE)]);
    expectRefusal(third.head, 429, 'PTTH_ERR_KEY_NAMES');
    expect(third.head).toContain('Retry-After: ');
    expect(g.gateway.table.lookup('team-b')).toBeUndefined();
    // Another channel for a name it holds is not another name.
    expect((await nativeClaim(g.port, '?name=team-a&token=t', [bearer(KEY_ALICE)])).head).toMatch(/^HTTP\/1\.1 101 /);
    const reg = g.gateway.table.lookup('team-a');
    const del = await fetchRaw(`${g.origin}/_ptth/${reg?.privateId ?? ''}`, { method: 'DELETE' });
    expect(del.status).toBeLessThan(300);
    expect((await nativeClaim(g.port, '?name=team-b&token=t', [bearer(KEY_ALICE)])).head).toMatch(/^HTTP\/1\.1 101 /);
  });

  it("429 past maxChannels across the key's names and transports; a refused new name is not kept", async () => {
    const g = await start();
    expect((await nativeClaim(g.port, '?name=alice&token=t', [bearer(KEY_ALICE)])).head).toMatch(/^HTTP\/1\.1 101 /);
    const second = await nativeClaim(g.port, '?name=alice&token=t', [bearer(KEY_ALICE)]);
    expect(second.head).toMatch(/^HTTP\/1\.1 101 /);
    // The name exists: a Comet registration of it is a refresh (204) that adds a Comet channel.
    const c = await comet(g.origin, { name: 'alice', token: 't', key: KEY_ALICE });
    expect(c.status).toBe(204);
    await until(() => g.gateway.table.heldBy('alice').channels === 3);
    expectRefusal(
      (await nativeClaim(g.port, '?name=alice&token=t', [bearer(KEY_ALICE)])).head,
      429,
      'PTTH_ERR_KEY_CHANNELS',
    );
    expectRefusal(
      (await nativeClaim(g.port, '?name=team-x&token=t', [bearer(KEY_ALICE)])).head,
      429,
      'PTTH_ERR_KEY_CHANNELS',
    );
    expect(g.gateway.table.lookup('team-x')).toBeUndefined();
    const cometRefused = await comet(g.origin, { name: 'team-y', token: 't', key: KEY_ALICE });
    expect(cometRefused.status).toBe(429);
    expect(cometRefused.headers['x-ptth-error']).toBe('PTTH_ERR_KEY_CHANNELS');
    expect(g.gateway.table.lookup('team-y')).toBeUndefined();
    expect(await wsRefusal(g.port, { name: 'alice', token: 't', key: KEY_ALICE })).toEqual({
      status: 429,
      code: 'PTTH_ERR_KEY_CHANNELS',
    });
    // Another key is not affected, and a closed channel makes room.
    expect((await nativeClaim(g.port, '?name=ops&token=t', [bearer(KEY_OPS)])).head).toMatch(/^HTTP\/1\.1 101 /);
    second.socket.destroy();
    await until(() => g.gateway.table.heldBy('alice').channels === 2);
    expect((await nativeClaim(g.port, '?name=team-x&token=t', [bearer(KEY_ALICE)])).head).toMatch(/^HTTP\/1\.1 101 /);
  });

  it('the per-name channel limit still applies under a key', async () => {
    const g = await start({ access: KEYS, maxChannels: 1 });
    expect((await nativeClaim(g.port, '?name=ops&token=t', [bearer(KEY_OPS)])).head).toMatch(/^HTTP\/1\.1 101 /);
    expectRefusal(
      (await nativeClaim(g.port, '?name=ops&token=t', [bearer(KEY_OPS)])).head,
      429,
      'PTTH_ERR_TOO_MANY_CHANNELS',
    );
  });
});

describe('Comet registrations with keys', () => {
  it('401 without a key or with an unknown one; the key as a form field or a header', async () => {
    const g = await start();
    const none = await comet(g.origin, { name: 'alice', token: 't' });
    expect(none.status).toBe(401);
    expect(none.headers['x-ptth-error']).toBe('PTTH_ERR_KEY_REQUIRED');
    const bad = await comet(g.origin, { name: 'alice', token: 't', key: 'ptth_nope' });
    expect([bad.status, bad.headers['x-ptth-error']]).toEqual([401, 'PTTH_ERR_KEY_INVALID']);
    const form = await comet(g.origin, { name: 'alice', token: 't', key: KEY_ALICE });
    expect(form.status).toBe(201);
    const header = await comet(g.origin, { name: 'team-a', token: 't' }, { authorization: `Bearer ${KEY_ALICE}` });
    expect(header.status).toBe(201);
    expect(g.gateway.table.lookup('team-a')?.keyId).toBe('alice');
    // The key in the query string works too (the form and the query are one parameter set).
    const query = await fetchRaw(`${g.origin}/reversehttp?key=${KEY_OPS}`, {
      method: 'POST',
      body: 'name=ops&token=t',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    expect(query.status).toBe(201);
  });

  it('403 for a name the key may not claim and for reserved names', async () => {
    const g = await start();
    const forbidden = await comet(g.origin, { name: 'bob', token: 't', key: KEY_ALICE });
    expect([forbidden.status, forbidden.headers['x-ptth-error']]).toEqual([403, 'PTTH_ERR_KEY_FORBIDDEN']);
    expect(forbidden.body.toString()).toContain('may not claim "bob"');
    const reserved = await comet(g.origin, { name: 'www', token: 't', key: KEY_OPS });
    expect([reserved.status, reserved.headers['x-ptth-error']]).toEqual([403, 'PTTH_ERR_NAME_RESERVED']);
    // Three at once against maxNames 2: which one loses is the gateway's to pick, not the order sent.
    const tried = ['alice', 'team-a', 'team-b'];
    const names = await Promise.all(tried.map((name) => comet(g.origin, { name, token: 't', key: KEY_ALICE })));
    expect(names.map((r) => r.status).sort()).toEqual([201, 201, 429]);
    const lost = names.findIndex((r) => r.status === 429);
    expect(names[lost]?.headers['x-ptth-error']).toBe('PTTH_ERR_KEY_NAMES');
    const won = tried.filter((_, i) => i !== lost);
    expect(won.map((name) => g.gateway.table.lookup(name)?.keyId)).toEqual(['alice', 'alice']);
    expect(g.gateway.table.lookup(tried[lost] as string)).toBeUndefined();
  });

  it('a Comet app with a key serves visitors; polls need no key (the request URL is the capability)', async () => {
    const g = await start();
    const app = await CometApp.start(g.origin, { name: 'team-comet', token: 't', key: KEY_ALICE }, () => ({
      status: 200,
      body: 'comet ok',
    }));
    cleanup(() => app.stop());
    const r = await request(g.port, { host: g.host('team-comet') });
    expect([r.status, r.body]).toEqual([200, 'comet ok']);
  });
});

describe('WebSocket channel claims with keys', () => {
  it('401 without a key or with an unknown one; 403 for other names and reserved ones', async () => {
    const g = await start();
    expect(await wsRefusal(g.port, { name: 'alice', token: 't' })).toEqual({
      status: 401,
      code: 'PTTH_ERR_KEY_REQUIRED',
    });
    expect(await wsRefusal(g.port, { name: 'alice', token: 't', key: 'ptth_nope' })).toEqual({
      status: 401,
      code: 'PTTH_ERR_KEY_INVALID',
    });
    expect(await wsRefusal(g.port, { name: 'bob', token: 't', key: KEY_ALICE })).toEqual({
      status: 403,
      code: 'PTTH_ERR_KEY_FORBIDDEN',
    });
    expect(await wsRefusal(g.port, { name: 'admin-x', token: 't', key: KEY_OPS })).toEqual({
      status: 403,
      code: 'PTTH_ERR_NAME_RESERVED',
    });
    expect(g.gateway.table.list()).toHaveLength(0);
  });

  it('accepts the key as a query parameter or an Authorization header, and serves visitors', async () => {
    const g = await start();
    const a = await wsApp(g.port, { name: 'alice', token: 't', key: KEY_ALICE });
    expect(a.hello).toMatchObject({ name: 'alice' });
    expect(g.gateway.table.lookup('alice')?.keyId).toBe('alice');
    const visit = request(g.port, { host: g.host('alice') });
    const req = await a.control('request');
    a.respond(req.id as number, 200, 'over ws');
    expect((await visit).body).toBe('over ws');
    expect(await wsWithHeaders(g.port, { name: 'team-h', token: 't' }, { authorization: `Bearer ${KEY_ALICE}` })).toBe(
      'open',
    );
    expect(await wsWithHeaders(g.port, { name: 'ops', token: 't' }, { authorization: 'Bearer ptth_wrong' })).toBe(401);
  });

  it('429 past maxNames', async () => {
    const g = await start();
    await wsApp(g.port, { name: 'alice', token: 't', key: KEY_ALICE });
    await wsApp(g.port, { name: 'team-1', token: 't', key: KEY_ALICE });
    expect(await wsRefusal(g.port, { name: 'team-2', token: 't', key: KEY_ALICE })).toEqual({
      status: 429,
      code: 'PTTH_ERR_KEY_NAMES',
    });
  });
});

describe('reloading the access configuration', () => {
  it('new claims use the new keys at once; existing registrations keep serving', async () => {
    const g = await start();
    const app = await startApp(g.port, (_req, res) => res.end('still here'), {
      name: 'alice',
      key: KEY_ALICE,
      connections: 1,
      http1: true,
    });
    cleanup(() => app.close({ graceMs: 100 }));
    // alice's key is revoked; ops stays; www is no longer reserved.
    g.gateway.setAccess({ keys: [{ id: 'ops', sha256: hashKey(KEY_OPS), names: ['*'] }] });
    expectRefusal(
      (await nativeClaim(g.port, '?name=team-z&token=t', [bearer(KEY_ALICE)])).head,
      401,
      'PTTH_ERR_KEY_INVALID',
    );
    expect((await comet(g.origin, { name: 'team-z', token: 't', key: KEY_ALICE })).status).toBe(401);
    expect(await wsRefusal(g.port, { name: 'team-z', token: 't', key: KEY_ALICE })).toEqual({
      status: 401,
      code: 'PTTH_ERR_KEY_INVALID',
    });
    expect((await nativeClaim(g.port, '?name=www&token=t', [bearer(KEY_OPS)])).head).toMatch(/^HTTP\/1\.1 101 /);
    const r = await request(g.port, { host: g.host('alice') });
    expect([r.status, r.body]).toEqual([200, 'still here']);
    expect(g.gateway.table.lookup('alice')?.channels.length).toBe(1);
    // Reloading to no keys opens the gateway.
    g.gateway.setAccess(undefined);
    expect((await nativeClaim(g.port, '?name=anyone&token=t')).head).toMatch(/^HTTP\/1\.1 101 /);
  });

  it('a bad configuration is refused with a clear error and the old one stays in force', async () => {
    const g = await start();
    const bad = { keys: [{ id: 'ops', sha256: hashKey(KEY_OPS), names: ['*', 'no good'] }] };
    expect(() => g.gateway.setAccess(bad as AccessConfig, 'keys.json')).toThrow(AccessConfigError);
    expect(() => g.gateway.setAccess(bad as AccessConfig, 'keys.json')).toThrow(
      /^keys\.json: keys\[0\] \(id "ops"\): names\[1\]: "no good" is not a valid/,
    );
    expect((await nativeClaim(g.port, '?name=alice&token=t', [bearer(KEY_ALICE)])).head).toMatch(/^HTTP\/1\.1 101 /);
    expectRefusal(
      (await nativeClaim(g.port, '?name=www&token=t', [bearer(KEY_OPS)])).head,
      403,
      'PTTH_ERR_NAME_RESERVED',
    );
    expect(g.gateway.access.config).toEqual(KEYS);
  });

  it('a bad configuration at construction fails createGateway', async () => {
    await expect(startGateway({ access: { keys: [{ id: 'x', sha256: 'short', names: ['*'] }] } })).rejects.toThrow(
      /keys\[0\] \(id "x"\): sha256 must be 64 hex digits/,
    );
    await expect(startGateway({ reserved: ['not valid'] })).rejects.toThrow(AccessConfigError);
  });

  it('a Comet session whose channel went idle cannot open a new one by polling once its key is revoked', async () => {
    const key = 'ptth_comet-0123456789abcdefghijklmnopq';
    const g = await start({
      access: { keys: [{ id: 'c', sha256: hashKey(key), names: ['*'] }] },
      pollTimeout: 100,
      cometIdleTimeout: 150,
    });
    const reg = await register(g.origin, { name: 'revoked', token: 't', key });
    expect(reg.status).toBe(201);
    const first = reg.links.first as string;
    expect((await fetchRaw(first)).status).toBe(204);
    const registration = g.gateway.table.lookup('revoked');
    await until(() => registration?.channels.length === 0, 3_000, 'the idle Comet channel closed');
    g.gateway.setAccess({ keys: [] });
    const poll = await fetchRaw(first, { headers: { accept: 'application/json' } });
    expect(poll.status).toBe(401);
    expect(poll.headers['x-ptth-error']).toBe('PTTH_ERR_KEY_INVALID');
    expect(registration?.channels).toHaveLength(0);
  });
});

describe('clients with keys', () => {
  it('the Node client sends its key (HTTP/2 and HTTP/1.1) and serves visitors', async () => {
    const g = await start();
    const h2 = await startApp(g.port, (_req, res) => res.end('h2 app'), { name: 'alice', key: KEY_ALICE });
    cleanup(() => h2.close({ graceMs: 100 }));
    expect(h2.protocol).toBe('h2');
    const h1 = await startApp(g.port, (_req, res) => res.end('h1 app'), {
      name: 'team-one',
      key: KEY_ALICE,
      http1: true,
    });
    cleanup(() => h1.close({ graceMs: 100 }));
    expect((await request(g.port, { host: g.host('alice') })).body).toBe('h2 app');
    expect((await request(g.port, { host: g.host('team-one') })).body).toBe('h1 app');
    // Without a name, the key's prefix pattern names it.
    const unnamed = await startApp(g.port, (_req, res) => res.end('x'), { key: KEY_OPS });
    cleanup(() => unnamed.close({ graceMs: 100 }));
    expect(unnamed.url).toMatch(/^http:\/\/[a-z][a-z0-9]{11}\.localhost:\d+\/$/);
  });

  it('the Node client stops with a ClaimError on 401 and 403', async () => {
    const g = await start();
    for (const [options, status, code] of [
      [{ name: 'alice' }, 401, 'PTTH_ERR_KEY_REQUIRED'],
      [{ name: 'alice', key: 'ptth_unknown' }, 401, 'PTTH_ERR_KEY_INVALID'],
      [{ name: 'bob', key: KEY_ALICE }, 403, 'PTTH_ERR_KEY_FORBIDDEN'],
      [{ name: 'www', key: KEY_OPS }, 403, 'PTTH_ERR_NAME_RESERVED'],
    ] as const) {
      const err = await startApp(g.port, (_req, res) => res.end(), options).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ClaimError);
      expect([(err as ClaimError).status, (err as ClaimError).code]).toEqual([status, code]);
    }
    expect(() => listen((_req, res) => res.end(), { gateway: g.origin, key: 'has space' })).toThrow(
      /key must be 1 to 1024 visible ASCII/,
    );
  });

  // The library's code run in Node, with ws as its WebSocket; test/browser/browser.test.ts runs the
  // same cases in Chromium.
  it("the browser library's code, run in Node with ws, passes its key over the WebSocket channel and over Comet", async () => {
    const g = await start();
    const serve = await loadLibrary();
    for (const transport of ['websocket', 'comet'] as const) {
      const s = serve(
        { gateway: g.origin, name: `team-${transport}`, key: KEY_ALICE, transport },
        () => new Response(`lib ${transport}`),
      );
      cleanup(() => s.close());
      await s.url;
      expect(s.transport).toBe(transport);
      expect((await request(g.port, { host: g.host(`team-${transport}`) })).body).toBe(`lib ${transport}`);
    }
    // Comet reports the refusal (a browser WebSocket cannot see the status of a refused handshake).
    const refused = serve(
      { gateway: g.origin, name: 'bob', key: KEY_ALICE, transport: 'comet' },
      () => new Response(''),
    );
    cleanup(() => refused.close());
    await expect(refused.url).rejects.toMatchObject({ status: 403, code: 'PTTH_ERR_KEY_FORBIDDEN' });
  });
});

describe('the CLI', () => {
  it('`ptth-proxy key` prints a key and an entry that a gateway accepts', async () => {
    const p = spawnCli(['key', '--id', 'ci', '--names', 'ci-*, docs', '--max-names', '2', '--max-channels', '5']);
    cleanup(() => p.kill('SIGKILL'));
    expect(await p.exited()).toBe(0);
    const out = p.output();
    const key = /^ {2}(ptth_[A-Za-z0-9_-]{32})$/m.exec(out)?.[1];
    const json = /^ {2}(\{.*\})$/m.exec(out)?.[1];
    expect(key).toBeDefined();
    const entry = JSON.parse(json as string) as Record<string, unknown>;
    expect(entry).toEqual({
      id: 'ci',
      sha256: hashKey(key as string),
      names: ['ci-*', 'docs'],
      maxNames: 2,
      maxChannels: 5,
    });
    expect(out).not.toContain('undefined');
    const g = await start({ access: { keys: [entry as never] } });
    expect((await nativeClaim(g.port, '?name=ci-build&token=t', [bearer(key as string)])).head).toMatch(
      /^HTTP\/1\.1 101 /,
    );
    expectRefusal(
      (await nativeClaim(g.port, '?name=other&token=t', [bearer(key as string)])).head,
      403,
      'PTTH_ERR_KEY_FORBIDDEN',
    );
  });

  it('`ptth-proxy key` refuses bad patterns and ids with exit code 2', async () => {
    const p = spawnCli(['key', '--names', 'a.b']);
    cleanup(() => p.kill('SIGKILL'));
    expect(await p.exited()).toBe(2);
    expect(p.output()).toMatch(
      /ptth-proxy key: new key: keys\[0\] \(id "key-[0-9a-f]{8}"\): names\[0\]: "a\.b" is not a valid name or pattern/,
    );
    const q = spawnCli(['key', '--id', 'bad id']);
    cleanup(() => q.kill('SIGKILL'));
    expect(await q.exited()).toBe(2);
    expect(q.output()).toMatch(/id must be/);
  });

  it('`connect --key` (and PTTH_KEY) claims with the key; a refused key exits 3', async () => {
    const g = await start();
    const backend = http.createServer((_req, res) => res.end('from backend'));
    cleanup(() => backend.close());
    await new Promise<void>((r) => backend.listen(0, '127.0.0.1', r));
    const port = (backend.address() as { port: number }).port;
    // One channel: a spliced pool (spares beside the used ones) would take all three of alice's maxChannels.
    const p = spawnCli([
      'connect',
      String(port),
      '--gateway',
      g.origin,
      '--name',
      'alice',
      '--key',
      KEY_ALICE,
      '--connections',
      '1',
    ]);
    cleanup(() => p.kill('SIGKILL'));
    await p.waitFor(/Forwarding http:\/\/alice\.localhost/);
    expect((await request(g.port, { host: g.host('alice') })).body).toBe('from backend');
    // The key from the environment (the child inherits it at spawn time).
    process.env['PTTH_KEY'] = KEY_ALICE;
    let q: Spawned;
    try {
      q = spawnCli(['connect', String(port), '--gateway', g.origin, '--name', 'team-env']);
    } finally {
      delete process.env['PTTH_KEY'];
    }
    cleanup(() => q.kill('SIGKILL'));
    await q.waitFor(/Forwarding http:\/\/team-env\.localhost/);
    const bad = spawnCli(['connect', String(port), '--gateway', g.origin, '--name', 'bob', '--key', KEY_ALICE]);
    cleanup(() => bad.kill('SIGKILL'));
    expect(await bad.exited()).toBe(3);
    expect(bad.output()).toMatch(/403.*may not claim "bob"/);
    // --help names the variable but never prints a key.
    process.env['PTTH_KEY'] = KEY_ALICE;
    let help: Spawned;
    try {
      help = spawnCli(['connect', '--help']);
    } finally {
      delete process.env['PTTH_KEY'];
    }
    cleanup(() => help.kill('SIGKILL'));
    await help.exited();
    expect(help.output()).toContain('PTTH_KEY');
    expect(help.output()).not.toContain(KEY_ALICE);
  });
});
