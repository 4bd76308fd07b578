import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Spawned } from './spawn.js';

/** The repository root: children run TypeScript sources through tsx from here. */
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const CHILD_APP = fileURLToPath(new URL('./child-app.ts', import.meta.url));

/**
 * Runs a TypeScript file in its own node process (`node --import tsx`), with the same handle as
 * spawnCli in spawn.ts: output so far, waitFor(regexp), exited(), kill(signal).
 */
export function spawnTs(script: string, args: string[]): Spawned {
  const child = spawn(process.execPath, ['--import', 'tsx', script, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const listeners = new Set<() => void>();
  const onData = (c: Buffer): void => {
    out += c.toString('utf8');
    for (const l of listeners) l();
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  let exit: Promise<number | string> | undefined;
  const exited = (): Promise<number | string> =>
    (exit ??= new Promise((resolve) => {
      if (child.exitCode !== null) resolve(child.exitCode);
      else if (child.signalCode !== null) resolve(child.signalCode);
      else child.once('exit', (code, signal) => resolve(code ?? signal ?? -1));
    }));
  exited();
  return {
    child,
    output: () => out,
    exited,
    kill: (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
    waitFor: (re, ms = 10_000) =>
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
