/**
 * The one error table: every refusal or failure the gateway (or the client library) reports has a
 * `PTTH_ERR_*` code, the HTTP status it maps to, and a sentence a person can act on.
 */
export const ERRORS = {
  PTTH_ERR_NOT_FOUND: { status: 404, message: 'No app is registered under this name.' },
  PTTH_ERR_NO_CHANNEL: {
    status: 503,
    message: 'The app is registered but no channel to it became available in time.',
  },
  PTTH_ERR_QUEUE_FULL: {
    status: 503,
    message: 'The app is busy: too many requests are already waiting for it.',
  },
  PTTH_ERR_APP_TIMEOUT: { status: 504, message: 'The app did not answer in time.' },
  PTTH_ERR_BAD_RESPONSE: { status: 502, message: 'The app sent an invalid response.' },
  PTTH_ERR_CHANNEL_LOST: {
    status: 502,
    message: 'The connection to the app was lost before its response was complete.',
  },
  PTTH_ERR_UPGRADE_UNSUPPORTED: {
    status: 502,
    message:
      "The app's channels cannot carry this upgrade: they are HTTP/2 without extended CONNECT (RFC 8441). An app that takes WebSockets keeps an HTTP/1.1 channel too.",
  },
  PTTH_ERR_BAD_NAME: {
    status: 400,
    message: 'A name must be one DNS label: 1 to 63 letters, digits or hyphens, not starting or ending with a hyphen.',
  },
  PTTH_ERR_NAME_MISMATCH: {
    status: 400,
    message: 'The name in the query differs from the name in the Host header.',
  },
  PTTH_ERR_BAD_LEASE: { status: 400, message: 'The lease must be a whole number of seconds, 0 or more.' },
  PTTH_ERR_BAD_TOKEN: {
    status: 400,
    message: 'A token must be 1 to 256 visible ASCII characters.',
  },
  PTTH_ERR_BAD_PARAMS: { status: 400, message: 'The claim parameters could not be read.' },
  PTTH_ERR_HTTP10_UPGRADE: {
    status: 400,
    message: 'Upgrade is ignored in HTTP/1.0 requests (RFC 9110 section 7.8): claim with HTTP/1.1.',
  },
  PTTH_ERR_UNSUPPORTED_UPGRADE: {
    status: 400,
    message: 'The gateway only upgrades to PTTH/1.0 or ptth here.',
  },
  PTTH_ERR_CHUNKED_CLAIM: {
    status: 400,
    message: 'A claim sent with Connection: Upgrade must declare its body with Content-Length, not chunked.',
  },
  PTTH_ERR_CLAIM_BODY_TOO_LARGE: { status: 413, message: 'The claim request body is too large.' },
  PTTH_ERR_TOKEN_MISMATCH: {
    status: 403,
    message: 'This name is held under another token.',
  },
  PTTH_ERR_STORE_UNAVAILABLE: {
    status: 503,
    message:
      "The cluster's shared store (Redis) cannot be reached: new claims wait until it is back; apps already connected keep being served.",
  },
  PTTH_ERR_HOP_FORBIDDEN: {
    status: 403,
    message:
      'This request carries internal hop credentials that do not check out: only nodes of the cluster may send it.',
  },
  PTTH_ERR_TOO_MANY_CHANNELS: {
    status: 429,
    message: 'This name already has as many channels as the gateway allows.',
  },
  PTTH_ERR_TOO_MANY_SUBSCRIBERS: {
    status: 429,
    message: "This name's event stream already has as many subscribers as the gateway allows.",
  },
  PTTH_ERR_METHOD_NOT_ALLOWED: { status: 405, message: 'This method is not allowed on this endpoint.' },
  PTTH_ERR_NO_ENDPOINT: { status: 404, message: 'The gateway has no endpoint at this path.' },
  PTTH_ERR_SHUTTING_DOWN: { status: 503, message: 'The gateway is shutting down.' },
  PTTH_ERR_BODY_TIMEOUT: { status: 408, message: 'The request body did not arrive in time.' },
  PTTH_ERR_BODY_TOO_LARGE: {
    status: 413,
    message: 'The body is larger than this gateway buffers for a Comet exchange (--buffer-limit).',
  },
  PTTH_ERR_UNKNOWN_REQUEST_URL: {
    status: 404,
    message: 'No Comet request URL by this address (its registration may have ended, or its request was answered).',
  },
  PTTH_ERR_INVALID_REPLY: { status: 400, message: 'The reply is not a valid HTTP response message.' },
  PTTH_ERR_RELEASED: { status: 410, message: 'The registration was released while this poll waited.' },
  PTTH_ERR_KEY_REQUIRED: {
    status: 401,
    message: 'This gateway needs an access key to claim a name: send Authorization: Bearer <key>.',
  },
  PTTH_ERR_KEY_INVALID: { status: 401, message: 'The access key is not known to this gateway.' },
  PTTH_ERR_KEY_FORBIDDEN: { status: 403, message: 'This access key may not claim this name.' },
  PTTH_ERR_NAME_RESERVED: { status: 403, message: 'This name is reserved by the gateway and cannot be claimed.' },
  PTTH_ERR_KEY_NAMES: { status: 429, message: 'This access key already holds as many names as it may.' },
  PTTH_ERR_KEY_CHANNELS: { status: 429, message: 'This access key already holds as many channels as it may.' },
  PTTH_ERR_ADDRESS_CONNECTIONS: {
    status: 429,
    message: 'This address has as many connections open to the gateway as it may.',
  },
  PTTH_ERR_ADDRESS_NAMES: { status: 429, message: 'This address already holds as many names as it may.' },
  PTTH_ERR_ADDRESS_CHANNELS: { status: 429, message: 'This address already holds as many channels as it may.' },
  PTTH_ERR_RATE_LIMITED: { status: 429, message: 'Too many requests from this address: slow down and retry later.' },
  PTTH_ERR_BAD_HOST: {
    status: 400,
    message:
      'The request must carry exactly one Host header: a host name or IP address with an optional port number ' +
      '(RFC 9112 section 3.2).',
  },
  PTTH_ERR_BAD_TARGET: {
    status: 400,
    message:
      'The request target must be a path, or an absolute http(s) URL naming the same host as Host ' +
      '(RFC 9112 section 3.2.2).',
  },
  PTTH_ERR_TOO_MANY_HEADERS: { status: 431, message: 'The request has more header fields than this gateway accepts.' },
  PTTH_ERR_UPGRADE_BODY: {
    status: 400,
    message:
      'An upgrade request cannot carry a body through this gateway (send it after the switch, or without Upgrade).',
  },
  PTTH_ERR_NOT_WEBSOCKET: {
    status: 400,
    message: 'A WebSocket channel needs a valid WebSocket handshake (RFC 6455 section 4.1).',
  },
  // Never sent to a peer: the code of the TypeError createGateway() throws for a bad option (src/options.ts).
  PTTH_ERR_BAD_OPTION: { status: 500, message: 'An option of the gateway has a value it cannot use.' },
  PTTH_ERR_RELAY_KEY_REQUIRED: {
    status: 401,
    message: 'The relay endpoint needs an access key on every request: send Authorization: Bearer <key>.',
  },
  PTTH_ERR_RELAY_FORBIDDEN: { status: 403, message: "This target is not in the access key's relay allow-list." },
  PTTH_ERR_RELAY_BAD_TARGET: { status: 400, message: 'The relay URL is /relay/HOST or /relay/HOST:PORT.' },
  PTTH_ERR_RELAY_BAD_MESSAGE: { status: 400, message: 'The relayed request is not one valid HTTP/1.1 request.' },
  PTTH_ERR_RELAY_MEDIA_TYPE: {
    status: 415,
    message: 'The relay endpoint takes one request as message/http; application/http pipelines are not served.',
  },
  PTTH_ERR_RELAY_REQUEST_TOO_LARGE: {
    status: 413,
    message: 'The relayed request is larger than this gateway relays (--relay-max-request).',
  },
  PTTH_ERR_RELAY_TOO_LARGE: {
    status: 502,
    message: "The target's response is larger than this gateway relays (--relay-max-response).",
  },
  PTTH_ERR_RELAY_UNREACHABLE: { status: 502, message: 'The relay target could not be reached.' },
  PTTH_ERR_RELAY_TIMEOUT: { status: 504, message: 'The relay target did not answer in time.' },
  PTTH_ERR_RELAY_BUSY: { status: 429, message: 'This access key already has as many relays in flight as it may.' },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERRORS;

/** An error with a `PTTH_ERR_*` code and the HTTP status that reports it. */
export class PtthError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  /** Seconds for `Retry-After` on 429 and 503 (default 1). */
  readonly retryAfter: number | undefined;
  constructor(code: ErrorCode, message?: string, options?: { cause?: unknown; retryAfter?: number }) {
    super(message ?? ERRORS[code].message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'PtthError';
    this.code = code;
    this.status = ERRORS[code].status;
    this.retryAfter = options?.retryAfter;
  }
}

export function isPtthError(err: unknown): err is PtthError {
  return err instanceof PtthError;
}
