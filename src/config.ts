import { readFileSync } from 'node:fs';
import { parseRate } from './gateway/ratelimit.js';

/**
 * Every option of `ptth-proxy serve`, in one table: the CLI flag, the key in a `--config` JSON file,
 * the environment variable, the parser and the default all come from here, so `serve --help`, the
 * config file and the environment cannot drift apart.
 *
 * Precedence: command line > environment (`PTTH_<KEY>`) > config file > default.
 */
export type ValueType = 'int' | 'string' | 'bool' | 'rate' | 'list' | 'choice';

export interface ServeOptionSpec {
  /** camelCase key: the config file's key and, mostly, the GatewayOptions field. */
  readonly key: string;
  /** `--kebab-case` flag (a `-x` short alias may be given in `short`). */
  readonly flag: string;
  readonly short?: string;
  readonly type: ValueType;
  readonly description: string;
  /** Placeholder in help, e.g. `<ms>`. */
  readonly arg?: string;
  readonly default?: string | number | boolean | readonly string[];
  /** Smallest value for `int`. */
  readonly min?: number;
  /** Largest value for `int`. */
  readonly max?: number;
  readonly choices?: readonly string[];
  /** For `bool` options that default to true the flag is `--no-<flag>` and `description` describes that. */
  /** Environment variable, when not the usual `PTTH_<KEY>`. */
  readonly env?: string;
}

const ms = '<ms>';
const n = '<n>';

