import { Command, InvalidArgumentError, Option } from 'commander';
import { createGateway, type GatewayOptions } from './gateway/server.js';
import { listen, ClaimError } from './client/node.js';
import { createLocalProxy, parseTarget } from './client/proxy.js';
import { VERSION } from './version.js';

/** The only module that prints. */
function int(min: number) {
  return (value: string): number => {
    if (!/^\d+$/.test(value) || Number(value) < min) throw new InvalidArgumentError(`expected a whole number >= ${min}`);
    return Number(value);
  };
}

const out = (line: string): void => void process.stdout.write(`${line}\n`);
const err = (line: string): void => void process.stderr.write(`${line}\n`);
const time = (): string => new Date().toISOString().slice(11, 19);

const program = new Command()
  .name('ptth-proxy')
  .description('Reverse HTTP gateway: programs with only an HTTP client claim a public hostname and serve HTTP through it.')
  .version(VERSION);

program
  .command('serve')
  .description('run the gateway: one port for visitors, claims and the status page')
  .option('-p, --port <port>', 'port to listen on', int(0), 8080)
  .option('-H, --host <address>', 'address to bind (default: all interfaces)')
  .option('-d, --domain <domain>', 'apps are served at NAME.<domain>', 'localhost')
  .option('--public-url <url>', 'base of advertised URLs when behind a proxy or TLS terminator, e.g. https://tunnel.example.com')
  .option('--default-lease <seconds>', 'how long a name outlives its last channel when the claim names no lease', int(0), 300)
  .option('--max-lease <seconds>', 'longest lease a claim may ask for', int(0), 86_400)
  .option('--max-channels <n>', 'channels one name may hold (429 past it)', int(1), 64)
  .option('--response-timeout <ms>', 'time for an app to start its response (504 past it)', int(1), 60_000)
  .option('--queue-limit <n>', 'requests that may wait for a busy name (503 past it)', int(0), 256)
  .option('--queue-timeout <ms>', 'how long a request waits for a busy channel (503 past it)', int(1), 15_000)
  .option('--reconnect-wait <ms>', 'how long a request waits while its app is reconnecting (503 past it)', int(1), 5_000)
  .option('--claim-timeout <ms>', 'time a claimant has to send its declared body', int(1), 10_000)
  .option('--headers-timeout <ms>', 'time a visitor has to send its request head', int(1), 30_000)
  .option('--keep-alive-timeout <ms>', 'how long an idle visitor connection stays open', int(0), 5_000)
  .option('--no-http2', 'never offer reversed HTTP/2 (Upgrade: ptth with ALPN: h2); clients get PTTH/1.0')
  .option('--max-streams <n>', 'streams the gateway opens at once on one reversed HTTP/2 connection', int(1), 256)
  .option('--ping-interval <ms>', 'time between HTTP/2 PINGs on reversed HTTP/2 connections', int(1), 30_000)
  .option('--ping-timeout <ms>', 'time a PING may go unanswered before the connection is closed', int(1), 10_000)
  .option('--poll-timeout <ms>', 'how long a Comet long poll waits for a request before its 204', int(1), 30_000)
  .option('--reply-timeout <ms>', 'time a Comet app has to POST its reply (504 past it; default: --response-timeout)', int(1))
  .option('--buffer-limit <bytes>', 'largest body buffered whole for a Comet exchange (413 past it)', int(0), 16 * 1024 * 1024)
  .option('--comet-idle-timeout <ms>', 'how long after its last poll a Comet app counts as gone (its lease starts)', int(1), 30_000)
  .option('--ws-max-streams <n>', 'requests in flight at once on one WebSocket channel', int(1), 128)
  .option('--ws-window <bytes>', 'body bytes in flight per request and direction on a WebSocket channel', int(1024), 256 * 1024)
  .option('--ws-ping-interval <ms>', 'time between WebSocket pings; a channel that misses one is closed', int(1), 30_000)
  .option('-v, --verbose', 'print one line per visitor request')
  .option('-q, --quiet', 'print only the start-up lines and errors')
  .action(async (o: Record<string, unknown>) => {
    const options: GatewayOptions = {
      domain: o['domain'] as string,
      defaultLease: o['defaultLease'] as number,
      maxLease: o['maxLease'] as number,
      maxChannels: o['maxChannels'] as number,
      responseTimeout: o['responseTimeout'] as number,
      queueLimit: o['queueLimit'] as number,
      queueTimeout: o['queueTimeout'] as number,
      reconnectWait: o['reconnectWait'] as number,
      claimTimeout: o['claimTimeout'] as number,
      headersTimeout: o['headersTimeout'] as number,
      keepAliveTimeout: o['keepAliveTimeout'] as number,
      http2: o['http2'] !== false,
      maxStreams: o['maxStreams'] as number,
      pingInterval: o['pingInterval'] as number,
      pingTimeout: o['pingTimeout'] as number,
      pollTimeout: o['pollTimeout'] as number,
      bufferLimit: o['bufferLimit'] as number,
      cometIdleTimeout: o['cometIdleTimeout'] as number,
      wsMaxStreams: o['wsMaxStreams'] as number,
      wsWindow: o['wsWindow'] as number,
      wsPingInterval: o['wsPingInterval'] as number,
    };
    if (o['publicUrl'] !== undefined) options.publicUrl = o['publicUrl'] as string;
    if (o['replyTimeout'] !== undefined) options.replyTimeout = o['replyTimeout'] as number;
    let gateway;
    try {
      gateway = createGateway(options);
    } catch (e) {
      err(`ptth-proxy: ${(e as Error).message}`);
      process.exit(2);
    }
    const quiet = o['quiet'] === true;
    if (!quiet) {
      gateway.on('claim', (c) => out(`${time()} + ${c.name} ${c.transport} channel from ${c.remote} -> ${c.url}`));
      gateway.on('channel-close', (reg, ch) => out(`${time()} - ${reg.name} ${ch.transport} channel from ${ch.remote} closed (${reg.channels.length} left)`));
      gateway.on('release', (reg, why) => out(`${time()} x ${reg.name} released (${why})`));
      gateway.on('refuse', (r) => out(`${time()} ! claim refused from ${r.remote ?? '?'}: ${r.status} ${r.code}`));
    }
    if (o['verbose'] === true) {
      gateway.on('request', (r) => out(`${time()}   ${r.name} ${r.method} ${r.url} ${r.status} ${r.ms.toFixed(1)} ms`));
    }
    gateway.on('error', (e) => err(`ptth-proxy: ${e.message}`));
    let addr;
    try {
      addr = await gateway.listen(o['port'] as number, o['host'] as string | undefined);
    } catch (e) {
      err(`ptth-proxy: cannot listen on port ${String(o['port'])}: ${(e as Error).message}`);
      process.exit(1);
    }
    const port = addr.port;
    const domain = gateway.settings.domain;
    const origin = gateway.settings.publicUrl?.origin ?? `http://${domain}${port === 80 ? '' : `:${port}`}`;
    const appUrl = gateway.settings.publicUrl
      ? `${gateway.settings.publicUrl.protocol}//NAME.${gateway.settings.publicUrl.host}/`
      : `http://NAME.${domain}${port === 80 ? '' : `:${port}`}/`;
    out(`ptth-proxy ${VERSION} gateway listening on ${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${port}`);
    out(`  status page:   ${origin}/`);
    out(`  apps served at ${appUrl}`);
    out(`  expose an app: npx ptth-proxy connect 3000 --gateway ${origin}`);
    let stopping = false;
    const stop = (signal: string): void => {
      if (stopping) process.exit(1);
      stopping = true;
      out(`${time()} ${signal}: closing (in-flight requests get up to 5 s)`);
      void gateway.close(5_000).then(() => process.exit(0));
    };
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('SIGTERM', () => stop('SIGTERM'));
  });

