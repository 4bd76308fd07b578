import pino from 'pino';
import { isColorSupported, prettyFactory } from 'pino-pretty';
import type { AddressInfo } from 'node:net';
import { hostname } from 'node:os';
import type { Channel } from './channels/channel.js';
import type { RequestEvent } from './gateway/eventmap.js';
import type { Gateway, GatewayEvents } from './gateway/server.js';
import type { Registration } from './table/registration.js';
import type { CometEvent } from './gateway/eventmap.js';
import { clientAddress } from './http/headers.js';

export type Logger = pino.Logger;
export type LogLevel = pino.LevelWithSilent;

export interface LoggerOptions {
  /** Lowest level written: fatal, error, warn, info, debug, trace or silent (default info). */
  level?: LogLevel;
  /**
   * Human-readable lines (pino-pretty) instead of JSON. Default: whether stdout is a terminal
   * (false when `destination` is given).
   */
  pretty?: boolean;
  /** Where lines go (default stdout). Anything with `write(line: string)`, e.g. a stream a test reads. */
  destination?: pino.DestinationStream;
  /**
   * Most bytes of lines held for stdout while its reader is behind (default LOG_BUFFER_DEFAULT, 16 MiB).
   * Lines that do not fit are dropped, counted in `drops`, and reported in one warn line (event
   * `log-drop`) once the buffer has drained. Not used with `destination`.
   */
  bufferLimit?: number;
  /** Where the count of dropped lines goes (e.g. for a metric); `lines` only ever grows. */
  drops?: LogDrops;
  /**
   * A cluster node's id (`gateway.nodeId`): a `node` field in every line of this logger, the
   * program's own lines and the `log-drop` line included (attachLogger adds it to the gateway's
   * lines by itself).
   */
  node?: string | undefined;
}

/** Lines a logger dropped because stdout's reader fell behind, since the logger was made. */
export interface LogDrops {
  lines: number;
}

export const LOG_BUFFER_DEFAULT = 16 * 1024 * 1024;

/**
 * Bytes of lines gathered before they are written to stdout (sonic-boom's minLength): one write
 * (a trip through libuv's thread pool and a system call) per batch instead of one per line, which
 * is most of what an access-log line costs a busy gateway. The lines are held as Buffers (sonic-boom's
 * buffer mode): in its string mode each line added to a batch measures the whole batch again.
 */
export const LOG_BATCH = 4096;

/** Longest a line waits in a batch that is not full (ms): a quiet gateway's lines still show at once. */
export const LOG_FLUSH_MS = 100;

/**
 * The stream each logger made by createLogger writes its lines to (the pretty formatter's when
 * pretty): the access log's request lines are built as strings and written there directly.
 */
const lineStreams = new WeakMap<Logger, pino.DestinationStream>();

/**
 * A pino logger. Lines go to stdout through pino's asynchronous destination (sonic-boom), which
 * pino flushes synchronously on exit (process.exit included), so the last lines are not lost and
 * nothing keeps the process alive. Lines are written in batches of LOG_BATCH bytes, and at most
 * LOG_FLUSH_MS after they were logged (an unref'd timer: it keeps nothing alive either). Pretty lines are formatted in this thread (pino-pretty) and go to
 * the same destination: no worker thread (pino's transports) that could outlive the process or drop
 * its last lines.
 *
 * The destination holds at most `bufferLimit` bytes: with stdout on a pipe whose reader stops (a
 * stuck log shipper, a paused journal), an unbounded buffer would keep every access-log line and
 * grow the process until it is killed, and a synchronous write would stop the gateway instead.
 * Lines past the limit are dropped and counted (sonic-boom's maxLength and 'drop' event), which
 * costs the normal path nothing: the check is one comparison sonic-boom makes anyway.
 */
