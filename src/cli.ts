import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { readFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createAdminServer } from './gateway/endpoints.js';
import { isLoopback } from './gateway/ratelimit.js';
import { loadAccessConfig } from './table/access.js';
import { attachLogger, createLogger, type LogDrops, type Logger } from './log.js';
import { createGateway, type Gateway, type GatewayOptions, type TlsOptions } from './gateway/server.js';
import {
  envName,
  parseValue,
  resolveServeConfig,
  SERVE_OPTIONS,
  type ServeConfig,
  type ServeOptionSpec,
  type ServeValues,
} from './config.js';
import { listen, ClaimError, type Tunnel } from './client/node.js';
import { createKeyEntry } from './table/access.js';
import { createLocalProxy, parseTarget } from './client/proxy.js';
import { canSplice, splice, SPLICE_CONNECTIONS } from './client/splice.js';
import { startInspector, type Inspector } from './client/inspect.js';
import { formatLine, watchEvents, type EventWatch } from './client/requestlog.js';
import { claimMessage } from './client/messages.js';
import { createClusterNode, type ClusterNode, type ClusterOptions } from './cluster/node.js';
import { redactRedisUrl, redisOptions } from './cluster/redisurl.js';
import { onStopRequest, reportReady, WorkerPool, workerSlot, type WorkerSlot } from './cluster/workers.js';
import { OptionError } from './options.js';
import { VERSION } from './version.js';
import { errorMessage } from './shared/errormessage.js';

