/**
 * Benchmark: what the gateway hop costs, in one run so the ratios are fair (`npm run bench`).
 *
 *   direct     load -> backend (node:http, `GET /` -> 'hello world')
 *   reference  load -> a minimal proxy -> backend: node:http + http.request, and node:http + undici
 *              Pool.dispatch (test/bench/service.mjs), the least one Node HTTP/1.1 hop costs here
 *   listen()   load -> gateway -> app serving the same handler through listen() (dist/)
 *   connect    load -> gateway -> `ptth-proxy connect` -> backend
 *
 * The gateway runs as users run it: `ptth-proxy serve` with its defaults (metrics and the access
 * log on, its stdout a pipe this process drains, as journald would), plus `--limit-loopback` with
 * limits no request here reaches, so the limiter's cost is measured (test/bench/flags.ts). A second
 * gateway with `-q` carries `listen()` rows again, which prices the access log. `--queue-limit 2048`:
 * 500 visitors on 50 HTTP/1.1 channels queue up to 450 requests, above the default.
 *
 * listen() runs as configured by default (the client negotiates reversed HTTP/2 when the gateway
 * offers it) and forced to reversed HTTP/1.1 (`http1: true`) with BENCH_CONNECTIONS connections;
 * connect with its defaults (reversed HTTP/1.1 channels spliced to the backend) and with `--http2`
 * (the relay over one reversed HTTP/2 connection, its default before splicing). Every process is its own node process (compiled dist/, bare node);
 * the load generator is wrk (`-t1`, with test/bench/check.lua checking every status and body) when
 * installed, else autocannon in this process. The CPU time of every process of a row is read from
 * /proc (the load generator's: wrk as a reaped child, autocannon as this process) and shown per
 * request. Everything stays on 127.0.0.1.
 *
 * After the load rows: streaming (1 GiB each way through listen(), 256 MiB each way through
 * `connect` with curl), scale (10,000 channels), then the targets of issue 11, each computed from
 * rows of this run. Last, the cluster rows (test/bench/cluster.ts: Redis, two and three nodes, the
 * internal hop, `serve --workers`), on processes of their own; BENCH_CLUSTER=0 skips them.
 *
 * Knobs: `--quick` or BENCH_QUICK=1 (1 s rows), BENCH_DURATION=<seconds> (default 5; wins over
 * quick), BENCH_CONNECTIONS=<n> (reversed HTTP/1.1 connections, default 50: one per visitor
 * connection, as one reversed HTTP/1.1 connection carries one request at a time), BENCH_NODE=<path to node> (the node that runs every
 * process of the product and its peers, default this one), BENCH_LOAD=autocannon
 * (use autocannon even when wrk is installed).
 * Exits 1 if any measured row saw errors, timeouts, non-2xx or wrong bodies, or a process died.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import type { EventEmitter } from 'node:events';
import { BIN, NODE, nodeVersion, serveArgs } from './flags.js';
import type { ConnectStream, StreamRow } from './stream.js';
import type { ScaleResult } from './scale.js';

// ---------------------------------------------------------------------------------------------
// autocannon 8 ships no types: the little we use of it.

interface CannonOptions {
  url: string;
  connections: number;
  pipelining: number;
  duration: number;
  headers?: Record<string, string>;
  expectBody?: string;
}
interface CannonResult {
  duration: number;
  errors: number;
  timeouts: number;
  mismatches: number;
  non2xx: number;
  resets: number;
  statusCodeStats: Record<string, { count: number }>;
}
type Cannon = (opts: CannonOptions, cb: (err: Error | null, result: CannonResult) => void) => EventEmitter;

// ---------------------------------------------------------------------------------------------
// Settings

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CHECK_LUA = fileURLToPath(new URL('./check.lua', import.meta.url));
export const QUICK = process.argv.includes('--quick') || process.env['BENCH_QUICK'] === '1';
export const DURATION = positiveEnv('BENCH_DURATION') ?? (QUICK ? 1 : 5);
export const WARMUP = 1;
/**
 * Seconds of load on every target before the first measured row. The gateway needs several
 * seconds under load before its cost per request settles (measured: 264, then 161, then 105 us of
 * gateway CPU per request over three consecutive 4 s runs), so without this the first rows of a
 * target measure its warm-up, not its steady state.
 */
export const PRELOAD = QUICK ? 1 : 8;
export const CHANNELS = positiveEnv('BENCH_CONNECTIONS') ?? 50;
export const BODY = 'hello world';
const READY_TIMEOUT = 15_000;
/** CPU (% of one core) used by other programs during a row above which the row is noisy. */
export const NOISE = 25;
/** Noisy rows measured again, at most, per run (the machine may be shared). */
export const RETRIES = 3;
/** wrk's own timeout per request; at 500 visitors on 50 channels a request may queue for a while. */
const WRK_TIMEOUT = '10s';

function positiveEnv(name: string): number | undefined {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return undefined;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) {
    process.stderr.write(`bench: ${name} must be a positive number, got ${JSON.stringify(raw)}\n`);
    process.exit(2);
  }
  return n;
}

export const log = (line: string): void => void process.stderr.write(`${line}\n`);
export const out = (line: string): void => void process.stdout.write(`${line}\n`);

/** The load generator: wrk when it runs here (and BENCH_LOAD does not ask for autocannon), else autocannon. */
const WRK: string | undefined = (() => {
  if (process.env['BENCH_LOAD'] === 'autocannon') return undefined;
  const r = spawnSync('wrk', ['-v'], { encoding: 'utf8' });
  // wrk -v prints its version and usage and exits 1.
  return r.error === undefined && /wrk/.test(`${r.stdout}${r.stderr}`) ? 'wrk' : undefined;
})();
export const LOADGEN = WRK ? 'wrk' : 'autocannon';

// ---------------------------------------------------------------------------------------------
// Child processes

export type Group = 'backend' | 'gateway' | 'app' | 'connect' | 'reference' | 'redis';

export interface Proc {
  label: string;
  group: Group;
  child: ChildProcess;
  pid: number;
  /** The last few KiB of stdout (the access log goes there: drained, not kept). */
  outTail: string;
  stderr: string[];
  exited: boolean;
  /** Asked to stop (stopProc): its exit is expected. */
  stopped?: boolean;
}

export const procs: Proc[] = [];
let stopping = false;
const KEEP_OUT = 4096;
const KEEP_ERR = 200;

