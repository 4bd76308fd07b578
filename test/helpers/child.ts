import { fileURLToPath } from 'node:url';
import { spawnNode, type Spawned } from './spawn.js';

/** The repository root: children run TypeScript sources through tsx from here. */
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const CHILD_APP = fileURLToPath(new URL('./child-app.ts', import.meta.url));

/** Runs a TypeScript file in its own node process (`node --import tsx`), with spawnCli's handle. */
export function spawnTs(script: string, args: string[]): Spawned {
  return spawnNode(['--import', 'tsx', script, ...args], { cwd: ROOT, waitMs: 10_000 });
}