/** The only module that prints. */
function int(min: number) {
  return (value: string): number => {
    if (!/^\d+$/.test(value) || Number(value) < min)
      throw new InvalidArgumentError(`expected a whole number >= ${min}`);
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
  .description(
    'Reverse HTTP gateway: programs with only an HTTP client claim a public hostname and serve HTTP through it.',
  )
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
serve.action(async (_o: unknown, command: Command) => {
  const sources: Record<string, string | undefined> = {};
  for (const spec of SERVE_OPTIONS) sources[spec.key] = command.getOptionValueSource(spec.key);
  let config: ServeValues;
  let cluster: ServeCluster | undefined;
  // In a worker of `serve --workers`: the primary checked the same options before it forked.
  const slot = workerSlot();
  try {
    config = resolveServeConfig(command.opts<ServeConfig>(), sources).values;
    cluster = clusterSettings(config, slot);
  } catch (e) {
    err(`ptth-proxy serve: ${errorMessage(e)}`);
    process.exit(2);
  }
  if (cluster && config.workers > 1 && slot === undefined) runWorkers(config, cluster);
  else await runServe(config, cluster, slot);
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
        throw new InvalidArgumentError(errorMessage(e));
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
    throw new Error(`cannot read ${what} ${path}: ${errorMessage(e)}`);
  }
}

/** The library's options for `serve`'s values: the same names, with the command line's few extras spelled out. */
function gatewayOptions(c: ServeValues): GatewayOptions {
  return {
    domain: c.domain,
    defaultLease: c.defaultLease,
    maxLease: c.maxLease,
    maxChannels: c.maxChannels,
    responseTimeout: c.responseTimeout,
    queueLimit: c.queueLimit,
    queueTimeout: c.queueTimeout,
    reconnectWait: c.reconnectWait,
    claimTimeout: c.claimTimeout,
    headersTimeout: c.headersTimeout,
    keepAliveTimeout: c.keepAliveTimeout,
    idleTimeout: c.idleTimeout,
    maxHeaderSize: c.maxHeaderSize,
    maxHeaders: c.maxHeaders,
    tcpKeepAlive: c.tcpKeepAlive,
    claimRate: c.claimRate,
    requestRate: c.requestRate,
    limitLoopback: c.limitLoopback,
    maxConnectionsPerAddress: c.maxConnectionsPerAddress,
    maxNamesPerAddress: c.maxNamesPerAddress,
    maxChannelsPerAddress: c.maxChannelsPerAddress,
    http2: c.http2,
    cookieGuard: c.cookieGuard,
    maxStreams: c.maxStreams,
    pingInterval: c.pingInterval,
    pingTimeout: c.pingTimeout,
    pollTimeout: c.pollTimeout,
    bufferLimit: c.bufferLimit,
    cometIdleTimeout: c.cometIdleTimeout,
    cometPipelineCount: c.cometPipelineCount,
    cometPipelineBytes: c.cometPipelineBytes,
    wsMaxStreams: c.wsMaxStreams,
    wsWindow: c.wsWindow,
    wsPingInterval: c.wsPingInterval,
    statusList: c.statusList,
    relay: c.relay,
    relayMaxRequest: c.relayMaxRequest,
    relayMaxResponse: c.relayMaxResponse,
    relayConnectTimeout: c.relayConnectTimeout,
    relayTimeout: c.relayTimeout,
    relayMaxPerKey: c.relayMaxPerKey,
    urls: c.urls,
    ...(c.publicUrl !== undefined ? { publicUrl: c.publicUrl } : {}),
    ...(c.replyTimeout !== undefined ? { replyTimeout: c.replyTimeout } : {}),
    metrics: c.metrics,
    // With an admin port, /metrics is served there only.
    ...(c.adminPort !== undefined ? { metricsOnGateway: false } : {}),
    ...(c.reserved !== undefined && c.reserved.length > 0 ? { reserved: c.reserved } : {}),
  };
}

/** Reads --tls-cert and --tls-key (at start-up and on SIGHUP); undefined without them. */
function tlsLoader(c: ServeValues): () => TlsOptions | undefined {
  const certPath = c.tlsCert;
  const keyPath = c.tlsKey;
  return () => {
    if (certPath === undefined && keyPath === undefined) return undefined;
    if (certPath === undefined || keyPath === undefined)
      throw new Error('--tls-cert and --tls-key go together: give both or neither');
    return { cert: readPem(certPath, 'TLS certificate'), key: readPem(keyPath, 'TLS key') };
  };
}

/**
 * The gateway for `serve`'s values, a node of the cluster with --redis; a bad TLS file, keys file
 * or option ends the process with exit code 2, a Redis it cannot reach with exit code 1.
 */
async function createServeGateway(
  c: ServeValues,
  loadTls: () => TlsOptions | undefined,
  cluster: ServeCluster | undefined,
): Promise<{ gateway: Gateway; node: ClusterNode | undefined }> {
  const options = gatewayOptions(c);
  try {
    const tls = loadTls();
    if (tls) options.tls = tls;
    const access = await loadAccessConfig({ file: c.keys, env: process.env });
    if (access) options.access = access;
    if (!cluster) return { gateway: createGateway(options), node: undefined };
  } catch (e) {
    err(`ptth-proxy serve: ${errorMessage(e)}`);
    process.exit(2);
  }
  try {
    const node = await createClusterNode(options, cluster.options);
    return { gateway: node.gateway, node };
  } catch (e) {
    if (e instanceof OptionError) {
      err(`ptth-proxy serve: ${errorMessage(e)}`);
      process.exit(2);
    }
    err(`ptth-proxy serve: cannot join the cluster in Redis ${cluster.shown}: ${errorMessage(e)}`);
    process.exit(1);
  }
}

/** Binds the admin port (--admin-port) when asked to; a port it cannot bind ends the process with exit code 1. */
async function listenAdmin(
  gateway: Gateway,
  c: ServeValues,
  slot: WorkerSlot | undefined,
): Promise<Server | undefined> {
  if (c.adminPort === undefined) return undefined;
  // With --workers, worker N takes --admin-port + N - 1 of its own (exclusive: node:cluster would
  // otherwise share one port round robin, and each scrape would get some worker's numbers).
  const adminPort = slot === undefined || c.adminPort === 0 ? c.adminPort : c.adminPort + slot.index - 1;
  const admin = createAdminServer(gateway);
  try {
    await new Promise<void>((resolve, reject) => {
      admin.once('error', reject);
      admin.listen({ port: adminPort, host: c.adminHost, exclusive: slot !== undefined }, () => resolve());
    });
  } catch (e) {
    err(`ptth-proxy: cannot listen on admin port ${adminPort}: ${errorMessage(e)}`);
    process.exit(1);
  }
  return admin;
}

const hostPort = (a: AddressInfo): string => `${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;

/** The start-up lines: where the gateway listens, where apps are served, how to connect one, the cluster it joined. */
function printStartup(
  gateway: Gateway,
  addr: AddressInfo,
  admin: Server | undefined,
  joined: string | undefined,
): void {
  const port = addr.port;
  const scheme = gateway.secure ? 'https' : 'http';
  const portSuffix = port === (gateway.secure ? 443 : 80) ? '' : `:${port}`;
  const { domain, publicUrl, urls } = gateway.settings;
  const origin = publicUrl?.origin ?? `${scheme}://${domain}${portSuffix}`;
  const hostUrl = publicUrl
    ? `${publicUrl.protocol}//NAME.${publicUrl.host}/`
    : `${scheme}://NAME.${domain}${portSuffix}/`;
  const pathUrl = `${origin}/NAME/`;
  const appUrl = urls === 'host' ? hostUrl : urls === 'path' ? pathUrl : `${hostUrl} and ${pathUrl}`;
  out(`ptth-proxy ${VERSION} gateway listening on ${hostPort(addr)}${gateway.secure ? ' (HTTPS)' : ''}`);
  out(`  status page:   ${origin}/`);
  out(`  apps served at ${appUrl}`);
  out(`  expose an app: npx ptth-proxy connect 3000 --gateway ${origin}`);
  if (admin) out(`  admin:         http://${hostPort(admin.address() as AddressInfo)}/metrics, /healthz, /readyz`);
  if (joined !== undefined) out(`  cluster node:  ${joined}`);
  out(
    gateway.access.open
      ? '  access:        open (no keys: first come, first served)'
      : '  access:        access keys required to claim',
  );
  if (urls !== 'host') {
    const who = urls === 'path' ? 'every app shares' : 'apps reached at their path URLs share';
    err(
      `WARNING: apps are served at paths of one origin (--urls ${urls}): ${who} ${origin} in the browser,\n` +
        "  so any app can read the others' cookies and storage. Use --urls host for apps that do not trust each other.",
    );
  }
  if (!isLoopback(addr.address) && gateway.access.open) {
    err(
      `WARNING: this gateway is reachable from other machines (bound to ${addr.address}) and has no access keys:\n` +
        '  anyone who can reach it may claim any free name and serve content under your domain.\n' +
        '  Give it --keys FILE (see `ptth-proxy key`), or bind it to 127.0.0.1 with --host.',
    );
  }
}

/** SIGHUP reloads the TLS files and the keys file; a file that does not load keeps the old one. */
function reloadOnSighup(
  gateway: Gateway,
  logger: Logger,
  loadTls: () => TlsOptions | undefined,
  keysFile: string | undefined,
  addr: AddressInfo,
): void {
  process.on('SIGHUP', () => {
    try {
      const tls = loadTls();
      if (tls) {
        gateway.setTls(tls);
        logger.info({ event: 'reload', what: 'tls' }, 'SIGHUP: reloaded the TLS certificate and key');
      }
    } catch (e) {
      logger.error(
        { event: 'reload', what: 'tls' },
        `SIGHUP: TLS reload failed, keeping the old certificate: ${errorMessage(e)}`,
      );
    }
    if (keysFile === undefined) return;
    loadAccessConfig({ file: keysFile }).then(
      (config) => {
        gateway.setAccess(config, keysFile);
        logger.info(
          { event: 'reload', what: 'keys', keys: config?.keys?.length ?? 0 },
          `SIGHUP: reloaded the access keys from ${keysFile}`,
        );
        if (gateway.access.open && !isLoopback(addr.address)) {
          logger.warn(
            { event: 'reload', what: 'keys' },
            `SIGHUP: ${keysFile} has no "keys": this gateway is now open, anyone who can reach it may claim any free name`,
          );
        }
      },
      (e: unknown) =>
        logger.error(
          { event: 'reload', what: 'keys' },
          `SIGHUP: keys reload failed, keeping the old keys: ${errorMessage(e)}`,
        ),
    );
  });
}

/**
 * SIGTERM and SIGINT close the gateway (or the cluster node) within --shutdown-grace and exit 0; a
 * second signal exits 1 at once. A worker of `serve --workers` takes the primary's stop request
 * the same way: the first one, or the first of it and a signal, closes; a second one exits.
 */
function closeOnSignals(
  close: (graceMs: number) => Promise<void>,
  logger: Logger,
  admin: Server | undefined,
  grace: number,
  worker: boolean,
): void {
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) process.exit(1);
    stopping = true;
    logger.info(
      { event: 'shutdown', signal, graceMs: grace },
      `${signal}: closing (in-flight requests get up to ${(grace / 1000).toFixed(1)} s)`,
    );
    void close(grace).then(() => {
      admin?.close();
      logger.info({ event: 'shutdown', signal }, 'closed');
      // Exit once the log is written out: process.exit's own synchronous flush could land before a batch
      // still being written in the background, or lose it.
      logger.flush(() => process.exit(0));
    });
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  // Ctrl-C reaches the workers and the primary alike: the primary's request after the worker's own
  // SIGINT is the same stop, not a second one.
  if (worker) {
    onStopRequest((why, now) => {
      if (now) process.exit(1);
      if (!stopping) stop(why);
    });
  }
}

