import * as http from 'node:http';
import * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import { BodyPrefix } from '../http/body.js';
import { withoutHopByHop } from '../http/headers.js';
import { errorMessage } from '../shared/errormessage.js';
import { targetPath } from '../shared/target.js';
import type { ExchangeEvent } from './requestlog.js';
import { INSPECTOR_PAGE } from './inspectpage.js';

/**
 * `connect --inspect`: a page on 127.0.0.1 listing the last exchanges (from the gateway's event
 * stream with ?detail=1), live over SSE, with a replay button that sends a request again straight
 * to the local service.
 */

/** What `startInspector` serves and how. */
export interface InspectorOptions {
  /** The local service (connect's target). */
  target: URL;
  /** As connect --rewrite-host: replays carry the service's own Host instead of the visitor's. */
  rewriteHost?: boolean;
  /** Exchanges kept (default 100). */
  limit?: number;
}

export interface ReplayResult {
  status: number;
  headers: string[];
  /** Base64 of the first KiB. */
  body: string;
  bodyBytes: number;
  truncated: boolean;
  ms: number;
  error: string | null;
}

export interface Inspector {
  readonly url: string;
  add(event: ExchangeEvent): void;
  close(): Promise<void>;
}

const KIB = 1024;

/** Why a replay is not possible, or undefined. */
export function replayRefusal(e: ExchangeEvent): string | undefined {
  if (!e.request) return 'the gateway sent no details for this request';
  if (e.request.truncated || e.request.bodyBytes > KIB) return 'the request body was larger than the 1 KiB kept';
  return undefined;
}

/**
 * Headers of a replay: the visitor's as the gateway forwarded them (its X-Forwarded-* and
 * Forwarded included, so that the app sees the same request), minus hop-by-hop fields and the
 * body framing (set again for the kept body); Host is the visitor's unless --rewrite-host.
 */
export function replayHeaders(raw: readonly string[], target: URL, rewriteHost: boolean, bodyLength: number): string[] {
  const out: string[] = [];
  const kept = withoutHopByHop(raw);
  let host = false;
  for (let i = 0; i + 1 < kept.length; i += 2) {
    const name = kept[i] as string;
    const lower = name.toLowerCase();
    if (lower === 'content-length' || lower === 'transfer-encoding' || lower.startsWith(':')) continue;
    if (lower === 'host') {
      if (host) continue;
      host = true;
      out.push(name, rewriteHost ? target.host : (kept[i + 1] as string));
      continue;
    }
    out.push(name, kept[i + 1] as string);
  }
  if (!host) out.push('Host', target.host);
  if (bodyLength > 0) out.push('Content-Length', String(bodyLength));
  return out;
}

export function replay(e: ExchangeEvent, target: URL, rewriteHost = false): Promise<ReplayResult> {
  const refusal = replayRefusal(e);
  if (refusal) return Promise.reject(new Error(refusal));
  const body = Buffer.from(e.request?.body ?? '', 'base64');
  const mod = target.protocol === 'https:' ? https : http;
  const base = target.pathname === '/' ? '' : target.pathname.replace(/\/$/, '');
  const started = Date.now();
  return new Promise((resolve) => {
    const done = (r: Omit<ReplayResult, 'ms'>): void => resolve({ ...r, ms: Date.now() - started });
    let req: http.ClientRequest;
    try {
      req = mod.request({
        host: target.hostname.replace(/^\[|\]$/g, ''),
        port: Number(target.port || (target.protocol === 'https:' ? 443 : 80)),
        method: e.method,
        path: base + (e.url.startsWith('/') ? e.url : `/${e.url}`),
        headers: replayHeaders(e.request?.headers ?? [], target, rewriteHost, body.length),
        setHost: false,
        agent: false,
        timeout: 30_000,
        ...(target.protocol === 'https:' ? { rejectUnauthorized: false } : {}),
      });
    } catch (err) {
      done({ status: 0, headers: [], body: '', bodyBytes: 0, truncated: false, error: errorMessage(err) });
      return;
    }
    req.on('timeout', () => req.destroy(new Error('no answer within 30 s')));
    req.on('response', (res) => {
      const prefix = new BodyPrefix(KIB);
      res.on('data', (c: Buffer) => prefix.add(c));
      const finish = (error: string | null): void => {
        done({
          status: res.statusCode ?? 0,
          headers: res.rawHeaders,
          body: prefix.kept().subarray(0, KIB).toString('base64'),
          bodyBytes: prefix.size,
          truncated: prefix.size > KIB,
          error,
        });
      };
      res.on('end', () => finish(null));
      res.on('error', (err) => finish(err.message));
    });
    req.on('error', (err: NodeJS.ErrnoException) => {
      done({ status: 0, headers: [], body: '', bodyBytes: 0, truncated: false, error: err.code ?? err.message });
    });
    req.end(body.length > 0 ? body : undefined);
  });
}

