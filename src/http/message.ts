import { request, type IncomingMessage } from 'node:http';
import { createRequire } from 'node:module';
import { Duplex } from 'node:stream';

/**
 * `message/http` (RFC 9112 section 10.1) both ways for the Comet transport (docs/PROTOCOL.md section 5).
 *
 * Writing: the visitor's request is reproduced from what llhttp parsed (method, Request-URI and
 * version as received) with the header list every transport forwards (end-to-end headers in their
 * order and case, hop-by-hop ones removed, the gateway's forwarding headers added), plus its
 * buffered body.
 * Reading: the app's reply is parsed by llhttp itself, through node's HTTP client over an in-memory
 * Duplex that hands it the bytes and swallows the request node writes. No hand-written parser.
 */

/**
 * The visitor's request for a poller: request line as received, the forwarded header list
 * (`headers`, as every other transport sends it: apps can trust `Requesting-Client` and
 * `X-Forwarded-*` whichever transport they use), then the body. The visitor's Transfer-Encoding is
 * hop-by-hop and gone: a body that came chunked is whole here and framed by its Content-Length
 * (trailers are not relayed, as on the other transports).
 */
export function serializeRequest(req: IncomingMessage, headers: readonly string[], body: Buffer): Buffer {
  let head = `${req.method ?? 'GET'} ${req.url ?? '/'} HTTP/${req.httpVersion}\r\n`;
  for (let i = 0; i < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
  if (req.headers['content-length'] === undefined && req.headers['transfer-encoding'] !== undefined) {
    head += `Content-Length: ${body.length}\r\n`;
  }
  head += '\r\n';
  return Buffer.concat([Buffer.from(head, 'latin1'), body]);
}

/**
 * An in-memory connection that hands llhttp `bytes` and then its end, and swallows whatever node
 * writes back: how a complete message is parsed by node's own HTTP client or server.
 */
export function replayConnection(bytes: Buffer): Duplex {
  let fed = false;
  return new Duplex({
    read() {
      if (fed) return;
      fed = true;
      this.push(bytes);
      this.push(null);
    },
    write(_chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void) {
      callback();
    },
  });
}

export interface ParsedResponse {
  readonly status: number;
  readonly statusMessage: string;
  /** Flat raw header list as the app wrote it. */
  readonly rawHeaders: string[];
  readonly body: Buffer;
}

/** Why a reply is not a valid HTTP response, for the 400 the app gets. */
export class InvalidMessageError extends Error {
  override name = 'InvalidMessageError';
}

/**
 * Parses one complete HTTP/1.x response with llhttp. `method` is the request it answers (a reply to
 * HEAD has no body whatever its Content-Length says). Interim 1xx responses are skipped; a response
 * without a complete body, a 101, trailing bytes or anything llhttp refuses is invalid.
 */
export function parseResponse(bytes: Buffer, method: string): Promise<ParsedResponse> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const fail = (why: string): void => {
      if (settled) return;
      settled = true;
      reject(new InvalidMessageError(why));
      conn.destroy();
    };
    // What node writes to it is the placeholder request: nobody reads it.
    const conn = replayConnection(bytes);
    const req = request({
      createConnection: () => conn,
      method,
      path: '/',
      setHost: false,
      headers: { connection: 'close' },
    });
    req.on('response', (res: IncomingMessage) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        chunks.push(c);
        size += c.length;
      });
      res.on('aborted', () => fail('the body is shorter than its framing says'));
      res.on('error', (err: NodeJS.ErrnoException) => fail(parseFailure(err)));
      res.on('end', () => {
        if (!res.complete) return fail('the body is shorter than its framing says');
        // node's client destroys the connection at once when a second response follows the first
        // (parserOnIncomingClient): a complete message after the reply is trailing bytes too.
        const status = res.statusCode ?? 0;
        // (A body delimited by the end of the bytes has nothing after it by definition.)
        const delimited =
          res.headers['content-length'] !== undefined ||
          res.headers['transfer-encoding'] !== undefined ||
          status === 204 ||
          status === 304 ||
          method === 'HEAD';
        if (delimited && conn.destroyed) return fail('bytes follow the response');
        if (res.httpVersionMajor !== 1) return fail(`HTTP/${res.httpVersion} is not HTTP/1.x`);
        if (status < 100 || status > 599) return fail(`${status} is not an HTTP status code (RFC 9110 section 15)`);
        // Bytes past the message surface as a parse error on the next tick, if any.
        setImmediate(() => {
          if (settled) return;
          settled = true;
          // A body llhttp handed over in one piece is a view of `bytes`: no copy of a large reply.
          const body = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size);
          chunks.length = 0;
          resolve({
            status: res.statusCode ?? 0,
            statusMessage: res.statusMessage ?? '',
            rawHeaders: res.rawHeaders,
            body,
          });
        });
      });
    });
    req.on('upgrade', () => fail('a 101 cannot be relayed over this transport'));
    req.on('error', (err: NodeJS.ErrnoException) => fail(parseFailure(err)));
    req.end();
  });
}

/** Why llhttp (or the connection under it) gave up on a reply, in words for the app's 400. */
function parseFailure(err: NodeJS.ErrnoException): string {
  if (typeof err.code === 'string' && err.code.startsWith('HPE_'))
    return `${err.code}: ${err.message.replace(/^Parse Error: /, '')}`;
  if (err.code === 'ECONNRESET')
    return 'no complete response (it ended before its head, or had only interim 1xx responses)';
  return err.message;
}