/** `serve`'s cluster options, checked, and --redis as the start-up lines show it. */
interface ServeCluster {
  readonly options: ClusterOptions;
  /** --redis with its passwords hidden. */
  readonly shown: string;
}

const NODE_ID = /^[A-Za-z0-9._-]{1,64}$/;
/** Shortest cluster secret: it is all that keeps outsiders off the internal hop. */
const MIN_SECRET = 16;

/**
 * The cluster flags, checked: undefined without --redis. Throws an Error whose message says what
 * to change (the command line prints it and exits 2). A worker's node id is --node-id with its
 * slot's number, since every worker is a node of its own.
 */
function clusterSettings(c: ServeValues, slot: WorkerSlot | undefined): ServeCluster | undefined {
  if (c.redis === undefined) {
    if (c.workers > 1) {
      throw new Error(
        `--workers ${c.workers} needs --redis: the workers share their routing table through Redis ` +
          '(without it each worker would know only the names claimed on it, and a visitor would find a name only on that one)',
      );
    }
    const given = Object.entries({
      '--node-url': c.nodeUrl,
      '--node-id': c.nodeId,
      '--cluster-secret': c.clusterSecret,
      '--cluster-secret-file': c.clusterSecretFile,
    }).filter(([, v]) => v !== undefined);
    if (given.length > 0) {
      const flags = given.map(([f]) => f).join(' and ');
      throw new Error(`${flags} ${given.length > 1 ? 'need' : 'needs'} --redis (they configure a node of a cluster)`);
    }
    return undefined;
  }
  const redis = redisOptions(c.redis);
  if (c.nodeUrl !== undefined) checkNodeUrl(c.nodeUrl);
  if (c.nodeId !== undefined && !NODE_ID.test(c.nodeId)) {
    throw new Error(
      `--node-id must be 1 to 64 letters, digits, dots, underscores or dashes, got ${JSON.stringify(c.nodeId)}`,
    );
  }
  if (c.nodeTimeout <= c.heartbeat) {
    throw new Error(
      `--node-timeout (${c.nodeTimeout} ms) must be longer than --heartbeat (${c.heartbeat} ms): ` +
        'otherwise live nodes count as dead between two heartbeats',
    );
  }
  const secret = clusterSecret(c);
  const nodeId = c.nodeId !== undefined && slot !== undefined ? `${c.nodeId}-${slot.index}` : c.nodeId;
  const options: ClusterOptions = {
    redis,
    heartbeat: c.heartbeat,
    nodeTimeout: c.nodeTimeout,
    ...(c.nodeUrl !== undefined ? { nodeUrl: c.nodeUrl } : {}),
    ...(nodeId !== undefined ? { nodeId } : {}),
    ...(secret !== undefined ? { secret } : {}),
  };
  return { options, shown: redactRedisUrl(c.redis) };
}

