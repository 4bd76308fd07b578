/**
 * Soak run (`npm run bench:soak`): minutes of mixed traffic through one gateway while its apps come
 * and go, then a report of what was served, the errors by kind, and the gateway's memory at the
 * start and the end (issue 5: RSS flat within 10 %).
 *
 *   gateway   the built CLI (`bin/ptth-proxy.js serve`) in its own process, with soak-probe.mjs
 *             preloaded to report heap figures after a forced GC (RSS comes from /proc)
 *   apps      soak-app.ts processes, one per slot: listen() over reversed HTTP/1.1 (also serving
 *             visitors' WebSockets) and reversed HTTP/2, a name held by one of each at once, a
 *             Comet app and a WebSocket-channel app (the browser library in Node). Every few
 *             seconds one is closed and released, closed keeping its name, or SIGKILLed, and
 *             comes back with the same token.
 *   ephemeral listen() apps in this process under fresh names (lease 2 s), living 1-4 s, half
 *             released, half left to expire
 *   visitors  GET of small and larger bodies, POST echoes of 0 B - 300 kB, slow answers, requests
 *             aborted mid-upload, mid-download and while waiting (by design), unknown names (404),
 *             the status page, and WebSocket sessions echoed by the HTTP/1.1 apps
 *
 * Everything on 127.0.0.1, at a bounded rate (the machine is shared). Options (or environment):
 * `--minutes N` (SOAK_MINUTES, default 3), `--seconds N` (SOAK_SECONDS, wins), `--rate N` visitor
 * requests per second (SOAK_RATE, default 150), `--warmup N` (SOAK_WARMUP) seconds before the start
 * sample (default 60, a third of shorter runs), `--snapshots DIR` heap snapshots of the gateway at the start,
 * the end and once idle. Exits 1 if the gateway died, its RSS grew more than 10 % from the start
 * sample to the end one, or a response had the wrong body.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import * as http from 'node:http';
import { availableParallelism, cpus } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';
import { listen, type Tunnel } from '../../src/client/node.js';
import { fetchRaw } from '../helpers/comet.js';
import { BIN, rssOf } from '../helpers/spawn.js';
import { HELLO, nodeHandler, payload } from './soak-lib.js';

// ---------------------------------------------------------------------------------------------
// Settings

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const APP = fileURLToPath(new URL('./soak-app.ts', import.meta.url));
const PROBE = pathToFileURL(fileURLToPath(new URL('./soak-probe.mjs', import.meta.url))).href;

function setting(flag: string | undefined, env: string): number | undefined {
  const raw = flag ?? process.env[env];
  if (raw === undefined || raw === '') return undefined;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) {
    process.stderr.write(
      `soak: ${env.toLowerCase().replace('soak_', '--')} must be a positive number, got ${JSON.stringify(raw)}\n`,
    );
    process.exit(2);
  }
  return n;
}

const { values: args } = parseArgs({
  options: {
    minutes: { type: 'string' },
    seconds: { type: 'string' },
    rate: { type: 'string' },
    warmup: { type: 'string' },
    snapshots: { type: 'string' },
  },
});
const DURATION_S = setting(args.seconds, 'SOAK_SECONDS') ?? 60 * (setting(args.minutes, 'SOAK_MINUTES') ?? 3);
const RATE = setting(args.rate, 'SOAK_RATE') ?? 150;
// The start sample must be steady state: V8 keeps growing its committed heap (the young
// generation's size) for the first minute or so under this load, which an early sample counts as growth.
const WARMUP_S = setting(args.warmup, 'SOAK_WARMUP') ?? Math.min(60, Math.max(3, Math.round(DURATION_S / 3)));
const SNAPSHOTS = args.snapshots === undefined ? undefined : resolve(args.snapshots);
/** Target of the issue: RSS flat within 10 % from the start sample to the end one. */
const RSS_LIMIT_PCT = 10;
const SAMPLE_MS = 5_000;
const PROGRESS_MS = 15_000;
/** Visitor requests at once, at most (past it a request is not sent and counted as dropped). */
const MAX_IN_FLIGHT = 400;
const CLIENT_TIMEOUT = 30_000;
const WS_SESSIONS = 3;
/** One app slot is cycled this often; one ephemeral app starts this often. */
const CHURN_MS = 6_000;
const EPHEMERAL_MS = 2_000;
/** After an app is back online, its name still counts as disturbed this long (its other channels reconnect). */
const GRACE_MS = 1_500;
/** Churn-free time before the start and end samples. */
const STEADY_MS = 3_000;
/** The gateway's timeouts, shorter than production so that an app killed mid-exchange does not hold visitors a minute. */
const GATEWAY_FLAGS = ['--response-timeout', '10000', '--comet-idle-timeout', '10000'];

