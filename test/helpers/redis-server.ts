import { existsSync } from 'node:fs';
import * as net from 'node:net';

/*
 * What starting a throwaway redis-server takes, without vitest: shared by the tests' fixtures
 * (./redis.ts) and the cluster bench (test/bench/cluster.ts), which runs outside the test runner.
 */

export const REDIS_SERVER = process.env['PTTH_TEST_REDIS_SERVER'] ?? '/usr/bin/redis-server';
const SETPRIV = '/usr/bin/setpriv';

/**
 * The command and arguments of a redis-server on 127.0.0.1:`port` working in `dir`, with no
 * persistence (a restart comes back empty, as a lost Redis would), its log on stdout, `extra`
 * arguments last and `lead` first (a configuration file must come first: a Sentinel's). Where util-linux has setpriv it runs under `--pdeathsig KILL`, so the kernel kills
 * it when the process that spawned it dies, however it dies.
 */
export function redisCommand(
  port: number,
  dir: string,
  extra: readonly string[] = [],
  lead: readonly string[] = [],
): [string, string[]] {
  const args = [
    ...lead,
    ...['--port', String(port), '--bind', '127.0.0.1', '--dir', dir],
    ...['--save', '', '--appendonly', 'no', '--daemonize', 'no', '--logfile', ''],
    ...extra,
  ];
  return existsSync(SETPRIV) ? [SETPRIV, ['--pdeathsig', 'KILL', '--', REDIS_SERVER, ...args]] : [REDIS_SERVER, args];
}

/** A port that was free a moment ago; a server's start retries with another when it is taken meanwhile. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** Resolves once `PING` on 127.0.0.1:port gets `+PONG` (or NOAUTH, from a server with a password); rejects on a connection error or after `ms`. */
export function ping(port: number, ms = 2_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let got = '';
    const done = (e?: Error): void => {
      clearTimeout(timer);
      s.destroy();
      if (e) reject(e);
      else resolve();
    };
    const timer = setTimeout(() => done(new Error(`redis on port ${port}: no PONG within ${ms} ms`)), ms);
    s.on('connect', () => s.write('PING\r\n'));
    s.on('data', (c: Buffer) => {
      got += c.toString('latin1');
      // A server with --requirepass answers NOAUTH: it is up all the same.
      if (got.startsWith('+PONG\r\n') || got.startsWith('-NOAUTH ')) done();
      else if (got.includes('\r\n')) done(new Error(`redis on port ${port} answered PING with ${JSON.stringify(got)}`));
    });
    s.on('error', done);
    s.on('close', () => done(new Error(`redis on port ${port} closed the connection before PONG`)));
  });
}
