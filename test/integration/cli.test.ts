import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { hashKey } from '../../src/table/access.js';
import { headEnd, rawConnect, readUntil, request } from '../helpers/index.js';
import { spawnCli, type Spawned } from '../helpers/spawn.js';

const procs: Spawned[] = [];
const servers: http.Server[] = [];
const sockets: Socket[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  for (const p of procs.splice(0)) p.kill('SIGKILL');
  for (const s of servers.splice(0)) s.close();
});

function cli(args: string[]): Spawned {
  const p = spawnCli(args);
  procs.push(p);
  // The helper's exited() resolves at 'exit', when the last output may still be in the pipes; tests here read
  // the output after the exit, so theirs waits for 'close' too (the child's stdout and stderr have ended).
  const closed = new Promise<void>((resolve) => p.child.once('close', () => resolve()));
  return { ...p, exited: async () => (await Promise.all([p.exited(), closed]))[0] };
}

async function serve(extra: string[] = []): Promise<{ p: Spawned; port: number }> {
  const p = cli(['serve', '--port', '0', '--host', '127.0.0.1', ...extra]);
  const m = await p.waitFor(/listening on 127\.0\.0\.1:(\d+)/);
  // The banner's last line, whole: each line is its own write, and may arrive in its own chunk.
  await p.waitFor(/\n {2}access: +[^\n]+\n/);
  return { p, port: Number(m[1]) };
}

/** A raw PTTH/1.0 app for `name` that answers its first request with garbage: the visitor gets 502. */
async function badGateway(port: number, name: string): Promise<number> {
  const app = await rawConnect(port);
  app.on('error', () => {});
  try {
    const head = [
      `POST /?name=${name} HTTP/1.1`,
      `Host: localhost:${port}`,
      'Upgrade: PTTH/1.0',
      'Connection: Upgrade',
    ];
    app.write(`${head.join('\r\n')}\r\nContent-Length: 0\r\n\r\n`);
    expect((await readUntil(app, headEnd)).toString('latin1')).toMatch(/^HTTP\/1\.1 101 /);
    const visit = request(port, { host: `${name}.localhost:${port}` });
    await readUntil(app, headEnd);
    app.write('GARBAGE\r\n\r\n');
    return (await visit).status;
  } finally {
    app.destroy();
  }
}

/**
 * A port nothing listens on, held so that nothing else can start listening there meanwhile: the
 * local end of a connection this test keeps open (Linux will not bind a listener to it). Freeing a
 * port and hoping it stays free would race with every other process on the machine.
 */
async function refusingPort(): Promise<number> {
  const s = await rawConnect(await backend(() => {}));
  s.on('error', () => {});
  sockets.push(s);
  return s.localPort as number;
}

/**
 * `serve` on a given port that was in use moments ago; retried (a bounded number of times) while
 * something else holds it: the kernel may have handed it out to another process's socket meanwhile.
 */
