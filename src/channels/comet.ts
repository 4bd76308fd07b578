import type { ServerResponse } from 'node:http';
import { BoundedBody, budgetFull, declaresMoreThan, type BufferBudget } from '../http/body.js';
import { PtthError } from '../http/errors.js';
import { clientAddress, requestingClient } from '../http/headers.js';
import { serializeRequest, type ParsedResponse } from '../http/message.js';
import { noop } from '../shared/noop.js';
import { channelId, type Channel, type ChannelEvents, type Exchange, type UpgradeExchange } from './channel.js';

export interface CometChannelOptions {
  /** Milliseconds a poll waits for a request before its 204. */
  readonly pollTimeout: number;
  /** Milliseconds from the delivery of a request to a poller to the POST of its reply (504 past it). */
  readonly replyTimeout: number;
  /** Requests this channel holds at once, waiting for a poller or for their reply (503 past it). */
  readonly queueLimit: number;
  /** Milliseconds a request waits for a poller (503 past it). */
  readonly queueTimeout: number;
  /** Largest request body buffered for a poller, in bytes (413 past it). */
  readonly bufferLimit: number;
  /** Bytes buffered by every Comet channel together (shared): past `max`, requests get 503. */
  readonly budget: BufferBudget;
  /** Milliseconds without a poll (and nothing in flight) after which the channel counts as gone. */
  readonly idleTimeout: number;
}

/** A request handed to a poller, waiting for the app's reply. */
export interface Delivery {
  /** The visitor's request as `message/http`. */
  readonly message: Buffer;
  readonly method: string;
  /** `Requesting-Client`: the visitor's `address:port`. */
  readonly client: string;
  /** True once answered, failed, timed out or abandoned by the visitor. */
  readonly settled: boolean;
  /**
   * `res` (a poll's answer) carries `message` to a poller: the message's bytes stay counted
   * against the buffer budget until every such answer has left the process or its poller is gone.
   */
  sending(res: ServerResponse): void;
  /**
   * Relays the app's parsed reply to the visitor. The reply was read against the buffer budget:
   * its `held` bytes are given back once they have left the process (or at once when the reply is
   * not used). Returns why a reply whose head breaks the rules was refused (the visitor gets 502).
   */
  respond(reply: ParsedResponse, held: number): PtthError | undefined;
  /** Ends the exchange with a gateway error for the visitor. */
  fail(err: PtthError): void;
  /** Called once when the delivery settles, however. */
  onSettle: (() => void) | undefined;
}

/** The most requests one pipelined poll takes (docs/PROTOCOL.md section 5.7). */
export interface PipelineBound {
  /** Requests at most. */
  readonly count: number;
  /** Bytes of their `message/http` serializations at most; a bigger single request still goes alone. */
  readonly bytes: number;
}

/** One long poll (a `GET` on a request URL) waiting for a request. */
export interface Poll {
  /** Set when the poll takes an `application/http` pipeline: every queued request up to this bound. */
  readonly pipeline?: PipelineBound | undefined;
  /** The requests for this poll, in queue order: exactly one unless it asked for a pipeline. */
  deliver(deliveries: readonly Delivery[]): void;
  /** The poll timeout passed with nothing to deliver (204). */
  timeout(): void;
  /** The channel closed under the poll: its registration was released (410). */
  closed(): void;
}

interface Item {
  readonly ex: Exchange;
  /** The visitor's connection: its requests reach pollers one at a time, in order. */
  readonly conn: object;
  state: 'reading' | 'queued' | 'delivered' | 'done';
  message: Buffer | undefined;
  timer: NodeJS.Timeout | undefined;
  delivery: DeliveryImpl | undefined;
  /** Body bytes this item holds against the shared budget. */
  bytes: number;
}

interface Waiter {
  readonly poll: Poll;
  timer: NodeJS.Timeout;
}