export const SERVE_OPTIONS: readonly ServeOptionSpec[] = [
  { key: 'config', flag: '--config', type: 'string', arg: '<file>', description: 'JSON file with any of these options, keys in camelCase (e.g. {"port": 8080, "claimRate": "30/m"})' },
  { key: 'port', flag: '--port', short: '-p', type: 'int', arg: '<port>', min: 0, max: 65_535, default: 8080, description: 'port to listen on' },
  { key: 'host', flag: '--host', short: '-H', type: 'string', arg: '<address>', description: 'address to bind (default: all interfaces)' },
  { key: 'domain', flag: '--domain', short: '-d', type: 'string', arg: '<domain>', default: 'localhost', description: 'apps are served at NAME.<domain>' },
  { key: 'publicUrl', flag: '--public-url', type: 'string', arg: '<url>', description: 'base of advertised URLs when behind a proxy or TLS terminator, e.g. https://tunnel.example.com' },
  { key: 'tlsCert', flag: '--tls-cert', type: 'string', arg: '<file>', description: 'PEM certificate chain: serve HTTPS on the same port (reloaded on SIGHUP)' },
  { key: 'tlsKey', flag: '--tls-key', type: 'string', arg: '<file>', description: 'PEM private key for --tls-cert (reloaded on SIGHUP)' },
  { key: 'keys', flag: '--keys', env: 'PTTH_KEYS_FILE', type: 'string', arg: '<file>', description: 'JSON file of access keys that may claim names (reloaded on SIGHUP; inline JSON in PTTH_KEYS works too); without keys anyone may claim a free name' },
  { key: 'reserved', flag: '--reserved', type: 'list', arg: '<names>', description: 'comma-separated names nobody may claim, e.g. www,admin,api' },
  { key: 'defaultLease', flag: '--default-lease', type: 'int', arg: '<seconds>', min: 0, default: 300, description: 'how long a name outlives its last channel when the claim names no lease' },
  { key: 'maxLease', flag: '--max-lease', type: 'int', arg: '<seconds>', min: 0, default: 86_400, description: 'longest lease a claim may ask for' },
  { key: 'maxChannels', flag: '--max-channels', type: 'int', arg: n, min: 1, default: 64, description: 'channels one name may hold (429 past it)' },
  { key: 'claimRate', flag: '--claim-rate', type: 'rate', arg: '<rate>', default: '60/m', description: 'claims per client address, e.g. 60/m or 10/s:20 (burst 20); 0 for no limit (429 past it)' },
  { key: 'requestRate', flag: '--request-rate', type: 'rate', arg: '<rate>', default: '100/s:400', description: 'visitor requests per client address; 0 for no limit (429 past it)' },
  {
    key: 'maxConnectionsPerAddress', flag: '--max-connections-per-address', type: 'int', arg: n, min: 0, default: 2048,
    description:
      'connections one client address may hold open (visitors, claims, channels); 0 for no cap (429 past it)',
  },
  {
    key: 'maxNamesPerAddress', flag: '--max-names-per-address', type: 'int', arg: n, min: 0, default: 100,
    description:
      'names one client address may hold until released or expired, with or without a channel; ' +
      '0 for no cap (429 past it)',
  },
  {
    key: 'maxChannelsPerAddress', flag: '--max-channels-per-address', type: 'int', arg: n, min: 0, default: 512,
    description:
      'channels one client address may hold across names and transports; 0 for no cap (429 past it)',
  },
  {
    key: 'limitLoopback', flag: '--limit-loopback', type: 'bool', default: false,
    description:
      'apply the rate limits and per-address caps to loopback addresses too ' +
      '(off: a local reverse proxy would put every visitor in one bucket)',
  },
  { key: 'responseTimeout', flag: '--response-timeout', type: 'int', arg: ms, min: 1, default: 60_000, description: 'time for an app to start its response (504 past it)' },
  { key: 'queueLimit', flag: '--queue-limit', type: 'int', arg: n, min: 0, default: 256, description: 'requests that may wait for a busy name (503 past it)' },
  { key: 'queueTimeout', flag: '--queue-timeout', type: 'int', arg: ms, min: 1, default: 15_000, description: 'how long a request waits for a busy channel (503 past it)' },
  { key: 'reconnectWait', flag: '--reconnect-wait', type: 'int', arg: ms, min: 1, default: 5_000, description: 'how long a request waits while its app is reconnecting (503 past it)' },
  { key: 'claimTimeout', flag: '--claim-timeout', type: 'int', arg: ms, min: 1, default: 10_000, description: 'time a claimant has to send its declared body (handshake timeout)' },
  { key: 'headersTimeout', flag: '--headers-timeout', type: 'int', arg: ms, min: 1, default: 30_000, description: 'time a visitor has to send its request head (408 past it)' },
  { key: 'keepAliveTimeout', flag: '--keep-alive-timeout', type: 'int', arg: ms, min: 0, default: 5_000, description: 'how long an idle visitor keep-alive connection stays open' },
  { key: 'idleTimeout', flag: '--idle-timeout', type: 'int', arg: ms, min: 0, default: 120_000, description: 'a connection with no bytes either way this long in the middle of a request is closed (slow bodies, visitors that stop reading); between requests --keep-alive-timeout applies; 0 off' },
  { key: 'maxHeaderSize', flag: '--max-header-size', type: 'int', arg: '<bytes>', min: 1024, default: 16_384, description: 'largest request head (431 past it)' },
  { key: 'maxHeaders', flag: '--max-headers', type: 'int', arg: n, min: 1, default: 100, description: 'header fields a request may carry (431 past it)' },
  { key: 'tcpKeepAlive', flag: '--tcp-keep-alive', type: 'int', arg: ms, min: 0, default: 30_000, description: 'TCP keepalive probes after this much idle time, so dead peers of idle channels are noticed; 0 off' },
  { key: 'http2', flag: '--http2', type: 'bool', default: true, description: 'never offer reversed HTTP/2 (Upgrade: ptth with ALPN: h2): every client gets PTTH/1.0 (reversed HTTP/1.1)' },
  { key: 'maxStreams', flag: '--max-streams', type: 'int', arg: n, min: 1, default: 256, description: 'streams the gateway opens at once on one reversed HTTP/2 connection' },
  { key: 'pingInterval', flag: '--ping-interval', type: 'int', arg: ms, min: 1, default: 30_000, description: 'time between HTTP/2 PINGs on reversed HTTP/2 connections' },
  { key: 'pingTimeout', flag: '--ping-timeout', type: 'int', arg: ms, min: 1, default: 10_000, description: 'time a PING may go unanswered before the connection is closed' },
  { key: 'pollTimeout', flag: '--poll-timeout', type: 'int', arg: ms, min: 1, default: 30_000, description: 'how long a Comet long poll waits for a request before its 204' },
  { key: 'replyTimeout', flag: '--reply-timeout', type: 'int', arg: ms, min: 1, description: 'time a Comet app has to POST its reply (504 past it; default: --response-timeout)' },
  { key: 'bufferLimit', flag: '--buffer-limit', type: 'int', arg: '<bytes>', min: 0, default: 16 * 1024 * 1024, description: 'largest body buffered whole for a Comet exchange (413 past it; all Comet bodies together get 8 times this)' },
  { key: 'cometIdleTimeout', flag: '--comet-idle-timeout', type: 'int', arg: ms, min: 1, default: 30_000, description: 'how long after its last poll a Comet app counts as gone (its lease starts)' },
  { key: 'wsMaxStreams', flag: '--ws-max-streams', type: 'int', arg: n, min: 1, default: 128, description: 'requests in flight at once on one WebSocket channel' },
  { key: 'wsWindow', flag: '--ws-window', type: 'int', arg: '<bytes>', min: 1024, default: 256 * 1024, description: 'body bytes in flight per request and direction on a WebSocket channel' },
  { key: 'wsPingInterval', flag: '--ws-ping-interval', type: 'int', arg: ms, min: 1, default: 30_000, description: 'time between WebSocket pings; a channel that misses one is closed' },
  { key: 'cookieGuard', flag: '--cookie-guard', type: 'bool', default: true, description: "relay apps' Set-Cookie headers whose Domain is the gateway's domain or a parent of it (by default they are dropped: browsers would send them to every app, so one tenant could set cookies for the others)" },
  { key: 'statusList', flag: '--status-list', type: 'choice', arg: '<who>', default: 'loopback', choices: ['loopback', 'everyone', 'nobody'], description: 'who sees the names, channels and app addresses on the status page (loopback: this machine only, others see the count; behind a local reverse proxy use nobody)' },
  { key: 'metrics', flag: '--metrics', type: 'bool', default: true, description: 'no Prometheus metrics (by default they are served at /metrics on the gateway host, or on --admin-port)' },
  { key: 'adminPort', flag: '--admin-port', type: 'int', arg: '<port>', min: 0, max: 65_535, description: 'serve /metrics, /healthz and /readyz on this separate port instead (then /metrics is not public)' },
  { key: 'adminHost', flag: '--admin-host', type: 'string', arg: '<address>', default: '127.0.0.1', description: 'address the admin port binds' },
  { key: 'shutdownGrace', flag: '--shutdown-grace', type: 'int', arg: ms, min: 0, default: 10_000, description: 'on SIGTERM/SIGINT, how long requests in flight get to finish before the gateway exits' },
  { key: 'logLevel', flag: '--log-level', type: 'choice', arg: '<level>', default: 'info', choices: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], description: 'least severe log lines written' },
  { key: 'logFormat', flag: '--log-format', type: 'choice', arg: '<format>', default: 'auto', choices: ['auto', 'json', 'pretty'], description: 'JSON lines, or human-readable (auto: pretty when stdout is a terminal)' },
  // At least 64 KiB: a request line carries its path twice (up to --max-header-size each) and should fit.
  {
    key: 'logBuffer', flag: '--log-buffer', type: 'int', arg: '<bytes>', min: 65_536, default: 16 * 1024 * 1024,
    description: "most bytes of log lines held while stdout's reader is behind; lines past it are dropped, counted " +
      '(ptth_log_lines_dropped_total) and reported once it is back',
  },
  { key: 'verbose', flag: '--verbose', short: '-v', type: 'bool', default: false, description: 'log debug lines too (same as --log-level debug)' },
  { key: 'quiet', flag: '--quiet', short: '-q', type: 'bool', default: false, description: 'log only warnings and errors (same as --log-level warn): no line per visitor request except 5xx' },
];

