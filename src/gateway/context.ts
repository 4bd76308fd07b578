import type { IncomingMessage, ServerResponse } from 'node:http';
import { isIP } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { AccessControl } from '../table/access.js';
import type { AddressCaps } from './addresscaps.js';
import type { EmitGatewayEvent } from './eventmap.js';
import type { RouteTable } from '../table/table.js';
import { hostname, type UrlMode } from './classify.js';

/** Every setting of the gateway, resolved (defaults applied). */
export interface GatewaySettings {
  /** Apps are served at `name.domain`. */
  readonly domain: string;
  /** Base of advertised URLs when the gateway sits behind a proxy or TLS terminator. */
  readonly publicUrl: URL | undefined;
  /**
   * Shape of public URLs (docs/PROTOCOL.md section 1): `host` (`NAME.domain`), `path`
   * (`GATEWAY/NAME/`), or `both` (either reaches the app; the host shape is advertised).
   */
  readonly urls: UrlMode;
  /** Longest lease a claim may ask for, in seconds. */
  readonly maxLease: number;
  readonly defaultLease: number;
  /** Channels one name may hold (429 past it). */
  readonly maxChannels: number;
  /** Largest claim request body, in bytes (413 past it). */
  readonly claimBodyLimit: number;
  /** Milliseconds a claimant has to send its declared body. */
  readonly claimTimeout: number;
  /** Milliseconds from a request's end to the app's response head (504). */
  readonly responseTimeout: number;
  readonly queueLimit: number;
  readonly queueTimeout: number;
  readonly reconnectWait: number;
  /** Offer reversed HTTP/2 to clients that ask for it (`Upgrade: ptth`, `ALPN: h2`). */
  readonly http2: boolean;
  /** Milliseconds between HTTP/2 PINGs on a reversed connection. */
  readonly pingInterval: number;
  /** Milliseconds a PING may go unanswered before the connection is declared dead. */
  readonly pingTimeout: number;
  /** Streams the gateway opens at once on one HTTP/2 channel at most. */
  readonly maxStreams: number;
  /**
   * An app's `Set-Cookie` whose Domain is one of these or a parent of one is dropped (the
   * domain apps share, and `--public-url`'s host); undefined with the cookie guard off.
   */
  readonly cookieDomains: readonly string[] | undefined;
}

/** Who sent an internal hop request (src/cluster/hop.ts): the node, the app name it is for, hops so far. */
export interface HopCredentials {
  readonly node: string;
  readonly name: string;
  readonly hops: number;
}

/**
 * What a node of a cluster adds to the gateway (src/cluster/): its id, the check of the internal
 * hop's credentials, and the shared store's health. Undefined for a gateway on its own.
 */
export interface ClusterHooks {
  readonly nodeId: string;
  /** The credentials in an `X-Ptth-Hop` header, or undefined when they do not check out. */
  verifyHop(value: string): HopCredentials | undefined;
  /** Whether the shared store answers now (`/readyz` answers 503 while it does not). */
  storeReady(): boolean;
  /**
   * Records that this node serves the Comet session whose id hashes (lookupKey) to `hash`; with
   * `expected`, only if it is still that node's (adopting a dead node's session: one winner).
   */
  shareSession(hash: string, name: string, expected?: string): Promise<boolean>;
  /** Calls `listener` after the node stated its holdings again (Redis came back, maybe empty). */
  onRestated(listener: () => void): void;
  /** Which node serves a Comet session, or undefined when the store knows none. */
  locateSession(hash: string): Promise<CometRoute | undefined>;
  /** Every registration of the cluster (at most `limit`), with the nodes holding its channels: the status page. */
  listRegistrations(limit: number): Promise<ClusterListing[]>;
  /** The live nodes of the cluster. */
  nodes(): Promise<{ readonly id: string; readonly url: string }[]>;
  /** Sends a request (a Comet poll or reply) to the node that serves its session, over the internal hop. */
  proxy(
    req: IncomingMessage,
    res: ServerResponse,
    peer: { readonly id: string; readonly url: URL },
    name: string,
  ): void;
}

/** A registration as the cluster's store lists it. */
export interface ClusterListing {
  readonly name: string;
  readonly keyId: string | undefined;
  /** Seconds. */
  readonly lease: number;
  readonly createdAt: number;
  /** Milliseconds until the lease ends, or -1 while some node holds a channel of it. */
  readonly expiresIn: number;
  /** The nodes holding its channels, and how many each. */
  readonly holders: readonly { readonly node: string; readonly channels: number }[];
}

