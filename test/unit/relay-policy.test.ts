import { describe, expect, it } from 'vitest';
import { addressAllowed, addressKind, matchTarget, parseRelayPattern } from '../../src/http/relay-policy.js';

describe('relay allow-list patterns', () => {
  it('parses host, wildcard, port, IPv4 and bracketed or bare IPv6 forms', () => {
    expect(parseRelayPattern('API.Example.com')).toMatchObject({
      host: 'api.example.com',
      wildcard: false,
      ip: false,
      port: undefined,
    });
    expect(parseRelayPattern('*.example.com:8443')).toMatchObject({ host: 'example.com', wildcard: true, port: 8443 });
    expect(parseRelayPattern('127.0.0.1:8080')).toMatchObject({ host: '127.0.0.1', ip: true, port: 8080 });
    expect(parseRelayPattern('[::1]:9000')).toMatchObject({ host: '::1', ip: true, port: 9000 });
    expect(parseRelayPattern('::1')).toMatchObject({ host: '::1', ip: true, port: undefined });
  });

  it.each([
    ['', 'non-empty'],
    ['*', 'not a host name'],
    ['a.*.example.com', 'not a host name'],
    ['*.127.0.0.1', '"*." goes before a host name'],
    ['example.com:0', 'port must be 1 to 65535'],
    ['example.com:70000', 'port must be 1 to 65535'],
    ['example.com:http', 'port must be 1 to 65535'],
    ['[::1', 'written [address]'],
    ['[example.com]:80', 'not an IPv6 address'],
    ['[::1]x', 'only ":port" may follow'],
    ['exa mple.com', 'not a host name'],
  ])('refuses %j with a message that says why', (text, why) => {
    expect(() => parseRelayPattern(text)).toThrow(why);
  });

  it('matches a name exactly, a wildcard only below its suffix, and the port when one is given', () => {
    const patterns = ['api.example.com', '*.example.net:8443', '127.0.0.1:8080'].map(parseRelayPattern);
    expect(matchTarget(patterns, 'API.example.com', 80)?.text).toBe('api.example.com');
    expect(matchTarget(patterns, 'api.example.com', 1234)?.text).toBe('api.example.com');
    expect(matchTarget(patterns, 'x.api.example.com', 80)).toBeUndefined();
    expect(matchTarget(patterns, 'a.b.example.net', 8443)?.text).toBe('*.example.net:8443');
    expect(matchTarget(patterns, 'example.net', 8443)).toBeUndefined();
    expect(matchTarget(patterns, 'a.example.net', 443)).toBeUndefined();
    expect(matchTarget(patterns, 'badexample.net', 8443)).toBeUndefined();
    expect(matchTarget(patterns, '127.0.0.1', 8080)?.text).toBe('127.0.0.1:8080');
    expect(matchTarget(patterns, '127.0.0.1', 8081)).toBeUndefined();
  });
});

describe('relay address kinds', () => {
  it.each([
    ['127.0.0.1', 'loopback'],
    ['127.255.0.9', 'loopback'],
    ['::1', 'loopback'],
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:7f00:1', 'loopback'],
    ['64:ff9b::7f00:1', 'loopback'],
    ['2002:7f00:1::', 'loopback'],
    ['10.1.2.3', 'private'],
    ['172.16.0.1', 'private'],
    ['172.31.255.255', 'private'],
    ['192.168.1.1', 'private'],
    ['100.64.0.1', 'private'],
    ['fd12:3456::1', 'private'],
    ['169.254.1.1', 'link-local'],
    ['fe80::1', 'link-local'],
    ['169.254.169.254', 'metadata'],
    ['::ffff:169.254.169.254', 'metadata'],
    ['fd00:ec2::254', 'metadata'],
    ['0.0.0.0', 'reserved'],
    ['::', 'reserved'],
    ['224.0.0.1', 'reserved'],
    ['255.255.255.255', 'reserved'],
    ['not-an-ip', 'reserved'],
    ['172.32.0.1', 'public'],
    ['8.8.8.8', 'public'],
    ['2606:4700::1111', 'public'],
  ])('%s is %s', (address, kind) => {
    expect(addressKind(address)).toBe(kind);
  });

  it('lets a non-public address through only when a pattern names that address (and its port)', () => {
    const byName = ['*.example.com', 'localhost:8080'].map(parseRelayPattern);
    expect(addressAllowed(byName, '127.0.0.1', 8080)).toBe(false);
    expect(addressAllowed(byName, '169.254.169.254', 80)).toBe(false);
    expect(addressAllowed(byName, '8.8.8.8', 80)).toBe(true);
    const byAddress = ['127.0.0.1:8080', '[::1]'].map(parseRelayPattern);
    expect(addressAllowed(byAddress, '127.0.0.1', 8080)).toBe(true);
    expect(addressAllowed(byAddress, '127.0.0.1', 8081)).toBe(false);
    expect(addressAllowed(byAddress, '127.0.0.2', 8080)).toBe(false);
    expect(addressAllowed(byAddress, '0:0:0:0:0:0:0:1', 5)).toBe(true);
    expect(addressAllowed(byAddress, '10.0.0.1', 8080)).toBe(false);
  });
});
