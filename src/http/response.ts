import { maxHeaderSize, STATUS_CODES } from 'node:http';
import { PtthError } from './errors.js';
import { HOP_BY_HOP, connectionOptions } from './headers.js';

/**
 * An app's response head, checked before the gateway writes any of it (README "Security"): apps
 * are peers, not friends. Every transport (reversed HTTP/1.1 and HTTP/2, the WebSocket channel,
 * Comet replies, and the answers to visitors' upgrade requests) passes what the app sent through
 * `checkResponseHead`, so one set of rules holds everywhere and node's `writeHead` never throws on
 * app data (it stores the status line before it validates it, which once let one bad reason
 * phrase end the process through the error path).
 */
export interface ResponseHead {
  readonly status: number;
  /** The reason phrase to send: the app's when valid and non-empty, else the standard one. */
  readonly reason: string;
  /** Hop-by-hop fields removed (RFC 9110 section 7.6.1), every name and value valid. */
  readonly headers: string[];
  /** `Set-Cookie` fields dropped because they named the gateway's domain or a parent of it. */
  readonly cookiesDropped: number;
}

/**
 * The largest response head an app may send, on any transport: the one its reversed HTTP/1.1
 * channel would accept. node's HTTP parser stops at `http.maxHeaderSize` bytes (16 KiB,
 * `--max-http-header-size`), counted as on the wire (status line, `name: value` CRLF per field).
 */
export const MAX_HEAD_BYTES = maxHeaderSize;
/** More header fields than a ClientRequest keeps (its `maxHeadersCount`): refused, not cut. */
export const MAX_HEADER_FIELDS = 2000;

/** RFC 9110 section 5.6.2: token = 1*tchar. */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/**
 * RFC 9110 section 5.5 field-value and RFC 9112 section 4 reason-phrase: HTAB, SP, VCHAR and
 * obs-text. Anything else (CR, LF, NUL, other controls, DEL, characters past Latin-1 from a JSON
 * frame) is refused, as node's own writeHead would refuse it (checkInvalidHeaderChar).
 */
const BAD_TEXT = /[^\t\x20-\x7e\x80-\xff]/;
/** RFC 9110 section 8.6: Content-Length = 1*DIGIT. */
const DIGITS = /^\d+$/;

/**
 * The rules for a response head. `status` must be a final status, 200 to 599 (RFC 9110 section
 * 15: 1xx are interim, and values past 599 are not status codes), or 101 where `upgrade` says a
 * switch of protocols is what the request asked for. `cookieDomains`: the domains whose tenants
 * must not set cookies for each other (see `dropsCookie`); undefined keeps every cookie.
 */
export function checkResponseHead(
  status: unknown,
  reason: unknown,
  raw: readonly unknown[],
  cookieDomains: readonly string[] | undefined,
  upgrade = false,
): ResponseHead | PtthError {
  if (
    typeof status !== 'number' ||
    !Number.isInteger(status) ||
    ((status < 200 || status > 599) && !(upgrade && status === 101))
  ) {
    return bad(`status ${shortForm(status)} is not a final HTTP status (200 to 599)`);
  }
  if (reason !== undefined && typeof reason !== 'string') return bad('the reason phrase is not text');
  if (reason && BAD_TEXT.test(reason)) return bad('the reason phrase holds a control character');
  if (raw.length % 2 !== 0) return bad('the header list has a name without a value');
  if (raw.length / 2 > MAX_HEADER_FIELDS) return bad(`it has more than ${MAX_HEADER_FIELDS} header fields`);
  // The status line and the final CRLF, as HTTP/1.1 counts a head.
  let size = 15 + (typeof reason === 'string' ? reason.length : 0);
  const extra = connectionOptions(raw);
  // RFC 9110 section 8.6: no Content-Length in a 1xx or 204 response; an app's is not relayed.
  const noLength = status < 200 || status === 204;
  const headers: string[] = [];
  let length: string | undefined;
  let cookiesDropped = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i];
    const value = raw[i + 1];
    if (typeof name !== 'string' || typeof value !== 'string') return bad('a header name or value is not text');
    if (!TOKEN.test(name)) return bad(`the header name ${JSON.stringify(name.slice(0, 40))} is not a token`);
    if (BAD_TEXT.test(value)) return bad(`the value of ${name} holds a control character`);
    size += name.length + value.length + 4;
    if (size > MAX_HEAD_BYTES) return bad(`its head is over ${MAX_HEAD_BYTES} bytes`);
    const lower = name.toLowerCase();
    // A 101's Upgrade and Connection say what the connection switches to (RFC 9110 section 7.8).
    const switching = status === 101 && (lower === 'upgrade' || lower === 'connection');
    if (!switching && (HOP_BY_HOP.has(lower) || extra?.has(lower))) continue;
    if (lower === 'content-length') {
      const v = value.trim();
      // RFC 9110 section 8.6: several fields must agree, or the message cannot be framed.
      if (!DIGITS.test(v) || (length !== undefined && length !== v)) return bad('its Content-Length is not one number');
      length = v;
      if (noLength) continue;
    }
    if (cookieDomains !== undefined && lower === 'set-cookie' && cookieDomains.some((d) => dropsCookie(value, d))) {
      cookiesDropped++;
      continue;
    }
    headers.push(name, value);
  }
  const text = reason || STATUS_CODES[status] || '';
  return { status, reason: text, headers, cookiesDropped };
}

function bad(why: string): PtthError {
  return new PtthError('PTTH_ERR_BAD_RESPONSE', `The app sent an invalid response: ${why}.`);
}

/** A value the app sent, short enough to quote in a refusal: a number, a string's start, else its type. */
function shortForm(v: unknown): string {
  return typeof v === 'number' ? String(v) : typeof v === 'string' ? JSON.stringify(v.slice(0, 20)) : typeof v;
}

/**
 * Whether a `Set-Cookie` would reach other tenants: its Domain attribute (RFC 6265 section 5.2.3,
 * a leading dot ignored, case-insensitive) is the gateway's domain or a parent of it. A browser
 * would send such a cookie to every `NAME.domain`, so one app could fix another's session. A
 * cookie for the app's own host (no Domain, or `NAME.domain`) is kept.
 */
export function dropsCookie(setCookie: string, domain: string): boolean {
  const want = domain.toLowerCase().replace(/\.$/, '');
  for (const part of setCookie.split(';').slice(1)) {
    const eq = part.indexOf('=');
    if (eq === -1 || part.slice(0, eq).trim().toLowerCase() !== 'domain') continue;
    let d = part
      .slice(eq + 1)
      .trim()
      .toLowerCase();
    if (d.startsWith('.')) d = d.slice(1);
    if (d.endsWith('.')) d = d.slice(0, -1);
    // An empty Domain attribute is ignored (RFC 6265 section 5.2.3). Browsers use the last one;
    // any that covers the gateway's domain is refused, whichever comes last.
    if (d === '') continue;
    if (want === d || want.endsWith(`.${d}`)) return true;
  }
  return false;
}
