import * as http from 'node:http';
import { describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { createGateway } from '../../src/gateway/server.js';
import { request, until, type Reply } from '../helpers/index.js';
import { cleanup, track, useApp, useGateway } from '../helpers/fixture.js';
import { CometApp, fetchRaw, register } from '../helpers/comet.js';
import { loadLibrary, wsRefusal } from '../helpers/wsapp.js';
import { spawnCli } from '../helpers/spawn.js';

/*
 * Path-based public URLs (serve --urls path|both, docs/PROTOCOL.md section 1): apps at GATEWAY/NAME/, the
 * prefix stripped before any channel sees the request and told the app in X-Forwarded-Prefix, the
 * gateway's own paths reserved, every transport and client unchanged.
 */

/** What the test app saw: its target, the prefix header(s), and the Host. */
interface Seen {
  url: string;
  prefix: string[];
  host: string | undefined;
}

function prefixes(raw: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2)
    if ((raw[i] as string).toLowerCase() === 'x-forwarded-prefix') out.push(raw[i + 1] as string);
  return out;
}

/**
 * An ordinary app that knows nothing of the gateway but X-Forwarded-Prefix, as Express or Spring
 * behind a proxy: `/login` redirects to `<prefix>/home`, `/page` links to `<prefix>/style.css`, the
 * rest echoes what it saw. A visitor WebSocket at `/chat` gets the same echo as its first message.
 */
function prefixAwareApp(): http.Server {
  const server = http.createServer((req, res) => {
    const prefix = String(req.headers['x-forwarded-prefix'] ?? '');
    if (req.url === '/login') {
      res.writeHead(302, { Location: `${prefix}/home` });
      res.end();
      return;
    }
    if (req.url === '/page') {
      res.end(`<a href="${prefix}/style.css">style</a>`);
      return;
    }
    const seen: Seen = { url: req.url ?? '', prefix: prefixes(req.rawHeaders), host: req.headers.host };
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(seen));
  });
  const wss = new WebSocketServer({ noServer: true });
  server.on('upgrade', (req, socket, head) => {
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.send(
        JSON.stringify({ url: req.url ?? '', prefix: prefixes(req.rawHeaders), host: req.headers.host } satisfies Seen),
      );
    });
  });
  cleanup(() => {
    for (const c of wss.clients) c.terminate();
    wss.close();
  });
  return server;
}

const seen = (r: Reply): Seen => JSON.parse(r.body) as Seen;

/** The transports of a name's live channels. */
function transports(gw: { gateway: ReturnType<typeof createGateway> }, name: string): string[] {
  return gw.gateway.table.lookup(name)?.channels.map((c) => c.transport) ?? [];
}

/** A visitor WebSocket through the gateway; resolves with its first message. */
async function visitorWs(url: string, headers: Record<string, string> = {}): Promise<Seen> {
  const ws = track(new WebSocket(url, { headers }));
  ws.on('error', () => {});
  const data = await new Promise<WebSocket.RawData>((resolve, reject) => {
    ws.once('message', resolve);
    ws.once('unexpected-response', (_req, res) => reject(new Error(`refused: ${res.statusCode ?? 0}`)));
  });
  return JSON.parse(String(data)) as Seen;
}

