import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { readFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createAdminServer } from './gateway/endpoints.js';
import { isLoopback } from './gateway/ratelimit.js';
import { loadAccessConfig } from './routes/access.js';
import { attachLogger, createLogger, type LogDrops, type LogLevel } from './log.js';
import { createGateway, type Gateway, type GatewayOptions, type TlsOptions } from './gateway/server.js';
import { envName, parseValue, resolveServeConfig, SERVE_OPTIONS, type ServeConfig, type ServeOptionSpec } from './config.js';
import { listen, ClaimError } from './client/node.js';
import { createKeyEntry } from './routes/access.js';
import { createLocalProxy, parseTarget } from './client/proxy.js';
import { canSplice, splice, SPLICE_CONNECTIONS } from './client/splice.js';
import { startInspector, type Inspector } from './client/inspect.js';
import { formatLine, watchEvents, type EventWatch } from './client/requestlog.js';
import { claimMessage } from './client/messages.js';
import { VERSION } from './version.js';

/** The only module that prints. */
function int(min: number) {
  return (value: string): number => {
    if (!/^\d+$/.test(value) || Number(value) < min) throw new InvalidArgumentError(`expected a whole number >= ${min}`);
    return Number(value);
  };
}

/**
 * connect's request lines, written together once per turn of the event loop: under load many
 * arrive per turn (the gateway batches its event stream the same way), and a write per line was a
 * system call per request. Every other line writes them out first, and so does the process's exit.
 */
let requestLines = '';
function requestLine(line: string): void {
  if (requestLines === '') setImmediate(flushRequestLines);
  requestLines += `${line}\n`;
}
function flushRequestLines(): void {
  if (requestLines === '') return;
  const text = requestLines;
  requestLines = '';
  process.stdout.write(text);
}
process.on('exit', flushRequestLines);

/** How long `connect`'s pool may be empty before it says that it lost the gateway. */
const OFFLINE_GRACE_MS = 1_000;

const out = (line: string): void => {
  flushRequestLines();
  process.stdout.write(`${line}\n`);
};
const err = (line: string): void => {
  flushRequestLines();
  process.stderr.write(`${line}\n`);
};
const time = (): string => new Date().toISOString().slice(11, 19);

const program = new Command()
  .name('ptth-proxy')
  .description('Reverse HTTP gateway: programs with only an HTTP client claim a public hostname and serve HTTP through it.')
  .version(VERSION)
  // Usage errors (a bad value, an unknown option, a missing argument) exit 2, as the README says, where
  // commander's own exit is 1: it throws instead of exiting, here and in every subcommand added below
  // (they inherit the setting), and the catch at the end maps the code.
  .exitOverride();

const serve = program
  .command('serve')
  .description(
    'run the gateway: one port for visitors, claims and the status page.\n' +
      'Every option can also come from the environment (PTTH_<OPTION>, e.g. PTTH_CLAIM_RATE=30/m) or a --config JSON file;\n' +
      'the command line wins over the environment, which wins over the file. SIGHUP reloads --keys and the TLS files.',
  );
for (const spec of SERVE_OPTIONS) serve.addOption(commanderOption(spec));
serve.action(async (_o: Record<string, unknown>, command: Command) => {
  const cliValues = command.opts<ServeConfig>();
  const sources: Record<string, string | undefined> = {};
  for (const spec of SERVE_OPTIONS) sources[spec.key] = command.getOptionValueSource(spec.key);
  let config: ServeConfig;
  try {
    config = resolveServeConfig(cliValues, sources).values;
  } catch (e) {
    err(`ptth-proxy serve: ${(e as Error).message}`);
    process.exit(2);
  }
  await runServe(config);
});

