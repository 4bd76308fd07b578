import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { redisOptions } from '../../src/cluster/redisurl.js';
import { cleanup } from '../helpers/fixture.js';
import { useRedis } from '../helpers/redis.js';

/** Connects with the options `url` parses to and says which database the connection is on. */
async function dbOf(url: string): Promise<number> {
  const options = { ...redisOptions(url), lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null };
  // ioredis's option types are not written for exactOptionalPropertyTypes; the values are.
  const r = new Redis(options as never);
  // ioredis reports the server's refusal as an 'error' event, and the connect() as a closed connection.
  let refused: Error | undefined;
  r.on('error', (e: Error) => {
    refused ??= e;
  });
  try {
    await r.connect().catch((e: unknown) => {
      throw refused ?? e;
    });
    const info = await r.client('INFO');
    return Number(/ db=(\d+)/.exec(String(info))?.[1]);
  } finally {
    r.disconnect();
  }
}

describe('--redis URLs against a real redis-server', () => {
  it('reaches a server with a password over TCP (redis://) and over its unix socket (a path)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ptth-sock-'));
    cleanup(() => rmSync(dir, { recursive: true, force: true }));
    const sock = join(dir, 'redis.sock');
    const redis = await useRedis({
      args: ['--requirepass', 'p@ss word', '--unixsocket', sock, '--unixsocketperm', '700'],
    });
    expect(await dbOf(`redis://:p%40ss%20word@127.0.0.1:${redis.port}/3`)).toBe(3);
    expect(await dbOf(`127.0.0.1:${redis.port}?password=p%40ss%20word`)).toBe(0);
    expect(await dbOf(`${sock}?db=5&password=p%40ss%20word`)).toBe(5);
    await expect(dbOf(`redis://:wrong@127.0.0.1:${redis.port}`)).rejects.toThrow(/WRONGPASS|invalid password/i);
  });

  it('finds the master through a Sentinel (redis+sentinel://)', async () => {
    const master = await useRedis({ args: ['--requirepass', 'masterpw12345678'] });
    const sentinel = await useRedis({ sentinel: { master: 'ptthmain', port: master.port } });
    // Writes through the options go to the master the Sentinel names.
    const r = new Redis({
      ...redisOptions(`redis+sentinel://:masterpw12345678@127.0.0.1:${sentinel.port}/ptthmain/1`),
      lazyConnect: true,
      maxRetriesPerRequest: 0,
    } as never);
    r.on('error', () => {});
    try {
      await r.connect();
      await r.set('through-sentinel', 'yes');
      expect(await r.get('through-sentinel')).toBe('yes');
      expect(String(await r.client('INFO'))).toMatch(/ db=1 /);
      expect(await r.config('GET', 'port')).toEqual(['port', String(master.port)]);
    } finally {
      r.disconnect();
    }
  });
});
