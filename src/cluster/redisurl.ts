import type { RedisOptions } from 'ioredis';

/**
 * `serve --redis <url>`: where a node finds the cluster's Redis, as one string that fits a flag,
 * an environment variable and a config file. The forms are ioredis's own (so a URL that works with
 * ioredis elsewhere works here), plus one for Sentinel, which ioredis takes as options only:
 *
 * - `redis://[[user]:password@]host[:port][/db]`, `rediss://...` (TLS); port 6379 by default;
 * - `host:port` or `host` (as redis://);
 * - `/path/to/redis.sock` (a unix socket);
 * - `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/master[/db]` asks the Sentinels
 *   (port 26379 by default) for the current master of the group `master`, and follows failovers.
 *   `rediss+sentinel://` speaks TLS to the Sentinels and to Redis. The user and password are
 *   Redis's; the Sentinels' own go in the query: `?sentinelPassword=...&sentinelUsername=...`.
 *   This is the form of the `redis-sentinel-url` package, with the `rediss+` variant added.
 *
 * Every form takes the query parameters `db`, `family` (4 or 6), `username` and `password` (the
 * way to give a unix socket one). Anything else is refused by name, not ignored: a misspelt
 * `pasword` must not silently connect without one.
 */

const REDIS_PORT = 6379;
const SENTINEL_PORT = 26_379;
const COMMON_PARAMS = ['db', 'family', 'username', 'password'] as const;
const SENTINEL_PARAMS = ['sentinelPassword', 'sentinelUsername'] as const;
/** Query parameters whose value the start-up lines and logs must not show. */
const SECRET_PARAMS = new Set(['password', 'sentinelPassword']);

/** A `--redis` value that is none of the forms above; the message says what was wrong. */
export class RedisUrlError extends TypeError {
  constructor(url: string, why: string) {
    super(`bad Redis URL ${redactRedisUrl(url)}: ${why}`);
    this.name = 'RedisUrlError';
  }
}

/** ioredis's options for a `--redis` value; throws RedisUrlError for anything it cannot take. */
export function redisOptions(url: string): RedisOptions {
  const text = url.trim();
  if (text === '') throw new RedisUrlError(url, 'it is empty');
  if (text.startsWith('/')) return unixOptions(url, text);
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(text)?.[1]?.toLowerCase();
  if (scheme === 'redis+sentinel' || scheme === 'rediss+sentinel') return sentinelOptions(url, text, scheme);
  if (scheme === 'redis' || scheme === 'rediss') return serverOptions(url, parse(url, text), scheme === 'rediss');
  if (scheme !== undefined) {
    throw new RedisUrlError(
      url,
      `unknown scheme ${scheme}:// (redis://, rediss://, redis+sentinel://, rediss+sentinel:// or a socket path)`,
    );
  }
  // ioredis reads `host:port` and `host` as redis:// URLs.
  return serverOptions(url, parse(url, `redis://${text}`), false);
}

/** The URL as the start-up lines may show it: passwords, in the user part or the query, replaced by `***`. */
export function redactRedisUrl(url: string): string {
  const text = url.trim();
  const q = text.indexOf('?');
  const [head, query] = q === -1 ? [text, undefined] : [text.slice(0, q), text.slice(q + 1)];
  const shownHead = redactUserinfo(head);
  if (query === undefined) return shownHead;
  const shownQuery = query
    .split('&')
    .map((pair) => {
      const eq = pair.indexOf('=');
      const key = eq === -1 ? pair : pair.slice(0, eq);
      return SECRET_PARAMS.has(safeDecode(key)) ? `${key}=***` : pair;
    })
    .join('&');
  return `${shownHead}?${shownQuery}`;
}

/**
 * `scheme://user:password@hosts/...` with the password replaced by `***`: everything from the first
 * colon after the scheme up to the last @, so that even a password with a bare / or @ (a URL that
 * does not parse, shown in its error) is hidden whole.
 */
