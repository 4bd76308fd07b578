import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { PtthError } from './errors.js';

/**
 * Gateway-made responses: a short body that says what happened, as HTML for browsers, JSON when
 * `Accept` asks for it, plain text otherwise (docs/PROTOCOL.md section 9).
 */

/** A gateway-made body and its Content-Type. */
export interface Rendered {
  readonly contentType: string;
  readonly body: string;
}

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export function wantsJson(accept: string | undefined): boolean {
  if (!accept) return false;
  const json = accept.indexOf('application/json');
  if (json === -1) return false;
  const html = accept.indexOf('text/html');
  return html === -1 || json < html;
}

export function renderError(err: PtthError, accept: string | undefined): Rendered {
  if (wantsJson(accept)) {
    return {
      contentType: 'application/json; charset=utf-8',
      body: `${JSON.stringify({ error: { code: err.code, status: err.status, message: err.message } })}\n`,
    };
  }
  const reason = STATUS_CODES[err.status] ?? 'Error';
  if (accept?.includes('text/html')) {
    return {
      contentType: 'text/html; charset=utf-8',
      body:
        `<!doctype html><html><head><meta charset="utf-8"><title>${err.status} ${reason}</title></head>` +
        `<body><h1>${err.status} ${reason}</h1><p>${escapeHtml(err.message)}</p>` +
        `<p><small>${err.code} &middot; ptth-proxy</small></p></body></html>\n`,
    };
  }
  return { contentType: 'text/plain; charset=utf-8', body: `${err.status} ${reason}: ${err.message} (${err.code})\n` };
}

/** Retry-After seconds for 503s: the client may try again shortly (RFC 9110 section 10.2.3). */
const RETRY_AFTER = '1';

/** Answers a visitor or claimant with a gateway error over node's ServerResponse. */
export function sendError(res: ServerResponse, err: PtthError, accept: string | undefined, close = false): void {
  if (res.headersSent) {
    res.destroy(err);
    return;
  }
  const { contentType, body } = renderError(err, accept);
  const headers: Record<string, string | number> = {
    'Content-Type': contentType,
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
    'X-Ptth-Error': err.code,
    // The body is the gateway's, not an app's: never sniffed into script or HTML of another type.
    'X-Content-Type-Options': 'nosniff',
  };
  if (err.status === 503 || err.status === 429) headers['Retry-After'] = String(err.retryAfter ?? RETRY_AFTER);
  // RFC 9110 section 11.6.1: a 401 names the scheme that would work (access keys are Bearer tokens, RFC 6750).
  if (err.status === 401) headers['WWW-Authenticate'] = 'Bearer realm="ptth-proxy"';
  if (close) headers['Connection'] = 'close';
  try {
    // The reason is given explicitly: node keeps the status line of a writeHead that threw (an
    // app's bad reason phrase), and a second writeHead without one would reuse it (RFC 9112
    // section 4), sending "502 OK" or throwing again out of the error path.
    res.writeHead(err.status, STATUS_CODES[err.status] ?? 'Error', headers);
    res.end(body);
    if (unreadBody(res.req)) lingerOnClose(res.req);
  } catch {
    // The error path cannot fail: whatever state a failed attempt left, the visitor's
    // connection is closed rather than the process.
    res.destroy();
  }
}

/**
 * A request whose body has not all been read. (`complete` alone is false during the 'request'
 * event of every request, a bodyless GET's included: llhttp reports the head before the end.)
 */
function unreadBody(req: IncomingMessage): boolean {
  return (
    !req.complete && (req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined)
  );
}

/** How long a connection closing under an unfinished upload keeps reading before it is cut. */
const LINGER_MS = 5_000;

/**
 * Lingering close (RFC 9112 section 9.6) for an answer sent before its request's body was all
 * read (413, a full buffer budget, a refused claim). Closing at once would leave the rest of the
 * upload unread, and the kernel answers unread data with a reset, which can destroy the answer
 * before the client read it: the client sees ECONNRESET instead of the status. So when node closes
 * the connection after such an answer, it half-closes it instead, keeps reading (node discards the
 * rest of the body) and closes once the body ended or after LINGER_MS. Nothing is kept meanwhile.
 */
function lingerOnClose(req: IncomingMessage): void {
  const socket = req.socket as Socket & { destroySoon?: () => void };
  if (socket.destroyed || typeof socket.destroySoon !== 'function') return;
  socket.destroySoon = function lingeringClose(this: Socket): void {
    if (this.writable) this.end();
    if (req.complete || this.destroyed) {
      this.destroy();
      return;
    }
    const cut = (): void => {
      clearTimeout(timer);
      this.destroy();
    };
    const timer = setTimeout(cut, LINGER_MS);
    req.once('end', cut);
    req.once('close', cut);
    this.once('close', () => clearTimeout(timer));
  };
}

/**
 * A raw refusal on a socket whose HTTP parser is gone (after node's 'upgrade' event). The only other
 * bytes written by hand are the 101 (see claim.ts). The connection is closed after it, as ws's
 * abortHandshake does.
 */
export function writeRawError(socket: Duplex, err: PtthError, accept: string | undefined): void {
  const { contentType, body } = renderError(err, accept);
  let head =
    `HTTP/1.1 ${err.status} ${STATUS_CODES[err.status] ?? 'Error'}\r\n` +
    `Connection: close\r\nContent-Type: ${contentType}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
    `Cache-Control: no-store\r\nX-Ptth-Error: ${err.code}\r\nX-Content-Type-Options: nosniff\r\n`;
  if (err.status === 503 || err.status === 429) head += `Retry-After: ${err.retryAfter ?? RETRY_AFTER}\r\n`;
  if (err.status === 401) head += 'WWW-Authenticate: Bearer realm="ptth-proxy"\r\n';
  endRaw(socket, `${head}\r\n${body}`);
}

/** Writes the last bytes and closes; never throws on a socket the peer already closed. */
export function endRaw(socket: Duplex, data: string | Buffer): void {
  if (socket.destroyed) return;
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  socket.end(data);
  // A peer that never reads must not keep the socket alive forever.
  const timer = setTimeout(() => socket.destroy(), 5_000);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
}
