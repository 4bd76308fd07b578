/**
 * The `serve` options table and its resolution: command line > environment > config file > default,
 * with the environment and the file injected (no process.env, no disk), and every error naming the
 * variable, key or file at fault.
 */
import { describe, expect, it } from 'vitest';
import {
  envName,
  parseValue,
  resolveServeConfig,
  SERVE_OPTIONS,
  type ServeConfig,
  type ServeOptionSpec,
} from '../../src/config.js';
import { parseRate } from '../../src/gateway/ratelimit.js';

const spec = (key: string): ServeOptionSpec => {
  const s = SERVE_OPTIONS.find((o) => o.key === key);
  if (!s) throw new Error(`no option ${key}`);
  return s;
};

/** A file system of one or more JSON files, by path. */
const files =
  (map: Record<string, string>) =>
  (path: string): string => {
    const text = map[path];
    if (text === undefined)
      throw Object.assign(new Error(`ENOENT: no such file or directory, open '${path}'`), { code: 'ENOENT' });
    return text;
  };

/** Command-line values as commander hands them over: every given one with source 'cli'. */
function cli(values: ServeConfig = {}): [ServeConfig, Record<string, string | undefined>] {
  const sources: Record<string, string | undefined> = {};
  for (const k of Object.keys(values)) sources[k] = 'cli';
  return [values, sources];
}

describe('SERVE_OPTIONS', () => {
  it('has one row per key and per flag, each flag the kebab-case of its key', () => {
    const keys = SERVE_OPTIONS.map((s) => s.key);
    expect(new Set(keys).size).toBe(keys.length);
    const flags = SERVE_OPTIONS.map((s) => s.flag);
    expect(new Set(flags).size).toBe(flags.length);
    const shorts = SERVE_OPTIONS.flatMap((s) => (s.short ? [s.short] : []));
    expect(new Set(shorts).size).toBe(shorts.length);
    for (const s of SERVE_OPTIONS) expect(s.flag).toBe(`--${s.key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`);
  });

  it('every environment variable is distinct and PTTH_-prefixed', () => {
    const names = SERVE_OPTIONS.map((s) => envName(s.key));
    expect(new Set(names).size).toBe(names.length);
    for (const n of names) expect(n).toMatch(/^PTTH_[A-Z0-9_]+$/);
  });

  it('every default is a value its own parser accepts unchanged', () => {
    for (const s of SERVE_OPTIONS) {
      if (s.default === undefined) continue;
      expect(parseValue(s, s.default), s.key).toEqual(s.default);
    }
  });

  it('the rate defaults are the documented ones and parse', () => {
    expect(spec('claimRate').default).toBe('60/m');
    expect(spec('requestRate').default).toBe('100/s:400');
    expect(spec('limitLoopback').default).toBe(false);
    expect(spec('maxHeaders').default).toBe(100);
    expect(parseRate('100/s:400')).toEqual({ rate: 100, burst: 400 });
  });
});

describe('envName', () => {
  it.each([
    ['port', 'PTTH_PORT'],
    ['claimRate', 'PTTH_CLAIM_RATE'],
    ['requestRate', 'PTTH_REQUEST_RATE'],
    ['limitLoopback', 'PTTH_LIMIT_LOOPBACK'],
    ['tlsCert', 'PTTH_TLS_CERT'],
    ['wsMaxStreams', 'PTTH_WS_MAX_STREAMS'],
    ['http2', 'PTTH_HTTP2'],
    ['config', 'PTTH_CONFIG'],
    // The keys file has its own name: PTTH_KEYS holds inline JSON.
    ['keys', 'PTTH_KEYS_FILE'],
    ['notAnOption', 'PTTH_NOT_AN_OPTION'],
  ])('%s -> %s', (key, name) => {
    expect(envName(key)).toBe(name);
  });
});

