import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { Http1Channel } from '../channels/http1.js';
import { Http2Channel } from '../channels/http2.js';
import { hasToken } from '../http/headers.js';
import { PtthError, isPtthError } from '../http/errors.js';
import { bearerKey } from '../table/access.js';
import { normalizeName, readClaimParams, type ClaimParams } from '../table/names.js';
import type { ClaimLease } from '../table/table.js';
import type { Registration } from '../table/registration.js';
import { privateUrlFor, publicUrlFor, type GatewayContext } from './context.js';
import { isGatewaySegment } from './classify.js';
import type { ClaimEvent } from './eventmap.js';
import { claimantName, refuseClaim } from './refuse.js';
import { hijack, watchNextMessage } from './hijack.js';
import { addressKey } from './ratelimit.js';
import { targetQuery } from '../shared/target.js';
import { noop } from '../shared/noop.js';
import { BoundedBody, declaresMoreThan } from '../http/body.js';

/**
 * Native claims (docs/PROTOCOL.md section 2): `Upgrade: PTTH/1.0` on any path of the gateway host or
 * of the claimed app host. Two ways in, one way out:
 *  - with `Connection: Upgrade`, node's 'upgrade' event hands over the socket (claimFromUpgrade);
 *  - without it (the 2008 Second Life client), node parses an ordinary request and the socket is
 *    taken over once its body is read (claimFromRequest, via hijack.ts).
 * Both end in `accept`, which writes the byte-exact 101 and turns the socket into a channel.
 */

/** Merges query and form parameters (a form body may carry them too) and resolves the name. */
function claimParams(
  ctx: GatewayContext,
  req: IncomingMessage,
  hostName: string | undefined,
  body: Buffer | undefined,
): ClaimParams {
  let params: URLSearchParams;
  try {
    params = new URLSearchParams(targetQuery(req.url));
    const type = req.headers['content-type'] ?? '';
    if (body && body.length > 0 && type.toLowerCase().startsWith('application/x-www-form-urlencoded')) {
      for (const [k, v] of new URLSearchParams(body.toString('latin1'))) if (!params.has(k)) params.set(k, v);
    }
  } catch {
    throw new PtthError('PTTH_ERR_BAD_PARAMS');
  }
  const parsed = readClaimParams(params, ctx.settings.maxLease);
  if (hostName === undefined) return parsed;
  const fromHost = normalizeName(hostName);
  if (parsed.name !== undefined && parsed.name !== fromHost) {
    throw new PtthError('PTTH_ERR_NAME_MISMATCH', `The query names "${parsed.name}" but the Host names "${fromHost}".`);
  }
  return { ...parsed, name: fromHost };
}

/** A granted claim: its registration, and the lease that holds it until the channel is in service. */
export interface Granted {
  readonly registration: Registration;
  readonly created: boolean;
  readonly lease: ClaimLease;
}

/**
 * The gateway's side of a claim (every transport), around the table's one decision: the client
 * address's caps (channels, when the claim brings one; names, when it would make one), the access
 * key, then RouteTable.decide (token, the key's limits, room for the channel, the lease). MemoryTable
 * decides synchronously, so the address check and the creation cannot interleave with another
 * claim. Rejects with the refusal.
 */
export async function decideClaim(
  ctx: GatewayContext,
  params: ClaimParams,
  key: string | undefined,
  remote: string | undefined,
  bringsChannel: boolean,
): Promise<Granted> {
  if (params.name !== undefined && ctx.settings.urls !== 'host' && isGatewaySegment(params.name))
    throw gatewayPathName(params.name);
  if (bringsChannel) ctx.caps.checkChannels(remote);
  if (params.name === undefined || ctx.table.lookup(params.name) === undefined) ctx.caps.checkNames(remote);
  // Without a token the name is held by the claimant's address (IPv6: its /64), loopback included.
  const holder = params.token === undefined && remote ? addressKey(remote) : undefined;
  const maxPerName = bringsChannel ? ctx.settings.maxChannels : undefined;
  const granted = await ctx.access.claim(ctx.table, { ...params, holder }, key, maxPerName);
  if (granted.created) ctx.caps.holdName(granted.registration, remote);
  return granted;
}

