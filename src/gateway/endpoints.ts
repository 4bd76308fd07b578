import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { isLoopback } from './ratelimit.js';
import { PtthError, isPtthError } from '../http/errors.js';
import { escapeHtml, sendError, wantsJson } from '../http/respond.js';
import { parseLease, validateToken } from '../table/names.js';
import type { Registration } from '../table/registration.js';
import {
  gatewayOrigin,
  notReady,
  PRIVATE_PREFIX,
  publicUrlFor,
  type ClusterHooks,
  type ClusterListing,
  type GatewayContext,
} from './context.js';
import { renderStatusPage, type StatusCluster, type StatusHolder, type StatusRegistration } from './statuspage.js';
import { DEMO_HTML } from './browser.js';
import { formParams, readBody } from '../http/body.js';
import { SERVICE_PATH } from './classify.js';
import { RELAY_PREFIX } from './relay.js';
import { EVENTS_SUFFIX, followEvents } from './events.js';
import { errorMessage } from '../shared/errormessage.js';
import { targetPath } from '../shared/target.js';

/**
 * The gateway's own endpoints (Host is the domain, an IP literal, or outside the domain):
 *  - `GET /`: what the gateway is doing (HTML, or JSON with `Accept: application/json`);
 *  - `/_ptth/<id>`: a registration's private URL, GET state, PUT lease/token, DELETE release;
 *  - `/relay/HOST[:PORT]`: the RelayHttp endpoint, with `serve --relay` (src/gateway/relay.ts).
 *
 * CORS only where browser clients on other origins need it (docs/PROTOCOL.md sections 5, 7 and 10): the Comet
 * endpoint, `/ptth.js` (module scripts are fetched in cors mode), the relay endpoint and DELETE of a private URL (the
 * browser library releases its name with it). The status page, metrics, health and the rest of the
 * private URL send none: any page open in a browser on the gateway's machine could otherwise read
 * the names, app addresses and counts the status page shows to loopback. (A WebSocket handshake is
 * not subject to CORS: the channel needs nothing here.)
 */

/** The answer headers a page on another origin may read (`Access-Control-Expose-Headers`). */
const CORS_EXPOSE = 'Link, Location, Requesting-Client, Retry-After, X-Ptth-Error';

function cors(req: IncomingMessage, res: ServerResponse): void {
  // No Access-Control-Allow-Credentials: a reflected origin reads exactly what `*` would.
  res.setHeader('Access-Control-Allow-Origin', req.headers.origin ?? '*');
  res.setHeader('Vary', 'Origin');
  res.setHeader('Access-Control-Expose-Headers', CORS_EXPOSE);
}

/** Comet, the browser library and the relay endpoint: the paths any origin may read. */
function browserPath(path: string): boolean {
  return (
    path === SERVICE_PATH || path.startsWith(`${SERVICE_PATH}/`) || path === '/ptth.js' || path.startsWith(RELAY_PREFIX)
  );
}

/** A DELETE of a private URL, or its preflight: the browser library's release on close(). */
function privateDelete(req: IncomingMessage, path: string): boolean {
  if (!path.startsWith(PRIVATE_PREFIX)) return false;
  if (req.method === 'DELETE') return true;
  return req.method === 'OPTIONS' && req.headers['access-control-request-method'] === 'DELETE';
}

/**
 * Headers of every response on the gateway host: nosniff, no framing (clickjacking of the status
 * page's demo; CSP frame-ancestors per CSP Level 2, X-Frame-Options per RFC 7034 for older
 * browsers), and CORS where a browser client needs it. Returns whether CORS applies.
 */
export function gatewayHeaders(req: IncomingMessage, res: ServerResponse, path: string): boolean {
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.setHeader('X-Frame-Options', 'DENY');
  res.setHeader('Content-Security-Policy', "frame-ancestors 'none'");
  const allowed = browserPath(path) || privateDelete(req, path);
  if (allowed) cors(req, res);
  return allowed;
}

export interface GatewayInfo {
  readonly version: string;
  readonly startedAt: number;
  /** Comet (`/reversehttp`) and the browser library (`/ptth.js`). */
  readonly browser?: { handle(req: IncomingMessage, res: ServerResponse, path: string): boolean };
  /** The RelayHttp endpoint (`/relay/`), when on. */
  readonly relay?: { handle(req: IncomingMessage, res: ServerResponse, path: string): boolean } | undefined;
  /** Prometheus metrics, when on. */
  readonly metrics?: MetricsText | undefined;
  /** Whether `/metrics` is served on the gateway host (false when only an admin port serves it). */
  readonly metricsPublic?: boolean;
  /**
   * Who sees the registrations (names, channels, app addresses) on the status page: random names
   * are unguessable URLs, and listing them to anyone would give every tunnel away.
   */
  readonly statusList?: 'loopback' | 'everyone' | 'nobody';
}

