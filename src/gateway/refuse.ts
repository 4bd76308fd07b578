import { ServerResponse, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { PtthError } from '../http/errors.js';
import { sendError, writeRawError } from '../http/respond.js';
import { loggableName, queryName } from '../table/names.js';
import type { GatewayContext } from './context.js';
import type { RefuseEvent } from './eventmap.js';
import { noop } from '../shared/noop.js';

/**
 * The one way a request or upgrade is turned away before it reaches an app, as ws's abortHandshake
 * is for its handshakes: a status over node's response, or raw bytes on a socket that node handed
 * over (an upgrade, or a claim whose connection was taken over).
 */
export interface RefuseOptions {
  /** `Connection: close` on a response (default true: the claimant's connection is not reused). */
  readonly close?: boolean;
  /** Read and drop what is left of the request body (default true). */
  readonly drain?: boolean;
}

export function refuse(
  req: IncomingMessage,
  to: ServerResponse | Socket,
  err: PtthError,
  options: RefuseOptions = {},
): void {
  if (to instanceof ServerResponse) {
    if (options.drain !== false) req.resume();
    // A response already begun (a claim whose connection was taken over) has nothing more to say.
    if (!to.headersSent) sendError(to, err, req.headers.accept, options.close !== false);
    return;
  }
  to.on('error', noop);
  writeRawError(to, err, req.headers.accept);
}

/** The name a claim asks for, for the refuse event: the Host's, else the query's. */
export function claimantName(req: IncomingMessage, hostName: string | undefined): string | undefined {
  return loggableName(hostName) ?? queryName(req.url);
}

/** A refused claim (every transport): the `refuse` event, which logs and metrics count by code, then the refusal. */
export function refuseClaim(
  ctx: Pick<GatewayContext, 'emit'>,
  req: IncomingMessage,
  to: ServerResponse | Socket,
  err: PtthError,
  name: string | undefined,
  options?: RefuseOptions,
): void {
  ctx.emit('refuse', {
    code: err.code,
    status: err.status,
    remote: req.socket.remoteAddress,
    name,
  } satisfies RefuseEvent);
  refuse(req, to, err, options);
}
