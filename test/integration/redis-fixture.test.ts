import { existsSync, readFileSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { describe, expect, it, vi } from 'vitest';
import { ping, startRedis, useRedis, useRedisForFile } from '../helpers/redis.js';
import { cleanup } from '../helpers/fixture.js';
import { spawnNode } from '../helpers/spawn.js';

/**
 * The process `pid` is gone: no /proc entry, or a zombie (dead; its parent has not reaped it yet,
 * and an orphan's new parent in a container may never do so).
 */
function gone(pid: number): boolean {
  try {
    return /^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

/** A client that fails fast instead of retrying, so a test sees a down server as an error. */
function client(url: string): Redis {
  const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  r.on('error', () => {});
  return r;
}

describe('redis test fixture', () => {
  it('starts a server that answers PING through ioredis, kills it, restarts it empty on the same port, stops it', async () => {
    const redis = await useRedis();
    expect(redis.url).toBe(`redis://127.0.0.1:${redis.port}`);
    const first = client(redis.url);
    await first.connect();
    expect(await first.ping()).toBe('PONG');
    await first.set('k', 'v');
    // Without persistence: no RDB snapshots, no append-only file.
    expect(await first.config('GET', 'save')).toEqual(['save', '']);
    expect(await first.config('GET', 'appendonly')).toEqual(['appendonly', 'no']);
    first.disconnect();

    const pid = redis.pid;
    expect(pid).toBeTypeOf('number');
    await redis.kill();
    expect(redis.pid).toBeUndefined();
    expect(gone(pid as number)).toBe(true);
    await expect(ping(redis.port, 500)).rejects.toThrow();

    await redis.restart();
    expect(redis.pid).not.toBe(pid);
    const second = client(redis.url);
    await second.connect();
    expect(await second.get('k')).toBeNull();
    expect(await second.dbsize()).toBe(0);
    second.disconnect();

    const pid2 = redis.pid as number;
    await redis.stop();
    expect(gone(pid2)).toBe(true);
    await expect(ping(redis.port, 500)).rejects.toThrow();
  });

  it('removes its temp directory on stop, and stop twice is harmless', async () => {
    const redis = await startRedis();
    const c = client(redis.url);
    await c.connect();
    const [, dir] = (await c.config('GET', 'dir')) as [string, string];
    c.disconnect();
    expect(existsSync(dir)).toBe(true);
    await redis.stop();
    expect(existsSync(dir)).toBe(false);
    await redis.stop();
  });

  it('gives each server its own port', async () => {
    const [a, b] = await Promise.all([useRedis(), useRedis()]);
    expect(a.port).not.toBe(b.port);
    await Promise.all([ping(a.port), ping(b.port)]);
  });

  it('restarts a running server (kills it first)', async () => {
    const redis = await useRedis();
    const pid = redis.pid as number;
    await redis.restart();
    expect(gone(pid)).toBe(true);
    await ping(redis.port);
  });

  it('dies with the process that started it, even one killed with SIGKILL', async () => {
    const helper = fileURLToPath(new URL('../helpers/redis.ts', import.meta.url));
    const code = `const m = await import(${JSON.stringify(helper)}); const r = await m.startRedis(); console.log('pid', r.pid, 'dir', r.dir);`;
    const parent = spawnNode(['--import', 'tsx', '--input-type=module', '-e', code], { waitMs: 10_000 });
    try {
      const [, pidText, dir] = await parent.waitFor(/pid (\d+) dir (\S+)\n/);
      // Nobody is left to remove its directory: the test does.
      cleanup(() => rmSync(dir as string, { recursive: true, force: true }));
      const pid = Number(pidText);
      expect(gone(pid)).toBe(false);
      parent.kill('SIGKILL');
      await parent.exited();
      await vi.waitFor(() => expect(gone(pid)).toBe(true), { timeout: 3_000, interval: 20 });
    } finally {
      parent.kill('SIGKILL');
    }
  });

  it('rejects with the log when redis-server refuses its arguments, leaving no process', async () => {
    await expect(startRedis({ args: ['--no-such-directive', 'x'] })).rejects.toThrow(/exited .* before it was ready/s);
  });
});

describe('redis test fixture for a whole file', () => {
  const redis = useRedisForFile();
  let pid: number | undefined;

  it('is running inside the tests', async () => {
    pid = redis().pid;
    await ping(redis().port);
  });

  it('is the same server in the next test', () => {
    expect(redis().pid).toBe(pid);
  });
});
