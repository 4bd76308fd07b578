import { isIP, isIPv6 } from 'node:net';
import { hasToken } from '../http/headers.js';
import { loggableName } from '../table/names.js';

/**
 * Pure classification of an incoming request (no I/O): which of the gateway's roads it takes.
 * docs/PROTOCOL.md section 1: a Host that is the domain, an IP literal, or outside the domain goes to the
 * gateway's own endpoints; `name.domain` is the app `name`. With path URLs on (`urls` path or both),
 * a path on the gateway host whose first segment is a name (`/name/...`) is the app `name` too.
 */
export type Route =
  /** A native claim: `Upgrade: PTTH/1.0` or `ptth` (name from the Host when it is an app host). */
  | { readonly kind: 'claim'; readonly hostName: string | undefined }
  /** An ordinary request (or upgrade) for the app `name`; `via` when the path named it. */
  | { readonly kind: 'visitor'; readonly name: string; readonly via?: PathPrefix }
  /** The gateway's own endpoints. */
  | { readonly kind: 'gateway' }
  /** A WebSocket channel claim (docs/PROTOCOL.md section 6): `Upgrade: websocket` on the gateway host. */
  | { readonly kind: 'websocket' }
  /** A Comet registration (docs/PROTOCOL.md section 5): `POST /reversehttp` (or `/reversehttp/`) on the gateway host. */
  | { readonly kind: 'comet' };

/** The Gateway Service URL of the Comet protocol (docs/PROTOCOL.md section 5). */
export const SERVICE_PATH = '/reversehttp';

/** Shape of public URLs: `NAME.domain`, `GATEWAY/NAME/`, or either (docs/PROTOCOL.md section 1). */
export type UrlMode = 'host' | 'path' | 'both';

/** A visitor's request that a path named: `/name/...`, or `/name` alone (`bare`). */
export interface PathPrefix {
  /** `/name`, exactly as the visitor sent it: removed from the path, told the app in X-Forwarded-Prefix. */
  readonly prefix: string;
  /** The path was `/name` with nothing after it (the query aside). */
  readonly bare: boolean;
}

/**
 * First path segments the gateway serves on its own host: with path URLs on they are never app
 * names (claims of them are refused, PTTH_ERR_NAME_RESERVED) and never routed to an app. The
 * Comet service, private URLs, the browser library, the health and metrics endpoints, and the
 * RelayHttp endpoint. `_ptth` and `ptth.js` are no valid names anyway; they are listed so this is
 * the one list of what the gateway keeps for itself.
 */
export const GATEWAY_SEGMENTS: ReadonlySet<string> = new Set([
  SERVICE_PATH.slice(1),
  '_ptth',
  'ptth.js',
  'metrics',
  'healthz',
  'readyz',
  'relay',
]);

/** Whether `name` is one of the gateway's own first path segments (GATEWAY_SEGMENTS). */
export function isGatewaySegment(name: string): boolean {
  return GATEWAY_SEGMENTS.has(name);
}

/**
 * The app a gateway-host path names, or undefined when it names none: the first segment must be
 * a name as names are spelled (one lower-case DNS label: paths are case-sensitive, RFC 3986
 * section 6.2.2.1, so `/Foo/` is not `/foo/`), and not one of the gateway's own segments.
 */
export function nameFromPath(path: string | undefined): { name: string; via: PathPrefix } | undefined {
  if (path === undefined || !path.startsWith('/')) return undefined;
  const end = path.indexOf('/', 1);
  const segment = end === -1 ? path.slice(1) : path.slice(1, end);
  if (segment === '' || loggableName(segment) !== segment || isGatewaySegment(segment)) return undefined;
  return { name: segment, via: { prefix: `/${segment}`, bare: end === -1 } };
}

export interface RequestHead {
  readonly host: string | undefined;
  readonly upgrade: string | undefined;
  /**
   * Method of a request node parsed whole: a Comet registration is one. Absent for an upgrade,
   * which never is.
   */
  readonly method?: string | undefined;
  /** The target without its query: a Comet registration's, and with path URLs on an app's. */
  readonly path?: string | undefined;
}

const GATEWAY: Route = { kind: 'gateway' };
const WEBSOCKET: Route = { kind: 'websocket' };
const COMET: Route = { kind: 'comet' };

/** `POST /reversehttp` or `/reversehttp/`, as comet.ts takes a registration. */
function isCometRegistration(method: string | undefined, path: string | undefined): boolean {
  return method === 'POST' && (path === SERVICE_PATH || path === `${SERVICE_PATH}/`);
}

/** Strips the port from a Host value (`[::1]:8080`, `foo.localhost:8080`) and lower-cases it. */
export function hostname(host: string): string {
  if (host.startsWith('[')) {
    const end = host.indexOf(']');
    return (end === -1 ? host : host.slice(0, end + 1)).toLowerCase();
  }
  const colon = host.lastIndexOf(':');
  return (colon === -1 ? host : host.slice(0, colon)).toLowerCase();
}