class DeliveryImpl implements Delivery {
  onSettle: (() => void) | undefined;
  readonly message: Buffer;
  readonly method: string;
  readonly client: string;
  #item: Item;
  #channel: CometChannel;
  #budget: { used: number };
  /** Poll answers carrying `message` that have not left the process yet. */
  #sending = 0;
  /** Budget bytes of the request, owed back once no poll answer holds them. */
  #owed = 0;
  constructor(channel: CometChannel, item: Item, message: Buffer, budget: { used: number }) {
    this.#channel = channel;
    this.#item = item;
    this.#budget = budget;
    this.message = message;
    this.method = item.ex.req.method ?? 'GET';
    const socket = item.ex.req.socket;
    this.client = requestingClient(clientAddress(socket.remoteAddress), socket.remotePort ?? 0);
  }
  get settled(): boolean {
    return this.#item.state === 'done';
  }
  sending(res: ServerResponse): void {
    this.#sending++;
    res.once('close', () => {
      if (--this.#sending === 0) this.#repay();
    });
  }
  /** The request's budget bytes, handed back when the item ends: repaid once no poll answer holds them. */
  owe(bytes: number): void {
    this.#owed += bytes;
    if (this.#sending === 0) this.#repay();
  }
  #repay(): void {
    this.#budget.used -= this.#owed;
    this.#owed = 0;
  }
  respond(reply: ParsedResponse, held: number): PtthError | undefined {
    const budget = this.#budget;
    if (this.settled) {
      budget.used -= held;
      return undefined;
    }
    const { res, req } = this.#item.ex;
    const refused = this.#item.ex.respond(reply.status, reply.statusMessage, reply.rawHeaders);
    if (refused) {
      budget.used -= held;
      this.#channel.finish(this.#item);
      return refused;
    }
    // The reply is written whole to a visitor who may not read it: its bytes stay counted until
    // they have left the process ('close' comes once the last write was flushed, or the visitor's
    // connection is gone), so replies to stalled visitors cannot grow the gateway past the budget.
    if (res.closed) budget.used -= held;
    else res.once('close', () => (budget.used -= held));
    res.end(req.method === 'HEAD' ? undefined : reply.body);
    this.#channel.finish(this.#item);
    return undefined;
  }
  fail(err: PtthError): void {
    if (this.settled) return;
    this.#item.ex.fail(err);
    this.#channel.finish(this.#item);
  }
}

/**
 * The Comet transport (docs/PROTOCOL.md section 5) as a channel: one per registration, fed by however
 * many pollers the app runs. Requests are buffered whole (a poll answer needs a Content-Length),
 * queued, and handed to the longest-waiting poll, so pollers share the work round robin; the
 * requests of one visitor connection go out one at a time, in order. URLs and HTTP live in
 * gateway/comet.ts; this class knows requests, polls and timers.
 */
export class CometChannel implements Channel {
  readonly id = channelId();
  readonly transport = 'comet' as const;
  readonly remote: string;
  readonly openedAt = Date.now();
  readonly upgradable = false;
  events: ChannelEvents | undefined;
  #options: CometChannelOptions;
  #items = new Set<Item>();
  #queue: Item[] = [];
  #waiters: Waiter[] = [];
  /** Visitor connections with a request at a poller now. */
  #busy = new Set<object>();
  #delivered = 0;
  #served = 0;
  #closed = false;
  #idle: NodeJS.Timeout | undefined;

  constructor(remote: string, options: CometChannelOptions) {
    this.remote = remote;
    this.#options = options;
    this.#armIdle();
  }

  get active(): number {
    return this.#items.size;
  }
  get served(): number {
    return this.#served;
  }
  /** Requests read whole and waiting for a poll now. */
  get queued(): number {
    return this.#queue.length;
  }
  /** Pollers waiting now. */
  get polls(): number {
    return this.#waiters.length;
  }
  get available(): boolean {
    return !this.#closed && this.#items.size < this.#options.queueLimit;
  }
  get closed(): boolean {
    return this.#closed;
  }

