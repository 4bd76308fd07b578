import { spawn } from 'node:child_process';
import * as http from 'node:http';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { RequestEvent } from '../../src/gateway/eventmap.js';
import { attachLogger, createLogger, LOG_BATCH } from '../../src/log.js';
import { request, startApp, until } from '../helpers/index.js';
import { cleanup, useGateway } from '../helpers/fixture.js';
import { spawnCli, type Spawned } from '../helpers/spawn.js';

/*
 * The access log's cheap path: a `request` line is built as one string and
 * written straight to the logger's stream, and stdout gets its lines in batches, flushed by a
 * timer and on exit. Consumers parse these lines: they must stay exactly what pino writes for the
 * same fields, and no line may be lost or held back for long.
 */

// Gateways and apps close through the fixture's hooks, which run after afterEach: a killed
// `serve` process is gone before the apps connected to it close.
const procs: Spawned[] = [];
afterEach(() => {
  for (const p of procs.splice(0)) p.kill('SIGKILL');
});

/** Every string a destination receives, in order. */
function collect(): { out: string[]; write(s: string): void } {
  const out: string[] = [];
  return { out, write: (s: string) => void out.push(s) };
}

/** A line with its `time` value replaced, so that lines logged a millisecond apart compare. */
const untimed = (line: string): string => line.replace(/^(\{"level":\d+,"time":)\d+,/, '$1T,');

/**
 * The line pino itself makes for a request event: a plain pino logger (not one createLogger made)
 * takes attachLogger's general path, `logger.info(fields, msg)`.
 */
function pinoLines(): { out: string[]; logger: pino.Logger } {
  const dest = collect();
  return { out: dest.out, logger: pino({ level: 'info' }, dest) };
}

describe('request lines', () => {
  it('are byte for byte the lines pino writes for the same fields, whatever the strings hold', async () => {
    const gw = await useGateway();
    const fast = collect();
    attachLogger(gw.gateway, createLogger({ destination: fast }));
    const reference = pinoLines();
    attachLogger(gw.gateway, reference.logger);
    // Strings as node's parser hands them over (latin1: one char per byte), with everything JSON
    // escapes: quotes, backslashes, control characters, bytes above 0x7f, and a path past the
    // length where pino switches from its own escaping to JSON.stringify.
    const events: RequestEvent[] = [
      {
        name: 'app',
        method: 'GET',
        url: '/',
        path: '/',
        status: 200,
        ms: 1.23456,
        bytesIn: 0,
        bytesOut: 11,
        remote: '127.0.0.1',
        error: undefined,
      },
      {
        name: 'app',
        method: 'POST',
        url: '/q"uo\\te?x=1',
        path: '/q"uo\\te',
        status: 201,
        ms: 0.005,
        bytesIn: 42,
        bytesOut: 0,
        remote: '::1',
        error: undefined,
      },
      {
        name: 'caf\u00e9',
        method: 'GET',
        url: '/\u0001\u001f\u007f\u00ff',
        path: '/\u0001\u001f\u007f\u00ff',
        status: 404,
        ms: 12,
        bytesIn: 0,
        bytesOut: 70,
        remote: '10.0.0.1',
        error: 'PTTH_ERR_NOT_FOUND',
      },
      {
        name: 'app',
        method: 'GET',
        url: `/${'long/'.repeat(40)}"`,
        path: `/${'long/'.repeat(40)}"`,
        status: 502,
        ms: 2999.999,
        bytesIn: 0,
        bytesOut: 0,
        remote: '127.0.0.1',
        error: 'PTTH_ERR_BAD_RESPONSE',
      },
      {
        name: 'app',
        method: 'GET',
        url: '/gone',
        path: '/gone',
        status: 0,
        ms: 0.1,
        bytesIn: 0,
        bytesOut: 0,
        remote: '127.0.0.1',
        error: 'PTTH_ERR_VISITOR_GONE',
      },
      {
        name: 'app',
        method: 'PUT',
        url: '/x',
        path: '/x',
        status: 599,
        ms: 1e-7,
        bytesIn: 1,
        bytesOut: 2,
        remote: '127.0.0.1',
        error: undefined,
      },
    ];
    for (const e of events) gw.gateway.emit('request', e);
    expect(fast.out).toHaveLength(events.length);
    expect(fast.out.map(untimed)).toEqual(reference.out.map(untimed));
    // And what a consumer parses: field names and order, levels (warn from 500), msg.
    const first = JSON.parse(fast.out[0] as string) as Record<string, unknown>;
    expect(Object.keys(first)).toEqual([
      'level',
      'time',
      'pid',
      'hostname',
      'event',
      'name',
      'method',
      'path',
      'status',
      'bytesIn',
      'bytesOut',
      'ms',
      'remote',
      'msg',
    ]);
    expect(first).toMatchObject({ level: 30, pid: process.pid, event: 'request', ms: 1.23, msg: 'GET / 200' });
    const levels = fast.out.map((l) => (JSON.parse(l) as { level: number }).level);
    expect(levels).toEqual([30, 30, 30, 40, 30, 40]);
    expect(JSON.parse(fast.out[2] as string)).toMatchObject({
      name: 'caf\u00e9',
      path: '/\u0001\u001f\u007f\u00ff',
      error: 'PTTH_ERR_NOT_FOUND',
    });
  });

  it("match pino's for real requests through a real app, and honour the logger's level", async () => {
    const gw = await useGateway();
    const fast = collect();
    attachLogger(gw.gateway, createLogger({ destination: fast }));
    const warnOnly = collect();
    attachLogger(gw.gateway, createLogger({ destination: warnOnly, level: 'warn' }));
    const reference = pinoLines();
    attachLogger(gw.gateway, reference.logger);
    const tunnel = await startApp(
      gw.port,
      (req, res) => {
        req.resume();
        if (req.url === '/fail') res.writeHead(503).end('down');
        else res.end('hello');
      },
      { name: 'real' },
    );
    cleanup(() => tunnel.close());
    expect(
      (await request(gw.port, { host: gw.host('real'), method: 'POST', path: '/a?secret=1', body: 'body' })).status,
    ).toBe(200);
    expect((await request(gw.port, { host: gw.host('real'), path: '/fail' })).status).toBe(503);
    expect((await request(gw.port, { host: gw.host('nobody'), path: '/n' })).status).toBe(404);
    await until(
      () => reference.out.filter((l) => l.includes('"event":"request"')).length === 3,
      3_000,
      'three request lines',
    );
    const requests = (out: string[]): string[] => out.filter((l) => l.includes('"event":"request"')).map(untimed);
    expect(requests(fast.out)).toEqual(requests(reference.out));
    expect(requests(fast.out).join('')).not.toContain('secret');
    // A logger at warn writes the 5xx line only.
    expect(requests(warnOnly.out)).toHaveLength(1);
    expect(JSON.parse(requests(warnOnly.out)[0]?.replace(',"time":T,', ',') as string)).toMatchObject({
      level: 40,
      status: 503,
      path: '/fail',
    });
  });

  it("go through pino when the destination needs each line's level (a multistream)", async () => {
    const gw = await useGateway();
    const info: string[] = [];
    const warn: string[] = [];
    const sink = (to: string[]): Writable =>
      new Writable({
        write: (c: Buffer, _e, cb) => {
          to.push(c.toString());
          cb();
        },
      });
    const multi = pino.multistream([
      { level: 'info', stream: sink(info) },
      { level: 'warn', stream: sink(warn) },
    ]);
    attachLogger(gw.gateway, createLogger({ destination: multi }));
    const ev = {
      name: 'm',
      method: 'GET',
      url: '/',
      path: '/',
      ms: 1,
      bytesIn: 0,
      bytesOut: 0,
      remote: '127.0.0.1',
      error: undefined,
    };
    gw.gateway.emit('request', { ...ev, status: 200 });
    gw.gateway.emit('request', { ...ev, status: 500 });
    await until(() => info.length === 2, 3_000, 'both lines');
    expect(warn).toHaveLength(1);
    expect(JSON.parse(warn[0] as string)).toMatchObject({ level: 40, status: 500 });
  });
});

describe('serve writes its log in batches', () => {
  async function serve(args: string[] = []): Promise<{ p: Spawned; port: number }> {
    const p = spawnCli(['serve', '--port', '0', '--host', '127.0.0.1', '--log-format', 'json', ...args]);
    procs.push(p);
    const m = await p.waitFor(/listening on 127\.0\.0\.1:(\d+)/);
    await p.waitFor(/"event":"listening"/);
    return { p, port: Number(m[1]) };
  }

  const lineOf = (_p: Spawned, path: string): RegExp =>
    new RegExp(`\\{"level":30,[^\\n]*"event":"request"[^\\n]*"path":"${path}"[^\\n]*\\}\\n`);

  it("a quiet gateway's one line, far short of a batch, still shows (the flush timer)", async () => {
    const { p, port } = await serve();
    expect((await request(port, { host: `nobody.localhost:${port}`, path: '/lonely' })).status).toBe(404);
    const line = (await p.waitFor(lineOf(p, '/lonely')))[0];
    expect(line.length).toBeLessThan(LOG_BATCH);
    expect(JSON.parse(line)).toMatchObject({ event: 'request', status: 404, error: 'PTTH_ERR_NOT_FOUND' });
  });

  it('many lines arrive whole and in order', async () => {
    const { p, port } = await serve();
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      for (let i = 0; i < 300; i++) await request(port, { host: `nobody.localhost:${port}`, path: `/n${i}`, agent });
    } finally {
      agent.destroy();
    }
    await p.waitFor(lineOf(p, '/n299'));
    const paths = p
      .output()
      .split('\n')
      .filter((l) => l.includes('"event":"request"'))
      .map((l) => (JSON.parse(l) as { path: string }).path);
    expect(paths).toEqual(Array.from({ length: 300 }, (_, i) => `/n${i}`));
  });

  it("keeps serving once stdout's reader is gone for good (EPIPE)", async () => {
    const { p, port } = await serve();
    p.child.stdout?.destroy();
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      // Past a batch of lines: writes to the closed pipe fail, and the next lines have nowhere to go.
      for (let i = 0; i < 80; i++)
        expect((await request(port, { host: `nobody.localhost:${port}`, path: `/p${i}`, agent })).status).toBe(404);
      expect((await request(port, { path: '/healthz', agent })).status).toBe(200);
    } finally {
      agent.destroy();
    }
    expect(p.child.exitCode).toBeNull();
    p.kill('SIGTERM');
    expect(await p.exited()).toBe(0);
  });

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    it(`the last request line before ${signal} reaches stdout`, async () => {
      const { p, port } = await serve();
      expect((await request(port, { host: `nobody.localhost:${port}`, path: `/before-${signal}` })).status).toBe(404);
      p.kill(signal);
      expect(await p.exited()).toBe(0);
      const out = p.output();
      expect(out).toMatch(lineOf(p, `/before-${signal}`));
      // After it, the shutdown lines, all whole.
      expect(out.indexOf(`/before-${signal}`), out).toBeLessThan(out.indexOf('"msg":"closed"'));
      for (const l of out.split('\n')) if (l.startsWith('{')) JSON.parse(l);
    });
  }

  it('the last request line reaches stdout when a second signal ends a shutdown at once (process.exit)', async () => {
    const { p, port } = await serve(['--shutdown-grace', '20000']);
    // A request the app never answers keeps the shutdown waiting for its grace.
    let arrived = false;
    const tunnel = await startApp(port, () => void (arrived = true), { name: 'held' });
    cleanup(() => tunnel.close());
    expect((await request(port, { host: `nobody.localhost:${port}`, path: '/answered' })).status).toBe(404);
    const held = request(port, { host: `held.localhost:${port}`, path: '/held' }).catch(() => undefined);
    await until(() => arrived, 3_000, 'the held request at the app');
    p.kill('SIGTERM');
    await p.waitFor(/"event":"shutdown"/);
    p.kill('SIGTERM');
    expect(await p.exited()).toBe(1);
    await held;
    expect(p.output()).toMatch(lineOf(p, '/answered'));
  });
});

