import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import { MAX_MESSAGE, WebSocketChannel } from '../channels/websocket.js';
import { WS_PROTOCOL } from '../shared/wsframing.js';
import { PtthError, isPtthError } from '../http/errors.js';
import { sendError } from '../http/respond.js';
import { readClaimParams, type ClaimParams } from '../table/names.js';
import type { ClaimLease } from '../table/table.js';
import { decideClaim, headerKey } from './claim.js';
import { SERVICE_PATH } from './classify.js';
import { CometService } from './comet.js';
import { privateUrlFor, publicUrlFor, type GatewayContext } from './context.js';
import type { ClaimEvent } from './eventmap.js';
import { claimantName, refuseClaim } from './refuse.js';
import { clientAddress } from '../http/headers.js';
import { numberOption } from '../options.js';
import { noop } from '../shared/noop.js';
import { targetQuery } from '../shared/target.js';

/**
 * Everything browsers (and plain HTTP clients) need: the Comet service (`/reversehttp`), the
 * WebSocket channel (an upgrade to `websocket` on the gateway host) and the browser library
 * (`/ptth.js`). Settings of these transports live here, passed in through `GatewayOptions`.
 */
export interface BrowserOptions {
  /** Milliseconds a Comet poll waits for a request before its 204 (default 30000). */
  pollTimeout?: number;
  /** Milliseconds a Comet app has to POST its reply once it polled the request (default: `responseTimeout`; 504 past it). */
  replyTimeout?: number;
  /** Largest body a transport must buffer whole, i.e. Comet requests and replies, in bytes (default 16 MiB; 413 past it). */
  bufferLimit?: number;
  /** Milliseconds after its last poll that an idle Comet channel counts as gone and the lease starts (default 30000). */
  cometIdleTimeout?: number;
  /** Requests one pipelined Comet poll answer (`Accept: application/http`) carries at most (default 32). */
  cometPipelineCount?: number;
  /** Bytes of requests one pipelined Comet poll answer carries at most (default 1 MiB; a larger request goes alone). */
  cometPipelineBytes?: number;
  /** Requests in flight at once on one WebSocket channel (default 128). */
  wsMaxStreams?: number;
  /** Bytes of body in flight per request and direction on a WebSocket channel before credit returns (default 262144). */
  wsWindow?: number;
  /** Milliseconds between WebSocket pings; a channel that misses one is closed (default 30000). */
  wsPingInterval?: number;
}

export interface BrowserSettings {
  readonly pollTimeout: number;
  readonly replyTimeout: number;
  readonly bufferLimit: number;
  readonly cometIdleTimeout: number;
  readonly pipelineCount: number;
  readonly pipelineBytes: number;
  readonly wsMaxStreams: number;
  readonly wsWindow: number;
  readonly wsPingInterval: number;
}

/** The transports' settings from their options: defaults, bounds and errors come from the options table (src/options.ts). */
export function browserSettingsFrom(o: BrowserOptions, responseTimeout: number): BrowserSettings {
  return {
    pollTimeout: numberOption('pollTimeout', o.pollTimeout),
    replyTimeout: numberOption('replyTimeout', o.replyTimeout, responseTimeout),
    bufferLimit: numberOption('bufferLimit', o.bufferLimit),
    cometIdleTimeout: numberOption('cometIdleTimeout', o.cometIdleTimeout),
    pipelineCount: numberOption('cometPipelineCount', o.cometPipelineCount),
    pipelineBytes: numberOption('cometPipelineBytes', o.cometPipelineBytes),
    wsMaxStreams: numberOption('wsMaxStreams', o.wsMaxStreams),
    wsWindow: numberOption('wsWindow', o.wsWindow),
    wsPingInterval: numberOption('wsPingInterval', o.wsPingInterval),
  };
}

/** The browser library, one file bundled by `npm run build` (esbuild, with src/shared) next to the gateway's own code. */
const LIBRARY_CANDIDATES = [
  new URL('../browser/ptth.js', import.meta.url), // dist/gateway -> dist/browser
  new URL('../../dist/browser/ptth.js', import.meta.url), // src/gateway (tests run the sources)
];
let library: Promise<Buffer | undefined> | undefined;

