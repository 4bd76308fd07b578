/**
 * Scale row: many idle registrations, each with one live reversed HTTP/1.1 channel, on one gateway
 * process. Reports the time to register them all and the gateway's resident memory per channel.
 * Only 127.0.0.1; every socket is closed at the end.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as net from 'node:net';
import { fileURLToPath } from 'node:url';

import { NODE } from './flags.js';
const BIN = fileURLToPath(new URL('../../bin/ptth-proxy.js', import.meta.url));

export interface ScaleResult {
  channels: number;
  seconds: number;
  claimsPerSecond: number;
  rssBeforeMiB: number;
  rssAfterMiB: number;
  bytesPerChannel: number;
}

function rss(pid: number): number {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
  return m ? Number(m[1]) * 1024 : 0;
}

function startGateway(): Promise<{ child: ChildProcess; port: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(NODE, [BIN, 'serve', '--port', '0', '--host', '127.0.0.1', '--quiet', '--max-channels', '4'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout?.on('data', (c: Buffer) => {
      out += c.toString();
      const m = out.match(/listening on [^\n]*:(\d+)/);
      if (m) resolve({ child, port: Number(m[1]) });
    });
    child.once('exit', (code) => reject(new Error(`gateway exited with ${String(code)} before listening`)));
  });
}

/** One claim: resolves with the open socket once the 101 head has arrived. */
export function claim(port: number, name: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => {
      s.write(
        `POST /?name=${name}&token=t HTTP/1.1\r\nHost: localhost:${port}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n`,
      );
    });
    let got = '';
    const onData = (c: Buffer): void => {
      got += c.toString('latin1');
      if (!got.includes('\r\n\r\n')) return;
      s.removeListener('data', onData);
      if (got.startsWith('HTTP/1.1 101 ')) resolve(s);
      else reject(new Error(`claim ${name} refused: ${got.split('\r\n')[0] ?? ''}`));
    };
    s.on('data', onData);
    s.once('error', reject);
  });
}

export async function runScale(
  count = 10_000,
  inFlight = 200,
  log: (s: string) => void = () => {},
): Promise<ScaleResult> {
  const { child, port } = await startGateway();
  const pid = child.pid as number;
  const sockets: net.Socket[] = [];
  try {
    await new Promise((r) => setTimeout(r, 300));
    const before = rss(pid);
    const started = performance.now();
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < count) {
        const i = next++;
        sockets.push(await claim(port, `scale-${i}`));
        if (sockets.length % 2000 === 0) log(`  ${sockets.length} channels`);
      }
    };
    await Promise.all(Array.from({ length: inFlight }, worker));
    const seconds = (performance.now() - started) / 1000;
    // Let the gateway settle (timers, lazily allocated buffers) before reading its memory.
    await new Promise((r) => setTimeout(r, 1_000));
    const after = rss(pid);
    return {
      channels: sockets.length,
      seconds,
      claimsPerSecond: sockets.length / seconds,
      rssBeforeMiB: before / 2 ** 20,
      rssAfterMiB: after / 2 ** 20,
      bytesPerChannel: (after - before) / sockets.length,
    };
  } finally {
    for (const s of sockets) s.destroy();
    child.kill('SIGKILL');
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const n = Number(process.argv[2] ?? 10_000);
  runScale(n, 200, (s) => console.log(s)).then(
    (r) => console.log(JSON.stringify(r, null, 2)),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}
