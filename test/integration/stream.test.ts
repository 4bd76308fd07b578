import * as http from 'node:http';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { listen, type Tunnel } from '../../src/client/node.js';
import { rssOf, spawnCli, type Spawned } from '../helpers/spawn.js';

/**
 * Large bodies stream through the gateway both ways with backpressure: the gateway runs in its own
 * process and its resident memory is sampled while 1 GiB goes up and 1 GiB comes down (and 256 MiB
 * to a reader held to 64 MiB/s throughout). Every byte is checked against a SHA-1 computed as it
 * streams. Without backpressure the gateway would hold a large part of the body; the bound here
 * (96 MiB of growth) is far below that and far above the ~10 MiB a streaming relay needs.
 */
const MIB = 1024 * 1024;
const GIB = 1024 * MIB;
const CHUNK = Buffer.alloc(256 * 1024, 'abcdefghijklmnopqrstuvwxyz0123456789');

function source(total: number): Readable {
  let sent = 0;
  return new Readable({
    read() {
      if (sent >= total) {
        this.push(null);
        return;
      }
      const n = Math.min(CHUNK.length, total - sent);
      sent += n;
      this.push(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n));
    },
  });
}

let gateway: Spawned | undefined;
let tunnel: Tunnel | undefined;
afterEach(async () => {
  await tunnel?.close({ graceMs: 100 });
  gateway?.kill('SIGKILL');
  tunnel = gateway = undefined;
});

async function startAll(): Promise<{ port: number; sample: () => number }> {
  gateway = spawnCli(['serve', '--port', '0', '--host', '127.0.0.1', '--quiet']);
  const m = await gateway.waitFor(/listening on [^\n]*:(\d+)/);
  const port = Number(m[1]);
  const app = http.createServer((req, res) => {
    if (req.method === 'POST') {
      // Upload: hash what arrives, answer with its size and digest.
      const hash = createHash('sha1');
      let size = 0;
      req.on('data', (c: Buffer) => {
        size += c.length;
        hash.update(c);
      });
      req.on('end', () => res.end(JSON.stringify({ size, sha1: hash.digest('hex') })));
      return;
    }
    // Download: `?size=N` bytes (1 GiB by default) of the same pattern the uploads send.
    const size = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('size') ?? GIB);
    res.writeHead(200, { 'Content-Length': size });
    source(size).pipe(res);
  });
  tunnel = listen(app, { gateway: `http://127.0.0.1:${port}`, name: 'big', connections: 1 });
  await tunnel.ready();
  const pid = gateway.child.pid as number;
  return { port, sample: () => rssOf(pid) };
}

function expectedSha1(total: number): string {
  const hash = createHash('sha1');
  for (let sent = 0; sent < total; sent += CHUNK.length)
    hash.update(CHUNK.subarray(0, Math.min(CHUNK.length, total - sent)));
  return hash.digest('hex');
}

describe('streaming bodies', () => {
  it('uploads 1 GiB through the gateway with flat gateway memory', async () => {
    const { port, sample } = await startAll();
    const before = sample();
    let peak = before;
    const timer = setInterval(() => (peak = Math.max(peak, sample())), 50);
    const answer = await new Promise<string>((resolve, reject) => {
      const req = http.request({
        host: '127.0.0.1',
        port,
        method: 'POST',
        path: '/upload',
        headers: { host: `big.localhost:${port}`, 'content-length': GIB },
      });
      req.on('response', (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve(body));
      });
      req.on('error', reject);
      pipeline(source(GIB), req).catch(reject);
    });
    clearInterval(timer);
    expect(JSON.parse(answer)).toEqual({ size: GIB, sha1: expectedSha1(GIB) });
    expect(peak - before).toBeLessThan(96 * 1024 * 1024);
  }, 120_000);

  /**
   * Downloads `total` bytes, hashing them as they come (no buffer of the whole). With `rate`
   * (bytes/s) the reader is slow throughout: after each MiB it pauses until it is no further ahead
   * than `rate` allows, so the app, far faster, must be held back the whole way.
   */
  function download(port: number, total: number, rate?: number): Promise<{ size: number; sha1: string; ms: number }> {
    return new Promise((resolve, reject) => {
      const path = `/download?size=${total}`;
      const req = http.request({ host: '127.0.0.1', port, path, headers: { host: `big.localhost:${port}` } });
      req.on('response', (res) => {
        const hash = createHash('sha1');
        const started = performance.now();
        let n = 0;
        let check = MIB;
        res.on('data', (c: Buffer) => {
          n += c.length;
          hash.update(c);
          if (rate === undefined || n < check) return;
          check = n + MIB;
          const wait = started + (n / rate) * 1000 - performance.now();
          if (wait > 0) {
            res.pause();
            setTimeout(() => res.resume(), wait);
          }
        });
        res.on('end', () => resolve({ size: n, sha1: hash.digest('hex'), ms: performance.now() - started }));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });
  }

  it('downloads 1 GiB through the gateway with flat gateway memory, every byte as sent', async () => {
    const { port, sample } = await startAll();
    const before = sample();
    let peak = before;
    const timer = setInterval(() => (peak = Math.max(peak, sample())), 50);
    const got = await download(port, GIB);
    clearInterval(timer);
    expect({ size: got.size, sha1: got.sha1 }).toEqual({ size: GIB, sha1: expectedSha1(GIB) });
    expect(peak - before).toBeLessThan(96 * 1024 * 1024);
  }, 120_000);

  it('downloads 256 MiB to a reader slow the whole way through (64 MiB/s) with flat gateway memory', async () => {
    // The app writes several times faster than this reader takes: without backpressure the gateway
    // would hold most of the 256 MiB, far over the bound.
    const total = 256 * MIB;
    const rate = 64 * MIB;
    const { port, sample } = await startAll();
    const before = sample();
    let peak = before;
    const timer = setInterval(() => (peak = Math.max(peak, sample())), 50);
    const got = await download(port, total, rate);
    clearInterval(timer);
    expect({ size: got.size, sha1: got.sha1 }).toEqual({ size: total, sha1: expectedSha1(total) });
    // Slow throughout: the whole took at least what the rate allows (bar the last MiB or two,
    // read after the last pause).
    expect(got.ms).toBeGreaterThanOrEqual(((total - 2 * MIB) / rate) * 1000);
    expect(peak - before).toBeLessThan(96 * 1024 * 1024);
  }, 120_000);
});
