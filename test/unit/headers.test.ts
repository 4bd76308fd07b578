import { describe, expect, it } from 'vitest';
import { forwardRequestHeaders, hasToken, requestingClient, withoutHopByHop } from '../../src/http/headers.js';

describe('forwarding headers', () => {
  const info = { clientAddress: '203.0.113.7', clientPort: 4321, proto: 'http' };

  it('keeps end-to-end headers in order and case, duplicates included, and adds the forwarding set', () => {
    const out = forwardRequestHeaders(['Host', 'foo.localhost', 'X-A', '1', 'x-a', '2', 'Accept', '*/*'], info);
    expect(out).toEqual([
      'Host',
      'foo.localhost',
      'X-A',
      '1',
      'x-a',
      '2',
      'Accept',
      '*/*',
      'X-Forwarded-For',
      '203.0.113.7',
      'X-Forwarded-Host',
      'foo.localhost',
      'X-Forwarded-Proto',
      'http',
      'Forwarded',
      'for=203.0.113.7;proto=http;host="foo.localhost"',
      'Requesting-Client',
      '203.0.113.7:4321',
    ]);
  });

  it('removes hop-by-hop headers, and those Connection names (RFC 9110 section 7.6.1)', () => {
    const out = forwardRequestHeaders(
      [
        'Host',
        'h',
        'Connection',
        'keep-alive, X-Secret',
        'Keep-Alive',
        'timeout=5',
        'TE',
        'trailers',
        'Transfer-Encoding',
        'chunked',
        'Upgrade',
        'h2c',
        'Proxy-Connection',
        'keep-alive',
        'X-Secret',
        's',
        'Trailer',
        'X',
        'X-Kept',
        'k',
      ],
      info,
    );
    const names = out.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
    for (const gone of [
      'connection',
      'keep-alive',
      'te',
      'transfer-encoding',
      'upgrade',
      'proxy-connection',
      'x-secret',
      'trailer',
    ]) {
      expect(names).not.toContain(gone);
    }
    expect(names).toContain('x-kept');
  });

  it('appends to X-Forwarded-For and Forwarded, and replaces what the gateway asserts', () => {
    const out = forwardRequestHeaders(
      [
        'Host',
        'h',
        'X-Forwarded-For',
        '10.0.0.1',
        'Forwarded',
        'for=10.0.0.1',
        'Requesting-Client',
        'forged:1',
        'X-Forwarded-Host',
        'forged',
        'X-Forwarded-Proto',
        'https',
      ],
      info,
    );
    const get = (n: string) => out.filter((_, i) => i % 2 === 0 && out[i] === n).length;
    expect(out[out.indexOf('X-Forwarded-For') + 1]).toBe('10.0.0.1, 203.0.113.7');
    expect(out[out.indexOf('Forwarded') + 1]).toBe('for=10.0.0.1, for=203.0.113.7;proto=http;host="h"');
    expect(out[out.indexOf('Requesting-Client') + 1]).toBe('203.0.113.7:4321');
    expect(out[out.indexOf('X-Forwarded-Host') + 1]).toBe('h');
    expect(out[out.indexOf('X-Forwarded-Proto') + 1]).toBe('http');
    expect(get('Requesting-Client')).toBe(1);
  });

  it('quotes IPv6 in Forwarded and brackets it in Requesting-Client', () => {
    const out = forwardRequestHeaders(['Host', 'h'], { clientAddress: '::1', clientPort: 9, proto: 'https' });
    expect(out[out.indexOf('Forwarded') + 1]).toBe('for="[::1]";proto=https;host="h"');
    expect(requestingClient('::1', 9)).toBe('[::1]:9');
  });

  it('keeps Upgrade and Connection for a visitor upgrade', () => {
    const out = forwardRequestHeaders(['Host', 'h', 'Connection', 'Upgrade', 'Upgrade', 'websocket'], {
      ...info,
      upgrade: 'websocket',
    });
    expect(out.slice(-4)).toEqual(['Connection', 'Upgrade', 'Upgrade', 'websocket']);
  });

  it('strips hop-by-hop fields from responses', () => {
    expect(
      withoutHopByHop([
        'Content-Type',
        'text/plain',
        'Connection',
        'close',
        'Transfer-Encoding',
        'chunked',
        'Set-Cookie',
        'a',
        'Set-Cookie',
        'b',
      ]),
    ).toEqual(['Content-Type', 'text/plain', 'Set-Cookie', 'a', 'Set-Cookie', 'b']);
  });

  it('reads comma-separated tokens case-insensitively', () => {
    expect(hasToken('websocket, PTTH/1.0', 'ptth/1.0')).toBe(true);
    expect(hasToken('PTTH/1.01', 'PTTH/1.0')).toBe(false);
    expect(hasToken(undefined, 'x')).toBe(false);
  });
});