export function createLogger(options: LoggerOptions = {}): Logger {
  const level = options.level ?? 'info';
  const pretty = options.pretty ?? (options.destination === undefined && process.stdout.isTTY === true);
  const stdout = options.destination
    ? undefined
    : pino.destination({
        dest: 1,
        sync: false,
        contentMode: 'buffer',
        minLength: LOG_BATCH,
        maxLength: options.bufferLimit ?? LOG_BUFFER_DEFAULT,
      });
  const out = options.destination ?? ((stdout ? batched(stdout, LOG_FLUSH_MS) : undefined) as pino.DestinationStream);
  let destination = out;
  if (pretty) {
    const format = prettyFormat(options.destination === undefined && isColorSupported);
    const flushable = out as { flush?: (cb?: (err?: Error) => void) => void };
    destination = {
      write: (line: string) => void out.write(format(line)),
      flush: (cb?: (err?: Error) => void) => (flushable.flush ? flushable.flush(cb) : cb?.()),
    } as pino.DestinationStream;
  }
  // pino's own base (pid, hostname) and then the node: the field sits where attachLogger puts it.
  const base =
    options.node === undefined ? {} : { base: { pid: process.pid, hostname: hostname(), node: options.node } };
  const logger = pino({ level, ...base }, destination);
  if (stdout) {
    reportDrops(stdout, logger, options.drops ?? { lines: 0 });
  }
  // A multistream wants each line's level and message besides the line: those keep pino's path.
  if (!(destination as unknown as { [k: symbol]: unknown })[pino.symbols.needsMetadataGsym])
    lineStreams.set(logger, destination);
  return logger;
}

/**
 * pino-pretty's formatting of one JSON line. A line with a `node` field (a cluster node's: attachLogger
 * adds it) shows the node as a short tag before its message, `[node-1] claimed over http1`, instead of
 * among the extra fields; other lines are formatted exactly as before (the tagged formatter, made
 * at the first such line, is used for those lines only). A JSON line has `"node":` only as a key:
 * inside a string value every `"` is escaped.
 */
function prettyFormat(colorize: boolean): (line: string) => string {
  const options = {
    colorize,
    translateTime: 'SYS:HH:MM:ss.l',
    ignore: 'pid,hostname,event',
    singleLine: true,
    // `error` on request lines is a PTTH_ERR_* code, not an Error object to print on its own lines.
    errorLikeObjectKeys: ['err'],
  };
  const plain = prettyFactory(options);
  let tagged: ((line: string) => string) | undefined;
  return (line) => {
    if (!line.includes('"node":')) return plain(line);
    tagged ??= prettyFactory({
      ...options,
      ignore: `${options.ignore},node`,
      messageFormat: '{if node}[{node}] {end}{msg}',
    });
    return tagged(line);
  };
}

/** sonic-boom's state, read by the flush timer (sonic-boom 4: `_len` bytes held, `_writing` a write in flight). */
interface SonicState {
  _len: number;
  _writing: boolean;
  destroyed: boolean;
}

/**
 * `stream` (sonic-boom in buffer mode) as the string destination pino writes to, each line a
 * Buffer, with the timer that writes out a batch short of minLength: sonic-boom writes once a batch
 * reaches minLength, and after a write only while more than minLength remain. The timer is armed by
 * the first line after it last fired (an idle process has no timer at all) and unref'd; a tick
 * during a write in flight, whose end may leave a remainder, arms it again. pino's `logger.flush()`
 * reaches the stream's flush; pino's exit handler holds the stream itself.
 */
function batched(stream: ReturnType<typeof pino.destination>, ms: number): pino.DestinationStream {
  const state = stream as unknown as SonicState;
  // On EPIPE (stdout's reader is gone for good) pino replaces the stream's write with a no-op: the
  // lines held then are never written, and the timer stops trying.
  const write = stream.write;
  let armed = false;
  const tick = (): void => {
    armed = false;
    if (stream.write !== write || state.destroyed || state._len === 0) return;
    if (!state._writing) stream.flush();
    armed = true;
    timer.refresh();
  };
  // Fires once at the start (nothing held then), and again after each refresh().
  const timer = setTimeout(tick, ms);
  timer.unref();
  return {
    write: (line: string) => {
      stream.write(Buffer.from(line) as unknown as string);
      if (!armed) {
        armed = true;
        timer.refresh();
      }
    },
    flush: (cb?: (err?: Error) => void) => stream.flush(cb),
    flushSync: () => stream.flushSync(),
  } as pino.DestinationStream;
}

/** `s` as a JSON string (pino's output for a string value, quotes included). */
const quote = JSON.stringify as (s: string) => string;

