import { randomInt } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { CometChannel, type Delivery, type PipelineBound } from '../channels/comet.js';
import { readBody, formParams } from '../http/body.js';
import { PtthError, isPtthError } from '../http/errors.js';
import {
  InvalidMessageError,
  parseResponse,
  parseResponses,
  pipelineParserAvailable,
  type ParsedResponse,
} from '../http/message.js';
import { sendError } from '../http/respond.js';
import { loggableName, lookupKey, queryName, randomSecret, readClaimParams } from '../table/names.js';
import type { Registration } from '../table/registration.js';
import { decideClaim, headerKey } from './claim.js';
import { hostname, SERVICE_PATH } from './classify.js';
import {
  gatewayOrigin,
  privateUrlFor,
  publicUrlFor,
  requestProto,
  type ClusterHooks,
  type GatewayContext,
} from './context.js';
import type { ClaimEvent, CometEvent } from './eventmap.js';
import { refuse, refuseClaim } from './refuse.js';
import { clientAddress } from '../http/headers.js';

/**
 * The ReverseHttp Comet protocol (docs/PROTOCOL.md section 5), compatible with the reversehttp.net
 * service: registration by form POST on the Gateway Service URL, long-poll GETs on request URLs,
 * the app's reply POSTed back as `message/http`.
 *
 * A request URL is `/reversehttp/<session>/<slot>`: the session (128 random bits, one per
 * registration) is the capability; a slot is one step of a poller's chain. An open slot is polled;
 * the request it yields binds it, so a repeated GET of that URL gets the same request again (GET
 * stays idempotent) and the reply is POSTed to it; `rel="next"` names a fresh open slot. A poll
 * that times out names its own slot again. A poll that says `Accept: application/http` may take
 * several requests at once as one pipeline, and its slot then takes one pipeline of responses
 * (section 5.7).
 */

/** The settings of the browser transports (BrowserSettings) that Comet reads. */
export interface CometSettings {
  readonly pollTimeout: number;
  readonly replyTimeout: number;
  readonly bufferLimit: number;
  readonly cometIdleTimeout: number;
  /** Requests one `application/http` poll answer carries at most (section 5.7; `--comet-pipeline-count`). */
  readonly pipelineCount: number;
  /** Bytes of requests one `application/http` poll answer carries at most (`--comet-pipeline-bytes`). */
  readonly pipelineBytes: number;
}

/**
 * Whether a poll's `Accept` names `application/http` (with a q other than 0): only then may its
 * answer be a pipeline (section 5.7). `*\/*` does not count: clients that do not ask get
 * `message/http`, as ReverseHttp clients always did.
 */
export function acceptsPipeline(accept: string | undefined): boolean {
  if (!accept) return false;
  for (const range of accept.split(',')) {
    const [type = '', ...params] = range.split(';').map((p) => p.trim().toLowerCase());
    if (type !== 'application/http') continue;
    const q = params.find((p) => p.startsWith('q='));
    if (q === undefined || Number(q.slice(2)) > 0) return true;
  }
  return false;
}

/** A Comet path with the session id hashed and every part shortened: safe to log. */
export function cometPathShape(path: string): string {
  if (!path.startsWith(`${SERVICE_PATH}/`)) return path.slice(0, 64);
  const parts = path.slice(SERVICE_PATH.length + 1).split('/');
  const [sid = '', ...rest] = parts;
  if (sid === '' && rest.length === 0) return `${SERVICE_PATH}/`;
  const hashed = `~${lookupKey(sid).slice(0, 8)}`;
  const slot = rest.length === 0 ? '' : `/${(rest[0] ?? '').slice(0, 16)}`;
  return `${SERVICE_PATH}/${hashed}${slot}${rest.length > 1 ? '/...' : ''}`;
}

/**
 * Comet requests another node sent over the internal hop (server.ts checked their credentials),
 * with the app name the credentials are for: they reach only that app's sessions.
 */
const hopNames = new WeakMap<IncomingMessage, string>();

/** Marks `req` as a Comet request that came over the hop with credentials for `name`. */
export function cometHop(req: IncomingMessage, name: string): void {
  hopNames.set(req, name);
}

/** Open slots a session keeps at most (each registration POST mints one); the oldest unused go first. */
const MAX_OPEN_SLOTS = 1024;