/** `claimRate` -> `PTTH_CLAIM_RATE` (or the spec's own `env`). */
export function envName(key: string): string {
  const spec = SERVE_OPTIONS.find((s) => s.key === key);
  return spec?.env ?? `PTTH_${key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`;
}

export type ConfigValue = string | number | boolean | string[];
export type ServeConfig = Record<string, ConfigValue | undefined>;

/** Parses one value for `spec` from text (the command line or the environment) or JSON; throws a TypeError that says what was expected. */
export function parseValue(spec: ServeOptionSpec, raw: unknown): ConfigValue {
  switch (spec.type) {
    case 'int': {
      const min = spec.min ?? 0;
      const max = spec.max ?? Number.MAX_SAFE_INTEGER;
      const text = typeof raw === 'number' ? String(raw) : raw;
      if (typeof text !== 'string' || !/^\d+$/.test(text.trim()) || Number(text) < min || Number(text) > max) {
        const range = spec.max === undefined ? `>= ${min}` : `from ${min} to ${max}`;
        throw new TypeError(`expected a whole number ${range}, got ${JSON.stringify(raw)}`);
      }
      return Number(text);
    }
    case 'bool': {
      if (typeof raw === 'boolean') return raw;
      const t = typeof raw === 'string' ? raw.trim().toLowerCase() : '';
      if (['1', 'true', 'yes', 'on'].includes(t)) return true;
      if (['0', 'false', 'no', 'off'].includes(t)) return false;
      throw new TypeError(`expected true or false, got ${JSON.stringify(raw)}`);
    }
    case 'rate': {
      // `false` in a config file reads naturally as "no limit", as it does in GatewayOptions.
      if (raw === false) return 'off';
      const text = typeof raw === 'number' ? String(raw) : raw;
      if (typeof text !== 'string') throw new TypeError(`expected a rate like "60/m", got ${JSON.stringify(raw)}`);
      parseRate(text);
      return text.trim();
    }
    case 'list': {
      const items = Array.isArray(raw) ? raw : typeof raw === 'string' ? raw.split(',') : undefined;
      if (!items || !items.every((i): i is string => typeof i === 'string')) {
        throw new TypeError(`expected a comma-separated list or an array of strings, got ${JSON.stringify(raw)}`);
      }
      return items.map((i) => i.trim()).filter((i) => i !== '');
    }
    case 'choice': {
      if (typeof raw !== 'string' || !spec.choices?.includes(raw)) {
        throw new TypeError(`expected one of ${spec.choices?.join(', ') ?? ''}, got ${JSON.stringify(raw)}`);
      }
      return raw;
    }
    case 'string': {
      if (typeof raw !== 'string' || raw === '') throw new TypeError(`expected a non-empty string, got ${JSON.stringify(raw)}`);
      return raw;
    }
  }
}