describe('logger on exit', () => {
  const LOG = fileURLToPath(new URL('../../dist/log.js', import.meta.url));
  /** Runs `script` with createLogger and attachLogger imported, stdout on a pipe; its output. */
  function run(script: string): Promise<{ code: number | null; out: string }> {
    return new Promise((resolve, reject) => {
      const child = spawn(
        process.execPath,
        [
          '--input-type=module',
          '-e',
          `import { EventEmitter } from 'node:events';\nimport { createLogger, attachLogger } from ${JSON.stringify(LOG)};\n${script}`,
        ],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      let out = '';
      child.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`the process did not exit by itself; output so far: ${out.slice(-200)}`));
      }, 10_000);
      child.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code, out });
      });
    });
  }
  const oneLine =
    'const g = new EventEmitter(); attachLogger(g, createLogger({ pretty: false }));\n' +
    "g.emit('request', { name: 'a', method: 'GET', url: '/last', path: '/last', status: 200, ms: 1, bytesIn: 0, bytesOut: 2, remote: '127.0.0.1', error: undefined });\n";

  it('a line logged just before process.exit is written (no timer tick in between)', async () => {
    const { code, out } = await run(`${oneLine}process.exit(3);`);
    expect(code).toBe(3);
    expect(JSON.parse(out)).toMatchObject({ event: 'request', path: '/last', msg: 'GET /last 200' });
  });

  it('a line logged as the process runs out of work is written, and the timer keeps nothing alive', async () => {
    const { code, out } = await run(oneLine);
    expect(code).toBe(0);
    expect(JSON.parse(out)).toMatchObject({ event: 'request', path: '/last' });
  });
});
