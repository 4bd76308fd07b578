import * as http from 'node:http';
import { describe, expect, it } from 'vitest';
import { request, until } from '../helpers/index.js';
import { track, useGateway } from '../helpers/fixture.js';
import { fetchRaw, parseLinks, rawValues, register, serializeResponse } from '../helpers/comet.js';

/*
 * src/gateway/comet.ts Session.mint: a session keeps at most 1024 open slots (MAX_OPEN_SLOTS).
 * Each registration POST mints one; past the cap the oldest open slot that is neither bound to a
 * request nor being polled is dropped, and its URL answers 404 PTTH_ERR_UNKNOWN_REQUEST_URL.
 */
const CAP = 1024;

/** Registers `name` again `times` times (same token, over `agent`); returns the `first` URL of each answer. */
async function reregister(origin: string, name: string, times: number, agent: http.Agent): Promise<string[]> {
  const firsts: string[] = [];
  for (let i = 0; i < times; i++) {
    const r = await register(origin, { name, token: 'tok' }, agent);
    expect(r.status).toBe(204);
    firsts.push(r.links['first'] as string);
  }
  return firsts;
}

describe('Comet open slots past 1024 in one session', () => {
  it('the 1025th slot drops the oldest open one (404 there); the next oldest and the newest still poll', async () => {
    const g = await useGateway({ pollTimeout: 100 });
    const agent = track(new http.Agent({ keepAlive: true, maxSockets: 1 }));
    const first = await register(g.origin, { name: 'slots', token: 'tok' }, agent);
    expect(first.status).toBe(201);
    const oldest = first.links['first'] as string;
    // CAP - 1 more: exactly at the cap, nothing dropped yet.
    const more = await reregister(g.origin, 'slots', CAP - 1, agent);
    const timedOut = await fetchRaw(oldest);
    expect(timedOut.status).toBe(204);
    expect(parseLinks(rawValues(timedOut.rawHeaders, 'link'))['next']).toBe(oldest);
    // One more: the oldest open slot goes.
    const [newest] = await reregister(g.origin, 'slots', 1, agent);
    const gone = await fetchRaw(oldest);
    expect(gone.status).toBe(404);
    expect(gone.headers['x-ptth-error']).toBe('PTTH_ERR_UNKNOWN_REQUEST_URL');
    expect((await fetchRaw(more[0] as string)).status).toBe(204);
    expect((await fetchRaw(newest as string)).status).toBe(204);
  });

  it('a slot with a poll waiting is kept, the next open one goes instead; the poll gets its request', async () => {
    const g = await useGateway({ pollTimeout: 5_000 });
    const agent = track(new http.Agent({ keepAlive: true, maxSockets: 1 }));
    const first = await register(g.origin, { name: 'held', token: 'tok' }, agent);
    const polled = first.links['first'] as string;
    // The gateway's own listener runs first: once this one sees the poll, it waits on its slot.
    let arrived = false;
    const path = new URL(polled).pathname;
    g.gateway.server.on('request', (req: http.IncomingMessage) => {
      if (req.method === 'GET' && req.url === path) arrived = true;
    });
    const waiting = fetchRaw(polled);
    await until(() => arrived, 3_000, 'the poll to reach the gateway');
    const more = await reregister(g.origin, 'held', CAP, agent);
    // The waiting poll's slot survived the cap; the oldest unpolled one did not.
    const dropped = await fetchRaw(more[0] as string);
    expect(dropped.status).toBe(404);
    expect(dropped.headers['x-ptth-error']).toBe('PTTH_ERR_UNKNOWN_REQUEST_URL');
    const visitor = request(g.port, { host: g.host('held'), path: '/still-polled' });
    const delivery = await waiting;
    expect(delivery.status).toBe(200);
    expect(delivery.body.toString('latin1')).toMatch(/^GET \/still-polled HTTP\/1\.1\r\n/);
    const reply = await fetchRaw(polled, {
      method: 'POST',
      headers: { 'content-type': 'message/http' },
      body: serializeResponse({ status: 200, body: 'kept' }),
    });
    expect(reply.status).toBe(202);
    const v = await visitor;
    expect(v.status).toBe(200);
    expect(v.body).toBe('kept');
  });
});
