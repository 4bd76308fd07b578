import { describe, expect, it } from 'vitest';
import { classify, GATEWAY_SEGMENTS, nameFromPath } from '../../src/gateway/classify.js';
import { HEALTH_PATHS } from '../../src/gateway/endpoints.js';
import { PRIVATE_PREFIX } from '../../src/gateway/context.js';
import { stripPrefix } from '../../src/gateway/forward.js';

/* Path-based public URLs (docs/PROTOCOL.md section 1): which paths of the gateway host name an app. */

describe('nameFromPath (pure)', () => {
  it('takes the first segment when it is a name, and says whether anything follows it', () => {
    expect(nameFromPath('/app/x/y')).toEqual({ name: 'app', via: { prefix: '/app', bare: false } });
    expect(nameFromPath('/app/')).toEqual({ name: 'app', via: { prefix: '/app', bare: false } });
    expect(nameFromPath('/app')).toEqual({ name: 'app', via: { prefix: '/app', bare: true } });
    expect(nameFromPath('/a-1')).toEqual({ name: 'a-1', via: { prefix: '/a-1', bare: true } });
  });

  it('names no app for the root, paths that are no name, upper case, or percent-encoding', () => {
    for (const path of [
      undefined,
      '',
      '/',
      '//x',
      '*',
      '/App/',
      '/-x/',
      '/x_y/',
      '/favicon.ico',
      '/%61pp/',
      `/${'a'.repeat(64)}/`,
    ]) {
      expect(nameFromPath(path), String(path)).toBeUndefined();
    }
  });

  it("names no app for any of the gateway's own paths", () => {
    const own = [
      '/reversehttp',
      '/reversehttp/',
      '/_ptth/abc',
      '/ptth.js',
      '/metrics',
      '/healthz',
      '/readyz',
      '/relay/example.com',
    ];
    for (const path of own) expect(nameFromPath(path), path).toBeUndefined();
    // Every path the gateway serves on its own host is in the list (endpoints.ts, browser.ts, classify.ts).
    for (const path of [...HEALTH_PATHS, PRIVATE_PREFIX, '/reversehttp', '/ptth.js']) {
      expect(GATEWAY_SEGMENTS.has(path.split('/')[1] as string), path).toBe(true);
    }
  });
});

describe('classify with path URLs', () => {
  const gw = { host: 'localhost:8080' };
  const ip = { host: '127.0.0.1:8080' };

  it('host mode (the default) routes by Host only, as before', () => {
    expect(classify({ ...gw, upgrade: undefined, method: 'GET', path: '/app/' }, 'localhost')).toEqual({
      kind: 'gateway',
    });
    expect(classify({ ...gw, upgrade: undefined, method: 'GET', path: '/app/' }, 'localhost', 'host')).toEqual({
      kind: 'gateway',
    });
  });

  it('path mode routes /NAME/ on any gateway host, and treats NAME.domain as a gateway host', () => {
    const via = { prefix: '/app', bare: false };
    expect(classify({ ...gw, upgrade: undefined, method: 'GET', path: '/app/x' }, 'localhost', 'path')).toEqual({
      kind: 'visitor',
      name: 'app',
      via,
    });
    expect(classify({ ...ip, upgrade: undefined, method: 'GET', path: '/app/x' }, 'localhost', 'path')).toEqual({
      kind: 'visitor',
      name: 'app',
      via,
    });
    expect(
      classify({ host: 'other.localhost', upgrade: undefined, method: 'GET', path: '/' }, 'localhost', 'path'),
    ).toEqual({ kind: 'gateway' });
    expect(
      classify({ host: 'other.localhost', upgrade: undefined, method: 'GET', path: '/app/' }, 'localhost', 'path'),
    ).toEqual({ kind: 'visitor', name: 'app', via });
  });

  it("keeps the gateway's own roads: claims, Comet, the WebSocket channel at /, endpoints", () => {
    expect(classify({ ...gw, upgrade: 'PTTH/1.0', path: '/app/' }, 'localhost', 'path')).toEqual({
      kind: 'claim',
      hostName: undefined,
    });
    expect(classify({ host: 'app.localhost', upgrade: 'PTTH/1.0', path: '/' }, 'localhost', 'path')).toEqual({
      kind: 'claim',
      hostName: 'app',
    });
    expect(classify({ ...gw, upgrade: undefined, method: 'POST', path: '/reversehttp' }, 'localhost', 'path')).toEqual({
      kind: 'comet',
    });
    expect(classify({ ...gw, upgrade: 'websocket', path: '/' }, 'localhost', 'path')).toEqual({ kind: 'websocket' });
    expect(classify({ ...gw, upgrade: undefined, method: 'GET', path: '/metrics' }, 'localhost', 'path')).toEqual({
      kind: 'gateway',
    });
  });

  it("a visitor's WebSocket to /NAME/ is the app's", () => {
    expect(classify({ ...gw, upgrade: 'websocket', path: '/app/chat' }, 'localhost', 'path')).toEqual({
      kind: 'visitor',
      name: 'app',
      via: { prefix: '/app', bare: false },
    });
  });

  it("both mode treats --public-url's host as the gateway's even under the domain: path URLs live there", () => {
    const head = { host: 'gw.localhost:8080', upgrade: undefined, method: 'GET', path: '/app/' };
    expect(classify(head, 'localhost', 'both', 'gw.localhost')).toEqual({
      kind: 'visitor',
      name: 'app',
      via: { prefix: '/app', bare: false },
    });
    expect(classify(head, 'localhost', 'both', 'other.localhost')).toEqual({ kind: 'visitor', name: 'gw' });
    // Host mode is as before: the public URL's host under the domain is an app host.
    expect(classify(head, 'localhost', 'host', 'gw.localhost')).toEqual({ kind: 'visitor', name: 'gw' });
  });

  it('both mode answers the host shape and the path shape', () => {
    expect(
      classify({ host: 'app.localhost', upgrade: undefined, method: 'GET', path: '/other/' }, 'localhost', 'both'),
    ).toEqual({ kind: 'visitor', name: 'app' });
    expect(classify({ ...gw, upgrade: undefined, method: 'GET', path: '/app/' }, 'localhost', 'both')).toEqual({
      kind: 'visitor',
      name: 'app',
      via: { prefix: '/app', bare: false },
    });
  });
});

describe('stripPrefix', () => {
  it('leaves the path after the prefix, and / for the bare prefix', () => {
    expect(stripPrefix('/app/x?y=1', '/app')).toBe('/x?y=1');
    expect(stripPrefix('/app/', '/app')).toBe('/');
    expect(stripPrefix('/app', '/app')).toBe('/');
    expect(stripPrefix('/app?y=1', '/app')).toBe('/?y=1');
    expect(stripPrefix('/app//x', '/app')).toBe('//x');
  });
});
