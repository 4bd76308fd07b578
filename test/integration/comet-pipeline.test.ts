import { describe, expect, it } from 'vitest';
import { CometChannel } from '../../src/channels/comet.js';
import { OPTIONS } from '../../src/options.js';
import type { GatewayOptions } from '../../src/gateway/server.js';

const PIPELINE_COUNT = OPTIONS.cometPipelineCount.default;
const PIPELINE_BYTES = OPTIONS.cometPipelineBytes.default;
import { request, until, type Reply, type TestGateway } from '../helpers/index.js';
import { cleanup, useGateway } from '../helpers/fixture.js';
import {
  CometApp,
  fetchRaw,
  parseLinks,
  parseRequestMessage,
  parseRequestPipeline,
  rawValues,
  register,
  serializeResponse,
  type HttpReply,
} from '../helpers/comet.js';

/*
 * Pipelined Comet polls (docs/PROTOCOL.md section 5.7): a poll with `Accept: application/http` takes
 * every queued request up to a bound as one `application/http` pipeline, and the app answers with a
 * pipeline of responses in the same order.
 */

const PIPE = { accept: 'application/http' };
const poll = (url: string, headers: Record<string, string> = {}): Promise<HttpReply> => fetchRaw(url, { headers });
const post = (url: string, body: string | Buffer, type = 'application/http'): Promise<HttpReply> =>
  fetchRaw(url, { method: 'POST', headers: { 'content-type': type }, body });
const nextOf = (r: HttpReply): string => parseLinks(rawValues(r.rawHeaders, 'link'))['next'] as string;

function cometChannel(g: TestGateway, name: string): CometChannel {
  const c = g.gateway.table.lookup(name)?.channels.find((ch) => ch.transport === 'comet');
  if (!(c instanceof CometChannel)) throw new Error(`no Comet channel for ${name}`);
  return c;
}

/** Registers `name`, opens its channel with a poll that times out, and returns the URL to poll. */
async function registered(g: TestGateway, name: string): Promise<string> {
  const r = await register(g.origin, { name, token: 't' });
  expect(r.status).toBe(201);
  const first = r.links['first'] as string;
  // The channel opens on the first poll; a short --poll-timeout lets it come back 204.
  const opened = await poll(first);
  expect(opened.status).toBe(204);
  return nextOf(opened);
}

/** `n` visitors of `name` (paths /0 .. /n-1), once all of them wait in the Comet queue, in that order. */
async function queued(
  g: TestGateway,
  name: string,
  n: number,
  spec: (i: number) => { method?: string; body?: string } = () => ({}),
): Promise<Promise<Reply>[]> {
  const channel = cometChannel(g, name);
  const visitors: Promise<Reply>[] = [];
  for (let i = 0; i < n; i++) {
    // One at a time: a request queues once its body is in, so a large body could overtake.
    const before = channel.queued;
    visitors.push(request(g.port, { host: g.host(name), path: `/${i}`, ...spec(i) }));
    await until(() => channel.queued === before + 1, 5_000, `request ${i} queued`);
  }
  return visitors;
}

async function gateway(options: GatewayOptions = {}): Promise<TestGateway> {
  // A poll that finds nothing comes back quickly: registered() opens the channel with one.
  return useGateway({ pollTimeout: 200, replyTimeout: 5_000, cometIdleTimeout: 10_000, ...options });
}

