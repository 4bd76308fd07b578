import { describe, expect, it } from 'vitest';
import { hostProblem, originForm } from '../../src/gateway/classify.js';

/* The Host and absolute-form checks the gateway applies before routing (RFC 9112 section 3.2). */
const GOOD = [
  'app.localhost',
  'app.localhost:8080',
  'localhost:65535',
  '127.0.0.1:1',
  '[::1]:8080',
  '[::1]',
  'a_b.x',
  '',
];
const BAD = ['app.localhost:abc', 'app.localhost:', ':', ':99999', 'x:65536', 'a.b:80:90', '[zz]:80', 'fo o', 'a/b'];

describe('hostProblem', () => {
  it.each(GOOD)('routes %j', (host) => expect(hostProblem(host)).toBeUndefined());
  it.each(BAD)('refuses %j', (host) => expect(hostProblem(host)).toMatch(/is not a host name or IP address/));
});

describe('originForm', () => {
  it('keeps path and query exactly as sent when the authority matches (case and default port aside)', () => {
    expect(originForm('http://APP.localhost:80/a/../%2F?x=1', 'app.localhost')).toEqual({ path: '/a/../%2F?x=1' });
    expect(originForm('http://app.localhost:8080', 'app.localhost:8080')).toEqual({ path: '/' });
    expect(originForm('https://app.localhost?q', 'app.localhost:443')).toEqual({ path: '/?q' });
  });
  it('refuses another authority, a missing Host, userinfo, other schemes and non-URLs', () => {
    expect(originForm('http://b.localhost/x', 'a.localhost')).toHaveProperty('problem');
    expect(originForm('http://a.localhost:81/x', 'a.localhost:80')).toHaveProperty('problem');
    expect(originForm('http://a.localhost/x', undefined)).toHaveProperty('problem');
    expect(originForm('http://u:p@a.localhost/x', 'a.localhost')).toHaveProperty('problem');
    expect(originForm('ftp://a.localhost/x', 'a.localhost')).toHaveProperty('problem');
    expect(originForm('x', 'a.localhost')).toHaveProperty('problem');
  });
});
