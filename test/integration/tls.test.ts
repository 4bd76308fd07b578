import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { copyFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer, type ClientOptions } from 'ws';
import { createGateway, type Gateway, type GatewayOptions } from '../../src/gateway/server.js';
import { listen, type ListenOptions, type Tunnel } from '../../src/client/node.js';
import { closed, FAST, headEnd, rawConnect, readUntil, until } from '../helpers/index.js';
import { cleanup } from '../helpers/fixture.js';
import { spawnCli, type Spawned } from '../helpers/spawn.js';
import { makeCert, type TestCert } from '../helpers/tls.js';

const DOMAIN = 'tls.localhost';
let cert: TestCert;
let other: TestCert;
beforeAll(() => {
  cert = makeCert(DOMAIN, 'first');
  other = makeCert(DOMAIN, 'second');
});
afterAll(() => {
  cert.remove();
  other.remove();
});

async function startTlsGateway(options: GatewayOptions = {}): Promise<{ gateway: Gateway; port: number }> {
  const gateway = createGateway({ ...FAST, domain: DOMAIN, tls: { cert: cert.cert, key: cert.key }, ...options });
  const { port } = await gateway.listen(0, '127.0.0.1');
  cleanup(() => gateway.close(200));
  return { gateway, port };
}

async function startTlsApp(
  port: number,
  target: http.RequestListener | http.Server,
  options: ListenOptions = {},
): Promise<Tunnel> {
  const tunnel = listen(target, {
    gateway: `https://127.0.0.1:${port}`,
    rejectUnauthorized: false,
    connections: 2,
    backoff: 50,
    maxBackoff: 500,
    ...options,
  });
  cleanup(() => tunnel.close({ graceMs: 200 }));
  await tunnel.ready();
  return tunnel;
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** An HTTPS request to 127.0.0.1 that verifies the gateway's certificate against the test CA. */
function get(
  port: number,
  host: string,
  spec: { method?: string; path?: string; body?: string; headers?: http.OutgoingHttpHeaders } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: '127.0.0.1',
      port,
      servername: host.replace(/:\d+$/, ''),
      ca: cert.cert,
      method: spec.method ?? 'GET',
      path: spec.path ?? '/',
      headers: { host, ...spec.headers },
      agent: false,
    });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }),
      );
    });
    req.on('error', reject);
    req.end(spec.body);
  });
}

/** The certificate a fresh TLS connection to the port is shown. */
function peerCn(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', rejectUnauthorized: false }, () => {
      const cn = s.getPeerCertificate().subject.CN;
      s.destroy();
      resolve(Array.isArray(cn) ? cn.join(',') : (cn ?? ''));
    });
    s.on('error', reject);
  });
}

const echo: http.RequestListener = (req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () =>
    res.end(
      `${req.method} ${req.url} proto=${String(req.headers['x-forwarded-proto'])} body=${Buffer.concat(chunks).toString()}`,
    ),
  );
};