describe('path URLs: every transport', () => {
  it('native PTTH/1.0: Link is GATEWAY/NAME/, the app gets the path without the prefix and X-Forwarded-Prefix', async () => {
    const gw = await useGateway({ urls: 'path' });
    const tunnel = await useApp(gw.port, prefixAwareApp(), { name: 'native', http1: true });
    expect(transports(gw, 'native')).toContain('http1');
    // The claim came to 127.0.0.1: the advertised URL is on the address the gateway was reached at.
    expect(tunnel.url).toBe(`${gw.origin}/native/`);
    const r = await request(gw.port, { host: `127.0.0.1:${gw.port}`, path: '/native/x/y?z=1' });
    expect(r.status).toBe(200);
    expect(seen(r)).toEqual({ url: '/x/y?z=1', prefix: ['/native'], host: `127.0.0.1:${gw.port}` });
  });

  it('reversed HTTP/2: the same path and prefix, in :path', async () => {
    const gw = await useGateway({ urls: 'path' });
    const tunnel = await useApp(gw.port, prefixAwareApp(), { name: 'viah2' });
    await until(() => transports(gw, 'viah2').includes('http2'));
    expect(tunnel.url).toBe(`${gw.origin}/viah2/`);
    const r = await request(gw.port, { path: '/viah2/deep/er?q' });
    expect(seen(r)).toMatchObject({ url: '/deep/er?q', prefix: ['/viah2'] });
  });

  it('the WebSocket channel (browser library): the hello has the path URL, requests arrive stripped', async () => {
    const gw = await useGateway({ urls: 'path' });
    const serve = await loadLibrary();
    const got: { path: string; prefix: string | null }[] = [];
    const server = serve({ gateway: `${gw.origin}/`, name: 'tab' }, (req) => {
      got.push({
        path: new URL(req.url).pathname + new URL(req.url).search,
        prefix: req.headers.get('x-forwarded-prefix'),
      });
      return new Response('from the tab');
    });
    cleanup(() => server.close());
    expect(await server.url).toBe(`${gw.origin}/tab/`);
    expect(server.transport).toBe('websocket');
    expect(server.name).toBe('tab');
    const r = await request(gw.port, { path: '/tab/hello?x=1', headers: { 'x-forwarded-prefix': '/forged' } });
    expect(r.body).toBe('from the tab');
    expect(got).toEqual([{ path: '/hello?x=1', prefix: '/tab' }]);
  });

  it('the browser library over Comet without a name: every poller stays on its one random name', async () => {
    const gw = await useGateway({ urls: 'path' });
    const serve = await loadLibrary();
    const server = serve(
      { gateway: `${gw.origin}/`, transport: 'comet', pollers: 2 },
      (req) => new Response(new URL(req.url).pathname),
    );
    cleanup(() => server.close());
    const url = await server.url;
    const names = gw.gateway.table.list().map((r) => r.name);
    expect(names).toHaveLength(1);
    expect(url).toBe(`${gw.origin}/${names[0]}/`);
    expect(server.name).toBe(names[0]);
    const r = await request(gw.port, { path: `/${names[0]}/x` });
    expect(r.body).toBe('/x');
    expect(gw.gateway.table.list()).toHaveLength(1);
  });

  it('Comet: Link rel="related" is the path URL, and the message/http request is stripped', async () => {
    const gw = await useGateway({ urls: 'path' });
    const app = await CometApp.start(gw.origin, { name: 'comet1', token: 't' }, (req) => ({
      status: 200,
      body: JSON.stringify({ url: req.url, prefix: prefixes(req.rawHeaders), host: undefined }),
    }));
    cleanup(() => app.stop());
    expect(app.url).toBe(`${gw.origin}/comet1/`);
    const r = await request(gw.port, { path: '/comet1/a/b?c=d' });
    expect(JSON.parse(r.body)).toMatchObject({ url: '/a/b?c=d', prefix: ['/comet1'] });
  });

  it("a visitor's WebSocket upgrade to /NAME/... reaches the app stripped; /NAME alone reaches its /", async () => {
    const gw = await useGateway({ urls: 'path' });
    await useApp(gw.port, prefixAwareApp(), { name: 'wsapp' });
    const ws = await visitorWs(`ws://127.0.0.1:${gw.port}/wsapp/chat?room=1`, { 'X-Forwarded-Prefix': '/forged' });
    expect(ws).toMatchObject({ url: '/chat?room=1', prefix: ['/wsapp'] });
    // A WebSocket handshake cannot follow a redirect: the bare prefix is the app's root.
    expect(await visitorWs(`ws://127.0.0.1:${gw.port}/wsapp`)).toMatchObject({ url: '/', prefix: ['/wsapp'] });
  });
});

