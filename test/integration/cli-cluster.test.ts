import * as net from 'node:net';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { hashKey } from '../../src/table/access.js';
import { request } from '../helpers/index.js';
import { cleanup, useApp } from '../helpers/fixture.js';
import { useRedis, useRedisForFile } from '../helpers/redis.js';
import { spawnCli, type Spawned } from '../helpers/spawn.js';

/*
 * `serve`'s cluster flags through the real command line: their checks (exit 2), joining a Redis
 * (the start-up lines name the node, its URL and the Redis, without its password), and
 * `--workers N`: N nodes on one port, restarted when they die, stopped together.
 */

/** The CLI, killed (SIGKILL, with every worker: they exit when their primary's IPC channel closes) when the test ends. */
function cli(args: string[], env?: NodeJS.ProcessEnv): Spawned {
  const p = spawnCli(args, env);
  cleanup(async () => {
    p.kill('SIGKILL');
    await p.exited();
  });
  return p;
}

/** The process `pid` is gone (no /proc entry, or a zombie nobody has reaped yet). */
function gone(pid: number): boolean {
  try {
    return /^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

/** `serve --workers 2 ...extra` with both workers ready: their pids and the public port. */
async function twoWorkers(
  redisUrl: string,
  extra: string[] = [],
): Promise<{ p: Spawned; pids: number[]; port: number }> {
  const p = cli([...SERVE, '--workers', '2', '--redis', redisUrl, ...extra]);
  const pids: number[] = [];
  for (const i of [1, 2])
    pids.push(Number((await p.waitFor(new RegExp(`worker ${i}/2 ready: pid (\\d+)`), 20_000))[1]));
  const [, port] = await p.waitFor(/listening on 127\.0\.0\.1:(\d+)/);
  return { p, pids, port: Number(port) };
}

const SERVE = ['serve', '--port', '0', '--host', '127.0.0.1', '--log-level', 'warn'];
const SECRET = 'an-adequately-long-cluster-secret';

describe('serve cluster flags: bad values exit 2 and say why', () => {
  it.each([
    [['--workers', '2'], /--workers 2 needs --redis: the workers share their routing table through Redis/],
    [['--node-url', 'http://10.0.0.1:8080'], /--node-url needs --redis/],
    [['--node-id', 'a', '--cluster-secret', SECRET], /--node-id and --cluster-secret need --redis/],
    [['--redis', 'http://h'], /bad Redis URL http:\/\/h: unknown scheme http:\/\//],
    [['--redis', 'redis://:hunter2hunter2@h/x'], /bad Redis URL redis:\/\/:\*\*\*@h\/x: the database must be a number/],
    [
      ['--redis', 'redis://h', '--node-url', 'ftp://h'],
      /--node-url must be an http:\/\/ or https:\/\/ URL, got "ftp:\/\/h"/,
    ],
    [['--redis', 'redis://h', '--node-url', 'http://h:1/x'], /--node-url is an origin, http\(s\):\/\/host\[:port\]/],
    [
      ['--redis', 'redis://h', '--node-id', 'a;b'],
      /--node-id must be 1 to 64 letters, digits, dots, underscores or dashes/,
    ],
    [
      ['--redis', 'redis://h', '--heartbeat', '1000', '--node-timeout', '1000'],
      /--node-timeout \(1000 ms\) must be longer than --heartbeat \(1000 ms\)/,
    ],
    [['--redis', 'redis://h', '--cluster-secret', 'short'], /the cluster secret has 5 characters, it needs 16 or more/],
    [
      ['--redis', 'redis://h', '--cluster-secret', SECRET, '--cluster-secret-file', '/x'],
      /--cluster-secret and --cluster-secret-file exclude each other/,
    ],
    [
      ['--redis', 'redis://h', '--cluster-secret-file', '/nonexistent/secret'],
      /cannot read --cluster-secret-file \/nonexistent\/secret: /,
    ],
    [['--workers', '0'], /--workers.*expected a whole number from 1 to 256/],
    [['--heartbeat', '5'], /--heartbeat.*expected a whole number >= 10/],
  ])('%j', async (args, message) => {
    const p = cli([...SERVE, ...args]);
    expect(await p.exited()).toBe(2);
    expect(p.output()).toMatch(message);
    expect(p.output()).not.toMatch(/hunter2/);
  });

  it('reads them from the environment too (PTTH_REDIS, PTTH_NODE_URL, PTTH_CLUSTER_SECRET)', async () => {
    const p = cli(SERVE, { PTTH_REDIS: 'redis://h', PTTH_NODE_URL: 'gopher://h', PTTH_CLUSTER_SECRET: SECRET });
    expect(await p.exited()).toBe(2);
    expect(p.output()).toMatch(/--node-url must be an http:\/\/ or https:\/\/ URL, got "gopher:\/\/h"/);
  });

  it('refuses a short secret from --cluster-secret-file, naming the file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ptth-secret-'));
    cleanup(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'secret');
    writeFileSync(file, 'tooshort\n');
    const p = cli([...SERVE, '--redis', 'redis://h', '--cluster-secret-file', file]);
    expect(await p.exited()).toBe(2);
    expect(p.output()).toContain(`the cluster secret (from ${file}) has 8 characters, it needs 16 or more`);
  });
});