describe('HTTPS on the gateway port (--tls-cert / --tls-key)', () => {
  it('serves its status page over HTTPS and advertises https URLs', async () => {
    const { gateway, port } = await startTlsGateway();
    expect(gateway.secure).toBe(true);
    const r = await get(port, `${DOMAIN}:${port}`, { headers: { accept: 'application/json' } });
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toContain('json');
  });

  it('serves an app claimed over reversed HTTP/2 through TLS, end to end, with https public URLs', async () => {
    const { port } = await startTlsGateway();
    const tunnel = await startTlsApp(port, echo, { name: 'secure' });
    expect(tunnel.protocol).toBe('h2');
    expect(tunnel.url).toBe(`https://secure.${DOMAIN}:${port}/`);
    expect(tunnel.privateUrl?.startsWith(`https://${DOMAIN}:${port}/_ptth/`)).toBe(true);
    const r = await get(port, `secure.${DOMAIN}:${port}`, { method: 'POST', path: '/x?y=1', body: 'hello' });
    expect(r.status).toBe(200);
    expect(r.body).toBe('POST /x?y=1 proto=https body=hello');
  });

  it('serves an app claimed over reversed HTTP/1.1 through TLS', async () => {
    const { port } = await startTlsGateway();
    const tunnel = await startTlsApp(port, echo, { name: 'secure1', http1: true });
    expect(tunnel.protocol).toBe('h1');
    const replies = await Promise.all(
      [1, 2, 3, 4].map((i) => get(port, `secure1.${DOMAIN}:${port}`, { path: `/${i}` })),
    );
    expect(replies.map((r) => r.body)).toEqual([1, 2, 3, 4].map((i) => `GET /${i} proto=https body=`));
  });

  it('accepts a PTTH/1.0 claim without Connection: Upgrade over TLS and sends requests down it', async () => {
    const { port } = await startTlsGateway();
    const socket = tls.connect({ host: '127.0.0.1', port, servername: DOMAIN, ca: cert.cert });
    cleanup(() => socket.destroy());
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', () => resolve());
      socket.once('error', reject);
    });
    socket.write(
      `POST /?name=rawtls HTTP/1.1\r\nHost: ${DOMAIN}:${port}\r\nUpgrade: PTTH/1.0\r\nContent-Length: 0\r\n\r\n`,
    );
    const head = (await readUntil(socket as unknown as net.Socket, headEnd)).toString('latin1');
    expect(head).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n/);
    expect(head).toContain(`Link: <https://rawtls.${DOMAIN}:${port}/>; rel="related"`);
    // The app side: a node:http server handed the TLS socket (llhttp parses the reversed request).
    const app = http.createServer((req, res) => res.end(`raw app saw ${req.url}`));
    app.emit('connection', socket);
    const r = await get(port, `rawtls.${DOMAIN}:${port}`, { path: '/over-tls' });
    expect(r.body).toBe('raw app saw /over-tls');
  });

  it('splices a visitor WebSocket (wss) to an app behind a reversed HTTP/1.1 channel', async () => {
    const { port } = await startTlsGateway();
    const server = http.createServer((_req, res) => res.end('plain'));
    const wss = new WebSocketServer({ server });
    wss.on('connection', (ws) => ws.on('message', (m: Buffer) => ws.send(`echo ${m.toString()}`)));
    await startTlsApp(port, server, { name: 'wsapp', http1: true });
    const ws = new WebSocket(`wss://127.0.0.1:${port}/`, {
      headers: { host: `wsapp.${DOMAIN}:${port}` },
      servername: `wsapp.${DOMAIN}`,
      ca: cert.cert,
    } as ClientOptions);
    cleanup(() => ws.terminate());
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    ws.send('ping');
    const msg = await new Promise<string>((resolve) => ws.once('message', (m: Buffer) => resolve(m.toString())));
    expect(msg).toBe('echo ping');
  });

  it('closes a plain-HTTP connection to the HTTPS port and keeps serving', async () => {
    const { port } = await startTlsGateway();
    await startTlsApp(port, echo, { name: 'stays' });
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => {});
    s.write('GET / HTTP/1.1\r\nHost: stays.tls.localhost\r\n\r\n');
    const got = await readUntil(s, () => false, 2_000);
    expect(got.toString('latin1')).not.toContain('HTTP/1.1 200');
    expect(s.destroyed || s.readableEnded).toBe(true);
    expect((await get(port, `stays.${DOMAIN}:${port}`)).status).toBe(200);
  });

  it.each([
    ['sends nothing', ''],
    ['sends half a ClientHello', '\x16\x03\x01\x02\x00\x01'],
  ])(
    'a connection that %s is closed within --headers-timeout, as on plain HTTP (slowloris on the handshake)',
    async (_label, bytes) => {
      const { port } = await startTlsGateway({ headersTimeout: 300 });
      const s = await rawConnect(port);
      s.on('error', () => {});
      cleanup(() => s.destroy());
      if (bytes) s.write(bytes);
      expect(await closed(s, 3_000)).toBe(true);
    },
  );

  it('setTls swaps the certificate for new connections; a bad pair is refused and the old one kept', async () => {
    const { gateway, port } = await startTlsGateway();
    expect(await peerCn(port)).toBe('first');
    gateway.setTls({ cert: other.cert, key: other.key });
    expect(await peerCn(port)).toBe('second');
    expect(() => gateway.setTls({ cert: Buffer.from('not a pem'), key: other.key })).toThrow();
    expect(() => gateway.setTls({ cert: cert.cert, key: other.key })).toThrow();
    expect(await peerCn(port)).toBe('second');
  });

  it('setTls on a gateway without TLS throws a clear error', async () => {
    const gateway = createGateway({ ...FAST });
    expect(gateway.secure).toBe(false);
    expect(() => gateway.setTls({ cert: cert.cert, key: cert.key })).toThrow(/without TLS/);
  });
});

