import { execFile } from 'node:child_process';
import { accessSync, constants, existsSync, mkdtempSync, rmSync } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { request, startGateway, type TestGateway } from '../helpers/index.js';
import { spawnNode, type Spawned } from '../helpers/spawn.js';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/*
 * What a user on another machine gets: the package as `npm pack` makes it, installed into an empty
 * prefix with only its runtime dependencies, running `connect` against a gateway. `npm test` has built
 * dist/ already, so the pack skips the `prepare` script (a second build would rewrite dist/ under the
 * other test files, which run the CLI from it); the installed copy must hold everything it needs.
 */
describe('the packed package', () => {
  const dirs: string[] = [];
  const procs: Spawned[] = [];
  let gw: TestGateway | undefined;
  let local: http.Server | undefined;
  afterAll(async () => {
    for (const p of procs) p.kill('SIGKILL');
    local?.close();
    await gw?.close();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('installs from its tarball and its `connect` serves a visitor end to end', async () => {
    expect(existsSync(join(ROOT, 'dist', 'cli.js')), 'dist/ is built (npm test builds it)').toBe(true);
    const tmp = mkdtempSync(join(tmpdir(), 'ptth-pkg-'));
    dirs.push(tmp);
    const env = { ...process.env, npm_config_update_notifier: 'false' };
    const npm = async (args: string[], cwd: string): Promise<string> =>
      (await run('npm', args, { cwd, env, maxBuffer: 16 << 20 })).stdout;

    const packed = JSON.parse(await npm(['pack', '--json', '--ignore-scripts', '--pack-destination', tmp], ROOT)) as {
      filename: string;
      files: { path: string }[];
    }[];
    const files = packed[0]?.files.map((f) => f.path) ?? [];
    for (const f of ['bin/ptth-proxy.js', 'dist/cli.js', 'dist/index.js', 'dist/browser/ptth.js', 'README.md']) {
      expect(files).toContain(f);
    }
    expect(files.filter((f) => f.startsWith('src/') || f.startsWith('test/'))).toEqual([]);

    const prefix = join(tmp, 'prefix');
    const tarball = join(tmp, packed[0]?.filename ?? '');
    // --prefer-offline: the dependencies come from npm's cache when it has them (this checkout's install filled it).
    const quiet = ['--no-audit', '--no-fund'];
    await npm(['install', '--prefix', prefix, tarball, '--omit=dev', '--prefer-offline', ...quiet], tmp);
    const bin = join(prefix, 'node_modules', '.bin', 'ptth-proxy');
    accessSync(bin, constants.X_OK);

    gw = await startGateway();
    local = http.createServer((req, res) => res.end(`packed connect saw ${req.method} ${req.url}`));
    await new Promise<void>((r) => local?.listen(0, '127.0.0.1', r));
    const localPort = (local.address() as AddressInfo).port;
    // Run from the prefix, with the installed files only: nothing resolves back into this checkout.
    const c = spawnNode([bin, 'connect', String(localPort), '--gateway', gw.origin, '--name', 'packed'], {
      cwd: prefix,
      waitMs: 15_000,
    });
    procs.push(c);
    await c.waitFor(/Forwarding http:\/\/packed\.localhost:\d+\/ -> http:\/\/localhost:\d+/);
    const r = await request(gw.port, { host: gw.host('packed'), path: '/hello?x=1' });
    expect(r.status).toBe(200);
    expect(r.body).toBe('packed connect saw GET /hello?x=1');

    // The installed gateway finds its browser library (dist/browser/ptth.js) in the installed layout.
    const s = spawnNode([bin, 'serve', '--port', '0', '--host', '127.0.0.1'], { cwd: prefix, waitMs: 15_000 });
    procs.push(s);
    const port = Number((await s.waitFor(/listening on 127\.0\.0\.1:(\d+)/))[1]);
    const lib = await request(port, { host: `localhost:${port}`, path: '/ptth.js' });
    expect(lib.status).toBe(200);
    expect(lib.body).toContain('export');
  }, 180_000);
});