function loadLibrary(): Promise<Buffer | undefined> {
  library ??= (async () => {
    for (const url of LIBRARY_CANDIDATES) {
      try {
        return await readFile(url);
      } catch {
        // next candidate
      }
    }
    library = undefined; // built later (npm run build while the gateway runs): try again next time
    return undefined;
  })();
  return library;
}

export class BrowserEndpoints {
  readonly comet: CometService;
  readonly settings: BrowserSettings;
  #ctx: GatewayContext;
  #wss = new WebSocketServer({
    noServer: true,
    // Body frames are at most 64 KiB plus a 5-byte header, control frames a response head as
    // JSON (MAX_CONTROL_MESSAGE, checked before parsing); past this ws closes with 1009 unread.
    maxPayload: MAX_MESSAGE,
    perMessageDeflate: false,
    handleProtocols: (offered) => (offered.has(WS_PROTOCOL) ? WS_PROTOCOL : false),
  });
  /** `Link` and `Location` for the 101 of the upgrade being accepted. */
  #advertise = new WeakMap<IncomingMessage, string[]>();

  constructor(ctx: GatewayContext, options: BrowserOptions) {
    this.#ctx = ctx;
    this.settings = browserSettingsFrom(options, ctx.settings.responseTimeout);
    this.comet = new CometService(ctx, this.settings);
    this.#wss.on('headers', (headers: string[], req: IncomingMessage) => {
      const extra = this.#advertise.get(req);
      if (extra) headers.push(...extra);
    });
  }

  /** Gateway-host requests this module serves; false leaves the request to the other endpoints. */
  handle(req: IncomingMessage, res: ServerResponse, path: string): boolean {
    if (path === SERVICE_PATH || path.startsWith(`${SERVICE_PATH}/`)) {
      this.comet.handle(req, res, path);
      return true;
    }
    if (path === '/ptth.js') {
      req.resume();
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.setHeader('Allow', 'GET, HEAD');
        sendError(res, new PtthError('PTTH_ERR_METHOD_NOT_ALLOWED'), req.headers.accept);
        return true;
      }
      void loadLibrary().then((code) => {
        if (!code) {
          sendError(
            res,
            new PtthError('PTTH_ERR_NO_ENDPOINT', 'The browser library is not built: run `npm run build`.'),
            req.headers.accept,
          );
          return;
        }
        res.writeHead(200, {
          'Content-Type': 'text/javascript; charset=utf-8',
          'Content-Length': code.length,
          'Cache-Control': 'no-cache',
        });
        res.end(req.method === 'HEAD' ? undefined : code);
      });
      return true;
    }
    return false;
  }

  /**
   * A WebSocket channel claim: `Upgrade: websocket` on the gateway host, any path, with the claim
   * parameters (`name`, `token`, `lease`) in the query. The access key comes as `Authorization:
   * Bearer` or, since browsers cannot set headers on a WebSocket, as `key` in the query. Refusals
   * are the native claim's statuses, written before the upgrade.
   */
  upgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    const ctx = this.#ctx;
    socket.on('error', noop);
    const refuse = (err: PtthError): void => refuseClaim(ctx, req, socket, err, claimantName(req, undefined));
    const key = req.headers['sec-websocket-key'];
    if (
      req.method !== 'GET' ||
      !key ||
      !/^[+/0-9A-Za-z]{22}==$/.test(key) ||
      req.headers['sec-websocket-version'] !== '13'
    ) {
      refuse(new PtthError('PTTH_ERR_NOT_WEBSOCKET'));
      return;
    }
    let params: ClaimParams;
    let accessKey: string | undefined;
    try {
      const query = new URLSearchParams(targetQuery(req.url));
      params = readClaimParams(query, ctx.settings.maxLease);
      accessKey = headerKey(req) ?? (query.get('key') || undefined);
    } catch (err) {
      refuse(isPtthError(err) ? err : new PtthError('PTTH_ERR_BAD_PARAMS'));
      return;
    }
    decideClaim(ctx, params, accessKey, socket.remoteAddress, true).then(
      ({ registration: reg, lease }) => {
        if (socket.destroyed) return lease.abandon('WebSocket handshake failed');
        const url = publicUrlFor(ctx.settings, req, reg.name);
        const location = privateUrlFor(ctx.settings, req, reg.privateId);
        this.#advertise.set(req, [`Link: <${url}>; rel="related"`, `Location: ${location}`]);
        let accepted = false;
        // ws refuses some handshakes itself (after our checks) and closes the socket without
        // calling back: a name this claim created must not stay registered with no channel.
        socket.once('close', () => {
          if (!accepted) lease.abandon('WebSocket handshake failed');
        });
        this.#wss.handleUpgrade(req, socket, head, (ws) => {
          accepted = true;
          this.#accept(ws, req, lease, url, location);
        });
      },
      (err: unknown) => refuse(isPtthError(err) ? err : new PtthError('PTTH_ERR_BAD_PARAMS')),
    );
  }

  #accept(ws: WebSocket, req: IncomingMessage, lease: ClaimLease, url: string, location: string): void {
    const s = this.settings;
    const reg = lease.registration;
    const remote = `${clientAddress(req.socket.remoteAddress)}:${req.socket.remotePort ?? 0}`;
    const channel = new WebSocketChannel(ws, remote, {
      responseTimeout: this.#ctx.settings.responseTimeout,
      maxStreams: s.wsMaxStreams,
      window: s.wsWindow,
      pingInterval: s.wsPingInterval,
    });
    channel.hello({ name: reg.name, url, location });
    this.#ctx.caps.channelFrom(channel, req.socket.remoteAddress);
    lease.join(channel);
    this.#ctx.emit('claim', {
      name: reg.name,
      url,
      transport: 'websocket',
      remote,
      key: reg.keyId,
    } satisfies ClaimEvent);
  }
}

