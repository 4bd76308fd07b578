import { Agent as HttpAgent, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { pipeline } from 'node:stream';
import { PtthError } from '../http/errors.js';
import { sendError } from '../http/respond.js';
import type { HopSigner } from './hop.js';

/** Fields that describe one connection (RFC 9110 section 7.6.1), never passed across the hop. */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'x-ptth-hop',
  'x-ptth-hop-kind',
]);

/** What the receiving node does with a proxied request: `comet` is a Comet poll or reply (docs/PROTOCOL.md section 12). */
export const HOP_KIND_HEADER = 'x-ptth-hop-kind';

function forwardable(raw: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] as string;
    if (!HOP_BY_HOP.has(name.toLowerCase())) out.push(name, raw[i + 1] as string);
  }
  return out;
}

/**
 * Sends a gateway request (a Comet poll or reply) as it is to the node that serves it, with hop
 * credentials, and streams the answer back: bodies both ways with backpressure. A node that cannot
 * be reached answers 503 PTTH_ERR_NO_CHANNEL (the client polls again, and by then the session may
 * have moved here).
 */
export class GatewayProxy {
  #signer: HopSigner;
  #http = new HttpAgent({ keepAlive: true });
  #https = new HttpsAgent({ keepAlive: true });
  #connectTimeout: number;

  constructor(signer: HopSigner, connectTimeout: number) {
    this.#signer = signer;
    this.#connectTimeout = connectTimeout;
  }

  proxy(
    req: IncomingMessage,
    res: ServerResponse,
    peer: { readonly id: string; readonly url: URL },
    name: string,
  ): void {
    const secure = peer.url.protocol === 'https:';
    const headers = forwardable(req.rawHeaders);
    headers.push('X-Ptth-Hop', this.#signer.sign(name, 1), 'X-Ptth-Hop-Kind', 'comet');
    const out = (secure ? httpsRequest : httpRequest)({
      protocol: peer.url.protocol,
      hostname: peer.url.hostname.replace(/^\[|\]$/g, ''),
      port: peer.url.port,
      method: req.method,
      path: req.url,
      headers,
      agent: secure ? this.#https : this.#http,
    });
    let answered = false;
    const connectTimer = setTimeout(() => out.destroy(new Error('connect timeout')), this.#connectTimeout);
    out.once('socket', (socket) => {
      if (!socket.connecting) clearTimeout(connectTimer);
      else socket.once('connect', () => clearTimeout(connectTimer));
    });
    out.on('response', (answer) => {
      answered = true;
      res.writeHead(answer.statusCode ?? 502, answer.statusMessage, forwardable(answer.rawHeaders));
      pipeline(answer, res, () => {});
    });
    out.on('error', () => {
      clearTimeout(connectTimer);
      req.unpipe(out);
      req.resume();
      if (answered || res.headersSent) {
        res.destroy();
        return;
      }
      sendError(
        res,
        new PtthError(
          'PTTH_ERR_NO_CHANNEL',
          'The gateway node that serves this request URL cannot be reached: poll again.',
        ),
        req.headers.accept,
      );
    });
    // The client went away: so does the hop request.
    res.once('close', () => {
      if (!res.writableFinished) out.destroy();
    });
    // pipe, not pipeline: a failed hop must not destroy the client's connection before its 503.
    req.pipe(out);
  }

  close(): void {
    this.#http.destroy();
    this.#https.destroy();
  }
}