interface Slot {
  /** The requests this slot delivered, in order: one, or an `application/http` pipeline's. */
  deliveries: readonly Delivery[] | undefined;
  /** True when they went out as a pipeline: the reply is then a pipeline too. */
  pipeline: boolean;
  /** The slot named by this one's `rel="next"` once it was bound. */
  next: string | undefined;
  /** Polls waiting on this open slot now (normally one). */
  readonly polls: Set<() => void>;
}

/** A slot id as this gateway mints them (base 36): what an adopted session accepts as an open slot. */
const SLOT_ID = /^[0-9a-z]{1,16}$/;

class Session {
  readonly id: string;
  readonly reg: Registration;
  /**
   * Taken over from a cluster node that is gone (or made before a restart): its clients poll slots
   * this node never minted, so any well-formed slot id opens as a fresh slot.
   */
  readonly adopted: boolean;
  channel: CometChannel | undefined;
  readonly slots = new Map<string, Slot>();
  #seq: number;
  constructor(reg: Registration, id?: string) {
    this.reg = reg;
    this.id = id ?? randomSecret(128);
    this.adopted = id !== undefined;
    // An adopted session's new slots must not collide with the ones its clients still hold.
    this.#seq = id === undefined ? 0 : randomInt(2 ** 40);
  }
  /** The slot a client names: a known one, or (adopted session) a fresh open one under its id. */
  slot(id: string): Slot | undefined {
    const known = this.slots.get(id);
    if (known || !this.adopted || !SLOT_ID.test(id)) return known;
    this.open(id);
    return this.slots.get(id);
  }
  mint(): string {
    const id = (this.#seq++).toString(36);
    this.open(id);
    return id;
  }
  open(id: string): void {
    this.slots.set(id, { deliveries: undefined, pipeline: false, next: undefined, polls: new Set() });
    if (this.slots.size > MAX_OPEN_SLOTS) {
      for (const [k, s] of this.slots) {
        if (!s.deliveries && s.polls.size === 0) {
          this.slots.delete(k);
          break;
        }
      }
    }
  }
}

/** The gateway origin for request URLs: as the client addressed it, so a page on 127.0.0.1 keeps polling 127.0.0.1. */
function requestOrigin(ctx: GatewayContext, req: IncomingMessage): string {
  if (ctx.settings.publicUrl) return ctx.settings.publicUrl.origin;
  const host = req.headers.host;
  if (host && /^[A-Za-z0-9.\-[\]:]+$/.test(host) && hostname(host)) return `${requestProto(req)}://${host}`;
  return gatewayOrigin(ctx.settings, req);
}

export class CometService {
  #ctx: GatewayContext;
  #settings: CometSettings;
  /** Bytes of visitors' bodies buffered for Comet apps across the whole gateway. */
  #budget: { used: number; readonly max: number };
  /** The bound of a pipelined poll answer; undefined when this node cannot parse reply pipelines. */
  #pipeline: PipelineBound | undefined;
  /** By lookupKey(session id): the id is the capability of its request URLs (see lookupKey). */
  #sessions = new Map<string, Session>();
  #byReg = new Map<Registration, Session>();

