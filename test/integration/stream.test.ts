import * as http from 'node:http';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { listen, type Tunnel } from '../../src/client/node.js';
import { rssOf, spawnCli, type Spawned } from '../helpers/spawn.js';

/**
 * Large bodies stream through the gateway both ways with backpressure: the gateway runs in its own
 * process and its resident memory is sampled while 1 GiB goes up and 1 GiB comes down. Without
 * backpressure the gateway would hold a large part of the body; the bound here (96 MiB of growth)
 * is far below that and far above the ~10 MiB a streaming relay needs.
 */
const GIB = 1024 * 1024 * 1024;
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
    res.writeHead(200, { 'Content-Length': GIB });
    source(GIB).pipe(res);
  });
  tunnel = listen(app, { gateway: `http://127.0.0.1:${port}`, name: 'big', connections: 1 });
  await tunnel.ready();
  const pid = gateway.child.pid as number;
  return { port, sample: () => rssOf(pid) };
}

function expectedSha1(total: number): string {
  const hash = createHash('sha1');
  for (let sent = 0; sent < total; sent += CHUNK.length) hash.update(CHUNK.subarray(0, Math.min(CHUNK.length, total - sent)));
  return hash.digest('hex');
}

describe('streaming bodies', () => {
  it('uploads 1 GiB through the gateway with flat gateway memory', async () => {
    const { port, sample } = await startAll();
    const before = sample();
    let peak = before;
    const timer = setInterval(() => (peak = Math.max(peak, sample())), 50);
    const answer = await new Promise<string>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/upload', headers: { host: `big.localhost:${port}`, 'content-length': GIB } });
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

  it('downloads 1 GiB through the gateway with flat gateway memory, even from a slow reader', async () => {
    const { port, sample } = await startAll();
    const before = sample();
    let peak = before;
    const timer = setInterval(() => (peak = Math.max(peak, sample())), 50);
    const size = await new Promise<number>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port, path: '/download', headers: { host: `big.localhost:${port}` } });
      req.on('response', (res) => {
        let n = 0;
        let paused = false;
        res.on('data', (c: Buffer) => {
          n += c.length;
          // Read slowly for the first 64 MiB: the app must be held back, not the gateway filled.
          if (n < 64 * 1024 * 1024 && !paused) {
            paused = true;
            res.pause();
            setTimeout(() => {
              paused = false;
              res.resume();
            }, 1);
          }
        });
        res.on('end', () => resolve(n));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });
    clearInterval(timer);
    expect(size).toBe(GIB);
    expect(peak - before).toBeLessThan(96 * 1024 * 1024);
  }, 120_000);
});
