import cluster, { type Worker } from 'node:cluster';
import { EventEmitter } from 'node:events';

/**
 * `serve --workers N`: N gateway processes on one machine, all serving the one public port through
 * node:cluster (the primary accepts connections and hands them round-robin to the workers), each a
 * node of the Redis cluster with its own node id and its own hop listener. The primary serves
 * nothing itself: it forks the workers, restarts one that dies, and passes signals on.
 *
 * A worker that keeps dying soon after its start (Redis refusing it, a port it cannot bind, a bug)
 * is restarted with a doubling back-off, and after `maxFastDeaths` such deaths in a row the pool
 * gives up and stops the others: a crash loop burns the machine and hides the reason in the noise.
 */

/** The environment variable that tells a worker which slot it fills: `index/count/restarts`. */
const SLOT_ENV = 'PTTH_WORKER_SLOT';
const READY = 'ptth:worker-ready';
const STOP = 'ptth:worker-stop';

export interface WorkerPoolOptions {
  /** Workers to keep running. */
  readonly workers: number;
  /** First restart delay (ms); doubled for each fast death in a row. */
  readonly backoffMs?: number;
  /** Longest restart delay (ms). */
  readonly maxBackoffMs?: number;
  /** A worker that dies within this long (ms) of its start died fast. */
  readonly fastDeathMs?: number;
  /** Fast deaths in a row of one slot after which the pool gives up. */
  readonly maxFastDeaths?: number;
  /** On stop, how long (ms) workers get to exit after the signal before they are killed. */
  readonly killAfterMs?: number;
}

/** What a worker tells the primary once it serves. */
export interface WorkerInfo {
  readonly nodeId: string;
  /** The URL other nodes reach this worker's node at (its hop listener). */
  readonly nodeUrl: string;
  /** The public port it serves. */
  readonly port: number;
}

/** A worker's slot: 1-based index, how many there are, how often this slot was restarted. */
export interface WorkerSlot {
  readonly index: number;
  readonly count: number;
  readonly restarts: number;
}

export interface WorkerPoolEvents {
  /** A worker serves. */
  ready: [slot: WorkerSlot, pid: number, info: WorkerInfo];
  /** A worker exited without being asked to; `restartInMs` is when the pool starts it again. */
  died: [slot: WorkerSlot, pid: number, how: string, restartInMs: number];
  /** The slot's worker died fast too often: the pool stops the others and starts none. */
  'gave-up': [slot: WorkerSlot, deaths: number, how: string];
  /** A worker still running `killAfterMs` after stop() was killed. */
  killed: [slot: WorkerSlot, pid: number];
  /** Every worker has exited after stop() (or a give-up). */
  stopped: [];
}

interface Slot {
  readonly index: number;
  restarts: number;
  fastDeaths: number;
  worker: Worker | undefined;
  /** The worker said it serves (and so listens for stop requests). */
  ready: boolean;
  startedAt: number;
  timer: NodeJS.Timeout | undefined;
}

/** The primary's side: forks, restarts and stops the workers. */
export class WorkerPool extends EventEmitter<WorkerPoolEvents> {
  readonly #options: Required<WorkerPoolOptions>;
  readonly #slots: Slot[];
  #stopping = false;
  #stopped: Promise<void> | undefined;