describe('serve --redis', () => {
  const redis = useRedisForFile({ args: ['--requirepass', 'hunter2hunter2'] });
  const url = (): string => `redis://:hunter2hunter2@127.0.0.1:${redis().port}`;

  it('joins: the start-up lines name the node, its URL and the Redis (password hidden); apps are served; SIGTERM exits 0', async () => {
    const p = cli([...SERVE, '--redis', url(), '--node-id', 'alpha', '--cluster-secret', SECRET]);
    const [, port] = await p.waitFor(/listening on 127\.0\.0\.1:(\d+)/, 15_000);
    const [, nodeUrl] = await p.waitFor(
      new RegExp(
        `cluster node: +alpha at (http://127\\.0\\.0\\.1:${port}), Redis redis://:\\*\\*\\*@127\\.0\\.0\\.1:${redis().port}\\n`,
      ),
    );
    expect(nodeUrl).toBe(`http://127.0.0.1:${port}`);
    expect(p.output()).not.toContain('hunter2');
    const app = await useApp(Number(port), (_req, res) => res.end('hello from the cluster'), { name: 'alpha-app' });
    expect(app.name).toBe('alpha-app');
    const reply = await request(Number(port), { host: `alpha-app.localhost:${port}` });
    expect(reply.status).toBe(200);
    expect(reply.body).toBe('hello from the cluster');
    await app.close({ graceMs: 100 });
    p.kill('SIGTERM');
    expect(await p.exited()).toBe(0);
  });

  it('a Redis it cannot reach at start exits 1 and says which (password hidden)', async () => {
    const down = await useRedis();
    await down.kill();
    const p = cli([...SERVE, '--redis', `redis://:hunter2hunter2@127.0.0.1:${down.port}`]);
    expect(await p.exited()).toBe(1);
    expect(p.output()).toContain(`cannot join the cluster in Redis redis://:***@127.0.0.1:${down.port}`);
    // The reason, not ioredis's "Connection is closed.".
    expect(p.output()).toContain(`connect ECONNREFUSED 127.0.0.1:${down.port}`);
    expect(p.output()).not.toContain('hunter2');
  });
});

