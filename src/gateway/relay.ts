import type { IncomingMessage, ServerResponse } from 'node:http';
import { bearerKey } from '../routes/access.js';
import { readBody } from '../http/body.js';
import { PtthError } from '../http/errors.js';
import { sendError } from '../http/respond.js';
import type { RelayPattern } from './relay-policy.js';
import {
  parseRelayRequest,
  parseRelayTarget,
  relayRequest,
  serializeRelayResponse,
  systemResolver,
  type RelayLimits,
  type Resolver,
} from './relay-target.js';

/**
 * The RelayHttp endpoint (docs/PROTOCOL.md section 10), off unless `serve --relay`:
 * `POST /relay/HOST[:PORT]` with one request as `message/http` and an access key; the answer is
 * the target's response as `message/http`. Every request needs a key whatever the claim rules,
 * and reaches only the targets its key lists.
 */

export const RELAY_PREFIX = '/relay/';

export interface RelaySettings extends RelayLimits {
  /** Bytes of the envelope (the relayed request, head and body) the gateway reads at most. */
  readonly maxRequestBytes: number;
  /** Relays one key may have in flight at once (429 past it). */
  readonly maxPerKey: number;
  /** Milliseconds the caller has to send its envelope. */
  readonly bodyTimeout: number;
}

/** A key's relay rights, looked up by the key itself (the keys file's `relay` array). */
export interface RelayKey {
  readonly id: string;
  readonly patterns: readonly RelayPattern[];
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

export interface RelayDeps {
  readonly settings: RelaySettings;
  /** The key's relay rights; throws PtthError 401 for a key the gateway does not know. */
  readonly lookup: (key: string) => RelayKey;
  readonly report: (event: RelayEvent) => void;
  readonly resolve?: Resolver | undefined;
}

export class RelayEndpoint {
  readonly #deps: RelayDeps;
  /** Relays in flight per key id. */
  readonly #inflight = new Map<string, number>();

  constructor(deps: RelayDeps) {
    this.#deps = deps;
  }

  /** Relays in flight for a key id (status page, tests). */
  inflight(keyId: string): number {
    return this.#inflight.get(keyId) ?? 0;
  }

  /** Serves one request under RELAY_PREFIX; never rejects. */
  async handle(req: IncomingMessage, res: ServerResponse, remote: string): Promise<void> {
    const started = performance.now();
    const url = req.url ?? '/';
    const targetText = decodeTarget(url.slice(RELAY_PREFIX.length).split('?')[0] ?? '');
    const event = { keyId: undefined as string | undefined, method: '', path: '', bytesIn: 0 };
    const finish = (status: number, error: string | undefined, bytesOut: number): void => {
      this.#deps.report({
        keyId: event.keyId,
        target: targetText,
        method: event.method,
        path: event.path,
        status,
        error,
        ms: performance.now() - started,
        bytesIn: event.bytesIn,
        bytesOut,
        remote,
      });
    };
    let held: string | undefined;
    try {
      const key = this.#authorize(req);
      event.keyId = key.id;
      if (req.method !== 'POST') throw new PtthError('PTTH_ERR_METHOD_NOT_ALLOWED', 'The relay endpoint takes POST.');
      const target = parseRelayTarget(targetText);
      if (!target) throw new PtthError('PTTH_ERR_RELAY_BAD_TARGET');
      checkMediaType(req.headers['content-type']);
      held = this.#hold(key.id);
      const { settings } = this.#deps;
      const body = await readBody(req, settings.maxRequestBytes, ERR_TOO_LARGE, settings.bodyTimeout).catch((err: PtthError) => {
        throw err.code === 'PTTH_ERR_BODY_TOO_LARGE' ? new PtthError('PTTH_ERR_RELAY_REQUEST_TOO_LARGE') : err;
      });
      event.bytesIn = body.length;
      const request = await parseRelayRequest(body, settings.maxHeaderSize);
      event.method = request.method;
      event.path = request.path;
      const response = await relayRequest(target, request, key.patterns, settings, this.#deps.resolve ?? systemResolver);
      const bytes = serializeRelayResponse(response);
      res.writeHead(200, { 'Content-Type': 'message/http', 'Content-Length': bytes.length, 'Cache-Control': 'no-store' });
      res.end(bytes);
      finish(response.status, undefined, bytes.length);
    } catch (err) {
      const e = err instanceof PtthError ? err : new PtthError('PTTH_ERR_RELAY_UNREACHABLE', (err as Error).message);
      if (!res.headersSent) sendError(res, e, req.headers.accept, !req.complete);
      else res.destroy();
      finish(e.status, e.code, 0);
    } finally {
      if (held !== undefined) this.#release(held);
    }
  }

  #authorize(req: IncomingMessage): RelayKey {
    const key = bearerKey(req.headers.authorization);
    if (key === undefined || key === '') throw new PtthError('PTTH_ERR_RELAY_KEY_REQUIRED');
    return this.#deps.lookup(key);
  }

  #hold(keyId: string): string {
    const n = this.#inflight.get(keyId) ?? 0;
    if (n >= this.#deps.settings.maxPerKey) {
      throw new PtthError('PTTH_ERR_RELAY_BUSY', `The access key "${keyId}" already has ${n} relays in flight, the most it may.`);
    }
    this.#inflight.set(keyId, n + 1);
    return keyId;
  }

  #release(keyId: string): void {
    const n = (this.#inflight.get(keyId) ?? 1) - 1;
    if (n <= 0) this.#inflight.delete(keyId);
    else this.#inflight.set(keyId, n);
  }
}

const ERR_TOO_LARGE = 'The relayed request is larger than this gateway relays (--relay-max-request).';

/** message/http only: an application/http pipeline is refused with 415, as RelayHttp allows. */
function checkMediaType(contentType: string | undefined): void {
  const type = (contentType ?? '').split(';')[0]?.trim().toLowerCase();
  if (type === 'message/http') return;
  throw new PtthError(
    'PTTH_ERR_RELAY_MEDIA_TYPE',
    type === 'application/http'
      ? 'This gateway relays one request per envelope (message/http); application/http pipelines are refused.'
      : `The relayed request must be sent as message/http${type ? `, not ${type}` : ''}.`,
  );
}

function decodeTarget(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}
