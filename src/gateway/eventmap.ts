import type { AddressInfo } from 'node:net';
import type { TableEvents } from '../table/table.js';

/**
 * One visitor request as the `request` event reports it (built only while someone listens).
 * `status` is 0 when the visitor left before any response head went out.
 */
export interface RequestEvent {
  /** The app name from the Host header (registered or not). */
  name: string;
  method: string;
  /** The request target as sent, query string included. */
  url: string;
  /** `url` without its query string (what logs show; queries may carry secrets). */
  path: string;
  status: number;
  /** Milliseconds from the request reaching the gateway to the end of its response. */
  ms: number;
  /** Request body bytes read from the visitor. */
  bytesIn: number;
  /** Response body bytes written to the visitor. */
  bytesOut: number;
  /** The visitor's address. */
  remote: string;
  /** The PTTH_ERR_* code when the gateway answered (X-Ptth-Error) or cut the response. */
  error: string | undefined;
  /**
   * Set when another cluster node sent the request here over the internal hop: the hops it crossed
   * (docs/PROTOCOL.md section 12.4). Such a request is also counted on the node the visitor reached.
   */
  hops?: number | undefined;
}

/** What the endpoint reports of each relay, for the access log and metrics. */
export interface RelayEvent {
  readonly keyId: string | undefined;
  /** `host[:port]` as asked for ('' when the URL named none). */
  readonly target: string;
  readonly method: string;
  readonly path: string;
  readonly status: number;
  /** The error code when the gateway answered for the target (refused, timed out, ...). */
  readonly error: string | undefined;
  readonly ms: number;
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly remote: string;
}
/**
 * One request to the Comet endpoint, for the log (event `comet`): what it was, how it was answered.
 * The session id in a request URL is a capability: `path` shows its hash's first 8 characters
 * (`/reversehttp/~1a2b3c4d/5`), enough to tell one poller from another, nothing to poll with.
 */
export interface CometEvent {
  /** `register` (POST /reversehttp), `poll` (GET of a request URL), `reply` (POST to one), `unknown`. */
  readonly op: 'register' | 'poll' | 'reply' | 'unknown';
  readonly method: string;
  readonly path: string;
  /** The answer's status; 0 when the client went away before one was sent (a poll it gave up). */
  readonly status: number;
  /** The PTTH_ERR_* code of a refusal. */
  readonly code: string | undefined;
  /** The registration's name when the session is known (or the name a registration asked for). */
  readonly name: string | undefined;
  readonly remote: string;
}

/** A claim put in service: a channel joined its name (every transport). */
export interface ClaimEvent {
  name: string;
  url: string;
  transport: string;
  remote: string;
  key?: string | undefined;
}

/** A refused claim; `name` when the claim named one (query, form or Host). */
export interface RefuseEvent {
  code: string;
  status: number;
  remote: string | undefined;
  name?: string | undefined;
}

/**
 * The gateway's events and their payloads. It sits below every module that emits them (claims,
 * Comet, the server), so each emit is checked against it without those modules importing the server.
 */
export interface GatewayEvents extends TableEvents {
  listening: [AddressInfo];
  claim: [ClaimEvent];
  refuse: [RefuseEvent];
  /** A request to the Comet endpoint (src/gateway/comet.ts), once answered or abandoned. */
  comet: [CometEvent];
  request: [RequestEvent];
  /** A request to the RelayHttp endpoint, once answered (src/gateway/relay.ts). */
  relay: [RelayEvent];
  /** An app's `Set-Cookie` fields were dropped by the cookie guard. */
  'cookie-dropped': [{ name: string; count: number }];
  error: [Error];
}

/** Emits one gateway event with its checked payload. */
export type EmitGatewayEvent = <K extends keyof GatewayEvents>(event: K, ...args: GatewayEvents[K]) => void;

/** Listens to gateway events: what GatewayMetrics needs of a gateway. */
export interface GatewayEventSource {
  on<K extends keyof GatewayEvents>(event: K, listener: (...args: GatewayEvents[K]) => void): unknown;
}