/** Starts `node ...args` in ROOT and resolves with the first stdout line matching `ready`; stdout is drained from then on. */
export function start(
  label: string,
  group: Group,
  args: string[],
  ready: RegExp,
): Promise<{ proc: Proc; match: RegExpMatchArray }> {
  const child = spawn(NODE, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  const proc: Proc = { label, group, child, pid: child.pid ?? 0, outTail: '', stderr: [], exited: false };
  procs.push(proc);
  return new Promise((resolve, reject) => {
    let settled = false;
    let scanned = 0;
    const timer = setTimeout(() => fail(new Error(`${label} was not ready after ${READY_TIMEOUT} ms`)), READY_TIMEOUT);
    const fail = (err: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(new Error(`${err.message}${tail(proc)}`));
    };
    child.stdout!.setEncoding('latin1');
    child.stdout!.on('data', (chunk: string) => {
      const text = proc.outTail + chunk;
      if (!settled) {
        // Until ready: look at each complete line once.
        const lines = text.slice(scanned).split('\n');
        lines.pop();
        for (const line of lines) {
          scanned += line.length + 1;
          const match = line.match(ready);
          if (match && !settled) {
            settled = true;
            clearTimeout(timer);
            resolve({ proc, match });
          }
        }
      }
      if (text.length > 2 * KEEP_OUT) {
        const cut = text.length - KEEP_OUT;
        proc.outTail = text.slice(cut);
        scanned = Math.max(0, scanned - cut);
      } else proc.outTail = text;
    });
    child.stderr!.setEncoding('utf8');
    let errPartial = '';
    child.stderr!.on('data', (chunk: string) => {
      const lines = (errPartial + chunk).split('\n');
      errPartial = lines.pop() ?? '';
      proc.stderr.push(...lines);
      if (proc.stderr.length > KEEP_ERR) proc.stderr.splice(0, proc.stderr.length - KEEP_ERR);
    });
    child.on('error', (err) => fail(err));
    child.on('exit', (code, signal) => {
      proc.exited = true;
      fail(new Error(`${label} exited (${signal ?? `code ${String(code)}`}) before it was ready`));
      if (!stopping && !proc.stopped)
        log(`bench: ${label} (pid ${proc.pid}) exited during the run (${signal ?? `code ${String(code)}`})`);
    });
  });
}

export function tail(proc: Proc): string {
  const outLines = proc.outTail
    .split('\n')
    .filter((l) => l !== '')
    .slice(-5);
  const lines = [...outLines.map((l) => `  out| ${l}`), ...proc.stderr.slice(-10).map((l) => `  err| ${l}`)];
  return lines.length ? `\n${lines.join('\n')}` : '';
}

function waitExit(proc: Proc, ms: number): Promise<boolean> {
  if (proc.exited) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    proc.child.once('exit', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** SIGTERM to the clients first (they release their names), then the rest; SIGKILL after 3 s. */
export async function stopAll(): Promise<void> {
  stopping = true;
  const client = (p: Proc): boolean => p.group === 'app' || p.group === 'connect';
  const order = [procs.filter(client), procs.filter((p) => !client(p))];
  for (const group of order) {
    await Promise.all(group.map(stopProc));
  }
}

/** SIGTERM to one process; SIGKILL after 3 s. */
export async function stopProc(p: Proc): Promise<void> {
  if (p.exited) return;
  p.stopped = true;
  p.child.kill('SIGTERM');
  if (!(await waitExit(p, 3_000))) {
    log(`bench: ${p.label} (pid ${p.pid}) ignored SIGTERM for 3 s; killing it`);
    p.child.kill('SIGKILL');
    await waitExit(p, 1_000);
  }
}

/** The wrk run in progress, if any: killed with the rest. */
let loadChild: ChildProcess | undefined;

// Last resort if the process ends some other way: nothing outlives the benchmark.
process.on('exit', () => {
  for (const p of procs) if (!p.exited) p.child.kill('SIGKILL');
  loadChild?.kill('SIGKILL');
});
export let interrupted = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (interrupted) process.exit(130);
    interrupted = true;
    log(`\nbench: ${signal}: stopping the child processes`);
    loadChild?.kill('SIGKILL');
    void stopAll().finally(() => process.exit(130));
  });
}

// ---------------------------------------------------------------------------------------------
// /proc readings (Linux); `ps` as a fallback for RSS.

export function rssKiB(pid: number): number | undefined {
  try {
    const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+)\s+kB/m);
    if (m) return Number(m[1]);
  } catch {
    // not Linux, or gone
  }
  return undefined;
}

async function rssKiBOrPs(pid: number): Promise<number | undefined> {
  const fromProc = rssKiB(pid);
  if (fromProc !== undefined) return fromProc;
  return new Promise((resolve) => {
    const ps = spawn('ps', ['-o', 'rss=', '-p', String(pid)], { stdio: ['ignore', 'pipe', 'ignore'] });
    let text = '';
    ps.stdout.on('data', (c: Buffer) => (text += c.toString()));
    ps.on('error', () => resolve(undefined));
    ps.on('close', () => {
      const n = Number(text.trim());
      resolve(text.trim() && Number.isFinite(n) ? n : undefined);
    });
  });
}

const TICK_MS = 10; // USER_HZ is 100 on Linux
/** CPU time (user + system) of a process in ms, from /proc/PID/stat. */
export function cpuMs(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * TICK_MS;
  } catch {
    return undefined;
  }
}

/**
 * CPU time of a process and of its descendants in ms: `serve --workers` serves from child
 * processes (live ones read one by one, reaped ones from the parent's cutime and cstime).
 */
export function treeCpuMs(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    let total = (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) * TICK_MS;
    const children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim();
    for (const child of children ? children.split(' ') : []) total += treeCpuMs(Number(child)) ?? 0;
    return total;
  } catch {
    return undefined;
  }
}

/** CPU time (user + system) of this process's reaped children in ms: a finished wrk's lands here. */
function childrenCpuMs(): number {
  try {
    const stat = readFileSync('/proc/self/stat', 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[13]) + Number(fields[14])) * TICK_MS;
  } catch {
    return NaN;
  }
}

/** Busy CPU time of the whole machine in ms (all cores), from /proc/stat. */
export function machineBusyMs(): number | undefined {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] as string;
    const t = line.trim().split(/\s+/).slice(1, 9).map(Number);
    const idle = (t[3] ?? 0) + (t[4] ?? 0);
    return (t.reduce((a, b) => a + b, 0) - idle) * TICK_MS;
  } catch {
    return undefined;
  }
}

function selfCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers

export function get(
  port: number,
  host: string | undefined,
  accept?: string,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = {};
    if (host) headers['host'] = host;
    if (accept) headers['accept'] = accept;
    const req = http.request({ host: '127.0.0.1', port, path: '/', headers, agent: false, timeout: 5_000 });
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end();
  });
}

/**
 * Polls the gateway's JSON status until `name` holds `want` channels, or (no `want`) at least one
 * channel and the same set for half a second. Resolves with what it holds, e.g. `http2 x1`.
 */
export async function waitChannels(gatewayPort: number, name: string, want?: number): Promise<string> {
  const deadline = Date.now() + READY_TIMEOUT;
  let seen = '';
  let stableSince = Date.now();
  while (Date.now() < deadline) {
    const r = await get(gatewayPort, undefined, 'application/json');
    const status = JSON.parse(r.body) as { registrations: { name: string; channels: { transport: string }[] }[] };
    const channels = status.registrations.find((reg) => reg.name === name)?.channels ?? [];
    const counts = new Map<string, number>();
    for (const ch of channels) counts.set(ch.transport, (counts.get(ch.transport) ?? 0) + 1);
    const now = [...counts].map(([t, n]) => `${t} x${n}`).join(' + ');
    if (now !== seen) {
      seen = now;
      stableSince = Date.now();
    }
    if (want !== undefined ? channels.length >= want : channels.length > 0 && Date.now() - stableSince >= 500)
      return seen;
    await new Promise((res) => setTimeout(res, 50));
  }
  const wanted = want !== undefined ? ` (wanted ${want})` : '';
  throw new Error(`the gateway holds ${seen || 'no channel'} for ${name} after ${READY_TIMEOUT} ms${wanted}`);
}