/** node's own llhttp binding, the parser node:http runs (`_http_common` exports it). */
interface LlhttpParser {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  execute(bytes: Buffer): number | Error;
  finish(): undefined | Error;
  close(): void;
  [callback: number]: unknown;
}
interface LlhttpParserClass {
  new (): LlhttpParser;
  readonly RESPONSE: number;
  readonly kOnHeaders: number;
  readonly kOnHeadersComplete: number;
  readonly kOnBody: number;
  readonly kOnMessageComplete: number;
  readonly kLenientKeepAlive: number;
}
let parserClass: LlhttpParserClass | null | undefined;
/**
 * node's llhttp binding, loaded on first use; null on a node that no longer exports it (the
 * `_http_*` modules are deprecated in the documentation, DEP0199): the gateway then offers no
 * pipelines (pipelineParserAvailable) and every poll gets message/http.
 */
function llhttp(): LlhttpParserClass | null {
  if (parserClass !== undefined) return parserClass;
  try {
    const { HTTPParser } = createRequire(import.meta.url)('_http_common') as { HTTPParser?: LlhttpParserClass };
    parserClass = typeof HTTPParser === 'function' && typeof HTTPParser.RESPONSE === 'number' ? HTTPParser : null;
  } catch {
    parserClass = null;
  }
  return parserClass;
}

/** Whether this node can parse reply pipelines (parseResponses): without it, no poll is answered with one. */
export function pipelineParserAvailable(): boolean {
  return llhttp() !== null;
}

/** What an `application/http` reply pipeline held: its complete responses, in order. */
export interface ParsedPipeline {
  readonly responses: ParsedResponse[];
}

/**
 * Parses an `application/http` pipeline of HTTP/1.x responses (docs/PROTOCOL.md section 5.7) with
 * llhttp. `methods` are the requests they answer, in order (a reply to HEAD has no body). Interim
 * 1xx responses are skipped. Fewer responses than methods is not an error (the caller decides);
 * more, a 101, a truncated response or anything llhttp refuses is InvalidMessageError.
 *
 * node's HTTP client (parseResponse) drops its connection when a second response follows the
 * first, so the sequence is read by the parser node:http itself runs, driven directly: it reports
 * each message's head, body and end through the callbacks node's own client uses.
 */
export function parseResponses(bytes: Buffer, methods: readonly string[]): ParsedPipeline {
  const responses: ParsedResponse[] = [];
  let failure: string | undefined;
  let head: { status: number; statusMessage: string; rawHeaders: string[] } | undefined;
  let pending: string[] = [];
  let chunks: Buffer[] = [];
  const HTTPParser = llhttp();
  if (!HTTPParser) throw new InvalidMessageError('this gateway cannot read application/http pipelines');
  const parser = new HTTPParser();
  // Keep-alive leniency: a response saying `Connection: close` (or an HTTP/1.0 one with a length)
  // ends its own message, not the pipeline; whatever follows is still parsed and counted.
  parser.initialize(HTTPParser.RESPONSE, {}, 0, HTTPParser.kLenientKeepAlive);
  parser[HTTPParser.kOnHeaders] = (headers: string[]): void => {
    pending = pending.concat(headers);
  };
  parser[HTTPParser.kOnHeadersComplete] = (
    major: number,
    _minor: number,
    headers: string[] | undefined,
    _m: unknown,
    _u: unknown,
    status: number,
    statusMessage: string,
    upgrade: boolean,
  ): number => {
    const rawHeaders = headers ?? pending;
    pending = [];
    if (failure === undefined) {
      if (upgrade || status === 101) failure = 'a 101 cannot be relayed over this transport';
      else if (major !== 1) failure = `HTTP/${major} is not HTTP/1.x`;
      else if (status < 100 || status > 599) failure = `${status} is not an HTTP status code (RFC 9110 section 15)`;
      else if (status >= 200 && responses.length >= methods.length)
        failure = `more responses than the ${methods.length} requests delivered`;
    }
    head = { status, statusMessage, rawHeaders };
    chunks = [];
    // 1: the message has no body (a reply to HEAD); llhttp's own rules cover 1xx, 204 and 304.
    return status >= 200 && methods[responses.length] === 'HEAD' ? 1 : 0;
  };
  parser[HTTPParser.kOnBody] = (chunk: Buffer): void => {
    if (failure === undefined) chunks.push(chunk);
  };
  parser[HTTPParser.kOnMessageComplete] = (): void => {
    if (head && head.status >= 200 && failure === undefined)
      responses.push({ ...head, body: chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks) });
    head = undefined;
    chunks = [];
  };
  try {
    const ran = parser.execute(bytes);
    const ended = ran instanceof Error ? ran : parser.finish();
    if (ended instanceof Error) failure ??= pipelineFailure(ended as NodeJS.ErrnoException & { reason?: unknown });
  } finally {
    parser.close();
  }
  if (failure !== undefined) throw new InvalidMessageError(failure);
  return { responses };
}

/** Why llhttp gave up on a reply pipeline, in words for the app's 400. */
function pipelineFailure(err: NodeJS.ErrnoException & { reason?: unknown }): string {
  if (err.code === 'HPE_INVALID_EOF_STATE') return 'a response is shorter than its framing says';
  return `${err.code ?? 'HPE_ERROR'}: ${typeof err.reason === 'string' ? err.reason : err.message}`;
}
