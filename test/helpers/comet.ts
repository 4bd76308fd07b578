import * as http from 'node:http';
import { duplexPair } from '../../src/client/pair.js';

/*
 * A plain-HTTP Comet app (docs/PROTOCOL.md section 5), as a client written for reversehttp.net would be:
 * register with a form POST, long-poll request URLs, POST `message/http` replies. Used by the Comet
 * tests and the benchmark.
 */

export interface Links {
  [rel: string]: string;
}

/** Parses `Link` values, whether given as separate header lines or one comma-joined line. */
export function parseLinks(values: string | readonly string[] | undefined): Links {
  const out: Links = {};
  const list = values === undefined ? [] : typeof values === 'string' ? [values] : values;
  for (const value of list) {
    for (const m of value.matchAll(/<([^>]*)>\s*;\s*rel="?([^",;]+)"?/g)) out[m[2] as string] = m[1] as string;
  }
  return out;
}

export function rawValues(raw: readonly string[], name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2)
    if ((raw[i] as string).toLowerCase() === name.toLowerCase()) out.push(raw[i + 1] as string);
  return out;
}

export interface HttpReply {
  status: number;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  body: Buffer;
}

/** One request to an absolute URL on 127.0.0.1 (its own connection unless an agent is given). */
export function fetchRaw(
  url: string,
  init: {
    method?: string;
    headers?: http.OutgoingHttpHeaders;
    body?: string | Buffer;
    agent?: http.Agent | false;
  } = {},
): Promise<HttpReply> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1',
      port: u.port,
      path: `${u.pathname}${u.search}`,
      method: init.method ?? 'GET',
      headers: { host: u.host, ...init.headers },
      agent: init.agent ?? false,
    });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          rawHeaders: res.rawHeaders,
          body: Buffer.concat(chunks),
        }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(init.body);
  });
}

export interface Registered extends HttpReply {
  links: Links;
  location: string | undefined;
}

export async function register(origin: string, form: Record<string, string>, agent?: http.Agent): Promise<Registered> {
  const r = await fetchRaw(`${origin}/reversehttp`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(form).toString(),
    ...(agent ? { agent } : {}),
  });
  return { ...r, links: parseLinks(rawValues(r.rawHeaders, 'link')), location: rawValues(r.rawHeaders, 'location')[0] };
}

export interface ParsedRequest {
  method: string;
  url: string;
  httpVersion: string;
  rawHeaders: string[];
  body: Buffer;
}

/** Parses a `message/http` request with llhttp: a pipeline of exactly one (parseRequestPipeline). */
export async function parseRequestMessage(bytes: Buffer): Promise<ParsedRequest> {
  const requests = await parseRequestPipeline(bytes);
  if (requests.length !== 1) throw new Error(`expected one request in the message, got ${requests.length}`);
  return requests[0] as ParsedRequest;
}

/**
 * Parses an `application/http` pipeline of requests (docs/PROTOCOL.md section 5.7) with llhttp: node's
 * server over an in-memory connection reads pipelined requests, each in turn.
 */
export function parseRequestPipeline(bytes: Buffer): Promise<ParsedRequest[]> {
  return new Promise((resolve, reject) => {
    const [a, b] = duplexPair();
    const parsed: Promise<ParsedRequest>[] = [];
    const server = new http.Server((req, res) => {
      parsed.push(
        new Promise((done) => {
          const chunks: Buffer[] = [];
          req.on('data', (c: Buffer) => chunks.push(c));
          req.on('end', () => {
            done({
              method: req.method ?? '',
              url: req.url ?? '',
              httpVersion: req.httpVersion,
              rawHeaders: req.rawHeaders,
              body: Buffer.concat(chunks),
            });
            res.end();
          });
        }),
      );
    });
    server.on('clientError', (err) => {
      reject(err);
      a.destroy();
    });
    server.emit('connection', a);
    b.on('data', () => {});
    b.on('error', () => {});
    // The server ends its side once the input ended and every response went out.
    b.on('end', () => void Promise.all(parsed).then(resolve, reject));
    b.end(bytes);
  });
}

export interface SimpleResponse {
  status: number;
  headers?: [string, string][];
  body?: string | Buffer;
}

export function serializeResponse(r: SimpleResponse): Buffer {
  const body = r.body === undefined ? Buffer.alloc(0) : Buffer.isBuffer(r.body) ? r.body : Buffer.from(r.body);
  let head = `HTTP/1.1 ${r.status} ${http.STATUS_CODES[r.status] ?? ''}\r\n`;
  for (const [n, v] of r.headers ?? []) head += `${n}: ${v}\r\n`;
  head += `Content-Length: ${body.length}\r\n\r\n`;
  return Buffer.concat([Buffer.from(head, 'latin1'), body]);
}

export type CometHandler = (req: ParsedRequest, info: { client: string }) => SimpleResponse | Promise<SimpleResponse>;

/**
 * A Node Comet app: `pollers` loops, each with its own registration POST and chain of request URLs.
 *
 * A loop that meets anything but the protocol's answers (a 200 delivery, a 204 poll timeout, a 202
 * for its reply) fails: the failure is kept, `failure` names it, `failed` rejects with it, and
 * `stop()` rethrows it, so a broken poller fails the test that uses it. Only the deliberate stop
 * ends a loop quietly: the 410 of a poll waiting when `stop()` released the registration, or the
 * 404 / cut connection of a poll or reply that `stop()` overtook. A reply answered
 * `404 PTTH_ERR_UNKNOWN_REQUEST_URL` (its visitor left, or the reply came too late) is counted in
 * `lost` and the poller polls on, as docs/PROTOCOL.md 5.3 has apps do.
 */
