/**
 * Comet buffers whole messages (a poll answer and a reply both need a Content-Length), so all of
 * them together are held to one budget, 8 x --buffer-limit. The budget holds until the bytes have
 * left the process: a reply written to a visitor that does not read, or a request written to a
 * poller that does not read, stays counted until it was sent or its reader is gone. Before that,
 * a hostile app (or visitor) could park any number of buffers in the gateway.
 */
import { connect } from 'node:net';
import type * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { fetchRaw, register } from '../helpers/comet.js';
import { closed, rawConnect, readUntil } from '../helpers/index.js';
import { memoryOf, spawnCliProbed, type Spawned } from '../helpers/spawn.js';

const MiB = 1024 * 1024;
const procs: Spawned[] = [];
const sockets: net.Socket[] = [];

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  for (const p of procs.splice(0)) {
    p.kill('SIGKILL');
    await p.exited();
  }
});

async function serve(bufferLimit: number): Promise<{ p: Spawned; port: number; origin: string }> {
  const p = spawnCliProbed([
    'serve',
    '--port',
    '0',
    '--host',
    '127.0.0.1',
    '--quiet',
    '--buffer-limit',
    String(bufferLimit),
    '--poll-timeout',
    '20000',
    '--reply-timeout',
    '20000',
  ]);
  procs.push(p);
  const m = await p.waitFor(/listening on 127\.0\.0\.1:(\d+)/, 10_000);
  const port = Number(m[1]);
  return { p, port, origin: `http://127.0.0.1:${port}` };
}

/** A visitor that sends its request and then never reads (its socket stays paused). */
async function stalledVisitor(port: number, name: string, body = ''): Promise<net.Socket> {
  const s = await rawConnect(port);
  sockets.push(s);
  s.on('error', () => {});
  s.pause();
  const framing = body ? `Content-Length: ${body.length}\r\n` : '';
  s.write(`${body ? 'POST' : 'GET'} /x HTTP/1.1\r\nHost: ${name}.localhost:${port}\r\n${framing}\r\n${body}`);
  return s;
}

/**
 * POSTs on a raw socket and returns the answer's status: a reply refused past the budget is
 * answered (and the connection closed) before its upload ends, which node's client reports as
 * EPIPE rather than as the 503 that was sent.
 */
async function post(url: string, body: Buffer | string): Promise<number> {
  const u = new URL(url);
  const s = await rawConnect(Number(u.port));
  sockets.push(s);
  s.on('error', () => {});
  s.write(`POST ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n`);
  s.write(body);
  const head = (await readUntil(s, (b) => b.includes('\r\n\r\n'), 10_000)).toString('latin1');
  s.destroy();
  return Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0);
}