/**
 * A `request` line, built as one string and written straight to the logger's stream: the line
 * pino makes from `logger.info(fields, msg)` (warn for 5xx) with the fields attachLogger logs, in
 * the same order (level, time, pid, hostname, node on a cluster node (`node` is `,"node":"ID"` or
 * ''), event, name, method, path, status, bytesIn, bytesOut,
 * ms, remote, error when set, msg), without the fields object and pino's walk over it. Only for
 * loggers made by createLogger, whose options (no serializers, formatters or hooks) it assumes.
 */
function writeRequestLine(logger: Logger, stream: pino.DestinationStream, node: string, r: RequestEvent): void {
  const level = r.status >= 500 ? 40 : 30;
  if (level < logger.levelVal) return;
  const chindings = (logger as unknown as { [k: symbol]: string })[pino.symbols.chindingsSym];
  let line =
    '{"level":' +
    level +
    ',"time":' +
    Date.now() +
    chindings +
    node +
    ',"event":"request","name":' +
    quote(r.name) +
    ',"method":' +
    quote(r.method) +
    ',"path":' +
    quote(r.path) +
    ',"status":' +
    r.status +
    ',"bytesIn":' +
    r.bytesIn +
    ',"bytesOut":' +
    r.bytesOut +
    ',"ms":' +
    Math.round(r.ms * 100) / 100 +
    ',"remote":' +
    quote(r.remote);
  if (r.error !== undefined) line += `,"error":${quote(r.error)}`;
  line += `,"msg":${quote(`${r.method} ${r.path} ${r.status}`)}}\n`;
  stream.write(line);
}

/**
 * Counts the lines `stream` drops and, once it has drained (the reader is back and the buffer
 * empty, so the line fits), logs how many. Nothing listens for 'drain' until a line is dropped.
 */
function reportDrops(stream: ReturnType<typeof pino.destination>, logger: Logger, drops: LogDrops): void {
  let reported = drops.lines;
  let waiting = false;
  const report = (): void => {
    waiting = false;
    const n = drops.lines - reported;
    reported = drops.lines;
    logger.warn({ event: 'log-drop', dropped: n }, `dropped ${n} log lines: stdout's reader fell behind`);
  };
  stream.on('drop', () => {
    drops.lines++;
    if (!waiting) {
      waiting = true;
      stream.once('drain', report);
    }
  });
}

export interface AttachOptions {
  /** One line per visitor request (default true). Claims, channels and errors are always logged. */
  requests?: boolean;
}

/**
 * Logs a gateway's events. Every line has an `event` field (the gateway event's name) and a short
 * `msg` (pretty output shows the app `name` as the logger name, before the message); the fields:
 *  - request (info; warn for 5xx): name, method, path, status, bytesIn, bytesOut, ms, remote, error
 *  - claim (info): name, transport, remote, url, key (the access key's id, when one was used)
 *  - refuse (warn): code, status, remote, name (when the claim named one)
 *  - comet (a request to the Comet endpoint): op (register, poll, reply, unknown), method, path (the
 *    session id hashed, see cometPathShape), status (0: the client went away), code, name, remote.
 *    warn for a refused poll or reply and for an unknown request URL (a client polling a dead URL in a
 *    loop shows); debug for answered polls and replies (the request lines already show their
 *    visitors) and for registrations (the claim or refuse line says how they ended)
 *  - cookie-dropped (warn): name, count (an app's Set-Cookie for the whole domain)
 *  - register, release (info): name (release: reason)
 *  - channel-open, channel-close (info): name, transport, remote, channel (id), channels (left open)
 *  - listening (info): address, port; error (error): err
 * On a node of a cluster (`gateway.nodeId`) every line also has `node`, the node's id (pretty output
 * shows it as a `[node]` tag before the message); a gateway on its own logs exactly these fields.
 * Returns a function that detaches the logger.
 */