describe('Comet polls with Accept: application/http', () => {
  it('take every queued request at once as an application/http pipeline; the replies in order reach their visitors', async () => {
    const g = await gateway();
    const url = await registered(g, 'pipe');
    const visitors = await queued(g, 'pipe', 3, (i) => (i === 1 ? { method: 'POST', body: 'body-1' } : {}));
    const r = await poll(url, PIPE);
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('application/http');
    expect(Number(r.headers['content-length'])).toBe(r.body.length);
    const reqs = await parseRequestPipeline(r.body);
    expect(reqs.map((q) => `${q.method} ${q.url}`)).toEqual(['GET /0', 'POST /1', 'GET /2']);
    expect(reqs[1]?.body.toString()).toBe('body-1');
    // Requesting-Client lists the visitors in the pipeline's order; each request carries its own too.
    const clients = String(r.headers['requesting-client']).split(', ');
    expect(clients).toHaveLength(3);
    for (const [i, q] of reqs.entries()) expect(rawValues(q.rawHeaders, 'requesting-client')).toEqual([clients[i]]);
    const answer = await post(
      url,
      Buffer.concat(reqs.map((q) => serializeResponse({ status: 200, body: `answer ${q.url}` }))),
    );
    expect(answer.status).toBe(202);
    const got = await Promise.all(visitors);
    expect(got.map((v) => `${v.status} ${v.body}`)).toEqual(['200 answer /0', '200 answer /1', '200 answer /2']);
    // The URL is spent once every request it delivered is answered.
    expect((await poll(url, PIPE)).status).toBe(404);
  });

  it('a client that does not ask gets message/http, one request per poll, as before (Accept */* does not ask)', async () => {
    const g = await gateway();
    let url = await registered(g, 'plain');
    const visitors = await queued(g, 'plain', 2);
    for (const [i, accept] of [['*/*'], ['message/http, application/http;q=0']].entries()) {
      const r = await poll(url, { accept: accept[0] as string });
      expect(r.status).toBe(200);
      expect(r.headers['content-type']).toBe('message/http');
      const req = await parseRequestMessage(r.body);
      expect(req.url).toBe(`/${i}`);
      expect(r.headers['requesting-client']).not.toContain(',');
      expect((await post(url, serializeResponse({ status: 200, body: `one ${i}` }), 'message/http')).status).toBe(202);
      url = nextOf(r);
    }
    expect((await Promise.all(visitors)).map((v) => v.body)).toEqual(['one 0', 'one 1']);
  });

  it(`is bounded to ${PIPELINE_COUNT} requests; the rest wait for the next poll`, async () => {
    const g = await gateway();
    let url = await registered(g, 'many');
    const n = PIPELINE_COUNT + 3;
    const visitors = await queued(g, 'many', n);
    const sizes: number[] = [];
    while (sizes.reduce((a, b) => a + b, 0) < n) {
      const r = await poll(url, PIPE);
      expect(r.status).toBe(200);
      const reqs = await parseRequestPipeline(r.body);
      sizes.push(reqs.length);
      expect(
        (await post(url, Buffer.concat(reqs.map((q) => serializeResponse({ status: 200, body: q.url }))))).status,
      ).toBe(202);
      url = nextOf(r);
    }
    expect(sizes).toEqual([PIPELINE_COUNT, 3]);
    expect((await Promise.all(visitors)).map((v) => v.body)).toEqual(Array.from({ length: n }, (_, i) => `/${i}`));
  });

  it('takes its bounds from cometPipelineCount (--comet-pipeline-count)', async () => {
    const g = await gateway({ cometPipelineCount: 2 });
    let url = await registered(g, 'two');
    const visitors = await queued(g, 'two', 5);
    const sizes: number[] = [];
    while (sizes.reduce((a, b) => a + b, 0) < 5) {
      const r = await poll(url, PIPE);
      const reqs = await parseRequestPipeline(r.body);
      sizes.push(reqs.length);
      expect(
        (await post(url, Buffer.concat(reqs.map((q) => serializeResponse({ status: 200, body: q.url }))))).status,
      ).toBe(202);
      url = nextOf(r);
    }
    expect(sizes).toEqual([2, 2, 1]);
    expect((await Promise.all(visitors)).map((v) => v.body)).toEqual(['/0', '/1', '/2', '/3', '/4']);
  });

  it(`is bounded to ${PIPELINE_BYTES} bytes of requests; a larger request still goes, alone`, async () => {
    const g = await gateway();
    let url = await registered(g, 'big');
    const third = Math.floor(PIPELINE_BYTES / 3);
    const bodies = ['a'.repeat(third), 'b'.repeat(third), 'c'.repeat(third), 'd'.repeat(PIPELINE_BYTES + 1), 'e'];
    const visitors = await queued(g, 'big', bodies.length, (i) => ({ method: 'POST', body: bodies[i] as string }));
    const sizes: number[] = [];
    while (sizes.reduce((a, b) => a + b, 0) < bodies.length) {
      const r = await poll(url, PIPE);
      const reqs = await parseRequestPipeline(r.body);
      sizes.push(reqs.length);
      expect(
        (
          await post(
            url,
            Buffer.concat(reqs.map((q) => serializeResponse({ status: 200, body: String(q.body.length) }))),
          )
        ).status,
      ).toBe(202);
      url = nextOf(r);
    }
    // Two thirds and their heads fit; the third would pass the bound; the big one goes alone.
    expect(sizes).toEqual([2, 1, 1, 1]);
    expect((await Promise.all(visitors)).map((v) => Number(v.body))).toEqual(bodies.map((b) => b.length));
  });

  it('a repeated GET of a pipelined URL returns the same pipeline until it is answered', async () => {
    const g = await gateway();
    const url = await registered(g, 'again');
    const visitors = await queued(g, 'again', 2);
    const first = await poll(url, PIPE);
    const second = await poll(url);
    expect(second.headers['content-type']).toBe('application/http');
    expect(second.body.equals(first.body)).toBe(true);
    expect(nextOf(second)).toBe(nextOf(first));
    expect(
      (await post(url, serializeResponse({ status: 204 }).toString() + serializeResponse({ status: 201 }).toString()))
        .status,
    ).toBe(202);
    expect((await Promise.all(visitors)).map((v) => v.status)).toEqual([204, 201]);
  });

  it('reads the responses with the methods of their requests: a reply to HEAD has no body whatever its Content-Length', async () => {
    const g = await gateway();
    const url = await registered(g, 'head');
    const visitors = await queued(g, 'head', 2, (i) => ({ method: i === 0 ? 'HEAD' : 'GET' }));
    const reqs = await parseRequestPipeline((await poll(url, PIPE)).body);
    expect(reqs.map((q) => q.method)).toEqual(['HEAD', 'GET']);
    const pipeline =
      'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nget\r\n0\r\n\r\n';
    expect((await post(url, pipeline)).status).toBe(202);
    const [head, get] = await Promise.all(visitors);
    expect(head?.status).toBe(200);
    expect(head?.headers['content-length']).toBe('5');
    expect(get?.body).toBe('get');
  });
});