/**
 * The live demo on the gateway's home page: the tab claims a name with /ptth.js and answers
 * visitors itself; the public URL and each request it answered show up as they happen.
 */
export const DEMO_HTML = `<h2>Live demo: serve HTTP from this tab</h2>
<p>This page loads <code>/ptth.js</code>, claims a name over the WebSocket channel (Comet when a WebSocket cannot be opened) and answers visitors from the tab.</p>
<p><label>Name <input id="demo-name" size="20" pattern="[a-z0-9-]{1,63}"></label>
<button id="demo-start">Serve from this tab</button> <button id="demo-stop" disabled>Stop</button> <span id="demo-status"></span></p>
<p id="demo-online" hidden>Public URL: <a id="demo-url" target="_blank" rel="noopener"></a> (<span id="demo-transport"></span>)</p>
<ol id="demo-log" reversed></ol>
<script type="module">
import { serve } from '/ptth.js';
const $ = (id) => document.getElementById(id);
const esc = (s) => s.replace(/[&<>"']/g, (c) => '&#' + c.charCodeAt(0) + ';');
$('demo-name').value = 'tab-' + Math.random().toString(36).slice(2, 8);
let server;
let count = 0;
const idle = (status) => {
  server = undefined;
  $('demo-online').hidden = true;
  $('demo-start').disabled = false;
  $('demo-stop').disabled = true;
  $('demo-status').textContent = status;
};
$('demo-start').onclick = () => {
  $('demo-start').disabled = true;
  $('demo-stop').disabled = false;
  $('demo-status').textContent = 'connecting...';
  server = serve({
    name: $('demo-name').value,
    onListen: (info) => {
      $('demo-url').href = info.url;
      $('demo-url').textContent = info.url;
      $('demo-transport').textContent = info.transport;
      $('demo-online').hidden = false;
      $('demo-status').textContent = 'online';
    },
    onError: (e) => { $('demo-status').textContent = e.message; },
  }, (request, info) => {
    const n = ++count;
    const u = new URL(request.url);
    const li = document.createElement('li');
    li.textContent = new Date().toLocaleTimeString() + ' ' + request.method + ' ' + u.pathname + u.search + ' from ' + info.remoteAddr + ' (' + info.transport + ')';
    $('demo-log').prepend(li);
    return new Response('<!doctype html><meta charset="utf-8"><title>Hello from a browser tab</title>' +
      '<h1>Hello from a browser tab</h1><p>Request #' + n + ': ' + esc(request.method + ' ' + u.pathname + u.search) +
      ', answered at ' + new Date().toISOString() + ' by ' + esc(navigator.userAgent) + '.</p>',
      { headers: { 'content-type': 'text/html; charset=utf-8' } });
  });
  server.url.catch((e) => idle('refused: ' + e.message));
};
$('demo-stop').onclick = async () => {
  const s = server;
  idle('stopped');
  await s?.close();
};
</script>
`;
