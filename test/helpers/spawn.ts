import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const BIN = fileURLToPath(new URL('../../bin/ptth-proxy.js', import.meta.url));

export interface Spawned {
  child: ChildProcess;
  /** Everything printed so far (stdout and stderr). */
  output(): string;
  /** Resolves when the output matches, rejects after `ms` or if the process exits first. */
  waitFor(re: RegExp, ms?: number): Promise<RegExpMatchArray>;
  /** Resolves with the exit code (or signal name). */
  exited(): Promise<number | string>;
  kill(signal?: NodeJS.Signals): void;
}

/** Runs the built CLI (`npm test` builds dist/ first). */
export function spawnCli(args: string[], env?: NodeJS.ProcessEnv): Spawned {
  return spawnNode([BIN, ...args], { ...(env ? { env } : {}) });
}

/**
 * `node ...args` in a child process with a handle tests wait on: output so far (stdout and
 * stderr), waitFor(regexp), exited(), kill(signal). `waitMs` is waitFor's default deadline.
 */
export function spawnNode(
  args: string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string; waitMs?: number; ipc?: boolean } = {},
): Spawned {
  const child = spawn(process.execPath, args, {
    stdio: options.ipc ? ['ignore', 'pipe', 'pipe', 'ipc'] : ['ignore', 'pipe', 'pipe'],
    ...(options.env ? { env: { ...process.env, ...options.env } } : {}),
    ...(options.cwd ? { cwd: options.cwd } : {}),
  });
  const waitMs = options.waitMs ?? 5_000;
  let out = '';
  const listeners = new Set<() => void>();
  const onData = (c: Buffer): void => {
    out += c.toString('utf8');
    for (const l of listeners) l();
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  let exit: Promise<number | string> | undefined;
  // 'close', not 'exit': the last lines a child printed may still be in its pipes at 'exit', and
  // a test that reads the output once the child exited must see all of it.
  const exited = (): Promise<number | string> =>
    (exit ??= new Promise((resolve) => {
      child.once('close', (code, signal) => resolve(code ?? signal ?? -1));
    }));
  exited();
  return {
    child,
    output: () => out,
    exited,
    kill: (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
    waitFor: (re, ms = waitMs) =>
      new Promise((resolve, reject) => {
        const check = (): void => {
          const m = out.match(re);
          if (m) {
            cleanup();
            resolve(m);
          }
        };
        const onExit = (): void => {
          cleanup();
          reject(new Error(`process exited before printing ${re}; output:\n${out}`));
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`timed out waiting for ${re}; output:\n${out}`));
        }, ms);
        const cleanup = (): void => {
          clearTimeout(timer);
          listeners.delete(check);
          child.removeListener('exit', onExit);
        };
        listeners.add(check);
        child.once('exit', onExit);
        check();
      }),
  };
}

/** The CLI with the bench's memory probe preloaded (test/bench/soak-probe.mjs): see `memoryOf`. */
export function spawnCliProbed(args: string[]): Spawned {
  const probe = fileURLToPath(new URL('../bench/soak-probe.mjs', import.meta.url));
  return spawnNode(['--expose-gc', '--import', probe, BIN, ...args], { ipc: true });
}

let probes = 0;
/** A probed child's process.memoryUsage() right after a full garbage collection. */
export function memoryOf(child: Spawned['child']): Promise<NodeJS.MemoryUsage> {
  const id = ++probes;
  return new Promise((resolve, reject) => {
    const onMessage = (m: { t?: string; id?: number; usage?: NodeJS.MemoryUsage }): void => {
      if (m.t !== 'memory' || m.id !== id || !m.usage) return;
      child.removeListener('message', onMessage);
      resolve(m.usage);
    };
    child.on('message', onMessage);
    if (!child.send({ t: 'memory', id, gc: true })) reject(new Error('the child has no IPC channel'));
  });
}

/** Resident set size of a process in bytes (Linux /proc). */
export function rssOf(pid: number): number {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
  return m ? Number(m[1]) * 1024 : 0;
}
