import { once } from 'node:events';
import * as http2 from 'node:http2';
import type { Socket } from 'node:net';

/*
 * The app side of reversed HTTP/2 (draft-kazuho-ptth-ptth) on an already claimed socket, two ways:
 *  - `serveH2`: node:http2's server handed the socket, as the client library does (src/client/node.ts),
 *    for apps that misbehave with legal frames (RST_STREAM, GOAWAY, a cut body);
 *  - `RawH2App`: bare frames, for apps that send what node:http2 refuses to produce (invalid
 *    pseudo-headers, broken HPACK, oversized frames). Header blocks are HPACK literals without
 *    indexing, so the gateway's decoder state never depends on what the test sent before.
 */

export const PREFACE = 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n';

/** Frame types (RFC 9113 section 6). */
export const DATA = 0x0;
export const HEADERS = 0x1;
export const RST_STREAM = 0x3;
export const SETTINGS = 0x4;
export const PING = 0x6;
export const GOAWAY = 0x7;
export const END_STREAM = 0x1;
export const ACK = 0x1;
export const END_HEADERS = 0x4;

/** One HTTP/2 frame, byte for byte (RFC 9113 section 4.1). */
export function frame(type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream & 0x7fffffff, 5);
  return Buffer.concat([head, payload]);
}

/** An HPACK integer with an n-bit prefix (RFC 7541 section 5.1). */
function hpackInt(value: number, bits: number, first: number): Buffer {
  const max = (1 << bits) - 1;
  if (value < max) return Buffer.from([first | value]);
  const out = [first | max];
  let v = value - max;
  while (v >= 128) {
    out.push((v % 128) + 128);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return Buffer.from(out);
}

/** A header block of literals without indexing, new names (RFC 7541 section 6.2.2): any bytes go. */
export function headerBlock(fields: readonly (readonly [string, string])[]): Buffer {
  const parts: Buffer[] = [];
  for (const [name, value] of fields) {
    const n = Buffer.from(name, 'latin1');
    const v = Buffer.from(value, 'latin1');
    parts.push(Buffer.from([0x00]), hpackInt(n.length, 7, 0), n, hpackInt(v.length, 7, 0), v);
  }
  return Buffer.concat(parts);
}

export const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};

/**
 * A bare-frames reversed-HTTP/2 app: checks the gateway's preface, sends an empty SETTINGS, ACKs
 * the gateway's SETTINGS and answers its PINGs, and reports each request (a HEADERS frame) by its
 * stream id; everything else is read and ignored. `write` sends whatever the test wants.
 */
export class RawH2App {
  readonly socket: Socket;
  /** Stream ids of the requests the gateway opened, in order. */
  readonly requests: number[] = [];
  pings = 0;
  #buf: Buffer;
  #preface = false;
  #onRequest: (id: number) => void;
  #waiters: (() => void)[] = [];

  constructor(socket: Socket, already: Buffer, onRequest: (id: number, app: RawH2App) => void = () => {}) {
    this.socket = socket;
    this.#buf = already;
    this.#onRequest = (id) => onRequest(id, this);
    socket.on('data', this.#onData);
    socket.write(frame(SETTINGS, 0, 0));
    socket.resume();
    this.#onData(Buffer.alloc(0));
  }

  write(bytes: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(bytes);
  }

  /** Resolves with the id of the `n`th request (1-based) once it arrived. */
  async request(n = 1, ms = 2_000): Promise<number> {
    const deadline = Date.now() + ms;
    while (this.requests.length < n) {
      if (Date.now() > deadline || this.socket.destroyed)
        throw new Error(`request ${n} never reached the raw HTTP/2 app`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 20);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.requests[n - 1] as number;
  }

  #onData = (chunk: Buffer): void => {
    this.#buf = Buffer.concat([this.#buf, chunk]);
    if (!this.#preface) {
      if (this.#buf.length < PREFACE.length) return;
      if (this.#buf.subarray(0, PREFACE.length).toString('latin1') !== PREFACE) {
        this.socket.destroy();
        return;
      }
      this.#buf = this.#buf.subarray(PREFACE.length);
      this.#preface = true;
    }
    while (this.#buf.length >= 9) {
      const len = this.#buf.readUIntBE(0, 3);
      if (this.#buf.length < 9 + len) return;
      const type = this.#buf[3] as number;
      const flags = this.#buf[4] as number;
      const id = this.#buf.readUInt32BE(5) & 0x7fffffff;
      const payload = this.#buf.subarray(9, 9 + len);
      this.#buf = this.#buf.subarray(9 + len);
      if (type === SETTINGS && (flags & ACK) === 0) this.write(frame(SETTINGS, ACK, 0));
      if (type === PING && (flags & ACK) === 0) {
        this.pings++;
        this.write(frame(PING, ACK, 0, payload));
      }
      if (type === HEADERS) {
        this.requests.push(id);
        this.#onRequest(id);
        for (const w of this.#waiters.splice(0)) w();
      }
    }
  };
}

export interface H2Server {
  server: http2.Http2Server;
  session: http2.ServerHttp2Session;
}

/**
 * node:http2's server on a claimed socket (bytes read past the 101 are put back first), as the
 * client library serves reversed HTTP/2; resolves once the gateway acknowledged its SETTINGS.
 */
export async function serveH2(
  socket: Socket,
  already: Buffer,
  onStream: (
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    session: http2.ServerHttp2Session,
  ) => void,
  settings: http2.Settings = {},
): Promise<H2Server> {
  const server = http2.createServer({ settings });
  let session: http2.ServerHttp2Session | undefined;
  server.on('session', (s: http2.ServerHttp2Session) => {
    session = s;
    s.on('error', () => {});
  });
  server.on('stream', (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => {
    stream.on('error', () => {});
    onStream(stream, headers, session as http2.ServerHttp2Session);
  });
  if (already.length > 0) socket.unshift(already);
  server.emit('connection', socket);
  if (!session) throw new Error('no HTTP/2 session');
  const s = session;
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    once(s, 'localSettings'),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error('the gateway never acknowledged SETTINGS')), 2_000);
    }),
  ]).finally(() => clearTimeout(timer));
  return { server, session: s };
}
