import { pathToFileURL } from 'node:url';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

/*
 * The app side of the WebSocket channel (README "WebSocket channel framing") written against the
 * wire, for tests that need to control every frame, and the browser library loaded in Node.
 */

export const FLAG_END = 0x01;

export type Control = Record<string, unknown> & { t: string; id?: number };

export interface BodyFrame {
  id: number;
  end: boolean;
  payload: Buffer;
}

export class RawWsApp {
  readonly ws: WebSocket;
  hello: Control | undefined;
  #controls: Control[] = [];
  #frames: BodyFrame[] = [];
  #waiters: (() => void)[] = [];
  closeCode: number | undefined;

  private constructor(ws: WebSocket) {
    this.ws = ws;
    ws.on('message', (data: Buffer, binary: boolean) => {
      if (binary)
        this.#frames.push({
          id: data.readUInt32BE(1),
          end: ((data[0] as number) & FLAG_END) !== 0,
          payload: data.subarray(5),
        });
      else this.#controls.push(JSON.parse(data.toString()) as Control);
      for (const w of this.#waiters.splice(0)) w();
    });
    ws.on('close', (code) => {
      this.closeCode = code;
      for (const w of this.#waiters.splice(0)) w();
    });
  }

  /** Opens the channel and waits for the gateway's hello. */
  static connect(
    port: number,
    query: Record<string, string> = {},
    options: { autoPong?: boolean } = {},
  ): Promise<RawWsApp> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/?${new URLSearchParams(query).toString()}`, 'ptth.v1', options);
      const app = new RawWsApp(ws);
      ws.once('error', reject);
      ws.once('unexpected-response', (_req, res) => reject(new Error(`refused: ${res.statusCode}`)));
      void app.control('hello').then((hello) => {
        app.hello = hello;
        resolve(app);
      }, reject);
    });
  }

  #wait(ms: number, what: string, ready: () => boolean): Promise<void> {
    return new Promise((resolve, reject) => {
      const deadline = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
      const check = (): void => {
        if (ready()) {
          clearTimeout(deadline);
          resolve();
        } else if (this.closeCode !== undefined) {
          clearTimeout(deadline);
          reject(new Error(`closed (${this.closeCode}) while waiting for ${what}`));
        } else this.#waiters.push(check);
      };
      check();
    });
  }

  /** The next control message of type `t` (others stay queued). */
  async control(t: string, id?: number, ms = 3_000): Promise<Control> {
    const match = (c: Control): boolean => c.t === t && (id === undefined || c.id === id);
    await this.#wait(ms, `${t} ${id ?? ''}`, () => this.#controls.some(match));
    const i = this.#controls.findIndex(match);
    return this.#controls.splice(i, 1)[0] as Control;
  }

  /** Body frames received so far for a stream (taken out of the queue). */
  takeFrames(id: number): BodyFrame[] {
    const mine = this.#frames.filter((f) => f.id === id);
    this.#frames = this.#frames.filter((f) => f.id !== id);
    return mine;
  }

  /** Reads a request body to its END, returning credit as it goes. */
  async body(id: number, ms = 5_000): Promise<Buffer> {
    const parts: Buffer[] = [];
    for (;;) {
      await this.#wait(ms, `body of ${id}`, () => this.#frames.some((f) => f.id === id));
      let end = false;
      let got = 0;
      for (const f of this.takeFrames(id)) {
        parts.push(f.payload);
        got += f.payload.length;
        end ||= f.end;
      }
      if (got > 0) this.send({ t: 'credit', id, bytes: got });
      if (end) return Buffer.concat(parts);
    }
  }

  send(msg: Control): void {
    this.ws.send(JSON.stringify(msg));
  }

  frame(id: number, payload: Buffer, end = false): void {
    const f = Buffer.alloc(5 + payload.length);
    f[0] = end ? FLAG_END : 0;
    f.writeUInt32BE(id, 1);
    payload.copy(f, 5);
    this.ws.send(f);
  }

  /** A complete response with a small body (within the initial window). */
  respond(id: number, status: number, body?: string, headers: string[] = []): void {
    this.send({ t: 'response', id, status, headers, body: body !== undefined });
    if (body !== undefined) this.frame(id, Buffer.from(body), true);
  }

  closed(ms = 3_000): Promise<number> {
    return this.#wait(ms, 'close', () => this.closeCode !== undefined).then(() => this.closeCode as number);
  }

  close(): void {
    this.ws.terminate();
  }
}

/** What a refused WebSocket claim got: the HTTP status and X-Ptth-Error. */
export function wsRefusal(
  port: number,
  query: Record<string, string>,
): Promise<{ status: number; code: string | undefined }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/?${new URLSearchParams(query).toString()}`, 'ptth.v1');
    ws.once('unexpected-response', (_req, res) => {
      resolve({ status: res.statusCode ?? 0, code: res.headers['x-ptth-error'] as string | undefined });
      res.resume();
      ws.terminate();
    });
    ws.once('open', () => {
      ws.terminate();
      reject(new Error('the claim was accepted'));
    });
    ws.once('error', () => undefined);
  });
}

// ------------------------------------------------------------------------------------------------
// The browser library, run in Node with `ws` as its WebSocket (Node 20 has no global WebSocket).
// ------------------------------------------------------------------------------------------------

export interface LibServer {
  readonly url: Promise<string>;
  readonly transport: string | undefined;
  readonly name: string | undefined;
  close(options?: { release?: boolean }): Promise<void>;
}
export type LibHandler = (
  request: Request,
  info: { remoteAddr: string; transport: string },
) => Response | Promise<Response>;
export type LibServe = (options: Record<string, unknown>, handler: LibHandler) => LibServer;

export const LIBRARY_PATH = fileURLToPath(new URL('../../dist/browser/ptth.js', import.meta.url));

/** `serve` from the built browser library (npm test builds it first). */
export async function loadLibrary(): Promise<LibServe> {
  const mod = (await import(pathToFileURL(LIBRARY_PATH).href)) as { serve: LibServe };
  return (options, handler) => mod.serve({ WebSocket, backoff: 50, maxBackoff: 500, ...options }, handler);
}
