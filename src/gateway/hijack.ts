import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

/**
 * Takes a connection away from node:http after a complete request, so the gateway can reverse it.
 *
 * Why this exists: llhttp only reports an upgrade when the request carries both `Upgrade` and
 * `Connection: Upgrade`. docs/PROTOCOL.md section 2 also accepts `Upgrade: PTTH/1.0` without
 * `Connection` (the 2008 Second Life client sent that), and node delivers such a request as an
 * ordinary 'request'. Node 20 has no public way to detach the parser from that connection (Node 24
 * adds `shouldUpgradeCallback`), so this undoes exactly what node's own upgrade path undoes in
 * `onParserExecuteCommon`: stop the parser consuming the socket, remove the server's socket
 * listeners, release the parser and the response object.
 *
 * It relies on node internals, checked here so that a future node that changes them makes the
 * claim fail with a clear refusal (`undefined`) rather than corrupting the connection. The test
 * suite covers it on every node version CI runs.
 */

/** The parts of node's internal HTTPParser that `hijack` uses, each checked before use. */
interface InternalParser {
  unconsume?: () => void;
  remove?: () => void;
  close?: () => void;
  _consumed?: boolean;
  socket?: unknown;
  incoming?: unknown;
  outgoing?: unknown;
}

const SERVER_LISTENERS = new Set([
  'bound socketOnData',
  'bound socketOnEnd',
  'bound socketOnClose',
  'bound socketOnDrain',
  'socketOnError',
  'socketOnTimeout',
  'onSocketPause',
  'onSocketResume',
]);
const EVENTS = ['data', 'end', 'close', 'drain', 'error', 'timeout', 'pause', 'resume'] as const;

/** Call only after the request's 'end' (the parser has finished the message). */
export function hijack(req: IncomingMessage, res: ServerResponse): Socket | undefined {
  const socket = req.socket as Socket & { parser?: InternalParser | null; _httpMessage?: unknown };
  const parser = socket.parser;
  if (!parser || typeof parser.remove !== 'function' || typeof res.detachSocket !== 'function') return undefined;
  let removed = 0;
  for (const event of EVENTS) {
    for (const listener of socket.listeners(event)) {
      if (SERVER_LISTENERS.has((listener as { name: string }).name)) {
        socket.removeListener(event, listener as (...args: unknown[]) => void);
        removed++;
      }
    }
  }
  // socketOnData, socketOnEnd and socketOnClose are always there; without them this node differs.
  if (removed < 3) return undefined;
  if (parser._consumed && typeof parser.unconsume === 'function') parser.unconsume();
  parser._consumed = false;
  res.detachSocket(socket);
  // Leaves the server's connection list, so header/request timeout sweeps skip this socket.
  parser.remove();
  parser.socket = null;
  parser.incoming = null;
  parser.outgoing = null;
  socket.parser = null;
  (req as unknown as { parser: unknown }).parser = null;
  // Closed once its stack has unwound, as node's freeParser does.
  setImmediate(() => parser.close?.());
  socket.setTimeout(0);
  return socket;
}

/** HTTPParser.kOnMessageBegin (node's lib/_http_common.js): llhttp calls it on the first byte of a message. */
const ON_MESSAGE_BEGIN = 0;

/**
 * Reports whether the client sent any byte past the request (a pipelined or partial next message).
 * node's parser consumes such bytes itself, so the socket never shows them to hijack(); docs/PROTOCOL.md
 * section 2 makes them a protocol error. node's server leaves this hook unset; if a future node
 * sets it, the check is skipped rather than the server's hook replaced.
 */
export function watchNextMessage(req: IncomingMessage): () => boolean {
  const parser = (req.socket as Socket & { parser?: Record<number, unknown> | null }).parser;
  let seen = false;
  if (parser && (parser[ON_MESSAGE_BEGIN] === null || parser[ON_MESSAGE_BEGIN] === undefined)) {
    parser[ON_MESSAGE_BEGIN] = () => {
      seen = true;
    };
  }
  return () => seen;
}