describe('path URLs: what the app sees', () => {
  it("an ordinary app's redirect and links built from X-Forwarded-Prefix keep the visitor under the prefix", async () => {
    const gw = await useGateway({ urls: 'path' });
    await useApp(gw.port, prefixAwareApp(), { name: 'shop' });
    const login = await request(gw.port, { path: '/shop/login' });
    expect(login.status).toBe(302);
    expect(login.headers.location).toBe('/shop/home');
    const home = await request(gw.port, { path: String(login.headers.location) });
    expect(seen(home).url).toBe('/home');
    expect((await request(gw.port, { path: '/shop/page' })).body).toBe('<a href="/shop/style.css">style</a>');
  });

  it("a visitor's own X-Forwarded-Prefix never reaches the app: the gateway's value is the only one", async () => {
    const gw = await useGateway({ urls: 'path' });
    await useApp(gw.port, prefixAwareApp(), { name: 'forge', http1: true });
    const r = await request(gw.port, { path: '/forge/', headers: { 'X-Forwarded-Prefix': '/evil' } });
    expect(seen(r).prefix).toEqual(['/forge']);
  });

  it('/NAME with no slash: 308 to /NAME/ with the query kept (POST too); the app is not asked', async () => {
    const gw = await useGateway({ urls: 'path' });
    let asked = 0;
    await useApp(
      gw.port,
      (_req, res) => {
        asked++;
        res.end('app');
      },
      { name: 'bare', http1: true },
    );
    const get = await request(gw.port, { path: '/bare' });
    expect(get.status).toBe(308);
    expect(get.headers.location).toBe('/bare/');
    const post = await request(gw.port, { method: 'POST', path: '/bare?a=1&b', body: 'form' });
    expect(post.status).toBe(308);
    expect(post.headers.location).toBe('/bare/?a=1&b');
    expect(asked).toBe(0);
    expect((await request(gw.port, { path: '/bare/' })).body).toBe('app');
    // No app under the name: 404 as for any unknown name, not a redirect to nowhere.
    const none = await request(gw.port, { path: '/nobody' });
    expect(none.status).toBe(404);
    expect(none.headers['x-ptth-error']).toBe('PTTH_ERR_NOT_FOUND');
  });

  it('a request event (the access log) shows the path the visitor sent', async () => {
    const gw = await useGateway({ urls: 'path' });
    await useApp(gw.port, (_req, res) => res.end('ok'), { name: 'logged', http1: true });
    const events: { url: string; path: string; name: string }[] = [];
    gw.gateway.on('request', (e) => events.push(e));
    await request(gw.port, { path: '/logged/a?b=1' });
    await until(() => events.length === 1);
    expect(events[0]).toMatchObject({ name: 'logged', url: '/logged/a?b=1', path: '/logged/a' });
  });

  it('names are matched as they are spelled (paths are case-sensitive); NAME.domain is no app host in path mode', async () => {
    const gw = await useGateway({ urls: 'path' });
    await useApp(gw.port, (_req, res) => res.end('app'), { name: 'lower', http1: true });
    const upper = await request(gw.port, { path: '/Lower/' });
    expect(upper.status).toBe(404);
    expect(upper.headers['x-ptth-error']).toBe('PTTH_ERR_NO_ENDPOINT');
    // lower.localhost is one more gateway host: its / is the status page, its /lower/ the app.
    const byHost = await request(gw.port, { host: gw.host('lower'), path: '/' });
    expect(byHost.body).toContain('<title>ptth-proxy</title>');
    expect((await request(gw.port, { host: gw.host('lower'), path: '/lower/' })).body).toBe('app');
  });
});

