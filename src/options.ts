import type { ErrorCode } from './http/errors.js';

/**
 * Every option of the gateway, in one table: `ptth-proxy serve`'s flag, its `--config` JSON key and
 * environment variable, and `createGateway()`'s option of the same name all take their default,
 * bounds, unit and help text from here, so the command line, the config file, the environment and
 * the library cannot drift apart.
 *
 * A row without a `flag` is a library option only (`createGateway({ claimBodyLimit })`); rows such
 * as `port` or `logLevel` are read by the command line only, since the library has no place for them.
 */
export type ValueType = 'int' | 'string' | 'bool' | 'rate' | 'list' | 'choice';

/** What an `int` counts; it gives the help text's placeholder (`--queue-timeout <ms>`). */
export type Unit = 'ms' | 'seconds' | 'bytes' | 'count' | 'port';

export interface OptionSpec {
  /** `--kebab-case` flag of `serve` (a `-x` short alias may be given in `short`); none: a library option only. */
  readonly flag?: string;
  readonly short?: string;
  /** A `bool` that defaults to true has the flag `--no-<flag>`, and `description` describes that. */
  readonly type: ValueType;
  readonly description: string;
  /** Unit of an `int`; its placeholder in help unless `arg` says otherwise. */
  readonly unit?: Unit;
  /** Placeholder in help for non-`int` options, e.g. `<file>`. */
  readonly arg?: string;
  readonly default?: string | number | boolean | readonly string[];
  /** Smallest value for `int` (0 where 0 means off or no cap). */
  readonly min?: number;
  /** Largest value for `int`. */
  readonly max?: number;
  readonly choices?: readonly string[];
  /** Environment variable, when not the usual `PTTH_<KEY>`. */
  readonly env?: string;
}

/** Help placeholders of the units. */
export const UNIT_ARG: Readonly<Record<Unit, string>> = {
  ms: '<ms>',
  seconds: '<seconds>',
  bytes: '<bytes>',
  count: '<n>',
  port: '<port>',
};