const log = (line: string): void => void process.stderr.write(`${line}\n`);
const out = (line: string): void => void process.stdout.write(`${line}\n`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const pick = <T>(list: readonly T[]): T => list[Math.floor(Math.random() * list.length)] as T;
const between = (lo: number, hi: number): number => lo + Math.floor(Math.random() * (hi - lo + 1));
const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
const count = (n: number): string => n.toLocaleString('en-US');

let running = true;
const started = Date.now();
const elapsed = (): string => `${Math.round((Date.now() - started) / 1000)} s`;

// ---------------------------------------------------------------------------------------------
// Tallies

/** How often one outcome happened, how often while its name was being churned, and for which targets. */
interface Tally {
  total: number;
  churn: number;
  where: Map<string, number>;
}
const outcomes = new Map<string, Tally>();
const statusClasses = new Map<string, number>();
const wsOutcomes = new Map<string, Tally>();
const channelEvents = new Map<string, number>();
let sent = 0;
let dropped = 0;
let inFlight = 0;
let bytesUp = 0;
let bytesDown = 0;
let wsMessages = 0;

const bump = <K>(map: Map<K, number>, key: K, by = 1): void => void map.set(key, (map.get(key) ?? 0) + by);
function tally(map: Map<string, Tally>, key: string, target: string, churned: boolean): void {
  const t = map.get(key) ?? { total: 0, churn: 0, where: new Map() };
  t.total++;
  if (churned) t.churn++;
  bump(t.where, target);
  map.set(key, t);
}
/** What a request went to, for the report: the fixed app names, or a kind of name. */
const targetOf = (name: string | undefined): string =>
  name === undefined
    ? 'gateway host'
    : name.startsWith('soak-eph-')
      ? `ephemeral ${name.split('-')[2] as string}`
      : name.startsWith('soak-nobody-')
        ? 'unknown name'
        : name;

/** Times each name was being closed, killed or restarted: errors then are the expected cost of churn. */
const disturbances = new Map<string, { from: number; to: number }[]>();
function disturb(name: string): { from: number; to: number } {
  const span = { from: Date.now(), to: Infinity };
  const list = disturbances.get(name) ?? [];
  list.push(span);
  disturbances.set(name, list);
  return span;
}
function churned(name: string | undefined, from: number, to: number): boolean {
  if (name === undefined) return false;
  return (disturbances.get(name) ?? []).some((s) => s.from <= to && s.to >= from);
}

// ---------------------------------------------------------------------------------------------
// The gateway process

interface Memory {
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
  arrayBuffers: number;
  resources: Record<string, number>;
}

class GatewayProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  port = 0;
  /** Set when it exits: code or signal, and whether the run asked it to. */
  exit: { code: number | null; signal: string | null; asked: boolean } | undefined;
  readonly stderr: string[] = [];
  #asked = false;
  #nextId = 0;
  #replies = new Map<number, (m: Record<string, unknown>) => void>();

  constructor() {
    this.child = spawn(
      process.execPath,
      [
        '--expose-gc',
        '--trace-warnings',
        '--import',
        PROBE,
        BIN,
        'serve',
        '--host',
        '127.0.0.1',
        '--port',
        '0',
        ...GATEWAY_FLAGS,
      ],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] },
    );
    this.pid = this.child.pid ?? 0;
    this.child.on('message', (m: Record<string, unknown>) => this.#replies.get(m['id'] as number)?.(m));
    this.child.on('exit', (code, signal) => {
      this.exit = { code, signal, asked: this.#asked };
      if (!this.#asked)
        log(`soak: the gateway (pid ${this.pid}) exited during the run: ${signal ?? `code ${String(code)}`}`);
    });
    createInterface({ input: this.child.stderr! }).on('line', (l) => this.stderr.push(l));
  }

  /** Resolves with the port once the CLI says it listens. */
  ready(): Promise<number> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`the gateway did not start in 15 s:\n${this.stderr.join('\n')}`)),
        15_000,
      );
      createInterface({ input: this.child.stdout! }).on('line', (line) => {
        const m = line.match(/gateway listening on 127\.0\.0\.1:(\d+)/);
        if (m) {
          clearTimeout(timer);
          this.port = Number(m[1]);
          resolve(this.port);
        }
      });
      this.child.once('exit', () => reject(new Error(`the gateway exited at start:\n${this.stderr.join('\n')}`)));
    });
  }

  #ask(msg: Record<string, unknown>, ms: number): Promise<Record<string, unknown>> {
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#replies.delete(id);
        reject(new Error(`the gateway's probe did not answer ${String(msg['t'])} in ${ms} ms`));
      }, ms);
      this.#replies.set(id, (m) => {
        clearTimeout(timer);
        this.#replies.delete(id);
        resolve(m);
      });
      this.child.send({ ...msg, id });
    });
  }

  /** The process's own figures as they are (no GC). */
  async usage(): Promise<NodeJS.MemoryUsage> {
    return (await this.#ask({ t: 'memory', gc: false }, 10_000))['usage'] as NodeJS.MemoryUsage;
  }

  /** Memory after a full GC: the median of three readings, to smooth out what the GC leaves behind. */
  async settledMemory(): Promise<Memory> {
    const reads: Memory[] = [];
    for (let i = 0; i < 3; i++) {
      const m = await this.#ask({ t: 'memory', gc: true }, 10_000);
      await sleep(300);
      const u = m['usage'] as NodeJS.MemoryUsage;
      reads.push({ ...u, rss: rssOf(this.pid), resources: m['resources'] as Record<string, number> });
      await sleep(200);
    }
    const median = (f: (m: Memory) => number): number => reads.map(f).sort((a, b) => a - b)[1] as number;
    return {
      rss: median((m) => m.rss),
      heapUsed: median((m) => m.heapUsed),
      heapTotal: median((m) => m.heapTotal),
      external: median((m) => m.external),
      arrayBuffers: median((m) => m.arrayBuffers),
      resources: reads[1]?.resources ?? {},
    };
  }

  async snapshot(label: string): Promise<string | undefined> {
    if (!SNAPSHOTS) return undefined;
    mkdirSync(SNAPSHOTS, { recursive: true });
    const m = await this.#ask(
      { t: 'snapshot', file: join(SNAPSHOTS, `gateway-${label}-${Date.now()}.heapsnapshot`) },
      120_000,
    );
    log(`soak: heap snapshot (${label}): ${String(m['file'])}`);
    return m['file'] as string;
  }

  async stop(): Promise<void> {
    if (this.exit) return;
    this.#asked = true;
    this.child.kill('SIGTERM');
    const exited = new Promise((r) => this.child.once('exit', r));
    if (!(await Promise.race([exited.then(() => true), sleep(10_000).then(() => false)]))) {
      log('soak: the gateway ignored SIGTERM for 10 s; killing it');
      this.child.kill('SIGKILL');
      await exited;
    }
  }
}