describe('serve --workers', () => {
  const redis = useRedisForFile();

  it('gives each worker an admin port of its own: --admin-port + n - 1, each scraping that worker', async () => {
    const base = await freePair();
    const p = cli([...SERVE, '--workers', '2', '--redis', redis().url, '--admin-port', String(base)]);
    const ids: string[] = [];
    for (const i of [1, 2])
      ids.push((await p.waitFor(new RegExp(`worker ${i}/2 ready: pid \\d+, node (\\S+)`), 20_000))[1] as string);
    for (const [i, id] of ids.entries()) {
      const metrics = await request(base + i, { path: '/metrics' });
      expect(metrics.status).toBe(200);
      expect(metrics.body).toContain(`node="${id}"`);
      expect(metrics.body).not.toContain(`node="${ids[1 - i]}"`);
    }
  });

  it('runs N nodes on one port: each reports ready, apps and visitors are served, a killed worker is restarted, SIGTERM stops all', async () => {
    const p = cli([...SERVE, '--workers', '2', '--redis', redis().url, '--cluster-secret', SECRET], undefined);
    const ready = (i: number, again = ''): RegExp =>
      new RegExp(`worker ${i}/2 ready${again}: pid (\\d+), node (\\S+) at (http://127\\.0\\.0\\.1:\\d+)\\n`);
    const [, pid1, node1, hop1] = await p.waitFor(ready(1), 20_000);
    const [, pid2, node2, hop2] = await p.waitFor(ready(2), 20_000);
    expect(node1).not.toBe(node2);
    expect(hop1).not.toBe(hop2);
    const [, port] = await p.waitFor(/listening on 127\.0\.0\.1:(\d+)/);
    // One banner for all of them.
    expect(p.output().match(/listening on/g)).toHaveLength(1);

    // Round-robin spreads the app's connections and the visitors over both workers: the requests
    // that land on the worker without a channel cross the internal hop.
    const app = await useApp(Number(port), (_req, res) => res.end('served'), { name: 'spread' });
    for (let i = 0; i < 6; i++) {
      const reply = await request(Number(port), { host: `spread.localhost:${port}` });
      expect(reply.status).toBe(200);
      expect(reply.body).toBe('served');
    }
    await app.close({ graceMs: 100 });

    process.kill(Number(pid2), 'SIGKILL');
    await p.waitFor(new RegExp(`worker 2/2 \\(pid ${pid2}\\) died, killed by SIGKILL: restarting in \\d+ ms`));
    const [, pid2b] = await p.waitFor(ready(2, ' \\(restart 1\\)'), 20_000);
    expect(pid2b).not.toBe(pid2);
    expect((await request(Number(port), { path: '/healthz' })).status).toBe(200);

    p.kill('SIGTERM');
    expect(await p.exited()).toBe(0);
    for (const pid of [pid1, pid2b]) expect(() => process.kill(Number(pid), 0)).toThrow();
  });

  it('gives up, with a message, when a worker keeps dying as it starts', async () => {
    const down = await useRedis();
    await down.kill();
    const p = cli([...SERVE, '--workers', '2', '--redis', down.url]);
    expect(await p.exited()).toBe(1);
    expect(p.output()).toMatch(/worker \d\/2 \(pid \d+\) died, exit code 1: restarting in 100 ms/);
    expect(p.output()).toMatch(/worker \d died 5 times in a row soon after starting \(last: exit code 1\); giving up/);
  }, 40_000);

  it('Ctrl-C reaches the primary and every worker at once: one graceful stop, exit 0', async () => {
    const { p, pids } = await twoWorkers(redis().url);
    // A terminal signals the whole process group; the workers get the primary's stop request on top.
    for (const pid of pids) process.kill(pid, 'SIGINT');
    p.kill('SIGINT');
    expect(await p.exited()).toBe(0);
    expect(p.output()).toContain('SIGINT: stopping 2 workers');
    expect(p.output()).not.toMatch(/died/);
  });

  it('passes SIGHUP on to every worker (each reloads its files)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ptth-keys-'));
    cleanup(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'keys.json');
    writeFileSync(
      file,
      JSON.stringify({ keys: [{ id: 'k', sha256: hashKey('ptth_a-key-0123456789abcdef'), names: ['*'] }] }),
    );
    const { p } = await twoWorkers(redis().url, ['--keys', file]);
    writeFileSync(file, '{"keys": [ not json');
    p.kill('SIGHUP');
    await p.waitFor(/keys reload failed[^]*keys reload failed/);
    p.kill('SIGTERM');
    expect(await p.exited()).toBe(0);
  });

  it('takes its workers with it when the primary is killed with SIGKILL', async () => {
    const { p, pids } = await twoWorkers(redis().url);
    p.kill('SIGKILL');
    await p.exited();
    await vi.waitFor(() => expect(pids.filter((pid) => !gone(pid))).toEqual([]), { timeout: 5_000, interval: 20 });
  });

  it('a second SIGTERM ends the workers at once, requests in flight or not: exit 1', async () => {
    const { p, port } = await twoWorkers(redis().url, ['--shutdown-grace', '60000']);
    let arrived!: () => void;
    const inFlight = new Promise<void>((r) => (arrived = r));
    // Never answers: the first SIGTERM waits for it.
    await useApp(port, () => arrived(), { name: 'hang' });
    request(port, { host: `hang.localhost:${port}` }).catch(() => {});
    await inFlight;
    p.kill('SIGTERM');
    await p.waitFor(/SIGTERM: stopping 2 workers/);
    p.kill('SIGTERM');
    expect(await p.exited()).toBe(1);
  });

  it('kills a worker that has not exited --shutdown-grace + 5 s after the stop, and says so: exit 1', async () => {
    const { p, pids } = await twoWorkers(redis().url, ['--shutdown-grace', '0']);
    const [stuck] = pids as [number];
    process.kill(stuck, 'SIGSTOP');
    cleanup(() => {
      if (!gone(stuck)) process.kill(stuck, 'SIGKILL');
    });
    p.kill('SIGTERM');
    expect(await p.exited()).toBe(1);
    expect(p.output()).toMatch(
      new RegExp(`worker 1/2 \\(pid ${stuck}\\) had not exited 5000 ms after the stop: killed`),
    );
    expect(gone(stuck)).toBe(true);
  }, 30_000);
});

/** A port whose next one is free too (a worker pair's admin ports), found by listening on both. */
async function freePair(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const first = net.createServer();
    await new Promise<void>((resolve) => first.listen(0, '127.0.0.1', () => resolve()));
    const port = (first.address() as net.AddressInfo).port;
    const second = net.createServer();
    const ok = await new Promise<boolean>((resolve) => {
      second.once('error', () => resolve(false));
      second.listen(port + 1, '127.0.0.1', () => resolve(true));
    });
    await new Promise((r) => first.close(r));
    if (ok) {
      await new Promise((r) => second.close(r));
      return port;
    }
  }
  throw new Error('no two free ports in a row');
}
