/**
 * How the benchmarks start `ptth-proxy serve`: as users run it (metrics and access log on, stdout
 * a pipe the benchmark drains, as journald would), with the rate limits and per-address caps
 * applied to loopback (`--limit-loopback`) at limits no benchmark request reaches, so that the
 * limiter's cost per request is part of what is measured.
 */
import { fileURLToPath } from 'node:url';

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