/**
 * A Host value the gateway routes: a DNS name or IPv4 address (letters, digits, `.`, `-`, `_`) or a
 * bracketed IPv6 literal, then optionally `:` and a decimal port up to 65535 (RFC 9110 section 7.2,
 * RFC 3986 sections 3.2.2-3.2.3). An empty Host is allowed (RFC 9112 section 3.2: a target without
 * an authority) and names the gateway. RFC 3986 allows an empty port (`host:`) too, but no client
 * sends one and it would be advertised back in URLs, so it is refused with the rest.
 */
const HOST = /^(?:\[([0-9A-Fa-f:.]+)\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?$/;

/** Why `host` cannot be routed, or undefined when it can. */
export function hostProblem(host: string | undefined): string | undefined {
  if (host === undefined || host === '') return undefined;
  const m = HOST.exec(host);
  const literal = m?.[1];
  const port = m?.[2];
  if (!m || (literal !== undefined && !isIPv6(literal)) || (port !== undefined && Number(port) > 65_535)) {
    const shown = JSON.stringify(host.slice(0, 100));
    return (
      `The Host header ${shown} is not a host name or IP address with an optional port number ` +
      '(RFC 3986 section 3.2).'
    );
  }
  return undefined;
}

/**
 * The origin-form of an absolute-form request target (RFC 9112 section 3.2.2), or a reason to
 * refuse it. The gateway is the origin server for its apps, so the target's authority is the one
 * that counts; a Host naming another authority means a client (or a proxy in front) that routed by
 * one name while the gateway would route by the other, so the request is refused rather than
 * guessed at. Apps get origin-form, the raw path and query as sent (no dot-segment or percent
 * normalisation), as from any other visitor.
 */
export function originForm(url: string, host: string | undefined): { path: string } | { problem: string } {
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(url);
  let target: URL | undefined;
  try {
    target = scheme ? new URL(url) : undefined;
  } catch {
    target = undefined;
  }
  if (!scheme || !target || (target.protocol !== 'http:' && target.protocol !== 'https:') || target.host === '') {
    const problem = 'The request target must be a path (/...) or an absolute http or https URL (RFC 9112 section 3.2).';
    return { problem };
  }
  // RFC 9110 section 4.2.4: userinfo in an http(s) URI is to be treated as an error.
  if (target.username !== '' || target.password !== '') {
    return { problem: 'The request target carries user information, which HTTP forbids (RFC 9110 section 4.2.4).' };
  }
  let named: string | undefined;
  try {
    named = host ? new URL(`${target.protocol}//${host}`).host : undefined;
  } catch {
    named = undefined;
  }
  if (named !== target.host) {
    const names = `The target names ${JSON.stringify(target.host)} but Host names ${JSON.stringify(host ?? '')}`;
    return { problem: `${names}: send the same authority in both (RFC 9112 section 3.2).` };
  }
  const start = (scheme[0] as string).length;
  const rest = url.slice(start);
  const at = rest.search(/[/?]/);
  const tail = at === -1 ? '' : rest.slice(at);
  return { path: tail.startsWith('/') ? tail : `/${tail}` };
}

/** The app name a Host addresses under `domain`, or undefined for the gateway itself. */
export function nameFromHost(host: string | undefined, domain: string): string | undefined {
  if (!host) return undefined;
  let h = hostname(host);
  if (h.endsWith('.')) h = h.slice(0, -1); // absolute form "foo.localhost."
  if (h === domain || h.startsWith('[') || isIP(h) !== 0) return undefined;
  // `.localhost`: an app host with an empty label, refused as a bad name rather than served as the gateway.
  if (h === `.${domain}`) return '';
  if (h.length <= domain.length + 1 || !h.endsWith(domain) || h[h.length - domain.length - 1] !== '.') {
    return undefined;
  }
  return h.slice(0, h.length - domain.length - 1);
}

/** `PTTH/1.0` (draft-lentczner-rhttp-00) or `ptth` (draft-kazuho-ptth-ptth) in the Upgrade list. */
export function isPtthUpgrade(upgrade: string | undefined): boolean {
  return hasToken(upgrade, 'PTTH/1.0') || hasToken(upgrade, 'ptth');
}

/**
 * The road a request takes. `urls` (default host): path names apps on the gateway host too
 * (`path` and `both`); `path` alone also makes `name.domain` an ordinary gateway host for
 * visitors, and `both` the host of `--public-url` (`publicHost`) even when it lies under the
 * domain, since path URLs live there. A native claim keeps naming its app by Host in every mode
 * (docs/PROTOCOL.md section 2).
 */
export function classify(head: RequestHead, domain: string, urls: UrlMode = 'host', publicHost?: string): Route {
  const hostName = nameFromHost(head.host, domain);
  if (head.upgrade !== undefined && isPtthUpgrade(head.upgrade)) return { kind: 'claim', hostName };
  const own =
    urls === 'path' ||
    (urls === 'both' &&
      publicHost !== undefined &&
      head.host !== undefined &&
      hostname(head.host).replace(/\.$/, '') === publicHost);
  const name = own ? undefined : hostName;
  if (name !== undefined) return { kind: 'visitor', name };
  if (urls !== 'host') {
    const named = nameFromPath(head.path);
    if (named) return { kind: 'visitor', name: named.name, via: named.via };
  }
  if (isCometRegistration(head.method, head.path)) return COMET;
  return head.upgrade !== undefined && hasToken(head.upgrade, 'websocket') ? WEBSOCKET : GATEWAY;
}
