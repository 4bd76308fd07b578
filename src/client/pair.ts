import { Duplex } from 'node:stream';

/**
 * One end of an in-memory connection (Node 22 has stream.duplexPair; Node 20 does not). Writes on
 * one end are reads on the other, with backpressure: a write waits until the peer's reader wants
 * more. The socket-only methods node:http calls are no-ops.
 */
export class PairEnd extends Duplex {
  peer!: PairEnd;
  #pending: ((error?: Error | null) => void) | undefined;

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.peer.push(chunk)) callback();
    else this.#pending = callback;
  }

  /** The peer wants more: release our writer if it was waiting. */
  release(): void {
    const cb = this.#pending;
    this.#pending = undefined;
    cb?.();
  }

  override _read(): void {
    this.peer.release();
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.peer.push(null);
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.release();
    if (!this.peer.destroyed) this.peer.destroy();
    callback(error);
  }

  setNoDelay(): this {
    return this;
  }
  setKeepAlive(): this {
    return this;
  }
  setTimeout(): this {
    return this;
  }
  ref(): this {
    return this;
  }
  unref(): this {
    return this;
  }
}

export function duplexPair(): [PairEnd, PairEnd] {
  const a = new PairEnd();
  const b = new PairEnd();
  a.peer = b;
  b.peer = a;
  return [a, b];
}