  constructor(options: WorkerPoolOptions) {
    super();
    if (!cluster.isPrimary) throw new Error('WorkerPool runs in the primary process only');
    if (!Number.isInteger(options.workers) || options.workers < 1) {
      throw new RangeError(`workers must be a whole number >= 1, got ${String(options.workers)}`);
    }
    this.#options = {
      backoffMs: 100,
      maxBackoffMs: 10_000,
      fastDeathMs: 10_000,
      maxFastDeaths: 5,
      killAfterMs: 15_000,
      ...options,
    };
    this.#slots = Array.from({ length: options.workers }, (_, i) => ({
      index: i + 1,
      restarts: 0,
      fastDeaths: 0,
      worker: undefined,
      ready: false,
      startedAt: 0,
      timer: undefined,
    }));
  }

  /** Forks every worker. */
  start(): void {
    for (const slot of this.#slots) this.#fork(slot);
  }

  /** Workers alive now. */
  get running(): number {
    return this.#slots.filter((s) => s.worker !== undefined).length;
  }

  /**
   * Passes `signal` (SIGHUP: reload) to every worker that is ready, without stopping the pool: one
   * still starting has no handler yet, and would die of it (it reads its files as it starts anyway).
   */
  signal(signal: NodeJS.Signals): void {
    for (const slot of this.#slots) if (slot.ready) slot.worker?.process.kill(signal);
  }

  /**
   * Stops restarting, asks every worker to close (`why` names the cause in their logs) and
   * resolves once all have exited; workers still running `killAfterMs` later are killed. Called
   * again (a second Ctrl-C) it asks them to exit now.
   *
   * The request goes over the IPC channel, not as a signal: Ctrl-C in a terminal signals the
   * whole process group, so a worker gets the user's SIGINT itself, and a forwarded signal on top
   * would count as the user's second one (exit now). A worker takes the request as the same
   * stop, and only a second signal or a second request as "now".
   */
  stop(why = 'SIGTERM'): Promise<void> {
    const now = this.#stopping;
    this.#stopping = true;
    for (const slot of this.#slots) {
      clearTimeout(slot.timer);
      slot.timer = undefined;
      const w = slot.worker;
      // A worker still starting may not listen for the request yet, and one whose IPC channel is
      // gone cannot hear it: SIGTERM (before serving, nothing is in flight to wait for).
      if (w && slot.ready && w.isConnected()) w.send({ type: STOP, why, now });
      else w?.process.kill(now ? 'SIGKILL' : 'SIGTERM');
    }
    this.#stopped ??= this.#allExited();
    return this.#stopped;
  }

  async #allExited(): Promise<void> {
    const killer = setTimeout(() => {
      for (const slot of this.#slots) {
        const w = slot.worker;
        if (!w) continue;
        w.process.kill('SIGKILL');
        this.emit('killed', this.#slotOf(slot), w.process.pid ?? 0);
      }
    }, this.#options.killAfterMs);
    await Promise.all(
      this.#slots.map((s) => (s.worker ? new Promise<void>((r) => s.worker?.once('exit', () => r())) : undefined)),
    );
    clearTimeout(killer);
    this.emit('stopped');
  }

  #slotOf(slot: Slot): WorkerSlot {
    return { index: slot.index, count: this.#slots.length, restarts: slot.restarts };
  }

  #fork(slot: Slot): void {
    slot.timer = undefined;
    slot.startedAt = Date.now();
    const worker = cluster.fork({ [SLOT_ENV]: `${slot.index}/${this.#slots.length}/${slot.restarts}` });
    slot.worker = worker;
    slot.ready = false;
    worker.on('message', (m: unknown) => {
      const info = readyInfo(m);
      if (!info) return;
      slot.ready = true;
      this.emit('ready', this.#slotOf(slot), worker.process.pid ?? 0, info);
    });
    // A fork that fails is followed by 'exit' too; the error itself says nothing the exit does not.
    worker.on('error', () => {});
    worker.once('exit', (code, signal) => {
      slot.worker = undefined;
      slot.ready = false;
      if (this.#stopping) return;
      this.#died(slot, worker.process.pid ?? 0, signal ? `killed by ${signal}` : `exit code ${String(code)}`);
    });
  }

  #died(slot: Slot, pid: number, how: string): void {
    const o = this.#options;
    const fast = Date.now() - slot.startedAt < o.fastDeathMs;
    slot.fastDeaths = fast ? slot.fastDeaths + 1 : 0;
    if (slot.fastDeaths >= o.maxFastDeaths) {
      this.emit('gave-up', this.#slotOf(slot), slot.fastDeaths, how);
      void this.stop('SIGTERM');
      return;
    }
    const delay = fast ? Math.min(o.maxBackoffMs, o.backoffMs * 2 ** (slot.fastDeaths - 1)) : o.backoffMs;
    this.emit('died', this.#slotOf(slot), pid, how, delay);
    slot.restarts++;
    slot.timer = setTimeout(() => this.#fork(slot), delay);
  }
}

function readyInfo(m: unknown): WorkerInfo | undefined {
  if (typeof m !== 'object' || m === null) return undefined;
  const r = m as Record<string, unknown>;
  if (r['type'] !== READY) return undefined;
  const { nodeId, nodeUrl, port } = r;
  if (typeof nodeId !== 'string' || typeof nodeUrl !== 'string' || typeof port !== 'number') return undefined;
  return { nodeId, nodeUrl, port };
}

/** In a worker of the pool: its slot; undefined in any other process. */
export function workerSlot(): WorkerSlot | undefined {
  if (!cluster.isWorker) return undefined;
  const m = /^(\d+)\/(\d+)\/(\d+)$/.exec(process.env[SLOT_ENV] ?? '');
  if (!m) return undefined;
  return { index: Number(m[1]), count: Number(m[2]), restarts: Number(m[3]) };
}

/**
 * In a worker: calls `stop(why, now)` when the primary asks it to close (`now`: a second request,
 * exit at once). Without a primary (it died) node:cluster ends the worker itself.
 */
export function onStopRequest(stop: (why: string, now: boolean) => void): void {
  process.on('message', (m: unknown) => {
    if (typeof m !== 'object' || m === null) return;
    const r = m as Record<string, unknown>;
    if (r['type'] === STOP) stop(typeof r['why'] === 'string' ? r['why'] : 'stop', r['now'] === true);
  });
}

/** In a worker: tells the primary that it serves. */
export function reportReady(info: WorkerInfo): void {
  process.send?.({ type: READY, ...info });
}
