/**
 * `ptth-proxy serve` configuration through the real CLI (dist/, built by `npm test`): a --config
 * JSON file, PTTH_* environment variables and flags, their precedence, the errors that stop it with
 * exit code 2, --help, and the start-up warning for a gateway reachable from other machines.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { envName, SERVE_OPTIONS } from '../../src/config.js';
import { headEnd, rawConnect, readUntil, request } from '../helpers/index.js';
import { spawnCli, type Spawned } from '../helpers/spawn.js';

const dir = mkdtempSync(join(tmpdir(), 'ptth-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const procs: Spawned[] = [];
const sockets: Socket[] = [];
afterEach(() => {
  for (const s of sockets.splice(0)) s.destroy();
  for (const p of procs.splice(0)) p.kill('SIGKILL');
});

let fileCount = 0;
function configFile(contents: unknown): string {
  const path = join(dir, `config-${++fileCount}.json`);
  writeFileSync(path, typeof contents === 'string' ? contents : JSON.stringify(contents));
  return path;
}

/** Runs the CLI with extra environment variables (the child copies the environment when spawned). */
function cli(args: string[], env: Record<string, string> = {}): Spawned {
  const saved = new Map(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    const p = spawnCli(args);
    procs.push(p);
    return p;
  } finally {
    for (const [k, v] of saved) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

/** `serve` on 127.0.0.1, port 0 unless the config says otherwise; resolves once it printed its start-up lines. */
async function serve(args: string[], env: Record<string, string> = {}): Promise<{ p: Spawned; port: number }> {
  const p = cli(['serve', ...args], env);
  // Generous: the CLI starts slowly when the whole suite loads both cores.
  const m = await p.waitFor(/listening on [^\s]+:(\d+)/, 15_000);
  await p.waitFor(/expose an app/, 15_000);
  return { p, port: Number(m[1]) };
}

/** A raw native claim from 127.0.0.1; resolves with its status. */
async function claimStatus(port: number, name: string): Promise<number> {
  const s = await rawConnect(port);
  s.on('error', () => {});
  sockets.push(s);
  s.write(
    `POST /?name=${name} HTTP/1.1\r\nHost: localhost:${port}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n`,
  );
  const head = (await readUntil(s, headEnd)).toString('latin1');
  return Number(head.split(' ')[1]);
}

describe('serve --config', () => {
  it('applies the file: the domain shows in the start-up lines and on the status page', async () => {
    const file = configFile({ domain: 'tunnel.example', port: 0, host: '127.0.0.1' });
    const { p, port } = await serve(['--config', file]);
    expect(p.output()).toContain(`apps served at http://NAME.tunnel.example:${port}/`);
    // The gateway host is now tunnel.example, and NAME.tunnel.example is a visitor's host.
    expect((await request(port, { host: `tunnel.example:${port}` })).status).toBe(200);
    expect((await request(port, { host: `nobody.tunnel.example:${port}` })).status).toBe(404);
  });

  it('applies rate limits from the file: a second claim from loopback gets 429', async () => {
    const file = configFile({ port: 0, host: '127.0.0.1', claimRate: '1/h', limitLoopback: true });
    const { port } = await serve(['--config', file]);
    expect(await claimStatus(port, 'first')).toBe(101);
    expect(await claimStatus(port, 'second')).toBe(429);
  });

  it('"claimRate": false in the file turns the limit off', async () => {
    const file = configFile({ port: 0, host: '127.0.0.1', claimRate: false, limitLoopback: true });
    const { port } = await serve(['--config', file]);
    for (const name of ['a', 'b', 'c']) expect(await claimStatus(port, name)).toBe(101);
  });

  it('PTTH_CONFIG names the file when --config is absent', async () => {
    const file = configFile({ domain: 'from-env-file.example', port: 0, host: '127.0.0.1' });
    const { p, port } = await serve([], { PTTH_CONFIG: file });
    expect(p.output()).toContain(`apps served at http://NAME.from-env-file.example:${port}/`);
  });
});

describe('precedence: flag > environment > file > default', () => {
  it('PTTH_DOMAIN overrides the file', async () => {
    const file = configFile({ domain: 'file.example', port: 0, host: '127.0.0.1' });
    const { p, port } = await serve(['--config', file], { PTTH_DOMAIN: 'env.example' });
    expect(p.output()).toContain(`apps served at http://NAME.env.example:${port}/`);
  });

  it('--domain overrides PTTH_DOMAIN and the file', async () => {
    const file = configFile({ domain: 'file.example', port: 0, host: '127.0.0.1' });
    const { p, port } = await serve(['--config', file, '--domain', 'flag.example'], { PTTH_DOMAIN: 'env.example' });
    expect(p.output()).toContain(`apps served at http://NAME.flag.example:${port}/`);
  });

  it('the environment overrides the file for rates, and a flag overrides both', async () => {
    const file = configFile({ port: 0, host: '127.0.0.1', claimRate: '100/s', limitLoopback: true });
    const limited = await serve(['--config', file], { PTTH_CLAIM_RATE: '1/h' });
    expect(await claimStatus(limited.port, 'a')).toBe(101);
    expect(await claimStatus(limited.port, 'b')).toBe(429);
    const unlimited = await serve(['--config', file, '--claim-rate', '0'], { PTTH_CLAIM_RATE: '1/h' });
    for (const name of ['a', 'b', 'c']) expect(await claimStatus(unlimited.port, name)).toBe(101);
  });

  it('a boolean from the environment: PTTH_LIMIT_LOOPBACK=true puts loopback under the limits', async () => {
    const { port } = await serve(['--port', '0', '--host', '127.0.0.1', '--claim-rate', '1/h'], {
      PTTH_LIMIT_LOOPBACK: 'true',
    });
    expect(await claimStatus(port, 'a')).toBe(101);
    expect(await claimStatus(port, 'b')).toBe(429);
  });

  it('without limitLoopback, loopback claims are not limited by the same rate', async () => {
    const { port } = await serve(['--port', '0', '--host', '127.0.0.1', '--claim-rate', '1/h']);
    for (const name of ['a', 'b', 'c']) expect(await claimStatus(port, name)).toBe(101);
  });
});

describe('configuration errors exit 2 and name what is at fault', () => {
  async function fails(args: string[], env: Record<string, string> = {}): Promise<string> {
    const p = cli(['serve', ...args], env);
    expect(await p.exited()).toBe(2);
    expect(p.output()).not.toContain('listening on');
    return p.output();
  }

  it('a wrong type in the config file names the file and the key', async () => {
    const file = configFile({ port: 0, claimRate: 'lots' });
    const out = await fails(['--config', file]);
    expect(out).toContain(`ptth-proxy serve: config file ${file}: claimRate: expected a rate like 60/m`);
  });

  it('an unknown key names the key', async () => {
    const file = configFile({ port: 0, claim_rate: '1/m' });
    const out = await fails(['--config', file]);
    expect(out).toContain(`config file ${file}: unknown option "claim_rate"`);
  });

  it('bad JSON names the file', async () => {
    const file = configFile('{ "port": 0, }');
    const out = await fails(['--config', file]);
    expect(out).toContain(`config file ${file}:`);
    expect(out).toMatch(/JSON/);
  });

  it('a file that is not an object', async () => {
    const file = configFile('[1, 2]');
    expect(await fails(['--config', file])).toContain('expected a JSON object of options');
  });

  it('a missing file', async () => {
    const file = join(dir, 'missing.json');
    expect(await fails(['--config', file])).toContain(`config file ${file}: ENOENT`);
  });

  it('a bad environment value names the variable', async () => {
    const out = await fails(['--port', '0', '--host', '127.0.0.1'], { PTTH_MAX_HEADERS: 'many' });
    expect(out).toContain('ptth-proxy serve: PTTH_MAX_HEADERS: expected a whole number >= 1, got "many"');
  });

  it('a bad flag value names the flag (commander refuses it before anything starts)', async () => {
    const p = cli(['serve', '--port', '0', '--claim-rate', 'fast']);
    expect(await p.exited()).not.toBe(0);
    expect(p.output()).toMatch(/--claim-rate <rate>.*fast.*expected a rate like 60\/m/s);
    expect(p.output()).not.toContain('listening on');
  });
});

describe('serve --help', () => {
  it('lists every option with its environment variable', async () => {
    const p = cli(['serve', '--help']);
    expect(await p.exited()).toBe(0);
    const help = p.output();
    // One block per option: from its flag line to the next one, wrapped lines joined.
    const blocks = help
      .split(/\n(?= {2}-)/)
      .map((b) => b.replace(/\s+/g, ' ').trim())
      .filter((b) => b.startsWith('-'));
    for (const spec of SERVE_OPTIONS) {
      const negated = spec.type === 'bool' && spec.default === true;
      const flag = negated ? spec.flag.replace(/^--/, '--no-') : spec.flag;
      const block = blocks.find((b) =>
        b
          .split(' ')
          .slice(0, 3)
          .some((w) => w.replace(/,$/, '') === flag),
      );
      expect(block, `${flag} in --help`).toBeDefined();
      expect(block, flag).toContain(`env ${envName(spec.key)}`);
      if (spec.default !== undefined && !negated && spec.type !== 'bool')
        expect(block, flag).toContain(`default: ${String(spec.default)}`);
    }
    expect(help).toContain('PTTH_<OPTION>');
  });
});

describe('the warning for a gateway without access keys reachable from other machines', () => {
  it('appears on stderr when bound to 0.0.0.0', async () => {
    const p = cli(['serve', '--port', '0', '--host', '0.0.0.0']);
    await p.waitFor(
      /WARNING: this gateway is reachable from other machines \(bound to 0\.0\.0\.0\) and has no access keys/,
      15_000,
    );
    expect(p.output()).toContain('--keys FILE');
  });

  it('does not appear on 0.0.0.0 when the keys file comes from the config file (keys are required)', async () => {
    const sha256 = createHash('sha256').update('ptth_test-key-for-config').digest('hex');
    const keys = configFile({ keys: [{ id: 'ops', sha256, names: ['*'] }] });
    const file = configFile({ port: 0, host: '0.0.0.0', keys });
    const { p, port } = await serve(['--config', file]);
    await p.waitFor(/access: +access keys required to claim/);
    // Claims without a key are refused: the file's keys are in force.
    expect(await claimStatus(port, 'nokey')).toBe(401);
    expect(p.output()).not.toContain('WARNING');
  });

  it('PTTH_KEYS_FILE names the keys file too', async () => {
    const sha256 = createHash('sha256').update('ptth_other-key').digest('hex');
    const keys = configFile({ keys: [{ id: 'ops', sha256, names: ['*'] }] });
    const { p, port } = await serve(['--port', '0', '--host', '127.0.0.1'], { PTTH_KEYS_FILE: keys });
    await p.waitFor(/access: +access keys required to claim/);
    expect(await claimStatus(port, 'nokey')).toBe(401);
  });

  it('does not appear when bound to 127.0.0.1', async () => {
    const { p, port } = await serve(['--port', '0', '--host', '127.0.0.1']);
    // A round trip through the gateway: anything it printed at start-up has arrived by now.
    expect((await request(port, { host: `localhost:${port}` })).status).toBe(200);
    expect(p.output()).not.toContain('WARNING');
  });
});
