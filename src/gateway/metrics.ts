import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type Metric } from 'prom-client';
import type { Transport } from '../channels/channel.js';
import type { RouteTable } from '../table/table.js';
import type { GatewayEventSource } from './eventmap.js';

const TRANSPORTS: readonly Transport[] = ['http1', 'http2', 'websocket', 'comet'];

/**
 * Latency from a visitor's request reaching the gateway to the end of the response, in seconds:
 * from a cached answer on the same machine to a long download or an app near its response timeout.
 */
export const DURATION_BUCKETS: readonly number[] = [
  0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
];

/**
 * Process metrics (CPU, memory, event loop lag, GC, handles) describe the process, not a gateway,
 * and prom-client's collectDefaultMetrics starts an event-loop-delay monitor and a GC observer that
 * it never stops. So they are made once per process, in a registry of their own, and the same
 * metric objects are registered into every gateway's registry (as Registry.merge does): a process
 * that makes many gateways (a test suite) does not pile up monitors.
 */
let processMetrics: Metric[] | undefined;
function sharedProcessMetrics(): Metric[] {
  if (!processMetrics) {
    const r = new Registry();
    collectDefaultMetrics({ register: r });
    processMetrics = [];
    for (const { name } of r.getMetricsAsArray()) {
      const m = r.getSingleMetric(name);
      if (m) processMetrics.push(m);
    }
  }
  return processMetrics;
}

/**
 * A gateway's Prometheus metrics, in a registry of its own (never prom-client's global one, so two
 * gateways in one process do not collide). Counters are fed from the gateway's events; gauges are
 * read from the table when scraped, so the hot path tracks nothing for them.
 *
 * On a node of a cluster every series carries a `node` label with the node's id (the registry's
 * default labels, process metrics included): the nodes behind one load balancer are scraped
 * apart, and their series must not collide when one Prometheus or a federation gathers them.
 * A gateway on its own has no such label, so its output is what it always was.
 */
export class GatewayMetrics {
  readonly registry = new Registry();

  constructor(source: GatewayEventSource & { readonly table: RouteTable; readonly nodeId?: string | undefined }) {
    const registers = [this.registry];
    if (source.nodeId !== undefined) this.registry.setDefaultLabels({ node: source.nodeId });
    // Registration order is the order of the scrape's text: the table's gauges, the per-request
    // figures, the claims' and channels' counters, then the process's.
    tableGauges(source.table, registers);
    requestFigures(source, registers);
    claimCounters(source, registers);
    relayCounters(source, registers);
    for (const m of sharedProcessMetrics()) this.registry.registerMetric(m);
  }

  /**
   * Adds `ptth_log_lines_dropped_total`: log lines the process's logger dropped because its output
   * fell behind (createLogger's `drops`). The logger belongs to whoever made the gateway (the CLI),
   * not to the gateway, so the counter exists once one is connected; `read` returns the running
   * total and is called on each scrape, so dropping a line costs no metric update.
   */
  countLogDrops(read: () => number): void {
    let seen = 0;
    new Counter({
      name: 'ptth_log_lines_dropped_total',
      help: 'Log lines dropped because the log output (stdout) fell behind and the log buffer was full.',
      registers: [this.registry],
      collect() {
        const now = read();
        if (now > seen) {
          this.inc(now - seen);
          seen = now;
        }
      },
    });
  }

  /** The Content-Type of `text()` (Prometheus text format 0.0.4). */
  get contentType(): string {
    return this.registry.contentType;
  }

  /** The exposition text for a scrape. */
  text(): Promise<string> {
    return this.registry.metrics();
  }
}

/** Read from the table at each scrape: the hot path tracks nothing for these. */
function tableGauges(table: RouteTable, registers: Registry[]): void {
  new Gauge({
    name: 'ptth_registrations',
    help: 'Names registered now (with or without a live channel).',
    registers,
    collect() {
      this.set(table.list().length);
    },
  });
  new Gauge({
    name: 'ptth_channels',
    help: 'Live channels to apps, by transport.',
    labelNames: ['transport'],
    registers,
    collect() {
      const counts: Record<string, number> = { http1: 0, http2: 0, websocket: 0, comet: 0 };
      for (const r of table.list()) for (const c of r.channels) counts[c.transport] = (counts[c.transport] ?? 0) + 1;
      for (const [transport, n] of Object.entries(counts)) this.set({ transport }, n);
    },
  });
  new Gauge({
    name: 'ptth_queue_depth',
    help: 'Visitor requests waiting for a channel now, over all names.',
    registers,
    collect() {
      let n = 0;
      for (const r of table.list()) n += r.waiting;
      this.set(n);
    },
  });
}