/**
 * With path URLs on, `/metrics` (and the gateway's other own paths) cannot be an app's public URL:
 * the name is refused on every transport (random names are 12 characters or more, never one of these).
 */
function gatewayPathName(name: string): PtthError {
  return new PtthError(
    'PTTH_ERR_NAME_RESERVED',
    `The name "${name}" is reserved: /${name} is one of the gateway's own paths, and this gateway serves apps at /NAME/.`,
  );
}

/** The access key a claim presents in `Authorization: Bearer <key>`. */
export function headerKey(req: IncomingMessage): string | undefined {
  return bearerKey(req.headers.authorization);
}

/** What a claim's `Upgrade` and `ALPN` headers negotiate (docs/PROTOCOL.md sections 2 and 4). */
export interface Reversal {
  readonly protocol: 'http1' | 'http2';
  /** The token the 101 answers with: the one the client offered. */
  readonly upgrade: 'PTTH/1.0' | 'ptth';
  /** The ALPN protocol id echoed in the 101 (draft-kazuho-ptth-ptth), if the client sent ALPN. */
  readonly alpn: string | undefined;
}

/** ALPN header values are comma-separated, percent-encoded protocol ids (RFC 7639 section 2). */
function alpnIds(value: string | undefined): string[] {
  if (!value) return [];
  return value.split(',').map((v) => {
    try {
      return decodeURIComponent(v.trim()).toLowerCase();
    } catch {
      return '';
    }
  });
}

/**
 * Picks the reversed protocol: `ptth` with `ALPN: h2` gives HTTP/2 (when enabled); `PTTH/1.0`, or
 * `ptth` with `ALPN: http/1.1` or no ALPN, gives HTTP/1.1. Pure: no I/O.
 */
export function negotiate(upgrade: string | undefined, alpn: string | undefined, http2: boolean): Reversal {
  const ptth = hasToken(upgrade, 'ptth');
  const legacy = hasToken(upgrade, 'PTTH/1.0');
  const ids = alpnIds(alpn);
  if (ptth && http2 && ids.includes('h2')) return { protocol: 'http2', upgrade: 'ptth', alpn: 'h2' };
  if (legacy) return { protocol: 'http1', upgrade: 'PTTH/1.0', alpn: undefined };
  if (ptth && (ids.length === 0 || ids.includes('http/1.1'))) {
    return { protocol: 'http1', upgrade: 'ptth', alpn: ids.length === 0 ? undefined : 'http/1.1' };
  }
  throw new PtthError(
    'PTTH_ERR_UNSUPPORTED_UPGRADE',
    `None of the offered protocols (ALPN: ${alpn ?? ''}) is served here${http2 ? '' : ': this gateway has HTTP/2 turned off'}; offer http/1.1 or PTTH/1.0 too.`,
  );
}

/**
 * Writes the 101 exactly as docs/PROTOCOL.md section 2 shows it and puts the channel in service. A
 * claim that made its name and then never put a channel in service (the claimant went away, or lost
 * the limits race at join time) leaves nothing behind (ClaimLease.abandon).
 */
function accept(ctx: GatewayContext, req: IncomingMessage, socket: Socket, lease: ClaimLease, how: Reversal): void {
  if (socket.destroyed) return lease.abandon('claim refused');
  const reg = lease.registration;
  const link = publicUrlFor(ctx.settings, req, reg.name);
  const location = privateUrlFor(ctx.settings, req, reg.privateId);
  const head =
    'HTTP/1.1 101 Switching Protocols\r\n' +
    `Upgrade: ${how.upgrade}\r\n` +
    'Connection: Upgrade\r\n' +
    (how.alpn === undefined ? '' : `ALPN: ${how.alpn}\r\n`) +
    `Link: <${link}>; rel="related"\r\n` +
    `Location: ${location}\r\n` +
    '\r\n';
  if (how.protocol === 'http2') {
    // node:http2 takes over the socket's native stream. Over TLS the 101 is still being encrypted
    // and written when write() returns, and its completion would reach the HTTP/2 session, which
    // aborts the whole process (node_http2.cc: "Assertion failed: is_write_in_progress()"). So the
    // session starts only once the 101 is out.
    socket.write(head, (err) => {
      // Other claims of the name (or key) may have been put in service meanwhile: the limits
      // hold at the moment the channel joins. Past them the connection closes; the client's
      // next claim gets the 429 that says why.
      if (err || socket.destroyed || lease.recheck() !== undefined || !roomAt(ctx, socket)) {
        socket.destroy();
        return lease.abandon('claim refused');
      }
      putInService(ctx, socket, lease, how, link);
    });
    return;
  }
  socket.write(head);
  putInService(ctx, socket, lease, how, link);
}

