import { fromLatin1, latin1 } from '../../shared/latin1.js';

/*
 * RelayHttp from a page (docs/PROTOCOL.md section 10): `relay()` is `fetch()` through the gateway's
 * `/relay/HOST[:PORT]` endpoint, for targets the page could not reach itself (CORS, a filter). The
 * request goes as `message/http` with the access key whose `relay` list names the target; the
 * target's response comes back whole and is returned as a `Response`.
 */

/** `fetch()`'s init, plus the gateway and the access key. */
export interface RelayInit extends RequestInit {
  /** The gateway's origin, e.g. `https://tunnel.example.com`. */
  gateway: string;
  /** An access key whose `relay` list names the target. */
  key: string;
}

/** The gateway refused or could not complete the relay (not the target's own status, which is in the Response). */
export class RelayError extends Error {
  readonly status: number;
  readonly code: string | undefined;
  constructor(status: number, message: string, code?: string) {
    super(message);
    this.name = 'RelayError';
    this.status = status;
    this.code = code;
  }
}

/** Statuses whose response has no body (the Response constructor refuses one). */
const NULL_BODY = new Set([204, 205, 304]);

/**
 * Sends `input` (a URL or Request, as fetch takes it) to its host through the gateway. Resolves with the
 * target's response, whatever its status; rejects with RelayError when the gateway refuses (no key, a target
 * outside the key's list, a limit) and with TypeError for a URL the relay cannot carry.
 */
export async function relay(input: RequestInfo | URL, init: RelayInit): Promise<Response> {
  const { gateway, key, ...rest } = init;
  const request = new Request(input, rest);
  const url = new URL(request.url);
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new TypeError(`relay() carries http and https URLs, not ${url.protocol}`);
  if (url.username !== '' || url.password !== '') throw new TypeError('relay() URLs carry no user information');
  const port = url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port);
  // The relay speaks HTTPS on port 443 and plain HTTP on every other port.
  if ((url.protocol === 'https:') !== (port === 443)) {
    throw new TypeError(`relay() reaches https: on port 443 and http: on other ports, not ${url.protocol}//…:${port}`);
  }
  const body =
    request.method === 'GET' || request.method === 'HEAD'
      ? new Uint8Array(0)
      : new Uint8Array(await request.arrayBuffer());
  let head = `${request.method} ${url.pathname}${url.search} HTTP/1.1\r\nhost: ${url.host}\r\n`;
  request.headers.forEach((value, name) => {
    if (name !== 'host' && name !== 'content-length') head += `${name}: ${value}\r\n`;
  });
  if (body.length > 0 || !['GET', 'HEAD', 'DELETE', 'OPTIONS'].includes(request.method))
    head += `content-length: ${body.length}\r\n`;
  const headBytes = fromLatin1(`${head}\r\n`);
  const message = new Uint8Array(headBytes.length + body.length);
  message.set(headBytes, 0);
  message.set(body, headBytes.length);
  const target = `${url.hostname}${url.port === '' ? '' : `:${url.port}`}`;
  const answer = await fetch(`${gateway.replace(/\/$/, '')}/relay/${target}`, {
    method: 'POST',
    headers: { 'content-type': 'message/http', authorization: `Bearer ${key}` },
    body: message,
    ...(request.signal ? { signal: request.signal } : {}),
  });
  const bytes = new Uint8Array(await answer.arrayBuffer());
  if (answer.status !== 200 || !(answer.headers.get('content-type') ?? '').startsWith('message/http')) {
    throw new RelayError(
      answer.status,
      latin1(bytes).trim() || `the gateway answered ${answer.status}`,
      answer.headers.get('x-ptth-error') ?? undefined,
    );
  }
  return parseResponseMessage(bytes, request.method);
}

/**
 * The gateway's answer, one HTTP/1.1 response framed by Content-Length (docs/PROTOCOL.md section 10),
 * as a Response. The gateway built it from what llhttp parsed; the browser has no llhttp to parse it
 * again, so this reads only the shape the gateway writes.
 */
function parseResponseMessage(bytes: Uint8Array, method: string): Response {
  let end = -1;
  for (let i = 0; i + 3 < bytes.length; i++) {
    if (bytes[i] === 13 && bytes[i + 1] === 10 && bytes[i + 2] === 13 && bytes[i + 3] === 10) {
      end = i;
      break;
    }
  }
  if (end === -1) throw new RelayError(502, 'the relay answer has no complete response head');
  const lines = latin1(bytes.subarray(0, end)).split('\r\n');
  const status = /^HTTP\/1\.[01] (\d{3}) ?(.*)$/.exec(lines[0] ?? '');
  if (!status) throw new RelayError(502, 'the relay answer does not start with an HTTP/1.1 status line');
  const headers = new Headers();
  let length: number | undefined;
  for (const line of lines.slice(1)) {
    const c = line.indexOf(':');
    if (c <= 0) continue;
    const name = line.slice(0, c).trim();
    const value = line.slice(c + 1).trim();
    if (name.toLowerCase() === 'content-length') length = Number(value);
    else headers.append(name, value);
  }
  const code = Number(status[1]);
  const rest = bytes.subarray(end + 4);
  const body = method === 'HEAD' || NULL_BODY.has(code) ? null : rest.slice(0, length ?? rest.length);
  return new Response(body, { status: code, statusText: status[2] ?? '', headers });
}
