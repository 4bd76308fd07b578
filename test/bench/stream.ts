/**
 * Streaming rows: 1 GiB uploaded and 1 GiB downloaded through the gateway (app in its own process,
 * served through listen()), against the same transfers straight to a backend on loopback, in one
 * run; the gateway's RSS is sampled throughout. Only 127.0.0.1.
 *
 * runConnectStream: 256 MiB each way through `ptth-proxy connect` (its defaults) against the same
 * transfers straight to the backend, with curl when it is installed (else node's http client), and
 * through two byte splices in the places of the gateway and `connect` (the floor of that topology:
 * two more processes that copy every byte and parse nothing), and through the undici reference
 * proxy and a byte splice (the same with an HTTP-parsing hop where the gateway is).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import * as http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BIN, NODE, serveArgs } from './flags.js';

const SERVICE = fileURLToPath(new URL('./stream-service.mjs', import.meta.url));
/** service.mjs: its `splice` and `undici` modes are the floors' byte splice and parsing hop. */
const REFERENCE = fileURLToPath(new URL('./service.mjs', import.meta.url));
const CHUNK = Buffer.alloc(256 * 1024, 'upload ');

export interface StreamRow {
  row: string;
  uploadMiBps: number;
  downloadMiBps: number;
  rssGrowthMiB: number | undefined;
}

function rss(pid: number): number {
  try {
    const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Starts `node ...args`; resolves on the first stdout match of `ready`, then drains stdout (access log lines). */
function start(args: string[], ready: RegExp): Promise<{ child: ChildProcess; match: RegExpMatchArray }> {
  return new Promise((resolve, reject) => {
    const child = spawn(NODE, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out: string | undefined = '';
    child.stdout?.on('data', (c: Buffer) => {
      if (out === undefined) return;
      out += c.toString();
      const m = out.match(ready);
      if (m) {
        out = undefined;
        resolve({ child, match: m });
      }
    });
    child.once('exit', (code) => reject(new Error(`${args.join(' ')} exited with ${String(code)}`)));
  });
}

function upload(port: number, host: string, bytes: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const req = http.request({
      host: '127.0.0.1',
      port,
      method: 'POST',
      path: '/up',
      headers: { host, 'content-length': bytes },
    });
    req.on('response', (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => {
        if (Number(body) !== bytes) reject(new Error(`upload: the app counted ${body} bytes, not ${bytes}`));
        else resolve(bytes / 2 ** 20 / ((performance.now() - started) / 1000));
      });
    });
    req.on('error', reject);
    let sent = 0;
    const pump = (): void => {
      while (sent < bytes) {
        const n = Math.min(CHUNK.length, bytes - sent);
        sent += n;
        if (!req.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) {
          req.once('drain', pump);
          return;
        }
      }
      req.end();
    };
    pump();
  });
}

function download(port: number, host: string, bytes: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const req = http.request({ host: '127.0.0.1', port, path: `/down?bytes=${bytes}`, headers: { host } });
    req.on('response', (res) => {
      let got = 0;
      res.on('data', (c: Buffer) => (got += c.length));
      res.on('end', () => {
        if (got !== bytes) reject(new Error(`download: got ${got} bytes, not ${bytes}`));
        else resolve(bytes / 2 ** 20 / ((performance.now() - started) / 1000));
      });
    });
    req.on('error', reject);
    req.end();
  });
}

export async function runStream(bytes = 2 ** 30): Promise<StreamRow[]> {
  const children: ChildProcess[] = [];
  try {
    const backend = await start([SERVICE, 'backend'], /READY (\d+)/);
    children.push(backend.child);
    const bport = Number(backend.match[1]);
    const rows: StreamRow[] = [];
    rows.push({
      row: 'direct',
      uploadMiBps: await upload(bport, `127.0.0.1:${bport}`, bytes),
      downloadMiBps: await download(bport, `127.0.0.1:${bport}`, bytes),
      rssGrowthMiB: undefined,
    });
    const gw = await start(serveArgs(), /listening on [^\n]*:(\d+)/);
    children.push(gw.child);
    const gport = Number(gw.match[1]);
    for (const proto of ['h1', 'h2'] as const) {
      const name = `stream-${proto}`;
      const app = await start([SERVICE, 'app', `http://127.0.0.1:${gport}`, name, proto], /READY (h\d)/);
      children.push(app.child);
      const pid = gw.child.pid as number;
      const before = rss(pid);
      let peak = before;
      const timer = setInterval(() => (peak = Math.max(peak, rss(pid))), 100);
      const host = `${name}.localhost:${gport}`;
      const up = await upload(gport, host, bytes);
      const down = await download(gport, host, bytes);
      clearInterval(timer);
      rows.push({
        row: `through gateway, reversed ${proto === 'h1' ? 'HTTP/1.1' : 'HTTP/2'}`,
        uploadMiBps: up,
        downloadMiBps: down,
        rssGrowthMiB: (peak - before) / 2 ** 20,
      });
    }
    return rows;
  } finally {
    for (const c of children) c.kill('SIGKILL');
  }
}

function hasCurl(): boolean {
  const r = spawnSync('curl', ['--version'], { stdio: 'ignore' });
  return r.status === 0;
}

/** Runs curl; resolves with its stdout, rejects on a non-zero exit. */
function curl(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('curl', ['-sS', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.once('error', reject);
    child.once('close', (code) =>
      code === 0 ? resolve(out) : reject(new Error(`curl ${args.join(' ')}: exit ${String(code)}: ${err.trim()}`)),
    );
  });
}

