/**
 * Cluster rows of the benchmark (run by test/bench/run.ts after its other sections, or alone:
 * `node --import tsx test/bench/cluster.ts [--quick]` after `npm run build`; BENCH_CLUSTER=0 makes
 * run.ts skip them). Every gateway is `ptth-proxy serve` as users run it (test/bench/flags.ts), on
 * one redis-server this section starts in a temporary directory, without persistence, on
 * 127.0.0.1, and stops at the end.
 *
 *   local / hop   two nodes (`serve --redis`), the app (listen(), reversed HTTP/1.1,
 *                 BENCH_CONNECTIONS connections) on node 1: load on node 1 is served locally, load
 *                 on node 2 crosses the internal hop to node 1. Beside them, measured in the same
 *                 way and at the same time: direct (load -> backend) and one gateway without Redis.
 *   --workers     `serve --redis --workers 2` against one node, with the same app spread over the
 *                 workers by node:cluster (its connections land on either worker).
 *   claims        a Comet registration POST then DELETE of its private URL, by CLAIM_CLIENTS
 *                 clients spread over three nodes, against the same on one gateway without Redis.
 *   memory        resident memory per idle channel (10,000 native claims, one live channel each,
 *                 as test/bench/scale.ts) on a cluster node, against one gateway without Redis.
 *
 * Returns the failures (errors in a row, a process that died); the tables go to stdout.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import * as http from 'node:http';
import type * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, ping, REDIS_SERVER, redisCommand } from '../helpers/redis-server.js';
import { BIN, serveArgs } from './flags.js';
import {
  CHANNELS,
  DURATION,
  LOADGEN,
  PRELOAD,
  NOISE,
  QUICK,
  RETRIES,
  type Proc,
  type Row,
  type Target,
  expectHello,
  fire,
  int,
  interrupted,
  log,
  measure,
  ms,
  out,
  pct,
  procs,
  rssKiB,
  runAndExit,
  start,
  stopProc,
  table,
  tail,
  treeCpuMs,
  waitChannels,
} from './run.js';
import { claim } from './scale.js';

/** Concurrent clients of the claims row. */
const CLAIM_CLIENTS = 50;
/** Seconds of claims per row: a few, whatever the row duration. */
const CLAIM_SECONDS = Math.max(3, DURATION);
/** Idle channels of the memory rows (as run.ts's scale row). */
const IDLE_CHANNELS = QUICK ? 2_000 : 10_000;
const WORKERS = 2;
const READY = /gateway listening on 127\.0\.0\.1:(\d+)/;
/** As run.ts's gateways: 500 visitors on 50 channels queue above the default limit. */
const GATEWAY_FLAGS = ['--queue-limit', '2048', '--max-channels', String(Math.max(64, CHANNELS))];

// ---------------------------------------------------------------------------------------------
// redis-server

/**
 * A redis-server on a free port of 127.0.0.1 in a fresh temporary directory, without persistence,
 * as one of the bench's processes (stopped with them, killed at the bench's exit; where util-linux
 * has setpriv, the kernel kills it if the bench dies).
 */