/** Whether this request may see the list of registrations on the status page. */
export function mayList(info: Pick<GatewayInfo, 'statusList'>, req: Pick<IncomingMessage, 'socket'>): boolean {
  const who = info.statusList ?? 'loopback';
  if (who === 'everyone') return true;
  if (who === 'nobody') return false;
  return isLoopback(req.socket.remoteAddress ?? '');
}

/** What `/metrics` needs: GatewayMetrics. */
export interface MetricsText {
  readonly contentType: string;
  text(): Promise<string>;
}

/** What the health endpoints need to know about a gateway. */
export interface HealthSource {
  /** Listening and accepting: false before listen() and once close() began. */
  readonly ready: boolean;
  /** Why it is not ready (default: shutting down). */
  readonly notReadyReason?: string | undefined;
  readonly metrics?: MetricsText | undefined;
}

export const HEALTH_PATHS = ['/healthz', '/readyz', '/metrics'] as const;

/**
 * `/healthz` (liveness: the process answers), `/readyz` (readiness: 503 once the gateway stopped
 * accepting, so a load balancer stops sending it new work) and `/metrics` (Prometheus text format). Returns false
 * for any other path (or /metrics when `metrics` is undefined), leaving the request untouched.
 */
export function handleHealth(
  req: IncomingMessage,
  res: ServerResponse,
  path: string,
  ready: boolean,
  metrics: MetricsText | undefined,
  /** Why `ready` is false, for the body. */
  why = 'shutting down',
): boolean {
  if (path !== '/healthz' && path !== '/readyz' && (path !== '/metrics' || !metrics)) return false;
  req.resume();
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    methodNotAllowed(req, res, 'GET, HEAD');
    return true;
  }
  if (path === '/metrics' && metrics) {
    metrics.text().then(
      (body) => {
        res.writeHead(200, {
          'Content-Type': metrics.contentType,
          'Cache-Control': 'no-store',
          'Content-Length': Buffer.byteLength(body),
        });
        res.end(req.method === 'HEAD' ? undefined : body);
      },
      (err: unknown) => {
        // A collector that throws must not leave the scraper hanging.
        res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store' });
        res.end(req.method === 'HEAD' ? undefined : `metrics could not be collected: ${errorMessage(err)}\n`);
      },
    );
    return true;
  }
  const ok = path === '/healthz' || ready;
  const body = ok ? 'ok\n' : `${why}\n`;
  res.writeHead(ok ? 200 : 503, {
    'Content-Type': 'text/plain; charset=utf-8',
    'Cache-Control': 'no-store',
    'Content-Length': body.length,
  });
  res.end(req.method === 'HEAD' ? undefined : body);
  return true;
}

/**
 * A server for operators on a separate (private) port: only /metrics, /healthz and /readyz of one
 * gateway, nothing a visitor or claimant can reach. The caller listens and closes it; it outlives
 * the gateway's close() so a load balancer sees /readyz turn 503 while the gateway shuts down.
 */
export function createAdminServer(gateway: HealthSource): Server {
  const server = createServer((req, res) => {
    const path = targetPath(req.url);
    if (handleHealth(req, res, path, gateway.ready, gateway.metrics, gateway.notReadyReason)) return;
    req.resume();
    sendError(
      res,
      new PtthError('PTTH_ERR_NO_ENDPOINT', 'The admin port serves /metrics, /healthz and /readyz only.'),
      req.headers.accept,
    );
  });
  // Scrapers keep connections alive; these must not hold a closing process open.
  server.keepAliveTimeout = 5_000;
  server.headersTimeout = 10_000;
  server.requestTimeout = 10_000;
  return server;
}