  dispatch(ex: Exchange): void {
    const { req, res } = ex;
    const item: Item = {
      ex,
      conn: req.socket,
      state: 'reading',
      message: undefined,
      timer: undefined,
      delivery: undefined,
      bytes: 0,
    };
    this.#items.add(item);
    res.once('close', () => {
      // The visitor left (or its response finished): whatever stage the request was at, it is over.
      if (item.state !== 'done') this.finish(item);
    });
    const limit = this.#options.bufferLimit;
    if (declaresMoreThan(req, limit)) return this.#tooLarge(item);
    const body = new BoundedBody(limit, this.#options.budget);
    // The whole body must be here before a poller can have it: a body that trickles in must not
    // hold a queue place (and its memory) forever.
    item.timer = setTimeout(() => {
      if (item.state !== 'reading') return;
      if (!res.headersSent) res.setHeader('Connection', 'close');
      this.#fail(item, new PtthError('PTTH_ERR_BODY_TIMEOUT'));
      req.resume();
    }, this.#options.queueTimeout);
    req.on('data', (c: Buffer) => {
      if (item.state !== 'reading') return;
      const verdict = body.add(c);
      if (verdict === 'too-large') return this.#tooLarge(item);
      if (verdict === 'over-budget') {
        if (!res.headersSent) res.setHeader('Connection', 'close');
        this.#fail(item, budgetFull());
        req.resume();
        return;
      }
      // The item hands these bytes back to the budget when it ends (see finish).
      item.bytes += c.length;
    });
    const onEnd = (): void => {
      if (item.state !== 'reading') return;
      clearTimeout(item.timer);
      item.message = serializeRequest(req, ex.headers, body.take());
      item.state = 'queued';
      item.timer = setTimeout(() => {
        if (item.state === 'queued')
          this.#fail(item, new PtthError('PTTH_ERR_NO_CHANNEL', 'No poller asked for this request in time.'));
      }, this.#options.queueTimeout);
      this.#queue.push(item);
      this.#pump();
    };
    // A bodyless request an HTTP/2 app refused (Exchange.retry) was read to its end on that
    // channel: 'end' will not come again, and waiting for it would answer 408.
    if (req.readableEnded) onEnd();
    else req.on('end', onEnd);
    req.on('error', () => {
      if (item.state !== 'done') this.finish(item);
    });
  }

  upgrade(ex: UpgradeExchange): void {
    // Never picked (upgradable is false); a visitor's upgrade cannot travel over long polls.
    ex.fail(new PtthError('PTTH_ERR_BAD_RESPONSE', 'The app serves over Comet, which cannot carry upgrades.'));
    ex.done();
  }

  /**
   * A poller asks for the next request. Returns a cancel function (the poller's connection went
   * away before anything was delivered).
   */
  poll(poll: Poll): () => void {
    if (this.#closed) {
      poll.closed();
      return noop;
    }
    this.#disarmIdle();
    const waiter: Waiter = {
      poll,
      timer: setTimeout(() => {
        if (this.#drop(waiter)) poll.timeout();
      }, this.#options.pollTimeout),
    };
    this.#waiters.push(waiter);
    this.#pump();
    return () => {
      this.#drop(waiter);
    };
  }

  #drop(waiter: Waiter): boolean {
    const i = this.#waiters.indexOf(waiter);
    if (i === -1) return false;
    this.#waiters.splice(i, 1);
    clearTimeout(waiter.timer);
    this.#armIdle();
    return true;
  }

  /** Hands queued requests to waiting polls: oldest poll first, each visitor connection in order. */
  #pump(): void {
    while (this.#waiters.length > 0) {
      const items = this.#take((this.#waiters[0] as Waiter).poll.pipeline);
      if (items.length === 0) return;
      const waiter = this.#waiters.shift() as Waiter;
      clearTimeout(waiter.timer);
      waiter.poll.deliver(items.map((item) => this.#deliver(item)));
    }
  }

  /**
   * Takes the requests for one poll out of the queue: the first whose visitor connection has none
   * at a poller, and for a pipelined poll the following ones too, up to its bound (the first one
   * always goes, however large). Two requests of one connection never travel together.
   */
  #take(bound: PipelineBound | undefined): Item[] {
    const taken: Item[] = [];
    const conns = new Set<object>();
    let bytes = 0;
    for (let i = 0; i < this.#queue.length; ) {
      const item = this.#queue[i] as Item;
      const size = (item.message as Buffer).length;
      if (this.#busy.has(item.conn) || conns.has(item.conn)) {
        i++;
        continue;
      }
      if (taken.length > 0 && (!bound || taken.length >= bound.count || bytes + size > bound.bytes)) break;
      this.#queue.splice(i, 1);
      taken.push(item);
      conns.add(item.conn);
      bytes += size;
    }
    return taken;
  }

  #deliver(item: Item): DeliveryImpl {
    if (item.timer) clearTimeout(item.timer);
    item.state = 'delivered';
    this.#busy.add(item.conn);
    this.#delivered++;
    const delivery = new DeliveryImpl(this, item, item.message as Buffer, this.#options.budget);
    item.delivery = delivery;
    item.message = undefined;
    item.timer = setTimeout(
      () => delivery.fail(new PtthError('PTTH_ERR_APP_TIMEOUT', 'The app did not post its reply in time.')),
      this.#options.replyTimeout,
    );
    return delivery;
  }

  #tooLarge(item: Item): void {
    const { req, res } = item.ex;
    // The rest of the body is not worth reading: the connection closes after the 413.
    if (!res.headersSent) res.setHeader('Connection', 'close');
    this.#fail(
      item,
      new PtthError(
        'PTTH_ERR_BODY_TOO_LARGE',
        `The request body is over ${this.#options.bufferLimit} bytes, the most this gateway buffers for a Comet app.`,
      ),
    );
    req.resume();
  }

  #fail(item: Item, err: PtthError): void {
    if (item.state === 'done') return;
    item.ex.fail(err);
    this.finish(item);
  }

  /** Ends an item's life here (called by deliveries too). */
  finish(item: Item): void {
    if (item.state === 'done') return;
    const wasAvailable = this.available;
    const wasDelivered = item.state === 'delivered';
    if (item.state === 'queued') {
      const i = this.#queue.indexOf(item);
      if (i !== -1) this.#queue.splice(i, 1);
    }
    item.state = 'done';
    item.message = undefined;
    // A delivered request's bytes may still sit in a poll answer its poller has not read.
    if (item.delivery) item.delivery.owe(item.bytes);
    else this.#options.budget.used -= item.bytes;
    item.bytes = 0;
    if (item.timer) clearTimeout(item.timer);
    this.#items.delete(item);
    this.#served++;
    if (wasDelivered) {
      this.#busy.delete(item.conn);
      this.#delivered--;
      item.delivery?.onSettle?.();
    }
    item.ex.done();
    if (this.#closed) return;
    this.#armIdle();
    this.#pump();
    if (!wasAvailable && this.available) this.events?.available(this);
  }

  /** No poll waiting and nothing at the app: start counting towards "the app is gone". */
  #armIdle(): void {
    if (this.#closed || this.#waiters.length > 0 || this.#delivered > 0 || this.#idle) return;
    this.#idle = setTimeout(() => {
      this.#idle = undefined;
      this.#shutdown(false);
    }, this.#options.idleTimeout);
    this.#idle.unref();
  }

  #disarmIdle(): void {
    if (this.#idle) clearTimeout(this.#idle);
    this.#idle = undefined;
  }

  /** The registration ends (or the gateway closes): polls get 410, requests fail. */
  close(): void {
    this.#shutdown(true);
  }

  #shutdown(released: boolean): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#disarmIdle();
    for (const w of this.#waiters.splice(0)) {
      clearTimeout(w.timer);
      if (released) w.poll.closed();
      else w.poll.timeout();
    }
    // finish() still does its bookkeeping on a closed channel; it only stops handing out work.
    for (const item of [...this.#items]) {
      this.#fail(
        item,
        item.state === 'delivered'
          ? new PtthError(
              'PTTH_ERR_CHANNEL_LOST',
              released
                ? 'The registration was released before the app replied.'
                : 'The app stopped polling before it replied.',
            )
          : released
            ? new PtthError('PTTH_ERR_NOT_FOUND', 'The registration was released.')
            : new PtthError('PTTH_ERR_NO_CHANNEL', 'The app stopped polling.'),
      );
    }
    this.events?.closed(this);
  }
}