/** --node-url: the node's origin, as the other nodes reach it. */
function checkNodeUrl(value: string): void {
  const u = URL.canParse(value) ? new URL(value) : undefined;
  if (u === undefined || (u.protocol !== 'http:' && u.protocol !== 'https:')) {
    throw new Error(`--node-url must be an http:// or https:// URL, got ${JSON.stringify(value)}`);
  }
  if (u.username !== '' || u.password !== '' || u.pathname !== '/' || u.search !== '' || u.hash !== '') {
    throw new Error(
      `--node-url is an origin, http(s)://host[:port] with no path, user or query, got ${JSON.stringify(value)}`,
    );
  }
}

/** --cluster-secret, or the one line of --cluster-secret-file (surrounding whitespace ignored). */
function clusterSecret(c: ServeValues): string | undefined {
  const file = c.clusterSecretFile;
  if (file !== undefined && c.clusterSecret !== undefined) {
    throw new Error('--cluster-secret and --cluster-secret-file exclude each other: give one of them');
  }
  let secret = c.clusterSecret;
  if (file !== undefined) {
    try {
      secret = readFileSync(file, 'utf8').trim();
    } catch (e) {
      throw new Error(`cannot read --cluster-secret-file ${file}: ${errorMessage(e)}`);
    }
  }
  if (secret !== undefined && secret.length < MIN_SECRET) {
    const from = file !== undefined ? ` (from ${file})` : '';
    throw new Error(
      `the cluster secret${from} has ${secret.length} characters, it needs ${MIN_SECRET} or more ` +
        '(e.g. openssl rand -base64 32)',
    );
  }
  return secret;
}

/** The address a worker's hop listener binds: --node-url's host, or the loopback address. */
function hopHost(c: ServeValues): string {
  return c.nodeUrl === undefined ? '127.0.0.1' : new URL(c.nodeUrl).hostname.replace(/^\[|\]$/g, '');
}

/**
 * Listens on --port (a worker: through the primary's shared port, and on a hop port of its own);
 * with --redis the node joins the cluster. Failures exit 1.
 */