export function handleEndpoint(
  ctx: GatewayContext,
  info: GatewayInfo,
  req: IncomingMessage,
  res: ServerResponse,
): void {
  const path = targetPath(req.url);
  const corsAllowed = gatewayHeaders(req, res, path);
  // Preflights only where CORS applies; elsewhere OPTIONS is a method the endpoint refuses (405).
  if (req.method === 'OPTIONS' && corsAllowed) {
    res.writeHead(204, {
      'Access-Control-Allow-Methods': path.startsWith(PRIVATE_PREFIX) ? 'DELETE' : 'GET, POST, OPTIONS',
      'Access-Control-Allow-Headers': req.headers['access-control-request-headers'] ?? 'Content-Type, Authorization',
      'Access-Control-Max-Age': '600',
    });
    res.end();
    req.resume();
    return;
  }
  if (info.browser?.handle(req, res, path)) return;
  if (info.relay?.handle(req, res, path)) return;
  // A cluster node whose Redis is unreachable is not ready: new claims would get 503 there.
  const why = notReady(ctx);
  if (handleHealth(req, res, path, why === undefined, info.metricsPublic === false ? undefined : info.metrics, why))
    return;
  if (path === '/') {
    if (req.method !== 'GET' && req.method !== 'HEAD') return methodNotAllowed(req, res, 'GET, HEAD');
    req.resume();
    statusPage(ctx, info, req, res);
    return;
  }
  if (path.startsWith(PRIVATE_PREFIX)) {
    const id = path.slice(PRIVATE_PREFIX.length);
    const events = id.endsWith(EVENTS_SUFFIX);
    const secret = events ? id.slice(0, -EVENTS_SUFFIX.length) : id;
    const found = (reg: Registration | undefined): void => {
      if (!reg) {
        req.resume();
        sendError(
          res,
          new PtthError('PTTH_ERR_NOT_FOUND', 'No registration has this private URL (it may have been released).'),
          req.headers.accept,
        );
      } else if (events) followEvents(ctx, reg, req, res);
      else privateUrl(ctx, reg, req, res);
    };
    const local = ctx.table.byPrivateId(secret);
    // A cluster's store knows registrations made on other nodes (or before a restart).
    if (local) found(local);
    else
      ctx.table.fetchPrivate(secret).then(found, (err: unknown) => {
        req.resume();
        sendError(res, isPtthError(err) ? err : new PtthError('PTTH_ERR_STORE_UNAVAILABLE'), req.headers.accept);
      });
    return;
  }
  req.resume();
  sendError(res, new PtthError('PTTH_ERR_NO_ENDPOINT'), req.headers.accept);
}

function methodNotAllowed(req: IncomingMessage, res: ServerResponse, allow: string): void {
  req.resume();
  res.setHeader('Allow', allow);
  sendError(res, new PtthError('PTTH_ERR_METHOD_NOT_ALLOWED'), req.headers.accept);
}

/** A registration as the status page and its private URL show it. */
interface RegistrationState extends StatusRegistration {
  readonly lease: number;
  readonly channels: readonly (StatusRegistration['channels'][number] & { id: number; openedAt: string })[];
}

function registrationState(ctx: GatewayContext, req: IncomingMessage, reg: Registration): RegistrationState {
  return {
    name: reg.name,
    url: publicUrlFor(ctx.settings, req, reg.name),
    lease: reg.lease,
    expiresAt: reg.expiresAt === undefined ? null : new Date(reg.expiresAt).toISOString(),
    requests: reg.requests,
    waiting: reg.waiting,
    channels: reg.channels.map((ch) => ({
      id: ch.id,
      transport: ch.transport,
      remote: ch.remote,
      active: ch.active,
      served: ch.served,
      openedAt: new Date(ch.openedAt).toISOString(),
    })),
  };
}

/** What the status page shows: the count, and the list when this client may see it. */
interface StatusData {
  readonly count: number;
  readonly registrations: readonly RegistrationState[] | undefined;
  readonly cluster?: StatusCluster | undefined;
}

/**
 * Most registrations a cluster node's status page lists: the store is scanned for them on each view
 * (one script call per name), and the page refreshes itself every 2 s.
 */
export const CLUSTER_LIST_LIMIT = 1000;

function statusPage(ctx: GatewayContext, info: GatewayInfo, req: IncomingMessage, res: ServerResponse): void {
  const listed = mayList(info, req);
  // A client that may not see the list gets this node's count: counting the cluster's names would
  // scan the store for anyone who asks.
  if (ctx.cluster === undefined || !listed) {
    const all = ctx.table.list();
    const registrations = listed ? all.map((r) => registrationState(ctx, req, r)) : undefined;
    sendStatus(ctx, info, req, res, { count: all.length, registrations });
    return;
  }
  clusterStatus(ctx, ctx.cluster, req).then(
    (data) => sendStatus(ctx, info, req, res, data),
    (err: unknown) => {
      // Only a bug gets here (a store that does not answer gives this node's view): never a hung request.
      if (res.headersSent) return void res.destroy();
      res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store' });
      res.end(req.method === 'HEAD' ? undefined : `the status page could not be made: ${errorMessage(err)}\n`);
    },
  );
}