export async function expectHello(label: string, port: number, host?: string): Promise<void> {
  const r = await get(port, host);
  if (r.status !== 200 || r.body !== BODY) {
    throw new Error(
      `${label}: expected 200 ${JSON.stringify(BODY)}, got ${r.status} ${JSON.stringify(r.body.slice(0, 200))}`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Load

export type TargetId =
  | 'direct'
  | 'ref-node'
  | 'ref-undici'
  | 'ref-h2'
  | 'ref-splice'
  | 'bare-h2'
  | 'listen'
  | 'listen-q'
  | 'listen-h1'
  | 'listen-h1-q'
  | 'connect'
  | 'connect-h2'
  // test/bench/cluster.ts
  | 'single'
  | 'node-local'
  | 'node-hop'
  | 'workers';

export interface Target {
  id: TargetId;
  kind: 'direct' | 'listen' | 'connect' | 'reference';
  label: string;
  port: number;
  host?: string;
  /** The processes a request of this row goes through. */
  procs: Proc[];
}

/** What one load run saw. */
interface Fired {
  /** Responses received, right or wrong. */
  requests: number;
  /** 200s with the expected body. */
  ok: number;
  seconds: number;
  p50: number;
  p99: number;
  problems: number;
  detail: string;
  /** CPU time of the load generator in ms (wrk: from /proc once reaped; autocannon: this process). */
  loadCpuMs: number;
}

type Column = Group | 'load';

export interface Row {
  target: Target;
  concurrency: number;
  rps: number;
  p50: number;
  p99: number;
  problems: number;
  detail: string;
  /** CPU µs per request of each group of the row's processes, and of the load generator. */
  us: Partial<Record<Column, number>>;
  /** The same for each of the row's processes. */
  byProc: Map<Proc, number>;
  /** CPU used by everything else on the machine during the row, % of one core. */
  other: number;
  /** Measured again because the first measurement was noisy; the quieter one is kept. */
  remeasured: boolean;
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] as number;
}

const UNIT_MS: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** wrk's text output (with --latency and check.lua's CHECK line) as a Fired. */
function parseWrk(text: string, loadCpuMs: number): Fired {
  const done = /(\d+) requests in ([\d.]+)(us|ms|s|m|h)/.exec(text);
  const p50 = /^\s+50%\s+([\d.]+)(us|ms|s|m|h)\s*$/m.exec(text);
  const p99 = /^\s+99%\s+([\d.]+)(us|ms|s|m|h)\s*$/m.exec(text);
  const check = /^CHECK bad=(\d+) first=(.*)$/m.exec(text);
  if (!done || !check) throw new Error(`wrk: unexpected output:\n${text}`);
  const ms = (m: RegExpExecArray | null): number => (m ? Number(m[1]) * (UNIT_MS[m[2] as string] ?? NaN) : NaN);
  const requests = Number(done[1]);
  const seconds = (Number(done[2]) * (UNIT_MS[done[3] as string] ?? NaN)) / 1000;
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text);
  const [connectErr, readErr, writeErr, timeouts] = socket ? socket.slice(1).map(Number) : [0, 0, 0, 0];
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(text)?.[1] ?? 0);
  const bad = Number(check[1]);
  const parts: string[] = [];
  if (connectErr) parts.push(`${connectErr} connect errors`);
  if (readErr) parts.push(`${readErr} read errors`);
  if (writeErr) parts.push(`${writeErr} write errors`);
  if (timeouts) parts.push(`${timeouts} timeouts`);
  if (non2xx) parts.push(`${non2xx} 4xx/5xx`);
  if (bad) parts.push(`${bad} not 200 ${JSON.stringify(BODY)} (first: ${check[2]})`);
  return {
    requests,
    ok: requests - bad,
    seconds,
    p50: ms(p50),
    p99: ms(p99),
    // A 4xx/5xx is also counted in `bad`.
    problems: (connectErr ?? 0) + (readErr ?? 0) + (writeErr ?? 0) + (timeouts ?? 0) + bad,
    detail: parts.length ? parts.join(', ') : '0',
    loadCpuMs,
  };
}

/** One wrk run (-t1: one thread, as there are 2 cores to share with the processes measured). */
function fireWrk(target: Target, concurrency: number, seconds: number): Promise<Fired> {
  const host = target.host ?? `127.0.0.1:${target.port}`;
  // wrk takes whole seconds only.
  const args = [
    '-t1',
    `-c${concurrency}`,
    `-d${Math.max(1, Math.round(seconds))}s`,
    '--latency',
    '--timeout',
    WRK_TIMEOUT,
    '-s',
    CHECK_LUA,
  ];
  args.push('-H', `Host: ${host}`, `http://127.0.0.1:${target.port}/`, '--', BODY);
  return new Promise((resolve, reject) => {
    const before = childrenCpuMs();
    const child = spawn(WRK as string, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    loadChild = child;
    let text = '';
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (c: string) => (text += c));
    child.stderr.on('data', (c: string) => (text += c));
    child.once('error', reject);
    // 'close' comes after 'exit', so node has reaped wrk and its CPU time is in our children's.
    child.once('close', (code, signal) => {
      loadChild = undefined;
      if (code !== 0)
        return reject(new Error(`wrk ${args.join(' ')} exited (${signal ?? `code ${String(code)}`}):\n${text}`));
      try {
        resolve(parseWrk(text, childrenCpuMs() - before));
      } catch (err) {
        reject(err as Error);
      }
    });
  });
}

let autocannon: Cannon | undefined;

/** One autocannon run; latencies recorded here with sub-millisecond precision (autocannon's histogram keeps whole ms). */
function fireCannon(target: Target, concurrency: number, seconds: number): Promise<Fired> {
  autocannon ??= createRequire(import.meta.url)('autocannon') as Cannon;
  return new Promise((resolve, reject) => {
    let latencies = new Float64Array(1 << 16);
    let n = 0;
    let ok = 0;
    let requests = 0;
    const opts: CannonOptions = {
      url: `http://127.0.0.1:${target.port}/`,
      connections: concurrency,
      pipelining: 1,
      duration: seconds,
      expectBody: BODY,
    };
    if (target.host) opts.headers = { host: target.host };
    const t0 = performance.now();
    const cpu0 = selfCpuMs();
    const instance = (autocannon as Cannon)(opts, (err, result) => {
      const wallS = (performance.now() - t0) / 1000;
      if (err) return reject(err);
      const sorted = latencies.slice(0, n).sort();
      const bad = Object.entries(result.statusCodeStats)
        .filter(([code]) => !code.startsWith('2'))
        .map(([code, { count }]) => `${count}x${code}`);
      const parts: string[] = [];
      if (result.errors) parts.push(`${result.errors} errors`);
      if (result.timeouts) parts.push(`${result.timeouts} timeouts`);
      if (result.non2xx) parts.push(`${result.non2xx} non-2xx${bad.length ? ` (${bad.join(', ')})` : ''}`);
      if (result.mismatches) parts.push(`${result.mismatches} wrong bodies`);
      if (result.resets) parts.push(`${result.resets} resets`);
      resolve({
        requests,
        ok,
        seconds: wallS,
        p50: percentile(sorted, 50),
        p99: percentile(sorted, 99),
        problems: result.errors + result.timeouts + result.non2xx + result.mismatches + result.resets,
        detail: parts.length ? parts.join(', ') : '0',
        loadCpuMs: selfCpuMs() - cpu0,
      });
    });
    instance.on('response', (_client: unknown, status: number, _bytes: number, ms: number) => {
      requests++;
      if (status < 200 || status > 299) return;
      ok++;
      if (n === latencies.length) {
        const bigger = new Float64Array(latencies.length * 2);
        bigger.set(latencies);
        latencies = bigger;
      }
      latencies[n++] = ms;
    });
  });
}