export class CometApp {
  url = '';
  location = '';
  #stopped = false;
  /** Set by leave(): the app is gone, as if its process had exited; it sends nothing more. */
  #left = false;
  #lost = 0;
  #stopping: Promise<void> | undefined;
  #loops: Promise<void>[] = [];
  #failure: Error | undefined;
  #fail!: (err: Error) => void;
  /** Rejects with the first loop's failure (never resolves): race a test's awaits against it. */
  readonly failed: Promise<never> = new Promise<never>((_resolve, reject) => {
    this.#fail = reject;
  });
  #agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

  private constructor() {
    // Observed through failure/stop() too: an unawaited `failed` is not an unhandled rejection.
    this.failed.catch(() => undefined);
  }

  /** Requests per poll answer so far, in order (1 each unless pipelining). */
  readonly batches: number[] = [];
  #pipeline = false;

  /** `options.pipeline`: poll with `Accept: application/http` and answer pipelines (section 5.7). */
  static async start(
    origin: string,
    form: Record<string, string>,
    handler: CometHandler,
    pollers = 1,
    options: { pipeline?: boolean } = {},
  ): Promise<CometApp> {
    const app = new CometApp();
    app.#pipeline = options.pipeline ?? false;
    for (let i = 0; i < pollers; i++) {
      const r = await register(origin, form, app.#agent);
      if (r.status !== 201 && r.status !== 204) {
        await app.stop().catch(() => undefined);
        throw new Error(`registration failed: ${r.status} ${r.body.toString()}`);
      }
      app.url = r.links['related'] ?? '';
      app.location = r.location ?? '';
      const loop = app.#loop(r.links['first'] as string, handler, i);
      app.#loops.push(
        loop.catch((err: unknown) => {
          const e = err instanceof Error ? err : new Error(String(err));
          app.#failure ??= e;
          app.#fail(e);
        }),
      );
    }
    return app;
  }

  /** Replies answered 404 because no request waited for them any more (the visitor left, or it timed out). */
  get lost(): number {
    return this.#lost;
  }

  /** The first poll loop's failure, if one failed. */
  get failure(): Error | undefined {
    return this.#failure;
  }

  async #loop(first: string, handler: CometHandler, n: number): Promise<void> {
    const what = (r: HttpReply): string => `${r.status} ${r.body.toString().slice(0, 200)}`;
    let url = first;
    while (!this.#stopped) {
      let r: HttpReply;
      try {
        r = await fetchRaw(url, {
          agent: this.#agent,
          ...(this.#pipeline ? { headers: { accept: 'application/http' } } : {}),
        });
      } catch (err) {
        if (this.#stopped) return;
        throw new Error(`poller ${n}: poll of ${url} failed: ${String(err)}`, { cause: err });
      }
      if (r.status === 204) {
        url = parseLinks(rawValues(r.rawHeaders, 'link'))['next'] ?? url;
        continue;
      }
      // The deliberate stop: stop() released the registration under a waiting poll (410), or the
      // session was already gone when the poll arrived (404).
      if (this.#stopped && (r.status === 410 || r.status === 404)) return;
      if (r.status !== 200) throw new Error(`poller ${n}: unexpected poll answer ${what(r)}`);
      const next = parseLinks(rawValues(r.rawHeaders, 'link'))['next'];
      if (next === undefined) throw new Error(`poller ${n}: a delivery without rel=next`);
      const pipelined = r.headers['content-type'] === 'application/http';
      const reqs = pipelined ? await parseRequestPipeline(r.body) : [await parseRequestMessage(r.body)];
      this.batches.push(reqs.length);
      const clients = String(r.headers['requesting-client']).split(', ');
      const replies = await Promise.all(
        reqs.map(async (req, i) => serializeResponse(await handler(req, { client: clients[i] ?? '' }))),
      );
      if (this.#left) return;
      let posted: HttpReply;
      try {
        posted = await fetchRaw(url, {
          method: 'POST',
          headers: { 'content-type': pipelined ? 'application/http' : 'message/http' },
          body: Buffer.concat(replies),
          agent: this.#agent,
        });
      } catch (err) {
        if (this.#stopped) return;
        throw new Error(`poller ${n}: reply to ${url} failed: ${String(err)}`, { cause: err });
      }
      // 404: no request waits at this URL any more: its visitor left, or --reply-timeout passed
      // (docs/PROTOCOL.md 5.3), or stop() released the delivery. The reply is lost, not the poller:
      // it polls on. (A poller that stopped here took the app down for good with visitors who give up.)
      if (posted.status === 404 && posted.headers['x-ptth-error'] === 'PTTH_ERR_UNKNOWN_REQUEST_URL') this.#lost++;
      else if (posted.status !== 202) throw new Error(`poller ${n}: unexpected answer to its reply ${what(posted)}`);
      url = next;
    }
  }

  /**
   * Goes away the way an app process that exits does: without releasing the registration (the name
   * stays, to be reclaimed with its token), every connection cut, whatever was polled or delivered
   * left unanswered. A handler still running finishes into the void; stop() then waits for it.
   */
  leave(): void {
    this.#stopped = true;
    this.#left = true;
    this.#agent.destroy();
  }

  /** Releases the registration and ends the loops; rejects with a loop's failure if one failed. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      this.#stopped = true;
      if (this.location && !this.#left) await fetchRaw(this.location, { method: 'DELETE' }).catch(() => undefined);
      await Promise.all(this.#loops);
      this.#agent.destroy();
    })();
    return this.#stopping.then(() => {
      if (this.#failure) throw this.#failure;
    });
  }
}
