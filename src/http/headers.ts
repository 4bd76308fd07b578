/**
 * Header handling for the relay: hop-by-hop removal (RFC 9110 section 7.6.1) and the forwarding
 * headers the gateway adds. Works on flat raw header arrays (`[name, value, name, value, ...]`) so
 * that names keep the case and order the peer sent, as docs/PROTOCOL.md section 3 asks.
 */

/** RFC 9110 section 7.6.1 plus Trailer (the relay does not forward trailers). */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  'connection',
  'proxy-connection',
  'keep-alive',
  'te',
  'transfer-encoding',
  'upgrade',
  'trailer',
]);

/**
 * The internal hop's credentials (docs/PROTOCOL.md section 12): between gateway nodes of a cluster
 * only. A node checks and removes them; a visitor's own never reach an app.
 */
export const HOP_HEADER = 'X-Ptth-Hop';

/**
 * Headers the gateway asserts itself: whatever a visitor sent under these names is dropped
 * (X-Ptth-Hop too, so that no app can be taught to trust a value a visitor chose).
 */
const GATEWAY_ASSERTED = new Set([
  'x-forwarded-host',
  'x-forwarded-proto',
  'requesting-client',
  'x-ptth-hop',
  'x-ptth-hop-kind',
]);

/** RFC 9110 section 9.2.2: methods a client may send again after a connection failed. */
const IDEMPOTENT: ReadonlySet<string | undefined> = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

export function idempotent(method: string | undefined): boolean {
  return IDEMPOTENT.has(method);
}

/** Names listed in Connection are hop-by-hop too (RFC 9110 section 7.6.1). */
export function connectionOptions(raw: readonly unknown[]): Set<string> | undefined {
  let extra: Set<string> | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i];
    const value = raw[i + 1];
    if (
      typeof name === 'string' &&
      name.length === 10 &&
      typeof value === 'string' &&
      name.toLowerCase() === 'connection'
    ) {
      for (const token of value.split(',')) {
        const t = token.trim().toLowerCase();
        if (!t || t === 'close' || t === 'keep-alive' || t === 'upgrade') continue;
        extra ??= new Set();
        extra.add(t);
      }
    }
  }
  return extra;
}

export interface ForwardInfo {
  /** Visitor's address as seen by the gateway. */
  readonly clientAddress: string;
  readonly clientPort: number;
  /** `http` or `https`: how the visitor reached the gateway. */
  readonly proto: string;
  /** Keep `Upgrade` and `Connection: upgrade` (visitor upgrade requests). */
  readonly upgrade?: string | undefined;
}

function quoteForwardedFor(address: string): string {
  // RFC 7239 section 6: IPv6 addresses are bracketed and the whole value quoted.
  return address.includes(':') ? `"[${address}]"` : address;
}

/** `::ffff:127.0.0.1` (an IPv4 visitor on a dual-stack socket) -> `127.0.0.1`. */
export function clientAddress(address: string | undefined): string {
  if (!address) return '';
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}

export function requestingClient(address: string, port: number): string {
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}

/**
 * The header list sent to the app for a visitor's request: end-to-end headers unchanged and in
 * order, hop-by-hop ones removed, forwarding headers added.
 */
export function forwardRequestHeaders(raw: readonly string[], info: ForwardInfo): string[] {
  const extra = connectionOptions(raw);
  const out: string[] = [];
  let xff: string | undefined;
  let forwarded: string | undefined;
  let host: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const value = raw[i + 1] as string;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || GATEWAY_ASSERTED.has(lower) || extra?.has(lower)) continue;
    if (lower === 'x-forwarded-for') {
      xff = xff === undefined ? value : `${xff}, ${value}`;
      continue;
    }
    if (lower === 'forwarded') {
      forwarded = forwarded === undefined ? value : `${forwarded}, ${value}`;
      continue;
    }
    if (lower === 'host') host = value;
    out.push(name, value);
  }
  const addr = info.clientAddress;
  out.push('X-Forwarded-For', xff === undefined ? addr : `${xff}, ${addr}`);
  if (host !== undefined) out.push('X-Forwarded-Host', host);
  out.push('X-Forwarded-Proto', info.proto);
  let fwd = `for=${quoteForwardedFor(addr)};proto=${info.proto}`;
  if (host !== undefined) fwd += `;host="${host.replace(/["\\]/g, '')}"`;
  out.push('Forwarded', forwarded === undefined ? fwd : `${forwarded}, ${fwd}`);
  out.push('Requesting-Client', requestingClient(addr, info.clientPort));
  if (info.upgrade !== undefined) out.push('Connection', 'Upgrade', 'Upgrade', info.upgrade);
  return out;
}