export const OPTIONS = {
  config: {
    flag: '--config',
    type: 'string',
    arg: '<file>',
    description: 'JSON file with any of these options, keys in camelCase (e.g. {"port": 8080, "claimRate": "30/m"})',
  },
  port: {
    flag: '--port',
    short: '-p',
    type: 'int',
    unit: 'port',
    min: 0,
    max: 65_535,
    default: 8080,
    description: 'port to listen on',
  },
  host: {
    flag: '--host',
    short: '-H',
    type: 'string',
    arg: '<address>',
    description: 'address to bind (default: all interfaces)',
  },
  domain: {
    flag: '--domain',
    short: '-d',
    type: 'string',
    arg: '<domain>',
    default: 'localhost',
    description: 'apps are served at NAME.<domain>',
  },
  publicUrl: {
    flag: '--public-url',
    type: 'string',
    arg: '<url>',
    description: 'base of advertised URLs when behind a proxy or TLS terminator, e.g. https://tunnel.example.com',
  },
  urls: {
    flag: '--urls',
    type: 'choice',
    arg: '<mode>',
    default: 'host',
    choices: ['host', 'path', 'both'],
    description:
      'shape of public URLs, host, path or both: host serves apps at NAME.<domain>, path at GATEWAY/NAME/ (no wildcard DNS or certificate needed, but every app shares one browser origin), both answers either and advertises the host shape',
  },
  tlsCert: {
    flag: '--tls-cert',
    type: 'string',
    arg: '<file>',
    description: 'PEM certificate chain: serve HTTPS on the same port (reloaded on SIGHUP)',
  },
  tlsKey: {
    flag: '--tls-key',
    type: 'string',
    arg: '<file>',
    description: 'PEM private key for --tls-cert (reloaded on SIGHUP)',
  },
  keys: {
    flag: '--keys',
    env: 'PTTH_KEYS_FILE',
    type: 'string',
    arg: '<file>',
    description:
      'JSON file of access keys that may claim names (reloaded on SIGHUP; inline JSON in PTTH_KEYS works too); without keys anyone may claim a free name',
  },
  reserved: {
    flag: '--reserved',
    type: 'list',
    arg: '<names>',
    description: 'comma-separated names nobody may claim, e.g. www,admin,api',
  },
  defaultLease: {
    flag: '--default-lease',
    type: 'int',
    unit: 'seconds',
    min: 0,
    default: 300,
    description: 'how long a name outlives its last channel when the claim names no lease',
  },
  maxLease: {
    flag: '--max-lease',
    type: 'int',
    unit: 'seconds',
    min: 0,
    default: 86_400,
    description: 'longest lease a claim may ask for',
  },
  maxChannels: {
    flag: '--max-channels',
    type: 'int',
    unit: 'count',
    min: 1,
    default: 64,
    description: 'channels one name may hold (429 past it)',
  },
  claimBodyLimit: {
    type: 'int',
    unit: 'bytes',
    min: 0,
    default: 8192,
    description: 'largest claim request body (413 past it)',
  },
  claimRate: {
    flag: '--claim-rate',
    type: 'rate',
    arg: '<rate>',
    default: '60/m',
    description: 'claims per client address, e.g. 60/m or 10/s:20 (burst 20); 0 for no limit (429 past it)',
  },
  requestRate: {
    flag: '--request-rate',
    type: 'rate',
    arg: '<rate>',
    default: '100/s:400',
    description: 'visitor requests per client address; 0 for no limit (429 past it)',
  },
  maxConnectionsPerAddress: {
    flag: '--max-connections-per-address',
    type: 'int',
    unit: 'count',
    min: 0,
    default: 2048,
    description:
      'connections one client address may hold open (visitors, claims, channels); 0 for no cap (429 past it)',
  },
  maxNamesPerAddress: {
    flag: '--max-names-per-address',
    type: 'int',
    unit: 'count',
    min: 0,
    default: 100,
    description:
      'names one client address may hold until released or expired, with or without a channel; ' +
      '0 for no cap (429 past it)',
  },
  maxChannelsPerAddress: {
    flag: '--max-channels-per-address',
    type: 'int',
    unit: 'count',
    min: 0,
    default: 512,
    description: 'channels one client address may hold across names and transports; 0 for no cap (429 past it)',
  },
  limitLoopback: {
    flag: '--limit-loopback',
    type: 'bool',
    default: false,
    description:
      'apply the rate limits and per-address caps to loopback addresses too ' +
      '(off: a local reverse proxy would put every visitor in one bucket)',
  },
  responseTimeout: {
    flag: '--response-timeout',
    type: 'int',
    unit: 'ms',
    min: 1,
    default: 60_000,
    description: 'time for an app to start its response (504 past it)',
  },
  queueLimit: {
    flag: '--queue-limit',
    type: 'int',
    unit: 'count',
    min: 0,
    default: 256,
    description: 'requests that may wait for a busy name (503 past it)',
  },
  queueTimeout: {
    flag: '--queue-timeout',
    type: 'int',
    unit: 'ms',
    min: 1,
    default: 15_000,
    description: 'how long a request waits for a busy channel (503 past it)',
  },
  reconnectWait: {
    flag: '--reconnect-wait',
    type: 'int',
    unit: 'ms',
    min: 1,
    default: 5_000,
    description: 'how long a request waits while its app is reconnecting (503 past it)',
  },
  claimTimeout: {
    flag: '--claim-timeout',
    type: 'int',
    unit: 'ms',
    min: 1,
    default: 10_000,
    description: 'time a claimant has to send its declared body (handshake timeout)',
  },
  headersTimeout: {
    flag: '--headers-timeout',
    type: 'int',
    unit: 'ms',
    min: 1,
    default: 30_000,
    description: 'time a visitor has to send its request head (408 past it)',
  },
  keepAliveTimeout: {
    flag: '--keep-alive-timeout',
    type: 'int',
    unit: 'ms',
    min: 0,
    default: 5_000,
    description: 'how long an idle visitor keep-alive connection stays open',
  },
  idleTimeout: {
    flag: '--idle-timeout',
    type: 'int',
    unit: 'ms',
    min: 0,
    default: 120_000,
    description:
      'a connection with no bytes either way this long in the middle of a request is closed (slow bodies, visitors that stop reading); between requests --keep-alive-timeout applies; 0 off',
  },
  maxHeaderSize: {
    flag: '--max-header-size',
    type: 'int',
    unit: 'bytes',
    min: 1024,
    default: 16_384,
    description: 'largest request head (431 past it)',
  },
  maxHeaders: {
    flag: '--max-headers',
    type: 'int',
    unit: 'count',
    min: 1,
    default: 100,
    description: 'header fields a request may carry (431 past it)',
  },
  tcpKeepAlive: {
    flag: '--tcp-keep-alive',
    type: 'int',
    unit: 'ms',
    min: 0,
    default: 30_000,
    description: 'TCP keepalive probes after this much idle time, so dead peers of idle channels are noticed; 0 off',
  },
  http2: {
    flag: '--http2',
    type: 'bool',
    default: true,
    description:
      'never offer reversed HTTP/2 (Upgrade: ptth with ALPN: h2): every client gets PTTH/1.0 (reversed HTTP/1.1)',
  },
  maxStreams: {
    flag: '--max-streams',
    type: 'int',
    unit: 'count',
    min: 1,
    default: 256,
    description: 'streams the gateway opens at once on one reversed HTTP/2 connection',
  },
  pingInterval: {
    flag: '--ping-interval',
    type: 'int',
    unit: 'ms',
    min: 1,
    default: 30_000,
    description: 'time between HTTP/2 PINGs on reversed HTTP/2 connections',
  },
  pingTimeout: {
    flag: '--ping-timeout',
    type: 'int',
    unit: 'ms',
    min: 1,
    default: 10_000,
    description: 'time a PING may go unanswered before the connection is closed',
  },
  pollTimeout: {
    flag: '--poll-timeout',
    type: 'int',
    unit: 'ms',
    min: 1,
    default: 30_000,
    description: 'how long a Comet long poll waits for a request before its 204',
  },
  replyTimeout: {
    flag: '--reply-timeout',
    type: 'int',
    unit: 'ms',
    min: 1,
    description: 'time a Comet app has to POST its reply (504 past it; default: --response-timeout)',
  },
  bufferLimit: {
    flag: '--buffer-limit',
    type: 'int',
    unit: 'bytes',
    min: 0,
    default: 16 * 1024 * 1024,
    description:
      'largest body buffered whole for a Comet exchange (413 past it; all Comet bodies together get 8 times this)',
  },
  cometPipelineCount: {
    flag: '--comet-pipeline-count',
    type: 'int',
    unit: 'count',
    min: 1,
    default: 32,
    description: 'requests one pipelined Comet poll answer (Accept: application/http) carries at most',
  },
  cometPipelineBytes: {
    flag: '--comet-pipeline-bytes',
    type: 'int',
    unit: 'bytes',
    min: 1,
    default: 1024 * 1024,
    description:
      'bytes of requests one pipelined Comet poll answer carries at most (one larger request still goes, alone)',
  },
  cometIdleTimeout: {
    flag: '--comet-idle-timeout',
    type: 'int',
    unit: 'ms',
    min: 1,
    default: 30_000,
    description: 'how long after its last poll a Comet app counts as gone (its lease starts)',
  },
  wsMaxStreams: {
    flag: '--ws-max-streams',
    type: 'int',
    unit: 'count',
    min: 1,
    default: 128,
    description: 'requests in flight at once on one WebSocket channel',
  },
  wsWindow: {
    flag: '--ws-window',
    type: 'int',
    unit: 'bytes',
    min: 1024,
    default: 256 * 1024,
    description: 'body bytes in flight per request and direction on a WebSocket channel',
  },
  wsPingInterval: {
    flag: '--ws-ping-interval',
    type: 'int',
    unit: 'ms',
    min: 1,
    default: 30_000,
    description: 'time between WebSocket pings; a channel that misses one is closed',
  },
  relay: {
    flag: '--relay',
    type: 'bool',
    default: false,
    description:
      'serve the RelayHttp endpoint (POST /relay/HOST[:PORT] with a message/http request): browser programs make outbound ' +
      'requests through the gateway, each with an access key whose "relay" list names the target (needs --keys)',
  },
  relayMaxRequest: {
    flag: '--relay-max-request',
    type: 'int',
    unit: 'bytes',
    min: 1,
    default: 1024 * 1024,
    description: 'largest relayed request, head and body (413 past it)',
  },
  relayMaxResponse: {
    flag: '--relay-max-response',
    type: 'int',
    unit: 'bytes',
    min: 1,
    default: 8 * 1024 * 1024,
    description: 'largest target response the gateway relays (502 past it)',
  },
  relayConnectTimeout: {
    flag: '--relay-connect-timeout',
    type: 'int',
    unit: 'ms',
    min: 1,
    default: 5_000,
    description: 'time to resolve a relay target and connect to it (504 past it)',
  },
  relayTimeout: {
    flag: '--relay-timeout',
    type: 'int',
    unit: 'ms',
    min: 1,
    default: 30_000,
    description: 'time a relay target has to send its whole response (504 past it)',
  },
  relayMaxPerKey: {
    flag: '--relay-max-per-key',
    type: 'int',
    unit: 'count',
    min: 1,
    default: 16,
    description: 'relays one access key may have in flight at once (429 past it)',
  },
  cookieGuard: {
    flag: '--cookie-guard',
    type: 'bool',
    default: true,
    description:
      "relay apps' Set-Cookie headers whose Domain is the gateway's domain or a parent of it (by default they are dropped: browsers would send them to every app, so one tenant could set cookies for the others)",
  },
  statusList: {
    flag: '--status-list',
    type: 'choice',
    arg: '<who>',
    default: 'loopback',
    choices: ['loopback', 'everyone', 'nobody'],
    description:
      'who sees the names, channels and app addresses on the status page (loopback: this machine only, others see the count; behind a local reverse proxy use nobody)',
  },
  metrics: {
    flag: '--metrics',
    type: 'bool',
    default: true,
    description:
      'no Prometheus metrics (by default they are served at /metrics on the gateway host, or on --admin-port)',
  },
  adminPort: {
    flag: '--admin-port',
    type: 'int',
    unit: 'port',
    min: 0,
    max: 65_535,
    description: 'serve /metrics, /healthz and /readyz on this separate port instead (then /metrics is not public)',
  },
  adminHost: {
    flag: '--admin-host',
    type: 'string',
    arg: '<address>',
    default: '127.0.0.1',
    description: 'address the admin port binds',
  },
  // A cluster of gateways: read by the command line, which hands them to createClusterNode (src/cluster/node.ts).
  redis: {
    flag: '--redis',
    type: 'string',
    arg: '<url>',
    description:
      'join a cluster of gateways that share their registrations through this Redis: redis://[[user]:password@]host[:port][/db], ' +
      'rediss://... (TLS), a unix socket path, or redis+sentinel://host[:port],host[:port]/MASTER for Sentinel ' +
      '(without it the routing table lives in this process only)',
  },
  nodeUrl: {
    flag: '--node-url',
    type: 'string',
    arg: '<url>',
    description:
      "this node's http(s) origin as the other nodes reach it for their internal hops, e.g. http://10.0.0.5:8080 " +
      "(default: this machine's first non-internal IPv4 address and --port; with --workers only its host counts: " +
      'each worker takes hops on a port of its own there)',
  },
  nodeId: {
    flag: '--node-id',
    type: 'string',
    arg: '<id>',
    description:
      "this node's name in Redis, logs and metrics: letters, digits, . _ - (default: the host name and random hex; with --workers, each worker adds -<n>)",
  },
  clusterSecret: {
    flag: '--cluster-secret',
    type: 'string',
    arg: '<secret>',
    description:
      'secret (16 characters or more) that signs the internal hops between nodes, the same on every node ' +
      '(default: one the first node stores in Redis)',
  },
  clusterSecretFile: {
    flag: '--cluster-secret-file',
    type: 'string',
    arg: '<file>',
    description: 'read --cluster-secret from this file (one line)',
  },
  workers: {
    flag: '--workers',
    type: 'int',
    unit: 'count',
    min: 1,
    max: 256,
    default: 1,
    description:
      'node processes on this machine, all serving the one port (node:cluster), each a node of the cluster; more than 1 needs --redis',
  },
  heartbeat: {
    flag: '--heartbeat',
    type: 'int',
    unit: 'ms',
    min: 10,
    default: 1_000,
    description: 'how often a node tells Redis that it is alive (needs --redis)',
  },
  nodeTimeout: {
    flag: '--node-timeout',
    type: 'int',
    unit: 'ms',
    min: 1,
    default: 5_000,
    description:
      'a node whose last heartbeat is older than this counts as dead: no more hops to it, its channels forgotten (longer than --heartbeat)',
  },
  // The library's `gateway.close(graceMs)` defaults to this too.
  shutdownGrace: {
    flag: '--shutdown-grace',
    type: 'int',
    unit: 'ms',
    min: 0,
    default: 10_000,
    description: 'on SIGTERM/SIGINT, how long requests in flight get to finish before the gateway exits',
  },
  logLevel: {
    flag: '--log-level',
    type: 'choice',
    arg: '<level>',
    default: 'info',
    choices: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'],
    description: 'least severe log lines written',
  },
  logFormat: {
    flag: '--log-format',
    type: 'choice',
    arg: '<format>',
    default: 'auto',
    choices: ['auto', 'json', 'pretty'],
    description: 'JSON lines, or human-readable (auto: pretty when stdout is a terminal)',
  },
  // At least 64 KiB: a request line carries its path twice (up to --max-header-size each) and should fit.
  logBuffer: {
    flag: '--log-buffer',
    type: 'int',
    unit: 'bytes',
    min: 65_536,
    default: 16 * 1024 * 1024,
    description:
      "most bytes of log lines held while stdout's reader is behind; lines past it are dropped, counted " +
      '(ptth_log_lines_dropped_total) and reported once it is back',
  },
  verbose: {
    flag: '--verbose',
    short: '-v',
    type: 'bool',
    default: false,
    description: 'log debug lines too (same as --log-level debug)',
  },
  quiet: {
    flag: '--quiet',
    short: '-q',
    type: 'bool',
    default: false,
    description: 'log only warnings and errors (same as --log-level warn): no line per visitor request except 5xx',
  },
} as const satisfies Record<string, OptionSpec>;