program
  .command('connect')
  .description('expose a local HTTP service through a gateway, e.g. `ptth-proxy connect 3000`')
  .argument('<target>', 'local port, host:port or URL of the service')
  .option('-g, --gateway <url>', 'gateway URL', process.env['PTTH_GATEWAY'] ?? 'http://localhost:8080')
  .option('-n, --name <name>', 'name to claim (default: the gateway picks one)')
  .option('-t, --token <token>', 'secret that holds the name across restarts (default: random per run)')
  .option('-l, --lease <seconds>', 'how long the gateway keeps the name while disconnected', int(0))
  .option('-c, --connections <n>', 'reversed HTTP/1.1 connections to keep open (over HTTP/2 one connection multiplexes)', int(1), 4)
  .option('--rewrite-host', 'send the local service its own Host instead of the public one')
  .option('--http1', 'speak only PTTH/1.0 (reversed HTTP/1.1), even when the gateway offers HTTP/2')
  .addOption(new Option('--insecure', 'do not verify the gateway\'s TLS certificate'))
  .action(async (spec: string, o: Record<string, unknown>) => {
    let target: URL;
    try {
      target = parseTarget(spec);
    } catch (e) {
      err(`ptth-proxy connect: ${(e as Error).message}`);
      process.exit(2);
    }
    const proxy = createLocalProxy(target, { rewriteHost: o['rewriteHost'] === true });
    let tunnel;
    try {
      tunnel = listen(proxy, {
        gateway: o['gateway'] as string,
        connections: o['connections'] as number,
        ...(o['name'] !== undefined ? { name: o['name'] as string } : {}),
        ...(o['token'] !== undefined ? { token: o['token'] as string } : {}),
        ...(o['lease'] !== undefined ? { lease: o['lease'] as number } : {}),
        ...(o['insecure'] === true ? { rejectUnauthorized: false } : {}),
        ...(o['http1'] === true ? { http1: true } : {}),
      });
    } catch (e) {
      err(`ptth-proxy connect: ${(e as Error).message}`);
      process.exit(2);
    }
    let wasOnline = false;
    tunnel.on('online', (url) => {
      if (!wasOnline) {
        const over = tunnel.protocol === 'h2' ? 'reversed HTTP/2' : 'reversed HTTP/1.1';
        out(`Forwarding ${url} -> ${target.origin}${target.pathname === '/' ? '' : target.pathname} (${over})`);
      }
      else out(`${time()} back online`);
      wasOnline = true;
    });
    tunnel.on('offline', () => out(`${time()} lost the gateway; reconnecting`));
    tunnel.on('reconnecting', ({ delay, error }) => {
      if (!tunnel.online) err(`${time()} cannot reach ${String(o['gateway'])}: ${error.message}; retrying in ${(delay / 1000).toFixed(1)} s`);
    });
    tunnel.on('error', (e) => {
      err(`ptth-proxy connect: ${e.message}`);
      process.exit(e instanceof ClaimError ? 3 : 1);
    });
    let stopping = false;
    const stop = (): void => {
      if (stopping) process.exit(1);
      stopping = true;
      void tunnel.close({ graceMs: 3_000 }).then(() => process.exit(0));
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });

program.parseAsync().catch((e: unknown) => {
  err(`ptth-proxy: ${(e as Error).message}`);
  process.exit(1);
});
