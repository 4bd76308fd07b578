/**
 * Streaming row: 1 GiB uploaded and 1 GiB downloaded through the gateway (app in its own process,
 * served through listen()), against the same transfers straight to a backend on loopback, in one
 * run; the gateway's RSS is sampled throughout. Only 127.0.0.1.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import { fileURLToPath } from 'node:url';

const BIN = fileURLToPath(new URL('../../bin/ptth-proxy.js', import.meta.url));
const SERVICE = fileURLToPath(new URL('./stream-service.mjs', import.meta.url));
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

function start(args: string[], ready: RegExp): Promise<{ child: ChildProcess; match: RegExpMatchArray }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout?.on('data', (c: Buffer) => {
      out += c.toString();
      const m = out.match(ready);
      if (m) resolve({ child, match: m });
    });
    child.once('exit', (code) => reject(new Error(`${args.join(' ')} exited with ${String(code)}`)));
  });
}

function upload(port: number, host: string, bytes: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/up', headers: { host, 'content-length': bytes } });
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
    const gw = await start([BIN, 'serve', '--port', '0', '--host', '127.0.0.1', '--quiet'], /listening on [^\n]*:(\d+)/);
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

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  runStream(Number(process.argv[2] ?? 2 ** 30)).then(
    (rows) => console.table(rows),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}
