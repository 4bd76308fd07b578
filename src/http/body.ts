import type { IncomingMessage } from 'node:http';
import { targetQuery } from '../shared/target.js';
import { PtthError } from './errors.js';

/**
 * Form fields from the query string and the body, the body winning: any Content-Type, since old
 * clients send what their library forces (docs/PROTOCOL.md section 5).
 */
export function formParams(req: IncomingMessage, body: Buffer): URLSearchParams {
  const params = new URLSearchParams(targetQuery(req.url ?? '/'));
  for (const [k, v] of new URLSearchParams(body.toString('utf8'))) params.set(k, v);
  return params;
}

/** Bytes buffered by every Comet channel together, shared: `used` may not grow past `max`. */
export interface BufferBudget {
  used: number;
  readonly max: number;
}

/** What `BoundedBody.add` did with a chunk. */
export type BodyVerdict = 'kept' | 'too-large' | 'over-budget';

/** Whether a request's declared Content-Length alone is over `limit` (refused before reading). */
export function declaresMoreThan(req: IncomingMessage, limit: number): boolean {
  return Number(req.headers['content-length'] ?? 0) > limit;
}

/** The refusal for a body that would take the buffer budget past its `max`. */
export function budgetFull(): PtthError {
  return new PtthError('PTTH_ERR_QUEUE_FULL', 'The gateway is already buffering as much as it allows for Comet apps.');
}

/**
 * A body gathered whole in memory, at most `limit` bytes, and with a `budget`, counted against it
 * while it arrives. The one place that decides a buffered body's bounds: the caller owns the
 * stream's events and says what a refusal means (a status, a failed exchange...). Once a chunk is
 * refused the chunks are dropped; the budget bytes already counted stay counted until `release`.
 */
export class BoundedBody {
  readonly #limit: number;
  readonly #budget: BufferBudget | undefined;
  #chunks: Buffer[] = [];
  #size = 0;
  #held = 0;

  constructor(limit: number, budget?: BufferBudget) {
    this.#limit = limit;
    this.#budget = budget;
  }

  /** Bytes seen so far, the refused chunk included. */
  get size(): number {
    return this.#size;
  }

  add(chunk: Buffer): BodyVerdict {
    this.#size += chunk.length;
    if (this.#size > this.#limit) {
      this.#chunks.length = 0;
      return 'too-large';
    }
    const budget = this.#budget;
    if (budget) {
      if (budget.used + chunk.length > budget.max) {
        this.#chunks.length = 0;
        return 'over-budget';
      }
      budget.used += chunk.length;
      this.#held += chunk.length;
    }
    this.#chunks.push(chunk);
    return 'kept';
  }

  /** Gives the budget back what this body counted against it. */
  release(): void {
    if (this.#budget) this.#budget.used -= this.#held;
    this.#held = 0;
  }

  /**
   * The body, and the chunks dropped (the caller's listener may outlive it). A body that came in
   * one chunk is that chunk, not a copy. Its budget bytes are the caller's from here.
   */
  take(): Buffer {
    const chunks = this.#chunks;
    const body = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, this.#size);
    this.#chunks = [];
    return body;
  }
}

/**
 * The start of a body for a message (an error answer shown to a person, a replay's preview): whole
 * chunks are kept until `max` bytes are, and every byte is counted.
 */
export class BodyPrefix {
  readonly #max: number;
  #chunks: Buffer[] = [];
  #size = 0;

  constructor(max: number) {
    this.#max = max;
  }

  /** Bytes seen, kept or not. */
  get size(): number {
    return this.#size;
  }

  add(chunk: Buffer): void {
    if (this.#size < this.#max) this.#chunks.push(chunk);
    this.#size += chunk.length;
  }

  /** The chunks kept, joined: at least `max` bytes when the body had them (cut it to taste). */
  kept(): Buffer {
    return Buffer.concat(this.#chunks);
  }
}

/**
 * Reads a request body up to `limit` bytes (413 with `message` past it). With `timeout`, a body not
 * complete within that many milliseconds is refused with 408: a claimant trickling its form must
 * not hold a request open (the idle timeout never fires while bytes keep coming). With `budget`,
 * the bytes count against it while they are read (503 past it), as visitors' bodies do; a body
 * read whole stays counted, and the caller gives its length back once the bytes are gone.
 */
export function readBody(
  req: IncomingMessage,
  limit: number,
  message: string,
  timeout?: number,
  budget?: BufferBudget,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    if (declaresMoreThan(req, limit)) {
      req.resume();
      reject(new PtthError('PTTH_ERR_BODY_TOO_LARGE', message));
      return;
    }
    const body = new BoundedBody(limit, budget);
    let failed = false;
    if (timeout !== undefined) {
      const timer = setTimeout(() => {
        if (failed || req.complete) return;
        failed = true;
        body.release();
        reject(new PtthError('PTTH_ERR_BODY_TIMEOUT'));
      }, timeout);
      req.once('close', () => clearTimeout(timer));
      req.once('end', () => clearTimeout(timer));
    }
    req.on('data', (c: Buffer) => {
      if (failed) return;
      const verdict = body.add(c);
      if (verdict === 'kept') return;
      failed = true;
      body.release();
      reject(verdict === 'too-large' ? new PtthError('PTTH_ERR_BODY_TOO_LARGE', message) : budgetFull());
    });
    req.on('error', (err) => {
      if (!failed) body.release();
      failed = true;
      reject(err);
    });
    req.on('end', () => {
      if (failed) return;
      // The caller owns the budget bytes from here (a Comet reply holds them until it is sent).
      resolve(body.take());
    });
  });
}