async function startRedis(dir: string): Promise<{ proc: Proc; url: string }> {
  const port = await freePort();
  const [cmd, argv] = redisCommand(port, dir);
  const child: ChildProcess = spawn(cmd, argv, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  const proc: Proc = {
    label: 'redis-server',
    group: 'redis',
    child,
    pid: child.pid ?? 0,
    outTail: '',
    stderr: [],
    exited: false,
  };
  procs.push(proc);
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (c: string) => proc.stderr.push(...c.split('\n').filter((l) => l !== '')));
  child.on('error', (err) => proc.stderr.push(err.message));
  child.on('exit', () => {
    proc.exited = true;
  });
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (proc.exited) throw new Error(`${REDIS_SERVER} exited before answering PING${tail(proc)}`);
    try {
      await ping(port);
      return { proc, url: `redis://127.0.0.1:${port}` };
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`redis-server on port ${port}: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Claims per second

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length === 0
    ? NaN
    : (sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] as number);
}

interface Claims {
  label: string;
  claims: number;
  seconds: number;
  errors: number;
  firstError: string;
  /** CPU µs per claim: the gateways together, and Redis. */
  gatewayUs: number;
  redisUs: number;
  /** CPU µs per claim of the clients (this process). */
  clientUs: number;
  /** Milliseconds from the POST to the DELETE's answer. */
  p50: number;
  p99: number;
}

/** One request on a keep-alive agent; resolves with the status and headers, the body discarded. */
function call(
  agent: http.Agent,
  port: number,
  method: string,
  path: string,
  body?: string,
): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { host: `localhost:${port}` };
    if (body !== undefined) {
      headers['content-type'] = 'application/x-www-form-urlencoded';
      headers['content-length'] = String(Buffer.byteLength(body));
    }
    const req = http.request({ host: '127.0.0.1', port, method, path, headers, agent, timeout: 10_000 });
    req.on('response', (res) => {
      res.resume();
      res.on('end', () => resolve(res));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer in 10 s`)));
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * CLAIM_CLIENTS clients, client i on gateway i mod n, each claiming a fresh name by Comet
 * registration (201) and releasing it by DELETE of the private URL (204) for `seconds`.
 */
async function claims(
  label: string,
  gateways: { port: number; proc: Proc }[],
  redis: Proc | undefined,
): Promise<Claims> {
  const agents = gateways.map(() => new http.Agent({ keepAlive: true, maxSockets: CLAIM_CLIENTS }));
  let claimed = 0;
  let errors = 0;
  let firstError = '';
  let next = 0;
  let took: number[] = [];
  const tag = label.replace(/[^a-z0-9]/gi, '').toLowerCase();
  const client = async (i: number, until: number): Promise<void> => {
    const g = i % gateways.length;
    const port = (gateways[g] as { port: number }).port;
    const agent = agents[g] as http.Agent;
    while (performance.now() < until) {
      const t = performance.now();
      try {
        const reg = await call(agent, port, 'POST', '/reversehttp', `name=bc-${tag}-${next++}&token=bench-token`);
        const location = reg.headers.location;
        if (reg.statusCode !== 201 || location === undefined) throw new Error(`claim answered ${reg.statusCode}`);
        const del = await call(agent, port, 'DELETE', new URL(location).pathname);
        if (del.statusCode !== 204) throw new Error(`DELETE of the private URL answered ${del.statusCode}`);
        claimed++;
        took.push(performance.now() - t);
      } catch (err) {
        if (errors++ === 0) firstError = (err as Error).message;
        if (errors > 100) return;
      }
    }
  };
  try {
    // Warm-up: a second of claims, not counted.
    const warm = performance.now() + 1_000;
    await Promise.all(Array.from({ length: CLAIM_CLIENTS }, (_, i) => client(i, warm)));
    claimed = 0;
    took = [];
    const before = gateways.map((g) => treeCpuMs(g.proc.pid) ?? NaN);
    const redisBefore = redis ? (treeCpuMs(redis.pid) ?? NaN) : NaN;
    const self = process.cpuUsage();
    const t0 = performance.now();
    await Promise.all(Array.from({ length: CLAIM_CLIENTS }, (_, i) => client(i, t0 + CLAIM_SECONDS * 1000)));
    const seconds = (performance.now() - t0) / 1000;
    const selfSpent = process.cpuUsage(self);
    const spent = gateways.reduce((sum, g, i) => sum + ((treeCpuMs(g.proc.pid) ?? NaN) - (before[i] as number)), 0);
    const redisSpent = redis ? (treeCpuMs(redis.pid) ?? NaN) - redisBefore : NaN;
    const per = (cpuMs: number): number => (claimed > 0 ? (cpuMs * 1000) / claimed : NaN);
    return {
      label,
      claims: claimed,
      seconds,
      errors,
      firstError,
      gatewayUs: per(spent),
      redisUs: per(redisSpent),
      clientUs: per((selfSpent.user + selfSpent.system) / 1000),
      p50: percentile(took, 50),
      p99: percentile(took, 99),
    };
  } finally {
    for (const a of agents) a.destroy();
  }
}