/** Whether the claimant's address may hold one more channel now. */
function roomAt(ctx: GatewayContext, socket: Socket): boolean {
  try {
    ctx.caps.checkChannels(socket.remoteAddress);
    return true;
  } catch {
    return false;
  }
}

function putInService(ctx: GatewayContext, socket: Socket, lease: ClaimLease, how: Reversal, link: string): void {
  const s = ctx.settings;
  const reg = lease.registration;
  const channel =
    how.protocol === 'http2'
      ? new Http2Channel(socket, {
          responseTimeout: s.responseTimeout,
          pingInterval: s.pingInterval,
          pingTimeout: s.pingTimeout,
          maxStreams: s.maxStreams,
        })
      : new Http1Channel(socket, { responseTimeout: s.responseTimeout });
  ctx.caps.channelFrom(channel, socket.remoteAddress);
  lease.join(channel);
  const claim: ClaimEvent = {
    name: reg.name,
    url: link,
    transport: channel.transport,
    remote: channel.remote,
    key: reg.keyId,
  };
  ctx.emit('claim', claim);
}

/** `Upgrade: PTTH/1.0` with `Connection: Upgrade`: node's 'upgrade' event. */
export function claimFromUpgrade(
  ctx: GatewayContext,
  req: IncomingMessage,
  socket: Socket,
  head: Buffer,
  hostName: string | undefined,
): void {
  socket.on('error', noop);
  let name = claimantName(req, hostName);
  const refuseRaw = (err: PtthError): void => refuseClaim(ctx, req, socket, err, name);
  // RFC 9110 section 7.8: Upgrade in an HTTP/1.0 request is ignored, so it is never upgraded.
  if (req.httpVersionMajor !== 1 || req.httpVersionMinor < 1) {
    refuseRaw(new PtthError('PTTH_ERR_HTTP10_UPGRADE'));
    return;
  }
  let how: Reversal;
  try {
    how = negotiate(req.headers.upgrade, alpnHeader(req), ctx.settings.http2);
  } catch (err) {
    refuseRaw(err as PtthError);
    return;
  }
  if (req.headers['transfer-encoding'] !== undefined) {
    refuseRaw(new PtthError('PTTH_ERR_CHUNKED_CLAIM'));
    return;
  }
  const length = Number(req.headers['content-length'] ?? 0);
  if (length > ctx.settings.claimBodyLimit) {
    refuseRaw(new PtthError('PTTH_ERR_CLAIM_BODY_TOO_LARGE'));
    return;
  }
  if (/100-continue/i.test(req.headers.expect ?? '')) socket.write('HTTP/1.1 100 Continue\r\n\r\n');

  readDeclaredBody(socket, head, length, ctx.settings.claimTimeout)
    .then(async (body) => {
      const params = claimParams(ctx, req, hostName, body);
      name = params.name;
      const { lease } = await decideClaim(ctx, params, headerKey(req), socket.remoteAddress, true);
      accept(ctx, req, socket, lease, how);
    })
    .catch((err: unknown) => {
      refuseRaw(isPtthError(err) ? err : new PtthError('PTTH_ERR_BAD_PARAMS'));
    });
}

/**
 * Reads exactly `length` bytes (the body llhttp left to us with the upgrade). Bytes past it, sent
 * before the 101, are a protocol error (docs/PROTOCOL.md section 2).
 */