type Options = typeof OPTIONS;
export type OptionKey = keyof Options;

/** Options of `ptth-proxy serve` (rows with a flag), in the table's order. */
export type ServeKey = { [K in OptionKey]: Options[K] extends { flag: string } ? K : never }[OptionKey];
/** Whole-number options: the ones the library checks with `numberOption`. */
export type NumberKey = { [K in OptionKey]: Options[K] extends { type: 'int' } ? K : never }[OptionKey];
/** Options with a default, and whole numbers: the library's `numberOption` needs no fallback for these. */
type DefaultedNumberKey = { [K in NumberKey]: Options[K] extends { default: number } ? K : never }[NumberKey];
export type BoolKey = { [K in OptionKey]: Options[K] extends { type: 'bool' } ? K : never }[OptionKey];

/** The value one row parses to: rates stay text (`'off'` for no limit), choices their literal union. */
type ValueOf<S> = S extends { type: 'int' }
  ? number
  : S extends { type: 'bool' }
    ? boolean
    : S extends { type: 'list' }
      ? string[]
      : S extends { type: 'choice'; choices: readonly (infer C)[] }
        ? C
        : string;

/** `serve`'s resolved options: every option with a default has a value, the others may be undefined. */
export type ServeValues = {
  [K in ServeKey]: Options[K] extends { default: unknown } ? ValueOf<Options[K]> : ValueOf<Options[K]> | undefined;
};