describe('Reply pipelines that do not match their requests', () => {
  it('fewer responses than requests: the rest lost their connection (502 PTTH_ERR_CHANNEL_LOST), the app gets 202', async () => {
    const g = await gateway();
    const url = await registered(g, 'fewer');
    const visitors = await queued(g, 'fewer', 3);
    const r = await poll(url, PIPE);
    expect((await parseRequestPipeline(r.body)).length).toBe(3);
    expect((await post(url, serializeResponse({ status: 200, body: 'only one' }))).status).toBe(202);
    const got = await Promise.all(visitors);
    expect(got[0]?.body).toBe('only one');
    for (const v of got.slice(1)) {
      expect(v.status).toBe(502);
      expect(v.headers['x-ptth-error']).toBe('PTTH_ERR_CHANNEL_LOST');
    }
    expect((await post(url, serializeResponse({ status: 200 }))).status).toBe(404);
  });

  it('an empty reply answers none of them', async () => {
    const g = await gateway();
    const url = await registered(g, 'none');
    const visitors = await queued(g, 'none', 2);
    await poll(url, PIPE);
    expect((await post(url, '')).status).toBe(202);
    for (const v of await Promise.all(visitors)) expect(v.headers['x-ptth-error']).toBe('PTTH_ERR_CHANNEL_LOST');
  });

  const hostile: [string, (n: number) => string][] = [
    [
      'more responses than requests',
      (n) =>
        serializeResponse({ status: 200, body: 'x' })
          .toString()
          .repeat(n + 1),
    ],
    [
      'bytes that are not a response after the first',
      () => `${serializeResponse({ status: 200, body: 'x' }).toString()}garbage\r\n\r\n`,
    ],
    ['a response shorter than its Content-Length', () => 'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort'],
    ['a 101', () => 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n'],
    ['HTTP/2.0', () => 'HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n'],
  ];
  for (const [what, body] of hostile) {
    it(`${what}: the app gets 400 PTTH_ERR_INVALID_REPLY, every visitor of the pipeline 502, and the channel serves on`, async () => {
      const g = await gateway();
      const url = await registered(g, 'hostile');
      const visitors = await queued(g, 'hostile', 2);
      const r = await poll(url, PIPE);
      const answer = await post(url, body(2));
      expect(answer.status).toBe(400);
      expect(answer.headers['x-ptth-error']).toBe('PTTH_ERR_INVALID_REPLY');
      for (const v of await Promise.all(visitors)) {
        expect(v.status).toBe(502);
        expect(v.headers['x-ptth-error']).toBe('PTTH_ERR_BAD_RESPONSE');
      }
      // Nothing broke: the next request is served on the next URL.
      const later = await queued(g, 'hostile', 1);
      const next = nextOf(r);
      await poll(next, PIPE);
      expect((await post(next, serializeResponse({ status: 200, body: 'fine' }))).status).toBe(202);
      expect((await later[0])?.body).toBe('fine');
    });
  }

  it('a response whose head breaks the response rules costs its visitor a 502; the others get theirs; the app gets 400', async () => {
    const g = await gateway();
    const url = await registered(g, 'rules');
    const visitors = await queued(g, 'rules', 2);
    await poll(url, PIPE);
    // Rule 6 of section 8.3: at most 2000 header fields (llhttp itself takes these).
    const bad = `HTTP/1.1 200 OK\r\nContent-Length: 0\r\n${'X: 1\r\n'.repeat(2001)}\r\n`;
    const answer = await post(url, bad + serializeResponse({ status: 200, body: 'good' }).toString());
    expect(answer.status).toBe(400);
    expect(answer.headers['x-ptth-error']).toBe('PTTH_ERR_INVALID_REPLY');
    expect(answer.body.toString()).toMatch(/Response 1/);
    const [first, second] = await Promise.all(visitors);
    expect(first?.status).toBe(502);
    expect(first?.headers['x-ptth-error']).toBe('PTTH_ERR_BAD_RESPONSE');
    expect(second?.body).toBe('good');
  });
});

describe('Limits of reply pipelines', () => {
  it('a reply pipeline over --buffer-limit gets 413 and closes; its visitors get 502', async () => {
    const g = await useGateway({ pollTimeout: 200, bufferLimit: 4096 });
    const url = await registered(g, 'limit');
    const visitors = await queued(g, 'limit', 2);
    await poll(url, PIPE);
    const body = Buffer.concat([
      serializeResponse({ status: 200, body: 'x'.repeat(3000) }),
      serializeResponse({ status: 200, body: 'y'.repeat(3000) }),
    ]);
    const answer = await post(url, body).catch((err: unknown) => err);
    // The gateway may cut the upload short after its 413.
    if (!(answer instanceof Error)) {
      expect((answer as HttpReply).status).toBe(413);
      expect((answer as HttpReply).headers['x-ptth-error']).toBe('PTTH_ERR_BODY_TOO_LARGE');
    }
    for (const v of await Promise.all(visitors)) {
      expect(v.status).toBe(502);
      expect(v.headers['x-ptth-error']).toBe('PTTH_ERR_BAD_RESPONSE');
    }
  });

  it('each request of a pipeline has --reply-timeout: unanswered, its visitors get 504 and the URL answers 404', async () => {
    const g = await useGateway({ pollTimeout: 200, replyTimeout: 300 });
    const url = await registered(g, 'late');
    const visitors = await queued(g, 'late', 2);
    await poll(url, PIPE);
    for (const v of await Promise.all(visitors)) expect(v.headers['x-ptth-error']).toBe('PTTH_ERR_APP_TIMEOUT');
    expect((await post(url, serializeResponse({ status: 200 }))).status).toBe(404);
  });
});

describe('A Node Comet app that asks for pipelines', () => {
  it('serves concurrent visitors, several of them in one poll', async () => {
    const g = await gateway();
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    let calls = 0;
    const app = await CometApp.start(
      g.origin,
      { name: 'nodepipe', token: 't' },
      async (req) => {
        if (calls++ === 0) await gate;
        return { status: 200, body: `node ${req.url}` };
      },
      1,
      { pipeline: true },
    );
    cleanup(() => app.stop());
    const firstVisitor = request(g.port, { host: g.host('nodepipe'), path: '/first' });
    await until(() => calls === 1, 5_000, 'the first request at the app');
    const visitors = await queued(g, 'nodepipe', 9);
    release();
    expect((await firstVisitor).body).toBe('node /first');
    expect((await Promise.all(visitors)).map((v) => v.body)).toEqual(Array.from({ length: 9 }, (_, i) => `node /${i}`));
    expect(app.batches).toEqual([1, 9]);
  });
});