/** Where each resolved value came from, for `--help`-style diagnostics and tests. */
export type Source = 'cli' | 'env' | 'config' | 'default';

export interface Resolved {
  readonly values: ServeConfig;
  readonly sources: Record<string, Source>;
}

/**
 * Merges the command line (values commander parsed, with their sources), the environment and the
 * config file. Throws a TypeError naming the variable, key or file at fault.
 */
export function resolveServeConfig(
  cli: ServeConfig,
  cliSources: Record<string, string | undefined>,
  env: NodeJS.ProcessEnv = process.env,
  readFile: (path: string) => string = (p) => readFileSync(p, 'utf8'),
): Resolved {
  const byKey = new Map(SERVE_OPTIONS.map((s) => [s.key, s]));
  const fromEnv = (spec: ServeOptionSpec): ConfigValue | undefined => {
    const name = envName(spec.key);
    const raw = env[name];
    if (raw === undefined || raw === '') return undefined;
    try {
      return parseValue(spec, raw);
    } catch (e) {
      throw new TypeError(`${name}: ${(e as Error).message}`);
    }
  };
  const onCli = (key: string): boolean => cliSources[key] === 'cli';

  const configSpec = byKey.get('config') as ServeOptionSpec;
  const configPath = onCli('config') ? (cli['config'] as string) : (fromEnv(configSpec) as string | undefined);
  const file: ServeConfig = {};
  if (configPath !== undefined) {
    let json: unknown;
    try {
      // Some editors start a UTF-8 file with a byte order mark, which JSON.parse refuses.
      json = JSON.parse(readFile(configPath).replace(/^\uFEFF/, ''));
    } catch (e) {
      throw new TypeError(`config file ${configPath}: ${(e as Error).message}`);
    }
    if (json === null || typeof json !== 'object' || Array.isArray(json)) {
      throw new TypeError(`config file ${configPath}: expected a JSON object of options`);
    }
    for (const [key, raw] of Object.entries(json as Record<string, unknown>)) {
      const spec = byKey.get(key);
      if (!spec || key === 'config') {
        const known = SERVE_OPTIONS.filter((s) => s.key !== 'config').map((s) => s.key);
        throw new TypeError(`config file ${configPath}: unknown option ${JSON.stringify(key)} (known: ${known.join(', ')})`);
      }
      try {
        file[key] = parseValue(spec, raw);
      } catch (e) {
        throw new TypeError(`config file ${configPath}: ${key}: ${(e as Error).message}`);
      }
    }
  }

  const values: ServeConfig = {};
  const sources: Record<string, Source> = {};
  for (const spec of SERVE_OPTIONS) {
    const k = spec.key;
    let v: ConfigValue | undefined;
    let source: Source = 'default';
    if (onCli(k) && cli[k] !== undefined) {
      v = cli[k];
      source = 'cli';
    } else if ((v = fromEnv(spec)) !== undefined) {
      source = 'env';
    } else if (file[k] !== undefined) {
      v = file[k];
      source = 'config';
    } else if (spec.default !== undefined) {
      v = Array.isArray(spec.default) ? [...(spec.default as string[])] : (spec.default as ConfigValue);
    }
    values[k] = v;
    sources[k] = source;
  }
  if (configPath !== undefined) values['config'] = configPath;
  return { values, sources };
}
