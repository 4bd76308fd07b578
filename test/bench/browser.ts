/**
 * Benchmark of the browser-facing channels against the native one, in one run so the ratios are
 * fair (`npm run bench:browser`):
 *
 *   native     autocannon -> gateway -> app served through listen() (test/bench/browser.mjs native),
 *              with its defaults (the ratios' baseline) and with reversed HTTP/1.1 only
 *   comet      autocannon -> gateway -> a Node ReverseHttp Comet app (test/bench/browser.mjs comet), one
 *              request per poll, and pipelined (comet-pipe: Accept: application/http, PROTOCOL.md 5.7)
 *   websocket  autocannon -> gateway -> a Node WebSocket-channel app (test/bench/browser.mjs ws)
 *   chromium   autocannon -> gateway -> /ptth.js in headless Chromium (WebSocket channel, then Comet
 *              pipelined and with `pipeline: false`)
 *
 * Rows run at c=50 and c=1; the native baseline and the Comet rows also at c=500.
 *
 * The gateway and the Node apps run in their own node processes (compiled dist/); autocannon and
 * playwright run here. Knobs: BENCH_DURATION=<seconds> (default 5; `--quick` makes it 1),
 * BENCH_POLLERS (Comet pollers of the Node app, default 50), BENCH_WS_CHANNELS (default 1).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { EventEmitter } from 'node:events';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Browser } from 'playwright-core';
import { launchChromium } from '../helpers/chromium.js';

interface CannonResult {
  errors: number;
  timeouts: number;
  non2xx: number;
  mismatches: number;
}
type Cannon = (
  opts: {
    url: string;
    connections: number;
    pipelining: number;
    duration: number;
    headers: Record<string, string>;
    expectBody: string;
  },
  cb: (err: Error | null, result: CannonResult) => void,
) => EventEmitter;
const autocannon = createRequire(import.meta.url)('autocannon') as Cannon;

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const QUICK = process.argv.includes('--quick');
const DURATION = Number(process.env['BENCH_DURATION'] ?? (QUICK ? 1 : 5));
const POLLERS = Number(process.env['BENCH_POLLERS'] ?? 50);
const WS_CHANNELS = Number(process.env['BENCH_WS_CHANNELS'] ?? 1);
const NATIVE_CHANNELS = 50;
const BODY = 'hello world';
const log = (line: string): void => void process.stderr.write(`${line}\n`);
const out = (line: string): void => void process.stdout.write(`${line}\n`);

const children: ChildProcess[] = [];
function start(label: string, args: string[], ready: RegExp): Promise<RegExpMatchArray> {
  const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  const err: string[] = [];
  createInterface({ input: child.stderr! }).on('line', (l) => err.push(l));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${label} was not ready in 15 s: ${err.join('\n')}`)), 15_000);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const m = line.match(ready);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    });
    child.once('exit', (code) => reject(new Error(`${label} exited (${String(code)}): ${err.join('\n')}`)));
  });
}

interface Row {
  label: string;
  concurrency: number;
  rps: number;
  p50: number;
  p99: number;
  problems: number;
}

function percentile(sorted: Float64Array, p: number): number {
  return sorted.length === 0
    ? NaN
    : (sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] as number);
}

function fire(
  port: number,
  host: string,
  concurrency: number,
  seconds: number,
): Promise<{ result: CannonResult; latencies: Float64Array; wallS: number }> {
  return new Promise((resolve, reject) => {
    const latencies: number[] = [];
    const t0 = performance.now();
    const instance = autocannon(
      {
        url: `http://127.0.0.1:${port}/`,
        connections: concurrency,
        pipelining: 1,
        duration: seconds,
        headers: { host },
        expectBody: BODY,
      },
      (err, result) =>
        err
          ? reject(err)
          : resolve({ result, latencies: Float64Array.from(latencies).sort(), wallS: (performance.now() - t0) / 1000 }),
    );
    instance.on('response', (_c: unknown, status: number, _b: number, ms: number) => {
      if (status >= 200 && status < 300) latencies.push(ms);
    });
  });
}

async function measure(label: string, port: number, host: string, concurrency: number): Promise<Row> {
  await fire(port, host, concurrency, 1);
  const { result, latencies, wallS } = await fire(port, host, concurrency, DURATION);
  const row = {
    label,
    concurrency,
    rps: latencies.length / wallS,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    problems: result.errors + result.timeouts + result.non2xx + result.mismatches,
  };
  log(
    `bench: ${label} c=${concurrency}: ${row.rps.toFixed(0)} req/s, p50 ${row.p50.toFixed(2)} ms, p99 ${row.p99.toFixed(2)} ms, problems ${row.problems}`,
  );
  return row;
}

async function main(): Promise<number> {
  const gw = await start(
    'gateway',
    ['bin/ptth-proxy.js', 'serve', '--host', '127.0.0.1', '--port', '0', '--quiet'],
    /listening on 127\.0\.0\.1:(\d+)/,
  );
  const port = Number(gw[1]);
  const gateway = `http://127.0.0.1:${port}`;
  await Promise.all([
    start(
      'native app',
      ['test/bench/browser.mjs', 'native', gateway, 'bench-native', String(NATIVE_CHANNELS)],
      /^READY /,
    ),
    start(
      'native http1 app',
      ['test/bench/browser.mjs', 'native', gateway, 'bench-native-h1', String(NATIVE_CHANNELS), 'h1'],
      /^READY /,
    ),
    start('comet app', ['test/bench/browser.mjs', 'comet', gateway, 'bench-comet', String(POLLERS)], /^READY /),
    start(
      'pipelined comet app',
      ['test/bench/browser.mjs', 'comet-pipe', gateway, 'bench-comet-pipe', String(POLLERS)],
      /^READY /,
    ),
    start('websocket app', ['test/bench/browser.mjs', 'ws', gateway, 'bench-ws', String(WS_CHANNELS)], /^READY /),
  ]);
  let browser: Browser | undefined;
  try {
    browser = await launchChromium();
    const tabs = [
      ['bench-chromium-ws', 'websocket', true],
      ['bench-chromium-comet', 'comet', false],
      ['bench-chromium-comet-pipe', 'comet', true],
    ] as const;
    for (const [name, transport, pipeline] of tabs) {
      // A context each: Chromium allows 6 connections per host in one network context, and two
      // Comet tabs' 8 waiting polls would leave their reply POSTs none.
      const page = await (await browser.newContext()).newPage();
      await page.goto(`${gateway}/ptth.js`);
      await page.evaluate(
        async ([g, n, t, p, body]) => {
          const lib = (await import(`${g}/ptth.js`)) as {
            serve: (o: object, h: () => Response) => { url: Promise<string> };
          };
          await lib.serve(
            { gateway: g, name: n, transport: t, pollers: 4, pipeline: p },
            () => new Response(body, { headers: { 'content-type': 'text/plain' } }),
          ).url;
        },
        [gateway, name, transport, pipeline, BODY] as const,
      );
    }
    const at = (name: string): [number, string] => [port, `${name}.localhost:${port}`];
    const targets: [string, string][] = [
      ['native (listen())', 'bench-native'],
      ['native http1 (listen())', 'bench-native-h1'],
      ['comet (Node)', 'bench-comet'],
      ['comet pipelined (Node)', 'bench-comet-pipe'],
      ['websocket (Node)', 'bench-ws'],
      ['chromium websocket', 'bench-chromium-ws'],
      ['chromium comet', 'bench-chromium-comet'],
      ['chromium comet pipelined', 'bench-chromium-comet-pipe'],
    ];
    // At 500 visitors at once: the baseline and the Comet rows, with and without pipelining. (Not
    // native http1: 500 visitors on its 50 connections overflow the name's --queue-limit, 503s.)
    const at500 = new Set([
      'native (listen())',
      'comet (Node)',
      'comet pipelined (Node)',
      'chromium comet',
      'chromium comet pipelined',
    ]);
    const rows: Row[] = [];
    for (const c of [50, 1, 500])
      for (const [label, name] of targets)
        if (c !== 500 || at500.has(label)) rows.push(await measure(label, ...at(name), c));
    report(rows);
    return rows.some((r) => r.problems > 0) ? 1 : 0;
  } finally {
    await browser?.close();
  }
}

function report(rows: Row[]): void {
  out('');
  out(
    `ptth-proxy browser-channel benchmark: node ${process.version}, ${availableParallelism()} cores, ${DURATION} s per row after a 1 s warm-up, ` +
      `GET / -> ${BODY.length}-byte body; native: listen() defaults (reversed HTTP/2 when offered), native http1: ${NATIVE_CHANNELS} reversed HTTP/1.1 connections; Node Comet app: ${POLLERS} pollers; ` +
      `Node WebSocket app: ${WS_CHANNELS} channel(s); Chromium: /ptth.js (Comet with 4 pollers); pipelined: Accept: application/http (up to 32 requests per poll)`,
  );
  out('');
  out(
    '| row | concurrency | req/s | p50 ms | p99 ms | req/s vs native | p50 vs native | req/s vs native http1 | problems |',
  );
  out('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  const ratio = (a: number, b: number | undefined): string => (b ? `${(a / b).toFixed(2)}x` : 'n/a');
  for (const r of rows) {
    const n = rows.find((x) => x.label === 'native (listen())' && x.concurrency === r.concurrency);
    const h1 = rows.find((x) => x.label === 'native http1 (listen())' && x.concurrency === r.concurrency);
    out(
      `| ${r.label} | ${r.concurrency} | ${r.rps.toFixed(0)} | ${r.p50.toFixed(2)} | ${r.p99.toFixed(2)} | ${ratio(r.rps, n?.rps)} | ` +
        `${ratio(r.p50, n?.p50)} | ${ratio(r.rps, h1?.rps)} | ${r.problems} |`,
    );
  }
}

main()
  .then(
    (code) => code,
    (err: unknown) => {
      log(`bench: ${(err as Error).message}`);
      return 1;
    },
  )
  .then((code) => {
    for (const c of children) c.kill('SIGTERM');
    process.exit(code);
  });
