import type { IncomingMessage } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { mayList } from '../../src/gateway/endpoints.js';
import { request, startApp, startGateway, type TestGateway } from '../helpers/index.js';
import type { Tunnel } from '../../src/client/node.js';

/*
 * The status page lists names, channels and app addresses only to whom --status-list allows:
 * random names are unguessable URLs, and a public list would give every tunnel away.
 */
let gw: TestGateway | undefined;
let app: Tunnel | undefined;
afterEach(async () => {
  await app?.close({ graceMs: 100 });
  await gw?.close();
  gw = undefined;
  app = undefined;
});

async function page(statusList: 'loopback' | 'everyone' | 'nobody'): Promise<{ json: Record<string, unknown>; html: string }> {
  gw = await startGateway({ statusList });
  app = await startApp(gw.port, (_req, res) => res.end('x'), { name: 'secretname4242' });
  const host = `localhost:${gw.port}`;
  const json = JSON.parse((await request(gw.port, { host, headers: { accept: 'application/json' } })).body) as Record<string, unknown>;
  const html = (await request(gw.port, { host, headers: { accept: 'text/html' } })).body;
  return { json, html };
}

describe('status page: who sees the registrations', () => {
  it('loopback (the default) lists names, channels and addresses to requests from this machine', async () => {
    const { json, html } = await page('loopback');
    expect(json['count']).toBe(1);
    expect((json['registrations'] as { name: string }[]).map((r) => r.name)).toEqual(['secretname4242']);
    expect(html).toContain('secretname4242');
    expect(html).toContain('127.0.0.1');
  });

  it('nobody shows only the count, in JSON and HTML, even to this machine', async () => {
    const { json, html } = await page('nobody');
    expect(json['count']).toBe(1);
    expect(json).not.toHaveProperty('registrations');
    expect(html).toContain('Live registrations (1)');
    expect(html).not.toContain('secretname4242');
    expect(html).not.toContain('127.0.0.1:');
    expect(html).toContain('--status-list');
  });

  it('loopback hides the list from other machines; everyone shows it to them', () => {
    const from = (remoteAddress: string): Pick<IncomingMessage, 'socket'> => ({ socket: { remoteAddress } as IncomingMessage['socket'] });
    for (const a of ['127.0.0.1', '127.8.9.10', '::1', '::ffff:127.0.0.1']) expect(mayList({ statusList: 'loopback' }, from(a)), a).toBe(true);
    for (const a of ['203.0.113.7', '2001:db8::1', '::ffff:203.0.113.7', '10.0.0.1']) {
      expect(mayList({ statusList: 'loopback' }, from(a)), a).toBe(false);
      expect(mayList({ statusList: 'everyone' }, from(a)), a).toBe(true);
    }
    expect(mayList({ statusList: 'nobody' }, from('127.0.0.1'))).toBe(false);
    expect(mayList({}, from('203.0.113.7'))).toBe(false);
  });
});
