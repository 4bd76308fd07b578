import { STATUS_CODES } from 'node:http';
import { pipeline, type Duplex } from 'node:stream';

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
