import * as http from 'node:http';
import * as net from 'node:net';
import { createGateway, type Gateway, type GatewayOptions } from '../../src/gateway/server.js';
import { listen, type ListenOptions, type Tunnel } from '../../src/client/node.js';
import type { Registration } from '../../src/table/registration.js';

/** Short timeouts for tests: nothing waits out a production default. */
export const FAST: GatewayOptions = {
  claimTimeout: 1_000,
  responseTimeout: 2_000,
  queueTimeout: 1_000,
  reconnectWait: 500,
};

export interface TestGateway {
  gateway: Gateway;
  port: number;
  /** `http://127.0.0.1:PORT` */
  origin: string;
  /** `NAME.localhost:PORT`, the Host header visitors of NAME send. */
  host(name: string): string;
  /** The live registration of `name`; throws when there is none. */
  registration(name: string): Registration;
  close(): Promise<void>;
}

/** A real gateway on 127.0.0.1, port 0. */
export async function startGateway(options: GatewayOptions = {}, port = 0): Promise<TestGateway> {
  const gateway = createGateway({ ...FAST, ...options });
  const addr = await gateway.listen(port, '127.0.0.1');
  return {
    gateway,
    port: addr.port,
    origin: `http://127.0.0.1:${addr.port}`,
    host: (name) => `${name}.${gateway.settings.domain}:${addr.port}`,
    registration: (name) => {
      const reg = gateway.table.lookup(name);
      if (!reg) throw new Error(`no registration named ${name}`);
      return reg;
    },
    close: () => gateway.close(200),
  };
}

export interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  body: string;
  /** The body as received, for binary payloads. */
  bytes: Buffer;
}

export interface RequestSpec {
  host?: string;
  method?: string;
  path?: string;
  headers?: http.OutgoingHttpHeaders;
  body?: string | Buffer;
  agent?: http.Agent | false;
}

/** An ordinary HTTP request to 127.0.0.1:port with an explicit Host header. */
export function request(port: number, spec: RequestSpec = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1',
      port,
      method: spec.method ?? 'GET',
      path: spec.path ?? '/',
      headers: { ...(spec.host ? { host: spec.host } : {}), ...spec.headers },
      agent: spec.agent ?? false,
    });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const bytes = Buffer.concat(chunks);
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          rawHeaders: res.rawHeaders,
          body: bytes.toString('utf8'),
          bytes,
        });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(spec.body);
  });
}

/** A raw TCP connection to 127.0.0.1:port. */
export function rawConnect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
}

/**
 * Collects bytes from a socket until `done(buffer)` is true, the socket closes, or `ms` pass.
 * Resolves with everything read (never rejects: tests assert on what arrived).
 */
export function readUntil(socket: net.Socket, done: (b: Buffer) => boolean, ms = 3_000): Promise<Buffer> {
  return new Promise((resolve) => {
    let buf = Buffer.alloc(0);
    const finish = (): void => {
      clearTimeout(timer);
      socket.removeListener('data', onData);
      socket.removeListener('close', finish);
      socket.pause();
      resolve(buf);
    };
    const onData = (c: Buffer): void => {
      buf = Buffer.concat([buf, c]);
      if (done(buf)) finish();
    };
    const timer = setTimeout(finish, ms);
    socket.on('data', onData);
    socket.once('close', finish);
    socket.resume();
  });
}

/** Until the end of a response head. */
export const headEnd = (b: Buffer): boolean => b.includes('\r\n\r\n');

/**
 * Resolves when the socket closes (or after `ms`, with false). It reads (and drops) what arrives
 * meanwhile unless `read` is false: a visitor that stopped reading.
 */
export function closed(socket: net.Socket, ms = 3_000, read = true): Promise<boolean> {
  if (socket.destroyed) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    socket.once('close', () => {
      clearTimeout(t);
      resolve(true);
    });
    if (read) socket.resume();
  });
}

/**
 * Writes a claim request byte for byte and reads the gateway's answer head.
 * Returns the socket (still open after a 101) and the head as text.
 */
export async function rawClaim(
  port: number,
  bytes: string | Buffer,
): Promise<{ socket: net.Socket; head: string; rest: Buffer }> {
  const socket = await rawConnect(port);
  socket.write(bytes);
  const got = await readUntil(socket, headEnd);
  const end = got.indexOf('\r\n\r\n');
  return {
    socket,
    head: end === -1 ? got.toString('latin1') : got.subarray(0, end + 4).toString('latin1'),
    rest: end === -1 ? Buffer.alloc(0) : got.subarray(end + 4),
  };
}

/** Serves `handler` through the gateway with the Node client; resolves once online. */
export async function startApp(
  port: number,
  target: http.RequestListener | http.Server,
  options: ListenOptions = {},
): Promise<Tunnel> {
  const tunnel = listen(target, {
    gateway: `http://127.0.0.1:${port}`,
    connections: 2,
    backoff: 50,
    maxBackoff: 500,
    ...options,
  });
  await tunnel.ready();
  return tunnel;
}

/** Waits until `check()` is true, polling every 10 ms (fails the test after `ms`). */
export async function until(check: () => boolean, ms = 3_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