// ---------------------------------------------------------------------------------------------
// Memory per idle channel

interface Idle {
  label: string;
  channels: number;
  seconds: number;
  nodeKiB: number;
  redisKiB: number;
}

/** As test/bench/scale.ts: IDLE_CHANNELS native claims, 200 at a time, one live channel each; the gateway's RSS growth per channel. */
async function idle(label: string, extra: string[], redis: Proc | undefined): Promise<Idle> {
  const args = [BIN, 'serve', '--port', '0', '--host', '127.0.0.1', '--quiet', '--max-channels', '4', ...extra];
  const g = await start(label, 'gateway', args, READY);
  const port = Number(g.match[1]);
  const sockets: net.Socket[] = [];
  try {
    await new Promise((r) => setTimeout(r, 300));
    const before = rssKiB(g.proc.pid) ?? NaN;
    const redisBefore = redis ? (rssKiB(redis.pid) ?? NaN) : NaN;
    const t0 = performance.now();
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < IDLE_CHANNELS) sockets.push(await claim(port, `idle-${next++}`));
    };
    await Promise.all(Array.from({ length: 200 }, worker));
    const seconds = (performance.now() - t0) / 1000;
    // Let the gateway settle (timers, lazily allocated buffers) before reading its memory.
    await new Promise((r) => setTimeout(r, 1_000));
    return {
      label,
      channels: sockets.length,
      seconds,
      nodeKiB: ((rssKiB(g.proc.pid) ?? NaN) - before) / sockets.length,
      redisKiB: redis ? ((rssKiB(redis.pid) ?? NaN) - redisBefore) / sockets.length : NaN,
    };
  } finally {
    for (const s of sockets) s.destroy();
    await stopProc(g.proc);
  }
}

// ---------------------------------------------------------------------------------------------
// The section

interface Started {
  proc: Proc;
  port: number;
}

async function gateway(label: string, ...extra: string[]): Promise<Started> {
  const g = await start(label, 'gateway', serveArgs(...GATEWAY_FLAGS, ...extra), READY);
  return { proc: g.proc, port: Number(g.match[1]) };
}

async function app(label: string, port: number, name: string): Promise<Proc> {
  const args = ['test/bench/service.mjs', 'app', `http://127.0.0.1:${port}`, name, String(CHANNELS), 'h1'];
  return (await start(label, 'app', args, /^READY /)).proc;
}

/** The worker processes of `serve --workers` (children of its primary), from /proc. */
function workerPids(primary: Proc): number[] {
  try {
    const text = readFileSync(`/proc/${primary.pid}/task/${primary.pid}/children`, 'utf8').trim();
    return text ? text.split(' ').map(Number) : [];
  } catch {
    return [];
  }
}