function redactUserinfo(head: string): string {
  const start = /^[a-z][a-z0-9+.-]*:\/\//i.exec(head)?.[0].length ?? 0;
  const at = head.lastIndexOf('@');
  const colon = head.indexOf(':', start);
  if (at === -1 || colon === -1 || colon > at) return head;
  return `${head.slice(0, colon + 1)}***${head.slice(at)}`;
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

function parse(url: string, text: string): URL {
  try {
    return new URL(text);
  } catch {
    throw new RedisUrlError(url, 'it does not parse as a URL');
  }
}

function unixOptions(url: string, text: string): RedisOptions {
  const q = text.indexOf('?');
  const path = q === -1 ? text : text.slice(0, q);
  const params = new URLSearchParams(q === -1 ? '' : text.slice(q + 1));
  return { path, ...queryOptions(url, params, COMMON_PARAMS) };
}

function serverOptions(url: string, u: URL, tls: boolean): RedisOptions {
  if (u.hostname === '') throw new RedisUrlError(url, 'it names no host');
  const host = u.hostname.replace(/^\[|\]$/g, '');
  const options: RedisOptions = {
    host,
    port: portOf(url, u, REDIS_PORT),
    ...credentials(url, u),
    ...dbOption(url, u.pathname.replace(/^\//, '')),
    ...queryOptions(url, u.searchParams, COMMON_PARAMS),
  };
  // rediss:// is TLS with the host name checked against the certificate, as ioredis does it.
  if (tls) options.tls = { servername: host };
  return options;
}

function sentinelOptions(url: string, text: string, scheme: string): RedisOptions {
  // `new URL` refuses several hosts; the authority is split by hand and each host parsed alone.
  const rest = text.slice(scheme.length + 3);
  const q = rest.indexOf('?');
  const beforeQuery = q === -1 ? rest : rest.slice(0, q);
  const slash = beforeQuery.indexOf('/');
  const authority = slash === -1 ? beforeQuery : beforeQuery.slice(0, slash);
  const path = slash === -1 ? '' : beforeQuery.slice(slash + 1);
  const at = authority.lastIndexOf('@');
  const userinfo = at === -1 ? '' : authority.slice(0, at + 1);
  const hosts = authority.slice(at + 1);
  if (hosts === '') throw new RedisUrlError(url, 'it names no Sentinel host');
  const sentinels = hosts.split(',').map((h) => {
    const u = URL.canParse(`redis://${h}`) ? new URL(`redis://${h}`) : undefined;
    if (u === undefined || u.hostname === '' || h.includes('@') || u.pathname !== '') {
      throw new RedisUrlError(url, `bad Sentinel address ${JSON.stringify(h)}`);
    }
    return { host: u.hostname.replace(/^\[|\]$/g, ''), port: portOf(url, u, SENTINEL_PORT) };
  });
  const [name, db, ...extra] = path.split('/');
  if (name === undefined || name === '') {
    throw new RedisUrlError(url, 'it names no master group: redis+sentinel://host:26379,host:26379/MASTER');
  }
  if (extra.length > 0) throw new RedisUrlError(url, 'the path is /MASTER or /MASTER/DB');
  const options: RedisOptions = {
    sentinels,
    name: safeDecode(name),
    ...credentials(url, parse(url, `redis://${userinfo}x`)),
    ...dbOption(url, db ?? ''),
    ...queryOptions(url, new URLSearchParams(q === -1 ? '' : rest.slice(q + 1)), [
      ...COMMON_PARAMS,
      ...SENTINEL_PARAMS,
    ]),
  };
  if (scheme === 'rediss+sentinel') {
    // ioredis: `sentinelTLS` for the Sentinels, `tls` with `enableTLSForSentinelMode` for the master.
    options.sentinelTLS = {};
    options.tls = {};
    options.enableTLSForSentinelMode = true;
  }
  return options;
}

function portOf(url: string, u: URL, fallback: number): number {
  if (u.port === '') return fallback;
  const port = Number(u.port);
  if (port < 1) throw new RedisUrlError(url, `port ${u.port} is out of range`);
  return port;
}

function credentials(url: string, u: URL): Pick<RedisOptions, 'username' | 'password'> {
  if (u.username === '' && u.password === '') return {};
  try {
    return {
      ...(u.username === '' ? {} : { username: decodeURIComponent(u.username) }),
      ...(u.password === '' ? {} : { password: decodeURIComponent(u.password) }),
    };
  } catch {
    throw new RedisUrlError(url, 'the user or password has a bad percent-encoding');
  }
}

function dbOption(url: string, text: string): Pick<RedisOptions, 'db'> {
  if (text === '') return {};
  if (!/^\d{1,5}$/.test(text)) throw new RedisUrlError(url, `the database must be a number, got ${text}`);
  return { db: Number(text) };
}

type Param = (typeof COMMON_PARAMS)[number] | (typeof SENTINEL_PARAMS)[number];

function queryOptions(url: string, params: URLSearchParams, allowed: readonly Param[]): RedisOptions {
  const options: RedisOptions = {};
  for (const [key, value] of params) {
    if (!(allowed as readonly string[]).includes(key)) {
      throw new RedisUrlError(url, `unknown query parameter ${key} (known: ${allowed.join(', ')})`);
    }
    if (key === 'db') Object.assign(options, dbOption(url, value));
    else if (key === 'family') {
      if (value !== '4' && value !== '6') throw new RedisUrlError(url, `family must be 4 or 6, got ${value}`);
      options.family = Number(value);
    } else if (key === 'username') options.username = value;
    else if (key === 'password') options.password = value;
    else if (key === 'sentinelPassword') options.sentinelPassword = value;
    else if (key === 'sentinelUsername') options.sentinelUsername = value;
  }
  return options;
}