function sendStatus(
  ctx: GatewayContext,
  info: GatewayInfo,
  req: IncomingMessage,
  res: ServerResponse,
  data: StatusData,
): void {
  const uptime = Math.round((Date.now() - info.startedAt) / 1000);
  const cluster = data.cluster;
  // JSON by Accept, or by ?format=json for a link a person can click.
  if (wantsJson(req.headers.accept) || /[?&]format=json(&|$)/.test(req.url ?? '')) {
    const body = JSON.stringify({
      gateway: {
        version: info.version,
        domain: ctx.settings.domain,
        urls: ctx.settings.urls,
        uptime,
        ...(cluster ? { node: cluster.node } : {}),
      },
      count: data.count,
      // Absent (not empty) when this client may not see the list: the count is still there.
      ...(data.registrations ? { registrations: data.registrations } : {}),
      ...(cluster ? { cluster } : {}),
    });
    res.writeHead(200, { 'Content-Type': 'application/json; charset=utf-8', 'Cache-Control': 'no-store' });
    res.end(req.method === 'HEAD' ? undefined : body);
    return;
  }
  const body = renderStatusPage({
    version: info.version,
    uptime,
    count: data.count,
    registrations: data.registrations,
    appUrl: publicUrlFor(ctx.settings, req, 'NAME'),
    gateway: gatewayOrigin(ctx.settings, req),
    metricsLink: info.metrics !== undefined && info.metricsPublic !== false,
    sharedOrigin: ctx.settings.urls === 'host' ? undefined : gatewayOrigin(ctx.settings, req),
    demo: DEMO_HTML,
    cluster,
  });
  res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
  res.end(req.method === 'HEAD' ? undefined : body);
}

type ClusterView = readonly [ClusterListing[], Awaited<ReturnType<ClusterHooks['nodes']>>];

/** The store's answer in flight per node: views asked for meanwhile share it instead of scanning again. */
const pendingViews = new WeakMap<ClusterHooks, Promise<ClusterView>>();

function clusterView(cluster: ClusterHooks): Promise<ClusterView> {
  let pending = pendingViews.get(cluster);
  if (!pending) {
    // One more than the limit: whether the cluster holds more than the page lists.
    pending = Promise.all([cluster.listRegistrations(CLUSTER_LIST_LIMIT + 1), cluster.nodes()] as const);
    const done = (): void => void pendingViews.delete(cluster);
    pending.then(done, done);
    pendingViews.set(cluster, pending);
  }
  return pending;
}

const UNREACHABLE = new Error('the shared store (Redis) is unreachable');

/**
 * A cluster node's status: every registration in the store (up to CLUSTER_LIST_LIMIT) with the nodes
 * holding its channels, this node's detail for the names it holds, and the live nodes. When the
 * store does not answer, this node's own view with a note that says so.
 */
async function clusterStatus(ctx: GatewayContext, cluster: ClusterHooks, req: IncomingMessage): Promise<StatusData> {
  const node = cluster.nodeId;
  let view: ClusterView;
  try {
    // Commands fail at once while Redis is unreachable; a stalled one within the store's command timeout.
    if (!cluster.storeReady()) throw UNREACHABLE;
    view = await clusterView(cluster);
  } catch (err) {
    const all = ctx.table.list();
    const error =
      err === UNREACHABLE ? UNREACHABLE.message : `the shared store (Redis) did not answer: ${errorMessage(err)}`;
    return {
      count: all.length,
      registrations: all.map((r) => ({ ...registrationState(ctx, req, r), ...localHolders(r, node) })),
      cluster: { node, available: false, error },
    };
  }
  const [listing, nodes] = view;
  const truncated = listing.length > CLUSTER_LIST_LIMIT;
  const rows = clusterRows(ctx, req, listing.slice(0, CLUSTER_LIST_LIMIT), node, truncated);
  return {
    count: rows.length,
    registrations: rows,
    cluster: {
      node,
      available: true,
      nodes: [...nodes].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)),
      truncated,
      limit: CLUSTER_LIST_LIMIT,
    },
  };
}

/** This node's part of a registration while the store does not answer: its channels, and its routes elsewhere. */
function localHolders(reg: Registration, node: string): Pick<StatusRegistration, 'holders' | 'remotes'> {
  return {
    holders: reg.channels.length > 0 ? [{ node, channels: reg.channels.length }] : [],
    ...(reg.channels.length === 0 && reg.remotes.length > 0 ? { remotes: reg.remotes.length } : {}),
  };
}

const byName = (a: { name: string }, b: { name: string }): number => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

/**
 * The rows of the store's listing, by name, with this node's detail (channels, requests, waiting
 * visitors) for the names it knows. This node's channels always show: a channel the store does not
 * count yet adds this node as a holder, and (unless the listing was cut at the limit, where the
 * name may only be further on) a name it holds that the listing lacks is added.
 */
