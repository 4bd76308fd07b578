import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { hashKey } from '../../src/table/access.js';
import { replay, replayHeaders, startInspector } from '../../src/client/inspect.js';
import { claimMessage } from '../../src/client/messages.js';
import { ClaimError, listen } from '../../src/client/node.js';
import { createLocalProxy, parseTarget } from '../../src/client/proxy.js';
import { formatLine, SseParser, watchEvents } from '../../src/client/requestlog.js';
import { startEventsFront, type EventsFront } from '../helpers/front.js';
import { request, until, type TestGateway } from '../helpers/index.js';
import { cleanup, useGateway } from '../helpers/fixture.js';
import { spawnCli, type Spawned } from '../helpers/spawn.js';

/*
 * What `ptth-proxy connect` prints: the built CLI as a child, against a real gateway. Request
 * lines come from the gateway's per-name event stream; a pass-through front (helpers/front.ts)
 * lets a test cut that stream as a network hiccup would.
 */

// The CLI processes are killed here, before the fixture's hooks close what they connected to.
const procs: Spawned[] = [];
afterEach(() => {
  for (const p of procs.splice(0)) p.kill('SIGKILL');
});

function cli(args: string[], env?: NodeJS.ProcessEnv): Spawned {
  const p = spawnCli(args, env);
  procs.push(p);
  return p;
}

function gateway(options: Parameters<typeof useGateway>[0] = {}): Promise<TestGateway> {
  return useGateway(options);
}

/** A gateway behind the events front: connect and visitors use the front's port. */
async function fronted(): Promise<{ port: number; front: EventsFront; g: TestGateway }> {
  const g = await gateway();
  const front = await startEventsFront(g.port);
  cleanup(() => front.close());
  return { port: front.port, front, g };
}

async function backend(handler: http.RequestListener, port = 0): Promise<{ server: http.Server; port: number }> {
  const s = http.createServer(handler);
  cleanup(() => {
    s.closeAllConnections();
    s.close();
  });
  await new Promise<void>((resolve, reject) => {
    s.once('error', reject);
    s.listen(port, '127.0.0.1', () => resolve());
  });
  return { server: s, port: (s.address() as AddressInfo).port };
}

describe('connect: refusals and arguments', () => {
  it('a name held under another token: the status once, that the name is in use, and what --token does', async () => {
    const g = await gateway();
    const { port: local } = await backend((_q, r) => r.end('x'));
    const a = cli(['connect', String(local), '--gateway', g.origin, '--name', 'mine', '--token', 'a']);
    await a.waitFor(/Forwarding/);
    const b = cli(['connect', String(local), '--gateway', g.origin, '--name', 'mine', '--token', 'b']);
    expect(await b.exited()).toBe(3);
    expect(b.output()).toMatch(/refused the claim: 403 Forbidden: The name "mine" is held under another token/);
    expect(b.output()).not.toMatch(/403 403/);
    expect(b.output()).toMatch(/The name is in use/);
    expect(b.output()).toMatch(/--token is the secret that holds a name across restarts/);
  });

  it('a missing or unknown key: says --key KEY or PTTH_KEY, not the protocol header', async () => {
    const g = await gateway({ access: { keys: [{ id: 'k', sha256: hashKey('good-key-123'), names: ['*'] }] } });
    const none = cli(['connect', '3000', '--gateway', g.origin], { PTTH_KEY: '' });
    expect(await none.exited()).toBe(3);
    expect(none.output()).toMatch(/needs an access key: pass --key KEY or set PTTH_KEY/);
    expect(none.output()).not.toMatch(/Authorization|401 401/);
    const bad = cli(['connect', '3000', '--gateway', g.origin, '--key', 'wrong-key-456']);
    expect(await bad.exited()).toBe(3);
    expect(bad.output()).toMatch(/does not know this access key: check --key KEY or PTTH_KEY/);
  });

  it('refuses a port out of range and a bare word with a hint, exit 2', async () => {
    const big = cli(['connect', '99999']);
    expect(await big.exited()).toBe(2);
    expect(big.output()).toMatch(/port 99999 is out of range .* ports run from 1 to 65535/);
    const word = cli(['connect', 'abc']);
    expect(await word.exited()).toBe(2);
    expect(word.output()).toMatch(/"abc" is not a port, host:port or URL: give a port \(3000\), host:port/);
    const hostBig = cli(['connect', 'localhost:70000']);
    expect(await hostBig.exited()).toBe(2);
    expect(hostBig.output()).toMatch(/port 70000 is out of range/);
    const urlBig = cli(['connect', 'http://127.0.0.1:70000/']);
    expect(await urlBig.exited()).toBe(2);
    expect(urlBig.output()).toMatch(/port 70000 is out of range/);
  });

  it('--help names PTTH_GATEWAY, --quiet and --inspect', async () => {
    const h = cli(['connect', '--help']);
    expect(await h.exited()).toBe(0);
    expect(h.output()).toMatch(/--gateway <url>[\s\S]*env:\s+PTTH_GATEWAY/);
    expect(h.output()).toMatch(/-q, --quiet/);
    expect(h.output()).toMatch(/--inspect \[port\]/);
  });
});

