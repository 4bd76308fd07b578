import { EventEmitter } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { Channel, ChannelEvents, Exchange, Transport, UpgradeExchange } from '../../src/channels/channel.js';
import type { PtthError } from '../../src/http/errors.js';
import type { ResponseHead } from '../../src/http/response.js';
import { MemoryTable } from '../../src/table/table.js';
import type { QueueOptions, Registration } from '../../src/table/registration.js';

/*
 * The queueing in Registration (src/table/registration.ts: #pick, #enqueue, #serveWaiting, #giveUp) against
 * fake channels, through its public API only (dispatch, upgrade, addChannel, a channel's
 * available/closed events, end through the table's release): which channel a request goes to, who
 * waits, in what order, and for how long. Fake timers: no test waits in real time.
 */

let nextId = 1000;

/** A channel that records what it is given; the test says when it is free. */
class FakeChannel implements Channel {
  readonly id = nextId++;
  readonly transport: Transport;
  readonly remote = '127.0.0.1:1';
  readonly openedAt = Date.now();
  readonly upgradable: boolean;
  events: ChannelEvents | undefined;
  served = 0;
  closed = false;
  free: boolean;
  readonly dispatched: Exchange[] = [];
  readonly upgrades: UpgradeExchange[] = [];

  constructor(transport: Transport, options: { free?: boolean; upgradable?: boolean } = {}) {
    this.transport = transport;
    this.free = options.free ?? true;
    this.upgradable = options.upgradable ?? transport === 'http1';
  }
  get active(): number {
    return this.dispatched.length + this.upgrades.length - this.served;
  }
  get available(): boolean {
    return !this.closed && this.free;
  }
  dispatch(ex: Exchange): void {
    this.dispatched.push(ex);
  }
  upgrade(ex: UpgradeExchange): void {
    this.upgrades.push(ex);
  }
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.events?.closed(this);
  }
  /** The channel is free again and says so, as a real channel does after a response. */
  release(): void {
    this.free = true;
    this.events?.available(this);
  }
}

type Recorded<T> = T & { label: string; failed: string[]; doneCount: number };

/** Records what the registration reports through `fail` and `done`. */
type Recorder<T> = Recorded<T> & { fail(err: PtthError): void; done(): void };

function recording<T extends object>(label: string, base: T): Recorder<T> {
  const rec = Object.assign(base, {
    label,
    failed: [] as string[],
    doneCount: 0,
    fail(err: PtthError): void {
      rec.failed.push(err.code);
    },
    done(): void {
      rec.doneCount++;
    },
  });
  return rec;
}

/** A visitor's request as the registration sees it: `res` only needs its 'close' event here. */
function exchange(label: string): Recorded<Exchange> & { visitorLeaves(): void } {
  const res = new EventEmitter();
  const base = {
    req: { url: `/${label}` } as unknown as IncomingMessage,
    res: res as unknown as ServerResponse,
    headers: [] as string[],
    respond: (): PtthError | undefined => undefined,
    visitorLeaves: (): void => {
      res.emit('close');
    },
  };
  return recording(label, base) as unknown as Recorded<Exchange> & { visitorLeaves(): void };
}

function upgradeExchange(label: string): Recorded<UpgradeExchange> {
  const base = {
    req: { url: `/${label}` } as unknown as IncomingMessage,
    socket: new EventEmitter() as unknown as Duplex,
    head: Buffer.alloc(0),
    headers: [] as string[],
    check: (): ResponseHead | PtthError => {
      throw new Error('not used');
    },
  };
  return recording(label, base) as unknown as Recorded<UpgradeExchange>;
}

const OPTIONS: QueueOptions & { defaultLease: number } = {
  queueLimit: 3,
  queueTimeout: 1_000,
  reconnectWait: 300,
  defaultLease: 60,
};

/**
 * A registration named `app` with these queue options, made as the gateway makes one: through its
 * table's claim. The one place that knows how a Registration comes to be, so a change to claims
 * changes only this function.
 */
async function registration(options: Partial<QueueOptions> = {}): Promise<{ table: MemoryTable; reg: Registration }> {
  const table = new MemoryTable({ ...OPTIONS, ...options });
  const { registration: reg } = await table.claim({ name: 'app', token: 't' });
  return { table, reg };
}

const labels = (list: readonly Exchange[]): string[] => list.map((e) => (e as unknown as { label: string }).label);