export const fire = (target: Target, concurrency: number, seconds: number): Promise<Fired> =>
  WRK ? fireWrk(target, concurrency, seconds) : fireCannon(target, concurrency, seconds);

export async function measure(target: Target, concurrency: number, gateway: Proc, peak: { rss: number }): Promise<Row> {
  const sampler = setInterval(() => {
    const rss = rssKiB(gateway.pid);
    if (rss !== undefined && rss > peak.rss) peak.rss = rss;
  }, 100);
  try {
    await fire(target, concurrency, WARMUP);
    const before = new Map(procs.map((p) => [p, treeCpuMs(p.pid)]));
    const selfBefore = selfCpuMs();
    const machineBefore = machineBusyMs();
    const t0 = performance.now();
    const f = await fire(target, concurrency, DURATION);
    const wallMs = performance.now() - t0;
    const machineAfter = machineBusyMs();
    const selfMs = selfCpuMs() - selfBefore;
    const spent = new Map<Proc, number>();
    for (const p of procs) {
      const a = before.get(p);
      const b = treeCpuMs(p.pid);
      if (a !== undefined && b !== undefined) spent.set(p, b - a);
    }
    const perRequest = (cpu: number): number => (f.requests > 0 ? (cpu * 1000) / f.requests : NaN);
    const us: Row['us'] = { load: perRequest(f.loadCpuMs) };
    const byProc = new Map<Proc, number>();
    for (const p of target.procs) {
      byProc.set(p, perRequest(spent.get(p) ?? NaN));
      us[p.group] = (us[p.group] ?? 0) + perRequest(spent.get(p) ?? NaN);
    }
    // Whatever else kept the machine busy meanwhile (other programs, kernel threads): noise. Ours
    // are every process of the bench, busy in this row or idle, the load generator and this process.
    let other = NaN;
    if (machineBefore !== undefined && machineAfter !== undefined) {
      const ours = [...spent.values()].reduce((a, b) => a + b, 0) + selfMs + (WRK ? f.loadCpuMs : 0);
      other = Math.max(0, ((machineAfter - machineBefore - ours) / wallMs) * 100);
    }
    if (f.ok === 0) {
      // A target that stalls answers nothing, and wrk counts no error before its own timeout.
      f.problems++;
      f.detail = f.detail === '0' ? 'no right response' : `${f.detail}, no right response`;
    }
    return {
      target,
      concurrency,
      rps: f.ok / f.seconds,
      p50: f.p50,
      p99: f.p99,
      problems: f.problems,
      detail: f.detail,
      us,
      byProc,
      other,
      remeasured: false,
    };
  } finally {
    clearInterval(sampler);
  }
}

// ---------------------------------------------------------------------------------------------
// Report

export function table(headers: string[], rows: string[][], right: boolean[]): string[] {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] as string).length)));
  const line = (cells: string[]): string =>
    `| ${cells.map((c, i) => (right[i] ? c.padStart(widths[i] as number) : c.padEnd(widths[i] as number))).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => (right[i] ? `${'-'.repeat(w + 1)}:` : `${'-'.repeat(w + 2)}`)).join('|')}|`;
  return [line(headers), rule, ...rows.map(line)];
}

/** Milliseconds with two decimals. */
export function ms(value: number): string {
  return Number.isFinite(value) ? value.toFixed(2) : 'n/a';
}

export const int = (v: number | undefined): string =>
  v !== undefined && Number.isFinite(v) ? Math.round(v).toLocaleString('en-US') : '-';
export const pct = (a: number | undefined, b: number | undefined): string =>
  a !== undefined && b !== undefined && b > 0 && Number.isFinite(a) ? `${((100 * a) / b).toFixed(1)} %` : '-';
const mb = (kib: number | undefined): string => (kib === undefined ? 'n/a' : `${(kib / 1024).toFixed(1)} MB`);
const rowName = (r: Row): string => `${r.target.label}${r.remeasured ? ' *' : ''}`;

function find(rows: Row[], id: TargetId, concurrency: number): Row | undefined {
  return rows.find((r) => r.target.id === id && r.concurrency === concurrency);
}

function reportRows(
  rows: Row[],
  rss: { before: number | undefined; peak: number; after: number | undefined },
  notes: string[],
): void {
  out('');
  out(
    `ptth-proxy benchmark: node ${nodeVersion()}${NODE === process.execPath ? '' : ' (BENCH_NODE)'}, ${availableParallelism()} cores, load by ${WRK ? 'wrk -t1' : 'autocannon'}, ` +
      `${DURATION} s per row after a ${WARMUP} s warm-up, pipelining 1, GET / -> ${BODY.length}-byte body`,
  );
  for (const note of notes) out(note);
  out('');
  const main = rows.map((r) => {
    const d = find(rows, 'direct', r.concurrency);
    const u = find(rows, 'ref-undici', r.concurrency);
    return [
      rowName(r),
      String(r.concurrency),
      int(r.rps),
      ms(r.p50),
      ms(r.p99),
      r.target.id === 'direct' ? '100 %' : pct(r.rps, d?.rps),
      r.target.id === 'ref-undici' ? '100 %' : pct(r.rps, u?.rps),
      r.detail,
    ];
  });
  for (const l of table(
    ['row', 'visitors', 'req/s', 'p50 ms', 'p99 ms', 'vs direct', 'vs undici ref', 'errors'],
    main,
    [false, true, true, true, true, true, true, false],
  ))
    out(l);
  if (rows.some((r) => r.remeasured)) {
    out('');
    out(
      `* measured again: other programs used over ${NOISE} % of a core during the first measurement; the quieter of the two is shown.`,
    );
  }

  out('');
  out(
    `CPU µs per request of each process in the row (from /proc; "${LOADGEN}" is the load generator, "row total" the rest; ` +
      `"other" is everything else on the machine during the row, % of one core, ${availableParallelism()} cores in all):`,
  );
  out('');
  const columns: Column[] = ['load', 'gateway', 'app', 'connect', 'backend', 'reference'];
  const cpuRows = rows.map((r) => {
    const cells = columns.map((c) => (r.us[c] === undefined ? '-' : int(r.us[c])));
    const hop = columns.filter((c) => c !== 'load').reduce((a, c) => a + (r.us[c] ?? 0), 0);
    return [
      `${rowName(r)} c=${r.concurrency}`,
      ...cells,
      int(hop),
      Number.isFinite(r.other) ? `${r.other.toFixed(0)} %` : '-',
    ];
  });
  const heads = [...columns.map((c) => (c === 'load' ? LOADGEN : c)), 'row total', 'other'];
  for (const l of table(['row', ...heads], cpuRows, [false, ...heads.map(() => true)])) out(l);
  const noisy = rows.filter((r) => r.other > NOISE);
  if (noisy.length > 0) {
    out('');
    out(
      `Warning: something outside the benchmark used over ${NOISE} % of a core during ` +
        `${noisy.map((r) => `${r.target.label} c=${r.concurrency}`).join(', ')}: those rows are not comparable; rerun on a quiet machine.`,
    );
  }
  out('');
  out(
    `Gateway RSS: ${mb(rss.before)} before the load, ${mb(rss.peak || undefined)} peak during it, ${mb(rss.after)} after it.`,
  );
}