/** Starts the inspector on 127.0.0.1:port (0: any free port). */
export async function startInspector(port: number, options: InspectorOptions): Promise<Inspector> {
  const limit = options.limit ?? 100;
  const ring: ExchangeEvent[] = [];
  const watchers = new Set<http.ServerResponse>();
  let seq = 0;
  /** The inspector's own ids: the gateway's may repeat across its restarts. */
  const byKey = new Map<string, ExchangeEvent>();

  const send = (res: http.ServerResponse, e: ExchangeEvent): void => {
    res.write(`event: exchange\ndata: ${JSON.stringify({ ...e, replay: replayRefusal(e) ?? null })}\n\n`);
  };

  const server = http.createServer((req, res) => {
    // Only this machine's pages: the Host must be the inspector's own (no DNS rebinding), and the
    // replay endpoint asks for a custom header (a cross-site form cannot send one without CORS).
    const addr = server.address() as AddressInfo;
    const hostOk = new RegExp(`^(127\\.0\\.0\\.1|localhost|\\[::1\\]):${addr.port}$`).test(req.headers.host ?? '');
    if (!hostOk) {
      res.writeHead(421, { 'content-type': 'text/plain; charset=utf-8' });
      res.end('Use http://127.0.0.1 to open the inspector.\n');
      return;
    }
    const path = targetPath(req.url);
    const common = { 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' };
    if (req.method === 'GET' && path === '/') {
      res.writeHead(200, {
        ...common,
        'content-type': 'text/html; charset=utf-8',
        'content-security-policy':
          "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; " +
          "connect-src 'self'; img-src data:",
        'x-frame-options': 'DENY',
        'referrer-policy': 'no-referrer',
      });
      res.end(INSPECTOR_PAGE);
      return;
    }
    if (req.method === 'GET' && path === '/events') {
      res.writeHead(200, { ...common, 'content-type': 'text/event-stream; charset=utf-8' });
      res.write(`: ptth-proxy inspector\nevent: target\ndata: ${JSON.stringify(options.target.origin)}\n\n`);
      for (const e of ring) send(res, e);
      watchers.add(res);
      res.on('close', () => watchers.delete(res));
      return;
    }
    const m = /^\/replay\/(\d+)$/.exec(path ?? '');
    if (req.method === 'POST' && m) {
      req.resume();
      const json = (status: number, body: unknown): void => {
        res.writeHead(status, { ...common, 'content-type': 'application/json' }).end(JSON.stringify(body));
      };
      if (req.headers['x-ptth-inspector'] !== '1') return json(403, { error: 'missing X-Ptth-Inspector: 1' });
      const e = byKey.get(m[1] as string);
      if (!e) return json(404, { error: 'this exchange is no longer kept' });
      const refusal = replayRefusal(e);
      if (refusal) return json(409, { error: refusal });
      void replay(e, options.target, options.rewriteHost === true).then((r) => json(200, r));
      return;
    }
    res.writeHead(404, { ...common, 'content-type': 'text/plain; charset=utf-8' }).end('not found\n');
  });
  server.on('clientError', (_e, socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
  const addr = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${addr.port}/`,
    add(event: ExchangeEvent): void {
      const e: ExchangeEvent = { ...event, id: String(++seq) };
      ring.push(e);
      byKey.set(String(e.id), e);
      while (ring.length > limit) byKey.delete(String((ring.shift() as ExchangeEvent).id));
      for (const w of watchers) send(w, e);
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const w of watchers) w.end();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
