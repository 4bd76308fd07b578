import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, onTestFinished } from 'vitest';
import { freePort, ping, REDIS_SERVER, redisCommand } from './redis-server.js';

/*
 * A real redis-server for the cluster tests (Debian's package; .ci/run installs it when missing):
 * one per test or per file, on a free port of 127.0.0.1, in its own temp directory, without
 * persistence, so a restart comes back empty as a lost Redis would.
 *
 * Nothing may outlive the test run, even when a test fails or the test process dies:
 * - each server runs under `setpriv --pdeathsig KILL` where util-linux has it, so the kernel kills it
 *   when the process that spawned it dies, however it dies (a vitest worker killed on timeout, too);
 * - the test process kills what is still running at its exit;
 * - the fixtures stop their server when the test (or the file) finishes, whether it passed or not.
 */

export { ping, REDIS_SERVER } from './redis-server.js';

export interface RedisServer {
  /** `redis://127.0.0.1:PORT` */
  readonly url: string;
  readonly port: number;
  /** Its working directory (empty: nothing is persisted); removed by stop(). */
  readonly dir: string;
  /** The running server's process id; undefined while it is down (after kill() or stop()). */
  readonly pid: number | undefined;
  /** SIGTERM, then waits for the exit (SIGKILL if it takes over 5 s); removes the temp directory. */
  stop(): Promise<void>;
  /** SIGKILL (a crash), then waits for the exit; restart() brings it back. */
  kill(): Promise<void>;
  /** Starts it again on the same port, empty (killing the running one first, if any); resolves once it answers PING. */
  restart(): Promise<void>;
}

export interface RedisStartOptions {
  /** How long the server has to answer PING after its start (ms). */
  readyMs?: number;
  /** More redis-server arguments, e.g. `['--requirepass', 'secret']`. */
  args?: readonly string[];
  /**
   * Run a Sentinel instead, watching the master group `master` at 127.0.0.1:`port` (quorum 1), for
   * tests of redis+sentinel:// URLs. Its url is the Sentinel's.
   */
  sentinel?: { readonly master: string; readonly port: number };
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

/** Kills every server still running when the test process exits (synchronous, as 'exit' handlers must be). */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of live) child.kill('SIGKILL');
  });
}

/** Resolves when `child` has exited (at once if it already has). */
function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

/** Why a server ended before it was ready, and whether another try (with another port) may help. */
class StartError extends Error {
  constructor(
    message: string,
    readonly portTaken: boolean,
  ) {
    super(message);
  }
}

