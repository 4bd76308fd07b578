import * as dns from 'node:dns';
import * as net from 'node:net';
import type { LookupFunction } from 'node:net';

/**
 * The gateways a tunnel spreads its connections over. Every gateway given must be a node of one
 * cluster (one public name space): the name claimed on the first is claimed on the others with
 * the same token. A host name that resolves to several addresses is several nodes, dialled by
 * address but still named by host (Host header, TLS server name), as a load balancer's DNS
 * round-robin would be.
 */

/** What `ListenOptions.gateway` accepts: one gateway, or several nodes of one cluster. */
export type GatewaySpec = string | URL | readonly (string | URL)[];

const DEFAULT_GATEWAY = 'http://localhost:8080';

/** The gateways to use, in the order given, duplicates collapsed; bad input throws a TypeError. */
export function gatewayList(spec: GatewaySpec | undefined): URL[] {
  const list: readonly (string | URL)[] =
    spec === undefined ? [DEFAULT_GATEWAY] : typeof spec === 'string' || spec instanceof URL ? [spec] : spec;
  if (list.length === 0) throw new TypeError('gateway: the list is empty; give at least one gateway URL');
  const seen = new Map<string, URL>();
  for (const g of list) {
    const u = new URL(String(g));
    if (u.protocol !== 'http:' && u.protocol !== 'https:') {
      throw new TypeError(`gateway must be an http: or https: URL, got ${String(g)}`);
    }
    if (!seen.has(u.href)) seen.set(u.href, u);
  }
  return [...seen.values()];
}

/** A gateway's host name without IPv6 brackets. */
export function hostOf(gateway: URL): string {
  return gateway.hostname.replace(/^\[|\]$/g, '');
}

/**
 * Whether a gateway's host may stand for several nodes. Not an address, and not `localhost`: a
 * loopback name is one machine, and a gateway bound to it listens on one of its addresses only, so
 * spreading over the others would only find refusals (RFC 6761 reserves the name for loopback).
 */
export function spreadsByName(gateway: URL): boolean {
  const host = hostOf(gateway).toLowerCase();
  return net.isIP(host) === 0 && host !== 'localhost' && !host.endsWith('.localhost');
}

/** Every distinct address `host` resolves to; empty when it does not resolve (the dial will say why). */
export function resolveAll(host: string, lookup: LookupFunction | undefined): Promise<string[]> {
  return new Promise((resolve) => {
    const callback = (err: NodeJS.ErrnoException | null, found: string | dns.LookupAddress[]): void => {
      if (err) resolve([]);
      else resolve([...new Set(typeof found === 'string' ? [found] : found.map((a) => a.address))]);
    };
    try {
      if (lookup) lookup(host, { all: true }, callback);
      else dns.lookup(host, { all: true }, callback);
    } catch {
      resolve([]);
    }
  });
}

/** A `lookup` for net.connect that answers `address` whatever it is asked, so the host name stays the dial's name. */
export function pinnedLookup(address: string): LookupFunction {
  const family = net.isIP(address);
  return (_host, options, callback) => {
    if (options.all) callback(null, [{ address, family }]);
    else callback(null, address, family);
  };
}

/** One node the pool dials: a gateway, pinned to one of its addresses when its name resolves to several. */
export class GatewayNode {
  readonly gateway: URL;
  readonly address: string | undefined;
  /** Dials go here; false from a failed dial or refused claim until a claim succeeds here again. */
  up = true;
  /** Down, but its retry time has come: dials may go here again. */
  retry = false;
  /** Failed retries since it was last up: the delay before the next one grows with them. */
  failures = 0;
  timer: NodeJS.Timeout | undefined;

  constructor(gateway: URL, address: string | undefined) {
    this.gateway = gateway;
    this.address = address;
  }

  /** Whether dials may go here. */
  get usable(): boolean {
    return this.up || this.retry;
  }
}

/** What `Tunnel.nodes` and its `node` event report about one node. */
export interface NodeStatus {
  /** The gateway's URL as given. */
  gateway: string;
  /** The address dialled, when the gateway's name resolved to several; undefined: the name itself. */
  address: string | undefined;
  /** Whether the node takes connections (false after a failed dial or a refused claim, until one succeeds). */
  up: boolean;
  /** Live reversed connections on this node. */
  connections: number;
  /** Why it went down (in the `node` event of a lost node). */
  error?: Error;
}
