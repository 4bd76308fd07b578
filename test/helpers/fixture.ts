import type * as http from 'node:http';
import type * as net from 'node:net';
import { onTestFinished } from 'vitest';
import type { ListenOptions, Tunnel } from '../../src/client/node.js';
import type { GatewayOptions } from '../../src/gateway/server.js';
import { rawConnect, startApp, startGateway, type TestGateway } from './index.js';

/*
 * Per-test resources that clean up after themselves, as fastify's tests register
 * `t.after(() => app.close())`: each helper registers its own teardown with vitest's
 * onTestFinished, which runs whether the test passed or failed, last registered first. A gateway
 * started before its sockets and apps therefore closes after them, with nothing left to wait for.
 * Only call these from inside a test (not from beforeAll/beforeEach).
 */

/** Runs `fn` when the current test finishes. */
export function cleanup(fn: () => unknown): void {
  onTestFinished(async () => {
    await fn();
  });
}

/** A real gateway on 127.0.0.1, port 0 (startGateway), closed when the test finishes. */
export async function useGateway(options: GatewayOptions = {}, port = 0): Promise<TestGateway> {
  const gw = await startGateway(options, port);
  cleanup(() => gw.close());
  return gw;
}

/** Something with a connection to end at the test's end: sockets, HTTP/2 sessions, WebSockets. */
type Closable = { destroy(): unknown } | { terminate(): unknown };

/** Destroys (a WebSocket: terminates) `s` when the test finishes; returns it. */
export function track<T extends Closable>(s: T): T {
  cleanup(() => ('terminate' in s ? s.terminate() : s.destroy()));
  return s;
}

/**
 * A raw TCP connection to 127.0.0.1:port, destroyed when the test finishes. Socket errors are
 * ignored (tests assert on bytes and closes); `bytes`, when given, are written at once.
 */
export async function useSocket(port: number, bytes?: string | Buffer): Promise<net.Socket> {
  const s = track(await rawConnect(port));
  s.on('error', () => {});
  if (bytes !== undefined && bytes.length > 0) s.write(bytes);
  return s;
}

/** An app served through the gateway with the Node client (startApp), closed when the test finishes. */
export async function useApp(
  port: number,
  target: http.RequestListener | http.Server,
  options: ListenOptions = {},
): Promise<Tunnel> {
  const tunnel = await startApp(port, target, options);
  cleanup(() => tunnel.close({ graceMs: 100 }));
  return tunnel;
}