  constructor(ctx: GatewayContext, settings: CometSettings) {
    this.#ctx = ctx;
    this.#settings = settings;
    // Each request may buffer --buffer-limit; all of them together at most eight times that.
    this.#budget = { used: 0, max: 8 * settings.bufferLimit };
    const bound = { count: settings.pipelineCount, bytes: settings.pipelineBytes };
    this.#pipeline = pipelineParserAvailable() ? bound : undefined;
    ctx.table.on('release', (reg: Registration) => {
      this.#byReg.delete(reg);
      // Every session of it: a node may also serve sessions it took over from gone nodes.
      for (const [hash, s] of this.#sessions) if (s.reg === reg) this.#sessions.delete(hash);
    });
    // Redis came back (maybe empty): the sessions served here are this node's again there.
    ctx.cluster?.onRestated(() => {
      const cluster = ctx.cluster as ClusterHooks;
      for (const [hash, s] of this.#sessions) cluster.shareSession(hash, s.reg.name).catch(() => {});
    });
  }

  /** Sessions alive now (for tests and the status page). */
  get sessions(): number {
    return this.#sessions.size;
  }

  /** `/reversehttp` and everything under it. */
  handle(req: IncomingMessage, res: ServerResponse, path: string): void {
    if (path === SERVICE_PATH || path === `${SERVICE_PATH}/`) {
      this.#observe(req, res, 'register', path);
      if (req.method !== 'POST') return this.#methodNotAllowed(req, res, 'POST');
      this.#register(req, res);
      return;
    }
    const [sid, slotId, extra] = path.slice(SERVICE_PATH.length + 1).split('/');
    const session = sid ? this.#sessions.get(lookupKey(sid)) : undefined;
    // A cluster: the session may be another node's, or a gone node's this one takes over.
    if (!session && sid && slotId && extra === undefined && this.#ctx.cluster)
      return this.#elsewhere(req, res, path, sid);
    // Over the hop, the credentials name the app: they open only that app's sessions.
    const hopName = hopNames.get(req);
    if (session && hopName !== undefined && hopName !== session.reg.name) {
      req.resume();
      sendError(res, new PtthError('PTTH_ERR_HOP_FORBIDDEN'), req.headers.accept, true);
      return;
    }
    const slot = session && slotId && extra === undefined ? session.slot(slotId) : undefined;
    const op = !session || !slot || !slotId ? 'unknown' : req.method === 'POST' ? 'reply' : 'poll';
    this.#observe(req, res, op, path, session?.reg.name);
    if (!session || !slot || !slotId) {
      req.resume();
      sendError(res, new PtthError('PTTH_ERR_UNKNOWN_REQUEST_URL'), req.headers.accept);
      return;
    }
    if (req.method === 'GET') this.#poll(session, slotId, slot, req, res);
    else if (req.method === 'POST') this.#reply(slot, req, res);
    else this.#methodNotAllowed(req, res, 'GET, POST');
  }

  /**
   * A request URL this node has no session for, on a cluster node: the node that serves the session
   * gets it over the internal hop; a session whose node is gone (or every node restarted) is taken
   * over here, one node winning the race. A request that came over the hop is never sent on again.
   */
  #elsewhere(req: IncomingMessage, res: ServerResponse, path: string, sid: string): void {
    const cluster = this.#ctx.cluster as ClusterHooks;
    const hash = lookupKey(sid);
    const hopped = hopNames.has(req);
    const unknown = (): void => {
      this.#observe(req, res, 'unknown', path);
      req.resume();
      sendError(res, new PtthError('PTTH_ERR_UNKNOWN_REQUEST_URL'), req.headers.accept);
    };
    const route = async (): Promise<void> => {
      for (let attempt = 0; attempt < 2; attempt++) {
        const where = await cluster.locateSession(hash);
        if (!where) return unknown();
        if (where.url && where.node !== cluster.nodeId && !hopped) {
          return cluster.proxy(req, res, { id: where.node, url: where.url }, where.name);
        }
        if (!(await cluster.shareSession(hash, where.name, where.node))) continue;
        const reg = this.#ctx.table.lookup(where.name) ?? (await this.#ctx.table.fetch(where.name));
        if (!reg || reg.released) return unknown();
        if (hopped && hopNames.get(req) !== where.name) {
          req.resume();
          return sendError(res, new PtthError('PTTH_ERR_HOP_FORBIDDEN'), req.headers.accept, true);
        }
        const session = this.#sessions.get(hash) ?? new Session(reg, sid);
        // The session registration POSTs reuse stays the one made here, if any.
        if (!this.#byReg.has(reg)) this.#byReg.set(reg, session);
        this.#sessions.set(hash, session);
        return this.handle(req, res, path);
      }
      unknown();
    };
    route().catch(() => {
      req.resume();
      sendError(res, new PtthError('PTTH_ERR_STORE_UNAVAILABLE'), req.headers.accept);
    });
  }

  /** Emits the request's `comet` event once it is answered (or its client went away). */
  #observe(req: IncomingMessage, res: ServerResponse, op: CometEvent['op'], path: string, name?: string): void {
    const remote = clientAddress(req.socket.remoteAddress);
    res.once('close', () => {
      const code = res.getHeader('x-ptth-error');
      this.#ctx.emit('comet', {
        op,
        method: req.method ?? '',
        path: cometPathShape(path),
        status: res.headersSent ? res.statusCode : 0,
        code: typeof code === 'string' ? code : undefined,
        name: name ?? (op === 'register' ? queryName(req.url) : undefined),
        remote,
      } satisfies CometEvent);
    });
  }

  #methodNotAllowed(req: IncomingMessage, res: ServerResponse, allow: string): void {
    req.resume();
    res.setHeader('Allow', allow);
    sendError(res, new PtthError('PTTH_ERR_METHOD_NOT_ALLOWED'), req.headers.accept);
  }