describe('parseValue', () => {
  it('int: digits (as text or a JSON number) within the bounds', () => {
    expect(parseValue(spec('queueLimit'), '0')).toBe(0);
    expect(parseValue(spec('queueLimit'), ' 42 ')).toBe(42);
    expect(parseValue(spec('queueLimit'), 42)).toBe(42);
    expect(parseValue(spec('port'), '65535')).toBe(65_535);
    expect(parseValue(spec('maxChannels'), '1')).toBe(1);
  });

  it.each([
    ['queueLimit', '-1', />= 0/],
    ['queueLimit', '1.5', />= 0/],
    ['queueLimit', 1.5, />= 0/],
    ['queueLimit', '1e3', />= 0/],
    ['queueLimit', '0x10', />= 0/],
    ['queueLimit', '', />= 0/],
    ['queueLimit', 'ten', />= 0/],
    ['queueLimit', true, />= 0/],
    ['queueLimit', '9007199254740993', />= 0/],
    ['maxChannels', '0', />= 1/],
    ['maxHeaderSize', '1023', />= 1024/],
    ['port', '65536', /from 0 to 65535/],
    ['adminPort', 70_000, /from 0 to 65535/],
  ])('int %s refuses %j', (key, raw, message) => {
    expect(() => parseValue(spec(key), raw)).toThrow(message);
  });

  it.each([
    [true, true],
    [false, false],
    ['true', true],
    ['TRUE', true],
    ['1', true],
    ['yes', true],
    ['on', true],
    ['false', false],
    ['0', false],
    ['no', false],
    [' Off ', false],
  ])('bool %j -> %s', (raw, value) => {
    expect(parseValue(spec('limitLoopback'), raw)).toBe(value);
  });

  it.each(['', 'maybe', 2, null])('bool refuses %j', (raw) => {
    expect(() => parseValue(spec('limitLoopback'), raw)).toThrow(/true or false/);
  });

  it('list: comma-separated text or an array of strings, trimmed, empties dropped', () => {
    expect(parseValue(spec('reserved'), 'www, admin,,api ')).toEqual(['www', 'admin', 'api']);
    expect(parseValue(spec('reserved'), ['www', ' api '])).toEqual(['www', 'api']);
    expect(parseValue(spec('reserved'), [])).toEqual([]);
    expect(() => parseValue(spec('reserved'), ['www', 3])).toThrow(/comma-separated list or an array of strings/);
    expect(() => parseValue(spec('reserved'), { www: true })).toThrow(/comma-separated list/);
    expect(() => parseValue(spec('reserved'), 7)).toThrow(/comma-separated list/);
  });

  it('choice: one of the listed values exactly', () => {
    expect(parseValue(spec('logLevel'), 'debug')).toBe('debug');
    expect(parseValue(spec('logFormat'), 'json')).toBe('json');
    expect(() => parseValue(spec('logLevel'), 'loud')).toThrow(/one of fatal, error, warn, info, debug, trace, silent/);
    expect(() => parseValue(spec('logLevel'), 3)).toThrow(/one of/);
  });

  it('rate: any form parseRate takes, 0, off or false for no limit', () => {
    expect(parseValue(spec('claimRate'), '30/m')).toBe('30/m');
    expect(parseValue(spec('claimRate'), ' 10/s:20 ')).toBe('10/s:20');
    expect(parseValue(spec('claimRate'), '0')).toBe('0');
    expect(parseValue(spec('claimRate'), 0)).toBe('0');
    expect(parseValue(spec('claimRate'), 'off')).toBe('off');
    const off = parseValue(spec('requestRate'), false);
    expect(parseRate(off as string)).toBeUndefined();
    expect(() => parseValue(spec('claimRate'), '30 a minute')).toThrow(/like 60\/m/);
    expect(() => parseValue(spec('claimRate'), 30)).toThrow(/like 60\/m/);
    expect(() => parseValue(spec('claimRate'), true)).toThrow(/like "60\/m"/);
    expect(() => parseValue(spec('claimRate'), ['60/m'])).toThrow(/like "60\/m"/);
  });

  it('string: any non-empty text', () => {
    expect(parseValue(spec('domain'), 'example.com')).toBe('example.com');
    expect(() => parseValue(spec('domain'), '')).toThrow(/non-empty string/);
    expect(() => parseValue(spec('domain'), 5)).toThrow(/non-empty string/);
  });
});

