import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Exchange, UpgradeExchange } from '../channels/channel.js';
import { PtthError } from '../http/errors.js';
import { forwardRequestHeaders } from '../http/headers.js';
import { sendError, writeRawError } from '../http/respond.js';
import { requestProto, type GatewayContext } from './context.js';

/**
 * Visitors' requests: look the name up, build the header list once, and hand the exchange to the
 * registration, which picks a channel or queues. The response streams back inside the channel.
 */
export function forwardRequest(ctx: GatewayContext, req: IncomingMessage, res: ServerResponse, name: string): void {
  const reg = ctx.table.lookup(name);
  if (!reg) {
    sendError(res, new PtthError('PTTH_ERR_NOT_FOUND', `No app is registered under the name "${name}".`), req.headers.accept);
    req.resume();
    return;
  }
  const started = ctx.observed.requests ? performance.now() : 0;
  const ex: Exchange = {
    req,
    res,
    headers: forwardRequestHeaders(req.rawHeaders, {
      clientAddress: clientAddress(req.socket.remoteAddress),
      clientPort: req.socket.remotePort ?? 0,
      proto: requestProto(req),
    }),
    fail: (err) => {
      if (res.headersSent) res.destroy(err);
      else sendError(res, err, req.headers.accept);
    },
    done: ctx.observed.requests
      ? () =>
          ctx.emit('request', {
            name,
            method: req.method,
            url: req.url,
            status: res.statusCode,
            ms: performance.now() - started,
          })
      : noop,
  };
  reg.dispatch(ex);
}

/** Visitors' upgrade requests (WebSocket and others): spliced to the app after its 101. */
export function forwardUpgrade(ctx: GatewayContext, req: IncomingMessage, socket: Socket, head: Buffer, name: string): void {
  socket.on('error', noop);
  const reg = ctx.table.lookup(name);
  if (!reg) {
    writeRawError(socket, new PtthError('PTTH_ERR_NOT_FOUND', `No app is registered under the name "${name}".`), req.headers.accept);
    return;
  }
  if (req.httpVersionMajor !== 1 || req.httpVersionMinor < 1) {
    writeRawError(socket, new PtthError('PTTH_ERR_HTTP10_UPGRADE'), req.headers.accept);
    return;
  }
  const ex: UpgradeExchange = {
    req,
    socket,
    head,
    headers: forwardRequestHeaders(req.rawHeaders, {
      clientAddress: clientAddress(socket.remoteAddress),
      clientPort: socket.remotePort ?? 0,
      proto: requestProto(req),
      upgrade: req.headers.upgrade,
    }),
    fail: (err) => writeRawError(socket, err, req.headers.accept),
    done: noop,
  };
  reg.upgrade(ex);
}

/** `::ffff:127.0.0.1` (an IPv4 visitor on a dual-stack socket) -> `127.0.0.1`. */
export function clientAddress(address: string | undefined): string {
  if (!address) return '';
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}

function noop(): void {}
