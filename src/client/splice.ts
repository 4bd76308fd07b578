import * as net from 'node:net';
import * as tls from 'node:tls';
import type { Socket } from 'node:net';
import { listen, SPLICER, type ChannelControl, type ListenOptions, type Splicer, type Tunnel } from './node.js';
import { UNREACHABLE } from './proxy.js';
import { noop } from '../shared/noop.js';

/**
 * `connect`'s default mode: each reversed HTTP/1.1 (PTTH/1.0) channel is joined byte for byte to
 * one connection to the local service, opened on the channel's first bytes from the gateway and
 * closed with it. Nothing here parses HTTP: requests, responses, keep-alive, chunked bodies and
 * WebSocket upgrades are bytes the gateway and the local service frame for each other.
 */

/** Options of `createSplicer()` and `splice()`. */
export interface SpliceOptions {
  /** For an https: local service: verify its certificate (default false: it is usually self-signed). */
  rejectUnauthorized?: boolean;
  /**
   * Told, per connection to the local service, whether it could be reached: the error when it
   * could not (refused, unknown host...), undefined when it could.
   */
  onReach?: (err: NodeJS.ErrnoException | undefined) => void;
  /**
   * Idle channels kept open beside the spliced ones, for the next requests (default 2): a burst
   * grows the pool by this many per claim round trip. They count against a key's channel cap.
   */
  spare?: number;
  /**
   * Milliseconds a spliced channel may carry no bytes, after an answer, before it closes while
   * the pool holds more than its spares (default 120000, the gateway's own --idle-timeout).
   */
  idleTimeout?: number;
}

/** `connect`'s pool size when splicing: most reversed connections (the pool grows to it with demand). */
export const SPLICE_CONNECTIONS = 64;

/** Whether bytes start with a `101` status line (`HTTP/1.x 101 `): a look at 13 bytes, not a parse. */
function isSwitching(chunk: Buffer): boolean {
  return (
    chunk.length >= 13 &&
    chunk[9] === 0x31 &&
    chunk[10] === 0x30 &&
    chunk[11] === 0x31 &&
    chunk[12] === 0x20 &&
    chunk.toString('latin1', 0, 7) === 'HTTP/1.'
  );
}

/**
 * Bytes a side may hold unwritten before the other side stops reading. A socket's own mark (16
 * KiB) is below one read (64 KiB): every chunk of a large body would stop and restart reading.
 */
const BUFFERED = 512 * 1024;

/** Whether the local service can be reached byte for byte: a base path needs a parsing hop to add it. */
export function canSplice(target: URL): boolean {
  return (
    (target.protocol === 'http:' || target.protocol === 'https:') && target.pathname === '/' && target.search === ''
  );
}

/** Where spliced channels go: the local service, how to dial it and what to say when it cannot be reached. */
class LocalService {
  readonly target: URL;
  readonly secure: boolean;
  readonly idleTimeout: number;
  readonly onReach: SpliceOptions['onReach'];
  readonly #host: string;
  readonly #port: number;
  readonly #rejectUnauthorized: boolean;

  constructor(target: URL, options: SpliceOptions) {
    this.target = target;
    this.#host = target.hostname.replace(/^\[|\]$/g, '');
    this.secure = target.protocol === 'https:';
    this.#port = Number(target.port || (this.secure ? 443 : 80));
    this.idleTimeout = options.idleTimeout ?? 120_000;
    this.onReach = options.onReach;
    this.#rejectUnauthorized = options.rejectUnauthorized ?? false;
  }

  dial(): Socket {
    const host = this.#host;
    const port = this.#port;
    if (!this.secure) return net.connect({ host, port, allowHalfOpen: true });
    const socket = tls.connect({
      host,
      port,
      ALPNProtocols: ['http/1.1'],
      rejectUnauthorized: this.#rejectUnauthorized,
      ...(net.isIP(host) ? {} : { servername: host }),
    });
    socket.allowHalfOpen = true;
    return socket;
  }

