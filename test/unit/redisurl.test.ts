import { describe, expect, it } from 'vitest';
import { RedisUrlError, redactRedisUrl, redisOptions } from '../../src/cluster/redisurl.js';

describe('redisOptions: the forms of --redis', () => {
  it.each([
    ['redis://127.0.0.1', { host: '127.0.0.1', port: 6379 }],
    ['redis://redis.internal:6380', { host: 'redis.internal', port: 6380 }],
    ['redis://:s3cret@h:1/2', { host: 'h', port: 1, password: 's3cret', db: 2 }],
    ['redis://ptth:p%40ss%2Fw@h', { host: 'h', port: 6379, username: 'ptth', password: 'p@ss/w' }],
    ['redis://[::1]:7000', { host: '::1', port: 7000 }],
    ['redis://h?family=6&db=3', { host: 'h', port: 6379, family: 6, db: 3 }],
    ['rediss://h', { host: 'h', port: 6379, tls: { servername: 'h' } }],
    ['REDISS://u:p@h:6390/1', { host: 'h', port: 6390, username: 'u', password: 'p', db: 1, tls: { servername: 'h' } }],
    ['h:6380', { host: 'h', port: 6380 }],
    ['localhost', { host: 'localhost', port: 6379 }],
    ['/run/redis/redis.sock', { path: '/run/redis/redis.sock' }],
    ['/tmp/r.sock?db=4&password=x%26y', { path: '/tmp/r.sock', db: 4, password: 'x&y' }],
  ])('%s', (url, options) => {
    expect(redisOptions(url)).toEqual(options);
  });

  it('reads a Sentinel URL: the Sentinels, the master group, Redis credentials, the Sentinels credentials', () => {
    expect(
      redisOptions('redis+sentinel://:pw@s1:26380,s2,[::1]:5000/mymaster/2?sentinelPassword=sp&sentinelUsername=su'),
    ).toEqual({
      sentinels: [
        { host: 's1', port: 26380 },
        { host: 's2', port: 26379 },
        { host: '::1', port: 5000 },
      ],
      name: 'mymaster',
      password: 'pw',
      db: 2,
      sentinelPassword: 'sp',
      sentinelUsername: 'su',
    });
    expect(redisOptions('redis+sentinel://s1/main')).toEqual({
      sentinels: [{ host: 's1', port: 26379 }],
      name: 'main',
    });
  });

  it('speaks TLS to the Sentinels and to the master with rediss+sentinel://', () => {
    expect(redisOptions('rediss+sentinel://s1:26379/main')).toEqual({
      sentinels: [{ host: 's1', port: 26379 }],
      name: 'main',
      tls: {},
      sentinelTLS: {},
      enableTLSForSentinelMode: true,
    });
  });

  it.each([
    ['', /it is empty/],
    ['http://h', /unknown scheme http:\/\//],
    ['redis://h/db', /the database must be a number, got db/],
    ['redis://h:0', /port 0 is out of range/],
    ['redis://h:99999', /does not parse/],
    ['redis://h?pasword=x', /unknown query parameter pasword \(known: db, family, username, password\)/],
    ['redis://h?family=5', /family must be 4 or 6, got 5/],
    ['redis://h?sentinelPassword=x', /unknown query parameter sentinelPassword/],
    ['redis+sentinel:///main', /names no Sentinel host/],
    ['redis+sentinel://s1', /names no master group/],
    ['redis+sentinel://s1/', /names no master group/],
    ['redis+sentinel://s1/main/1/x', /the path is \/MASTER or \/MASTER\/DB/],
    ['redis+sentinel://s1,:5/main', /bad Sentinel address ":5"/],
    ['redis://:%zz@h', /bad percent-encoding/],
  ])('refuses %j with a message that says why', (url, why) => {
    expect(() => redisOptions(url)).toThrow(RedisUrlError);
    expect(() => redisOptions(url)).toThrow(why);
  });

  it('never shows the password in its errors', () => {
    expect(() => redisOptions('redis://u:topsecret@h/notadb')).toThrow(/^bad Redis URL redis:\/\/u:\*\*\*@h\/notadb: /);
    expect(() => redisOptions('redis://u:top/secret@h:0')).not.toThrow(/secret/);
  });
});

describe('redactRedisUrl', () => {
  it.each([
    ['redis://h:6379/0', 'redis://h:6379/0'],
    ['redis://:pw@h', 'redis://:***@h'],
    ['redis://user:pw@h:1/2', 'redis://user:***@h:1/2'],
    ['redis://user@h', 'redis://user@h'],
    ['rediss://u:p@ss@h', 'rediss://u:***@h'],
    [
      'redis+sentinel://:pw@a:1,b:2/m?sentinelPassword=sp&db=1',
      'redis+sentinel://:***@a:1,b:2/m?sentinelPassword=***&db=1',
    ],
    ['/tmp/r.sock?password=x', '/tmp/r.sock?password=***'],
    ['h:6379', 'h:6379'],
  ])('%s -> %s', (url, shown) => {
    expect(redactRedisUrl(url)).toBe(shown);
  });
});