/** A row of the table as the command line reads it: its key, and the placeholder its unit implies. */
export interface ServeOptionSpec extends OptionSpec {
  /** camelCase key: the config file's key and, mostly, the GatewayOptions field. */
  readonly key: ServeKey;
  readonly flag: string;
}

/** The table's keys, typed (Object.keys gives string[]). */
export const OPTION_KEYS: readonly OptionKey[] = Object.freeze(
  Object.keys(OPTIONS).filter((k): k is OptionKey => k in OPTIONS),
);

function isServeKey(key: OptionKey): key is ServeKey {
  const spec: OptionSpec = OPTIONS[key];
  return spec.flag !== undefined;
}

/** Every option of `serve`, in the table's order. */
export const SERVE_OPTIONS: readonly ServeOptionSpec[] = OPTION_KEYS.filter(isServeKey).map((key) => {
  const spec: OptionSpec & { flag: string } = OPTIONS[key];
  const arg = spec.arg ?? (spec.unit === undefined ? undefined : UNIT_ARG[spec.unit]);
  return { key, ...spec, ...(arg === undefined ? {} : { arg }) };
});

/**
 * A bad option given to the library (`createGateway`): a programmer error, thrown at construction.
 * A TypeError, as node's own ERR_INVALID_ARG_VALUE is, with the error table's code and the option's name.
 */