interface Extra {
  stream?: StreamRow[];
  streamBytes: number;
  connectStream?: ConnectStream;
  scale?: ScaleResult;
  failures: string[];
}

function streamTable(rows: StreamRow[]): void {
  const direct = rows[0];
  out('');
  out('| row | upload MiB/s | download MiB/s | upload vs direct | download vs direct | gateway RSS growth |');
  out('|-----|-------------:|---------------:|-----------------:|-------------------:|-------------------:|');
  for (const r of rows) {
    out(
      `| ${r.row} | ${r.uploadMiBps.toFixed(0)} | ${r.downloadMiBps.toFixed(0)} | ${pct(r.uploadMiBps, direct?.uploadMiBps)} | ` +
        `${pct(r.downloadMiBps, direct?.downloadMiBps)} | ${r.rssGrowthMiB === undefined ? '-' : `${r.rssGrowthMiB.toFixed(1)} MiB`} |`,
    );
  }
}

/** Streaming, connect streaming and scale; a failure is recorded, the others still run. */
async function streamingAndScale(): Promise<Extra> {
  const { runStream, runConnectStream } = await import('./stream.js');
  const { runScale } = await import('./scale.js');
  const extra: Extra = { streamBytes: QUICK ? 256 * 2 ** 20 : 2 ** 30, failures: [] };
  const mib = extra.streamBytes / 2 ** 20;
  log(`bench: streaming ${mib} MiB up and down: direct, reversed HTTP/1.1, reversed HTTP/2`);
  try {
    extra.stream = await runStream(extra.streamBytes);
    out('');
    out(`Streaming (${mib} MiB each way, node's http client, app through listen() in its own process)`);
    streamTable(extra.stream);
  } catch (err) {
    extra.failures.push(`streaming: ${(err as Error).message}`);
  }
  log('bench: streaming 256 MiB up and down: direct, through `connect`');
  try {
    extra.connectStream = await runConnectStream(256 * 2 ** 20);
    out('');
    out(
      `Streaming through \`ptth-proxy connect\` (256 MiB each way, ${extra.connectStream.tool}; connect and the gateway with their defaults)`,
    );
    streamTable(extra.connectStream.rows);
  } catch (err) {
    extra.failures.push(`streaming through connect: ${(err as Error).message}`);
  }
  const count = QUICK ? 2_000 : 10_000;
  log(`bench: scale: ${count} registrations, one live channel each`);
  try {
    const scale = await runScale(count, 200, (line) => log(`bench:${line}`));
    extra.scale = scale;
    out('');
    out(`Scale (target: RSS per channel under 20 KB)`);
    out('');
    out('| channels | time to register | claims/s | gateway RSS before | after | RSS per channel |');
    out('|---------:|-----------------:|---------:|-------------------:|------:|----------------:|');
    out(
      `| ${scale.channels} | ${scale.seconds.toFixed(1)} s | ${scale.claimsPerSecond.toFixed(0)} | ${scale.rssBeforeMiB.toFixed(1)} MiB | ` +
        `${scale.rssAfterMiB.toFixed(1)} MiB | ${(scale.bytesPerChannel / 1024).toFixed(1)} KiB |`,
    );
  } catch (err) {
    extra.failures.push(`scale: ${(err as Error).message}`);
  }
  return extra;
}

