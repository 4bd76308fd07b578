import { BlockList, isIP } from 'node:net';

/**
 * Where the RelayHttp endpoint may send a request (docs/PROTOCOL.md section 10): each access key
 * names its targets in the keys file (`relay`, a list of `host[:port]` patterns), and whatever a
 * pattern says, an address that is not on the public internet is refused unless a pattern names
 * that very address. A host name is checked twice: against the patterns as written, and, at
 * connect time, every address it resolves to (DNS rebinding: a name the operator allowed that
 * resolves to 127.0.0.1 or to the cloud metadata service).
 */

/** One allow-list entry: `example.com`, `*.example.com:8443`, `127.0.0.1:8080`, `[::1]:8080`. */
export interface RelayPattern {
  /** Lower-case host; for a wildcard the suffix after `*.` (`example.com`). */
  readonly host: string;
  /** `*.` prefix: any host name under `host` (not `host` itself). */
  readonly wildcard: boolean;
  /** An IP address written as such: the only way to allow a non-public address. */
  readonly ip: boolean;
  /** Undefined: any port. */
  readonly port: number | undefined;
  /** As written, for logs and errors. */
  readonly text: string;
}

/** What kind of address a relay would connect to; all but `public` need a pattern naming it. */
export type AddressKind = 'public' | 'loopback' | 'private' | 'link-local' | 'metadata' | 'reserved';

const HOST_NAME = /^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * Parses one `host[:port]` pattern from the keys file. Throws a plain Error whose message says
 * what is wrong; the keys-file validator adds where it was.
 */
export function parseRelayPattern(text: string): RelayPattern {
  if (typeof text !== 'string' || text.length === 0)
    throw new Error('a relay pattern is a non-empty "host[:port]" string');
  let host: string;
  let portText: string | undefined;
  if (text.startsWith('[')) {
    const close = text.indexOf(']');
    if (close === -1) throw new Error(`"${text}": an IPv6 address is written [address] or [address]:port`);
    host = text.slice(1, close);
    const rest = text.slice(close + 1);
    if (rest !== '' && !rest.startsWith(':')) throw new Error(`"${text}": only ":port" may follow [address]`);
    portText = rest === '' ? undefined : rest.slice(1);
    if (isIP(host) !== 6) throw new Error(`"${text}": [${host}] is not an IPv6 address`);
  } else if (isIP(text) === 6) {
    host = text; // a bare IPv6 address: no port can follow it unbracketed
  } else {
    const colon = text.lastIndexOf(':');
    host = colon === -1 ? text : text.slice(0, colon);
    portText = colon === -1 ? undefined : text.slice(colon + 1);
  }
  const port = portText === undefined ? undefined : parsePort(portText, text);
  host = host.toLowerCase();
  const wildcard = host.startsWith('*.');
  if (wildcard) host = host.slice(2);
  const ip = isIP(host) !== 0;
  if (ip && wildcard) throw new Error(`"${text}": "*." goes before a host name, not an address`);
  // (A "*" anywhere but the "*." prefix fails this too.)
  if (!ip && !HOST_NAME.test(host)) throw new Error(`"${text}": "${host}" is not a host name or an IP address`);
  return { host, wildcard, ip, port, text };
}

function parsePort(text: string, pattern: string): number {
  const port = /^\d{1,5}$/.test(text) ? Number(text) : Number.NaN;
  if (!(port >= 1 && port <= 65_535)) throw new Error(`"${pattern}": the port must be 1 to 65535`);
  return port;
}

/** The pattern that lets `host:port` through, by name, or undefined. */
export function matchTarget(patterns: readonly RelayPattern[], host: string, port: number): RelayPattern | undefined {
  const h = host.toLowerCase();
  for (const p of patterns) {
    if (p.port !== undefined && p.port !== port) continue;
    if (p.wildcard ? h.endsWith(`.${p.host}`) : h === p.host) return p;
  }
  return undefined;
}

