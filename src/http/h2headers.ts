import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http2';

/*
 * Header fields between node:http's flat raw lists (`[name, value, name, value...]`, what llhttp
 * gives and what the relay passes on) and node:http2's header objects (lower-case names, repeated
 * fields as arrays).
 */

/**
 * Adds a flat raw header list to `into` (an HTTP/2 header object that may already hold the
 * pseudo-headers) and returns it. Names are lower-cased (RFC 9113 section 8.2.1) and a repeated
 * field becomes an array, in order. A request (`request` true) also follows RFC 9113's request
 * rules: `Host` is left out (it travels as `:authority`, section 8.3.1) and repeated `Cookie`
 * fields are joined with "; " (section 8.2.3).
 */
export function toH2Headers(raw: readonly string[], into: OutgoingHttpHeaders, request: boolean): OutgoingHttpHeaders {
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] as string).toLowerCase();
    const value = raw[i + 1] as string;
    if (request && name === 'host') continue;
    const prev = into[name];
    if (prev === undefined) into[name] = value;
    else if (request && name === 'cookie') into[name] = `${String(prev)}; ${value}`;
    else if (Array.isArray(prev)) prev.push(value);
    else into[name] = [String(prev), value];
  }
  return into;
}

/**
 * An HTTP/2 header object as a flat raw list, pseudo-headers (`:status`, `:path`...) left out, and
 * any field named in `drop` (lower case) too. Appends to `into` and returns it.
 */
export function fromH2Headers(headers: IncomingHttpHeaders, into: string[] = [], drop?: string): string[] {
  for (const name of Object.keys(headers)) {
    if (name.charCodeAt(0) === 58 /* : */ || name === drop) continue;
    const value = headers[name];
    if (value === undefined) continue;
    if (Array.isArray(value)) for (const v of value) into.push(name, v);
    else into.push(name, String(value));
  }
  return into;
}
