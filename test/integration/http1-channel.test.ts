/**
 * Reversed HTTP/1.1 channels (PTTH/1.0) over undici: keep-alive hints that must not close a
 * channel, the replay of a request whose channel closed under it, and the upgrade exchange's
 * single `done()` on every path. Apps here are raw sockets writing exact bytes.
 */
import * as net from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Http1Channel } from '../../src/channels/http1.js';
import type { UpgradeExchange } from '../../src/channels/channel.js';
import { PtthError } from '../../src/http/errors.js';
import {
  headEnd,
  rawClaim,
  rawConnect,
  readUntil,
  request,
  sleep,
  startGateway,
  until,
  type TestGateway,
} from '../helpers/index.js';

const OPTIONS = { responseTimeout: 1_000, queueTimeout: 500, reconnectWait: 300 };

let gw: TestGateway;
const sockets: net.Socket[] = [];
let seq = 0;
const fresh = (p: string): string => `${p}-${++seq}`;
const noop = (): void => {};

beforeAll(async () => {
  gw = await startGateway(OPTIONS);
});
afterEach(() => {
  for (const s of sockets.splice(0)) s.destroy();
});
afterAll(async () => {
  await gw.close();
});

/** One raw PTTH/1.0 channel of `name`, claimed byte for byte. */
async function claim(name: string): Promise<net.Socket> {
  const bytes = [
    `POST /?name=${name}&token=t HTTP/1.1`,
    `Host: localhost:${gw.port}`,
    'Upgrade: PTTH/1.0',
    'Connection: Upgrade',
    'Content-Length: 0',
    '',
    '',
  ].join('\r\n');
  const c = await rawClaim(gw.port, bytes);
  expect(c.head).toMatch(/^HTTP\/1\.1 101 /);
  c.socket.on('error', noop);
  sockets.push(c.socket);
  return c.socket;
}

/**
 * A raw app channel that answers each request head it reads with `answer(head)`; `answer` returns
 * the bytes to write, or 'close' to close the channel without a byte.
 */
function serve(socket: net.Socket, answer: (head: string) => string | 'close'): { heads: string[] } {
  const heads: string[] = [];
  let buf = '';
  socket.on('data', (d: Buffer) => {
    buf += d.toString('latin1');
    for (;;) {
      const end = buf.indexOf('\r\n\r\n');
      if (end === -1) return;
      const head = buf.slice(0, end);
      const length = /\r\ncontent-length: *(\d+)/i.exec(head);
      const total = end + 4 + (length ? Number(length[1]) : 0);
      if (buf.length < total) return;
      buf = buf.slice(total);
      heads.push(head);
      const a = answer(head);
      if (a === 'close') {
        socket.destroy();
        return;
      }
      socket.write(a);
    }
  });
  socket.resume();
  return { heads };
}

const ok = (body: string, extra = ''): string =>
  `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n${extra}\r\n${body}`;

function visit(name: string, path = '/', method = 'GET', body?: string) {
  return request(gw.port, { host: gw.host(name), path, method, ...(body !== undefined ? { body } : {}) });
}

interface StatusJson {
  registrations: { name: string; channels: { id: number }[] }[];
}

async function channelIds(name: string): Promise<number[]> {
  const r = await request(gw.port, { host: `localhost:${gw.port}`, path: '/?format=json' });
  const s = JSON.parse(r.body) as StatusJson;
  return s.registrations.find((x) => x.name === name)?.channels.map((c) => c.id) ?? [];
}

describe('keep-alive timers never close a channel', () => {
  // undici arms an idle timer from an app's `Keep-Alive: timeout=N` hint (N s minus a 2 s
  // threshold), and closes the connection after the response when that is not positive. Node
  // servers send `Keep-Alive: timeout=5` by default.
  it.each([
    ['timeout=1 (undici would close after the response)', 'timeout=1'],
    ['timeout=3 (undici would close after 1 s idle)', 'timeout=3'],
  ])('an app answering with Keep-Alive: %s keeps its channel past the hint', async (_label, hint) => {
    const name = fresh('ka');
    const app = serve(await claim(name), (head) =>
      ok(head.split(' ')[1] as string, `Keep-Alive: ${hint}, max=1000\r\n`),
    );
    expect((await visit(name, '/a')).status).toBe(200);
    const [id] = await channelIds(name);
    expect(id).toBeDefined();
    // The assertion is that nothing happens: one bounded wait past what undici would have armed.
    await sleep(1_300);
    expect(await channelIds(name)).toEqual([id]);
    const r = await visit(name, '/b');
    expect(r.status).toBe(200);
    expect(r.body).toBe('/b');
    // The same reversed connection carried both requests.
    expect(app.heads.map((h) => h.split(' ')[1])).toEqual(['/a', '/b']);
    expect(await channelIds(name)).toEqual([id]);
  });
});

