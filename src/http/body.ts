import type { IncomingMessage } from 'node:http';
import { PtthError } from './errors.js';

/**
 * Form fields from the query string and the body, the body winning: any Content-Type, since old
 * clients send what their library forces (docs/PROTOCOL.md section 5).
 */
export function formParams(req: IncomingMessage, body: Buffer): URLSearchParams {
  const url = req.url ?? '/';
  const q = url.indexOf('?');
  const params = new URLSearchParams(q === -1 ? '' : url.slice(q + 1));
  for (const [k, v] of new URLSearchParams(body.toString('utf8'))) params.set(k, v);
  return params;
}

/**
 * Reads a request body up to `limit` bytes (413 with `code` past it). With `timeout`, a body not
 * complete within that many milliseconds is refused with 408: a claimant trickling its form must
 * not hold a request open (the idle timeout never fires while bytes keep coming). With `budget`,
 * the bytes count against it while they are read (503 past it), as visitors' bodies do; a body
 * read whole stays counted, and the caller gives its length back once the bytes are gone.
 */
export function readBody(req: IncomingMessage, limit: number, message: string, timeout?: number, budget?: { used: number; readonly max: number }): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let held = 0;
    const release = (): void => {
      if (budget) budget.used -= held;
      held = 0;
    };
    if (Number(req.headers['content-length'] ?? 0) > limit) {
      req.resume();
      reject(new PtthError('PTTH_ERR_BODY_TOO_LARGE', message));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let failed = false;
    if (timeout !== undefined) {
      const timer = setTimeout(() => {
        if (failed || req.complete) return;
        failed = true;
        release();
        reject(new PtthError('PTTH_ERR_BODY_TIMEOUT'));
      }, timeout);
      req.once('close', () => clearTimeout(timer));
      req.once('end', () => clearTimeout(timer));
    }
    req.on('data', (c: Buffer) => {
      if (failed) return;
      size += c.length;
      if (size > limit) {
        failed = true;
        release();
        chunks.length = 0;
        reject(new PtthError('PTTH_ERR_BODY_TOO_LARGE', message));
        return;
      }
      if (budget) {
        if (budget.used + c.length > budget.max) {
          failed = true;
          release();
          chunks.length = 0;
          reject(new PtthError('PTTH_ERR_QUEUE_FULL', 'The gateway is already buffering as much as it allows for Comet apps.'));
          return;
        }
        budget.used += c.length;
        held += c.length;
      }
      chunks.push(c);
    });
    req.on('error', (err) => {
      if (!failed) release();
      failed = true;
      reject(err);
    });
    req.on('end', () => {
      if (failed) return;
      // The caller owns the budget bytes from here (a Comet reply holds them until it is sent).
      // The chunks are dropped: this listener lives as long as the request does.
      const body = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size);
      chunks.length = 0;
      resolve(body);
    });
  });
}
