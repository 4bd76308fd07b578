import * as http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { request, until } from '../helpers/index.js';
import { rssOf, spawnCli, type Spawned } from '../helpers/spawn.js';

/*
 * A stalled log reader (a stuck log shipper, a paused journal) must not grow the gateway: `serve`
 * runs with its stdout on a pipe this test stops reading, so every access-log line has to wait in
 * the logger's buffer, which is capped at --log-buffer bytes; lines past it are dropped, counted in
 * ptth_log_lines_dropped_total and reported in the log once the reader is back.
 */

const procs: Spawned[] = [];
const agents: http.Agent[] = [];
afterEach(() => {
  for (const p of procs.splice(0)) p.kill('SIGKILL');
  for (const a of agents.splice(0)) a.destroy();
});

const BUFFER = 64 * 1024;
// The path is logged twice (in `path` and in `msg`), so each request line is about 16.5 KiB: a few
// thousand requests are tens of MiB of log lines, far more than the buffer, cheap to produce.
const PATH = `/${'p'.repeat(8 * 1024)}`;

async function serve(format: 'json' | 'pretty' = 'json'): Promise<{ p: Spawned; port: number }> {
  // The environment variable rather than --log-buffer: same option, and an unknown variable is
  // ignored where an unknown flag would stop the gateway before it showed the growth.
  const args = ['serve', '--port', '0', '--host', '127.0.0.1', '--log-format', format];
  const p = spawnCli(args, { PTTH_LOG_BUFFER: String(BUFFER) });
  procs.push(p);
  const m = await p.waitFor(/listening on 127\.0\.0\.1:(\d+)/);
  // The last start-up line and the logger's `listening` line: nothing of the start-up is held up by the pause.
  const listening = format === 'json' ? '"event":"listening"' : 'INFO: listening on';
  await p.waitFor(new RegExp(`expose an app[\\s\\S]*${listening}|${listening}[\\s\\S]*expose an app`));
  return { p, port: Number(m[1]) };
}

