import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { mayList } from '../../src/gateway/endpoints.js';
import { createGateway } from '../../src/gateway/server.js';
import { request } from '../helpers/index.js';
import { cleanup, useApp, useGateway } from '../helpers/fixture.js';

/*
 * The status page lists names, channels and app addresses only to whom --status-list allows:
 * random names are unguessable URLs, and a public list would give every tunnel away.
 */
/** The text of an HTML page, tags removed. */
function text(html: string): string {
  return html.replace(/<[^>]*>/g, '');
}

async function page(
  statusList: 'loopback' | 'everyone' | 'nobody',
): Promise<{ json: Record<string, unknown>; html: string }> {
  const gw = await useGateway({ statusList });
  await useApp(gw.port, (_req, res) => res.end('x'), { name: 'secretname4242' });
  const host = `localhost:${gw.port}`;
  const json = JSON.parse((await request(gw.port, { host, headers: { accept: 'application/json' } })).body) as Record<
    string,
    unknown
  >;
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
    expect(text(html)).toContain('Live registrations (1)');
    expect(html).not.toContain('secretname4242');
    expect(html).not.toContain('127.0.0.1:');
    expect(html).toContain('--status-list');
  });

  it('loopback hides the list from other machines; everyone shows it to them', () => {
    const from = (remoteAddress: string): Pick<IncomingMessage, 'socket'> => ({
      socket: { remoteAddress } as IncomingMessage['socket'],
    });
    for (const a of ['127.0.0.1', '127.8.9.10', '::1', '::ffff:127.0.0.1'])
      expect(mayList({ statusList: 'loopback' }, from(a)), a).toBe(true);
    for (const a of ['203.0.113.7', '2001:db8::1', '::ffff:203.0.113.7', '10.0.0.1']) {
      expect(mayList({ statusList: 'loopback' }, from(a)), a).toBe(false);
      expect(mayList({ statusList: 'everyone' }, from(a)), a).toBe(true);
    }
    expect(mayList({ statusList: 'nobody' }, from('127.0.0.1'))).toBe(false);
    expect(mayList({}, from('203.0.113.7'))).toBe(false);
  });
});

describe('status page: the URLs and addresses it shows', () => {
  it('gives the app URL as claims do: with the port the page was reached on', async () => {
    const gw = await useGateway();
    await useApp(gw.port, (_req, res) => res.end('x'), { name: 'ported' });
    const html = (await request(gw.port, { host: `localhost:${gw.port}`, headers: { accept: 'text/html' } })).body;
    expect(text(html)).toContain(`serves HTTP at http://NAME.localhost:${gw.port}/.`);
    expect(html).toContain(`href="http://ported.localhost:${gw.port}/"`);
    expect(html).toContain(`npx ptth-proxy connect 3000 --gateway http://localhost:${gw.port}<`);
    expect(html).not.toContain('http://NAME.localhost/');
  });

  it('gives the app URL under --public-url (scheme and host), in the pattern and in the list', async () => {
    const gw = await useGateway({ publicUrl: 'https://tunnel.example.com:8443' });
    await useApp(gw.port, (_req, res) => res.end('x'), { name: 'behind' });
    const html = (await request(gw.port, { host: `localhost:${gw.port}`, headers: { accept: 'text/html' } })).body;
    expect(text(html)).toContain('serves HTTP at https://NAME.tunnel.example.com:8443/.');
    expect(html).toContain('href="https://behind.tunnel.example.com:8443/"');
    expect(html).toContain('--gateway https://tunnel.example.com:8443<');
  });

  it('shows an IPv4 client on a dual-stack listener as 127.0.0.1, as the logs do, not ::ffff:127.0.0.1', async () => {
    const gateway = createGateway({ reconnectWait: 500 });
    const addr = await gateway.listen(0, '::');
    cleanup(() => gateway.close(200));
    await useApp(addr.port, (_req, res) => res.end('x'), { name: 'dualstack' });
    const got = await request(addr.port, { host: `localhost:${addr.port}`, headers: { accept: 'application/json' } });
    const regs = (JSON.parse(got.body) as { registrations: { channels: { remote: string }[] }[] }).registrations;
    const remotes = regs.flatMap((r) => r.channels.map((c) => c.remote));
    expect(remotes.length).toBeGreaterThan(0);
    for (const r of remotes) expect(r).toMatch(/^127\.0\.0\.1:\d+$/);
    const html = (await request(addr.port, { host: `localhost:${addr.port}`, headers: { accept: 'text/html' } })).body;
    expect(html).toContain('127.0.0.1:');
    expect(html).not.toContain('::ffff:');
  });
});