describe("path URLs: the gateway's own paths", () => {
  const RESERVED = ['reversehttp', 'metrics', 'healthz', 'readyz', 'relay'];

  it('refuses them as names on every claim transport (403 PTTH_ERR_NAME_RESERVED)', async () => {
    const gw = await useGateway({ urls: 'path' });
    for (const name of RESERVED) {
      const native = await request(gw.port, {
        method: 'POST',
        path: `/?name=${name}`,
        headers: { upgrade: 'PTTH/1.0', connection: 'Upgrade' },
      });
      expect([native.status, native.headers['x-ptth-error']], name).toEqual([403, 'PTTH_ERR_NAME_RESERVED']);
      expect(native.body).toContain(`/${name} is one of the gateway's own paths`);
      const comet = await register(gw.origin, { name });
      expect([comet.status, comet.headers['x-ptth-error']], name).toEqual([403, 'PTTH_ERR_NAME_RESERVED']);
      expect(await wsRefusal(gw.port, { name })).toEqual({ status: 403, code: 'PTTH_ERR_NAME_RESERVED' });
    }
    // By Host too (a native claim names its app by Host in every mode).
    const byHost = await request(gw.port, {
      host: gw.host('metrics'),
      method: 'POST',
      headers: { upgrade: 'PTTH/1.0', connection: 'Upgrade' },
    });
    expect(byHost.headers['x-ptth-error']).toBe('PTTH_ERR_NAME_RESERVED');
    await expect(useApp(gw.port, () => {}, { name: 'healthz', http1: true })).rejects.toThrow(/reserved/);
    expect(gw.gateway.table.list()).toEqual([]);
  });

  it('keeps serving them, whatever app exists', async () => {
    const gw = await useGateway({ urls: 'path' });
    await useApp(gw.port, (_req, res) => res.end('app'), { name: 'ptth', http1: true });
    expect((await request(gw.port, { path: '/healthz' })).body).toBe('ok\n');
    expect((await request(gw.port, { path: '/readyz' })).body).toBe('ok\n');
    expect((await request(gw.port, { path: '/metrics' })).body).toContain('ptth_');
    expect((await request(gw.port, { path: '/ptth.js' })).headers['content-type']).toMatch(/javascript/);
    expect((await request(gw.port, { path: '/_ptth/nope' })).headers['x-ptth-error']).toBe('PTTH_ERR_NOT_FOUND');
    expect((await request(gw.port, { path: '/relay/example.com' })).headers['x-ptth-error']).toBe(
      'PTTH_ERR_NO_ENDPOINT',
    );
    expect((await request(gw.port, { path: '/reversehttp' })).status).not.toBe(200);
    expect((await request(gw.port, { path: '/ptth/' })).body).toBe('app');
  });

  it('host mode keeps them claimable as names (nothing changes there)', async () => {
    const gw = await useGateway();
    await useApp(gw.port, (_req, res) => res.end('metrics app'), { name: 'metrics', http1: true });
    expect((await request(gw.port, { host: gw.host('metrics') })).body).toBe('metrics app');
  });
});

describe('path URLs: both mode and host mode', () => {
  it('both: either shape reaches the app, Link advertises the host shape, only the path shape has a prefix', async () => {
    const gw = await useGateway({ urls: 'both' });
    const tunnel = await useApp(gw.port, prefixAwareApp(), { name: 'twice', http1: true });
    expect(tunnel.url).toBe(`http://twice.localhost:${gw.port}/`);
    const byPath = await request(gw.port, { path: '/twice/p?q' });
    expect(seen(byPath)).toMatchObject({ url: '/p?q', prefix: ['/twice'] });
    // A host-routed request has no prefix to tell: a visitor's own is dropped, not passed on.
    const byHost = await request(gw.port, {
      host: gw.host('twice'),
      path: '/twice/p',
      headers: { 'X-Forwarded-Prefix': '/evil' },
    });
    expect(seen(byHost)).toMatchObject({ url: '/twice/p', prefix: [] });
    expect((await visitorWs(`ws://127.0.0.1:${gw.port}/twice/chat`)).url).toBe('/chat');
  });

  it('host (the default): paths of the gateway host name no app, Link is NAME.domain, X-Forwarded-Prefix passes as before', async () => {
    const gw = await useGateway();
    const tunnel = await useApp(gw.port, prefixAwareApp(), { name: 'classic', http1: true });
    expect(tunnel.url).toBe(`http://classic.localhost:${gw.port}/`);
    const r = await request(gw.port, { path: '/classic/' });
    expect(r.headers['x-ptth-error']).toBe('PTTH_ERR_NO_ENDPOINT');
    const byHost = await request(gw.port, {
      host: gw.host('classic'),
      path: '/classic/',
      headers: { 'X-Forwarded-Prefix': '/kept' },
    });
    expect(seen(byHost)).toMatchObject({ url: '/classic/', prefix: ['/kept'] });
  });

  it('the origin of path URLs is the IP literal the claim came to, else the domain; the private URL shares it', async () => {
    const gw = await useGateway({ urls: 'path' });
    const claim = { method: 'POST', headers: { upgrade: 'PTTH/1.0', connection: 'Upgrade' } } as const;
    const cases = [
      [`[::1]:${gw.port}`, 'v6', `http://[::1]:${gw.port}`],
      [`127.0.0.1:${gw.port}`, 'v4', `http://127.0.0.1:${gw.port}`],
      [`localhost:${gw.port}`, 'dom', `http://localhost:${gw.port}`],
      [`elsewhere.example:${gw.port}`, 'other', `http://localhost:${gw.port}`],
    ] as const;
    for (const [host, name, origin] of cases) {
      // A 101 through node's client: the reply head is all this needs, the socket is dropped.
      const head = await new Promise<http.IncomingMessage>((resolve, reject) => {
        const req = http.request({
          host: '127.0.0.1',
          port: gw.port,
          path: `/?name=${name}`,
          ...claim,
          headers: { ...claim.headers, host },
        });
        req.on('upgrade', (res, socket) => {
          socket.destroy();
          resolve(res);
        });
        req.on('response', (res) => reject(new Error(`refused: ${res.statusCode ?? 0}`)));
        req.on('error', reject);
        req.end();
      });
      expect(head.headers.link, host).toBe(`<${origin}/${name}/>; rel="related"`);
      expect(head.headers.location, host).toMatch(new RegExp(`^${origin.replace(/[.[\]]/g, '\\$&')}/_ptth/`));
    }
  });

  it('listen() without a name keeps its random name in path mode: every connection joins the one registration', async () => {
    const gw = await useGateway({ urls: 'path' });
    const tunnel = await useApp(gw.port, prefixAwareApp(), { http1: true, connections: 2 });
    await until(() => gw.gateway.table.list()[0]?.channels.length === 2);
    const names = gw.gateway.table.list().map((r) => r.name);
    expect(names).toHaveLength(1);
    expect(tunnel.url).toBe(`http://127.0.0.1:${gw.port}/${names[0]}/`);
  });

  it('--public-url gives the origin of path URLs', async () => {
    const gw = await useGateway({ urls: 'path', publicUrl: 'https://tunnel.example.com' });
    const tunnel = await useApp(gw.port, prefixAwareApp(), { name: 'pub', http1: true });
    expect(tunnel.url).toBe('https://tunnel.example.com/pub/');
  });

  it('a bad urls value is a programmer error (PTTH_ERR_BAD_OPTION)', () => {
    // @ts-expect-error: not one of the modes
    expect(() => createGateway({ urls: 'vhost' })).toThrow(
      expect.objectContaining({ code: 'PTTH_ERR_BAD_OPTION', option: 'urls' }),
    );
  });
});

