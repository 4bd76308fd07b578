import { isIP } from 'node:net';
import { hasToken } from '../http/headers.js';

/**
 * Pure classification of an incoming request (no I/O): which of the gateway's roads it takes.
 * PROTOCOL.md section 1: a Host that is the domain, an IP literal, or outside the domain goes to the
 * gateway's own endpoints; `name.domain` is the app `name`.
 */
export type Route =
  /** A native claim: `Upgrade: PTTH/1.0` or `ptth` (name from the Host when it is an app host). */
  | { readonly kind: 'claim'; readonly hostName: string | undefined }
  /** An ordinary request (or upgrade) for the app `name`. */
  | { readonly kind: 'visitor'; readonly name: string }
  /** The gateway's own endpoints. */
  | { readonly kind: 'gateway' }
  /** A WebSocket channel claim (PROTOCOL.md section 4): `Upgrade: websocket` on the gateway host. */
  | { readonly kind: 'websocket' };

export interface RequestHead {
  readonly host: string | undefined;
  readonly upgrade: string | undefined;
}

const GATEWAY: Route = { kind: 'gateway' };
const WEBSOCKET: Route = { kind: 'websocket' };

/** Strips the port from a Host value (`[::1]:8080`, `foo.localhost:8080`) and lower-cases it. */
export function hostname(host: string): string {
  if (host.startsWith('[')) {
    const end = host.indexOf(']');
    return (end === -1 ? host : host.slice(0, end + 1)).toLowerCase();
  }
  const colon = host.lastIndexOf(':');
  return (colon === -1 ? host : host.slice(0, colon)).toLowerCase();
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

export function classify(head: RequestHead, domain: string): Route {
  const name = nameFromHost(head.host, domain);
  if (head.upgrade !== undefined && isPtthUpgrade(head.upgrade)) return { kind: 'claim', hostName: name };
  if (name === undefined) return head.upgrade !== undefined && hasToken(head.upgrade, 'websocket') ? WEBSOCKET : GATEWAY;
  return { kind: 'visitor', name };
}