/** The node URLs of the workers of `serve --workers`, from the primary's start-up lines (read before any load). */
async function workerUrls(primary: Proc): Promise<string[]> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const urls = [...primary.outTail.matchAll(/worker \d+\/\d+ ready: pid \d+, node \S+ at (\S+)/g)].map(
      (m) => m[1] as string,
    );
    if (urls.length >= WORKERS) return urls;
    if (primary.exited || Date.now() > deadline)
      throw new Error(`serve --workers ${WORKERS}: ${urls.length} workers ready after 15 s${tail(primary)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Live channels of `name` and the requests they served, on each worker (its node URL's status page). */
async function workerChannels(
  urls: string[],
  name: string,
): Promise<{ channels: number; served: number; closed: number }[]> {
  const fetchText = (url: string, accept: string): Promise<string> =>
    new Promise<string>((resolve, reject) => {
      http
        .get(url, { headers: { accept }, timeout: 5_000 }, (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (text += c));
          res.on('end', () => resolve(text));
        })
        .on('error', reject);
    });
  return Promise.all(
    urls.map(async (url) => {
      const status = JSON.parse(await fetchText(`${url}/`, 'application/json')) as {
        registrations: { name: string; channels: { served: number }[] }[];
      };
      const channels = status.registrations.find((r) => r.name === name)?.channels ?? [];
      // Channels closed since the start, as the metrics count them (a channel lost under load shows here).
      const metrics = await fetchText(`${url}/metrics`, 'text/plain');
      const closed = /^ptth_channels_closed_total\{transport="http1"[^}]*\} (\d+)/m.exec(metrics);
      return {
        channels: channels.length,
        served: channels.reduce((n, c) => n + c.served, 0),
        closed: closed ? Number(closed[1]) : NaN,
      };
    }),
  );
}

/** Waits until the workers hold `want` channels of `name` between them. */
async function waitWorkerChannels(urls: string[], name: string, want: number): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const held = (await workerChannels(urls, name)).reduce((n, w) => n + w.channels, 0);
    if (held >= want) return;
    if (Date.now() > deadline)
      throw new Error(`the workers hold ${held} channels of ${name} after 15 s (wanted ${want})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The apps first (they release their names), Redis last (the nodes leave the cluster through it). */
async function stopInOrder(list: Proc[]): Promise<void> {
  const order: ((p: Proc) => boolean)[] = [
    (p) => p.group === 'app',
    (p) => p.group !== 'app' && p.group !== 'redis',
    (p) => p.group === 'redis',
  ];
  for (const which of order) await Promise.all(list.filter(which).map(stopProc));
}

export async function runCluster(): Promise<string[]> {
  const failures: string[] = [];
  const mine = (): Proc[] => procs.filter((p) => !before.has(p));
  const before = new Set(procs);
  const dir = mkdtempSync(join(tmpdir(), 'ptth-bench-redis-'));
  log('bench: cluster rows: redis-server, two nodes, one gateway without Redis, direct');
  try {
    const redis = await startRedis(dir);
    const backend = await start('backend', 'backend', ['test/bench/service.mjs', 'backend'], /^READY (\d+)$/);
    const backendPort = Number(backend.match[1]);
    const node = (i: number): Promise<Started> =>
      gateway(`node ${i}`, '--redis', redis.url, '--node-id', `bench-node-${i}`);
    const [single, n1, n2, n3, workers] = await Promise.all([
      gateway('gateway'),
      node(1),
      node(2),
      node(3),
      gateway(`serve --workers ${WORKERS}`, '--redis', redis.url, '--node-id', 'bench-w', '--workers', String(WORKERS)),
    ]);
    const urls = await workerUrls(workers.proc);
    const [appSingle, appCluster, appWorkers] = await Promise.all([
      app('app (gateway)', single.port, 'bench-single'),
      app('app (node 1)', n1.port, 'bench-cluster'),
      app('app (workers)', workers.port, 'bench-workers'),
    ]);
    await Promise.all([
      waitChannels(single.port, 'bench-single', CHANNELS),
      waitChannels(n1.port, 'bench-cluster', CHANNELS),
      waitWorkerChannels(urls, 'bench-workers', CHANNELS),
    ]);
    const at = (port: number, name: string): Pick<Target, 'port' | 'host'> => ({
      port,
      host: `${name}.localhost:${port}`,
    });
    const clusterProcs = [n1.proc, n2.proc, appCluster, redis.proc];
    const t: Record<'direct' | 'single' | 'local' | 'hop' | 'workers', Target> = {
      direct: { id: 'direct', kind: 'direct', label: 'direct', port: backendPort, procs: [backend.proc] },
      single: {
        id: 'single',
        kind: 'listen',
        label: 'one gateway, no Redis',
        ...at(single.port, 'bench-single'),
        procs: [single.proc, appSingle],
      },
      local: {
        id: 'node-local',
        kind: 'listen',
        label: 'cluster: load on node 1 (local)',
        ...at(n1.port, 'bench-cluster'),
        procs: clusterProcs,
      },
      hop: {
        id: 'node-hop',
        kind: 'listen',
        label: 'cluster: load on node 2 (hop)',
        ...at(n2.port, 'bench-cluster'),
        procs: clusterProcs,
      },
      workers: {
        id: 'workers',
        kind: 'listen',
        label: `serve --workers ${WORKERS}`,
        ...at(workers.port, 'bench-workers'),
        procs: [workers.proc, appWorkers, redis.proc],
      },
    };
    const held = await workerChannels(urls, 'bench-workers');
    for (const target of Object.values(t)) await expectHello(target.label, target.port, target.host);
    log(`bench: cluster: warming every target up for ${PRELOAD} s at 50 visitors`);
    for (const target of Object.values(t)) await fire(target, 50, PRELOAD);

    const plan: [Target, number][] = [
      [t.direct, 50],
      [t.single, 50],
      [t.local, 50],
      [t.hop, 50],
      [t.direct, 1],
      [t.single, 1],
      [t.local, 1],
      [t.hop, 1],
      // One node against the workers, back to back.
      [t.local, 50],
      [t.workers, 50],
    ];
    const rows: Row[] = [];
    const peak = { rss: 0 };
    let retries = RETRIES;
    for (const [target, c] of plan) {
      if (interrupted) return failures;
      log(`bench: ${target.label} c=${c}`);
      let row = await measure(target, c, target.procs[0] as Proc, peak);
      log(
        `bench:   ${row.rps.toFixed(0)} req/s, p99 ${ms(row.p99)} ms, errors ${row.detail}, other programs ${row.other.toFixed(0)} %`,
      );
      if (row.other > NOISE && retries > 0 && row.problems === 0) {
        // Another program took CPU meanwhile: once more, and the quieter of the two is kept.
        retries--;
        const again = await measure(target, c, target.procs[0] as Proc, peak);
        log(`bench:   again: ${again.rps.toFixed(0)} req/s, other programs ${again.other.toFixed(0)} %`);
        row = again.other < row.other ? again : row;
        row.remeasured = true;
      }
      if (row.problems > 0) failures.push(`${target.label} c=${c}: ${row.detail}`);
      rows.push(row);
      const died = mine().find((p) => p.exited);
      if (died) {
        failures.push(`${died.label} (pid ${died.pid}) died during the cluster rows${tail(died)}`);
        return failures;
      }
    }
    hopTable(rows.slice(0, 8), { n1: n1.proc, n2: n2.proc, single: single.proc, redis: redis.proc });
    const after = await workerChannels(urls, 'bench-workers');
    const spread =
      `${held.map((w) => w.channels).join(' + ')} channels before the load; after it ` +
      after
        .map(
          (w, i) =>
            `worker ${i + 1}: ${w.channels} channels (${int(w.closed)} closed so far), ${int(w.served)} requests served`,
        )
        .join(', ');
    const [one] = await workerChannels([`http://127.0.0.1:${n1.port}`], 'bench-cluster');
    const oneSpread = `one node: ${one?.channels} channels (${int(one?.closed)} closed so far)`;
    workersTable(rows.slice(8), `${spread}; ${oneSpread}`, workers.proc);

    log(`bench: claims for ${CLAIM_SECONDS} s by ${CLAIM_CLIENTS} clients: one gateway, then three nodes`);
    const claimRows = [
      await claims('one gateway, no Redis', [single], undefined),
      await claims('3 nodes, one Redis', [n1, n2, n3], redis.proc),
    ];
    for (const c of claimRows)
      if (c.errors > 0) failures.push(`claims (${c.label}): ${c.errors} errors, first: ${c.firstError}`);
    claimsTable(claimRows);

    // The load processes are done: the memory rows run alone.
    await stopInOrder(mine().filter((p) => p !== redis.proc));
    log(`bench: memory: ${IDLE_CHANNELS} idle channels on one gateway, then on a cluster node`);
    const idleRows = [
      await idle('gateway (memory)', [], undefined),
      await idle('cluster node (memory)', ['--redis', redis.url, '--node-id', 'bench-idle'], redis.proc),
    ];
    idleTable(idleRows);
    const died = mine().find((p) => p.exited && p === redis.proc);
    if (died) failures.push(`redis-server died during the cluster rows${tail(died)}`);
  } catch (err) {
    failures.push(`cluster rows: ${(err as Error).message}`);
  } finally {
    // Anything a process said on stderr (reconnects, errors) is worth seeing.
    for (const p of mine()) if (p.stderr.length > 0) log(`bench: ${p.label} wrote to stderr:${tail(p)}`);
    await stopInOrder(mine());
    rmSync(dir, { recursive: true, force: true });
  }
  return failures;
}

// ---------------------------------------------------------------------------------------------
// Tables

function hopTable(rows: Row[], p: { n1: Proc; n2: Proc; single: Proc; redis: Proc }): void {
  out('');
  out(
    `Cluster: a request served locally against one forwarded through the internal hop (two nodes on one redis-server, ` +
      `the app on node 1 through listen() http1 with ${CHANNELS} connections; every gateway \`serve\` with the flags of the other rows (test/bench/flags.ts); ` +
      `CPU µs per request of each process, ${LOADGEN} the load generator; "other": other programs, % of one core):`,
  );
  out('');
  const cells = rows.map((r) => {
    const direct = rows.find((d) => d.target.id === 'direct' && d.concurrency === r.concurrency);
    const single = rows.find((d) => d.target.id === 'single' && d.concurrency === r.concurrency);
    const us = (proc: Proc): string => {
      const v = r.byProc.get(proc);
      return v === undefined ? '-' : int(v);
    };
    const node = r.target.id === 'node-local' || r.target.id === 'node-hop';
    return [
      label(r),
      String(r.concurrency),
      int(r.rps),
      ms(r.p50),
      ms(r.p99),
      r.target.id === 'direct' ? '100 %' : pct(r.rps, direct?.rps),
      r.target.id === 'direct' ? '-' : pct(r.rps, single?.rps),
      r.target.id === 'single' ? us(p.single) : node ? us(p.n1) : '-',
      node ? us(p.n2) : '-',
      r.us.app === undefined ? '-' : int(r.us.app),
      node ? us(p.redis) : '-',
      int(r.us.load),
      other(r),
      r.detail,
    ];
  });
  const heads = [
    'row',
    'visitors',
    'req/s',
    'p50 ms',
    'p99 ms',
    'vs direct',
    'vs one gateway',
    'gateway / node 1 µs',
    'node 2 µs',
    'app µs',
    'redis µs',
    `${LOADGEN} µs`,
    'other',
    'errors',
  ];
  for (const l of table(heads, cells, [false, ...heads.slice(1, -1).map(() => true), false])) out(l);
  footnotes(rows);
}

const label = (r: Row): string => `${r.target.label}${r.remeasured ? ' *' : ''}`;

/** Other programs' CPU during the row, % of one core. */
const other = (r: Row): string => (Number.isFinite(r.other) ? `${r.other.toFixed(0)} %` : '-');

function footnotes(rows: Row[]): void {
  if (rows.some((r) => r.remeasured))
    out(`* measured again: other programs used over ${NOISE} % of a core meanwhile; the quieter of the two is shown.`);
  const noisy = rows.filter((r) => r.other > NOISE);
  if (noisy.length > 0)
    out(
      `Warning: other programs used over ${NOISE} % of a core during ` +
        `${noisy.map((r) => `${r.target.label} c=${r.concurrency}`).join(', ')}: those rows are not comparable; rerun on a quiet machine.`,
    );
}

function workersTable(rows: Row[], spread: string, primary: Proc): void {
  const [one, many] = rows as [Row, Row];
  out('');
  out(
    `\`serve --workers ${WORKERS}\` against one node (both with --redis; the app's ${CHANNELS} reversed HTTP/1.1 ` +
      `connections spread by node:cluster: ${spread}; worker pids ${workerPids(primary).join(', ') || '?'}; ` +
      '"gateway µs" counts the primary and its workers; a channel carrying a request when the load generator stops is ' +
      'closed, and the app opens another wherever node:cluster sends it):',
  );
  out('');
  const heads = [
    'row',
    'visitors',
    'req/s',
    'p50 ms',
    'p99 ms',
    'vs one node',
    'gateway µs',
    'app µs',
    `${LOADGEN} µs`,
    'other',
    'errors',
  ];
  const cells = [one, many].map((r) => [
    `${r === one ? 'one node' : `serve --workers ${WORKERS}`}${r.remeasured ? ' *' : ''}`,
    String(r.concurrency),
    int(r.rps),
    ms(r.p50),
    ms(r.p99),
    pct(r.rps, one.rps),
    int(r.us.gateway),
    int(r.us.app),
    int(r.us.load),
    other(r),
    r.detail,
  ]);
  for (const l of table(heads, cells, [false, ...heads.slice(1, -1).map(() => true), false])) out(l);
  footnotes(rows);
}

function claimsTable(rows: Claims[]): void {
  out('');
  out(
    `Claims per second: ${CLAIM_CLIENTS} clients for ${CLAIM_SECONDS} s, each a Comet registration POST (201) then ` +
      `DELETE of its private URL (204) on the same gateway, clients spread evenly over the gateways; p50 and p99 of a claim and its release; ` +
      'the gateway CPU is all nodes together:',
  );
  out('');
  const heads = [
    'gateways',
    'claims',
    'claims/s',
    'p50 ms',
    'p99 ms',
    'gateway CPU µs per claim',
    'Redis CPU µs per claim',
    'clients µs per claim',
    'errors',
  ];
  const cells = rows.map((c) => [
    c.label,
    int(c.claims),
    int(c.claims / c.seconds),
    ms(c.p50),
    ms(c.p99),
    int(c.gatewayUs),
    Number.isFinite(c.redisUs) ? int(c.redisUs) : '-',
    int(c.clientUs),
    c.errors > 0 ? `${c.errors} (${c.firstError})` : '0',
  ]);
  for (const l of table(heads, cells, [false, ...heads.slice(1, -1).map(() => true), false])) out(l);
}

function idleTable(rows: Idle[]): void {
  out('');
  out(`Memory per idle channel (${IDLE_CHANNELS} native claims, one live channel each, as the scale row):`);
  out('');
  const heads = [
    'gateway',
    'channels',
    'time to register',
    'claims/s',
    'gateway RSS per channel',
    'Redis RSS per channel',
  ];
  const cells = rows.map((r) => [
    r.label.replace(' (memory)', ''),
    int(r.channels),
    `${r.seconds.toFixed(1)} s`,
    int(r.channels / r.seconds),
    `${r.nodeKiB.toFixed(1)} KiB`,
    Number.isFinite(r.redisKiB) ? `${r.redisKiB.toFixed(2)} KiB` : '-',
  ]);
  for (const l of table(heads, cells, [false, true, true, true, true, true])) out(l);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  runAndExit(async () => {
    const failures = await runCluster();
    for (const f of failures) log(`bench: FAILED: ${f}`);
    return failures.length > 0 ? 1 : 0;
  });
}