  /** The 502 a visitor gets when the local service cannot be reached (a raw refusal). */
  refusal(err: NodeJS.ErrnoException): Buffer {
    const body = `502 Bad Gateway: ptth-proxy connect could not reach ${this.target.origin} (${err.code ?? err.message}).\n`;
    return Buffer.from(
      'HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n' +
        `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
  }
}

/** A Splicer (see node.ts) that joins channels to connections to `target`. */
export function createSplicer(target: URL, options: SpliceOptions = {}): Splicer {
  if (!canSplice(target)) throw new TypeError(`cannot splice to ${target.href}: a base path needs the parsing proxy`);
  const spare = options.spare ?? 2;
  if (!Number.isInteger(spare) || spare < 1) throw new TypeError('spare must be a whole number >= 1');
  const service = new LocalService(target, options);
  return {
    spare,
    attach(channel: Socket, control: ChannelControl) {
      return new SplicedChannel(service, channel, control);
    },
  };
}

/**
 * One reversed channel, spare until its first bytes, then joined to its own connection to the
 * local service until either closes.
 */
class SplicedChannel {
  readonly #service: LocalService;
  readonly #channel: Socket;
  readonly #control: ChannelControl;
  /** A request went down and no answer byte came back since: never closed for being idle. */
  #pending = false;
  /** No bytes either way since the last idle check. */
  #quiet = true;
  #local: Socket | undefined;
  /** The tunnel is closing: the channel goes once the answer in flight has come. */
  #closing = false;
  #idle: NodeJS.Timeout | undefined;

  constructor(service: LocalService, channel: Socket, control: ChannelControl) {
    this.#service = service;
    this.#channel = channel;
    this.#control = control;
    channel.on('error', noop);
    // A spare channel the gateway ends (it closes, or restarts) is gone.
    channel.once('end', this.#onSpareEnd);
    // Idle: no bytes either way for a whole period (so between one and two idle times), and no
    // request awaiting its answer. A flag per chunk, not a socket timeout re-armed per read and
    // write: this is the hot path. Spares beyond what the pool keeps close the same way.
    if (service.idleTimeout > 0) {
      const idle = setInterval(this.#checkIdle, service.idleTimeout);
      idle.unref();
      this.#idle = idle;
      channel.once('close', () => clearInterval(idle));
    }
    channel.on('data', this.#onFirst);
  }

  close(): void {
    this.#closing = true;
    if (!this.#pending) {
      this.#channel.destroy();
      this.#local?.destroy();
    }
  }

  #onSpareEnd = (): void => {
    this.#channel.destroy();
  };

  #checkIdle = (): void => {
    if (this.#quiet && !this.#pending && this.#control.shrinkable()) {
      this.#channel.destroy();
      this.#local?.destroy();
    }
    this.#quiet = true;
  };

  #onFirst = (first: Buffer): void => {
    const channel = this.#channel;
    channel.removeListener('data', this.#onFirst);
    channel.removeListener('end', this.#onSpareEnd);
    // From here each direction ends on its own (a FIN is passed on as a FIN); the channel
    // closes when both have.
    channel.allowHalfOpen = true;
    channel.pause();
    this.#pending = true;
    this.#control.bound();
    this.#quiet = false;
    let conn: Socket;
    try {
      conn = this.#service.dial();
    } catch (err) {
      this.#refuse(err as NodeJS.ErrnoException);
      return;
    }
    this.#local = conn;
    conn.on('error', noop);
    const onClose = (): void => {
      conn.destroy();
    };
    channel.once('close', onClose);
    let joined = false;
    conn.once(this.#service.secure ? 'secureConnect' : 'connect', () => {
      joined = true;
      this.#service.onReach?.(undefined);
      conn.setNoDelay(true);
      conn.write(first);
      this.#join(conn);
    });
    conn.once('error', (err: NodeJS.ErrnoException) => {
      if (joined) return;
      channel.removeListener('close', onClose);
      this.#refuse(err);
    });
  };

  /** The visitor gets a 502 and the channel closes; the rest of the request is read and dropped. */
  #refuse(err: NodeJS.ErrnoException): void {
    const channel = this.#channel;
    if (err.code !== undefined && UNREACHABLE.has(err.code)) this.#service.onReach?.(err);
    this.#pending = false;
    channel.allowHalfOpen = false;
    channel.on('data', noop);
    channel.resume();
    if (!channel.destroyed) channel.end(this.#service.refusal(err));
    const t = setTimeout(() => channel.destroy(), 2_000);
    t.unref();
    channel.once('close', () => clearTimeout(t));
  }

  #join(b: Socket): void {
    const a = this.#channel;
    // gateway -> local service: requests (and an upgraded connection's bytes)
    a.on('data', (chunk: Buffer) => {
      this.#pending = true;
      this.#quiet = false;
      if (!b.write(chunk) && b.writableLength > BUFFERED) a.pause();
    });
    b.on('drain', () => a.resume());
    a.on('end', () => b.end());
    let upgraded = false;
    // local service -> gateway: answers
    b.on('data', (chunk: Buffer) => {
      // The first bytes of an answer: `HTTP/1.1 101 ` takes the channel for good (a WebSocket).
      if (this.#pending && !upgraded && isSwitching(chunk)) {
        upgraded = true;
        clearInterval(this.#idle);
        this.#control.consumed();
      }
      this.#pending = false;
      this.#quiet = false;
      // Closing: the request is down, its answer is coming. A FIN to the service asks it to
      // close once that answer is out (as HTTP servers do), and the channel follows.
      if (this.#closing && b.writable) b.end();
      if (!a.write(chunk) && a.writableLength > BUFFERED) b.pause();
    });
    a.on('drain', () => b.resume());
    b.on('end', () => a.end());
    // A local connection that closes without ending (a reset) takes the channel with it; one that
    // ended cleanly lets the channel finish writing first.
    b.on('close', () => {
      if (!a.writableEnded) a.destroy();
    });
    a.resume();
  }
}

/**
 * Serves the local service at `target` through a gateway by splicing reversed HTTP/1.1 channels to
 * it: the pool keeps `local.spare` idle channels and grows with demand up to `connections` (default SPLICE_CONNECTIONS, 64).
 */
export function splice(target: URL, options: ListenOptions = {}, local: SpliceOptions = {}): Tunnel {
  return listen(noop, {
    ...options,
    connections: options.connections ?? SPLICE_CONNECTIONS,
    http1: true,
    [SPLICER]: createSplicer(target, local),
  });
}