/**
 * The header list for the app of a request that came over the internal hop: the sending node built
 * it for the app already (forwarding headers with the visitor's address), so only its credentials
 * and the hop's own hop-by-hop fields go. An upgrade keeps its `Connection: Upgrade` and `Upgrade`,
 * as a visitor's does.
 */
export function hopRequestHeaders(raw: readonly string[], upgrade: string | undefined): string[] {
  const extra = connectionOptions(raw);
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || extra?.has(lower) || lower === 'x-ptth-hop') continue;
    out.push(name, raw[i + 1] as string);
  }
  if (upgrade !== undefined) out.push('Connection', 'Upgrade', 'Upgrade', upgrade);
  return out;
}

/** A header list with hop-by-hop fields removed (responses relayed to visitors, requests to local services). */
export function withoutHopByHop(raw: readonly string[], status?: number): string[] {
  const extra = connectionOptions(raw);
  // RFC 9110 section 8.6: no Content-Length in a 1xx or 204 response; an app's is not relayed.
  const noLength = status !== undefined && (status < 200 || status === 204);
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || extra?.has(lower) || (noLength && lower === 'content-length')) continue;
    out.push(name, raw[i + 1] as string);
  }
  return out;
}

/**
 * Whether a request parsed by llhttp has a body whose length it did not declare (it came
 * chunked): the Transfer-Encoding that framed it is hop-by-hop and is not passed on.
 */
export function unframedBody(req: { readonly headers: { readonly [name: string]: unknown } }): boolean {
  return req.headers['transfer-encoding'] !== undefined && req.headers['content-length'] === undefined;
}

/**
 * A header list for node's HTTP/1.1 client with the body's framing made explicit. For GET, HEAD,
 * DELETE, OPTIONS and TRACE node's client adds no framing of its own: a body of undeclared length
 * would go down the connection raw, and the server would read it as a second request (smuggled
 * past the forwarding headers and rate limits of whoever relayed it, and, left unterminated,
 * capturing the next request). Such a body is sent chunked, whatever the method (RFC 9112
 * section 6.1); node's client honours an explicit Transfer-Encoding.
 */
export function withBodyFraming(headers: string[], unframed: boolean): string[] {
  return unframed ? [...headers, 'Transfer-Encoding', 'chunked'] : headers;
}

/** A flat raw header list without the fields named in `names` (lower case). */
export function withoutHeaders(raw: readonly string[], ...names: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    if (names.includes((raw[i] as string).toLowerCase())) continue;
    out.push(raw[i] as string, raw[i + 1] as string);
  }
  return out;
}

/** First value of a header in a flat raw list, case-insensitively. */
export function rawHeader(raw: readonly string[], name: string): string | undefined {
  for (let i = 0; i < raw.length; i += 2) {
    if ((raw[i] as string).toLowerCase() === name) return raw[i + 1];
  }
  return undefined;
}

/** Whether a comma-separated header value (case-insensitive tokens) contains `token`. */
export function hasToken(value: string | undefined, token: string): boolean {
  if (!value) return false;
  const want = token.toLowerCase();
  for (const part of value.split(',')) if (part.trim().toLowerCase() === want) return true;
  return false;
}

/** undici's raw header list (Buffers) as the strings node:http would have given (latin1). */
export function headerStrings(raw: readonly (Buffer | string)[] | null): string[] {
  const out: string[] = [];
  if (raw) for (const h of raw) out.push(typeof h === 'string' ? h : h.toString('latin1'));
  return out;
}