async function serveOn(port: number): Promise<Spawned> {
  for (let attempt = 1; ; attempt++) {
    const p = cli(['serve', '--port', String(port), '--host', '127.0.0.1']);
    const up = await p.waitFor(/listening on/, 10_000).then(
      () => true,
      () => false,
    );
    if (up) return p;
    if (p.child.exitCode !== null) await p.exited(); // all of its output read before looking for the reason
    const taken = /cannot listen on port .*EADDRINUSE/.test(p.output());
    if (attempt >= 20 || !taken) throw new Error(`serve did not start:\n${p.output()}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function backend(handler: http.RequestListener): Promise<number> {
  const s = http.createServer(handler);
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return (s.address() as AddressInfo).port;
}

describe('ptth-proxy CLI', () => {
  it('serve prints where it listens and how to connect, and serves its status page', async () => {
    const { p, port } = await serve();
    expect(p.output()).toContain(`status page:   http://localhost:${port}/`);
    expect(p.output()).toContain(`apps served at http://NAME.localhost:${port}/`);
    expect(p.output()).toContain(`npx ptth-proxy connect 3000 --gateway http://localhost:${port}`);
    const r = await request(port, { host: `localhost:${port}` });
    expect(r.status).toBe(200);
    expect(r.body).toContain('<h1>ptth-proxy</h1>');
  });

  it('serve logs one JSON line per visitor request by default, and none for non-5xx with --quiet', async () => {
    const { p, port } = await serve();
    expect((await request(port, { host: `nobody.localhost:${port}`, path: '/x?secret=1' })).status).toBe(404);
    const line = (await p.waitFor(/\{[^\n]*"event":"request"[^\n]*\}/))[0];
    expect(JSON.parse(line)).toMatchObject({
      level: 30,
      event: 'request',
      name: 'nobody',
      method: 'GET',
      path: '/x',
      status: 404,
      error: 'PTTH_ERR_NOT_FOUND',
    });
    expect(line).not.toContain('secret');
    const quiet = await serve(['--quiet']);
    const miss = await request(quiet.port, { host: `nobody.localhost:${quiet.port}`, path: '/quiet-404' });
    expect(miss.status).toBe(404);
    // Then a 5xx, which --quiet still logs: once its line is out, the 404's would have been too.
    expect(await badGateway(quiet.port, 'broken')).toBe(502);
    const warn = (await quiet.p.waitFor(/\{[^\n]*"event":"request"[^\n]*\}\n/))[0];
    expect(JSON.parse(warn)).toMatchObject({ level: 40, event: 'request', name: 'broken', status: 502 });
    expect(quiet.p.output()).not.toContain('/quiet-404');
    expect(quiet.p.output().match(/"event":"request"/g)).toHaveLength(1);
  });

  it('connect exposes a local service end to end, and Ctrl-C exits 0 and releases the name', async () => {
    const { p: gw, port } = await serve();
    const local = await backend((req, res) => res.end(`local saw ${req.method} ${req.url} host=${req.headers.host}`));
    const c = cli([
      'connect',
      String(local),
      '--gateway',
      `http://127.0.0.1:${port}`,
      '--name',
      'cli-demo',
      '--connections',
      '2',
    ]);
    await c.waitFor(/Forwarding http:\/\/cli-demo\.localhost:\d+\/ -> http:\/\/localhost:\d+/);
    const r = await request(port, { host: `cli-demo.localhost:${port}`, path: '/path?q=1' });
    expect(r.body).toBe(`local saw GET /path?q=1 host=cli-demo.localhost:${port}`);
    await gw.waitFor(/"event":"claim","name":"cli-demo","transport":"http1"/);
    c.kill('SIGINT');
    expect(await c.exited()).toBe(0);
    await gw.waitFor(/"event":"release","name":"cli-demo","reason":"deleted"/);
    expect((await request(port, { host: `cli-demo.localhost:${port}` })).status).toBe(404);
  });

  it('connect over reversed HTTP/2 (the default) and over --http1 both honour --rewrite-host and a base path', async () => {
    const { port } = await serve();
    const local = await backend((req, res) => res.end(`${req.url} host=${req.headers.host}`));
    for (const [name, extra] of [
      ['rw2', []],
      ['rw1', ['--http1']],
    ] as const) {
      const c = cli([
        'connect',
        `http://127.0.0.1:${local}/base`,
        '--gateway',
        `http://127.0.0.1:${port}`,
        '--name',
        name,
        '--rewrite-host',
        ...extra,
      ]);
      await c.waitFor(new RegExp(`Forwarding .* \\(reversed HTTP/${extra.length ? '1\\.1' : '2'}\\)`));
      const r = await request(port, { host: `${name}.localhost:${port}`, path: '/x?y=1' });
      expect(r.body).toBe(`/base/x?y=1 host=127.0.0.1:${local}`);
    }
  });

  it('connect answers 502 with a clear body when the local service is down', async () => {
    const { port } = await serve();
    const dead = await refusingPort();
    const c = cli(['connect', `http://127.0.0.1:${dead}`, '--gateway', `http://127.0.0.1:${port}`, '--name', 'down']);
    await c.waitFor(/Forwarding/);
    const r = await request(port, { host: `down.localhost:${port}` });
    expect(r.status).toBe(502);
    expect(r.body).toContain(`could not reach http://127.0.0.1:${dead} (ECONNREFUSED)`);
  });

  it('connect survives a gateway restart by reconnecting', async () => {
    const first = await serve();
    const port = first.port;
    const local = await backend((_req, res) => res.end('back'));
    const c = cli([
      'connect',
      String(local),
      '--gateway',
      `http://127.0.0.1:${port}`,
      '--name',
      'again',
      '--token',
      't0k',
    ]);
    await c.waitFor(/Forwarding/);
    first.p.kill('SIGTERM');
    expect(await first.p.exited()).toBe(0);
    await c.waitFor(/lost the gateway; reconnecting/);
    await serveOn(port);
    await c.waitFor(/back online/, 10_000);
    const r = await request(port, { host: `again.localhost:${port}` });
    expect(r.status).toBe(200);
    expect(r.body).toBe('back');
  }, 30_000);

  it('connect exits 3 with the reason when the name is held under another token', async () => {
    const { port } = await serve();
    const local = await backend((_req, res) => res.end('x'));
    const a = cli([
      'connect',
      String(local),
      '--gateway',
      `http://127.0.0.1:${port}`,
      '--name',
      'mine',
      '--token',
      'a',
    ]);
    await a.waitFor(/Forwarding/);
    const b = cli([
      'connect',
      String(local),
      '--gateway',
      `http://127.0.0.1:${port}`,
      '--name',
      'mine',
      '--token',
      'b',
    ]);
    expect(await b.exited()).toBe(3);
    expect(b.output()).toMatch(/403 .*held under another token/);
  });

  it('rejects bad arguments with a message and exit code 2', async () => {
    const badPort = cli(['serve', '--port', 'eighty']);
    expect(await badPort.exited()).toBe(2);
    expect(badPort.output()).toContain('expected a whole number');
    const badDomain = cli(['serve', '--port', '0', '--domain', 'no spaces']);
    expect(await badDomain.exited()).toBe(2);
    expect(badDomain.output()).toContain('domain must be a DNS name');
    const badTarget = cli(['connect', 'ftp://x']);
    expect(await badTarget.exited()).toBe(2);
    expect(badTarget.output()).toContain('only http and https services');
  });

  // Commander's own checks exit 1 unless the CLI maps them: every usage error of every command exits 2.
  it.each([
    [['serve', '--port', '99999'], /argument '99999' is invalid/],
    [['serve', '--port', 'abc'], /argument 'abc' is invalid/],
    [['serve', '--no-such-option'], /unknown option '--no-such-option'/],
    [['serve', '--claim-rate', '5/x'], /argument '5\/x' is invalid/],
    [['serve', '--log-format', 'xml'], /Allowed choices are/],
    [['connect', '3000', '--lease', '-5'], /argument '-5' is invalid/],
    [['connect', '3000', '--connections', '0'], /argument '0' is invalid/],
    [['connect'], /missing required argument 'target'/],
    [['connect', '3000', '--no-such-option'], /unknown option/],
    [['key', '--max-names', '-1'], /argument '-1' is invalid/],
    [['key', '--max-channels', 'x'], /argument 'x' is invalid/],
    [['no-such-command'], /unknown command 'no-such-command'/],
    [[], /Usage: ptth-proxy/],
  ])('usage error %j exits 2 with a message', async (args, message) => {
    const p = cli(args);
    expect(await p.exited()).toBe(2);
    expect(p.output()).toMatch(message);
  });

  const informational = [['--help'], ['--version'], ['serve', '--help'], ['connect', '--help'], ['key', '--help']];
  it.each([...informational, ['help', 'serve']])('%j exits 0', async (...args) => {
    const p = cli(args);
    expect(await p.exited()).toBe(0);
    expect(p.output()).toMatch(args[0] === '--version' ? /^\d+\.\d+\.\d+\n$/ : /^Usage: ptth-proxy/);
  });

  it('serve --no-http2 answers a ptth+h2 offer (connect --http2) with PTTH/1.0, and connect then serves over HTTP/1.1', async () => {
    const { port } = await serve(['--no-http2']);
    const local = await backend((_req, res) => res.end('over h1'));
    const c = cli(['connect', String(local), '--gateway', `http://127.0.0.1:${port}`, '--name', 'noh2', '--http2']);
    await c.waitFor(/Forwarding .* \(reversed HTTP\/1\.1\)/);
    expect((await request(port, { host: `noh2.localhost:${port}` })).body).toBe('over h1');
  });

  it('serve exits 1 with a message when the port is taken', async () => {
    const { port } = await serve();
    const again = cli(['serve', '--port', String(port), '--host', '127.0.0.1']);
    expect(await again.exited()).toBe(1);
    expect(again.output()).toContain(`cannot listen on port ${port}`);
  });
});