describe('connect: what happens while it runs', () => {
  it('with the gateway gone, one line per retry (not one per connection)', async () => {
    const g = await gateway();
    const { port: local } = await backend((_q, r) => r.end('x'));
    const c = cli(['connect', String(local), '--gateway', g.origin, '--name', 'gone', '--http1', '--connections', '4']);
    await c.waitFor(/Forwarding/);
    await g.close();
    await c.waitFor(/(cannot reach [^\n]*\n[^\n]*){3}/, 10_000);
    const lines = c
      .output()
      .split('\n')
      .filter((l) => l.includes('cannot reach'));
    // Four connections fail at once: the first round (delays under 0.25 s) is said once.
    const first = lines.filter((l) => Number(/retrying in ([\d.]+) s/.exec(l)?.[1]) <= 0.2);
    expect(first.length).toBeLessThanOrEqual(1);
    for (let i = 1; i < lines.length; i++) expect(lines[i]).not.toBe(lines[i - 1]);
  });

  it('an empty pool for a moment (busy channels closed as their visitors leave) is not a lost gateway', async () => {
    const g = await gateway();
    const held: http.ServerResponse[] = [];
    const { port: local } = await backend((_q, r) => void held.push(r));
    const grace = 1_500;
    const c = cli([
      'connect',
      String(local),
      '--gateway',
      g.origin,
      '--name',
      'blip',
      '--connections',
      '2',
      '--offline-grace',
      String(grace),
      '-q',
    ]);
    await c.waitFor(/Forwarding/);
    const ids = (): number[] => (g.gateway.table.lookup('blip')?.channels ?? []).map((ch) => ch.id);
    await until(() => ids().length === 2, 5_000, 'two channels');
    const before = ids();
    // Two visitors take both channels (the service never answers), then leave: the gateway closes
    // both channels, the pool is empty, and connect dials two fresh ones.
    const visitors = [0, 1].map(() => {
      const req = http.request({ host: '127.0.0.1', port: g.port, path: '/hang', headers: { host: g.host('blip') } });
      req.on('error', () => {});
      req.end();
      return req;
    });
    await until(() => held.length === 2, 5_000, 'both requests at the service');
    for (const v of visitors) v.destroy();
    await until(() => ids().length === 2 && ids().every((id) => !before.includes(id)), 5_000, 'two fresh channels');
    // The line would come `grace` after the pool emptied: past it, nothing was said.
    await new Promise((r) => setTimeout(r, grace + 500));
    expect(c.output()).not.toMatch(/lost the gateway|back online/);
  });

  it('says once when the local service is down, and when it answers again', async () => {
    const g = await gateway();
    const first = await backend((_q, r) => r.end('up'));
    const local = first.port;
    const c = cli(['connect', `http://127.0.0.1:${local}`, '--gateway', g.origin, '--name', 'flaky']);
    await c.waitFor(/Forwarding/);
    first.server.closeAllConnections();
    await new Promise((r) => first.server.close(r));
    for (let i = 0; i < 3; i++) expect((await request(g.port, { host: g.host('flaky') })).status).toBe(502);
    await c.waitFor(/cannot reach the local service http:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED\): visitors get 502/);
    expect(c.output().match(/cannot reach the local service/g)).toHaveLength(1);
    // The same port again (retried while something else holds it meanwhile).
    for (let attempt = 0; ; attempt++) {
      try {
        await backend((_q, r) => r.end('back'), local);
        break;
      } catch (e) {
        if (attempt > 20) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    expect((await request(g.port, { host: g.host('flaky') })).body).toBe('back');
    await c.waitFor(/the local service http:\/\/127\.0\.0\.1:\d+ answers again/);
  });

  it('Ctrl-C says it releases the name and closes', async () => {
    const g = await gateway();
    const { port: local } = await backend((_q, r) => r.end('x'));
    const c = cli(['connect', String(local), '--gateway', g.origin, '--name', 'byebye']);
    await c.waitFor(/Forwarding/);
    c.kill('SIGINT');
    expect(await c.exited()).toBe(0);
    expect(c.output()).toMatch(/releasing byebye, closing/);
    expect(c.output()).toMatch(/released byebye; bye/);
  });
});

describe("connect: a line per request, from the gateway's event stream", () => {
  // Spliced (the default) and relayed over reversed HTTP/2.
  for (const extra of [[], ['--http2']]) {
    const over = extra.length ? ' (--http2)' : '';
    it(`prints time, method, path, status, ms and size per visitor request${over}`, async () => {
      const { port } = await fronted();
      const { port: local } = await backend((req, res) => {
        if (req.url?.startsWith('/missing')) res.writeHead(404).end('nope');
        else res.end('x'.repeat(1234));
      });
      const c = cli(['connect', String(local), '--gateway', `http://127.0.0.1:${port}`, '--name', 'lines', ...extra]);
      await c.waitFor(/Forwarding/);
      // The subscription may come a moment after Forwarding: request until the first line shows.
      const host = `lines.localhost:${port}`;
      await waitWhile(
        () => request(port, { host, path: '/warmup' }),
        () => /\/warmup {2}200/.test(c.output()),
      );
      await request(port, { host, path: '/api/x?y=1' });
      await c.waitFor(/^\d\d:\d\d:\d\d {2}GET {2}\/api\/x\?y=1 {2}200 {2}\d+ ms {2}1\.2 KB$/m);
      await request(port, { host, method: 'POST', path: '/missing', body: 'hello' });
      await c.waitFor(/^\d\d:\d\d:\d\d {2}POST {2}\/missing {2}404 {2}\d+ ms {2}4 B$/m);
    });
  }

  it('a burst of requests: one line each, all printed before the closing lines on Ctrl-C', async () => {
    // Request lines are written together once per turn of the event loop (cli.ts, requestLine):
    // every line must still come, and come before any later line.
    const { port } = await fronted();
    const { port: local } = await backend((_q, r) => r.end('ok'));
    const c = cli(['connect', String(local), '--gateway', `http://127.0.0.1:${port}`, '--name', 'burst']);
    await c.waitFor(/Forwarding/);
    const host = `burst.localhost:${port}`;
    await waitWhile(
      () => request(port, { host, path: '/warmup' }),
      () => /\/warmup {2}200/.test(c.output()),
    );
    const n = 40;
    await Promise.all(Array.from({ length: n }, (_, i) => request(port, { host, path: `/burst/${i}` })));
    const burstLines = (): string[] =>
      c
        .output()
        .split('\n')
        .filter((l) => / {2}GET {2}\/burst\/\d+ {2}200 /.test(l));
    await until(() => burstLines().length >= n, 8_000, `${n} request lines`);
    c.kill('SIGINT');
    expect(await c.exited()).toBe(0);
    const lines = c.output().split('\n');
    const burst = lines.filter((l) => / {2}GET {2}\/burst\/\d+ {2}200 /.test(l));
    expect(new Set(burst.map((l) => / \/burst\/(\d+) /.exec(l)?.[1])).size).toBe(n);
    expect(burst).toHaveLength(n);
    const releasing = lines.findIndex((l) => l.includes('releasing burst'));
    expect(releasing).toBeGreaterThan(lines.indexOf(burst.at(-1) as string));
  });

  it('follows the stream again when it drops, and after a gateway restart (a new private URL)', async () => {
    const { port, front, g } = await fronted();
    const { port: local } = await backend((_q, r) => r.end('ok'));
    const gatewayUrl = `http://127.0.0.1:${port}`;
    const c = cli(['connect', String(local), '--gateway', gatewayUrl, '--name', 'again', '--token', 'tk']);
    await c.waitFor(/Forwarding/);
    const host = `again.localhost:${port}`;
    await waitWhile(
      () => request(port, { host, path: '/one' }),
      () => /\/one {2}200/.test(c.output()),
    );
    front.dropEvents();
    await waitWhile(
      () => request(port, { host, path: '/two' }),
      () => /\/two {2}200/.test(c.output()),
    );
    // The gateway restarts on its port: the claim is a new registration with a new private URL.
    await g.close();
    await c.waitFor(/lost the gateway/);
    for (let attempt = 0; ; attempt++) {
      try {
        await useGateway({}, g.port);
        break;
      } catch (e) {
        if (attempt > 20) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    await c.waitFor(/back online/, 10_000);
    await waitWhile(
      () => request(port, { host, path: '/three' }),
      () => /\/three {2}200/.test(c.output()),
    );
    expect(c.output()).not.toMatch(/no request lines/);
  }, 30_000);

  it('--quiet prints no request lines (the inspector still gets them)', async () => {
    const { port } = await fronted();
    const { port: local } = await backend((_q, r) => r.end('ok'));
    const gatewayUrl = `http://127.0.0.1:${port}`;
    const c = cli(['connect', String(local), '--gateway', gatewayUrl, '--name', 'hush', '-q', '--inspect', '0']);
    const m = await c.waitFor(/Inspector {3}(http:\/\/127\.0\.0\.1:\d+\/)/);
    const seen = inspectorEvents(m[1] as string);
    const host = `hush.localhost:${port}`;
    await waitWhile(
      () => request(port, { host, path: '/quiet-please' }),
      () => seen.urls.includes('/quiet-please'),
    );
    seen.close();
    expect(c.output()).not.toMatch(/quiet-please/);
    expect(c.output()).toMatch(/Forwarding/);
  });
});

describe('request lines: parsing and format', () => {
  it('parses SSE across chunk boundaries, CRLF and comments, and formats a line', () => {
    const got: [string, string][] = [];
    const p = new SseParser((e, d) => got.push([e, d]));
    p.push(': hello\r\nevent: req');
    p.push('uest\r\ndata: {"a":');
    p.push('1}\r');
    p.push('\n\r\nevent: released\ndata: {}\n\n');
    expect(got).toEqual([
      ['request', '{"a":1}'],
      ['released', '{}'],
    ]);
    const t = new Date(2026, 0, 2, 18, 40, 2).getTime();
    const e = {
      id: 1,
      time: t,
      method: 'GET',
      url: '/api/x?y=1',
      status: 200,
      ms: 12.4,
      bytesIn: 0,
      bytesOut: 1234,
      error: null,
      remote: '',
    };
    expect(formatLine(e)).toBe('18:40:02  GET  /api/x?y=1  200  12 ms  1.2 KB');
    const failed = formatLine({ ...e, status: 0, url: '/\x1b[31m', error: 'PTTH_ERR_X' });
    expect(failed).toBe('18:40:02  GET  /\\x1b[31m  ---  12 ms  1.2 KB  PTTH_ERR_X');
  });
});

/** Does `act` until `done()` (each act awaited first), up to `ms`. */
async function waitWhile(act: () => Promise<unknown>, done: () => boolean, ms = 8_000): Promise<void> {
  const until = Date.now() + ms;
  for (;;) {
    await act();
    // The line follows the response by a hop (gateway -> stream -> connect): give each try a moment.
    for (let i = 0; i < 20 && !done(); i++) await new Promise((r) => setTimeout(r, 25));
    if (done()) return;
    if (Date.now() > until) throw new Error('timed out');
  }
}

/** Follows an inspector's /events; `urls` collects the exchanges' URLs. */
function inspectorEvents(base: string): { urls: string[]; close(): void } {
  const urls: string[] = [];
  const req = http.get(`${base}events`, (res) => {
    res.setEncoding('utf8');
    const p = new SseParser((event, data) => {
      if (event === 'exchange') urls.push((JSON.parse(data) as { url: string }).url);
    });
    res.on('data', (c: string) => p.push(c));
  });
  req.on('error', () => {});
  return { urls, close: () => req.destroy() };
}

describe('the inspector in process: replay and its headers', () => {
  it("replays to the local service: hop-by-hop dropped, forwarding headers kept, Host the visitor's", async () => {
    const seen: { method?: string; url?: string; headers?: http.IncomingHttpHeaders; body?: string }[] = [];
    const { port: local } = await backend((req, res) => {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (c: string) => (body += c));
      req.on('end', () => {
        seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
        res.writeHead(202, { 'x-replayed': 'yes' }).end('z'.repeat(2000));
      });
    });
    const target = new URL(`http://127.0.0.1:${local}/base`);
    const inspector = await startInspector(0, { target, limit: 2 });
    try {
      const event = {
        id: 'g1',
        time: Date.now(),
        method: 'POST',
        url: '/p?q=1',
        status: 200,
        ms: 1,
        bytesIn: 5,
        bytesOut: 2,
        error: null,
        remote: '203.0.113.9',
        request: {
          headers: [
            'Host',
            'app.example',
            'Connection',
            'keep-alive, X-Drop',
            'X-Drop',
            '1',
            'Keep-Alive',
            'timeout=5',
            'X-Forwarded-For',
            '203.0.113.9',
            'Content-Length',
            '99',
            'X-Kept',
            'yes',
          ],
          body: Buffer.from('hello').toString('base64'),
          bodyBytes: 5,
          truncated: false,
        },
        response: null,
      };
      for (let i = 0; i < 3; i++) inspector.add({ ...event, url: `/p?q=${i}` });
      const post = (id: string, headers: http.OutgoingHttpHeaders): Promise<{ status: number; body: string }> =>
        new Promise((resolve, reject) => {
          const u = new URL(inspector.url);
          const path = `/replay/${id}`;
          const spec = { host: '127.0.0.1', port: u.port, method: 'POST', path, headers, agent: false };
          const r = http.request(spec);
          r.on('response', (res) => {
            let body = '';
            res.setEncoding('utf8');
            res.on('data', (c: string) => (body += c));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
          });
          r.on('error', reject);
          r.end();
        });
      // The ring keeps the last 2 of 3: the first is gone.
      expect((await post('1', { 'x-ptth-inspector': '1' })).status).toBe(404);
      const r = await post('3', { 'x-ptth-inspector': '1' });
      expect(r.status).toBe(200);
      type Result = { status: number; headers: string[]; bodyBytes: number; truncated: boolean; body: string };
      const result = JSON.parse(r.body) as Result;
      expect(result.status).toBe(202);
      expect(result.headers).toContain('x-replayed');
      expect(result.bodyBytes).toBe(2000);
      expect(result.truncated).toBe(true);
      expect(Buffer.from(result.body, 'base64').length).toBe(1024);
      expect(seen).toHaveLength(1);
      const got = seen[0] as { method: string; url: string; headers: http.IncomingHttpHeaders; body: string };
      expect(got.method).toBe('POST');
      expect(got.url).toBe('/base/p?q=2');
      expect(got.body).toBe('hello');
      expect(got.headers['host']).toBe('app.example');
      expect(got.headers['x-forwarded-for']).toBe('203.0.113.9');
      expect(got.headers['x-kept']).toBe('yes');
      expect(got.headers['content-length']).toBe('5');
      expect(got.headers['x-drop']).toBeUndefined();
      expect(got.headers['keep-alive']).toBeUndefined();
      // A truncated body cannot be replayed.
      inspector.add({ ...event, request: { ...event.request, truncated: true, bodyBytes: 5000 } });
      expect((await post('4', { 'x-ptth-inspector': '1' })).status).toBe(409);
    } finally {
      await inspector.close();
    }
  });

  it('a replay to a service that is down answers with the error', async () => {
    const dead = await backend(() => {});
    const port = dead.port;
    dead.server.close();
    await new Promise((r) => dead.server.once('close', r));
    const e = {
      id: 1,
      time: 0,
      method: 'GET',
      url: '/',
      status: 200,
      ms: 1,
      bytesIn: 0,
      bytesOut: 0,
      error: null,
      remote: '',
      request: { headers: [], body: '', bodyBytes: 0, truncated: false },
      response: null,
    };
    const r = await replay(e, new URL(`http://127.0.0.1:${port}`));
    expect(r.status).toBe(0);
    expect(r.error).toBe('ECONNREFUSED');
    expect(replayHeaders([], new URL('http://127.0.0.1:1'), false, 0)).toEqual(['Host', '127.0.0.1:1']);
    const rewritten = replayHeaders(['Host', 'pub.example'], new URL('http://127.0.0.1:1'), true, 0);
    expect(rewritten).toEqual(['Host', '127.0.0.1:1']);
  });
});

describe('watchEvents in process', () => {
  it('reads request events, reconnects when the stream drops, stops at released, and on a 404', async () => {
    let opened = 0;
    const streams: http.ServerResponse[] = [];
    const { port } = await backend((req, res) => {
      if (req.url?.startsWith('/gone/')) {
        res.writeHead(404).end();
        return;
      }
      opened++;
      expect(req.url).toBe('/_ptth/abc/events?detail=1');
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(': hi\n\n');
      streams.push(res);
    });
    const got: string[] = [];
    const drops: (number | undefined)[] = [];
    let released = false;
    let notify = (): void => {};
    const changed = (): Promise<void> => new Promise((r) => (notify = r));
    const w = watchEvents(`http://127.0.0.1:${port}/_ptth/abc`, {
      detail: true,
      backoff: 10,
      onRequest: (e) => {
        got.push(e.url);
        notify();
      },
      onReleased: () => {
        released = true;
        notify();
      },
      onDrop: (_reason, delay) => {
        drops.push(delay);
        notify();
      },
    });
    try {
      w.start();
      const ev = (url: string): string => {
        const data = { id: 1, time: 0, method: 'GET', url, status: 200, ms: 1, bytesIn: 0, bytesOut: 0 };
        return `event: request\ndata: ${JSON.stringify(data)}\n\n`;
      };
      while (streams.length < 1) await new Promise((r) => setTimeout(r, 5));
      let next = changed();
      (streams[0] as http.ServerResponse).write(`${ev('/a')}event: request\ndata: not json\n\n`);
      await next;
      expect(got).toEqual(['/a']);
      next = changed();
      (streams[0] as http.ServerResponse).destroy(); // a dropped stream: reconnect with backoff
      await next;
      expect(drops).toHaveLength(1);
      expect(drops[0]).toBeGreaterThan(0);
      while (streams.length < 2) await new Promise((r) => setTimeout(r, 5));
      next = changed();
      (streams[1] as http.ServerResponse).write(ev('/b'));
      await next;
      expect(got).toEqual(['/a', '/b']);
      next = changed();
      (streams[1] as http.ServerResponse).end('event: released\ndata: {}\n\n');
      await next;
      expect(released).toBe(true);
      expect(opened).toBe(2);
    } finally {
      w.close();
    }
    const gone: (number | undefined)[] = [];
    let told = (): void => {};
    const said = new Promise<void>((r) => (told = r));
    const w2 = watchEvents(`http://127.0.0.1:${port}/gone/x`, {
      onRequest: () => {},
      onDrop: (reason, delay) => {
        expect(reason).toBe('the gateway answered 404 to its event stream');
        gone.push(delay);
        told();
      },
    });
    w2.start();
    await said;
    w2.close();
    expect(gone).toEqual([undefined]); // no retry: a gateway without the stream will not grow one
  });
});

describe("connect's pieces in process", () => {
  it('parseTarget: ports, host:port and URLs; out-of-range ports and bare words refused with a hint', () => {
    expect(parseTarget('3000').href).toBe('http://localhost:3000/');
    expect(parseTarget('127.0.0.1:8080').href).toBe('http://127.0.0.1:8080/');
    expect(parseTarget('[::1]:8080').href).toBe('http://[::1]:8080/');
    expect(parseTarget('https://127.0.0.1:8443/base').href).toBe('https://127.0.0.1:8443/base');
    expect(() => parseTarget('0')).toThrow(/port 0 is out of range/);
    expect(() => parseTarget('99999')).toThrow(/port 99999 is out of range in "99999": ports run from 1 to 65535/);
    expect(() => parseTarget('localhost:65536')).toThrow(/port 65536 is out of range/);
    expect(() => parseTarget('http://127.0.0.1:99999/')).toThrow(/port 99999 is out of range/);
    expect(() => parseTarget('http://[zz')).toThrow(/"http:\/\/\[zz" is not a valid URL: give a port/);
    expect(() => parseTarget('ftp://x')).toThrow(/only http and https services/);
    expect(() => parseTarget('abc')).toThrow(/"abc" is not a port, host:port or URL: give a port \(3000\)/);
    expect(() => parseTarget('localhost')).toThrow(/not a port, host:port or URL/);
  });

  it("claimMessage speaks in connect's terms", () => {
    const m = (code: string | undefined, status = 401): string =>
      claimMessage(new ClaimError(status, `the gateway refused the claim: ${status} Unauthorized: the body`, code));
    expect(m('PTTH_ERR_KEY_REQUIRED')).toMatch(/401: this gateway needs an access key: pass --key KEY or set PTTH_KEY/);
    expect(m('PTTH_ERR_KEY_INVALID')).toMatch(/does not know this access key: check --key KEY or PTTH_KEY/);
    expect(m('PTTH_ERR_TOKEN_MISMATCH', 403)).toMatch(/403 Unauthorized: the body\n {2}The name is in use/);
    expect(m('PTTH_ERR_NAME_RESERVED', 403)).toBe('the gateway refused the claim: 403 Unauthorized: the body');
    expect(claimMessage(new Error('plain'))).toBe('plain');
  });

  for (const http1 of [false, true]) {
    it(`the local proxy reports the service unreachable and reachable again${http1 ? ' (--http1)' : ''}`, async () => {
      const g = await gateway();
      const first = await backend((_q, r) => r.end('up'));
      const reach: (string | undefined)[] = [];
      const target = new URL(`http://127.0.0.1:${first.port}`);
      const proxy = createLocalProxy(target, { onReach: (e) => reach.push(e?.code) });
      const name = http1 ? 'reach1' : 'reach2';
      const tunnel = listen(proxy, { gateway: g.origin, name, ...(http1 ? { http1: true } : {}) });
      try {
        await tunnel.ready();
        expect((await request(g.port, { host: g.host(name) })).body).toBe('up');
        expect(reach).toEqual([undefined]);
        first.server.closeAllConnections();
        await new Promise((r) => first.server.close(r));
        const down = await request(g.port, { host: g.host(name) });
        expect(down.status).toBe(502);
        expect(down.body).toContain('could not reach');
        expect(reach).toEqual([undefined, 'ECONNREFUSED']);
      } finally {
        await tunnel.close();
      }
    });
  }
});