function requestFigures(source: GatewayEventSource, registers: Registry[]): void {
  /*
   * Per-request figures are counted in plain fields as requests end, and each counter is set to
   * their totals in its collect() (reset, then one inc): a request costs a few increments, not a
   * label lookup and hash per counter. The duration histogram is observed as requests end.
   */
  const perRequest = {
    classes: [0, 0, 0, 0, 0, 0],
    bytesIn: 0,
    bytesOut: 0,
    errors: new Map<string, number>(),
  };
  const CLASSES = ['0xx', '1xx', '2xx', '3xx', '4xx', '5xx'];
  new Counter({
    name: 'ptth_requests_total',
    help: 'Visitor requests answered, by status class (0xx: the visitor left before any response head).',
    labelNames: ['status_class'],
    registers,
    collect() {
      this.reset();
      // Every class is shown from the first scrape (at 0), so rates work from the start.
      for (let i = 0; i < CLASSES.length; i++)
        this.inc({ status_class: CLASSES[i] as string }, perRequest.classes[i] as number);
    },
  });
  const duration = new Histogram({
    name: 'ptth_request_duration_seconds',
    help: 'Time from a visitor request reaching the gateway to the end of its response.',
    buckets: [...DURATION_BUCKETS],
    registers,
  });
  new Counter({
    name: 'ptth_request_bytes_total',
    help: 'Request body bytes received from visitors.',
    registers,
    collect() {
      this.reset();
      this.inc(perRequest.bytesIn);
    },
  });
  new Counter({
    name: 'ptth_response_bytes_total',
    help: 'Response body bytes sent to visitors.',
    registers,
    collect() {
      this.reset();
      this.inc(perRequest.bytesOut);
    },
  });
  new Counter({
    name: 'ptth_request_errors_total',
    help: 'Visitor requests the gateway itself answered with an error (or cut), by PTTH_ERR_* code.',
    labelNames: ['code'],
    registers,
    collect() {
      this.reset();
      for (const [code, n] of perRequest.errors) this.inc({ code }, n);
    },
  });

  source.on('request', (r) => {
    const c = perRequest.classes;
    const i = Math.floor(r.status / 100);
    if (i >= 1 && i <= 5) c[i] = (c[i] as number) + 1;
    else c[0] = (c[0] as number) + 1;
    duration.observe(r.ms / 1000);
    perRequest.bytesIn += r.bytesIn;
    perRequest.bytesOut += r.bytesOut;
    if (r.error !== undefined) perRequest.errors.set(r.error, (perRequest.errors.get(r.error) ?? 0) + 1);
  });
}

/** Claims, registrations and channels, counted from the gateway's events. */
function claimCounters(source: GatewayEventSource, registers: Registry[]): void {
  const claims = new Counter({
    name: 'ptth_claims_total',
    help: 'Accepted claims (each opens a channel), by transport.',
    labelNames: ['transport'],
    registers,
  });
  const refused = new Counter({
    name: 'ptth_claims_refused_total',
    help: 'Refused claims, by PTTH_ERR_* code.',
    labelNames: ['code'],
    registers,
  });
  const registered = new Counter({
    name: 'ptth_registered_total',
    help: 'Names registered since start.',
    registers,
  });
  const released = new Counter({
    name: 'ptth_released_total',
    help: 'Registrations released, by reason.',
    labelNames: ['reason'],
    registers,
  });
  const opened = new Counter({
    name: 'ptth_channels_opened_total',
    help: 'Channels opened since start, by transport.',
    labelNames: ['transport'],
    registers,
  });
  const closed = new Counter({
    name: 'ptth_channels_closed_total',
    help: 'Channels closed since start, by transport.',
    labelNames: ['transport'],
    registers,
  });
  const cookiesDropped = new Counter({
    name: 'ptth_cookies_dropped_total',
    help: "Apps' Set-Cookie fields dropped for naming the gateway's domain or a parent of it.",
    registers,
  });
  // Known label values start at 0, so rates work from the first scrape.
  for (const transport of TRANSPORTS) {
    claims.inc({ transport }, 0);
    opened.inc({ transport }, 0);
    closed.inc({ transport }, 0);
  }

  source.on('claim', (c) => claims.inc({ transport: c.transport }));
  source.on('refuse', (r) => refused.inc({ code: r.code }));
  source.on('cookie-dropped', (c) => cookiesDropped.inc(c.count));
  source.on('register', () => registered.inc());
  source.on('release', (_r, reason) => released.inc({ reason }));
  source.on('channel-open', (_r, c) => opened.inc({ transport: c.transport }));
  source.on('channel-close', (_r, c) => closed.inc({ transport: c.transport }));
}

/** The RelayHttp endpoint: relays by outcome, and the bytes they carried. */
function relayCounters(source: GatewayEventSource, registers: Registry[]): void {
  const relays = new Counter({
    name: 'ptth_relay_requests_total',
    help: "Requests to the relay endpoint, by status (the target's, or the gateway's refusal) and PTTH_ERR_* code ('' when the target answered).",
    labelNames: ['status', 'code'],
    registers,
  });
  const bytes = new Counter({
    name: 'ptth_relay_bytes_total',
    help: 'Bytes through the relay endpoint: the relayed requests (in) and the responses sent back (out).',
    labelNames: ['direction'],
    registers,
  });
  bytes.inc({ direction: 'in' }, 0);
  bytes.inc({ direction: 'out' }, 0);
  source.on('relay', (r) => {
    relays.inc({ status: String(r.status), code: r.error ?? '' });
    bytes.inc({ direction: 'in' }, r.bytesIn);
    bytes.inc({ direction: 'out' }, r.bytesOut);
  });
}