/** CPU time a process has used so far (user + system), in seconds, from /proc. */
function cpuSeconds(pid: number | undefined): number | undefined {
  try {
    const stat = readFileSync(`/proc/${String(pid)}/stat`, 'utf8');
    const [utime, stime] = stat
      .slice(stat.lastIndexOf(')') + 2)
      .split(' ')
      .slice(11, 13)
      .map(Number);
    return ((utime ?? 0) + (stime ?? 0)) / 100;
  } catch {
    return undefined;
  }
}

/** Busy CPU time of the whole machine (all cores), in seconds. */
const machineSeconds = (): number =>
  cpus().reduce((a, c) => a + c.times.user + c.times.nice + c.times.sys + c.times.irq, 0) / 1000;
const selfSeconds = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};
/** Latest CPU seconds of each app process seen (an app's last few seconds before it exits are missed). */
const appCpu = new Map<number, number>();
function sampleAppCpu(): number {
  for (const s of SLOTS) {
    const pid = s.child?.pid;
    const c = cpuSeconds(pid);
    if (pid !== undefined && c !== undefined) appCpu.set(pid, c);
  }
  return [...appCpu.values()].reduce((a, b) => a + b, 0);
}

/** The gateway's own counters from /metrics (Prometheus text), if it serves them; series -> value. */
async function scrapeMetrics(): Promise<Map<string, number> | undefined> {
  const r = await fetchRaw(`http://127.0.0.1:${port}/metrics`).catch(() => undefined);
  if (r?.status !== 200) return undefined;
  const series = new Map<string, number>();
  for (const line of r.body.toString('utf8').split('\n')) {
    const m = line.match(/^(ptth_[a-z_]+(?:\{[^}]*\})?) (\S+)$/);
    if (m && !m[1]!.includes('_bucket') && Number(m[2]) !== 0) series.set(m[1] as string, Number(m[2]));
  }
  return series;
}

// ---------------------------------------------------------------------------------------------
// App processes, one per slot, cycled

type Kind = 'h1' | 'h2' | 'comet' | 'ws';
interface Slot {
  name: string;
  kind: Kind;
  child: ChildProcess | undefined;
  /** The run is stopping this process on purpose (an exit is not a crash). */
  stopping: boolean;
  busy: boolean;
  stderr: string[];
}

const SLOTS: Slot[] = (
  [
    ['soak-h1', 'h1'],
    ['soak-h2', 'h2'],
    // One name served by two processes at once, one over each reversed protocol.
    ['soak-mix', 'h1'],
    ['soak-mix', 'h2'],
    ['soak-comet', 'comet'],
    ['soak-ws', 'ws'],
  ] as const
).map(([name, kind]) => ({ name, kind, child: undefined, stopping: false, busy: false, stderr: [] }));
const APP_NAMES = [...new Set(SLOTS.map((s) => s.name))];
/** Names whose apps echo visitors' WebSockets (an HTTP/1.1 app holds them). */
const WS_NAMES = ['soak-h1', 'soak-mix'];
const tokenOf = (name: string): string => `${name}-token-${process.pid}`;