/** Commander's view of one row of the options table; defaults live in the table, not in commander. */
function commanderOption(spec: ServeOptionSpec): Option {
  const negated = spec.type === 'bool' && spec.default === true;
  const long = negated ? spec.flag.replace(/^--/, '--no-') : spec.flag;
  const flags = `${spec.short ? `${spec.short}, ` : ''}${long}${spec.arg ? ` ${spec.arg}` : ''}`;
  const extra: string[] = [];
  if (spec.default !== undefined && !negated && spec.type !== 'bool') extra.push(`default: ${String(spec.default)}`);
  if (spec.key !== 'config') extra.push(`env ${envName(spec.key)}${spec.type === 'bool' ? '=true|false' : ''}`);
  else extra.push(`env ${envName(spec.key)}`);
  const option = new Option(flags, `${spec.description} (${extra.join('; ')})`);
  if (spec.arg) {
    option.argParser((value: string) => {
      try {
        return parseValue(spec, value);
      } catch (e) {
        throw new InvalidArgumentError((e as Error).message);
      }
    });
  }
  if (spec.choices) option.choices(spec.choices);
  return option;
}

function readPem(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new Error(`cannot read ${what} ${path}: ${(e as Error).message}`);
  }
}

async function runServe(c: ServeConfig): Promise<void> {
  const num = (k: string): number => c[k] as number;
  const options: GatewayOptions = {
    domain: c['domain'] as string,
    defaultLease: num('defaultLease'),
    maxLease: num('maxLease'),
    maxChannels: num('maxChannels'),
    responseTimeout: num('responseTimeout'),
    queueLimit: num('queueLimit'),
    queueTimeout: num('queueTimeout'),
    reconnectWait: num('reconnectWait'),
    claimTimeout: num('claimTimeout'),
    headersTimeout: num('headersTimeout'),
    keepAliveTimeout: num('keepAliveTimeout'),
    idleTimeout: num('idleTimeout'),
    maxHeaderSize: num('maxHeaderSize'),
    maxHeaders: num('maxHeaders'),
    tcpKeepAlive: num('tcpKeepAlive'),
    claimRate: c['claimRate'] as string,
    requestRate: c['requestRate'] as string,
    limitLoopback: c['limitLoopback'] === true,
    maxConnectionsPerAddress: num('maxConnectionsPerAddress'),
    maxNamesPerAddress: num('maxNamesPerAddress'),
    maxChannelsPerAddress: num('maxChannelsPerAddress'),
    http2: c['http2'] !== false,
    cookieGuard: c['cookieGuard'] !== false,
    maxStreams: num('maxStreams'),
    pingInterval: num('pingInterval'),
    pingTimeout: num('pingTimeout'),
    pollTimeout: num('pollTimeout'),
    bufferLimit: num('bufferLimit'),
    cometIdleTimeout: num('cometIdleTimeout'),
    wsMaxStreams: num('wsMaxStreams'),
    wsWindow: num('wsWindow'),
    wsPingInterval: num('wsPingInterval'),
    statusList: c['statusList'] as 'loopback' | 'everyone' | 'nobody',
  };
  if (c['publicUrl'] !== undefined) options.publicUrl = c['publicUrl'] as string;
  if (c['replyTimeout'] !== undefined) options.replyTimeout = num('replyTimeout');
  const certPath = c['tlsCert'] as string | undefined;
  const keyPath = c['tlsKey'] as string | undefined;
  const loadTls = (): TlsOptions | undefined => {
    if (certPath === undefined && keyPath === undefined) return undefined;
    if (certPath === undefined || keyPath === undefined) throw new Error('--tls-cert and --tls-key go together: give both or neither');
    return { cert: readPem(certPath, 'TLS certificate'), key: readPem(keyPath, 'TLS key') };
  };
  const keysFile = c['keys'] as string | undefined;
  const reserved = (c['reserved'] as string[] | undefined) ?? [];
  const adminPort = c['adminPort'] as number | undefined;
  options.metrics = c['metrics'] !== false;
  if (adminPort !== undefined) options.metricsOnGateway = false;
  if (reserved.length > 0) options.reserved = reserved;
  let gateway: Gateway;
  try {
    const tls = loadTls();
    if (tls) options.tls = tls;
    const access = await loadAccessConfig({ file: keysFile, env: process.env });
    if (access) options.access = access;
    gateway = createGateway(options);
  } catch (e) {
    err(`ptth-proxy serve: ${(e as Error).message}`);
    process.exit(2);
  }
  const format = c['logFormat'] as string;
  const drops: LogDrops = { lines: 0 };
  const logger = createLogger({
    level: (c['quiet'] === true ? 'warn' : c['verbose'] === true ? 'debug' : c['logLevel']) as LogLevel,
    ...(format === 'auto' ? {} : { pretty: format === 'pretty' }),
    bufferLimit: num('logBuffer'),
    drops,
  });
  gateway.metrics?.countLogDrops(() => drops.lines);
  let addr;
  try {
    addr = await gateway.listen(num('port'), c['host'] as string | undefined);
  } catch (e) {
    err(`ptth-proxy: cannot listen on port ${String(c['port'])}: ${(e as Error).message}`);
    process.exit(1);
  }
  // One line per visitor request (an access log) at info; --quiet keeps only the 5xx ones (warn).
  // Attached once listening, and the gateway's `listening` event replayed to it after the start-up lines
  // below: the logger writes asynchronously (fs.write on libuv's thread pool), the start-up lines synchronously,
  // so a `listening` line logged as the gateway started could land before or after them, as it pleased.
  attachLogger(gateway, logger, { requests: true });
  let admin: Server | undefined;
  if (adminPort !== undefined) {
    admin = createAdminServer(gateway);
    const adminHost = c['adminHost'] as string;
    try {
      await new Promise<void>((resolve, reject) => {
        admin?.once('error', reject);
        admin?.listen(adminPort, adminHost, () => resolve());
      });
    } catch (e) {
      err(`ptth-proxy: cannot listen on admin port ${adminPort}: ${(e as Error).message}`);
      process.exit(1);
    }
  }
  const port = addr.port;
  const scheme = gateway.secure ? 'https' : 'http';
  const defaultPort = gateway.secure ? 443 : 80;
  const domain = gateway.settings.domain;
  const origin = gateway.settings.publicUrl?.origin ?? `${scheme}://${domain}${port === defaultPort ? '' : `:${port}`}`;
  const appUrl = gateway.settings.publicUrl
    ? `${gateway.settings.publicUrl.protocol}//NAME.${gateway.settings.publicUrl.host}/`
    : `${scheme}://NAME.${domain}${port === defaultPort ? '' : `:${port}`}/`;
  out(`ptth-proxy ${VERSION} gateway listening on ${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${port}${gateway.secure ? ' (HTTPS)' : ''}`);
  out(`  status page:   ${origin}/`);
  out(`  apps served at ${appUrl}`);
  out(`  expose an app: npx ptth-proxy connect 3000 --gateway ${origin}`);
  if (admin) {
    const a = admin.address() as AddressInfo;
    out(`  admin:         http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}/metrics, /healthz, /readyz`);
  }
  out(gateway.access.open ? '  access:        open (no keys: first come, first served)' : '  access:        access keys required to claim');
  if (!isLoopback(addr.address) && gateway.access.open) {
    err(
      `WARNING: this gateway is reachable from other machines (bound to ${addr.address}) and has no access keys:\n` +
        '  anyone who can reach it may claim any free name and serve content under your domain.\n' +
        '  Give it --keys FILE (see `ptth-proxy key`), or bind it to 127.0.0.1 with --host.',
    );
  }
  gateway.emit('listening', addr);
  process.on('SIGHUP', () => {
    try {
      const tls = loadTls();
      if (tls) {
        gateway.setTls(tls);
        logger.info({ event: 'reload', what: 'tls' }, 'SIGHUP: reloaded the TLS certificate and key');
      }
    } catch (e) {
      logger.error({ event: 'reload', what: 'tls' }, `SIGHUP: TLS reload failed, keeping the old certificate: ${(e as Error).message}`);
    }
    if (keysFile !== undefined) {
      loadAccessConfig({ file: keysFile }).then(
        (config) => {
          gateway.setAccess(config, keysFile);
          logger.info({ event: 'reload', what: 'keys', keys: config?.keys?.length ?? 0 }, `SIGHUP: reloaded the access keys from ${keysFile}`);
          if (gateway.access.open && !isLoopback(addr.address)) {
            logger.warn({ event: 'reload', what: 'keys' }, `SIGHUP: ${keysFile} has no "keys": this gateway is now open, anyone who can reach it may claim any free name`);
          }
        },
        (e: unknown) => logger.error({ event: 'reload', what: 'keys' }, `SIGHUP: keys reload failed, keeping the old keys: ${(e as Error).message}`),
      );
    }
  });
  let stopping = false;
  const grace = num('shutdownGrace');
  const stop = (signal: string): void => {
    if (stopping) process.exit(1);
    stopping = true;
    logger.info({ event: 'shutdown', signal, graceMs: grace }, `${signal}: closing (in-flight requests get up to ${(grace / 1000).toFixed(1)} s)`);
    void gateway.close(grace).then(() => {
      admin?.close();
      logger.info({ event: 'shutdown', signal }, 'closed');
      // Exit once the log is written out: process.exit's own synchronous flush could land before a batch
      // still being written in the background, or lose it.
      logger.flush(() => process.exit(0));
    });
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

program
  .command('connect')
  .description('expose a local HTTP service through a gateway, e.g. `ptth-proxy connect 3000`')
  .argument('<target>', 'local port, host:port or URL of the service')
  .addOption(new Option('-g, --gateway <url>', 'gateway URL').env('PTTH_GATEWAY').default('http://localhost:8080'))
  .option('-n, --name <name>', 'name to claim (default: the gateway picks one)')
  .option('-t, --token <token>', 'secret that holds the name across restarts (default: random per run)')
  .option('-l, --lease <seconds>', 'how long the gateway keeps the name while disconnected', int(0))
  .option(
    '-c, --connections <n>',
    `most reversed HTTP/1.1 connections (default: ${SPLICE_CONNECTIONS}, the pool grows to it with demand; 4, kept open, with --rewrite-host or a base path over --http1)`,
    int(1),
  )
  .option('--rewrite-host', 'send the local service its own Host instead of the public one (relays requests one by one instead of splicing)')
  .option('--http1', 'speak only PTTH/1.0 (reversed HTTP/1.1), even when the gateway offers HTTP/2 (the default unless --rewrite-host or a base path)')
  .option('--http2', 'relay requests over one reversed HTTP/2 connection instead of splicing reversed HTTP/1.1 connections')
  // Tests: how long a spliced connection may sit idle before the pool shrinks (ms).
  .addOption(new Option('--splice-idle <ms>').argParser(int(1)).hideHelp())
  // Tests only: how long the pool may be empty before connect says it lost the gateway.
  .addOption(new Option('--offline-grace <ms>').argParser(int(0)).hideHelp())
  .option('-q, --quiet', 'do not print a line per request')
  .addOption(
    new Option(
      '--inspect [port]',
      'serve a page on 127.0.0.1 listing recent requests, with replay (default port 4040; 0: any free port)',
    )
      .argParser((value: string) => {
        if (!/^\d+$/.test(value) || Number(value) > 65535) {
          throw new InvalidArgumentError('expected a port number from 0 to 65535');
        }
        return Number(value);
      }),
  )
  .addOption(new Option('--insecure', 'do not verify the gateway\'s TLS certificate'))
  // .env() rather than a default: --help must not print the key.
  .addOption(new Option('--key <key>', 'access key, for gateways that require one (ptth-proxy key makes them)').env('PTTH_KEY'))
  .action(async (spec: string, o: Record<string, unknown>) => {
    let target: URL;
    try {
      target = parseTarget(spec);
    } catch (e) {
      err(`ptth-proxy connect: ${(e as Error).message}`);
      process.exit(2);
    }
    if (o['http1'] === true && o['http2'] === true) {
      err('ptth-proxy connect: --http1 and --http2 exclude each other');
      process.exit(2);
    }
    const shown = `${target.origin}${target.pathname === '/' ? '' : target.pathname}`;
    // One line when the local service stops answering, one when it is back: not one per request.
    let localDown: string | undefined;
    const onReach = (e: NodeJS.ErrnoException | undefined): void => {
      if (e && localDown === undefined) {
        localDown = e.code ?? e.message;
        err(`${time()} cannot reach the local service ${shown} (${localDown}): visitors get 502 until it is back`);
      } else if (!e && localDown !== undefined) {
        localDown = undefined;
        out(`${time()} the local service ${shown} answers again`);
      }
    };
    // Splicing (the default) joins each reversed HTTP/1.1 connection to one local connection byte
    // for byte; whatever must see or change a request (--rewrite-host, a base path) relays them one
    // by one, over reversed HTTP/2 unless --http1 (or --http2 asks for that relay outright).
    const spliced = o['rewriteHost'] !== true && o['http2'] !== true && canSplice(target);
    const gatewayUrl = o['gateway'] as string;
    let inspector: Inspector | undefined;
    if (o['inspect'] !== undefined) {
      const port = o['inspect'] === true ? 4040 : (o['inspect'] as number);
      try {
        inspector = await startInspector(port, { target, rewriteHost: o['rewriteHost'] === true });
      } catch (e) {
        err(`ptth-proxy connect: cannot serve the inspector on 127.0.0.1:${port}: ${(e as Error).message}`);
        process.exit(1);
      }
    }
    let tunnel;
    try {
      const options = {
        gateway: gatewayUrl,
        ...(o['connections'] !== undefined ? { connections: o['connections'] as number } : {}),
        ...(o['name'] !== undefined ? { name: o['name'] as string } : {}),
        ...(o['token'] !== undefined ? { token: o['token'] as string } : {}),
        ...(o['lease'] !== undefined ? { lease: o['lease'] as number } : {}),
        ...(o['insecure'] === true ? { rejectUnauthorized: false } : {}),
        ...(typeof o['key'] === 'string' && o['key'] !== '' ? { key: o['key'] } : {}),
      };
      tunnel = spliced
        ? splice(target, options, { onReach, ...(o['spliceIdle'] !== undefined ? { idleTimeout: o['spliceIdle'] as number } : {}) })
        : listen(createLocalProxy(target, { rewriteHost: o['rewriteHost'] === true, onReach }), {
            ...options,
            ...(o['http1'] === true ? { http1: true } : {}),
          });
    } catch (e) {
      err(`ptth-proxy connect: ${(e as Error).message}`);
      process.exit(2);
    }
    const quiet = o['quiet'] === true;
    let events: EventWatch | undefined;
    let eventsOf: string | undefined;
    let told = false;
    const watch = (): void => {
      if ((quiet && !inspector) || tunnel.privateUrl === undefined) return;
      // After a gateway restart the claim is a new registration, with a new private URL.
      const privateUrl = new URL(tunnel.privateUrl, gatewayUrl).href;
      if (events && eventsOf === privateUrl) {
        events.start();
        return;
      }
      events?.close();
      eventsOf = privateUrl;
      events = watchEvents(privateUrl, {
        detail: inspector !== undefined,
        ...(o['insecure'] === true ? { rejectUnauthorized: false } : {}),
        retry: () => tunnel.online,
        onRequest: (e) => {
          if (!quiet) requestLine(formatLine(e));
          inspector?.add(e);
        },
        onDrop: (reason, delay) => {
          // Once per run: a gateway without the event stream (404) would otherwise say it forever.
          if (delay === undefined && !told && tunnel.online) {
            told = true;
            err(`${time()} no request lines${inspector ? ' and no inspector' : ''}: ${reason} (a gateway without one?)`);
          }
        },
      });
      events.start();
    };
    let wasOnline = false;
    // A pool that is empty for a moment is not a lost gateway: when every spliced channel is busy
    // and their visitors leave (a load test stopping), the gateway closes them all and fresh ones
    // come at once. The line waits OFFLINE_GRACE_MS, or for the first failed dial.
    const grace = (o['offlineGrace'] as number | undefined) ?? OFFLINE_GRACE_MS;
    let lostTimer: NodeJS.Timeout | undefined;
    let saidLost = false;
    const sayLost = (): void => {
      if (lostTimer === undefined) return;
      clearTimeout(lostTimer);
      lostTimer = undefined;
      saidLost = true;
      out(`${time()} lost the gateway; reconnecting`);
    };
    tunnel.on('online', (url) => {
      if (!wasOnline) {
        const over = tunnel.protocol === 'h2' ? 'reversed HTTP/2' : spliced ? 'reversed HTTP/1.1, spliced' : 'reversed HTTP/1.1';
        out(`Forwarding ${url} -> ${shown} (${over})`);
        if (inspector) out(`Inspector   ${inspector.url}`);
      } else {
        if (lostTimer !== undefined) clearTimeout(lostTimer);
        lostTimer = undefined;
        if (saidLost) out(`${time()} back online`);
      }
      saidLost = false;
      wasOnline = true;
      watch();
    });
    tunnel.on('offline', () => {
      lostTimer = setTimeout(sayLost, grace);
      lostTimer.unref();
    });
    // Several connections fail together (HTTP/2 plus the one for WebSocket upgrades, or --http1's
    // pool): one line per retry, not one per connection.
    let quietUntil = 0;
    let lastSaid = '';
    tunnel.on('reconnecting', ({ delay, error }) => {
      if (tunnel.online) return;
      sayLost();
      const now = Date.now();
      if (error.message === lastSaid && now < quietUntil) return;
      lastSaid = error.message;
      quietUntil = now + delay;
      err(`${time()} cannot reach ${gatewayUrl}: ${error.message}; retrying in ${(delay / 1000).toFixed(1)} s`);
    });
    tunnel.on('error', (e) => {
      err(`ptth-proxy connect: ${claimMessage(e)}`);
      process.exit(e instanceof ClaimError ? 3 : 1);
    });
    let stopping = false;
    const stop = (): void => {
      if (stopping) process.exit(1);
      stopping = true;
      const name = tunnel.name ?? 'the name';
      out(`${time()} releasing ${name}, closing (requests in flight get up to 3 s; Ctrl-C again to quit now)`);
      events?.close();
      void Promise.all([tunnel.close({ graceMs: 3_000 }), inspector?.close()]).then(() => {
        out(`${time()} released ${name}; bye`);
        process.exit(0);
      });
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });

program
  .command('key')
  .description('make a new access key: prints the key (for the app) and its entry for the gateway\'s keys file')
  .option('--id <id>', 'the key\'s id in logs and events (default: key- and 8 random hex digits)')
  .option('--names <patterns>', 'comma-separated names the key may claim: *, a prefix such as team-*, or exact names', '*')
  .option('--max-names <n>', 'names the key may hold at once (default: no limit)', int(1))
  .option('--max-channels <n>', 'channels the key may hold at once across its names (default: no limit)', int(1))
  .action((o: Record<string, unknown>) => {
    let made;
    try {
      made = createKeyEntry({
        id: o['id'] as string | undefined,
        names: String(o['names']).split(',').map((n) => n.trim()).filter((n) => n !== ''),
        maxNames: o['maxNames'] as number | undefined,
        maxChannels: o['maxChannels'] as number | undefined,
      });
    } catch (e) {
      err(`ptth-proxy key: ${(e as Error).message}`);
      process.exit(2);
    }
    out('Access key (give it to the app: ptth-proxy connect --key KEY, or PTTH_KEY; the gateway keeps only its hash):');
    out(`  ${made.key}`);
    out('Entry for the "keys" array of the gateway\'s keys file (serve --keys FILE, or PTTH_KEYS):');
    out(`  ${JSON.stringify(made.entry)}`);
  });

program.parseAsync().catch((e: unknown) => {
  // Commander has printed its message already; --help and --version come here too, with exit code 0.
  if (e instanceof CommanderError) process.exit(e.exitCode === 0 ? 0 : 2);
  err(`ptth-proxy: ${(e as Error).message}`);
  process.exit(1);
});
