import { describe, expect, it } from 'vitest';
import { admit, type Arrival, type Bucket } from '../../src/gateway/admission.js';
import { classify, type Route } from '../../src/gateway/classify.js';
import { PtthError } from '../../src/http/errors.js';

/*
 * Admission (src/gateway/admission.ts), without a server: which arrivals are refused, with what,
 * whether the refusal counts as a refused claim, and which rate bucket each one takes from.
 */

const CLAIM: Route = { kind: 'claim', hostName: 'app' };
const VISITOR: Route = { kind: 'visitor', name: 'app' };
const GATEWAY: Route = { kind: 'gateway' };
const WEBSOCKET: Route = { kind: 'websocket' };
const COMET: Route = { kind: 'comet' };

function arrival(route: Route, upgraded: boolean, more: Partial<Arrival> = {}): Arrival {
  return {
    route,
    upgraded,
    upgrade: upgraded ? 'h2c' : undefined,
    problem: undefined,
    closing: false,
    address: '192.0.2.1',
    ...more,
  };
}

/** Buckets that record each take and answer `wait` seconds. */
function buckets(wait = 0): { taken: Bucket[]; take(bucket: Bucket, address: string | undefined): number } {
  const taken: Bucket[] = [];
  return {
    taken,
    take(bucket) {
      taken.push(bucket);
      return wait;
    },
  };
}

describe('admission (pure)', () => {
  it('admits each road, taking from the claims bucket for claims and the requests bucket for visitors', () => {
    const cases: [Route, boolean, Bucket[]][] = [
      [VISITOR, false, ['requests']],
      [VISITOR, true, ['requests']],
      [CLAIM, false, ['claims']],
      [CLAIM, true, ['claims']],
      [COMET, false, ['claims']],
      [WEBSOCKET, true, ['claims']],
      [GATEWAY, false, []],
      // A WebSocket token on a request node parsed whole claims nothing: the gateway's endpoints answer it.
      [WEBSOCKET, false, []],
    ];
    for (const [route, upgraded, taken] of cases) {
      const b = buckets();
      expect(admit(arrival(route, upgraded), b), `${route.kind} upgraded=${upgraded}`).toEqual({ admitted: true });
      expect(b.taken).toEqual(taken);
    }
  });

  it('refuses what is already wrong first, as a refused claim when the arrival claims, and takes nothing', () => {
    const problem = new PtthError('PTTH_ERR_BAD_HOST');
    for (const [route, upgraded, claim] of [
      [VISITOR, false, false],
      [GATEWAY, false, false],
      [WEBSOCKET, false, false],
      [GATEWAY, true, false],
      [CLAIM, false, true],
      [CLAIM, true, true],
      [COMET, false, true],
      [WEBSOCKET, true, true],
    ] as const) {
      const b = buckets(5);
      expect(admit(arrival(route, upgraded, { problem, closing: true }), b)).toEqual({
        admitted: false,
        error: problem,
        claim,
      });
      expect(b.taken).toEqual([]);
    }
  });

  it('refuses claims with 503 while shutting down, before their rate; Comet answers its own', () => {
    for (const [route, upgraded] of [
      [CLAIM, false],
      [CLAIM, true],
      [WEBSOCKET, true],
    ] as const) {
      const b = buckets(5);
      const a = admit(arrival(route, upgraded, { closing: true }), b);
      expect(a).toMatchObject({ admitted: false, claim: true, error: { code: 'PTTH_ERR_SHUTTING_DOWN', status: 503 } });
      expect(b.taken).toEqual([]);
    }
    expect(admit(arrival(COMET, false, { closing: true }), buckets())).toEqual({ admitted: true });
    expect(admit(arrival(VISITOR, false, { closing: true }), buckets())).toEqual({ admitted: true });
  });

  it('refuses past the rate with 429 and Retry-After, counting claims as refused claims', () => {
    const claim = admit(arrival(CLAIM, true), buckets(7));
    expect(claim).toMatchObject({
      admitted: false,
      claim: true,
      error: { code: 'PTTH_ERR_RATE_LIMITED', status: 429, retryAfter: 7 },
    });
    expect(claim.admitted ? '' : claim.error.message).toBe('Too many claims from this address: retry after 7 s.');
    const visitor = admit(arrival(VISITOR, false), buckets(2));
    expect(visitor).toMatchObject({
      admitted: false,
      claim: false,
      error: { code: 'PTTH_ERR_RATE_LIMITED', retryAfter: 2 },
    });
    expect(visitor.admitted ? '' : visitor.error.message).toBe('Too many requests from this address: retry after 2 s.');
    expect(admit(arrival(COMET, false), buckets(1))).toMatchObject({ admitted: false, claim: true });
  });

  it('refuses an upgrade of the gateway host to anything but a claim, naming what was offered', () => {
    const b = buckets(5);
    const a = admit(arrival(GATEWAY, true, { upgrade: 'h2c' }), b);
    expect(a).toMatchObject({ admitted: false, claim: false, error: { code: 'PTTH_ERR_UNSUPPORTED_UPGRADE' } });
    expect(a.admitted ? '' : a.error.message).toBe('The gateway host only upgrades to PTTH/1.0 or ptth, not to "h2c".');
    expect(b.taken).toEqual([]);
  });
});

describe('classify: a Comet registration is a road of its own', () => {
  it('is POST /reversehttp (or /reversehttp/) on the gateway host, of a request node parsed whole', () => {
    const at = (method: string, path: string, host = 'localhost:8080', upgrade?: string): Route =>
      classify({ host, upgrade, method, path }, 'localhost');
    expect(at('POST', '/reversehttp')).toEqual(COMET);
    expect(at('POST', '/reversehttp/')).toEqual(COMET);
    // A WebSocket token does not hide it from the claims' rate limit.
    expect(at('POST', '/reversehttp', 'localhost', 'websocket')).toEqual(COMET);
    expect(at('GET', '/reversehttp')).toEqual(GATEWAY);
    expect(at('POST', '/reversehttp//')).toEqual(GATEWAY);
    expect(at('POST', '/reversehttp/abc/0')).toEqual(GATEWAY);
    expect(at('POST', '/reversehttp', 'app.localhost')).toEqual(VISITOR);
    expect(at('POST', '/reversehttp', 'localhost', 'PTTH/1.0')).toEqual({ kind: 'claim', hostName: undefined });
    // An upgrade carries no method or path here: never a Comet registration.
    expect(classify({ host: 'localhost', upgrade: 'websocket' }, 'localhost')).toEqual(WEBSOCKET);
  });
});