export function attachLogger(gateway: Gateway, logger: Logger, options: AttachOptions = {}): () => void {
  const detach: (() => void)[] = [];
  const on = <K extends keyof GatewayEvents>(event: K, listener: (...args: GatewayEvents[K]) => void): void => {
    // Typed by the signature above; node's generic EventEmitter typing cannot follow K through.
    gateway.on(event, listener as never);
    detach.push(() => gateway.removeListener(event, listener as never));
  };

  // A cluster node's lines name it: the nodes behind one load balancer write to one log store. A
  // logger made with createLogger's `node` names it in every line already.
  const node = logger.bindings()['node'] === undefined ? gateway.nodeId : undefined;
  const tag: <T extends object>(fields: T) => T =
    node === undefined ? (fields) => fields : (fields) => ({ node, ...fields });
  const log = {
    debug: (fields: object, msg: string) => logger.debug(tag(fields), msg),
    info: (fields: object, msg: string) => logger.info(tag(fields), msg),
    warn: (fields: object, msg: string) => logger.warn(tag(fields), msg),
    error: (fields: object, msg: string) => logger.error(tag(fields), msg),
  };
  const lines = lineStreams.get(logger);
  if (options.requests !== false && lines !== undefined) {
    const nodeField = node === undefined ? '' : `,"node":${quote(node)}`;
    on('request', (r: RequestEvent) => writeRequestLine(logger, lines, nodeField, r));
  } else if (options.requests !== false) {
    // Any other pino logger (its own serializers, formatters, hooks): the same fields through pino.
    on('request', (r: RequestEvent) => {
      const line = {
        event: 'request',
        name: r.name,
        method: r.method,
        path: r.path,
        status: r.status,
        bytesIn: r.bytesIn,
        bytesOut: r.bytesOut,
        ms: Math.round(r.ms * 100) / 100,
        remote: r.remote,
        error: r.error,
      };
      const msg = `${r.method} ${r.path} ${r.status}`;
      if (r.status >= 500) log.warn(line, msg);
      else log.info(line, msg);
    });
  }
  on('claim', (c) =>
    log.info(
      { event: 'claim', name: c.name, transport: c.transport, remote: c.remote, url: c.url, key: c.key },
      `claimed over ${c.transport}`,
    ),
  );
  on('refuse', (r) =>
    log.warn(
      { event: 'refuse', code: r.code, status: r.status, remote: clientAddress(r.remote), name: r.name },
      `claim refused: ${r.status} ${r.code}`,
    ),
  );
  on('comet', (c: CometEvent) => {
    const line = { event: 'comet', ...c };
    const status = c.status === 0 ? 'abandoned' : String(c.status);
    const msg = `comet ${c.op}: ${c.method} ${c.path} ${status}${c.code ? ` ${c.code}` : ''}`;
    if (c.status >= 400 && !(c.op === 'register' && c.method === 'POST')) log.warn(line, msg);
    else log.debug(line, msg);
  });
  on('relay', (r) => {
    const line = { event: 'relay', ...r, ms: Math.round(r.ms) };
    const msg = `relay ${r.keyId ?? '-'} ${r.method || '-'} ${r.target}${r.path} ${r.status}${r.error ? ` ${r.error}` : ''}`;
    if (r.error !== undefined && r.status >= 500) log.warn(line, msg);
    else log.info(line, msg);
  });
  on('cookie-dropped', (c) =>
    log.warn(
      { event: 'cookie-dropped', name: c.name, count: c.count },
      `dropped ${c.count} Set-Cookie field(s) whose Domain covers other apps`,
    ),
  );
  on('register', (reg: Registration) => log.info({ event: 'register', name: reg.name }, 'registered'));
  on('release', (reg: Registration, reason: string) =>
    log.info({ event: 'release', name: reg.name, reason }, `released (${reason})`),
  );
  const channel = (event: 'channel-open' | 'channel-close', reg: Registration, ch: Channel): void =>
    log.info(
      {
        event,
        name: reg.name,
        transport: ch.transport,
        remote: ch.remote,
        channel: ch.id,
        channels: reg.channels.length,
      },
      `${ch.transport} channel ${event === 'channel-open' ? 'opened' : 'closed'} (${reg.channels.length} open)`,
    );
  on('channel-open', (reg, ch) => channel('channel-open', reg, ch));
  on('channel-close', (reg, ch) => channel('channel-close', reg, ch));
  on('listening', (a: AddressInfo) =>
    log.info({ event: 'listening', address: a.address, port: a.port }, `listening on ${a.address} port ${a.port}`),
  );
  on('error', (err: Error) => log.error({ event: 'error', err }, err.message));
  return () => {
    for (const d of detach.splice(0)) d();
  };
}
