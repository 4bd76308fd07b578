import { describe, expect, it } from 'vitest';
import { rawClaim, request } from '../helpers/index.js';
import { track, useApp, useGateway } from '../helpers/fixture.js';

describe('end to end through the Node client', () => {
  it('serves a request handler at its public URL', async () => {
    const gw = await useGateway();
    const app = await useApp(gw.port, (req, res) => res.end(`hello ${req.url}`), { name: 'demo' });
    expect(app.url).toBe(`http://demo.localhost:${gw.port}/`);
    const r = await request(gw.port, { host: gw.host('demo'), path: '/a?b=1' });
    expect(r.status).toBe(200);
    expect(r.body).toBe('hello /a?b=1');
  });

  it('the status page link /?format=json answers JSON without an Accept header', async () => {
    const gw = await useGateway();
    const r = await request(gw.port, { host: `localhost:${gw.port}`, path: '/?format=json' });
    expect(r.headers['content-type']).toContain('application/json');
    expect(JSON.parse(r.body)).toMatchObject({ gateway: { domain: 'localhost' }, registrations: [] });
    const html = await request(gw.port, { host: `localhost:${gw.port}`, path: '/' });
    expect(html.headers['content-type']).toContain('text/html');
  });

  it('answers a PTTH/1.0 claim with the byte-exact 101', async () => {
    const gw = await useGateway();
    const { socket, head } = await rawClaim(
      gw.port,
      `POST /?name=foo&token=s3cret HTTP/1.1\r\nHost: localhost:${gw.port}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n`,
    );
    track(socket);
    expect(head).toMatch(
      new RegExp(
        `^HTTP/1\\.1 101 Switching Protocols\\r\\nUpgrade: PTTH/1\\.0\\r\\nConnection: Upgrade\\r\\nLink: <http://foo\\.localhost:${gw.port}/>; rel="related"\\r\\nLocation: http://localhost:${gw.port}/_ptth/[A-Za-z0-9_-]{32}\\r\\n\\r\\n$`,
      ),
    );
  });
});