export class OptionError extends TypeError {
  readonly code = 'PTTH_ERR_BAD_OPTION' satisfies ErrorCode;
  /** The option at fault, e.g. `maxChannels`. */
  readonly option: string;
  constructor(option: string, message: string, options?: { cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'OptionError';
    this.option = option;
  }
}

/**
 * A whole-number option of the library: the table's default when unset (or `fallback`, for options
 * whose default is another option's value), else a finite number at least the table's `min` (0 is
 * allowed where it means off or no cap). Unlike the command line the library takes fractions too.
 */
export function numberOption(key: DefaultedNumberKey, value: number | undefined): number;
export function numberOption(key: NumberKey, value: number | undefined, fallback: number): number;
export function numberOption(key: NumberKey, value: number | undefined, fallback?: number): number {
  const spec: OptionSpec = OPTIONS[key];
  return atLeast(key, value, fallback ?? (typeof spec.default === 'number' ? spec.default : Number.NaN), spec.min ?? 0);
}

/** `value`, or `fallback` when unset; throws OptionError unless a finite number >= `min`. */
export function atLeast(name: string, value: number | undefined, fallback: number, min: number): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value < min)
    throw new OptionError(name, `${name} must be a number >= ${min}, got ${String(value)}`);
  return value;
}

/** A boolean option of the library: the table's default when unset. */
export function boolOption(key: BoolKey, value: boolean | undefined): boolean {
  return value ?? OPTIONS[key].default;
}

/** The domain apps are served under: the table's default when unset, a DNS name (lower case, no final dot). */
export function domainOption(value: string | undefined): string {
  const domain = (value ?? OPTIONS.domain.default).toLowerCase().replace(/\.$/, '');
  if (!/^[a-z0-9.-]+$/.test(domain) || domain.startsWith('.') || domain.includes('..')) {
    throw new OptionError('domain', `domain must be a DNS name, got ${JSON.stringify(value)}`);
  }
  return domain;
}

/** The base of advertised URLs: an http or https URL, or undefined. */
export function publicUrlOption(value: string | undefined): URL | undefined {
  if (value === undefined) return undefined;
  let url: URL;
  try {
    url = new URL(value);
  } catch (e) {
    throw new OptionError('publicUrl', `publicUrl must be an http or https URL, got ${value}`, { cause: e });
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new OptionError('publicUrl', `publicUrl must be an http or https URL, got ${value}`);
  }
  return url;
}

/** Milliseconds `gateway.close()` gives requests in flight when not told: the same as `serve --shutdown-grace`. */
export const SHUTDOWN_GRACE_DEFAULT: number = OPTIONS.shutdownGrace.default;