describe('a channel that closes under a request', () => {
  /**
   * Two channels: whichever serves the first request closes (without a byte) on any later one,
   * as an app closing an idle connection while the gateway writes to it; the other answers.
   */
  async function twoChannels(
    name: string,
  ): Promise<{ closer: () => { heads: string[] } | undefined; other: () => { heads: string[] } | undefined }> {
    const socks = [await claim(name), await claim(name)];
    let first: number | undefined;
    const apps = socks.map((s, i) =>
      serve(s, (head) => {
        if (first === undefined) first = i;
        else if (first === i) return 'close';
        return ok(`channel ${i} ${head.split(' ')[1] as string}`);
      }),
    );
    await until(() => gw.gateway.table.lookup(name)?.channels.length === 2, 2_000, 'two channels');
    return {
      closer: () => (first === undefined ? undefined : apps[first]),
      other: () => (first === undefined ? undefined : apps[1 - first]),
    };
  }

  it('a bodyless GET is replayed once on another channel: the visitor gets 200', async () => {
    const name = fresh('retry');
    const { closer, other } = await twoChannels(name);
    expect((await visit(name, '/warm')).status).toBe(200);
    // Round robin sends one of the next requests down the closing channel; every visitor gets 200.
    for (let i = 0; i < 4 && closer()!.heads.length < 2; i++) {
      const r = await visit(name, `/r${i}`);
      expect(r.status).toBe(200);
      expect(r.body).toMatch(/^channel \d \/r\d$/);
    }
    expect(closer()!.heads.length).toBe(2);
    const dropped = closer()!.heads[1]!.split(' ')[1];
    // The request the closing channel dropped was answered by the other one.
    expect(other()!.heads.map((h) => h.split(' ')[1])).toContain(dropped);
    await until(() => gw.gateway.table.lookup(name)?.channels.length === 1, 2_000, 'the closed channel to go');
  });

  it.each([
    ['a POST with a body', 'POST', 'payload'],
    ['a bodyless POST (not idempotent)', 'POST', undefined],
  ])('%s is not replayed: 502 PTTH_ERR_CHANNEL_LOST', async (_label, method, body) => {
    const name = fresh('noretry');
    const { closer } = await twoChannels(name);
    expect((await visit(name, '/warm')).status).toBe(200);
    let lost = 0;
    for (let i = 0; i < 4 && closer()!.heads.length < 2; i++) {
      const r = await visit(name, `/p${i}`, method, body);
      if (closer()!.heads.length === 2) {
        expect(r.status).toBe(502);
        expect(r.headers['x-ptth-error']).toBe('PTTH_ERR_CHANNEL_LOST');
        lost++;
      } else expect(r.status).toBe(200);
    }
    expect(lost).toBe(1);
  });
});