/** Where a Comet session is served. */
export interface CometRoute {
  readonly name: string;
  readonly node: string;
  /** Where that node is reached; undefined when it is not live (its sessions may be adopted). */
  readonly url: URL | undefined;
}

/** Why this gateway should get no new work (`/readyz` answers 503 with it), or undefined when it is ready. */
export function notReady(ctx: Pick<GatewayContext, 'closing' | 'cluster'>): string | undefined {
  if (ctx.closing()) return 'shutting down';
  if (ctx.cluster !== undefined && !ctx.cluster.storeReady()) return 'the shared store (Redis) is unreachable';
  return undefined;
}

export interface GatewayContext {
  readonly settings: GatewaySettings;
  readonly table: RouteTable;
  /** Set on a node of a cluster. */
  readonly cluster: ClusterHooks | undefined;
  /** Who may claim what: access keys, reserved names, per-key limits (replaced whole on reload). */
  readonly access: AccessControl;
  /** Names, channels and connections one client address may hold at once. */
  readonly caps: AddressCaps;
  /** Emits a gateway event for the CLI or the embedding program. */
  readonly emit: EmitGatewayEvent;
  /** Whether anyone listens to per-request events (kept off the hot path otherwise). */
  readonly observed: { requests: boolean };
  /** True once close() began: new registrations of any kind are refused with 503. */
  closing(): boolean;
}

function isEncrypted(req: IncomingMessage): boolean {
  return (req.socket as TLSSocket).encrypted === true;
}

export function requestProto(req: IncomingMessage): 'http' | 'https' {
  return isEncrypted(req) ? 'https' : 'http';
}

/** `:port` as the request addressed the gateway, or '' for the scheme's default port. */
function portSuffix(req: IncomingMessage, proto: string): string {
  const host = req.headers.host;
  let port: string | undefined;
  if (host) {
    const h = hostname(host);
    const rest = host.slice(h.length);
    port = rest.startsWith(':') ? rest.slice(1) : undefined;
  } else {
    port = String(req.socket.localPort ?? '');
  }
  if (!port || (proto === 'http' && port === '80') || (proto === 'https' && port === '443')) return '';
  return `:${port}`;
}

/**
 * The gateway's own origin for URLs it advertises: `--public-url` when set, otherwise the scheme
 * and port the request reached the gateway with, and the configured domain (with path URLs on, an
 * IP literal the request came to: pathOrigin).
 */
export function gatewayOrigin(settings: GatewaySettings, req: IncomingMessage): string {
  if (settings.urls !== 'host') return pathOrigin(settings, req);
  if (settings.publicUrl) return settings.publicUrl.origin;
  const proto = requestProto(req);
  return `${proto}://${settings.domain}${portSuffix(req, proto)}`;
}

/**
 * An app's public URL (docs/PROTOCOL.md section 1): clients read it from `Link`, never build it.
 * `host` and `both` advertise the host shape (`NAME.domain`, which needs no prefix handling by the
 * app and keeps apps on origins of their own); `path` advertises `GATEWAY/NAME/`.
 */
export function publicUrlFor(settings: GatewaySettings, req: IncomingMessage, name: string): string {
  if (settings.urls === 'path') return `${pathOrigin(settings, req)}/${name}/`;
  if (settings.publicUrl) {
    const u = settings.publicUrl;
    return `${u.protocol}//${name}.${u.host}/`;
  }
  const proto = requestProto(req);
  return `${proto}://${name}.${settings.domain}${portSuffix(req, proto)}/`;
}

/**
 * The origin path-shaped URLs live under: `--public-url` when set; otherwise the request's own
 * host when it is an IP literal (a gateway on a laptop reached by address, where the domain would
 * name the wrong machine), else the domain; with the scheme and port the request came with.
 */
export function pathOrigin(settings: GatewaySettings, req: IncomingMessage): string {
  if (settings.publicUrl) return settings.publicUrl.origin;
  const proto = requestProto(req);
  const host = req.headers.host === undefined ? undefined : hostname(req.headers.host);
  const literal = host !== undefined && (host.startsWith('[') || isIP(host) !== 0) ? host : undefined;
  return `${proto}://${literal ?? settings.domain}${portSuffix(req, proto)}`;
}

export const PRIVATE_PREFIX = '/_ptth/';

export function privateUrlFor(settings: GatewaySettings, req: IncomingMessage, privateId: string): string {
  return `${gatewayOrigin(settings, req)}${PRIVATE_PREFIX}${privateId}`;
}
