import type { IncomingMessage, ServerResponse } from 'node:http';
import { bearerKey } from '../table/access.js';
import { readBody } from '../http/body.js';
import { clientAddress } from '../http/headers.js';
import { targetPath } from '../shared/target.js';
import { errorMessage } from '../shared/errormessage.js';
import { PtthError } from '../http/errors.js';
import { sendError } from '../http/respond.js';
import type { RelayEvent } from './eventmap.js';
import { boolOption, numberOption } from '../options.js';
import type { RelayPattern } from '../http/relay-policy.js';
import {
  parseRelayRequest,
  parseRelayTarget,
  relayRequest,
  serializeRelayResponse,
  systemResolver,
  type RelayLimits,
  type Resolver,
} from '../http/relay-target.js';

/**
 * The RelayHttp endpoint (docs/PROTOCOL.md section 10), off unless `serve --relay`:
 * `POST /relay/HOST[:PORT]` with one request as `message/http` and an access key; the answer is
 * the target's response as `message/http`. Every request needs a key whatever the claim rules,
 * and reaches only the targets its key lists.
 */

export const RELAY_PREFIX = '/relay/';

/** The library's relay options (the `--relay*` rows of src/options.ts). */
export interface RelayOptions {
  /** Serve `POST /relay/HOST[:PORT]` (default false). Needs access keys with a `relay` list. */
  relay?: boolean;
  /** Largest relayed request, head and body, in bytes (default 1 MiB; 413 past it). */
  relayMaxRequest?: number;
  /** Largest target response relayed, in bytes (default 8 MiB; 502 past it). */
  relayMaxResponse?: number;
  /** Milliseconds to resolve a target and connect (default 5000; 504 past it). */
  relayConnectTimeout?: number;
  /** Milliseconds a target has to send its whole response (default 30000; 504 past it). */
  relayTimeout?: number;
  /** Relays one access key may have in flight at once (default 16; 429 past it). */
  relayMaxPerKey?: number;
}

/** The settings of an enabled relay endpoint from the library's options (undefined: off). */
export function relaySettingsFrom(
  o: RelayOptions,
  maxHeaderSize: number,
  bodyTimeout: number,
): RelaySettings | undefined {
  if (!boolOption('relay', o.relay)) return undefined;
  return {
    maxRequestBytes: numberOption('relayMaxRequest', o.relayMaxRequest),
    maxResponseBytes: numberOption('relayMaxResponse', o.relayMaxResponse),
    connectTimeout: numberOption('relayConnectTimeout', o.relayConnectTimeout),
    responseTimeout: numberOption('relayTimeout', o.relayTimeout),
    maxPerKey: numberOption('relayMaxPerKey', o.relayMaxPerKey),
    maxHeaderSize,
    bodyTimeout,
  };
}

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

  /** Takes the requests under RELAY_PREFIX (false for any other path). */
  handle(req: IncomingMessage, res: ServerResponse, path: string): boolean {
    if (!path.startsWith(RELAY_PREFIX)) return false;
    void this.#serve(req, res, clientAddress(req.socket.remoteAddress));
    return true;
  }

  /** Serves one relay; never rejects. */
  async #serve(req: IncomingMessage, res: ServerResponse, remote: string): Promise<void> {
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
    let reading = false;
    try {
      const key = this.#authorize(req);
      event.keyId = key.id;
      if (req.method !== 'POST') throw new PtthError('PTTH_ERR_METHOD_NOT_ALLOWED', 'The relay endpoint takes POST.');
      const target = parseRelayTarget(targetText);
      if (!target) throw new PtthError('PTTH_ERR_RELAY_BAD_TARGET');
      checkMediaType(req.headers['content-type']);
      held = this.#hold(key.id);
      const { settings } = this.#deps;
      reading = true;
      const body = await readBody(req, settings.maxRequestBytes, ERR_TOO_LARGE, settings.bodyTimeout).catch(
        (err: PtthError) => {
          throw err.code === 'PTTH_ERR_BODY_TOO_LARGE' ? new PtthError('PTTH_ERR_RELAY_REQUEST_TOO_LARGE') : err;
        },
      );
      event.bytesIn = body.length;
      const request = await parseRelayRequest(body, settings.maxHeaderSize);
      event.method = request.method;
      event.path = targetPath(request.path);
      const response = await relayRequest(
        target,
        request,
        key.patterns,
        settings,
        this.#deps.resolve ?? systemResolver,
      );
      const bytes = serializeRelayResponse(response);
      res.writeHead(200, {
        'Content-Type': 'message/http',
        'Content-Length': bytes.length,
        'Cache-Control': 'no-store',
      });
      res.end(bytes);
      finish(response.status, undefined, bytes.length);
    } catch (err) {
      const e = err instanceof PtthError ? err : new PtthError('PTTH_ERR_RELAY_UNREACHABLE', errorMessage(err));
      // Refused before its body was read: the body is read and dropped, as the other endpoints do.
      // Refused while it was being read (too large, too slow): the connection closes after the answer.
      if (!reading) req.resume();
      if (!res.headersSent) sendError(res, e, req.headers.accept, reading && !req.complete);
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
      throw new PtthError(
        'PTTH_ERR_RELAY_BUSY',
        `The access key "${keyId}" already has ${n} relays in flight, the most it may.`,
      );
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