function clusterRows(
  ctx: GatewayContext,
  req: IncomingMessage,
  listing: readonly ClusterListing[],
  node: string,
  truncated: boolean,
): RegistrationState[] {
  const now = Date.now();
  const rows: RegistrationState[] = [];
  const seen = new Set<string>();
  for (const l of listing) {
    seen.add(l.name);
    const reg = ctx.table.lookup(l.name);
    const local = reg ? registrationState(ctx, req, reg) : undefined;
    const holders: StatusHolder[] = [...l.holders].sort((a, b) => (a.node < b.node ? -1 : a.node > b.node ? 1 : 0));
    const mine = local?.channels.length ?? 0;
    if (mine > 0 && !holders.some((h) => h.node === node)) holders.push({ node, channels: mine });
    rows.push({
      name: l.name,
      url: publicUrlFor(ctx.settings, req, l.name),
      lease: l.lease,
      expiresAt: l.expiresIn < 0 ? null : new Date(now + l.expiresIn).toISOString(),
      requests: local?.requests ?? 0,
      waiting: local?.waiting ?? 0,
      channels: local?.channels ?? [],
      holders,
    });
  }
  if (!truncated) {
    for (const reg of ctx.table.list()) {
      if (seen.has(reg.name) || reg.channels.length === 0) continue;
      rows.push({ ...registrationState(ctx, req, reg), holders: [{ node, channels: reg.channels.length }] });
    }
  }
  return rows.sort(byName);
}

function privateUrl(ctx: GatewayContext, reg: Registration, req: IncomingMessage, res: ServerResponse): void {
  switch (req.method) {
    case 'GET':
    case 'HEAD': {
      req.resume();
      const state = registrationState(ctx, req, reg);
      const accept = req.headers.accept ?? '';
      let type: string;
      let body: string;
      if (wantsJson(accept)) {
        type = 'application/json; charset=utf-8';
        body = JSON.stringify(state);
      } else if (accept.includes('text/html')) {
        type = 'text/html; charset=utf-8';
        body = `<!doctype html><meta charset="utf-8"><title>${escapeHtml(reg.name)}</title><h1>${escapeHtml(reg.name)}</h1><pre>${escapeHtml(JSON.stringify(state, null, 2))}</pre>`;
      } else {
        type = 'application/x-www-form-urlencoded';
        body = new URLSearchParams({
          name: reg.name,
          url: String(state['url']),
          lease: String(reg.lease),
          channels: String(reg.channels.length),
          requests: String(reg.requests),
        }).toString();
      }
      res.writeHead(200, {
        'Content-Type': type,
        'Cache-Control': 'no-store',
        Link: `<${String(state['url'])}>; rel="related"`,
      });
      res.end(req.method === 'HEAD' ? undefined : body);
      return;
    }
    case 'PUT':
    case 'POST':
      readForm(req, ctx.settings.claimBodyLimit, ctx.settings.claimTimeout).then(
        async (form) => {
          try {
            const lease = form.get('lease');
            const token = form.get('token');
            await ctx.table.update(reg, {
              lease: lease === null ? undefined : parseLease(lease, ctx.settings.maxLease),
              token: token === null ? undefined : validateToken(token),
            });
          } catch (err) {
            sendError(res, isPtthError(err) ? err : new PtthError('PTTH_ERR_BAD_PARAMS'), req.headers.accept);
            return;
          }
          res.writeHead(204, { Link: `<${publicUrlFor(ctx.settings, req, reg.name)}>; rel="related"` });
          res.end();
        },
        (err: unknown) =>
          sendError(res, isPtthError(err) ? err : new PtthError('PTTH_ERR_BAD_PARAMS'), req.headers.accept, true),
      );
      return;
    case 'DELETE':
      req.resume();
      ctx.table.release(reg, 'deleted');
      res.writeHead(204);
      res.end();
      return;
    default:
      methodNotAllowed(req, res, 'GET, HEAD, PUT, DELETE');
  }
}

/** Reads a small form body (and the query string) with a size limit (413 past it) and a deadline (408). */
async function readForm(req: IncomingMessage, limit: number, timeout: number): Promise<URLSearchParams> {
  try {
    return formParams(req, await readBody(req, limit, 'The request body is too large.', timeout));
  } catch (err) {
    throw isPtthError(err) && err.code === 'PTTH_ERR_BODY_TOO_LARGE'
      ? new PtthError('PTTH_ERR_CLAIM_BODY_TOO_LARGE', 'The request body is too large.')
      : err;
  }
}