describe('a registration spreading and queueing requests over its channels', () => {
  let table: MemoryTable | undefined;
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    table?.close();
    table = undefined;
    vi.useRealTimers();
  });

  it('sends to free channels round robin, and prefers an HTTP/2 channel over an HTTP/1.1 one', async () => {
    const r = await registration();
    table = r.table;
    const a = new FakeChannel('http1');
    const b = new FakeChannel('http1');
    r.reg.addChannel(a);
    r.reg.addChannel(b);
    for (const l of ['1', '2', '3', '4']) r.reg.dispatch(exchange(l));
    expect(labels(a.dispatched)).toEqual(['1', '3']);
    expect(labels(b.dispatched)).toEqual(['2', '4']);

    const h2 = new FakeChannel('http2');
    r.reg.addChannel(h2);
    for (const l of ['5', '6', '7']) r.reg.dispatch(exchange(l));
    expect(labels(h2.dispatched)).toEqual(['5', '6', '7']);
    // The HTTP/2 channel busy: the HTTP/1.1 ones take the next.
    h2.free = false;
    r.reg.dispatch(exchange('8'));
    expect(labels([...a.dispatched, ...b.dispatched])).toContain('8');
  });

  it('queues while every channel is busy and serves the queue first in, first out', async () => {
    const r = await registration();
    table = r.table;
    const ch = new FakeChannel('http1', { free: false });
    r.reg.addChannel(ch);
    for (const l of ['a', 'b', 'c']) r.reg.dispatch(exchange(l));
    expect(r.reg.waiting).toBe(3);
    expect(ch.dispatched).toEqual([]);
    // One at a time: after each dispatch the channel is busy again.
    const origDispatch = ch.dispatch.bind(ch);
    ch.dispatch = (ex) => {
      origDispatch(ex);
      ch.free = false;
    };
    ch.release();
    expect(labels(ch.dispatched)).toEqual(['a']);
    ch.release();
    ch.release();
    expect(labels(ch.dispatched)).toEqual(['a', 'b', 'c']);
    expect(r.reg.waiting).toBe(0);
  });

  it('refuses past queueLimit with 503 PTTH_ERR_QUEUE_FULL, at once', async () => {
    const r = await registration({ queueLimit: 2 });
    table = r.table;
    r.reg.addChannel(new FakeChannel('http1', { free: false }));
    const exs = ['1', '2', '3'].map(exchange);
    for (const ex of exs) r.reg.dispatch(ex);
    expect(r.reg.waiting).toBe(2);
    expect(exs.map((e) => e.failed)).toEqual([[], [], ['PTTH_ERR_QUEUE_FULL']]);
    expect(exs[2]?.doneCount).toBe(1);
  });

  it('gives up on a queued request after queueTimeout (503 PTTH_ERR_NO_CHANNEL), out of the queue', async () => {
    const r = await registration({ queueTimeout: 1_000, reconnectWait: 50 });
    table = r.table;
    const ch = new FakeChannel('http1', { free: false });
    r.reg.addChannel(ch);
    const ex = exchange('late');
    r.reg.dispatch(ex);
    // Not the reconnect wait: the name has a channel, it is only busy.
    vi.advanceTimersByTime(999);
    expect(ex.failed).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(ex.failed).toEqual(['PTTH_ERR_NO_CHANNEL']);
    expect(ex.doneCount).toBe(1);
    expect(r.reg.waiting).toBe(0);
    ch.release();
    expect(ch.dispatched).toEqual([]);
  });

  it('waits reconnectWait, not queueTimeout, with no channel at all; a channel that comes takes it', async () => {
    const r = await registration({ queueTimeout: 5_000, reconnectWait: 300 });
    table = r.table;
    const lost = exchange('lost');
    r.reg.dispatch(lost);
    vi.advanceTimersByTime(300);
    expect(lost.failed).toEqual(['PTTH_ERR_NO_CHANNEL']);

    const kept = exchange('kept');
    r.reg.dispatch(kept);
    vi.advanceTimersByTime(200);
    const ch = new FakeChannel('http1');
    r.reg.addChannel(ch);
    expect(labels(ch.dispatched)).toEqual(['kept']);
    vi.advanceTimersByTime(1_000);
    expect(kept.failed).toEqual([]);
  });

  it('drops a visitor that left while queued, without an error answer, and serves the next', async () => {
    const r = await registration();
    table = r.table;
    const ch = new FakeChannel('http1', { free: false });
    r.reg.addChannel(ch);
    const gone = exchange('gone');
    const next = exchange('next');
    r.reg.dispatch(gone);
    r.reg.dispatch(next);
    gone.visitorLeaves();
    expect(gone.failed).toEqual([]);
    expect(gone.doneCount).toBe(1);
    expect(r.reg.waiting).toBe(1);
    ch.release();
    expect(labels(ch.dispatched)).toEqual(['next']);
  });

  it('an upgrade no free channel can carry does not hold up the requests queued after it', async () => {
    const r = await registration();
    table = r.table;
    const h1 = new FakeChannel('http1', { free: false });
    const ws = new FakeChannel('websocket', { free: false, upgradable: false });
    r.reg.addChannel(h1);
    r.reg.addChannel(ws);
    const up = upgradeExchange('up');
    r.reg.upgrade(up);
    r.reg.dispatch(exchange('after'));
    expect(r.reg.waiting).toBe(2);
    // The WebSocket channel cannot carry the upgrade: it takes the request behind it.
    ws.release();
    expect(labels(ws.dispatched)).toEqual(['after']);
    expect(ws.upgrades).toEqual([]);
    expect(r.reg.waiting).toBe(1);
    h1.release();
    expect(h1.upgrades).toEqual([up]);
    expect(up.failed).toEqual([]);
  });

  it('an upgrade fails at once (502 PTTH_ERR_UPGRADE_UNSUPPORTED) when no channel can carry one', async () => {
    const r = await registration();
    table = r.table;
    r.reg.addChannel(new FakeChannel('websocket', { upgradable: false }));
    const up = upgradeExchange('up');
    r.reg.upgrade(up);
    expect(up.failed).toEqual(['PTTH_ERR_UPGRADE_UNSUPPORTED']);
    expect(up.doneCount).toBe(1);
    expect(r.reg.waiting).toBe(0);
  });

  it('a retry avoids the channel that refused it; the idle refuser serves requests queued behind it', async () => {
    const r = await registration();
    table = r.table;
    const h2 = new FakeChannel('http2');
    const h1 = new FakeChannel('http1', { free: false });
    r.reg.addChannel(h2);
    r.reg.addChannel(h1);
    const refused = exchange('refused');
    r.reg.dispatch(refused);
    expect(h2.dispatched).toEqual([refused]);
    // The app refused it unprocessed (REFUSED_STREAM): the channel hands it back.
    refused.retry?.(h2);
    expect(refused.retry).toBeUndefined();
    expect(r.reg.waiting).toBe(1);
    expect(h2.dispatched).toEqual([refused]);
    // A new request must not wait behind the one that may not use the idle HTTP/2 channel.
    r.reg.dispatch(exchange('fresh'));
    expect(labels(h2.dispatched)).toEqual(['refused', 'fresh']);
    expect(r.reg.waiting).toBe(1);
    h1.release();
    expect(labels(h1.dispatched)).toEqual(['refused']);
    expect(refused.failed).toEqual([]);
  });

  it('a retry after the registration was released fails with 503 PTTH_ERR_NO_CHANNEL, once', async () => {
    const r = await registration();
    table = r.table;
    const h2 = new FakeChannel('http2');
    r.reg.addChannel(h2);
    const ex = exchange('orphan');
    r.reg.dispatch(ex);
    const retry = ex.retry;
    r.table.release(r.reg, 'test');
    expect(h2.closed).toBe(true);
    retry?.(h2);
    expect(ex.failed).toEqual(['PTTH_ERR_NO_CHANNEL']);
    expect(ex.doneCount).toBe(1);
    expect(ex.retry).toBeUndefined();
  });

  it('a release fails queued requests (404 PTTH_ERR_NOT_FOUND); a channel added after it is closed', async () => {
    const r = await registration();
    table = r.table;
    r.reg.addChannel(new FakeChannel('http1', { free: false }));
    const queued = [exchange('1'), exchange('2')];
    const up = upgradeExchange('u');
    for (const q of queued) r.reg.dispatch(q);
    r.reg.upgrade(up);
    r.table.release(r.reg, 'test');
    expect(queued.map((q) => q.failed)).toEqual([['PTTH_ERR_NOT_FOUND'], ['PTTH_ERR_NOT_FOUND']]);
    expect(up.failed).toEqual(['PTTH_ERR_NOT_FOUND']);
    expect(r.reg.waiting).toBe(0);
    // Timers of given-up entries are cleared: nothing fails twice later.
    vi.advanceTimersByTime(10_000);
    expect(queued.map((q) => q.failed.length)).toEqual([1, 1]);
    const late = new FakeChannel('http1');
    r.reg.addChannel(late);
    expect(late.closed).toBe(true);
    expect(r.reg.channels).toEqual([]);
  });

  it('with its last channel gone the queue waits reconnectWait and the lease runs out', async () => {
    const r = await registration({ reconnectWait: 100 });
    table = r.table;
    const ch = new FakeChannel('http1');
    r.reg.addChannel(ch);
    expect(r.reg.expiresAt).toBeUndefined();
    ch.close();
    expect(r.reg.channels).toEqual([]);
    expect(r.reg.expiresAt).toBeGreaterThan(0);
    const ex = exchange('x');
    r.reg.dispatch(ex);
    vi.advanceTimersByTime(100);
    expect(ex.failed).toEqual(['PTTH_ERR_NO_CHANNEL']);
    vi.advanceTimersByTime(60_000);
    expect(r.reg.released).toBe(true);
    expect(r.table.lookup('app')).toBeUndefined();
  });

  it('round robin skips busy channels and keeps its place', async () => {
    const r = await registration();
    table = r.table;
    const [a, b, c] = [new FakeChannel('http1'), new FakeChannel('http1', { free: false }), new FakeChannel('http1')];
    for (const ch of [a, b, c]) r.reg.addChannel(ch);
    for (const l of ['1', '2', '3']) r.reg.dispatch(exchange(l));
    expect(labels(a.dispatched)).toEqual(['1', '3']);
    expect(b.dispatched).toEqual([]);
    expect(labels(c.dispatched)).toEqual(['2']);
    b.free = true;
    r.reg.dispatch(exchange('4'));
    expect(labels(b.dispatched)).toEqual(['4']);
  });

  it('a request that arrives while others wait queues behind them, even with a channel free', async () => {
    const r = await registration();
    table = r.table;
    const ch = new FakeChannel('http1', { free: false });
    r.reg.addChannel(ch);
    r.reg.dispatch(exchange('first'));
    // The channel is free again but has not said so yet: the newcomer must not jump the queue.
    ch.free = true;
    r.reg.dispatch(exchange('second'));
    expect(labels(ch.dispatched)).toEqual(['first', 'second']);
    expect(r.reg.waiting).toBe(0);
  });

  it('counts queued upgrades against queueLimit as well', async () => {
    const r = await registration({ queueLimit: 2 });
    table = r.table;
    r.reg.addChannel(new FakeChannel('http1', { free: false }));
    const up = upgradeExchange('up');
    const first = exchange('1');
    const second = exchange('2');
    r.reg.upgrade(up);
    r.reg.dispatch(first);
    r.reg.dispatch(second);
    expect(r.reg.waiting).toBe(2);
    expect([up.failed, first.failed, second.failed]).toEqual([[], [], ['PTTH_ERR_QUEUE_FULL']]);
    const late = upgradeExchange('late');
    r.reg.upgrade(late);
    expect(late.failed).toEqual(['PTTH_ERR_QUEUE_FULL']);
    expect(late.doneCount).toBe(1);
  });

  it('a failed channel leaves the rotation; requests queued meanwhile wait for the next one, in order', async () => {
    const r = await registration({ queueTimeout: 1_000, reconnectWait: 100 });
    table = r.table;
    const broken = new FakeChannel('http1');
    const busy = new FakeChannel('http1', { free: false });
    r.reg.addChannel(broken);
    r.reg.addChannel(busy);
    broken.close();
    expect(r.reg.channels).toEqual([busy]);
    const queued = ['a', 'b'].map(exchange);
    for (const ex of queued) r.reg.dispatch(ex);
    expect(broken.dispatched).toEqual([]);
    expect(r.reg.waiting).toBe(2);
    // The last channel fails too: the queued requests keep their deadline (queueTimeout, set when
    // they were queued), not the shorter reconnect wait, and the next channel takes them in order.
    busy.close();
    expect(r.reg.channels).toEqual([]);
    vi.advanceTimersByTime(500);
    expect(queued.map((q) => q.failed)).toEqual([[], []]);
    const next = new FakeChannel('http1');
    r.reg.addChannel(next);
    expect(labels(next.dispatched)).toEqual(['a', 'b']);
    expect(r.reg.waiting).toBe(0);
    vi.advanceTimersByTime(1_000);
    expect(queued.map((q) => q.failed)).toEqual([[], []]);
  });

  it('end() closes its channels and fails what waits with 404 PTTH_ERR_NOT_FOUND', async () => {
    const r = await registration();
    table = r.table;
    const ch = new FakeChannel('http1', { free: false });
    r.reg.addChannel(ch);
    const waiting = exchange('w');
    r.reg.dispatch(waiting);
    r.reg.end();
    expect(ch.closed).toBe(true);
    expect(r.reg.channels).toEqual([]);
    expect(waiting.failed).toEqual(['PTTH_ERR_NOT_FOUND']);
    expect(waiting.doneCount).toBe(1);
    expect(r.reg.released).toBe(true);
    expect(r.reg.expiresAt).toBeUndefined();
  });
});