describe('Http1Channel.upgrade calls done() exactly once on every path', () => {
  /** Both ends of a loopback TCP connection. */
  async function socketPair(): Promise<[net.Socket, net.Socket]> {
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
    const a = await rawConnect((server.address() as net.AddressInfo).port);
    const b = await accepted;
    server.close();
    for (const s of [a, b]) {
      s.on('error', noop);
      sockets.push(s);
    }
    return [a, b];
  }

  /** A channel over one end; the test writes the app's bytes on the other. */
  async function pair(): Promise<{ channel: Http1Channel; app: net.Socket }> {
    const [app, mine] = await socketPair();
    return { channel: new Http1Channel(mine, { responseTimeout: 300 }), app };
  }

  /** The visitor's connection: the gateway's end, and the visitor's own. */
  async function visitorPair(): Promise<{ visitor: net.Socket; peer: net.Socket }> {
    const [peer, visitor] = await socketPair();
    return { visitor, peer };
  }

  function exchange(visitor: net.Socket, check?: UpgradeExchange['check']) {
    const seen = { done: 0, failed: [] as string[] };
    const ex: UpgradeExchange = {
      req: { method: 'GET', url: '/ws', headers: { upgrade: 'websocket' } } as unknown as UpgradeExchange['req'],
      socket: visitor,
      head: Buffer.alloc(0),
      headers: ['Host', 'app.localhost', 'Connection', 'Upgrade', 'Upgrade', 'websocket'],
      fail: (err: PtthError) => {
        seen.failed.push(err.code);
      },
      check:
        check ??
        ((status, reason, headers) =>
          ({ status: status as number, reason: reason as string | undefined, headers: headers as string[] }) as never),
      done: () => {
        seen.done++;
      },
    };
    return { ex, seen };
  }

  it.each([
    ['the channel closes with no answer', (app: net.Socket) => app.destroy(), 'PTTH_ERR_CHANNEL_LOST'],
    ['garbage', (app: net.Socket) => app.write('GARBAGE\r\n\r\n'), 'PTTH_ERR_BAD_RESPONSE'],
    ['no answer (the response timeout)', () => {}, 'PTTH_ERR_APP_TIMEOUT'],
  ])('%s: fail, then done once', async (_label, answer, code) => {
    const { channel, app } = await pair();
    const { visitor } = await visitorPair();
    const { ex, seen } = exchange(visitor);
    channel.upgrade(ex);
    expect(channel.active).toBe(1);
    await readUntil(app, headEnd, 2_000);
    answer(app);
    await until(() => seen.done > 0, 2_000, 'done()');
    expect(seen.failed).toEqual([code]);
    await sleep(50); // nothing more may come: a second done() would show here
    expect(seen.done).toBe(1);
    expect(channel.active).toBe(0);
  });

  it('a 101 the gateway refuses (ex.check fails): fail, then done once', async () => {
    const { channel, app } = await pair();
    const { visitor } = await visitorPair();
    const { ex, seen } = exchange(visitor, () => new PtthError('PTTH_ERR_BAD_RESPONSE'));
    channel.upgrade(ex);
    await readUntil(app, headEnd, 2_000);
    app.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
    await until(() => seen.done > 0, 2_000, 'done()');
    expect(seen.failed).toEqual(['PTTH_ERR_BAD_RESPONSE']);
    expect(channel.closed).toBe(true);
    await sleep(50);
    expect(seen.done).toBe(1);
  });

  it('the visitor leaves before the answer: done once, the channel closes', async () => {
    const { channel, app } = await pair();
    const { visitor } = await visitorPair();
    const { ex, seen } = exchange(visitor);
    channel.upgrade(ex);
    await readUntil(app, headEnd, 2_000);
    visitor.destroy();
    await until(() => seen.done > 0 && channel.closed, 2_000, 'done() and the channel closed');
    await sleep(50);
    expect(seen.done).toBe(1);
    expect(seen.failed).toEqual([]);
  });

  it('a 101, spliced, then both ends close: done once', async () => {
    const { channel, app } = await pair();
    const { visitor, peer } = await visitorPair();
    const { ex, seen } = exchange(visitor);
    channel.upgrade(ex);
    await readUntil(app, headEnd, 2_000);
    app.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nfrom-app');
    const got = await readUntil(peer, (b) => b.includes('from-app'), 2_000);
    expect(got.toString('latin1')).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n[^]*\r\n\r\nfrom-app$/);
    expect(channel.closed).toBe(true);
    expect(seen.done).toBe(0);
    peer.write('from-visitor');
    await readUntil(app, (b) => b.includes('from-visitor'), 2_000);
    app.end();
    peer.end();
    await until(() => seen.done > 0, 2_000, 'done()');
    await sleep(50);
    expect(seen.done).toBe(1);
    expect(seen.failed).toEqual([]);
  });
});