  #url(req: IncomingMessage, session: Session, slot: string): string {
    return `${requestOrigin(this.#ctx, req)}${SERVICE_PATH}/${session.id}/${slot}`;
  }

  #register(req: IncomingMessage, res: ServerResponse): void {
    const ctx = this.#ctx;
    // Comet answers its own shutting-down (the gateway's admission leaves it here) so that its
    // `comet` event covers the answer like every other one of the endpoint's.
    if (ctx.closing()) return refuse(req, res, new PtthError('PTTH_ERR_SHUTTING_DOWN'));
    let name = queryName(req.url);
    const fail = (err: unknown): void => {
      const read = isPtthError(err) ? err : new PtthError('PTTH_ERR_BAD_PARAMS');
      const e = read.code === 'PTTH_ERR_BODY_TOO_LARGE' ? new PtthError('PTTH_ERR_CLAIM_BODY_TOO_LARGE') : read;
      // After a 413 or 408 the rest of the body is not read: the connection closes.
      refuseClaim(ctx, req, res, e, name, { drain: false, close: e.status === 413 || e.status === 408 });
    };
    readBody(req, ctx.settings.claimBodyLimit, 'The registration form is too large.', ctx.settings.claimTimeout)
      .then(async (body) => {
        const params = formParams(req, body);
        name = loggableName(params.get('name'));
        // The access key: Authorization: Bearer, or a `key` form field for clients that cannot set headers.
        const key = headerKey(req) ?? (params.get('key') || undefined);
        const claim = readClaimParams(params, ctx.settings.maxLease);
        // No channel yet: the first poll brings it (#channel), under the limits in force then.
        const { registration: reg, lease } = await decideClaim(ctx, claim, key, req.socket.remoteAddress, false);
        let session = this.#byReg.get(reg);
        if (!session) {
          session = new Session(reg);
          // A cluster: any node can route the session's polls here, and adopt it if this node goes.
          if (ctx.cluster && !(await ctx.cluster.shareSession(lookupKey(session.id), reg.name))) {
            lease.abandon('claim refused');
            throw new PtthError('PTTH_ERR_NOT_FOUND', 'The registration was released.');
          }
          this.#byReg.set(reg, session);
          this.#sessions.set(lookupKey(session.id), session);
        }
        try {
          this.#channel(session, req);
        } catch (err) {
          lease.abandon('claim refused');
          throw err;
        }
        const first = this.#url(req, session, session.mint());
        const related = publicUrlFor(ctx.settings, req, reg.name);
        const event: ClaimEvent = {
          name: reg.name,
          url: related,
          transport: 'comet',
          remote: req.socket.remoteAddress ?? '',
          key: reg.keyId,
        };
        ctx.emit('claim', event);
        // setHeader with an array writes one `Link:` line per value, names cased as given.
        res.setHeader('Link', [`<${first}>; rel="first"`, `<${related}>; rel="related"`]);
        res.setHeader('Location', privateUrlFor(ctx.settings, req, reg.privateId));
        res.setHeader('Cache-Control', 'no-store');
        if (lease.created) res.setHeader('Content-Length', '0');
        res.writeHead(lease.created ? 201 : 204);
        res.end();
      })
      .catch(fail);
  }

  /** The session's live channel, or a new one in the registration (after an idle close). */
  #channel(session: Session, req: IncomingMessage): CometChannel {
    const current = session.channel;
    if (current && !current.closed) return current;
    const reg = session.reg;
    if (reg.released) throw new PtthError('PTTH_ERR_UNKNOWN_REQUEST_URL');
    // A poll that brings the channel back is a reconnect: the access configuration in force decides
    // it, as it decides every other transport's new channels (a revoked key cannot come back).
    this.#ctx.access.recheck(reg.keyId, reg.name);
    const refusal = this.#ctx.table.roomFor(reg, this.#ctx.access.channelLimits(reg, this.#ctx.settings.maxChannels));
    if (refusal) throw refusal;
    this.#ctx.caps.checkChannels(req.socket.remoteAddress);
    const s = this.#settings;
    const channel = new CometChannel(`${clientAddress(req.socket.remoteAddress)}:${req.socket.remotePort ?? 0}`, {
      pollTimeout: s.pollTimeout,
      replyTimeout: s.replyTimeout,
      queueLimit: this.#ctx.settings.queueLimit,
      queueTimeout: this.#ctx.settings.queueTimeout,
      bufferLimit: s.bufferLimit,
      budget: this.#budget,
      idleTimeout: s.cometIdleTimeout,
    });
    session.channel = channel;
    this.#ctx.caps.channelFrom(channel, req.socket.remoteAddress);
    reg.addChannel(channel);
    return channel;
  }

  #poll(session: Session, slotId: string, slot: Slot, req: IncomingMessage, res: ServerResponse): void {
    req.resume();
    if (slot.deliveries) {
      // A repeated GET of a bound URL: the same request(s) again (the first answer may have been lost).
      this.#deliver(req, res, session, slot, slot.next as string);
      return;
    }
    let channel: CometChannel;
    try {
      channel = this.#channel(session, req);
    } catch (err) {
      sendError(res, isPtthError(err) ? err : new PtthError('PTTH_ERR_BAD_PARAMS'), req.headers.accept);
      return;
    }
    let done = false;
    const noContent = (next: string): void => {
      res.setHeader('Link', `<${this.#url(req, session, next)}>; rel="next"`);
      res.setHeader('Cache-Control', 'no-store');
      res.writeHead(204);
      res.end();
    };
    const settle = (): boolean => {
      if (done) return false;
      done = true;
      slot.polls.delete(displace);
      return true;
    };
    // Another poll on the same open slot took a request: this one moves on to a slot of its own.
    const displace = (): void => {
      if (!settle()) return;
      cancel();
      noContent(session.mint());
    };
    slot.polls.add(displace);
    const pipeline = acceptsPipeline(req.headers.accept) ? this.#pipeline : undefined;
    const cancel = channel.poll({
      pipeline,
      deliver: (ds) => {
        settle();
        slot.deliveries = ds;
        slot.pipeline = pipeline !== undefined;
        slot.next = session.mint();
        // The URL is spent once every request it delivered is settled.
        let open = ds.length;
        for (const d of ds) d.onSettle = () => void (--open === 0 && session.slots.delete(slotId));
        for (const other of [...slot.polls]) other();
        this.#deliver(req, res, session, slot, slot.next);
      },
      timeout: () => {
        if (settle()) noContent(slotId);
      },
      closed: () => {
        if (settle()) sendError(res, new PtthError('PTTH_ERR_RELEASED'), req.headers.accept);
      },
    });
    res.once('close', () => {
      if (settle()) cancel();
    });
  }

  #deliver(req: IncomingMessage, res: ServerResponse, session: Session, slot: Slot, next: string): void {
    const ds = slot.deliveries ?? [];
    // A pipeline (section 5.7): the requests' message/http serializations back to back; the
    // Requesting-Client header lists their visitors in the same order.
    const message = slot.pipeline ? Buffer.concat(ds.map((d) => d.message)) : (ds[0] as Delivery).message;
    res.setHeader('Content-Type', slot.pipeline ? 'application/http' : 'message/http');
    res.setHeader('Content-Length', String(message.length));
    res.setHeader('Requesting-Client', ds.map((d) => d.client).join(', '));
    res.setHeader('Link', `<${this.#url(req, session, next)}>; rel="next"`);
    res.setHeader('Cache-Control', 'no-store');
    res.writeHead(200);
    for (const d of ds) d.sending(res);
    res.end(message);
  }

  /**
   * A reply's body, buffered whole like visitors' bodies and counted against the same budget; one
   * not in after --reply-timeout is too late for its visitors anyway and must not hold its buffer.
   */
  #readReply(req: IncomingMessage): Promise<Buffer> {
    const limit = this.#settings.bufferLimit;
    const tooLarge = `The reply is over ${limit} bytes, the most this gateway buffers for a Comet reply.`;
    return readBody(req, limit, tooLarge, this.#settings.replyTimeout, this.#budget);
  }

  #reply(slot: Slot, req: IncomingMessage, res: ServerResponse): void {
    const ds = slot.deliveries;
    if (ds && slot.pipeline) return this.#replyPipeline(ds, req, res);
    const d = ds?.[0];
    if (!d || d.settled) {
      req.resume();
      sendError(res, new PtthError('PTTH_ERR_UNKNOWN_REQUEST_URL', NOTHING_WAITING), req.headers.accept);
      return;
    }
    const budget = this.#budget;
    // The reply's bytes, counted against the budget from their reading until they have left the
    // process (see Delivery.respond) or the reply is refused.
    let held = 0;
    const release = (): void => {
      budget.used -= held;
      held = 0;
    };
    this.#readReply(req)
      .then((body) => {
        held = body.length;
        return parseResponse(body, d.method);
      })
      .then(
        (reply) => {
          if (d.settled) {
            release();
            sendError(
              res,
              new PtthError(
                'PTTH_ERR_UNKNOWN_REQUEST_URL',
                'The request was already answered, or its visitor gave up.',
              ),
              req.headers.accept,
            );
            return;
          }
          const refused = d.respond(reply, held);
          held = 0;
          if (refused) {
            sendError(res, new PtthError('PTTH_ERR_INVALID_REPLY', refused.message), req.headers.accept);
            return;
          }
          accepted(res);
        },
        (err: unknown) => {
          release();
          refuseReply(err, [d], req, res);
        },
      );
  }

  /**
   * The reply to a pipelined poll (section 5.7): an `application/http` pipeline of responses in the
   * order of the requests. The first responses go to their visitors; requests it has no response
   * for lost their connection (502 PTTH_ERR_CHANNEL_LOST). More responses than requests, or bytes
   * llhttp refuses, and no visitor gets anything from it: they get 502, the app 400.
   */
  #replyPipeline(ds: readonly Delivery[], req: IncomingMessage, res: ServerResponse): void {
    if (ds.every((d) => d.settled)) {
      req.resume();
      sendError(res, new PtthError('PTTH_ERR_UNKNOWN_REQUEST_URL', NOTHING_WAITING), req.headers.accept);
      return;
    }
    const budget = this.#budget;
    let held = 0;
    this.#readReply(req)
      .then((body) => {
        held = body.length;
        return parseResponses(
          body,
          ds.map((d) => d.method),
        ).responses;
      })
      .then(
        (responses) => {
          const refusals = relayPipeline(ds, responses);
          // Each response's body stays counted until it has left (Delivery.respond); the heads now.
          budget.used -= held - responses.reduce((n, r) => n + r.body.length, 0);
          held = 0;
          if (refusals.length > 0)
            return sendError(res, new PtthError('PTTH_ERR_INVALID_REPLY', refusals.join(' ')), req.headers.accept);
          accepted(res);
        },
        (err: unknown) => {
          budget.used -= held;
          held = 0;
          refuseReply(err, ds, req, res);
        },
      );
  }
}

