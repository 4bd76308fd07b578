/**
 * How the benchmarks start `ptth-proxy serve`: as users run it (metrics and access log on, stdout
 * a pipe the benchmark drains, as journald would), with the rate limits and per-address caps
 * applied to loopback (`--limit-loopback`) at limits no benchmark request reaches, so that the
 * limiter's cost per request is part of what is measured.
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/**
 * The node binary that runs the product and its peers (gateway, apps, connect, backend, reference
 * proxies): BENCH_NODE=/path/to/node, default the one running the benchmark. Users run the LTS
 * lines (22, 24) while this machine's system node may be older: node:http2 in particular costs
 * differently across versions, so a run says which one it measured.
 */
export const NODE = process.env['BENCH_NODE'] || process.execPath;

/** `v24.11.0`, as NODE reports it. */
export function nodeVersion(): string {
  if (NODE === process.execPath) return process.version;
  try {
    return execFileSync(NODE, ['--version'], { encoding: 'utf8' }).trim();
  } catch (err) {
    process.stderr.write(`bench: BENCH_NODE=${NODE} cannot be run: ${(err as Error).message}\n`);
    process.exit(2);
  }
}

export const BIN = fileURLToPath(new URL('../../bin/ptth-proxy.js', import.meta.url));

export const LIMITS = [
  '--limit-loopback',
  ...['--request-rate', '1000000/s:1000000'],
  ...['--claim-rate', '100000/s:100000'],
  ...['--max-connections-per-address', '1000000'],
  ...['--max-names-per-address', '100000'],
  ...['--max-channels-per-address', '1000000'],
];

/** `serve` on 127.0.0.1, port 0, with LIMITS and any `extra` flags. */
export function serveArgs(...extra: string[]): string[] {
  return [BIN, 'serve', '--host', '127.0.0.1', '--port', '0', ...LIMITS, ...extra];
}