const reply = (size: number): Buffer =>
  Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${size}\r\n\r\n`), Buffer.alloc(size, 0x61)]);

describe('Comet replies stay counted against the buffer budget until they have left the process', () => {
  it('replies to visitors that never read: past the budget the app gets 503 and the gateway does not grow; the budget comes back when they leave', async () => {
    const limit = 16 * MiB; // the default --buffer-limit; budget: 128 MiB
    const { p, port, origin } = await serve(limit);
    const r = await register(origin, { name: 'big' });
    let url = r.links['first'] as string;
    const start = await memoryOf(p.child);
    const statuses: number[] = [];
    const visitors: net.Socket[] = [];
    // 20 replies of 16 MiB (320 MiB) to visitors that read nothing.
    for (let i = 0; i < 20; i++) {
      const polled = fetchRaw(url);
      visitors.push(await stalledVisitor(port, 'big'));
      const poll = await polled;
      expect(poll.status).toBe(200);
      statuses.push(await post(url, reply(limit - 64)));
      url = /<([^>]+)>; rel="next"/.exec(String(poll.headers.link))?.[1] as string;
    }
    // Buffers still referenced once everything collectable was collected: what the gateway holds.
    const held = (await memoryOf(p.child)).arrayBuffers - start.arrayBuffers;
    // The budget holds 8 such replies (the kernel's socket buffers take a few MiB of each, which
    // is out of the process but not enough to send any reply whole); the others are refused.
    const accepted = statuses.filter((s) => s === 202).length;
    expect(accepted, `statuses ${statuses.join(' ')}`).toBeGreaterThanOrEqual(7);
    expect(accepted, `statuses ${statuses.join(' ')}`).toBeLessThanOrEqual(9);
    // Refused while read: the 503 reaches the app although its upload was cut short (the gateway
    // reads on before it closes, RFC 9112 section 9.6, so no reset takes the answer with it).
    expect(statuses.filter((s) => s === 503).length, `statuses ${statuses.join(' ')}`).toBe(20 - accepted);
    expect(
      statuses.slice(accepted).every((s) => s !== 202),
      `statuses ${statuses.join(' ')}`,
    ).toBe(true);
    // Unbounded, the gateway held every reply whole until its visitor read it (320 MiB, and the
    // copies made reading and parsing it); bounded, the 128 MiB budget and a little for the
    // connections still open (their read buffers), far below what one more reply would take.
    expect(held, `the gateway holds ${Math.round(held / MiB)} MiB of buffers`).toBeLessThan(128 * MiB + 12 * MiB);
    // The stalled visitors leave: what was held for them is released, and a new reply fits.
    for (const v of visitors) v.destroy();
    const polled = fetchRaw(url);
    const reader = await rawConnect(port);
    sockets.push(reader);
    reader.write(`GET /x HTTP/1.1\r\nHost: big.localhost:${port}\r\n\r\n`);
    const poll = await polled;
    expect(poll.status).toBe(200);
    // Released as the gateway sees each visitor's close, which may come a while after ours on a
    // loaded machine: a reply past the budget is refused at once, so this asks until one is
    // accepted, for as long as a generous deadline allows (the count of attempts says nothing).
    let status = 0;
    const statusesAfter: number[] = [];
    const deadline = Date.now() + 20_000;
    while (status !== 202 && Date.now() < deadline) {
      status = await post(url, reply(limit - 64));
      statusesAfter.push(status);
    }
    expect(status, `after the visitors left: ${statusesAfter.join(' ')}`).toBe(202);
    const got = await readUntil(reader, (b) => b.length >= limit - 64, 10_000);
    expect(got.length).toBeGreaterThanOrEqual(limit - 64);
  });
});

describe("Comet requests stay counted until the poller's answer has left the process", () => {
  it('pollers that never read their answers hold those bytes against the budget, even once answered from another connection', async () => {
    const limit = 16 * MiB; // budget: 128 MiB
    const { port, origin } = await serve(limit);
    const body = 'b'.repeat(limit - 1024);
    const outcomes: string[] = [];
    for (let i = 0; i < 12; i++) {
      const r = await register(origin, { name: `slow${i}` });
      const first = new URL(r.links['first'] as string);
      // The poller asks on a raw socket and reads no more than the head of its answer.
      const poller = await rawConnect(port);
      sockets.push(poller);
      poller.write(`GET ${first.pathname} HTTP/1.1\r\nHost: ${first.host}\r\n\r\n`);
      const pollHead = readUntil(poller, (b) => b.includes('\r\n\r\n'), 10_000);
      const visitor = await stalledVisitor(port, `slow${i}`, body);
      visitor.resume();
      const answer = readUntil(visitor, (b) => b.includes('\r\n\r\n'), 10_000);
      const first_ = await Promise.race([answer.then(() => 'answered'), pollHead.then(() => 'delivered')]);
      if (first_ === 'delivered') {
        // The app answers from a connection of its own, without ever reading the request.
        expect(await post(first.href, 'HTTP/1.1 204 No Content\r\n\r\n')).toBe(202);
      }
      const text = (await answer).toString('latin1');
      const status = /^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? (text === '' ? 'reset' : 'other');
      if (status === '503') expect(text).toContain('PTTH_ERR_QUEUE_FULL');
      outcomes.push(status);
    }
    // 8 requests fit in the budget while their answers sit unread; the rest are refused.
    const served = outcomes.filter((s) => s === '204').length;
    expect(served, `outcomes ${outcomes.join(' ')}`).toBeGreaterThanOrEqual(7);
    expect(served, `outcomes ${outcomes.join(' ')}`).toBeLessThanOrEqual(9);
    expect(outcomes.filter((s) => s === '503').length, `outcomes ${outcomes.join(' ')}`).toBe(12 - served);
  });
});

describe('an upload refused before its end gets its status, not a reset', () => {
  it('a visitor sending 32 MiB to a Comet app past --buffer-limit reads its 413 while still uploading', async () => {
    const { port, origin } = await serve(1 * MiB);
    expect((await register(origin, { name: 'up' })).status).toBe(201);
    const s = await rawConnect(port);
    sockets.push(s);
    s.on('error', () => {});
    const size = 32 * MiB;
    s.write(`POST /big HTTP/1.1\r\nHost: up.localhost:${port}\r\nContent-Length: ${size}\r\n\r\n`);
    // The whole body is queued at once: most of it is still on its way when the gateway answers,
    // and closing then would leave it unread (the kernel resets such a connection, answer and all).
    s.write(Buffer.alloc(size, 0x62));
    const head = (await readUntil(s, (b) => b.includes('\r\n\r\n'), 10_000)).toString('latin1');
    expect(head).toMatch(/^HTTP\/1\.1 413 /);
    expect(head).toContain('X-Ptth-Error: PTTH_ERR_BODY_TOO_LARGE');
    expect(head).toContain('Connection: close');
  });
});

describe('lingering close is bounded', () => {
  it('an upload that never ends after its refusal is cut after the linger time (5 s), not held open', async () => {
    const { port, origin } = await serve(1 * MiB);
    expect((await register(origin, { name: 'endless' })).status).toBe(201);
    // An uploader that goes on sending after the gateway's FIN (its side stays open).
    const s = await new Promise<net.Socket>((resolve, reject) => {
      const c = connect({ port, host: '127.0.0.1', allowHalfOpen: true }, () => resolve(c));
      c.once('error', reject);
    });
    sockets.push(s);
    s.on('error', () => {});
    s.write(`POST /big HTTP/1.1\r\nHost: endless.localhost:${port}\r\nContent-Length: ${64 * 1024 * MiB}\r\n\r\n`);
    s.write(Buffer.alloc(2 * MiB, 0x62));
    const head = (await readUntil(s, (b) => b.includes('\r\n\r\n'), 10_000)).toString('latin1');
    expect(head).toMatch(/^HTTP\/1\.1 413 /);
    // The uploader trickles on and never reaches its declared end.
    const answered = Date.now();
    const trickle = setInterval(() => s.writable && s.write(Buffer.alloc(16 * 1024, 0x62)), 50);
    try {
      expect(await closed(s, 30_000), 'the gateway closes the connection').toBe(true);
    } finally {
      clearInterval(trickle);
    }
    // Time is the behaviour here: the cut comes after the linger time, with a wide margin above
    // it for a loaded machine (what matters is that it comes at all).
    const after = Date.now() - answered;
    expect(after).toBeGreaterThanOrEqual(4_500);
    expect(after).toBeLessThan(25_000);
  }, 40_000);
});
