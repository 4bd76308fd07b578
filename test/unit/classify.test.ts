import { describe, expect, it } from 'vitest';
import { classify, hostname, nameFromHost } from '../../src/gateway/classify.js';

describe('classify (pure)', () => {
  it('strips ports and lower-cases hosts, IPv6 literals included', () => {
    expect(hostname('Foo.LocalHost:8080')).toBe('foo.localhost');
    expect(hostname('[::1]:8080')).toBe('[::1]');
    expect(hostname('example.com')).toBe('example.com');
  });

  it('finds the app name in NAME.domain only', () => {
    expect(nameFromHost('foo.localhost:8080', 'localhost')).toBe('foo');
    expect(nameFromHost('FOO.localhost.', 'localhost')).toBe('foo');
    expect(nameFromHost('a.b.localhost', 'localhost')).toBe('a.b');
    expect(nameFromHost('localhost:8080', 'localhost')).toBeUndefined();
    expect(nameFromHost('127.0.0.1:8080', 'localhost')).toBeUndefined();
    expect(nameFromHost('[::1]:8080', 'localhost')).toBeUndefined();
    expect(nameFromHost('foolocalhost', 'localhost')).toBeUndefined();
    expect(nameFromHost('foo.example.com', 'localhost')).toBeUndefined();
    expect(nameFromHost(undefined, 'localhost')).toBeUndefined();
    expect(nameFromHost('x.tunnel.example.com', 'tunnel.example.com')).toBe('x');
  });

  it('routes PTTH upgrades to claims, app hosts to visitors, the rest to the gateway', () => {
    expect(classify({ host: 'localhost:8080', upgrade: 'PTTH/1.0' }, 'localhost')).toEqual({
      kind: 'claim',
      hostName: undefined,
    });
    expect(classify({ host: 'foo.localhost', upgrade: 'websocket, ptth/1.0' }, 'localhost')).toEqual({
      kind: 'claim',
      hostName: 'foo',
    });
    expect(classify({ host: 'foo.localhost', upgrade: 'websocket' }, 'localhost')).toEqual({
      kind: 'visitor',
      name: 'foo',
    });
    expect(classify({ host: 'foo.localhost', upgrade: undefined }, 'localhost')).toEqual({
      kind: 'visitor',
      name: 'foo',
    });
    // A WebSocket to the gateway host is a WebSocket channel claim (docs/PROTOCOL.md section 6).
    expect(classify({ host: 'localhost', upgrade: 'websocket' }, 'localhost')).toEqual({ kind: 'websocket' });
    expect(classify({ host: 'localhost', upgrade: 'h2c' }, 'localhost')).toEqual({ kind: 'gateway' });
    expect(classify({ host: 'ptth.localhost', upgrade: 'PTTH/1.1' }, 'localhost')).toEqual({
      kind: 'visitor',
      name: 'ptth',
    });
  });
});