/**
 * curl -T of a file (in the page cache: the source costs next to nothing) with `Expect:` off, so that no row waits out curl's one-second wait for a `100 Continue`.
 */
async function curlUpload(port: number, host: string, file: string, bytes: number): Promise<number> {
  const out = await curl([
    '-o',
    '-',
    '-w',
    '\n%{http_code} %{time_total}',
    '-H',
    'Expect:',
    '-H',
    `Host: ${host}`,
    '-T',
    file,
    `http://127.0.0.1:${port}/up`,
  ]);
  const [body = '', last = ''] = out.split('\n');
  const [code, seconds] = last.split(' ');
  if (code !== '200' || Number(body) !== bytes)
    throw new Error(`upload: ${String(code)}, the app counted ${body} bytes, not ${bytes}`);
  return bytes / 2 ** 20 / Number(seconds);
}

async function curlDownload(port: number, host: string, bytes: number): Promise<number> {
  const out = await curl([
    '-o',
    '/dev/null',
    '-w',
    '%{http_code} %{size_download} %{time_total}',
    '-H',
    `Host: ${host}`,
    `http://127.0.0.1:${port}/down?bytes=${bytes}`,
  ]);
  const [code, size, seconds] = out.trim().split(' ');
  if (code !== '200' || Number(size) !== bytes)
    throw new Error(`download: ${String(code)}, got ${String(size)} bytes, not ${bytes}`);
  return bytes / 2 ** 20 / Number(seconds);
}

export interface ConnectStream {
  tool: 'curl' | 'node';
  rows: StreamRow[];
}

/**
 * `bytes` up and down straight to the backend, then through the gateway and `ptth-proxy connect`
 * with its defaults, then through two byte splices chained to the backend (rows[2]), then through
 * the undici reference proxy in the outer splice's place (rows[3]).
 */
export async function runConnectStream(bytes = 256 * 2 ** 20): Promise<ConnectStream> {
  const children: ChildProcess[] = [];
  const tool = hasCurl() ? 'curl' : 'node';
  const file = join(tmpdir(), `ptth-bench-${process.pid}-${bytes}.bin`);
  try {
    if (tool === 'curl') {
      // Written, not sparse: curl read a sparse file at a third of the speed of one in the page cache.
      const fd = openSync(file, 'w');
      for (let left = bytes; left > 0; left -= CHUNK.length) writeSync(fd, CHUNK, 0, Math.min(left, CHUNK.length));
      closeSync(fd);
    }
    const up = (port: number, host: string): Promise<number> =>
      tool === 'curl' ? curlUpload(port, host, file, bytes) : upload(port, host, bytes);
    const down = (port: number, host: string): Promise<number> =>
      tool === 'curl' ? curlDownload(port, host, bytes) : download(port, host, bytes);
    /** A row: `bytes` up, then down, through 127.0.0.1:port with `host` as the Host field. */
    const transfer = async (row: string, port: number, host: string): Promise<StreamRow> => ({
      row,
      uploadMiBps: await up(port, host),
      downloadMiBps: await down(port, host),
      rssGrowthMiB: undefined,
    });
    const backend = await start([SERVICE, 'backend'], /READY (\d+)/);
    children.push(backend.child);
    const bport = Number(backend.match[1]);
    const rows: StreamRow[] = [];
    const direct = `127.0.0.1:${bport}`;
    rows.push(await transfer('direct', bport, direct));
    const gw = await start(serveArgs(), /listening on [^\n]*:(\d+)/);
    children.push(gw.child);
    const gport = Number(gw.match[1]);
    const name = 'stream-connect';
    const client = await start(
      [BIN, 'connect', direct, '--gateway', `http://127.0.0.1:${gport}`, '--name', name],
      /^Forwarding /m,
    );
    children.push(client.child);
    const pid = gw.child.pid as number;
    const before = rss(pid);
    let peak = before;
    const timer = setInterval(() => (peak = Math.max(peak, rss(pid))), 100);
    const host = `${name}.localhost:${gport}`;
    try {
      rows.push(await transfer('through gateway and `connect`', gport, host));
    } finally {
      clearInterval(timer);
    }
    (rows[1] as StreamRow).rssGrowthMiB = (peak - before) / 2 ** 20;
    // The gateway and connect are idle from here: the floor rows have the machine to themselves.
    const reference = async (...args: string[]): Promise<number> => {
      const r = await start([REFERENCE, ...args], /READY (\d+)/);
      children.push(r.child);
      return Number(r.match[1]);
    };
    const inner = await reference('splice', String(bport));
    rows.push(await transfer('two byte splices (reference)', await reference('splice', String(inner)), direct));
    // The gateway parses HTTP where a splice does not: the undici reference proxy in its place.
    rows.push(
      await transfer(
        'undici reference proxy and a byte splice (reference)',
        await reference('undici', String(inner), '1'),
        direct,
      ),
    );
    return { tool, rows };
  } finally {
    for (const c of children) c.kill('SIGKILL');
    rmSync(file, { force: true });
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const bytes = Number(process.argv[2] ?? 2 ** 30);
  (process.argv[3] === 'connect' ? runConnectStream(bytes).then((r) => r.rows) : runStream(bytes)).then(
    (rows) => console.table(rows),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}