const KINDS: [AddressKind, string, number, 'ipv4' | 'ipv6'][] = [
  // Cloud metadata services first: they sit inside link-local (169.254.169.254) or ULA ranges.
  ['metadata', '169.254.169.254', 32, 'ipv4'],
  ['metadata', '100.100.100.200', 32, 'ipv4'], // Alibaba Cloud
  ['metadata', 'fd00:ec2::254', 128, 'ipv6'], // AWS over IPv6
  ['loopback', '127.0.0.0', 8, 'ipv4'],
  ['loopback', '::1', 128, 'ipv6'],
  ['private', '10.0.0.0', 8, 'ipv4'],
  ['private', '172.16.0.0', 12, 'ipv4'],
  ['private', '192.168.0.0', 16, 'ipv4'],
  ['private', '100.64.0.0', 10, 'ipv4'], // carrier-grade NAT (RFC 6598)
  ['private', 'fc00::', 7, 'ipv6'], // unique local (RFC 4193)
  ['link-local', '169.254.0.0', 16, 'ipv4'],
  ['link-local', 'fe80::', 10, 'ipv6'],
  ['reserved', '0.0.0.0', 8, 'ipv4'], // "this network": 0.0.0.0 reaches the local host on Linux
  ['reserved', '::', 128, 'ipv6'],
  ['reserved', '192.0.0.0', 24, 'ipv4'],
  ['reserved', '198.18.0.0', 15, 'ipv4'], // benchmarking
  ['reserved', '224.0.0.0', 3, 'ipv4'], // multicast and class E, broadcast
  ['reserved', 'ff00::', 8, 'ipv6'],
  ['reserved', '64:ff9b:1::', 48, 'ipv6'], // local-use NAT64
];

const LISTS = new Map<AddressKind, BlockList>();
for (const [kind, net, prefix, family] of KINDS) {
  let list = LISTS.get(kind);
  if (!list) {
    list = new BlockList();
    LISTS.set(kind, list);
  }
  list.addSubnet(net, prefix, family);
}

/**
 * The kind of an IP address. IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) are their IPv4
 * address; NAT64 (`64:ff9b::/96`) and 6to4 forms of a non-public IPv4 address are refused as it is.
 */
export function addressKind(address: string): AddressKind {
  const family = isIP(address);
  if (family === 0) return 'reserved';
  const embedded = family === 6 ? embeddedIPv4(address) : undefined;
  if (embedded !== undefined) return addressKind(embedded);
  const type = family === 4 ? 'ipv4' : 'ipv6';
  for (const [kind, list] of LISTS) if (list.check(address, type)) return kind;
  return 'public';
}

/** The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d), NAT64 (64:ff9b::/96) or 6to4 (2002::/16) one. */
function embeddedIPv4(address: string): string | undefined {
  const groups = expandIPv6(address);
  if (!groups) return undefined;
  const v4 = (hi: number, lo: number): string => `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  const zeros = (from: number, to: number): boolean => groups.slice(from, to).every((g) => g === 0);
  if (zeros(0, 5) && groups[5] === 0xffff) return v4(groups[6] as number, groups[7] as number);
  if (groups[0] === 0x64 && groups[1] === 0xff9b && zeros(2, 6)) return v4(groups[6] as number, groups[7] as number);
  if (groups[0] === 0x2002) return v4(groups[1] as number, groups[2] as number);
  return undefined;
}

/** The eight 16-bit groups of an IPv6 address (valid by isIP), dotted IPv4 tail included. */
function expandIPv6(address: string): number[] | undefined {
  let text = address.toLowerCase();
  const zone = text.indexOf('%');
  if (zone !== -1) text = text.slice(0, zone);
  const tail = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (tail) {
    const [a, b, c, d] = tail.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, tail.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, rest] = text.split('::') as [string, string | undefined];
  const left = head === '' ? [] : head.split(':');
  const right = rest === undefined || rest === '' ? [] : rest.split(':');
  const fill = rest === undefined ? 0 : 8 - left.length - right.length;
  const groups = [...left, ...Array<string>(Math.max(fill, 0)).fill('0'), ...right].map((g) => Number.parseInt(g, 16));
  return groups.length === 8 ? groups : undefined;
}

/**
 * Whether a relay may connect to `address` (what the target's name resolved to, or the address
 * it was written as). Public addresses pass; any other passes only when one of the key's patterns
 * is that exact address (with its port, if the pattern has one): listing `*.example.com` never
 * opens the loopback interface, whatever example.com's DNS says.
 */
export function addressAllowed(patterns: readonly RelayPattern[], address: string, port: number): boolean {
  const kind = addressKind(address);
  if (kind === 'public') return true;
  const canonical = canonicalIp(address);
  return patterns.some((p) => p.ip && (p.port === undefined || p.port === port) && canonicalIp(p.host) === canonical);
}

/** One spelling per address, for comparing a resolved address with one written in a pattern. */
function canonicalIp(address: string): string {
  if (isIP(address) === 4) return address;
  const groups = expandIPv6(address);
  return groups ? groups.map((g) => g.toString(16)).join(':') : address;
}