/** Issue 11's targets, each from rows of this run. */
function targets(rows: Row[], extra: Extra | undefined, via: Record<string, string>): void {
  const verdict = (met: boolean | undefined): string => (met === undefined ? 'not measured' : met ? 'met' : 'NOT met');
  const x = (a: number | undefined, b: number | undefined): number | undefined =>
    a !== undefined && b !== undefined && b > 0 && Number.isFinite(a) && Number.isFinite(b) ? a / b : undefined;
  const fx = (v: number | undefined): string => (v === undefined ? 'n/a' : `${v.toFixed(2)}x`);
  /** ` (a; b)` of the parts measured (a floor beside the figure it bounds), or nothing. */
  const aside = (...parts: (string | false | undefined)[]): string => {
    const said = parts.filter((p): p is string => typeof p === 'string');
    return said.length > 0 ? ` (${said.join('; ')})` : '';
  };
  /** Names the rows behind a verdict that were measured while other programs were busy. */
  const noisy = (...used: (Row | undefined)[]): string => {
    const names = used
      .filter((u): u is Row => u !== undefined && u.other > NOISE)
      .map((u) => `${u.target.label} c=${u.concurrency}`);
    return names.length ? ` [noisy: ${names.join(', ')}]` : '';
  };
  const lines: string[] = [];

  const u50 = find(rows, 'ref-undici', 50);
  const h1 = find(rows, 'listen-h1', 50);
  const h1q = find(rows, 'listen-h1-q', 50);
  const h2 = find(rows, 'listen', 50);
  const h2q = find(rows, 'listen-q', 50);
  const c50 = find(rows, 'connect', 50);
  const c50g = find(rows, 'connect', 50);
  const rh2 = find(rows, 'ref-h2', 50);
  const rsp = find(rows, 'ref-splice', 50);
  const bare = find(rows, 'bare-h2', 50);

  let r = x(h1?.us.gateway, u50?.us.reference);
  lines.push(
    `- Gateway CPU per request on reversed HTTP/1.1 <= the undici reference proxy's (listen() http1, 50 visitors): ` +
      `${int(h1?.us.gateway)} against ${int(u50?.us.reference)} µs = ${fx(r)}: ${verdict(r === undefined ? undefined : r <= 1)}` +
      (c50g ? ` (connect, spliced: ${int(c50g.us.gateway)} µs)` : '') +
      noisy(h1, u50),
  );
  const cost = (a: Row | undefined, q: Row | undefined): number | undefined => {
    const ratio = x(a?.rps, q?.rps);
    return ratio === undefined ? undefined : 100 * (1 - ratio);
  };
  const logCost = cost(h1, h1q);
  const logCostH2 = cost(h2, h2q);
  lines.push(
    `- The access log costs at most 10 % of throughput against -q (listen() http1, 50 visitors): ${int(h1?.rps)} against ` +
      `${int(h1q?.rps)} req/s = ${logCost === undefined ? 'n/a' : `${logCost.toFixed(1)} %`}: ${verdict(logCost === undefined ? undefined : logCost <= 10)}` +
      (logCostH2 !== undefined ? ` (listen() over HTTP/2: ${logCostH2.toFixed(1)} %)` : '') +
      noisy(h1, h1q, h2, h2q),
  );
  // req/s ratios swing on a shared machine; the gateway's own CPU per request much less.
  const cpuCost = (a: Row | undefined, q: Row | undefined): string => {
    const ratio = x(a?.us.gateway, q?.us.gateway);
    return ratio === undefined
      ? 'n/a'
      : `${int(a?.us.gateway)} against ${int(q?.us.gateway)} µs (${ratio >= 1 ? '+' : ''}${(100 * (ratio - 1)).toFixed(0)} %)`;
  };
  lines.push(
    `  gateway CPU per request with the access log against -q: listen() http1 ${cpuCost(h1, h1q)}, listen() ${cpuCost(h2, h2q)}`,
  );
  const cus = c50?.us.connect;
  lines.push(
    `- connect in its default mode spends at most 20 µs of CPU per request (50 visitors; channels ${via['connect'] ?? '?'}): ` +
      `${int(cus)} µs: ${verdict(cus === undefined || !Number.isFinite(cus) ? undefined : cus <= 20)}` +
      aside(rsp && `floor: the byte splice reference, which only pipes bytes, spends ${int(rsp.us.reference)} µs`) +
      noisy(c50, rsp),
  );
  r = x(c50?.rps, u50?.rps);
  lines.push(
    `- connect end to end >= 0.6x the undici reference's req/s (50 visitors): ${int(c50?.rps)} against ${int(u50?.rps)} = ${fx(r)}: ` +
      `${verdict(r === undefined ? undefined : r >= 0.6)}${noisy(c50, u50)}`,
  );
  r = x(h2?.us.gateway, h1?.us.gateway);
  lines.push(
    `- Reversed HTTP/2: gateway CPU per request <= 1.5x its HTTP/1.1 path (listen() against listen() http1, 50 visitors; ` +
      `channels ${via['listen'] ?? '?'}): ${int(h2?.us.gateway)} against ${int(h1?.us.gateway)} µs = ${fx(r)}: ${verdict(r === undefined ? undefined : r <= 1.5)}` +
      aside(
        rh2 &&
          `node:http2 alone: the node:http2 session reference spends ${int(rh2.us.reference)} µs, ` +
            `${fx(x(rh2.us.reference, u50?.us.reference))} the undici reference's`,
        bare &&
          `with a bare node:http2 app in place of listen() the gateway spends ${int(bare.us.gateway)} µs, ${fx(x(bare.us.gateway, h1?.us.gateway))}`,
      ) +
      noisy(h2, h1, rh2, bare),
  );
  r = x(h2?.rps, u50?.rps);
  lines.push(
    `- listen() over reversed HTTP/2 >= 0.5x the undici reference's req/s (50 visitors): ${int(h2?.rps)} against ${int(u50?.rps)} = ${fx(r)}: ` +
      `${verdict(r === undefined ? undefined : r >= 0.5)}` +
      aside(
        rh2 && `the node:http2 session reference, with a bare node:http2 backend: ${fx(x(rh2.rps, u50?.rps))}`,
        bare && `the gateway with a bare node:http2 app in place of listen(): ${fx(x(bare.rps, u50?.rps))}`,
      ) +
      noisy(h2, u50, rh2, bare),
  );
  const d500 = find(rows, 'direct', 500);
  const at500 = rows.filter(
    (row) => row.concurrency === 500 && (row.target.kind === 'listen' || row.target.kind === 'connect'),
  );
  if (d500 && at500.length > 0) {
    const limit = 3 * d500.p99;
    lines.push(
      `- p99 at 500 visitors <= 3x direct's (${ms(d500.p99)} ms -> ${ms(limit)} ms): ` +
        at500.map((row) => `${row.target.label} ${ms(row.p99)} ms (${verdict(row.p99 <= limit)})`).join(', ') +
        noisy(d500, ...at500),
    );
  } else lines.push(`- p99 at 500 visitors <= 3x direct's: not measured`);

  const cs = extra?.connectStream?.rows;
  const up = x(cs?.[1]?.uploadMiBps, cs?.[0]?.uploadMiBps);
  const down = x(cs?.[1]?.downloadMiBps, cs?.[0]?.downloadMiBps);
  lines.push(
    `- Large bodies through connect >= 50 % of direct (256 MiB each way, ${extra?.connectStream?.tool ?? '-'}): ` +
      (cs
        ? `upload ${cs[1]?.uploadMiBps.toFixed(0)} against ${cs[0]?.uploadMiBps.toFixed(0)} MiB/s = ${(100 * (up ?? NaN)).toFixed(0)} % (${verdict(up === undefined ? undefined : up >= 0.5)}), ` +
          `download ${cs[1]?.downloadMiBps.toFixed(0)} against ${cs[0]?.downloadMiBps.toFixed(0)} MiB/s = ${(100 * (down ?? NaN)).toFixed(0)} % (${verdict(down === undefined ? undefined : down >= 0.5)})` +
          aside(
            cs[2] &&
              `floor: two byte splices in the same places, parsing nothing: up ${pct(cs[2].uploadMiBps, cs[0]?.uploadMiBps)}, down ${pct(cs[2].downloadMiBps, cs[0]?.downloadMiBps)}`,
            cs[3] &&
              `the undici reference proxy where the gateway is: up ${pct(cs[3].uploadMiBps, cs[0]?.uploadMiBps)}, down ${pct(cs[3].downloadMiBps, cs[0]?.downloadMiBps)}`,
          )
        : 'not measured'),
  );
  const st = extra?.stream;
  if (st) {
    const d = st[0];
    const parts = st.slice(1).map((s) => {
      const ok = (s.rssGrowthMiB ?? 0) < 64;
      return `${s.row}: up ${pct(s.uploadMiBps, d?.uploadMiBps)}, down ${pct(s.downloadMiBps, d?.downloadMiBps)} of direct, RSS +${(s.rssGrowthMiB ?? 0).toFixed(1)} MiB (< 64 MiB: ${verdict(ok)})`;
    });
    lines.push(
      `- Streaming rows (${extra.streamBytes / 2 ** 20} MiB each way, byte counts checked) keep working: met; ${parts.join('; ')}`,
    );
  } else lines.push(`- Streaming rows keep working: ${extra ? 'NOT met (failed)' : 'not measured'}`);
  const sc = extra?.scale;
  lines.push(
    `- Scale: RSS per channel under 20 KB (${sc ? sc.channels : '-'} channels): ` +
      (sc
        ? `${(sc.bytesPerChannel / 1024).toFixed(1)} KiB: ${verdict(sc.bytesPerChannel < 20_000)}`
        : extra
          ? 'NOT met (failed)'
          : 'not measured'),
  );

  out('');
  out('Targets (issue 11), each computed from rows of this run (the gateway with its defaults, access log on;');
  out(`[noisy: ...] names rows measured while other programs used over ${NOISE} % of a core):`);
  for (const l of lines) out(l);
}

// ---------------------------------------------------------------------------------------------
// Main

/** Rounds of the listen() http1 pair (default gateway, then -q) at 50 visitors; see the plan. */
const LOG_ROUNDS = QUICK ? 1 : 3;

/**
 * Rows measured more than once (the access-log pair) become one: the measurement with the median
 * req/s, carrying the problems of every round (an error in any round fails the run).
 */
function medians(rows: Row[]): void {
  const groups = new Map<string, Row[]>();
  for (const r of rows) {
    const key = `${r.target.id} ${r.concurrency}`;
    const g = groups.get(key);
    if (g) g.push(r);
    else groups.set(key, [r]);
  }
  for (const g of groups.values()) {
    if (g.length < 2) continue;
    const median = [...g].sort((a, b) => a.rps - b.rps)[Math.floor((g.length - 1) / 2)] as Row;
    const problems = g.reduce((n, r) => n + r.problems, 0);
    const kept: Row = {
      ...median,
      problems,
      detail:
        problems > median.problems
          ? g
              .filter((r) => r.problems > 0)
              .map((r) => r.detail)
              .join('; ')
          : median.detail,
      remeasured: g.some((r) => r.remeasured),
    };
    const first = rows.indexOf(g[0] as Row);
    rows[first] = kept;
    for (const r of g.slice(1)) rows.splice(rows.indexOf(r), 1);
  }
}

