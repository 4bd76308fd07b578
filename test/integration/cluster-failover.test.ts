import * as http from 'node:http';
import { describe, expect, it } from 'vitest';
import { cleanup, useApp } from '../helpers/fixture.js';
import { useRedisForFile } from '../helpers/redis.js';
import { spawnCli, type Spawned } from '../helpers/spawn.js';

/*
 * A node of a three-node cluster killed with SIGKILL while visitors keep coming: real `serve`
 * processes on one real redis-server, an app spread over the nodes with the Node client, visitors
 * on the surviving nodes. No visitor may get an error; a request that waited did so at most
 * --reconnect-wait.
 */

const redis = useRedisForFile();
const SECRET = 'a-cluster-secret-for-the-failover-test';
const RECONNECT_WAIT = 4000;

interface CliNode {
  readonly p: Spawned;
  readonly port: number;
}

async function startNode(id: string): Promise<CliNode> {
  const p = spawnCli([
    'serve',
    '--port',
    '0',
    '--host',
    '127.0.0.1',
    '--log-level',
    'warn',
    '--redis',
    redis().url,
    '--node-id',
    id,
    '--cluster-secret',
    SECRET,
    '--heartbeat',
    '100',
    '--node-timeout',
    '1000',
    '--reconnect-wait',
    String(RECONNECT_WAIT),
  ]);
  cleanup(async () => {
    p.kill('SIGKILL');
    await p.exited();
  });
  const [, port] = await p.waitFor(/listening on 127\.0\.0\.1:(\d+)/, 15_000);
  return { p, port: Number(port) };
}

/** Resolves when `check` holds, polling every 20 ms; fails after `ms`. */
async function until(check: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

interface Outcome {
  status: number;
  ms: number;
  error?: string;
}

function visit(port: number, path: string): Promise<Outcome> {
  const start = performance.now();
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path, headers: { host: `steady.localhost:${port}` } }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, ms: performance.now() - start }));
    });
    req.on('error', (err) => resolve({ status: 0, ms: performance.now() - start, error: err.message }));
  });
}

describe('a cluster losing a node under load', () => {
  it('serves every visitor of the surviving nodes while a node is killed with SIGKILL', async () => {
    const nodes = [await startNode('n1'), await startNode('n2'), await startNode('n3')];
    const [n1, n2, n3] = nodes as [CliNode, CliNode, CliNode];
    let served = 0;
    const tunnel = await useApp(
      n1.port,
      (req, res) => {
        served++;
        res.end(`ok ${req.url}`);
      },
      {
        name: 'steady',
        token: 'steady-token',
        gateway: nodes.map((n) => `http://127.0.0.1:${n.port}`),
        http1: true,
        connections: 6,
        backoff: 50,
        maxBackoff: 300,
      },
    );
    // Channels on every node before the kill.
    const spread = (): boolean => tunnel.nodes.every((n) => n.connections > 0);
    for (let i = 0; !spread(); i++) {
      if (i > 250) throw new Error(`channels never spread: ${JSON.stringify(tunnel.nodes)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    // Visitors on n2 and n3 (a load balancer that stopped sending to n1 would do the same), 8 at a time.
    const outcomes: Outcome[] = [];
    let stop = false;
    let seq = 0;
    const visitor = async (port: number): Promise<void> => {
      while (!stop) outcomes.push(await visit(port, `/r${seq++}`));
    };
    const load = [n2, n3, n2, n3, n2, n3, n2, n3].map((n) => visitor(n.port));
    await until(() => outcomes.length >= 50, 10_000, 'load before the kill');
    const before = outcomes.length;
    n1.p.kill('SIGKILL');
    await n1.p.exited();
    // The app finds n1 gone and moves its channels; the load goes on well past that.
    const n1Status = () => tunnel.nodes.find((n) => n.gateway.includes(`:${n1.port}`));
    await until(() => n1Status()?.up === false, 10_000, 'the app to leave n1');
    const moved = outcomes.length;
    await until(() => outcomes.length >= moved + 200, 20_000, 'load after the app moved');
    stop = true;
    await Promise.all(load);
    const failed = outcomes.filter((o) => o.status !== 200);
    expect(failed).toEqual([]);
    expect(before).toBeGreaterThan(0);
    expect(outcomes.length).toBeGreaterThan(before);
    expect(Math.max(...outcomes.map((o) => o.ms))).toBeLessThan(RECONNECT_WAIT + 1000);
    // A GET on its way through n1 when it died is sent again (nothing of its answer came back): the
    // app may see it twice, as behind any HTTP client that retries an idempotent request.
    expect(served).toBeGreaterThanOrEqual(outcomes.length);
    // The app's connections left n1 for the others.
    expect(n1Status()?.up).toBe(false);
  }, 40_000);
});