/** `n` requests for an unregistered name (404s, logged like any other), `concurrency` at a time, keep-alive. */
async function drive(port: number, n: number, concurrency = 8): Promise<void> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  agents.push(agent);
  let next = 0;
  const statuses = new Map<number, number>();
  const worker = async (): Promise<void> => {
    while (next < n) {
      next++;
      const r = await request(port, { host: `nobody.localhost:${port}`, path: PATH, agent });
      statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  agent.destroy();
  // (a) the gateway keeps answering while its log lines go nowhere.
  expect(Object.fromEntries(statuses)).toEqual({ 404: n });
}

interface DropLine {
  level: number;
  event: string;
  dropped: number;
  msg: string;
}

/** The log-drop lines printed so far. */
function reports(p: Spawned): DropLine[] {
  return [...p.output().matchAll(/^\{[^\n]*"event":"log-drop"[^\n]*\}$/gm)].map((m) => JSON.parse(m[0]) as DropLine);
}

const total = (lines: DropLine[]): number => lines.reduce((sum, l) => sum + l.dropped, 0);

async function dropped(port: number): Promise<number> {
  const r = await request(port, { path: '/metrics' });
  expect(r.status).toBe(200);
  const m = r.body.match(/^ptth_log_lines_dropped_total (\d+)$/m);
  expect(m, 'ptth_log_lines_dropped_total on /metrics').not.toBeNull();
  return Number((m as RegExpMatchArray)[1]);
}

describe('serve with a stalled log reader', () => {
  it('keeps answering in bounded memory, counts dropped lines and says how many once the reader is back', async () => {
    const { p, port } = await serve();
    const stdout = p.child.stdout;
    if (!stdout) throw new Error('no stdout pipe');
    // From here nobody reads the pipe: once the kernel's and this stream's buffers are full, the
    // gateway's writes to stdout cannot complete.
    stdout.pause();

    // Fill the pipe and the logger's buffer: 200 lines are ~3.3 MiB, past ~0.5 MiB of buffers.
    await drive(port, 200);
    const before = rssOf(p.child.pid as number);
    // ~50 MiB of log lines more, none of which can be written.
    const more = 3_000;
    await drive(port, more);
    const after = rssOf(p.child.pid as number);
    const grown = after - before;
    // (d) Without the cap RSS grows by more than the lines' size (measured: 69 MiB, 76 -> 145). With
    // it what grows is the V8 heap's churn (measured: 11 MiB, 69 -> 80). The bound, 32 MiB, is wide on
    // purpose, so that GC timing on a busy 2-core machine does not make this flaky.
    const mib = (b: number): string => (b / 2 ** 20).toFixed(1);
    expect(grown, `RSS grew from ${mib(before)} to ${mib(after)} MiB`).toBeLessThan(32 * 2 ** 20);

    // (b) The second batch found the buffer full: its lines were dropped and counted. (Nearly all:
    // a paused stream stops reading only once its own buffer is full, so a few may have found room.)
    const count = await dropped(port);
    expect(count).toBeGreaterThanOrEqual(more * 0.9);

    // (c) The reader comes back: the buffer drains and a line says how many were dropped. Usually one
    // line; more when the paused stream read once more after the first drops and the buffer drained.
    stdout.resume();
    await until(() => total(reports(p)) >= count, 10_000, 'log-drop lines for the lines counted');
    for (const r of reports(p)) {
      const msg = `dropped ${r.dropped} log lines: stdout's reader fell behind`;
      expect(r).toMatchObject({ level: 40, event: 'log-drop', msg });
    }
    // Nothing was dropped after the last report (the reader is back): the lines account for every drop.
    expect(await dropped(port)).toBe(total(reports(p)));

    // Lines are written whole: each line of stdout is one JSON object (or a start-up line).
    for (const l of p.output().split('\n')) if (l.startsWith('{')) JSON.parse(l);
    // And logging goes on as before.
    await request(port, { host: `nobody.localhost:${port}`, path: '/after' });
    await p.waitFor(/"path":"\/after"/);
  });

  it('after dropping, still writes everything it holds when it exits', async () => {
    const { p, port } = await serve();
    const stdout = p.child.stdout;
    if (!stdout) throw new Error('no stdout pipe');
    stdout.pause();
    const n = 200;
    await drive(port, n);
    const count = await dropped(port);
    expect(count).toBeGreaterThan(0);
    stdout.resume();
    // Reported in full: the buffer has drained since the last drop.
    await until(() => total(reports(p)) >= count, 10_000, 'log-drop lines for the lines counted');
    // The shutdown lines are logged just before process.exit, so they are still in the buffer then:
    // pino's flush at exit has to write them (and nothing of the dropping must be in its way).
    p.kill('SIGTERM');
    expect(await p.exited()).toBe(0);
    if (!stdout.readableEnded) await new Promise((r) => stdout.once('end', r));
    const lines = p
      .output()
      .split('\n')
      .filter((l) => l.startsWith('{'));
    // Not necessarily the last line: at exit pino writes what is buffered while a write it started
    // earlier may still be under way in libuv's thread pool, and the two can land in either order.
    const closed = expect.objectContaining({ event: 'shutdown', msg: 'closed' });
    expect(lines.map((l) => JSON.parse(l) as unknown)).toContainEqual(closed);
    // Every request line was either dropped (all of them before the scrape) or written.
    const written = lines.filter((l) => l.includes(`"path":"${PATH}"`)).length;
    expect(written + count).toBe(n);
  });

  it('bounds the pretty output the same way', async () => {
    const { p, port } = await serve('pretty');
    const stdout = p.child.stdout;
    if (!stdout) throw new Error('no stdout pipe');
    stdout.pause();
    await drive(port, 200);
    const count = await dropped(port);
    expect(count).toBeGreaterThan(0);
    stdout.resume();
    const re = /WARN: dropped (\d+) log lines: stdout's reader fell behind/g;
    const reported = (): number => [...p.output().matchAll(re)].reduce((sum, m) => sum + Number(m[1]), 0);
    await until(() => reported() >= count, 10_000, 'pretty log-drop lines for the lines counted');
    expect(await dropped(port)).toBe(reported());
  });
});