describe('the CLI over TLS', () => {
  const procs: Spawned[] = [];
  const servers: http.Server[] = [];
  afterEach(() => {
    for (const p of procs.splice(0)) p.kill('SIGKILL');
    for (const s of servers.splice(0)) s.close();
  });
  const cli = (args: string[], env?: NodeJS.ProcessEnv): Spawned => {
    const p = spawnCli(args, env);
    procs.push(p);
    return p;
  };

  async function serveTls(certPath: string, keyPath: string): Promise<{ p: Spawned; port: number }> {
    const p = cli([
      'serve',
      '--port',
      '0',
      '--host',
      '127.0.0.1',
      '--domain',
      DOMAIN,
      '--tls-cert',
      certPath,
      '--tls-key',
      keyPath,
    ]);
    const m = await p.waitFor(/listening on 127\.0\.0\.1:(\d+) \(HTTPS\)/);
    await p.waitFor(/expose an app/);
    return { p, port: Number(m[1]) };
  }

  async function backend(): Promise<number> {
    const s = http.createServer((req, res) => res.end(`local ${req.url}`));
    servers.push(s);
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    return (s.address() as AddressInfo).port;
  }

  it('serve --tls-cert/--tls-key prints https URLs; connect verifies the certificate (trusted CA, refused, --insecure)', async () => {
    const { p, port } = await serveTls(cert.certPath, cert.keyPath);
    expect(p.output()).toContain(`status page:   https://${DOMAIN}:${port}/`);
    expect(p.output()).toContain(`apps served at https://NAME.${DOMAIN}:${port}/`);
    const local = await backend();
    const gw = `https://127.0.0.1:${port}`;

    const untrusted = cli(['connect', String(local), '--gateway', gw, '--name', 'untrusted']);
    await untrusted.waitFor(/self[- ]signed certificate|unable to verify|certificate/i, 8_000);
    expect(untrusted.output()).not.toContain('Forwarding');

    const trusted = cli(['connect', String(local), '--gateway', gw, '--name', 'trusted'], {
      NODE_EXTRA_CA_CERTS: cert.certPath,
    });
    await trusted.waitFor(/Forwarding https:\/\/trusted\.tls\.localhost:\d+\/ -> http:\/\/localhost:\d+/, 8_000);
    expect((await get(port, `trusted.${DOMAIN}:${port}`, { path: '/a' })).body).toBe('local /a');

    const insecure = cli(['connect', String(local), '--gateway', gw, '--name', 'insecure', '--insecure']);
    await insecure.waitFor(/Forwarding https:\/\/insecure\.tls\.localhost/, 8_000);
    expect((await get(port, `insecure.${DOMAIN}:${port}`, { path: '/b' })).body).toBe('local /b');
  });

  it('SIGHUP reloads the certificate files; a broken file keeps the old certificate', async () => {
    const dir = cert.dir;
    const certPath = `${dir}/live-cert.pem`;
    const keyPath = `${dir}/live-key.pem`;
    copyFileSync(cert.certPath, certPath);
    copyFileSync(cert.keyPath, keyPath);
    const { p, port } = await serveTls(certPath, keyPath);
    expect(await peerCn(port)).toBe('first');
    copyFileSync(other.certPath, certPath);
    copyFileSync(other.keyPath, keyPath);
    p.kill('SIGHUP');
    await p.waitFor(/SIGHUP: reloaded the TLS certificate/);
    expect(await peerCn(port)).toBe('second');
    copyFileSync(cert.certPath, certPath); // cert and key no longer match
    p.kill('SIGHUP');
    await p.waitFor(/TLS reload failed, keeping the old certificate/);
    expect(await peerCn(port)).toBe('second');
    await until(() => p.child.exitCode === null);
  });

  it('serve refuses --tls-cert without --tls-key, and an unreadable file, with exit code 2', async () => {
    const a = cli(['serve', '--port', '0', '--tls-cert', cert.certPath]);
    expect(await a.exited()).toBe(2);
    expect(a.output()).toContain('--tls-cert and --tls-key go together');
    const b = cli(['serve', '--port', '0', '--tls-cert', '/nonexistent/cert.pem', '--tls-key', cert.keyPath]);
    expect(await b.exited()).toBe(2);
    expect(b.output()).toContain('cannot read TLS certificate /nonexistent/cert.pem');
  });
});