async function listenServe(
  c: ServeValues,
  gateway: Gateway,
  node: ClusterNode | undefined,
  slot: WorkerSlot | undefined,
): Promise<AddressInfo> {
  let addr: AddressInfo;
  try {
    addr = node ? await node.listen(c.port, c.host, slot === undefined) : await gateway.listen(c.port, c.host);
  } catch (e) {
    err(`ptth-proxy: cannot listen on port ${String(c.port)}${node ? ' or join the cluster' : ''}: ${errorMessage(e)}`);
    process.exit(1);
  }
  if (node && slot) {
    const host = hopHost(c);
    try {
      await node.listenHop(0, host);
    } catch (e) {
      err(`ptth-proxy: worker ${slot.index} cannot listen for hops on ${host} or join the cluster: ${errorMessage(e)}`);
      process.exit(1);
    }
  }
  return addr;
}

/**
 * `serve --workers N`'s primary: forks the workers (each runs `serve` again, as a node), restarts
 * the ones that die, passes SIGHUP on, and on SIGTERM/SIGINT stops them and exits once they have.
 */
function runWorkers(c: ServeValues, cluster: ServeCluster): void {
  const pool = new WorkerPool({ workers: c.workers, killAfterMs: c.shutdownGrace + 5_000 });
  let code = 0;
  pool.on('ready', (slot, pid, info) => {
    const again = slot.restarts > 0 ? ` (restart ${slot.restarts})` : '';
    out(
      `${time()} worker ${slot.index}/${slot.count} ready${again}: pid ${pid}, node ${info.nodeId} at ${info.nodeUrl}`,
    );
  });
  pool.on('died', (slot, pid, how, delay) => {
    err(`${time()} worker ${slot.index}/${slot.count} (pid ${pid}) died, ${how}: restarting in ${delay} ms`);
  });
  pool.on('gave-up', (slot, deaths, how) => {
    code = 1;
    err(
      `ptth-proxy serve: worker ${slot.index} died ${deaths} times in a row soon after starting (last: ${how}); ` +
        'giving up and stopping the other workers. Its output above says why.',
    );
  });
  pool.on('killed', (slot, pid) => {
    code = 1;
    err(
      `${time()} worker ${slot.index}/${slot.count} (pid ${pid}) had not exited ${c.shutdownGrace + 5_000} ms after the stop: killed`,
    );
  });
  pool.on('stopped', () => process.exit(code));
  let signals = 0;
  const stop = (signal: NodeJS.Signals): void => {
    if (++signals === 1) out(`${time()} ${signal}: stopping ${c.workers} workers`);
    else code = 1;
    void pool.stop(signal);
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGHUP', () => pool.signal('SIGHUP'));
  out(
    `ptth-proxy ${VERSION} starting ${c.workers} workers on port ${String(c.port)}, a cluster in Redis ${cluster.shown}`,
  );
  pool.start();
}

async function runServe(
  c: ServeValues,
  cluster: ServeCluster | undefined,
  slot: WorkerSlot | undefined,
): Promise<void> {
  const loadTls = tlsLoader(c);
  const { gateway, node } = await createServeGateway(c, loadTls, cluster);
  const drops: LogDrops = { lines: 0 };
  const logger = createLogger({
    level: c.quiet ? 'warn' : c.verbose ? 'debug' : c.logLevel,
    ...(c.logFormat === 'auto' ? {} : { pretty: c.logFormat === 'pretty' }),
    bufferLimit: c.logBuffer,
    drops,
    // A cluster node names itself in every line, the program's own (reload, shutdown, log-drop) too.
    ...(gateway.nodeId === undefined ? {} : { node: gateway.nodeId }),
  });
  gateway.metrics?.countLogDrops(() => drops.lines);
  const addr = await listenServe(c, gateway, node, slot);
  // One line per visitor request (an access log) at info; --quiet keeps only the 5xx ones (warn).
  // Attached once listening, and the gateway's `listening` event replayed to it after the start-up lines
  // below: the logger writes asynchronously (fs.write on libuv's thread pool), the start-up lines synchronously,
  // so a `listening` line logged as the gateway started could land before or after them, as it pleased.
  attachLogger(gateway, logger, { requests: true });
  const admin = await listenAdmin(gateway, c, slot);
  // Workers: the first one's first start says it for all; the primary says when each is ready.
  if (slot === undefined || (slot.index === 1 && slot.restarts === 0)) {
    const joined = node && cluster ? `${node.id} at ${node.url}, Redis ${cluster.shown}` : undefined;
    printStartup(gateway, addr, admin, slot ? `${joined} (worker 1 of ${slot.count})` : joined);
  }
  gateway.emit('listening', addr);
  reloadOnSighup(gateway, logger, loadTls, c.keys, addr);
  const close = node ? (grace: number) => node.close(grace) : (grace: number) => gateway.close(grace);
  closeOnSignals(close, logger, admin, c.shutdownGrace, slot !== undefined);
  // Only now: the primary passes signals on to a worker once it is ready, and SIGHUP before its
  // handler would end the worker.
  if (slot && node) reportReady({ nodeId: node.id, nodeUrl: node.url, port: addr.port });
}

/** `connect`'s options as commander parses them (flags without a value are `true` when given). */
interface ConnectFlags {
  /** One gateway, or several nodes of one cluster (`--gateway` repeated). */
  gateway: readonly string[];
  name?: string;
  token?: string;
  lease?: number;
  connections?: number;
  rewriteHost?: true;
  http1?: true;
  http2?: true;
  spliceIdle?: number;
  offlineGrace?: number;
  quiet?: true;
  inspect?: true | number;
  insecure?: true;
  key?: string;
}

/** The local service's URL, from `connect`'s argument; a bad one, or --http1 with --http2, exits 2. */
function connectTarget(spec: string, o: ConnectFlags): URL {
  let target: URL;
  try {
    target = parseTarget(spec);
  } catch (e) {
    err(`ptth-proxy connect: ${errorMessage(e)}`);
    process.exit(2);
  }
  if (o.http1 === true && o.http2 === true) {
    err('ptth-proxy connect: --http1 and --http2 exclude each other');
    process.exit(2);
  }
  return target;
}

/** One line when the local service stops answering, one when it is back: not one per request. */
function reachReporter(shown: string): (e: NodeJS.ErrnoException | undefined) => void {
  let localDown: string | undefined;
  return (e) => {
    if (e && localDown === undefined) {
      localDown = e.code ?? e.message;
      err(`${time()} cannot reach the local service ${shown} (${localDown}): visitors get 502 until it is back`);
    } else if (!e && localDown !== undefined) {
      localDown = undefined;
      out(`${time()} the local service ${shown} answers again`);
    }
  };
}

/** The request inspector (--inspect) on 127.0.0.1, or undefined; a port it cannot bind exits 1. */
async function connectInspector(o: ConnectFlags, target: URL): Promise<Inspector | undefined> {
  if (o.inspect === undefined) return undefined;
  const port = o.inspect === true ? 4040 : o.inspect;
  try {
    return await startInspector(port, { target, rewriteHost: o.rewriteHost === true });
  } catch (e) {
    err(`ptth-proxy connect: cannot serve the inspector on 127.0.0.1:${port}: ${errorMessage(e)}`);
    process.exit(1);
  }
}

/** The tunnel, spliced or relaying; options the client refuses exit 2. */
function openTunnel(
  target: URL,
  o: ConnectFlags,
  spliced: boolean,
  onReach: (e: NodeJS.ErrnoException | undefined) => void,
): Tunnel {
  try {
    const options = {
      gateway: o.gateway,
      ...(o.connections !== undefined ? { connections: o.connections } : {}),
      ...(o.name !== undefined ? { name: o.name } : {}),
      ...(o.token !== undefined ? { token: o.token } : {}),
      ...(o.lease !== undefined ? { lease: o.lease } : {}),
      ...(o.insecure === true ? { rejectUnauthorized: false } : {}),
      ...(typeof o.key === 'string' && o.key !== '' ? { key: o.key } : {}),
    };
    return spliced
      ? splice(target, options, { onReach, ...(o.spliceIdle !== undefined ? { idleTimeout: o.spliceIdle } : {}) })
      : listen(createLocalProxy(target, { rewriteHost: o.rewriteHost === true, onReach }), {
          ...options,
          ...(o.http1 === true ? { http1: true } : {}),
        });
  } catch (e) {
    err(`ptth-proxy connect: ${errorMessage(e)}`);
    process.exit(2);
  }
}

/** The registration's event stream, for the request lines and the inspector: `watch` once online, again after each reconnect. */
function requestWatcher(
  tunnel: Tunnel,
  o: ConnectFlags,
  inspector: Inspector | undefined,
): { watch(): void; close(): void } {
  const quiet = o.quiet === true;
  let events: EventWatch | undefined;
  let eventsOf: string | undefined;
  let told = false;
  const watch = (): void => {
    if ((quiet && !inspector) || tunnel.privateUrl === undefined) return;
    // After a gateway restart the claim is a new registration, with a new private URL.
    const privateUrl = new URL(tunnel.privateUrl, o.gateway[0]).href;
    if (events && eventsOf === privateUrl) {
      events.start();
      return;
    }
    events?.close();
    eventsOf = privateUrl;
    events = watchEvents(privateUrl, {
      detail: inspector !== undefined,
      ...(o.insecure === true ? { rejectUnauthorized: false } : {}),
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
  return { watch, close: () => events?.close() };
}

interface ConnectView {
  /** The local service as the lines show it. */
  readonly shown: string;
  readonly spliced: boolean;
  readonly inspector: Inspector | undefined;
  /** Milliseconds the pool may be empty before the line that says the gateway is lost. */
  readonly offlineGrace: number;
}

/** The tunnel's lines: forwarding, lost and back online, retries, and the error that ends it (exit 3 for a refused claim, else 1). */
function reportTunnel(tunnel: Tunnel, o: ConnectFlags, view: ConnectView, watch: () => void): void {
  let wasOnline = false;
  // A pool that is empty for a moment is not a lost gateway: when every spliced channel is busy
  // and their visitors leave (a load test stopping), the gateway closes them all and fresh ones
  // come at once. The line waits OFFLINE_GRACE_MS, or for the first failed dial.
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
      const over =
        tunnel.protocol === 'h2'
          ? 'reversed HTTP/2'
          : view.spliced
            ? 'reversed HTTP/1.1, spliced'
            : 'reversed HTTP/1.1';
      out(`Forwarding ${url} -> ${view.shown} (${over})`);
      if (view.inspector) out(`Inspector   ${view.inspector.url}`);
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
    lostTimer = setTimeout(sayLost, view.offlineGrace);
    lostTimer.unref();
  });
  // Several connections fail together (HTTP/2 plus the one for WebSocket upgrades, or --http1's
  // pool): one line per retry, not one per connection.
  let quietUntil = 0;
  let lastSaid = '';
  let lastLine = '';
  tunnel.on('reconnecting', ({ delay, error }) => {
    if (tunnel.online) return;
    sayLost();
    const now = Date.now();
    if (error.message === lastSaid && now < quietUntil) return;
    const line = `cannot reach ${o.gateway.join(', ')}: ${error.message}; retrying in ${(delay / 1000).toFixed(1)} s`;
    // Connections of one round that fail spread out (a loaded machine, a node's own retry beside
    // its connections') would repeat the line word for word: it says nothing new.
    if (line === lastLine && now < quietUntil + delay) return;
    lastSaid = error.message;
    lastLine = line;
    quietUntil = now + delay;
    err(`${time()} ${line}`);
  });
  // With several nodes, one lost is not the app lost: its connections move to the others. While
  // none is reachable the lines above say so; a node is said back only after it was said lost.
  const saidNodeLost = new Set<string>();
  tunnel.on('node', (node) => {
    if (tunnel.nodes.length < 2) return;
    const origin = new URL(node.gateway).origin;
    const label = node.address === undefined ? origin : `${origin} (${node.address})`;
    if (node.up) {
      if (saidNodeLost.delete(label)) out(`${time()} gateway node ${label} is back`);
    } else if (tunnel.online && !saidNodeLost.has(label)) {
      saidNodeLost.add(label);
      const why = node.error?.message ?? 'unreachable';
      err(`${time()} lost gateway node ${label} (${why}); its connections move to the other nodes`);
    }
  });
  tunnel.on('error', (e) => {
    err(`ptth-proxy connect: ${claimMessage(e)}`);
    process.exit(e instanceof ClaimError ? 3 : 1);
  });
}

/** Ctrl-C (or SIGTERM) releases the name and exits 0 once requests in flight finish; a second one exits 1 at once. */
function releaseOnSignals(tunnel: Tunnel, stopWatching: () => void, inspector: Inspector | undefined): void {
  let stopping = false;
  const stop = (): void => {
    if (stopping) process.exit(1);
    stopping = true;
    const name = tunnel.name ?? 'the name';
    out(`${time()} releasing ${name}, closing (requests in flight get up to 3 s; Ctrl-C again to quit now)`);
    stopWatching();
    void Promise.all([tunnel.close({ graceMs: 3_000 }), inspector?.close()]).then(() => {
      out(`${time()} released ${name}; bye`);
      process.exit(0);
    });
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

const DEFAULT_GATEWAYS: readonly string[] = ['http://localhost:8080'];

/** `--gateway` given again adds a node; the first one given replaces the default. */
function collectGateway(value: string, previous: readonly string[]): readonly string[] {
  return previous === DEFAULT_GATEWAYS ? [value] : [...previous, value];
}

async function runConnect(spec: string, o: ConnectFlags): Promise<void> {
  const target = connectTarget(spec, o);
  const shown = `${target.origin}${target.pathname === '/' ? '' : target.pathname}`;
  const onReach = reachReporter(shown);
  // Splicing (the default) joins each reversed HTTP/1.1 connection to one local connection byte
  // for byte; whatever must see or change a request (--rewrite-host, a base path) relays them one
  // by one, over reversed HTTP/2 unless --http1 (or --http2 asks for that relay outright).
  const spliced = o.rewriteHost !== true && o.http2 !== true && canSplice(target);
  const inspector = await connectInspector(o, target);
  const tunnel = openTunnel(target, o, spliced, onReach);
  const requests = requestWatcher(tunnel, o, inspector);
  reportTunnel(
    tunnel,
    o,
    { shown, spliced, inspector, offlineGrace: o.offlineGrace ?? OFFLINE_GRACE_MS },
    requests.watch,
  );
  releaseOnSignals(tunnel, requests.close, inspector);
}

program
  .command('connect')
  .description('expose a local HTTP service through a gateway, e.g. `ptth-proxy connect 3000`')
  .argument('<target>', 'local port, host:port or URL of the service')
  .addOption(
    new Option(
      '-g, --gateway <url>',
      'gateway URL; repeat it to spread the connections over several nodes of one cluster',
    )
      .env('PTTH_GATEWAY')
      .argParser(collectGateway)
      .default(DEFAULT_GATEWAYS, DEFAULT_GATEWAYS[0]),
  )
  .option('-n, --name <name>', 'name to claim (default: the gateway picks one)')
  .option('-t, --token <token>', 'secret that holds the name across restarts (default: random per run)')
  .option('-l, --lease <seconds>', 'how long the gateway keeps the name while disconnected', int(0))
  .option(
    '-c, --connections <n>',
    `most reversed HTTP/1.1 connections (default: ${SPLICE_CONNECTIONS}, the pool grows to it with demand; 4, kept open, with --rewrite-host or a base path over --http1)`,
    int(1),
  )
  .option(
    '--rewrite-host',
    'send the local service its own Host instead of the public one (relays requests one by one instead of splicing)',
  )
  .option(
    '--http1',
    'speak only PTTH/1.0 (reversed HTTP/1.1), even when the gateway offers HTTP/2 (the default unless --rewrite-host or a base path)',
  )
  .option(
    '--http2',
    'relay requests over one reversed HTTP/2 connection instead of splicing reversed HTTP/1.1 connections',
  )
  // Tests: how long a spliced connection may sit idle before the pool shrinks (ms).
  .addOption(new Option('--splice-idle <ms>').argParser(int(1)).hideHelp())
  // Tests only: how long the pool may be empty before connect says it lost the gateway.
  .addOption(new Option('--offline-grace <ms>').argParser(int(0)).hideHelp())
  .option('-q, --quiet', 'do not print a line per request')
  .addOption(
    new Option(
      '--inspect [port]',
      'serve a page on 127.0.0.1 listing recent requests, with replay (default port 4040; 0: any free port)',
    ).argParser((value: string) => {
      if (!/^\d+$/.test(value) || Number(value) > 65535) {
        throw new InvalidArgumentError('expected a port number from 0 to 65535');
      }
      return Number(value);
    }),
  )
  .addOption(new Option('--insecure', "do not verify the gateway's TLS certificate"))
  // .env() rather than a default: --help must not print the key.
  .addOption(
    new Option('--key <key>', 'access key, for gateways that require one (ptth-proxy key makes them)').env('PTTH_KEY'),
  )
  .action((spec: string, o: ConnectFlags) => runConnect(spec, o));

program
  .command('key')
  .description("make a new access key: prints the key (for the app) and its entry for the gateway's keys file")
  .option('--id <id>', "the key's id in logs and events (default: key- and 8 random hex digits)")
  .option(
    '--names <patterns>',
    'comma-separated names the key may claim: *, a prefix such as team-*, or exact names',
    '*',
  )
  .option('--max-names <n>', 'names the key may hold at once (default: no limit)', int(1))
  .option('--max-channels <n>', 'channels the key may hold at once across its names (default: no limit)', int(1))
  .action((o: { id?: string; names: string; maxNames?: number; maxChannels?: number }) => {
    let made: ReturnType<typeof createKeyEntry>;
    try {
      made = createKeyEntry({
        id: o.id,
        names: String(o.names)
          .split(',')
          .map((n) => n.trim())
          .filter((n) => n !== ''),
        maxNames: o.maxNames,
        maxChannels: o.maxChannels,
      });
    } catch (e) {
      err(`ptth-proxy key: ${errorMessage(e)}`);
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
  err(`ptth-proxy: ${errorMessage(e)}`);
  process.exit(1);
});