describe('path URLs: the shared origin is said out loud', () => {
  it('the status page warns in path and both mode, and not in host mode', async () => {
    for (const urls of ['path', 'both', 'host'] as const) {
      const gw = await useGateway({ urls });
      const page = await request(gw.port, { path: '/' });
      expect(page.body.includes('id="shared-origin"'), urls).toBe(urls !== 'host');
      if (urls === 'path') expect(page.body).toContain(`${gw.origin}/<var>NAME</var>/`);
      const json = await fetchRaw(`${gw.origin}/?format=json`);
      expect(JSON.parse(json.body.toString()).gateway.urls).toBe(urls);
    }
  });

  it('serve --urls path warns at start-up, and connect prints and serves the path URL unchanged', async () => {
    const gw = spawnCli(['serve', '--port', '0', '--host', '127.0.0.1', '--urls', 'path']);
    cleanup(() => gw.kill('SIGKILL'));
    const port = Number((await gw.waitFor(/listening on 127\.0\.0\.1:(\d+)/))[1]);
    await gw.waitFor(/WARNING: apps are served at paths of one origin[^\n]*\n[^\n]*cookies and storage/);
    expect(gw.output()).toContain(`apps served at http://localhost:${port}/NAME/`);
    const local = http.createServer((req, res) =>
      res.end(`local ${req.url} ${String(req.headers['x-forwarded-prefix'])}`),
    );
    await new Promise<void>((resolve) => local.listen(0, '127.0.0.1', resolve));
    cleanup(() => local.close());
    const localPort = (local.address() as { port: number }).port;
    const c = spawnCli(['connect', String(localPort), '--gateway', `http://127.0.0.1:${port}`, '--name', 'cli-path']);
    cleanup(() => c.kill('SIGKILL'));
    await c.waitFor(new RegExp(`Forwarding http://127\\.0\\.0\\.1:${port}/cli-path/ -> `));
    expect((await request(port, { path: '/cli-path/x?y=1' })).body).toBe('local /x?y=1 /cli-path');
  });
});
