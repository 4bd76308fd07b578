import { readFileSync } from 'node:fs';
import { parseRate } from './gateway/ratelimit.js';
import { errorMessage } from './shared/errormessage.js';

/**
 * `ptth-proxy serve`'s side of the options table (src/options.ts): each option's value from the
 * command line, the environment (`PTTH_<KEY>`) or a `--config` JSON file, parsed and checked by
 * its row, so `serve --help`, the config file and the environment cannot drift apart.
 *
 * Precedence: command line > environment (`PTTH_<KEY>`) > config file > default.
 */
export {
  OPTIONS,
  SERVE_OPTIONS,
  type ServeKey,
  type ServeOptionSpec,
  type ServeValues,
  type ValueType,
} from './options.js';
import { SERVE_OPTIONS, type ServeKey, type ServeOptionSpec, type ServeValues } from './options.js';

/** `claimRate` -> `PTTH_CLAIM_RATE` (or the spec's own `env`). */
export function envName(key: string): string {
  const spec = SERVE_OPTIONS.find((s) => s.key === key);
  return spec?.env ?? `PTTH_${key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`;
}

export type ConfigValue = string | number | boolean | string[];
/** Values as commander parsed them (or a test gives them), by key. */
export type ServeConfig = { readonly [K in ServeKey]?: ServeValues[K] };

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
      if (!items?.every((i): i is string => typeof i === 'string')) {
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
      if (typeof raw !== 'string' || raw === '')
        throw new TypeError(`expected a non-empty string, got ${JSON.stringify(raw)}`);
      return raw;
    }
  }
}

/** Where each resolved value came from, for `--help`-style diagnostics and tests. */
export type Source = 'cli' | 'env' | 'config' | 'default';

export interface Resolved {
  readonly values: ServeValues;
  readonly sources: Record<ServeKey, Source>;
}

const byKey: ReadonlyMap<string, ServeOptionSpec> = new Map(SERVE_OPTIONS.map((s) => [s.key, s]));

/** The options a config file holds, parsed; throws a TypeError naming the file (and the key) at fault. */
function readConfigFile(path: string, readFile: (path: string) => string): Partial<Record<ServeKey, ConfigValue>> {
  let json: unknown;
  try {
    // Some editors start a UTF-8 file with a byte order mark, which JSON.parse refuses.
    json = JSON.parse(readFile(path).replace(/^\uFEFF/, ''));
  } catch (e) {
    throw new TypeError(`config file ${path}: ${errorMessage(e)}`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new TypeError(`config file ${path}: expected a JSON object of options`);
  }
  const file: Partial<Record<ServeKey, ConfigValue>> = {};
  for (const [key, raw] of Object.entries(json)) {
    const spec = byKey.get(key);
    if (!spec || spec.key === 'config') {
      const known = SERVE_OPTIONS.filter((s) => s.key !== 'config').map((s) => s.key);
      throw new TypeError(`config file ${path}: unknown option ${JSON.stringify(key)} (known: ${known.join(', ')})`);
    }
    try {
      file[spec.key] = parseValue(spec, raw);
    } catch (e) {
      throw new TypeError(`config file ${path}: ${key}: ${errorMessage(e)}`);
    }
  }
  return file;
}

/**
 * Merges the command line (values commander parsed, with their sources), the environment and the
 * config file. Throws a TypeError naming the variable, key or file at fault.
 */
export function resolveServeConfig(
  cli: ServeConfig,
  cliSources: Readonly<Record<string, string | undefined>>,
  env: NodeJS.ProcessEnv = process.env,
  readFile: (path: string) => string = (p) => readFileSync(p, 'utf8'),
): Resolved {
  const fromEnv = (spec: ServeOptionSpec): ConfigValue | undefined => {
    const name = envName(spec.key);
    const raw = env[name];
    if (raw === undefined || raw === '') return undefined;
    try {
      return parseValue(spec, raw);
    } catch (e) {
      throw new TypeError(`${name}: ${errorMessage(e)}`);
    }
  };
  const onCli = (key: ServeKey): boolean => cliSources[key] === 'cli';

  const configSpec = byKey.get('config');
  const envConfig = configSpec && fromEnv(configSpec);
  const configPath = onCli('config') ? cli.config : typeof envConfig === 'string' ? envConfig : undefined;
  const file = configPath === undefined ? {} : readConfigFile(configPath, readFile);

  const values: Partial<Record<ServeKey, ConfigValue>> = {};
  const sources: Partial<Record<ServeKey, Source>> = {};
  for (const spec of SERVE_OPTIONS) {
    const k = spec.key;
    const given = cli[k];
    let v: ConfigValue | undefined;
    let source: Source = 'default';
    const env = onCli(k) && given !== undefined ? undefined : fromEnv(spec);
    if (onCli(k) && given !== undefined) {
      v = given;
      source = 'cli';
    } else if (env !== undefined) {
      v = env;
      source = 'env';
    } else if (file[k] !== undefined) {
      v = file[k];
      source = 'config';
    } else if (spec.default !== undefined) {
      v = typeof spec.default === 'object' ? [...spec.default] : spec.default;
    }
    if (v !== undefined) values[k] = v;
    sources[k] = source;
  }
  if (configPath !== undefined) values.config = configPath;
  // Every value came through its own row's parser (or is the row's default), so it has the row's type;
  // and every key has a source, set in the loop above.
  return { values: values as ServeValues, sources: sources as Record<ServeKey, Source> };
}