describe('requests and answers undici frames or refuses by itself', () => {
  it('a body of undeclared length still arriving goes down chunked, whatever the method', async () => {
    const name = fresh('chunked');
    const app = await claim(name);
    const visitor = await rawConnect(gw.port);
    sockets.push(visitor);
    visitor.write(`GET /up HTTP/1.1\r\nHost: ${gw.host(name)}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n`);
    const head = (await readUntil(app, (b) => b.includes('hello'), 2_000)).toString('latin1');
    expect(head).toMatch(/\r\ntransfer-encoding: chunked\r\n/i);
    expect(head).not.toMatch(/\r\ncontent-length:/i);
    visitor.write('0\r\n\r\n');
    await readUntil(app, (b) => b.includes('0\r\n\r\n'), 2_000);
    app.write(ok('got'));
    const got = (await readUntil(visitor, (b) => b.includes('got'), 2_000)).toString('latin1');
    expect(got).toMatch(/^HTTP\/1\.1 200 /);
  });

  it("a visitor's Expect: 100-continue is answered by the gateway and not passed on (undici refuses a 100)", async () => {
    const name = fresh('expect');
    const app = serve(await claim(name), () => ok('fine'));
    const r = await request(gw.port, {
      host: gw.host(name),
      method: 'POST',
      path: '/e',
      headers: { expect: '100-continue' },
      body: 'data',
    });
    expect(r.status).toBe(200);
    expect(r.body).toBe('fine');
    expect(app.heads[0]).not.toMatch(/\r\nexpect:/i);
    // The channel is still there for the next request.
    await until(() => gw.gateway.table.lookup(name)?.channels[0]?.available === true, 2_000, 'the channel to be free');
    expect(gw.gateway.table.lookup(name)?.channels.length).toBe(1);
    expect((await visit(name, '/next')).status).toBe(200);
  });

  it('OPTIONS * cannot go down a reversed HTTP/1.1 channel: 400 PTTH_ERR_BAD_PARAMS, the channel stays', async () => {
    const name = fresh('star');
    const app = serve(await claim(name), () => ok('fine'));
    const visitor = await rawConnect(gw.port);
    sockets.push(visitor);
    visitor.write(`OPTIONS * HTTP/1.1\r\nHost: ${gw.host(name)}\r\n\r\n`);
    const got = (await readUntil(visitor, (b) => b.includes('PTTH_ERR_BAD_PARAMS'), 2_000)).toString('latin1');
    expect(got).toMatch(/^HTTP\/1\.1 400 /);
    expect(got).toContain('PTTH_ERR_BAD_PARAMS');
    expect(app.heads).toEqual([]);
    expect((await visit(name, '/next')).status).toBe(200);
  });

  it('a 304 with a Content-Length reaches the visitor; the channel is closed rather than failed by undici', async () => {
    const name = fresh('304');
    const app = serve(await claim(name), () => 'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 10\r\n\r\n');
    const r = await visit(name, '/cached');
    expect(r.status).toBe(304);
    expect(r.headers.etag).toBe('"x"');
    expect(app.heads.length).toBe(1);
    await until(() => (gw.gateway.table.lookup(name)?.channels.length ?? 0) === 0, 2_000, 'the channel to close');
  });
});

describe('an answer before the end of the upload', () => {
  it.each([
    [
      'a chunked 413',
      'HTTP/1.1 413 Payload Too Large\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n',
      '0\r\n\r\n',
      'first',
    ],
    ['a 204', 'HTTP/1.1 204 No Content\r\nX-Early: yes\r\n\r\n', '', 'x-early: yes'],
  ])(
    '%s: the visitor has it at once, its end waits for the body, the channel stays',
    async (_label, start, end, expectFirst) => {
      const name = fresh('early');
      const app = await claim(name);
      let seen = '';
      app.on('data', (d: Buffer) => {
        seen += d.toString('latin1');
      });
      app.resume();
      const visitor = await rawConnect(gw.port);
      sockets.push(visitor);
      visitor.write(`POST /up HTTP/1.1\r\nHost: ${gw.host(name)}\r\nContent-Length: 10\r\n\r\nhello`);
      await until(() => seen.includes('hello'), 2_000, 'the start of the upload at the app');
      app.write(start);
      const first = (
        await readUntil(visitor, (b) => b.toString('latin1').toLowerCase().includes(expectFirst), 2_000)
      ).toString('latin1');
      expect(first.toLowerCase()).toContain(expectFirst);
      if (end) {
        // The gateway has read the end of the answer before the rest of the upload comes.
        const ch = gw.gateway.table.lookup(name)?.channels[0] as unknown as { socket: net.Socket };
        const before = ch.socket.bytesRead;
        app.write(end);
        await until(() => ch.socket.bytesRead >= before + end.length, 2_000, 'the end of the answer at the gateway');
      }
      // The rest of the upload goes down the same channel; then the channel takes the next request.
      visitor.write('world');
      await until(() => seen.endsWith('helloworld'), 2_000, 'the rest of the upload at the app');
      if (end) {
        const rest = await readUntil(visitor, (b) => b.toString('latin1').endsWith('0\r\n\r\n'), 2_000);
        expect(rest.toString('latin1')).toMatch(/0\r\n\r\n$/);
      }
      await until(
        () => gw.gateway.table.lookup(name)?.channels[0]?.available === true,
        2_000,
        'the channel to be free',
      );
      const next = visit(name, '/next');
      await until(() => seen.includes('GET /next'), 2_000, 'the next request at the app');
      app.write(ok('next'));
      expect((await next).body).toBe('next');
    },
  );
});