const NOTHING_WAITING = 'No request is waiting for a reply at this URL: poll it with GET first.';

/** 202: the reply went to its visitors. */
function accepted(res: ServerResponse): void {
  res.setHeader('Cache-Control', 'no-store');
  res.writeHead(202, { 'Content-Length': '0' });
  res.end();
}

/** Hands a reply pipeline's responses to their visitors; the rest lost their connection. Returns the refusals. */
function relayPipeline(ds: readonly Delivery[], responses: readonly ParsedResponse[]): string[] {
  const refusals: string[] = [];
  ds.forEach((d, i) => {
    const reply = responses[i];
    if (!reply) {
      d.fail(
        new PtthError('PTTH_ERR_CHANNEL_LOST', "The app's reply pipeline ended before the response to this request."),
      );
      return;
    }
    const refused = d.respond(reply, reply.body.length);
    if (refused) refusals.push(`Response ${i + 1}: ${refused.message}`);
  });
  return refusals;
}

/** A reply that could not be read or parsed: its visitors get 502 (or 503), the app that status. */
function refuseReply(err: unknown, ds: readonly Delivery[], req: IncomingMessage, res: ServerResponse): void {
  // readBody's refusals (too large, too slow, past the budget): that status, and the connection closes.
  const cut = isPtthError(err) ? err : undefined;
  const why =
    err instanceof InvalidMessageError
      ? err.message
      : cut?.code === 'PTTH_ERR_BODY_TOO_LARGE'
        ? 'it is too large'
        : 'it could not be read';
  for (const d of ds)
    d.fail(
      cut?.code === 'PTTH_ERR_QUEUE_FULL'
        ? cut
        : new PtthError('PTTH_ERR_BAD_RESPONSE', `The app's reply was not a valid HTTP response: ${why}.`),
    );
  if (req.socket.destroyed) return;
  sendError(
    res,
    cut ?? new PtthError('PTTH_ERR_INVALID_REPLY', `The reply is not a valid HTTP response message: ${why}.`),
    req.headers.accept,
    cut !== undefined,
  );
}