describe("the README's start-up sample", () => {
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
    scripts: Record<string, string>;
  };

  /** The parts that vary from run to run or machine to machine, made alike. */
  const normalise = (text: string, port: string): string =>
    text
      .replace(/\x1b\[[0-9;]*m/g, '')
      .replace(new RegExp(`\\b${port}\\b`, 'g'), 'PORT')
      .replace(/(?<=ptth-proxy[ @])\d+\.\d+\.\d+/g, 'VERSION')
      .replace(/^\[\d\d:\d\d:\d\d\.\d{3}\]/gm, '[TIME]')
      // A machine without IPv6 binds the default host on 0.0.0.0 instead of ::.
      .replace('listening on 0.0.0.0:', 'listening on [::]:')
      .replace(/(bound to |listening on |"address":")0\.0\.0\.0/g, '$1::');

  it('is what `npm start` prints, line for line, in the same order', async () => {
    const block = /```console\n\$ npm start\n([\s\S]*?)```/.exec(readme)?.[1];
    expect(block, 'README has a console block for `$ npm start`').toBeDefined();
    const lines = normalise(block ?? '', '8080').split('\n');
    // npm's own echo of the script, then the program's lines.
    expect(lines.slice(0, 4)).toEqual(['', '> ptth-proxy@VERSION start', `> ${pkg.scripts['start'] ?? ''}`, '']);
    expect(pkg.scripts['start']).toMatch(/ node bin\/ptth-proxy\.js serve$/);
    const sample = lines.slice(4, -1);
    const warning = sample.findIndex((l) => l.startsWith('WARNING:'));
    expect(warning).toBeGreaterThan(0);
    // On stderr, written between the start-up lines and the log (a terminal shows them in that order).
    expect(sample[warning - 1]).toMatch(/^ {2}access: /);
    const warningEnd = warning + 1 + sample.slice(warning + 1).findIndex((l) => !l.startsWith('  '));

    // The defaults, as `npm start` runs them, on a port of the kernel's choosing; pretty log lines as in a
    // terminal. stdout and stderr apart: which of two pipes the test reads first is not the program's order.
    const p = cli(['serve', '--port', '0', '--log-format', 'pretty']);
    let stdout = '';
    let stderr = '';
    p.child.stdout?.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    p.child.stderr?.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    const port = (await p.waitFor(/gateway listening on \S+:(\d+)/))[1] ?? '';
    // The last line of the sample is the log's first: everything before it is out once it is.
    await p.waitFor(/INFO: listening on [^\n]*\n/);
    await p.waitFor(/--host\.\n/);
    expect(normalise(stdout, port).split('\n').slice(0, -1)).toEqual([
      ...sample.slice(0, warning),
      ...sample.slice(warningEnd),
    ]);
    expect(normalise(stderr, port).split('\n').slice(0, -1)).toEqual(sample.slice(warning, warningEnd));
  });
});

describe('serve: keys, reserved names, admin port and log format from the command line', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const tmp = (): string => {
    const d = mkdtempSync(join(tmpdir(), 'ptth-cli-'));
    dirs.push(d);
    return d;
  };
  const keyFile = (dir: string, key: string): string => {
    const file = join(dir, 'keys.json');
    writeFileSync(file, JSON.stringify({ keys: [{ id: 'k', sha256: hashKey(key), names: ['*'] }] }));
    return file;
  };
  /** A raw PTTH/1.0 claim; resolves with the status of the answer. */
  const claim = async (port: number, name: string, key?: string): Promise<number> => {
    const s = await rawConnect(port);
    s.on('error', () => {});
    s.write(
      `POST /?name=${name} HTTP/1.1\r\nHost: localhost:${port}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n${key ? `Authorization: Bearer ${key}\r\n` : ''}Content-Length: 0\r\n\r\n`,
    );
    const head = (await readUntil(s, headEnd)).toString('latin1');
    s.destroy();
    return Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0);
  };

  it('--keys and --reserved hold every claim to the keys; SIGHUP reloads the file, and a broken one keeps the old keys', async () => {
    const file = keyFile(tmp(), 'ptth_first-key-0123456789abcdef');
    const { p, port } = await serve(['--keys', file, '--reserved', 'www,admin']);
    expect(p.output()).toContain('access:        access keys required to claim');
    expect(await claim(port, 'app1')).toBe(401);
    expect(await claim(port, 'www', 'ptth_first-key-0123456789abcdef')).toBe(403);
    expect(await claim(port, 'app1', 'ptth_first-key-0123456789abcdef')).toBe(101);

    keyFile(dirname(file), 'ptth_second-key-0123456789abcdef');
    p.kill('SIGHUP');
    await p.waitFor(/SIGHUP: reloaded the access keys/);
    expect(await claim(port, 'app2', 'ptth_first-key-0123456789abcdef')).toBe(401);
    expect(await claim(port, 'app2', 'ptth_second-key-0123456789abcdef')).toBe(101);

    writeFileSync(file, '{"keys": [ not json');
    p.kill('SIGHUP');
    await p.waitFor(/SIGHUP: keys reload failed, keeping the old keys/);
    expect(await claim(port, 'app3', 'ptth_second-key-0123456789abcdef')).toBe(101);
  });

  it('a keys file that does not load stops serve with exit code 2 and says why', async () => {
    const file = join(tmp(), 'keys.json');
    writeFileSync(file, '{"keys": [{"id": "x"}]}');
    const p = cli(['serve', '--port', '0', '--host', '127.0.0.1', '--keys', file]);
    expect(await p.exited()).toBe(2);
    expect(p.output()).toContain(file);
  });

  it('--admin-port serves /metrics, /healthz and /readyz there, and /metrics leaves the public port', async () => {
    const { p, port } = await serve(['--admin-port', '0']);
    const admin = Number((await p.waitFor(/admin: +http:\/\/127\.0\.0\.1:(\d+)\/metrics/))[1]);
    const metrics = await request(admin, { path: '/metrics' });
    expect(metrics.status).toBe(200);
    expect(metrics.body).toContain('ptth_registrations');
    expect((await request(admin, { path: '/healthz' })).body).toContain('ok');
    expect((await request(admin, { path: '/readyz' })).status).toBe(200);
    expect((await request(port, { host: `localhost:${port}`, path: '/metrics' })).status).toBe(404);
  });

  it('--log-format pretty writes human-readable lines instead of JSON', async () => {
    const { p, port } = await serve(['--log-format', 'pretty']);
    await request(port, { host: `nobody.localhost:${port}`, path: '/pretty' });
    await p.waitFor(/INFO.*GET \/pretty 404/);
    expect(p.output()).not.toContain('"event":');
  });
});
