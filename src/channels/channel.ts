import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { PtthError } from '../http/errors.js';
import type { ResponseHead } from '../http/response.js';

/** `node`: another gateway node of a cluster, reached over the internal hop (src/cluster/hop.ts). */
export type Transport = 'http1' | 'http2' | 'websocket' | 'comet' | 'node';

/** A visitor's request, ready to go down a channel. */
export interface Exchange {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  /** Flat raw header list to send to the app (hop-by-hop removed, forwarding headers added). */
  readonly headers: string[];
  /** Reports a gateway status to the visitor (or closes its connection if headers went out). */
  fail(err: PtthError): void;
  /**
   * Checks the app's response head with the rules every transport shares (checkResponseHead:
   * status, reason phrase, header names and values, Content-Length, the cookie guard) and writes
   * it to the visitor. A bad head fails the exchange with 502 PTTH_ERR_BAD_RESPONSE and is
   * returned; the channel then abandons the attempt (and closes itself where its framing is in doubt).
   */
  respond(status: unknown, reason: unknown, headers: readonly unknown[]): PtthError | undefined;
  /** Called exactly once when the exchange is over, whatever the outcome. */
  done(): void;
  /**
   * Set by the registration while the exchange is on a channel: hands it back to be sent down
   * another channel (or to wait in the queue). A channel calls it only when the app provably did
   * not process the request and nothing of it was read (HTTP/2 REFUSED_STREAM, RFC 9113 section
   * 8.7), and then neither fails nor finishes the exchange itself. One retry per exchange, never
   * down the channel that refused it.
   */
  retry?: ((refusedBy: Channel) => void) | undefined;
  /** Gateway nodes this request already crossed (cluster hop); absent: it came from a visitor. */
  readonly hops?: number | undefined;
}

/** A visitor's upgrade request (WebSocket and others), to be spliced to the app after its 101. */
export interface UpgradeExchange {
  readonly req: IncomingMessage;
  readonly socket: Duplex;
  readonly head: Buffer;
  readonly headers: string[];
  fail(err: PtthError): void;
  /** The app's answer to the upgrade, checked as `Exchange.respond` does; 101 is allowed. */
  check(status: unknown, reason: unknown, headers: readonly unknown[]): ResponseHead | PtthError;
  done(): void;
  /** Gateway nodes this upgrade already crossed (cluster hop); absent: it came from a visitor. */
  readonly hops?: number | undefined;
}

export interface ChannelEvents {
  /** The channel can take another request. */
  available(channel: Channel): void;
  /** The channel is gone (closed, failed, or consumed by an upgrade). */
  closed(channel: Channel): void;
}

/**
 * One live path from the gateway to an app. A channel knows its transport and nothing about
 * routing: the registration that owns it calls `dispatch` and listens through `ChannelEvents`.
 */
export interface Channel {
  readonly id: number;
  readonly transport: Transport;
  /** The app's address, `ip:port`. */
  readonly remote: string;
  readonly openedAt: number;
  /** Requests in flight now. */
  readonly active: number;
  /** Requests answered over this channel's life. */
  readonly served: number;
  /** Whether `dispatch` may be called now. */
  readonly available: boolean;
  /** Whether this channel can carry a visitor's upgrade request. */
  readonly upgradable: boolean;
  readonly closed: boolean;
  /** Set once by the owner before the first dispatch. */
  events: ChannelEvents | undefined;
  dispatch(exchange: Exchange): void;
  upgrade(exchange: UpgradeExchange): void;
  /** Closes the channel; in-flight requests fail with 502. */
  close(): void;
}

let nextId = 1;
export function channelId(): number {
  return nextId++;
}