/** Starts the slot's process; resolves once it is online. */
function startSlot(gateway: string, slot: Slot): Promise<void> {
  const child = spawn(process.execPath, ['--import', 'tsx', APP, slot.kind, gateway, slot.name, tokenOf(slot.name)], {
    cwd: ROOT,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  slot.child = child;
  slot.stopping = false;
  bump(channelEvents, `app processes started (${slot.kind})`);
  createInterface({ input: child.stderr! }).on('line', (l) => slot.stderr.push(l));
  child.on('exit', (code, signal) => {
    if (slot.child === child) slot.child = undefined;
    if (slot.stopping || !running) return;
    // Not asked to: a crash of the app (or of what it relies on). Count it and bring it back.
    bump(channelEvents, `app processes that exited by themselves (${slot.kind})`);
    log(
      `soak: ${slot.kind} app ${slot.name} exited by itself (${signal ?? `code ${String(code)}`}): ${slot.stderr.slice(-3).join(' | ')}`,
    );
    if (!slot.busy) void restart(gateway, slot, disturb(slot.name));
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${slot.kind} app ${slot.name} not online in 20 s: ${slot.stderr.join(' | ')}`)),
      20_000,
    );
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (line.startsWith('READY ')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', () => {
      clearTimeout(timer);
      reject(
        new Error(`${slot.kind} app ${slot.name} exited before it was online: ${slot.stderr.slice(-3).join(' | ')}`),
      );
    });
  });
}

async function restart(gateway: string, slot: Slot, span: { to: number }): Promise<void> {
  slot.busy = true;
  try {
    // The first attempt even when the run is stopping: the run then closes the app, releasing its
    // name, rather than leaving it to its lease.
    for (let attempt = 0; attempt === 0 || running; attempt++) {
      try {
        await startSlot(gateway, slot);
        break;
      } catch (err) {
        bump(channelEvents, 'app starts that failed');
        log(`soak: ${(err as Error).message}`);
        slot.stopping = true;
        slot.child?.kill('SIGKILL');
        await sleep(Math.min(5_000, 500 * 2 ** attempt));
      }
    }
  } finally {
    span.to = Date.now() + GRACE_MS;
    slot.busy = false;
  }
}

/** Asks the slot's process to go (`close` releases the name, `leave` keeps it) or kills it. */
async function stopSlot(slot: Slot, how: 'close' | 'leave' | 'kill'): Promise<void> {
  const child = slot.child;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  slot.stopping = true;
  const exited = new Promise((r) => child.once('exit', r));
  if (how === 'kill') child.kill('SIGKILL');
  else child.stdin?.write(`${how}\n`);
  if (!(await Promise.race([exited.then(() => true), sleep(5_000).then(() => false)]))) {
    bump(channelEvents, `apps that did not ${how} in 5 s (killed)`);
    child.kill('SIGKILL');
    await exited;
  }
}

const CHURN: { how: 'close' | 'leave' | 'kill'; label: string }[] = [
  { how: 'close', label: 'apps closed, name released, then reclaimed' },
  { how: 'leave', label: 'apps closed keeping the name, reclaimed with its token' },
  { how: 'kill', label: 'apps killed (SIGKILL), reclaimed with their token' },
];

/** Seconds from each cycle's stop to the app being online again. */
const downtimes: number[] = [];

async function churnLoop(gateway: string): Promise<void> {
  while (running) {
    await sleep(CHURN_MS);
    if (paused) continue;
    const slot = pick(SLOTS.filter((s) => !s.busy && s.child));
    if (!slot || !running) continue;
    const { how, label } = pick(CHURN);
    slot.busy = true;
    const span = disturb(slot.name);
    bump(channelEvents, label);
    await stopSlot(slot, how);
    await sleep(between(0, 1_000));
    await restart(gateway, slot, span);
    const down = (span.to - GRACE_MS - span.from) / 1000;
    downtimes.push(down);
    log(`soak: ${elapsed()}: ${slot.kind} app ${slot.name}: ${how}, back in ${down.toFixed(1)} s`);
  }
}

// Ephemeral apps: fresh names that visitors use while they live.
const ephemeralNames: string[] = [];
const ephemeralLive = new Set<Promise<void>>();

async function ephemeral(gateway: string, n: number): Promise<void> {
  const h1 = n % 2 === 0;
  const name = `soak-eph-${h1 ? 'h1' : 'h2'}-${n}`;
  let tunnel: Tunnel | undefined;
  try {
    tunnel = listen(nodeHandler, {
      gateway,
      name,
      lease: 2,
      connections: 2,
      http1: h1,
      backoff: 100,
      maxBackoff: 1_000,
    });
    tunnel.on('error', () => undefined);
    await Promise.race([tunnel.ready(), sleep(10_000).then(() => Promise.reject(new Error('not online in 10 s')))]);
    bump(channelEvents, `ephemeral listen() apps (${h1 ? 'reversed HTTP/1.1' : 'reversed HTTP/2'})`);
    ephemeralNames.push(name);
    await sleep(between(1_000, 4_000));
  } catch (err) {
    bump(channelEvents, 'ephemeral apps that failed to come online');
    log(`soak: ephemeral ${name}: ${(err as Error).message}`);
  } finally {
    const i = ephemeralNames.indexOf(name);
    if (i !== -1) ephemeralNames.splice(i, 1);
    // Requests already sent still get their answers: close() lets them finish.
    const span = disturb(name);
    const release = Math.random() < 0.5;
    bump(channelEvents, release ? 'ephemeral apps released' : 'ephemeral apps left to their 2 s lease');
    await tunnel?.close({ release, graceMs: 2_000 });
    span.to = Date.now() + GRACE_MS;
  }
}

async function ephemeralLoop(gateway: string): Promise<void> {
  for (let n = 0; running; n++) {
    if (!paused) {
      const p = ephemeral(gateway, n).finally(() => ephemeralLive.delete(p));
      ephemeralLive.add(p);
    }
    await sleep(EPHEMERAL_MS);
  }
  await Promise.all(ephemeralLive);
}

/**
 * While true, no app is cycled and no ephemeral app starts: the start and end samples are taken in
 * the same steady state (full load, every app online, no visitor waiting for a restart), so that
 * what they compare is what the gateway keeps, not how many requests happened to be queued.
 */
let paused = false;
async function steady(): Promise<void> {
  paused = true;
  while (SLOTS.some((s) => s.busy || !s.child) || ephemeralLive.size > 0) await sleep(100);
  // Requests that waited for a restarting app get through (or time out) meanwhile.
  await sleep(STEADY_MS);
}

// ---------------------------------------------------------------------------------------------
// Visitors

interface Visit {
  /** App name, or undefined for the gateway's own host. */
  name: string | undefined;
  method: string;
  path: string;
  body?: Buffer;
  /** Declared Content-Length when it differs from the body sent (aborted uploads). */
  declared?: number;
  expectStatus: number;
  /** Expected body; undefined: any. */
  expect?: Buffer;
  abort?: 'upload' | 'download' | 'waiting';
  accept?: string;
  keepAlive: boolean;
}

interface Result {
  status: number | undefined;
  outcome: string;
}

const ABORTED = 'aborted by design';
const OK = 'ok';
const SIZES_DOWN = [1_024, 16_384, 65_536, 262_144];
const SIZES_UP = [0, 100, 4_096, 65_536, 300_000];

let port = 0;
// Enough sockets that requests waiting for a restarting app do not hold up the others in the agent's queue.
const agent = new http.Agent({ keepAlive: true, maxSockets: 256, timeout: 4_000 });
const hostOf = (name: string | undefined): string => (name ? `${name}.localhost:${port}` : `127.0.0.1:${port}`);

function visit(v: Visit): Promise<Result> {
  return new Promise((resolve) => {
    let status: number | undefined;
    let aborting = false;
    let done = false;
    const finish = (outcome: string): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve({ status, outcome });
    };
    const abort = (): void => {
      if (done) return;
      aborting = true;
      req.destroy();
      finish(ABORTED);
    };
    const headers: http.OutgoingHttpHeaders = { host: hostOf(v.name) };
    if (v.accept) headers['accept'] = v.accept;
    if (v.body) headers['content-length'] = v.declared ?? v.body.length;
    const req = http.request({
      host: '127.0.0.1',
      port,
      method: v.method,
      path: v.path,
      headers,
      agent: v.keepAlive ? agent : false,
    });
    const timer = setTimeout(() => {
      req.destroy();
      finish(`client timeout (${CLIENT_TIMEOUT / 1000} s)`);
    }, CLIENT_TIMEOUT);
    const connError = (where: string, err: Error): void => {
      if (!aborting) finish(`connection error ${where}: ${(err as NodeJS.ErrnoException).code ?? err.message}`);
    };
    req.on('error', (err) => connError(status === undefined ? 'before the response' : 'mid-response', err));
    req.on('response', (res) => {
      status = res.statusCode ?? 0;
      const chunks: Buffer[] = [];
      if (v.abort === 'download' && status === 200) res.once('data', abort);
      res.on('data', (c: Buffer) => {
        chunks.push(c);
        bytesDown += c.length;
      });
      res.on('error', (err) => connError('mid-response', err));
      res.on('close', () => {
        if (!res.complete) return connError('mid-response', new Error('closed before the end of the body'));
        const body = Buffer.concat(chunks);
        if (status !== v.expectStatus) {
          const code = res.headers['x-ptth-error'];
          return finish(`status ${String(status)}${typeof code === 'string' ? ` ${code}` : ''}`);
        }
        if (v.expect && !body.equals(v.expect)) return finish('wrong body');
        if (v.accept === 'application/json') {
          try {
            JSON.parse(body.toString('utf8'));
          } catch {
            return finish('wrong body');
          }
        }
        finish(OK);
      });
    });
    if (v.abort === 'upload' && v.body) {
      req.write(v.body);
      bytesUp += v.body.length;
      setTimeout(abort, between(10, 100));
    } else {
      req.end(v.body);
      if (v.body) bytesUp += v.body.length;
      if (v.abort === 'waiting') setTimeout(abort, between(100, 500));
    }
  });
}

/** One visitor request of a random kind (weights in the table). */
function nextVisit(): Visit {
  const keepAlive = Math.random() < 0.7;
  const eph = ephemeralNames.length > 0 && Math.random() < 0.1;
  const name = eph ? pick(ephemeralNames) : pick(APP_NAMES);
  const kinds: [number, () => Visit][] = [
    [35, () => ({ name, method: 'GET', path: '/hello', expectStatus: 200, expect: HELLO, keepAlive })],
    [
      12,
      () => {
        const n = pick(SIZES_DOWN);
        return { name, method: 'GET', path: `/bytes?n=${n}`, expectStatus: 200, expect: payload(n), keepAlive };
      },
    ],
    [
      25,
      () => {
        const body = randomBytes(pick(SIZES_UP));
        return { name, method: 'POST', path: '/echo', body, expectStatus: 200, expect: body, keepAlive };
      },
    ],
    [
      5,
      () => ({
        name,
        method: 'GET',
        path: `/slow?ms=${between(100, 1_500)}`,
        expectStatus: 200,
        expect: HELLO,
        keepAlive,
      }),
    ],
    [
      3,
      () => ({
        name,
        method: 'POST',
        path: '/echo',
        body: randomBytes(65_536),
        declared: 262_144,
        expectStatus: 200,
        abort: 'upload',
        keepAlive,
      }),
    ],
    [3, () => ({ name, method: 'GET', path: `/bytes?n=${2 ** 20}`, expectStatus: 200, abort: 'download', keepAlive })],
    [2, () => ({ name, method: 'GET', path: '/slow?ms=2000', expectStatus: 200, abort: 'waiting', keepAlive })],
    [
      7,
      () => ({
        name: `soak-nobody-${randomBytes(4).toString('hex')}`,
        method: 'GET',
        path: '/hello',
        expectStatus: 404,
        keepAlive,
      }),
    ],
    [
      3,
      () => ({ name: undefined, method: 'GET', path: '/', accept: 'application/json', expectStatus: 200, keepAlive }),
    ],
  ];
  let r = Math.random() * kinds.reduce((a, [w]) => a + w, 0);
  for (const [w, make] of kinds) {
    if ((r -= w) < 0) return make();
  }
  return (kinds[0] as [number, () => Visit])[1]();
}

async function oneVisit(): Promise<void> {
  const v = nextVisit();
  const from = Date.now();
  inFlight++;
  sent++;
  try {
    const r = await visit(v);
    bump(statusClasses, r.status === undefined ? 'no response' : `${Math.floor(r.status / 100)}xx`);
    const outcome = r.outcome === OK && v.expectStatus === 404 ? 'ok: 404 for an unknown name' : r.outcome;
    tally(outcomes, outcome, targetOf(v.name), churned(v.name, from, Date.now()));
  } finally {
    inFlight--;
  }
}

/** Sends visitor requests at RATE per second with at most MAX_IN_FLIGHT at once. */
async function visitorLoop(): Promise<void> {
  const TICK = 20;
  let credit = 0;
  let last = performance.now();
  while (running) {
    await sleep(TICK);
    const now = performance.now();
    credit = Math.min(credit + ((now - last) / 1000) * RATE, RATE);
    last = now;
    for (; credit >= 1; credit--) {
      if (inFlight >= MAX_IN_FLIGHT) dropped++;
      else void oneVisit();
    }
  }
  while (inFlight > 0) await sleep(50);
}

/** A visitor WebSocket through an HTTP/1.1 app: a few messages of random sizes, each echoed. */
function wsSession(name: string): Promise<string> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (outcome: string): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      ws.terminate();
      resolve(outcome);
    };
    const timer = setTimeout(() => finish('timed out (30 s)'), 30_000);
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, {
      headers: { Host: hostOf(name) },
      handshakeTimeout: 10_000,
    });
    ws.on('unexpected-response', (_req, res) => {
      res.resume();
      const code = res.headers['x-ptth-error'];
      finish(`refused: ${String(res.statusCode)}${typeof code === 'string' ? ` ${code}` : ''}`);
    });
    ws.on('error', (err) => finish(`error: ${(err as NodeJS.ErrnoException).code ?? err.message}`));
    ws.on('close', (code) => finish(`closed by the other side (${code})`));
    let left = between(3, 15);
    let expected: Buffer | undefined;
    const next = (): void => {
      if (left-- === 0) {
        // Ours to close: wait for the close handshake to finish.
        ws.removeAllListeners('close');
        ws.once('close', () => finish(OK));
        ws.close(1000);
        return;
      }
      expected = randomBytes(between(10, 65_536));
      ws.send(expected);
    };
    ws.on('message', (data: Buffer) => {
      if (!expected || !data.equals(expected)) return finish('wrong echo');
      wsMessages++;
      expected = undefined;
      setTimeout(next, 100);
    });
    ws.once('open', next);
  });
}

async function wsLoop(): Promise<void> {
  while (running) {
    const name = pick(WS_NAMES);
    const from = Date.now();
    const outcome = await wsSession(name);
    tally(wsOutcomes, outcome, name, churned(name, from, Date.now()));
    await sleep(200);
  }
}

// ---------------------------------------------------------------------------------------------
// Sampling

interface Sample {
  at: number;
  rss: number;
  heapTotal: number;
  registrations: number;
  channels: number;
}

async function gatewayStatus(): Promise<{ registrations: number; channels: number; names: string[] }> {
  const r = await fetchRaw(`http://127.0.0.1:${port}/`, { headers: { accept: 'application/json' } });
  const status = JSON.parse(r.body.toString('utf8')) as { registrations: { name: string; channels: unknown[] }[] };
  return {
    registrations: status.registrations.length,
    channels: status.registrations.reduce((a, reg) => a + reg.channels.length, 0),
    names: status.registrations.map((reg) => reg.name),
  };
}

/** RSS slope by least squares, in bytes per minute. */
function slope(samples: Sample[]): number {
  const n = samples.length;
  if (n < 2) return 0;
  const mx = samples.reduce((a, s) => a + s.at, 0) / n;
  const my = samples.reduce((a, s) => a + s.rss, 0) / n;
  let num = 0;
  let den = 0;
  for (const s of samples) {
    num += (s.at - mx) * (s.rss - my);
    den += (s.at - mx) ** 2;
  }
  return den === 0 ? 0 : (num / den) * 60_000;
}

function progress(samples: Sample[], t0: number, measuring: boolean): void {
  const s = samples[samples.length - 1];
  const fails = [...outcomes]
    .filter(([k]) => !k.startsWith('ok') && k !== ABORTED)
    .reduce((a, [, t]) => a + t.total, 0);
  const secs = Math.round((Date.now() - t0) / 1000);
  log(
    `soak: ${measuring ? `${secs} s / ${DURATION_S} s` : `warm-up ${secs} s / ${WARMUP_S} s`}: ${count(sent)} requests ` +
      `(${count(outcomes.get(OK)?.total ?? 0)} ok, ${count(fails)} errors, ${count(dropped)} dropped), ` +
      `${count(wsMessages)} WebSocket echoes; gateway RSS ${s ? mib(s.rss) : 'n/a'} (heap ${s ? mib(s.heapTotal) : 'n/a'}), ` +
      `${s?.registrations ?? '?'} registrations, ${s?.channels ?? '?'} channels`,
  );
}

// ---------------------------------------------------------------------------------------------
// Report

/** A markdown table; the first column and any named in `left` are text, the others numbers. */
function rows(headers: string[], body: string[][], left: string[] = []): void {
  out(`| ${headers.join(' | ')} |`);
  out(`|${headers.map((h, i) => (i === 0 || left.includes(h) ? ' --- ' : ' ---: ')).join('|')}|`);
  for (const r of body) out(`| ${r.join(' | ')} |`);
}

function pct(a: number, b: number): string {
  return `${a >= b ? '+' : ''}${(((a - b) / b) * 100).toFixed(1)} %`;
}

interface Run {
  start: Memory;
  end: Memory;
  idle: Memory | undefined;
  baseline: Memory;
  samples: Sample[];
  measuredS: number;
  /** % of one core over the measured window, by who used it. */
  cpu: Record<string, number>;
  leftover: { registrations: number; channels: number; names: string[] } | undefined;
  snapshots: string[];
  metrics: Map<string, number> | undefined;
}

function report(gw: GatewayProcess, run: Run): void {
  out('');
  out(
    `ptth-proxy soak run: node ${process.version}, ${availableParallelism()} cores, ${run.measuredS.toFixed(0)} s measured after a ${WARMUP_S} s warm-up, ` +
      `${RATE} visitor requests/s offered (at most ${MAX_IN_FLIGHT} in flight), ${WS_SESSIONS} visitor WebSocket sessions at a time, ` +
      `one app cycled every ${CHURN_MS / 1000} s, an ephemeral app every ${EPHEMERAL_MS / 1000} s; gateway flags: ${GATEWAY_FLAGS.join(' ')}`,
  );
  out('');
  out(
    'Visitor requests (whole run, warm-up included). "during churn": the name was being closed, killed or restarted meanwhile.',
  );
  out('');
  const total = [...statusClasses.values()].reduce((a, b) => a + b, 0);
  rows(
    ['requests', 'count'],
    [
      ['sent', count(sent)],
      ['answered', count(total - (statusClasses.get('no response') ?? 0))],
      ...[...statusClasses].sort().map(([k, n]) => [`  ${k}`, count(n)]),
      ['not sent (in-flight cap)', count(dropped)],
      ['bytes up / down', `${mib(bytesUp)} / ${mib(bytesDown)}`],
    ],
  );
  out('');
  // Successes first, then the rest by count; each with the targets it happened to.
  const table = (m: Map<string, Tally>): string[][] =>
    [...m]
      .sort(([a, ta], [b, tb]) =>
        a.startsWith('ok') === b.startsWith('ok') ? tb.total - ta.total : a.startsWith('ok') ? -1 : 1,
      )
      .map(([k, t]) => [
        k,
        count(t.total),
        count(t.churn),
        count(t.total - t.churn),
        [...t.where]
          .sort(([, a], [, b]) => b - a)
          .map(([w, n]) => `${w} ${count(n)}`)
          .join(', '),
      ]);
  rows(['outcome', 'count', 'during churn', 'steady', 'targets'], table(outcomes), ['targets']);
  out('');
  out(`Visitor WebSocket sessions through the HTTP/1.1 apps (${count(wsMessages)} messages echoed):`);
  out('');
  rows(['outcome', 'count', 'during churn', 'steady', 'targets'], table(wsOutcomes), ['targets']);
  out('');
  out('Channels coming and going (what the run did):');
  out('');
  rows(
    ['event', 'count'],
    [...channelEvents].sort(([a], [b]) => a.localeCompare(b)).map(([k, n]) => [k, count(n)]),
  );
  out('');
  if (run.metrics) {
    out(
      "The gateway's own counters (its /metrics once the apps had gone; whole run, warm-up included; the non-zero ones):",
    );
    out('');
    const skip = /_(sum|count)$|^ptth_(registrations|channels|queue_depth)\b/;
    rows(
      ['series', 'value'],
      [...run.metrics].filter(([k]) => !skip.test(k.replace(/\{.*/, ''))).map(([k, v]) => [`\`${k}\``, count(v)]),
    );
  } else out('(The gateway serves no /metrics: no counters of its own to compare.)');
  out('');
  out(
    `Gateway memory (RSS from /proc, heap from the process itself, each after a forced full GC, median of three readings; ` +
      `start and end under full load after ${STEADY_MS / 1000} s without churn, so that no request is waiting for a restarting app):`,
  );
  out('');
  const mem = (label: string, m: Memory | undefined): string[] =>
    m
      ? [
          label,
          mib(m.rss),
          mib(m.heapUsed),
          mib(m.heapTotal),
          mib(m.external),
          mib(m.arrayBuffers),
          Object.entries(m.resources)
            .map(([k, n]) => `${k} ${n}`)
            .join(', '),
        ]
      : [label, 'n/a', 'n/a', 'n/a', 'n/a', 'n/a', ''];
  rows(
    ['when', 'RSS', 'heap used', 'heap total', 'external', 'array buffers', 'handles'],
    [
      mem('before any traffic', run.baseline),
      mem('start (after the warm-up)', run.start),
      mem('end (under load)', run.end),
      mem('idle (apps gone, leases over)', run.idle),
    ],
    ['handles'],
  );
  out('');
  const measured = run.samples;
  const range = (f: (s: Sample) => number): string =>
    measured.length ? `${mib(Math.min(...measured.map(f)))} to ${mib(Math.max(...measured.map(f)))}` : 'n/a';
  out(
    `RSS growth end vs start: ${pct(run.end.rss, run.start.rss)} (target: within ${RSS_LIMIT_PCT} %); heap used ${pct(run.end.heapUsed, run.start.heapUsed)}. ` +
      `Every ${SAMPLE_MS / 1000} s during the measured window (no forced GC): RSS ${range((s) => s.rss)}, ` +
      `trend ${(slope(measured) / 2 ** 20).toFixed(2)} MiB/min over ${measured.length} samples; heap total ${range((s) => s.heapTotal)}. ` +
      `CPU over the measured window, % of one core (${availableParallelism()} cores): ` +
      `${Object.entries(run.cpu)
        .map(([who, v]) => `${who} ${v.toFixed(0)}`)
        .join(', ')}.`,
  );
  if (run.leftover) {
    const names = run.leftover.names.length ? ` (${run.leftover.names.join(', ')})` : '';
    out(
      `Left on the gateway once every app had gone and the leases were over: ${run.leftover.registrations} registrations${names}, ${run.leftover.channels} channels.`,
    );
  }
  if (downtimes.length > 0) {
    const sorted = [...downtimes].sort((a, b) => a - b);
    out(
      `Apps cycled: ${downtimes.length}, offline for ${sorted[Math.floor(sorted.length / 2)]?.toFixed(1)} s at the median, ${sorted[sorted.length - 1]?.toFixed(1)} s at the longest.`,
    );
  }
  if (run.snapshots.length > 0) out(`Heap snapshots: ${run.snapshots.join(', ')}`);
  if (gw.stderr.length > 0) {
    // Warnings come with their stacks (--trace-warnings): each distinct message, counted, with
    // the top of its first stack.
    const seen = new Map<string, { n: number; stack: string[] }>();
    let current: { n: number; stack: string[] } | undefined;
    for (const l of gw.stderr) {
      if (/^\s+at /.test(l)) {
        if (current && current.n === 1 && current.stack.length < 8) current.stack.push(l.trim());
        continue;
      }
      const key = l.replace(/^\(node:\d+\) /, '');
      current = seen.get(key) ?? { n: 0, stack: [] };
      current.n++;
      seen.set(key, current);
    }
    out('');
    out(`The gateway wrote ${gw.stderr.length} lines to stderr:`);
    for (const [l, { n, stack }] of seen) out(`- ${n} x ${l}${stack.length ? `\n    ${stack.join('\n    ')}` : ''}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Main

async function main(): Promise<number> {
  const gw = new GatewayProcess();
  stopGateway = () => gw.stop();
  killGateway = () => void (gw.exit ?? gw.child.kill('SIGKILL'));
  port = await gw.ready();
  const gateway = `http://127.0.0.1:${port}`;
  log(
    `soak: gateway pid ${gw.pid} on ${gateway}; ${WARMUP_S} s warm-up, then ${DURATION_S} s measured at ${RATE} req/s`,
  );
  await sleep(500);
  const baseline = await gw.settledMemory();
  await Promise.all(SLOTS.map((s) => startSlot(gateway, s)));
  log(`soak: ${SLOTS.length} apps online`);

  const loops = [
    visitorLoop(),
    churnLoop(gateway),
    ephemeralLoop(gateway),
    ...Array.from({ length: WS_SESSIONS }, () => wsLoop()),
  ];
  const samples: Sample[] = [];
  let measuring = false;
  let t0 = Date.now();
  let lastProgress = Date.now();
  const sampler = async (): Promise<void> => {
    while (running && !gw.exit) {
      await sleep(SAMPLE_MS);
      if (gw.exit) break;
      try {
        sampleAppCpu();
        const sample = {
          at: Date.now(),
          rss: rssOf(gw.pid),
          heapTotal: (await gw.usage()).heapTotal,
          ...(await gatewayStatus()),
        };
        if (measuring) samples.push(sample);
        else samples.splice(0, samples.length, sample);
      } catch (err) {
        log(`soak: sampling failed: ${(err as Error).message}`);
      }
      if (Date.now() - lastProgress >= PROGRESS_MS - 100) {
        lastProgress = Date.now();
        progress(samples, t0, measuring);
      }
    }
  };
  const sampling = sampler();

  const until = async (ms: number): Promise<boolean> => {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline && !gw.exit && !interrupted) await sleep(250);
    return !gw.exit && !interrupted;
  };
  let start: Memory | undefined;
  let end: Memory | undefined;
  const snapshots: string[] = [];
  let cpuFrom: { gateway: number; apps: number; run: number; machine: number } | undefined;
  let measuredFrom = Date.now();
  if (await until(WARMUP_S * 1000)) {
    await steady();
    start = await gw.settledMemory();
    log(`soak: start sample: RSS ${mib(start.rss)}, heap used ${mib(start.heapUsed)}`);
    const snap = await gw.snapshot('start');
    if (snap) snapshots.push(snap);
    samples.length = 0;
    measuring = true;
    t0 = measuredFrom = Date.now();
    cpuFrom = { gateway: cpuSeconds(gw.pid) ?? 0, apps: sampleAppCpu(), run: selfSeconds(), machine: machineSeconds() };
    paused = false;
    if (await until(DURATION_S * 1000)) {
      await steady();
      end = await gw.settledMemory();
      log(`soak: end sample: RSS ${mib(end.rss)}, heap used ${mib(end.heapUsed)}`);
      const s = await gw.snapshot('end');
      if (s) snapshots.push(s);
    }
  }
  const measuredS = (Date.now() - measuredFrom) / 1000;
  const cpu: Record<string, number> = {};
  if (cpuFrom) {
    const to = {
      gateway: cpuSeconds(gw.pid) ?? 0,
      apps: sampleAppCpu(),
      run: selfSeconds(),
      machine: machineSeconds(),
    };
    const pct = (k: keyof typeof to): number => ((to[k] - (cpuFrom as typeof to)[k]) / measuredS) * 100;
    cpu['gateway'] = pct('gateway');
    cpu['app processes'] = pct('apps');
    cpu['this process (visitors, ephemeral apps)'] = pct('run');
    cpu['everything else on the machine'] = Math.max(
      0,
      pct('machine') - cpu['gateway'] - cpu['app processes'] - cpu['this process (visitors, ephemeral apps)'],
    );
  }

  log('soak: stopping the traffic and the apps');
  running = false;
  await Promise.all(loops);
  await sampling;
  await Promise.all(SLOTS.map((s) => stopSlot(s, 'close')));
  let idle: Memory | undefined;
  let metrics: Map<string, number> | undefined;
  let leftover: { registrations: number; channels: number; names: string[] } | undefined;
  if (!gw.exit) {
    // Unreleased ephemeral names expire after their 2 s lease.
    await sleep(4_000);
    leftover = await gatewayStatus().catch(() => undefined);
    metrics = await scrapeMetrics();
    idle = await gw.settledMemory().catch(() => undefined);
    const s = await gw.snapshot('idle');
    if (s) snapshots.push(s);
  }
  const crashed = gw.exit !== undefined;
  await gw.stop();
  agent.destroy();

  if (!start || !end) {
    log(
      interrupted ? 'soak: interrupted' : `soak: FAILED: the gateway died before the ${start ? 'end' : 'start'} sample`,
    );
    if (gw.stderr.length > 0) log(gw.stderr.slice(-20).join('\n'));
    return 1;
  }
  report(gw, { baseline, start, end, idle, samples, measuredS, cpu, leftover, snapshots, metrics });
  let code = 0;
  if (crashed) {
    log(`soak: FAILED: the gateway exited during the run (${gw.exit?.signal ?? `code ${String(gw.exit?.code)}`})`);
    code = 1;
  } else if (gw.exit && (gw.exit.code !== 0 || gw.exit.signal)) {
    log(`soak: warning: the gateway did not exit 0 on SIGTERM (${gw.exit.signal ?? `code ${String(gw.exit.code)}`})`);
  }
  const growth = ((end.rss - start.rss) / start.rss) * 100;
  if (growth > RSS_LIMIT_PCT) {
    log(
      `soak: FAILED: gateway RSS grew ${growth.toFixed(1)} % (${mib(start.rss)} -> ${mib(end.rss)}), over the ${RSS_LIMIT_PCT} % target ` +
        `(heap used after GC: ${pct(end.heapUsed, start.heapUsed)}; idle: ${idle ? mib(idle.rss) : 'n/a'})`,
    );
    code = 1;
  }
  const wrong = (outcomes.get('wrong body')?.total ?? 0) + (wsOutcomes.get('wrong echo')?.total ?? 0);
  if (wrong > 0) {
    log(`soak: FAILED: ${wrong} responses or WebSocket echoes had the wrong bytes`);
    code = 1;
  }
  return code;
}

let stopGateway: () => Promise<void> = async () => undefined;
let killGateway = (): void => undefined;
let interrupted = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (interrupted) process.exit(130);
    interrupted = true;
    running = false;
    log(`\nsoak: ${signal}: stopping`);
  });
}
// Nothing outlives the run.
process.on('exit', () => {
  for (const s of SLOTS) s.child?.kill('SIGKILL');
  killGateway();
});

let code = 1;
try {
  code = await main();
} catch (err) {
  log(`soak: ${(err as Error).stack ?? String(err)}`);
  running = false;
  await stopGateway();
}
process.exit(code);
