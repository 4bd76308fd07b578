import { PtthError } from '../http/errors.js';
import type { Route } from './classify.js';

/**
 * Admission: whether a request or upgrade the server accepted may take its road (classify.ts), or
 * the one refusal it gets instead. Guard clauses in a fixed order, each ending in a refusal, as ws's
 * handleUpgrade ends in abortHandshake: what is already wrong with the connection or head, a
 * gateway shutting down (claims), the client address's rate (claims, visitor requests), then an
 * upgrade the gateway host does not serve. No I/O: the caller writes the refusal (refuse.ts) and
 * the rate limiters are handed in.
 */

/** The rate limits: `claims` (every transport), `requests` (visitors). */
export type Bucket = 'claims' | 'requests';

/** Takes one from the client address's bucket: seconds to wait, 0 when it may go on. */
export interface Buckets {
  take(bucket: Bucket, address: string | undefined): number;
}

export interface Arrival {
  readonly route: Route;
  /** Node handed the socket over (its 'upgrade' event) rather than parsing a request ('request'). */
  readonly upgraded: boolean;
  /** The Upgrade header, named in the refusal of an upgrade the gateway host does not serve. */
  readonly upgrade: string | undefined;
  /** What is wrong already: the address is over its connections cap, or the head is bad. */
  readonly problem: PtthError | undefined;
  /** The gateway is shutting down: new claims are refused. */
  readonly closing: boolean;
  /** The client's address, for the rate limits. */
  readonly address: string | undefined;
}

export type Admission =
  | { readonly admitted: true }
  | {
      readonly admitted: false;
      readonly error: PtthError;
      /** A refused claim: the `refuse` event logs and counts it. */
      readonly claim: boolean;
    };

const ADMITTED: Admission = { admitted: true };

/**
 * Whether the route is a claim: a native one, and on the gateway host a WebSocket channel (an
 * upgrade) or a Comet registration (a request). A WebSocket token in a request node parsed whole
 * claims nothing: that request goes to the gateway's endpoints.
 */
export function isClaim(route: Route, upgraded: boolean): boolean {
  return route.kind === 'claim' || route.kind === (upgraded ? 'websocket' : 'comet');
}

export function admit(a: Arrival, buckets: Buckets): Admission {
  const claim = isClaim(a.route, a.upgraded);
  if (a.problem) return { admitted: false, error: a.problem, claim };
  // Comet answers its own shutting-down (comet.ts), inside its endpoint's `comet` event.
  if (claim && a.closing && a.route.kind !== 'comet') {
    return { admitted: false, error: new PtthError('PTTH_ERR_SHUTTING_DOWN'), claim };
  }
  const bucket = claim ? 'claims' : a.route.kind === 'visitor' ? 'requests' : undefined;
  const wait = bucket === undefined ? 0 : buckets.take(bucket, a.address);
  if (bucket !== undefined && wait > 0) return { admitted: false, error: rateLimited(wait, bucket), claim };
  if (a.upgraded && !claim && a.route.kind !== 'visitor') {
    const offered = JSON.stringify(a.upgrade ?? '');
    const error = new PtthError(
      'PTTH_ERR_UNSUPPORTED_UPGRADE',
      `The gateway host only upgrades to PTTH/1.0 or ptth, not to ${offered}.`,
    );
    return { admitted: false, error, claim };
  }
  return ADMITTED;
}

export function rateLimited(wait: number, what: Bucket): PtthError {
  return new PtthError('PTTH_ERR_RATE_LIMITED', `Too many ${what} from this address: retry after ${wait} s.`, {
    retryAfter: wait,
  });
}