describe('resolveServeConfig', () => {
  const noFile = files({});

  it('without anything, every option has its default and source "default"', () => {
    const { values, sources } = resolveServeConfig(...cli(), {}, noFile);
    for (const s of SERVE_OPTIONS) {
      expect(values[s.key], s.key).toEqual(s.default);
      expect(sources[s.key], s.key).toBe('default');
    }
    expect(values['config']).toBeUndefined();
  });

  it('precedence: command line > environment > config file > default', () => {
    const readFile = files({
      '/etc/ptth.json': JSON.stringify({ domain: 'file.example', port: 9001, queueLimit: 7, claimRate: '5/m' }),
    });
    const env = { PTTH_DOMAIN: 'env.example', PTTH_PORT: '9002' };
    const { values, sources } = resolveServeConfig(
      ...cli({ config: '/etc/ptth.json', domain: 'cli.example' }),
      env,
      readFile,
    );
    expect(values['domain']).toBe('cli.example');
    expect(sources['domain']).toBe('cli');
    expect(values['port']).toBe(9002);
    expect(sources['port']).toBe('env');
    expect(values['queueLimit']).toBe(7);
    expect(sources['queueLimit']).toBe('config');
    expect(values['claimRate']).toBe('5/m');
    expect(values['requestRate']).toBe('100/s:400');
    expect(sources['requestRate']).toBe('default');
    expect(values['config']).toBe('/etc/ptth.json');
  });

  it('values commander filled in itself (source "default", e.g. --no-http2 implies http2=true) do not beat the environment or file', () => {
    const readFile = files({ 'c.json': '{"http2": false}' });
    const { values, sources } = resolveServeConfig(
      { http2: true, config: 'c.json' },
      { http2: 'default', config: 'cli' },
      { PTTH_VERBOSE: 'yes' },
      readFile,
    );
    expect(values['http2']).toBe(false);
    expect(sources['http2']).toBe('config');
    expect(values['verbose']).toBe(true);
  });

  it('an empty environment variable counts as unset', () => {
    const { values, sources } = resolveServeConfig(...cli(), { PTTH_DOMAIN: '', PTTH_PORT: '' }, noFile);
    expect(values['domain']).toBe('localhost');
    expect(sources['port']).toBe('default');
  });

  it('the config file may come from PTTH_CONFIG; --config wins over it', () => {
    const readFile = files({ 'a.json': '{"domain": "a.example"}', 'b.json': '{"domain": "b.example"}' });
    expect(resolveServeConfig(...cli(), { PTTH_CONFIG: 'a.json' }, readFile).values['domain']).toBe('a.example');
    const both = resolveServeConfig(...cli({ config: 'b.json' }), { PTTH_CONFIG: 'a.json' }, readFile);
    expect(both.values['domain']).toBe('b.example');
    expect(both.values['config']).toBe('b.json');
  });

  it('reads every kind of value from the file: lists as arrays, bools, rates off, the keys file path', () => {
    const readFile = files({
      'c.json': JSON.stringify({
        reserved: ['www', 'api'],
        limitLoopback: true,
        requestRate: false,
        claimRate: '0',
        keys: '/etc/keys.json',
        logLevel: 'warn',
      }),
    });
    const { values } = resolveServeConfig(...cli({ config: 'c.json' }), {}, readFile);
    expect(values['reserved']).toEqual(['www', 'api']);
    expect(values['limitLoopback']).toBe(true);
    expect(parseRate(values['requestRate'] as string)).toBeUndefined();
    expect(parseRate(values['claimRate'] as string)).toBeUndefined();
    expect(values['keys']).toBe('/etc/keys.json');
    expect(values['logLevel']).toBe('warn');
  });

  it('reads every kind of value from the environment', () => {
    const env = {
      PTTH_RESERVED: 'www,admin',
      PTTH_LIMIT_LOOPBACK: 'true',
      PTTH_HTTP2: 'false',
      PTTH_CLAIM_RATE: '10/s:20',
      PTTH_LOG_FORMAT: 'json',
      PTTH_KEYS_FILE: '/k.json',
      PTTH_IDLE_TIMEOUT: '0',
    };
    const { values, sources } = resolveServeConfig(...cli(), env, noFile);
    expect(values['reserved']).toEqual(['www', 'admin']);
    expect(values['limitLoopback']).toBe(true);
    expect(values['http2']).toBe(false);
    expect(values['claimRate']).toBe('10/s:20');
    expect(values['logFormat']).toBe('json');
    expect(values['keys']).toBe('/k.json');
    expect(values['idleTimeout']).toBe(0);
    for (const k of ['reserved', 'limitLoopback', 'http2', 'claimRate', 'logFormat', 'keys', 'idleTimeout'] as const)
      expect(sources[k]).toBe('env');
  });

  it('a file starting with a UTF-8 byte order mark is read', () => {
    const readFile = files({ 'bom.json': '\uFEFF{"domain": "bom.example"}' });
    expect(resolveServeConfig(...cli({ config: 'bom.json' }), {}, readFile).values['domain']).toBe('bom.example');
  });

  describe('errors name what is at fault', () => {
    const attempt = (contents: string, env: NodeJS.ProcessEnv = {}): (() => unknown) => {
      const readFile = files({ '/srv/ptth.json': contents });
      return () => resolveServeConfig(...cli({ config: '/srv/ptth.json' }), env, readFile);
    };

    it('an unknown key: the file, the key, and the known keys', () => {
      expect(attempt('{"port": 1, "claimrate": "1/s"}')).toThrow(
        /^config file \/srv\/ptth\.json: unknown option "claimrate" \(known: port, host,.*claimRate/,
      );
    });

    it('"config" inside a config file is not an option', () => {
      expect(attempt('{"config": "other.json"}')).toThrow(/config file \/srv\/ptth\.json: unknown option "config"/);
    });

    it.each([
      [
        '{"port": "eighty"}',
        /^config file \/srv\/ptth\.json: port: expected a whole number from 0 to 65535, got "eighty"/,
      ],
      ['{"queueLimit": -3}', /^config file \/srv\/ptth\.json: queueLimit: expected a whole number >= 0, got -3/],
      ['{"http2": "sometimes"}', /^config file \/srv\/ptth\.json: http2: expected true or false/],
      ['{"claimRate": "lots"}', /^config file \/srv\/ptth\.json: claimRate: expected a rate like 60\/m/],
      ['{"reserved": [1, 2]}', /^config file \/srv\/ptth\.json: reserved: expected a comma-separated list/],
      ['{"logLevel": "chatty"}', /^config file \/srv\/ptth\.json: logLevel: expected one of/],
      ['{"domain": 7}', /^config file \/srv\/ptth\.json: domain: expected a non-empty string/],
      ['{"domain": null}', /^config file \/srv\/ptth\.json: domain: expected a non-empty string/],
    ])('a wrong type: %s', (contents, message) => {
      expect(attempt(contents)).toThrow(message);
    });

    it('bad JSON: the file and the parser message', () => {
      expect(attempt('{"port": 80,}')).toThrow(/^config file \/srv\/ptth\.json: .*JSON/);
      expect(attempt('')).toThrow(/^config file \/srv\/ptth\.json: /);
    });

    it.each(['[]', '[{"port": 1}]', 'null', '42', '"port"', 'true'])('not an object (%s)', (contents) => {
      expect(attempt(contents)).toThrow('config file /srv/ptth.json: expected a JSON object of options');
    });

    it('a file that cannot be read', () => {
      expect(() => resolveServeConfig(...cli({ config: '/nope.json' }), {}, noFile)).toThrow(
        /^config file \/nope\.json: ENOENT/,
      );
      expect(() => resolveServeConfig(...cli(), { PTTH_CONFIG: '/nope.json' }, noFile)).toThrow(
        /^config file \/nope\.json: ENOENT/,
      );
    });

    it.each([
      ['PTTH_PORT', 'http', /^PTTH_PORT: expected a whole number from 0 to 65535, got "http"/],
      ['PTTH_MAX_CHANNELS', '0', /^PTTH_MAX_CHANNELS: expected a whole number >= 1/],
      ['PTTH_LIMIT_LOOPBACK', 'sure', /^PTTH_LIMIT_LOOPBACK: expected true or false/],
      ['PTTH_CLAIM_RATE', '60 per minute', /^PTTH_CLAIM_RATE: expected a rate like 60\/m/],
      ['PTTH_REQUEST_RATE', '0/s', /^PTTH_REQUEST_RATE: a rate must be more than 0/],
      ['PTTH_LOG_LEVEL', 'INFO', /^PTTH_LOG_LEVEL: expected one of/],
    ])('a bad environment value: %s=%s', (name, value, message) => {
      expect(() => resolveServeConfig(...cli(), { [name]: value }, noFile)).toThrow(message);
    });

    it('a bad environment value for an option the command line gives is not consulted', () => {
      const { values } = resolveServeConfig(...cli({ port: 1234 }), { PTTH_PORT: 'http' }, noFile);
      expect(values['port']).toBe(1234);
    });

    it('a bad file value is reported even when the environment overrides that option (the file is wrong either way)', () => {
      expect(attempt('{"port": "x"}', { PTTH_PORT: '80' })).toThrow(/config file \/srv\/ptth\.json: port:/);
    });

    it('all errors are TypeErrors, so the CLI can print them and exit 2', () => {
      expect(attempt('{')).toThrow(TypeError);
      expect(() => resolveServeConfig(...cli(), { PTTH_PORT: 'x' }, noFile)).toThrow(TypeError);
    });
  });
});
