/**
 * What a Comet app or visitor can hold in the gateway, and for how long: replies and visitor
 * bodies are buffered whole (a poll answer and a reply both need a Content-Length), so they count
 * against one budget of 8 x --buffer-limit while they are read, and a peer that trickles its bytes
 * is cut after a timeout instead of holding its buffer or queue place. See cometbudget.test.ts for
 * the budget held until the bytes have left the process.
 */
import { describe, expect, it } from 'vitest';
import { fetchRaw, parseLinks, rawValues, register } from '../helpers/comet.js';
import { closed, headEnd, rawConnect, readUntil, request, until } from '../helpers/index.js';
import { track, useGateway, useSocket } from '../helpers/fixture.js';

describe('Comet replies from apps', () => {
  it('count against the buffer budget while they are read: past 8 x --buffer-limit a reply gets 503, not memory', async () => {
    const g = await useGateway({ bufferLimit: 1_000, pollTimeout: 5_000, replyTimeout: 5_000, queueTimeout: 5_000 });
    const reg = await register(g.origin, { name: 'hoarder', token: 't' });
    expect(reg.status).toBe(201);
    // Twelve visitors, each polled to the app (one delivery each), none answered yet.
    const visitors = Array.from({ length: 12 }, (_, i) => request(g.port, { host: g.host('hoarder'), path: `/v${i}` }));
    const slots: string[] = [];
    let next = reg.links.first as string;
    for (let i = 0; i < 12; i++) {
      const poll = await fetchRaw(next);
      expect(poll.status).toBe(200);
      slots.push(next);
      next = parseLinks(rawValues(poll.rawHeaders, 'link')).next as string;
    }
    // Each reply is 939 bytes, declared whole but sent short of its last byte: all are being read at once.
    const body = 'x'.repeat(900);
    const reply = `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
    const posts = await Promise.all(
      slots.map((url) => {
        const u = new URL(url);
        return useSocket(
          g.port,
          `POST ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\nContent-Type: message/http\r\nContent-Length: ${reply.length}\r\n\r\n${reply.slice(0, -1)}`,
        );
      }),
    );
    // Eight fit in the 8,000-byte budget (7,504 bytes); the other four are refused at once. Each
    // POST's first answer head: the four refusals come while the eight are still being read.
    const heads: (string | undefined)[] = posts.map(() => undefined);
    const firstHeads = posts.map((s, i) => readUntil(s, headEnd, 10_000).then((b) => void (heads[i] = b.toString())));
    await until(() => heads.filter((h) => h !== undefined).length >= 4, 5_000, 'four replies refused');
    const isRefusal = (h: string | undefined): boolean =>
      h !== undefined && /^HTTP\/1\.1 503 /.test(h) && h.includes('PTTH_ERR_QUEUE_FULL');
    const refused = heads.filter(isRefusal);
    expect(refused).toHaveLength(4);
    const reading = posts.filter((_, i) => heads[i] === undefined);
    expect(reading).toHaveLength(8);
    // The eight complete their replies: the first thing each hears is its 202 (nothing refused it
    // meanwhile); their visitors are answered.
    for (const s of reading) s.write(reply.slice(-1));
    await Promise.all(firstHeads);
    expect(heads.filter((h) => h !== undefined && /^HTTP\/1\.1 202 /.test(h))).toHaveLength(8);
    const answers = await Promise.all(visitors);
    expect(answers.filter((r) => r.status === 200 && r.body === body)).toHaveLength(8);
    expect(answers.filter((r) => r.status === 503)).toHaveLength(4);
  });

  it('a reply that trickles in is cut after --reply-timeout instead of holding its buffer', async () => {
    const g = await useGateway({ bufferLimit: 100_000, pollTimeout: 5_000, replyTimeout: 400 });
    const reg = await register(g.origin, { name: 'trickle', token: 't' });
    const visitor = request(g.port, { host: g.host('trickle') });
    const poll = await fetchRaw(reg.links.first as string);
    expect(poll.status).toBe(200);
    const u = new URL(reg.links.first as string);
    const s = await useSocket(
      g.port,
      `POST ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\nContent-Length: 50000\r\n\r\nHTTP/1.1 200 OK\r\n`,
    );
    const timer = setInterval(() => s.write('X-Slow: 1\r\n'), 50);
    try {
      const got = (await readUntil(s, headEnd, 3_000)).toString();
      expect(got).toMatch(/^HTTP\/1\.1 408 /);
      expect(await closed(s)).toBe(true);
    } finally {
      clearInterval(timer);
    }
    // The delivery's own --reply-timeout (armed at the poll, before the POST began) answers the visitor.
    expect((await visitor).status).toBe(504);
  });
});

describe('visitor requests to Comet apps', () => {
  it('a body that trickles in gets 408 after the queue timeout instead of holding a queue place forever', async () => {
    const gw = await useGateway({ queueTimeout: 300 });
    const reg = await register(gw.origin, { name: 'slow', token: 't' });
    expect(reg.status).toBe(201);
    const s = track(await rawConnect(gw.port));
    s.write(`POST / HTTP/1.1\r\nHost: ${gw.host('slow')}\r\nContent-Length: 1000\r\n\r\nx`);
    const got = (await readUntil(s, (b) => b.includes('\r\n\r\n'), 3_000)).toString('latin1');
    expect(got).toMatch(/^HTTP\/1\.1 408 /);
    expect(got).toContain('PTTH_ERR_BODY_TIMEOUT');
  });

  it('bodies buffered for Comet apps are capped in total (8 x --buffer-limit), past it 503', async () => {
    const g = await useGateway({ bufferLimit: 1_000, pollTimeout: 100, queueTimeout: 2_000 });
    const reg = await register(g.origin, { name: 'hoard', token: 't' });
    // One poll that times out: the name now has a Comet channel, and nobody polls again.
    const poll = await fetchRaw(reg.links.first as string);
    expect(poll.status).toBe(204);
    const body = 'x'.repeat(900);
    const replies = await Promise.all(
      Array.from({ length: 12 }, () =>
        request(g.port, { host: g.host('hoard'), method: 'POST', body, headers: { accept: 'application/json' } }),
      ),
    );
    // Eight bodies fit (7,200 of 8,000 bytes) and wait for a poller; the rest are refused rather than buffered.
    const refused = replies.filter((r) => r.status === 503 && r.headers['x-ptth-error'] === 'PTTH_ERR_QUEUE_FULL');
    expect(refused.length).toBe(4);
    expect(refused[0]?.body).toContain('buffering as much as it allows');
  });
});
