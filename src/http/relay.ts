import { STATUS_CODES } from 'node:http';
import { finished, pipeline, type Duplex, type Readable, type Writable } from 'node:stream';

/**
 * Serialises a response head for relaying an app's answer to an upgrade request onto a raw socket
 * (its 101, or its refusal), the one place a head is written by hand besides the claim's 101.
 */
export function rawHead(status: number, message: string | undefined, raw: readonly string[], extra = ''): string {
  let head = `HTTP/1.1 ${status} ${message || STATUS_CODES[status] || ''}\r\n`;
  for (let i = 0; i < raw.length; i += 2) head += `${raw[i]}: ${raw[i + 1]}\r\n`;
  return `${head}${extra}\r\n`;
}

/** Joins two sockets both ways (stream.pipeline each way); when either fails, both are closed. */
export function splice(a: Duplex, b: Duplex, done: () => void): void {
  // Two pipelines put their end-of-stream listeners on each socket, beside node:http's and
  // TLS's own: past node's default of 10 on a TLS socket, which would print a (false)
  // "possible memory leak" warning for every spliced WebSocket. They are removed on close.
  for (const s of [a, b]) s.setMaxListeners(Math.max(s.getMaxListeners(), 32));
  let pending = 2;
  const end = (err?: Error | null): void => {
    if (err) {
      a.destroy();
      b.destroy();
    }
    if (--pending === 0) done();
  };
  pipeline(a, b, end);
  pipeline(b, a, end);
}

/**
 * `src` into `dst` with backpressure, with stream.pipeline's guarantees: when either side fails or
 * closes early, both are destroyed and their listeners removed; `done` is called once, with the
 * error if there was one. Used on the per-request path instead of stream.pipeline, which creates
 * an AbortController per call and aborts it on completion, building a DOMException (with its
 * stack trace) for every request: a measurable share of the gateway's CPU in profiles.
 */
export function relay(src: Readable, dst: Writable, done: (err?: Error | null) => void, stall?: Stall): void {
  let settled = false;
  const unwatch = stall ? watchStall(src, dst, stall) : undefined;
  const settle = (err?: Error | null): void => {
    if (settled) return;
    settled = true;
    unwatch?.();
    if (err) {
      // As pipeline does: the destination learns of the failure (an HTTP/2 stream is reset, not
      // ended cleanly). The end-of-stream watchers stay attached, so the 'error' events that
      // destroy() emits later always have a listener.
      src.unpipe(dst);
      src.destroy();
      dst.destroy(err);
    } else {
      stopSrc();
      stopDst();
    }
    done(err);
  };
  const stopSrc = finished(src, { writable: false }, (err) => {
    if (err) settle(err);
  });
  const stopDst = finished(dst, { readable: false }, (err) => settle(err));
  src.pipe(dst);
}

/** A reader that stopped reading: `dst` refused data and did not drain for `ms` (see relay). */
export interface Stall {
  readonly ms: number;
  readonly onStall: () => void;
}

/**
 * Watches a pipe for a destination that has stopped taking data: pipe() pauses `src` when
 * `dst.write` returns false and resumes it on 'drain'; a pause that no drain ends within `ms`
 * means the reader behind `dst` (an app that never reads a request body) is stuck. A slow
 * *source* never arms it: `dst` only asks for a drain when data is waiting for its reader.
 */
function watchStall(src: Readable, dst: Writable, stall: Stall): () => void {
  let timer: NodeJS.Timeout | undefined;
  const disarm = (): void => {
    if (timer) clearTimeout(timer);
    timer = undefined;
  };
  const arm = (): void => {
    if (timer || !dst.writableNeedDrain) return;
    timer = setTimeout(() => {
      timer = undefined;
      stall.onStall();
    }, stall.ms);
  };
  src.on('pause', arm);
  dst.on('drain', disarm);
  return () => {
    disarm();
    src.removeListener('pause', arm);
    dst.removeListener('drain', disarm);
  };
}

/**
 * After a refusal the visitor has nothing more to send (the answer says Connection: close), but
 * its socket came from node's 'upgrade' event paused and half-open: without reading it, a visitor
 * that leaves is never noticed while the app's answer is still streaming. Whatever it sends is
 * dropped, and its end closes the connection.
 */
export function leaveOnEnd(visitor: Duplex): void {
  visitor.once('end', () => visitor.destroy());
  visitor.resume();
}