function readDeclaredBody(socket: Socket, head: Buffer, length: number, timeout: number): Promise<Buffer> {
  if (head.length > length) return Promise.reject(earlyData());
  if (head.length === length) return Promise.resolve(head);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [head];
    let got = head.length;
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.removeListener('data', onData);
      socket.removeListener('close', onClose);
    };
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      got += chunk.length;
      if (got < length) return;
      cleanup();
      socket.pause();
      if (got > length) reject(earlyData());
      else resolve(Buffer.concat(chunks, got));
    };
    const onClose = (): void => {
      cleanup();
      reject(new PtthError('PTTH_ERR_BAD_PARAMS', 'The claimant closed the connection before sending its body.'));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new PtthError('PTTH_ERR_BAD_PARAMS', 'The claim body did not arrive in time.'));
    }, timeout);
    socket.on('data', onData);
    socket.on('close', onClose);
  });
}

function earlyData(): PtthError {
  return new PtthError(
    'PTTH_ERR_BAD_PARAMS',
    'Bytes arrived after the claim request and before the 101: wait for the 101 before sending anything.',
  );
}

/** `Upgrade: PTTH/1.0` without `Connection: Upgrade`: an ordinary request that node parsed whole. */
export function claimFromRequest(
  ctx: GatewayContext,
  req: IncomingMessage,
  res: ServerResponse,
  hostName: string | undefined,
): void {
  let name = claimantName(req, hostName);
  const fail = (err: PtthError): void => refuseClaim(ctx, req, res, err, name);
  if (req.httpVersionMajor !== 1 || req.httpVersionMinor < 1) {
    fail(new PtthError('PTTH_ERR_HTTP10_UPGRADE'));
    return;
  }
  let how: Reversal;
  try {
    how = negotiate(req.headers.upgrade, alpnHeader(req), ctx.settings.http2);
  } catch (err) {
    fail(err as PtthError);
    return;
  }
  const nextMessage = watchNextMessage(req);
  const limit = ctx.settings.claimBodyLimit;
  if (declaresMoreThan(req, limit)) {
    fail(new PtthError('PTTH_ERR_CLAIM_BODY_TOO_LARGE'));
    return;
  }
  const body = new BoundedBody(limit);
  let failed = false;
  const timer = setTimeout(() => {
    failed = true;
    fail(new PtthError('PTTH_ERR_BAD_PARAMS', 'The claim body did not arrive in time.'));
    req.socket.destroySoon();
  }, ctx.settings.claimTimeout);
  req.on('data', (chunk: Buffer) => {
    if (failed) return;
    if (body.add(chunk) === 'too-large') {
      failed = true;
      clearTimeout(timer);
      fail(new PtthError('PTTH_ERR_CLAIM_BODY_TOO_LARGE'));
      return;
    }
  });
  req.on('error', () => clearTimeout(timer));
  req.on('end', () => {
    clearTimeout(timer);
    if (failed) return;
    // Early bytes (node's parser took them as the start of another request, or failed on them).
    if (nextMessage() || req.socket.destroyed) {
      fail(earlyData());
      return;
    }
    let params: ClaimParams;
    try {
      params = claimParams(ctx, req, hostName, body.take());
      name = params.name;
    } catch (err) {
      fail(isPtthError(err) ? err : new PtthError('PTTH_ERR_BAD_PARAMS'));
      return;
    }
    decideClaim(ctx, params, headerKey(req), req.socket.remoteAddress, true).then(
      ({ lease }) => {
        const socket = hijack(req, res);
        if (!socket) {
          lease.abandon('claim refused');
          fail(
            new PtthError(
              'PTTH_ERR_UNSUPPORTED_UPGRADE',
              'This node version cannot take over the connection: send Connection: Upgrade with Upgrade: PTTH/1.0.',
            ),
          );
          return;
        }
        socket.on('error', noop);
        if (socket.readableLength > 0) {
          socket.destroy();
          lease.abandon('claim refused');
          return;
        }
        accept(ctx, req, socket, lease, how);
      },
      (err: unknown) => fail(isPtthError(err) ? err : new PtthError('PTTH_ERR_BAD_PARAMS')),
    );
  });
}

function alpnHeader(req: IncomingMessage): string | undefined {
  const v = req.headers['alpn'];
  return Array.isArray(v) ? v.join(',') : v;
}