/** One redis-server process in `dir` on `port`; resolves once it answers PING, else kills it and rejects. */
async function spawnServer(port: number, dir: string, options: RedisStartOptions): Promise<ChildProcess> {
  // Sentinel mode reads (and rewrites) a configuration file, which comes first.
  const conf = join(dir, 'sentinel.conf');
  if (options.sentinel) {
    writeFileSync(conf, `sentinel monitor ${options.sentinel.master} 127.0.0.1 ${options.sentinel.port} 1\n`);
  }
  const [cmd, argv] = redisCommand(port, dir, options.args, options.sentinel ? [conf, '--sentinel'] : []);
  const child = spawn(cmd, argv, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  child.once('exit', () => live.delete(child));
  let log = '';
  const keep = (c: Buffer): void => {
    // The tail is enough to say why it failed; drained in full so that the pipe never fills.
    log = (log + c.toString('utf8')).slice(-8_192);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const ms = options.readyMs ?? 10_000;
  try {
    await new Promise<void>((resolve, reject) => {
      const fail = (why: string): void => {
        clearTimeout(timer);
        const taken = /already in use|Could not create server TCP listening socket/i.test(log);
        reject(new StartError(`${REDIS_SERVER} on port ${port} ${why}; its log:\n${log}`, taken));
      };
      const timer = setTimeout(() => fail(`was not ready within ${ms} ms`), ms);
      const onError = (e: Error): void => fail(`could not start: ${e.message}`);
      const onExit = (code: number | null, signal: string | null): void =>
        fail(`exited (${code ?? signal}) before it was ready`);
      child.once('error', onError);
      child.once('exit', onExit);
      const ready = (): void => {
        // A Sentinel says neither: it is up once it monitors its master.
        if (!/Ready to accept connections|\+monitor master/.test(log)) return;
        child.stdout?.removeListener('data', ready);
        ping(port).then(
          () => {
            clearTimeout(timer);
            child.removeListener('error', onError);
            child.removeListener('exit', onExit);
            // A signal that cannot be delivered is an 'error' event; the exit is what callers wait for.
            child.on('error', () => {});
            resolve();
          },
          (e: unknown) => fail(`did not answer PING: ${String(e)}`),
        );
      };
      child.stdout?.on('data', ready);
    });
  } catch (e) {
    child.kill('SIGKILL');
    await exited(child);
    throw e;
  }
  return child;
}

/**
 * Starts a redis-server on a free port of 127.0.0.1 and resolves once it answers PING. Call its
 * stop() when done (the fixtures below do): it removes the temp directory too.
 */
export async function startRedis(options: RedisStartOptions = {}): Promise<RedisServer> {
  installExitHook();
  const dir = mkdtempSync(join(tmpdir(), 'ptth-redis-'));
  let port = 0;
  let child: ChildProcess | undefined;
  try {
    // A port found free may be taken by another process before the server binds it: try another.
    for (let attempt = 1; child === undefined; attempt++) {
      port = await freePort();
      try {
        child = await spawnServer(port, dir, options);
      } catch (e) {
        if (!(e instanceof StartError && e.portTaken && attempt < 5)) throw e;
      }
    }
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  return handle(port, dir, child, options);
}

function handle(port: number, dir: string, first: ChildProcess, options: RedisStartOptions): RedisServer {
  let child: ChildProcess | undefined = first;
  const end = async (signal: NodeJS.Signals): Promise<void> => {
    const c = child;
    child = undefined;
    if (!c) return;
    c.kill(signal);
    const killer = setTimeout(() => c.kill('SIGKILL'), 5_000);
    await exited(c);
    clearTimeout(killer);
  };
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    dir,
    get pid() {
      return child?.pid;
    },
    async stop() {
      await end('SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
    kill: () => end('SIGKILL'),
    async restart() {
      await end('SIGKILL');
      // Empty: a fresh directory, and nothing was persisted. The port may be held for a moment by
      // whatever grabbed it while the server was down, so a few tries.
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true });
      for (let attempt = 1; ; attempt++) {
        try {
          child = await spawnServer(port, dir, options);
          return;
        } catch (e) {
          if (!(e instanceof StartError && e.portTaken && attempt < 5)) throw e;
          await new Promise((r) => setTimeout(r, 100 * attempt));
        }
      }
    },
  };
}

/** A redis-server for the current test, stopped when it finishes (pass or fail). Call from inside a test. */
export async function useRedis(options: RedisStartOptions = {}): Promise<RedisServer> {
  const server = await startRedis(options);
  onTestFinished(() => server.stop());
  return server;
}

/**
 * One redis-server for every test of a file (a server per test costs a start each): started in
 * beforeAll, stopped in afterAll. Call at the top of the file or of a describe block; the returned
 * function gives the server inside tests. Tests sharing it keep apart with their own key prefixes,
 * or call `restart()` for an empty one.
 */
export function useRedisForFile(options: RedisStartOptions = {}): () => RedisServer {
  let server: RedisServer | undefined;
  beforeAll(async () => {
    server = await startRedis(options);
  });
  afterAll(async () => {
    await server?.stop();
    server = undefined;
  });
  return () => {
    if (!server) throw new Error('useRedisForFile(): the server is available inside tests only (after beforeAll)');
    return server;
  };
}