async function main(): Promise<number> {
  if (!WRK) {
    const why =
      process.env['BENCH_LOAD'] === 'autocannon'
        ? 'BENCH_LOAD=autocannon'
        : 'wrk is not installed (apt-get install wrk)';
    log(
      `bench: ${why}: the load comes from autocannon, which takes a core of its own on a small machine and flattens every ratio`,
    );
  }
  const backend = await start('backend', 'backend', ['test/bench/service.mjs', 'backend'], /^READY (\d+)$/);
  const backendPort = Number(backend.match[1]);
  const ready = /gateway listening on 127\.0\.0\.1:(\d+)/;
  const gatewayFlags = ['--queue-limit', '2048', '--max-channels', String(Math.max(64, CHANNELS))];
  const [gateway, gatewayQ] = await Promise.all([
    start('gateway', 'gateway', serveArgs(...gatewayFlags), ready),
    start('gateway -q', 'gateway', serveArgs(...gatewayFlags, '-q'), ready),
  ]);
  const gatewayPort = Number(gateway.match[1]);
  const gatewayQPort = Number(gatewayQ.match[1]);
  const url = (port: number): string => `http://127.0.0.1:${port}`;
  const n = String(CHANNELS);
  // 127.0.0.1:<port> rather than the bare port: a bare port means `localhost`, which node may try on ::1 first.
  const connectArgs = (name: string): string[] => [
    BIN,
    'connect',
    `127.0.0.1:${backendPort}`,
    '--gateway',
    url(gatewayPort),
    '--name',
    name,
  ];
  const app = (label: string, port: number, name: string, h1: boolean): Promise<{ proc: Proc }> =>
    start(label, 'app', ['test/bench/service.mjs', 'app', url(port), name, n, ...(h1 ? ['h1'] : [])], /^READY /);
  const h2backend = await start('h2 backend', 'backend', ['test/bench/service.mjs', 'h2backend'], /^READY (\d+)$/);
  const [appH2, appH1, appH2Q, appH1Q, connect, connectH2, refNode, refUndici, refH2, refSplice] = await Promise.all([
    app('app', gatewayPort, 'bench-listen', false),
    app('app --http1', gatewayPort, 'bench-listen-h1', true),
    app('app (gateway -q)', gatewayQPort, 'bench-listen-q', false),
    app('app --http1 (gateway -q)', gatewayQPort, 'bench-listen-h1-q', true),
    start('connect', 'connect', connectArgs('bench-connect'), /^Forwarding /),
    start('connect --http2', 'connect', [...connectArgs('bench-connect-h2'), '--http2'], /^Forwarding /),
    start(
      'reference node:http',
      'reference',
      ['test/bench/service.mjs', 'proxy', String(backendPort), n],
      /^READY (\d+)$/,
    ),
    start(
      'reference undici',
      'reference',
      ['test/bench/service.mjs', 'undici', String(backendPort), n],
      /^READY (\d+)$/,
    ),
    start(
      'reference node:http2',
      'reference',
      ['test/bench/service.mjs', 'h2proxy', h2backend.match[1] as string],
      /^READY (\d+)$/,
    ),
    start('reference splice', 'reference', ['test/bench/service.mjs', 'splice', String(backendPort)], /^READY (\d+)$/),
  ]);
  const bareH2 = await start(
    'bare HTTP/2 app',
    'app',
    ['test/bench/service.mjs', 'bareh2', url(gatewayPort), 'bench-bare-h2'],
    /^READY /,
  );
  const [listenVia, listenH1Via, listenQVia, listenH1QVia, connectVia, connectH2Via, bareVia] = await Promise.all([
    waitChannels(gatewayPort, 'bench-listen'),
    waitChannels(gatewayPort, 'bench-listen-h1', CHANNELS),
    waitChannels(gatewayQPort, 'bench-listen-q'),
    waitChannels(gatewayQPort, 'bench-listen-h1-q', CHANNELS),
    waitChannels(gatewayPort, 'bench-connect'),
    // connect splices by default: its pool grows with demand, so no count to wait for.
    waitChannels(gatewayPort, 'bench-connect-h2'),
    waitChannels(gatewayPort, 'bench-bare-h2'),
  ]);

  const at = (port: number, name: string): Pick<Target, 'port' | 'host'> => ({
    port,
    host: `${name}.localhost:${port}`,
  });
  const gw = gateway.proc;
  const gwQ = gatewayQ.proc;
  const be = backend.proc;
  const t: Record<Exclude<TargetId, 'single' | 'node-local' | 'node-hop' | 'workers'>, Target> = {
    direct: { id: 'direct', kind: 'direct', label: 'direct', port: backendPort, procs: [be] },
    'ref-undici': {
      id: 'ref-undici',
      kind: 'reference',
      label: 'reference: undici Pool',
      port: Number(refUndici.match[1]),
      procs: [refUndici.proc, be],
    },
    'ref-node': {
      id: 'ref-node',
      kind: 'reference',
      label: 'reference: http.request',
      port: Number(refNode.match[1]),
      procs: [refNode.proc, be],
    },
    'ref-h2': {
      id: 'ref-h2',
      kind: 'reference',
      label: 'reference: node:http2 session',
      port: Number(refH2.match[1]),
      procs: [refH2.proc, h2backend.proc],
    },
    'ref-splice': {
      id: 'ref-splice',
      kind: 'reference',
      label: 'reference: byte splice',
      port: Number(refSplice.match[1]),
      procs: [refSplice.proc, be],
    },
    'bare-h2': {
      id: 'bare-h2',
      kind: 'listen',
      label: 'bare HTTP/2 app',
      ...at(gatewayPort, 'bench-bare-h2'),
      procs: [gw, bareH2.proc],
    },
    listen: {
      id: 'listen',
      kind: 'listen',
      label: 'listen()',
      ...at(gatewayPort, 'bench-listen'),
      procs: [gw, appH2.proc],
    },
    'listen-q': {
      id: 'listen-q',
      kind: 'listen',
      label: 'listen(), gateway -q',
      ...at(gatewayQPort, 'bench-listen-q'),
      procs: [gwQ, appH2Q.proc],
    },
    'listen-h1': {
      id: 'listen-h1',
      kind: 'listen',
      label: 'listen() http1',
      ...at(gatewayPort, 'bench-listen-h1'),
      procs: [gw, appH1.proc],
    },
    'listen-h1-q': {
      id: 'listen-h1-q',
      kind: 'listen',
      label: 'listen() http1, gateway -q',
      ...at(gatewayQPort, 'bench-listen-h1-q'),
      procs: [gwQ, appH1Q.proc],
    },
    connect: {
      id: 'connect',
      kind: 'connect',
      label: 'connect',
      ...at(gatewayPort, 'bench-connect'),
      procs: [gw, connect.proc, be],
    },
    'connect-h2': {
      id: 'connect-h2',
      kind: 'connect',
      label: 'connect --http2',
      ...at(gatewayPort, 'bench-connect-h2'),
      procs: [gw, connectH2.proc, be],
    },
  };
  for (const target of Object.values(t)) await expectHello(target.label, target.port, target.host);
  const notes = [
    `gateways: ptth-proxy serve with its defaults (metrics and access log on, stdout drained by the bench) and ${serveArgs(
      ...gatewayFlags,
    )
      .slice(2)
      .join(' ')}; "gateway -q": the same with -q`,
    `listen(): default options, channels ${listenVia} (gateway -q: ${listenQVia}); listen() http1: { http1: true, connections: ${n} }, channels ${listenH1Via} (gateway -q: ${listenH1QVia})`,
    `connect: its defaults (a line per request on its stdout, drained), channels ${connectVia} (spliced reversed HTTP/1.1); connect --http2: the relay over reversed HTTP/2 (the default before splicing), channels ${connectH2Via}`,
    `access log: listen() http1 and its -q twin at 50 visitors alternate ${LOG_ROUNDS} time(s); each row is the median round by req/s`,
    `references: node:http servers forwarding to the backend over ${n} keep-alive connections, no routing or header work: http.request with an Agent, and undici Pool.dispatch`,
    `bare HTTP/2 app: a bare node:http2 server answering over one reversed HTTP/2 connection it claims itself (channels ${bareVia}), with no listen() and no bridge into an http.Server: the floor of listen() over HTTP/2 on this gateway`,
    `floors: "node:http2 session" is a node:http server sending each request as a stream on one node:http2 session to a bare node:http2 backend (the reversed HTTP/2 path without the gateway); "byte splice" pipes each visitor connection to one of its own to the backend and parses nothing (what connect's design costs at least)`,
  ];
  const via: Record<string, string> = { listen: listenVia, connect: connectVia };

  const plan: [Target, number][] = [
    [t.direct, 50],
    [t['ref-undici'], 50],
    [t['ref-node'], 50],
    [t['ref-h2'], 50],
    [t['ref-splice'], 50],
    // Each -q row right after its twin: the access log's cost is their ratio. The HTTP/1.1 pair,
    // which the access-log target rests on, alternates LOG_ROUNDS times and keeps each row's median
    // (single measurements of the two gateways moved the ratio from 4 % to 20 % between runs).
    ...Array.from({ length: LOG_ROUNDS }, (): [Target, number][] => [
      [t['listen-h1'], 50],
      [t['listen-h1-q'], 50],
    ]).flat(),
    [t.listen, 50],
    [t['listen-q'], 50],
    [t['bare-h2'], 50],
    [t.connect, 50],
    [t['connect-h2'], 50],
    [t.direct, 1],
    [t['ref-undici'], 1],
    [t['listen-h1'], 1],
    [t.listen, 1],
    [t.connect, 1],
    [t['connect-h2'], 1],
    [t.direct, 500],
    [t['ref-undici'], 500],
    [t['ref-node'], 500],
    [t['listen-h1'], 500],
    [t.listen, 500],
    [t.connect, 500],
    [t['connect-h2'], 500],
  ];
  log(`bench: load by ${WRK ? 'wrk -t1' : 'autocannon'}; warming every target up for ${PRELOAD} s at 50 visitors`);
  for (const target of Object.values(t)) await fire(target, 50, PRELOAD);
  log(
    `bench: ${plan.length} rows of ${DURATION} s after a ${WARMUP} s warm-up each: about ${plan.length * (DURATION + WARMUP)} s ` +
      `(up to ${RETRIES} noisy rows measured again)`,
  );
  const rssBefore = await rssKiBOrPs(gw.pid);
  const peak = { rss: rssBefore ?? 0 };
  const rows: Row[] = [];
  let died: Proc | undefined;
  let retries = RETRIES;
  const say = (r: Row): void =>
    log(
      `bench:   ${r.rps.toFixed(0)} req/s, p50 ${ms(r.p50)} ms, p99 ${ms(r.p99)} ms, errors ${r.detail}, other programs ${r.other.toFixed(0)} % of a core`,
    );
  for (const [target, c] of plan) {
    if (interrupted) return 130;
    log(`bench: ${target.label} c=${c}`);
    let row = await measure(target, c, gw, peak);
    say(row);
    died = procs.find((p) => p.exited);
    if (!died && row.other > NOISE && retries > 0) {
      // Another program took CPU meanwhile: measure once more and keep the quieter of the two.
      retries--;
      log(`bench:   other programs used ${row.other.toFixed(0)} % of a core meanwhile; measuring again`);
      const again = await measure(target, c, gw, peak);
      say(again);
      const keep = again.other < row.other ? again : row;
      const drop = keep === again ? row : again;
      keep.remeasured = true;
      // Errors count whichever measurement is kept.
      if (drop.problems > 0) {
        const dropped = `${drop.detail} (in the discarded noisy run)`;
        row = {
          ...keep,
          problems: keep.problems + drop.problems,
          detail: keep.problems > 0 ? `${keep.detail}; ${dropped}` : dropped,
        };
      } else row = keep;
      died = procs.find((p) => p.exited);
    }
    rows.push(row);
    if (died) break;
  }
  medians(rows);
  const rssAfter = died === gw ? undefined : await rssKiBOrPs(gw.pid);
  if (rssAfter !== undefined && rssAfter > peak.rss) peak.rss = rssAfter;

  reportRows(rows, { before: rssBefore, peak: peak.rss, after: rssAfter }, notes);

  // Anything a child said on stderr (reconnects, errors) is worth seeing.
  for (const p of procs) {
    if (p.stderr.length > 0 && p !== died) log(`bench: ${p.label} wrote to stderr:${tail(p)}`);
  }

  let extra: Extra | undefined;
  if (!died && !interrupted) {
    // The streaming and scale rows run their own gateway processes once the load above is over.
    await stopAll();
    extra = await streamingAndScale();
  }
  targets(rows, extra, via);

  const failures: string[] = [];
  if (!died && !interrupted && process.env['BENCH_CLUSTER'] !== '0') {
    // Cluster rows (Redis, nodes, the internal hop, --workers), on processes of their own.
    await stopAll();
    const { runCluster } = await import('./cluster.js');
    failures.push(...(await runCluster()));
  }

  let code = 0;
  if (died) {
    log(
      `bench: FAILED: ${died.label} (pid ${died.pid}) died during the run; the rows after it were not measured${tail(died)}`,
    );
    code = 1;
  }
  const failed = rows.filter((r) => r.problems > 0);
  if (failed.length > 0) {
    log(`bench: FAILED: ${failed.map((r) => `${r.target.label} c=${r.concurrency} (${r.detail})`).join('; ')}`);
    code = 1;
  }
  for (const f of [...(extra?.failures ?? []), ...failures]) {
    log(`bench: FAILED: ${f}`);
    code = 1;
  }
  return code;
}

/**
 * Runs `section` (main, or another file's when that file is run alone), stops every child process
 * and exits with its code. Not a top-level await: test/bench/cluster.ts imports this module while
 * main runs, which must not wait for main to end.
 */
export function runAndExit(section: () => Promise<number>): void {
  let code = 1;
  section()
    .then(
      (c) => void (code = c),
      (err: unknown) => log(`bench: ${(err as Error).stack ?? String(err)}`),
    )
    .finally(() => stopAll())
    .finally(() => process.exit(code));
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) runAndExit(main);
