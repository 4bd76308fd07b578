import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { Http1Channel } from '../channels/http1.js';
import { Http2Channel } from '../channels/http2.js';
import { hasToken } from '../http/headers.js';
import { PtthError, isPtthError } from '../http/errors.js';
import { sendError, writeRawError } from '../http/respond.js';
import { bearerKey } from '../routes/access.js';
import { loggableName, normalizeName, queryName, readClaimParams, type ClaimParams } from '../routes/registration.js';
import type { Registration } from '../routes/table.js';
import { privateUrlFor, publicUrlFor, type GatewayContext } from './context.js';
import { hijack, watchNextMessage } from './hijack.js';
import { addressKey } from './ratelimit.js';

/**
 * Native claims (docs/PROTOCOL.md section 2): `Upgrade: PTTH/1.0` on any path of the gateway host or
 * of the claimed app host. Two ways in, one way out:
 *  - with `Connection: Upgrade`, node's 'upgrade' event hands over the socket (claimFromUpgrade);
 *  - without it (the 2008 Second Life client), node parses an ordinary request and the socket is
 *    taken over once its body is read (claimFromRequest, via hijack.ts).
 * Both end in `accept`, which writes the byte-exact 101 and turns the socket into a channel.
 */

/** Merges query and form parameters (a form body may carry them too) and resolves the name. */
function claimParams(ctx: GatewayContext, req: IncomingMessage, hostName: string | undefined, body: Buffer | undefined): ClaimParams {
  let params: URLSearchParams;
  try {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    params = new URLSearchParams(q === -1 ? '' : url.slice(q + 1));
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

/**
 * A claim that brings a channel with it (native and WebSocket): the access check, the table's
 * claim, then room for one more channel (per name, and per key). Keys come as `Authorization:
 * Bearer` (docs/PROTOCOL.md section 2).
 */
export async function register(
  ctx: GatewayContext,
  params: ClaimParams,
  key: string | undefined,
  remote: string | undefined,
): Promise<{ registration: Registration; created: boolean }> {
  // Before the claim: a refused channel must not leave a name behind.
  ctx.caps.checkChannels(remote);
  const claimed = await claimName(ctx, params, key, remote);
  try {
    ctx.access.checkChannels(ctx.table, claimed.registration, ctx.settings.maxChannels);
  } catch (err) {
    // A name made by a refused claim would sit there with no channel, counted against the key.
    if (claimed.created) ctx.table.release(claimed.registration, 'claim refused');
    throw err;
  }
  return claimed;
}

/**
 * The table's claim under the access rules and the per-address names cap (every transport). A
 * claim that would create a name is checked against the cap first; one that reclaims a name it
 * holds is not. MemoryTable's claim creates synchronously, so the check and the creation cannot
 * interleave with another claim.
 */
export async function claimName(
  ctx: GatewayContext,
  params: ClaimParams,
  key: string | undefined,
  remote: string | undefined,
): Promise<{ registration: Registration; created: boolean }> {
  if (params.name === undefined || ctx.table.lookup(params.name) === undefined) ctx.caps.checkNames(remote);
  // Without a token the name is held by the claimant's address (IPv6: its /64), loopback included.
  const holder = params.token === undefined && remote ? addressKey(remote) : undefined;
  const claimed = await ctx.access.claim(ctx.table, { ...params, holder }, key);
  if (claimed.created) ctx.caps.holdName(claimed.registration, remote);
  return claimed;
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

/** Writes the 101 exactly as docs/PROTOCOL.md section 2 shows it and puts the channel in service. */
/**
 * A claim that made its name and then never put a channel in service (the claimant went away, or
 * lost the limits race at join time) leaves nothing behind: the name would otherwise sit for its
 * lease, counted against the key's names.
 */
function abandon(ctx: GatewayContext, reg: Registration, created: boolean): void {
  if (created && reg.channels.length === 0 && !reg.released) ctx.table.release(reg, 'claim refused');
}

function accept(ctx: GatewayContext, req: IncomingMessage, socket: Socket, reg: Registration, how: Reversal, created: boolean): void {
  if (socket.destroyed) return abandon(ctx, reg, created);
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
      if (err || socket.destroyed) {
        socket.destroy();
        return abandon(ctx, reg, created);
      }
      try {
        // Other claims of the name (or key) may have been put in service meanwhile: the limits
        // hold at the moment the channel joins. Past them the connection closes; the client's
        // next claim gets the 429 that says why.
        ctx.access.checkChannels(ctx.table, reg, ctx.settings.maxChannels);
        ctx.caps.checkChannels(socket.remoteAddress);
      } catch {
        socket.destroy();
        return abandon(ctx, reg, created);
      }
      putInService(ctx, socket, reg, how, link);
    });
    return;
  }
  socket.write(head);
  putInService(ctx, socket, reg, how, link);
}

function putInService(ctx: GatewayContext, socket: Socket, reg: Registration, how: Reversal, link: string): void {
  const s = ctx.settings;
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
  reg.addChannel(channel);
  ctx.emit('claim', { name: reg.name, url: link, transport: channel.transport, remote: channel.remote, key: reg.keyId });
}

/** The name a claim asks for, for the refuse line: the Host's, else the query's (form: see callers). */
function askedName(req: IncomingMessage, hostName: string | undefined): string | undefined {
  return loggableName(hostName) ?? queryName(req.url);
}

function refuseRaw(
  ctx: GatewayContext,
  req: IncomingMessage,
  socket: Socket,
  err: PtthError,
  name = askedName(req, undefined),
): void {
  ctx.emit('refuse', { code: err.code, status: err.status, remote: socket.remoteAddress, name });
  writeRawError(socket, err, req.headers.accept);
}

/** `Upgrade: PTTH/1.0` with `Connection: Upgrade`: node's 'upgrade' event. */
export function claimFromUpgrade(ctx: GatewayContext, req: IncomingMessage, socket: Socket, head: Buffer, hostName: string | undefined): void {
  socket.on('error', noop);
  let name = askedName(req, hostName);
  // RFC 9110 section 7.8: Upgrade in an HTTP/1.0 request is ignored, so it is never upgraded.
  if (req.httpVersionMajor !== 1 || req.httpVersionMinor < 1) {
    refuseRaw(ctx, req, socket, new PtthError('PTTH_ERR_HTTP10_UPGRADE'), name);
    return;
  }
  let how: Reversal;
  try {
    how = negotiate(req.headers.upgrade, alpnHeader(req), ctx.settings.http2);
  } catch (err) {
    refuseRaw(ctx, req, socket, err as PtthError, name);
    return;
  }
  if (req.headers['transfer-encoding'] !== undefined) {
    refuseRaw(ctx, req, socket, new PtthError('PTTH_ERR_CHUNKED_CLAIM'), name);
    return;
  }
  const length = Number(req.headers['content-length'] ?? 0);
  if (length > ctx.settings.claimBodyLimit) {
    refuseRaw(ctx, req, socket, new PtthError('PTTH_ERR_CLAIM_BODY_TOO_LARGE'), name);
    return;
  }
  if (/100-continue/i.test(req.headers.expect ?? '')) socket.write('HTTP/1.1 100 Continue\r\n\r\n');

  readDeclaredBody(socket, head, length, ctx.settings.claimTimeout)
    .then(async (body) => {
      const params = claimParams(ctx, req, hostName, body);
      name = params.name;
      const { registration, created } = await register(ctx, params, headerKey(req), socket.remoteAddress);
      accept(ctx, req, socket, registration, how, created);
    })
    .catch((err: unknown) => {
      refuseRaw(ctx, req, socket, isPtthError(err) ? err : new PtthError('PTTH_ERR_BAD_PARAMS'), name);
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
  return new PtthError('PTTH_ERR_BAD_PARAMS', 'Bytes arrived after the claim request and before the 101: wait for the 101 before sending anything.');
}

/** `Upgrade: PTTH/1.0` without `Connection: Upgrade`: an ordinary request that node parsed whole. */
export function claimFromRequest(ctx: GatewayContext, req: IncomingMessage, res: ServerResponse, hostName: string | undefined): void {
  let name = askedName(req, hostName);
  const fail = (err: PtthError): void => {
    ctx.emit('refuse', { code: err.code, status: err.status, remote: req.socket.remoteAddress, name });
    if (!res.headersSent) sendError(res, err, req.headers.accept, true);
    req.resume();
  };
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
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > limit) {
    fail(new PtthError('PTTH_ERR_CLAIM_BODY_TOO_LARGE'));
    return;
  }
  const chunks: Buffer[] = [];
  let got = 0;
  let failed = false;
  const timer = setTimeout(() => {
    failed = true;
    fail(new PtthError('PTTH_ERR_BAD_PARAMS', 'The claim body did not arrive in time.'));
    req.socket.destroySoon();
  }, ctx.settings.claimTimeout);
  req.on('data', (chunk: Buffer) => {
    if (failed) return;
    got += chunk.length;
    if (got > limit) {
      failed = true;
      clearTimeout(timer);
      fail(new PtthError('PTTH_ERR_CLAIM_BODY_TOO_LARGE'));
      return;
    }
    chunks.push(chunk);
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
      params = claimParams(ctx, req, hostName, Buffer.concat(chunks, got));
      name = params.name;
    } catch (err) {
      fail(isPtthError(err) ? err : new PtthError('PTTH_ERR_BAD_PARAMS'));
      return;
    }
    register(ctx, params, headerKey(req), req.socket.remoteAddress).then(
      ({ registration: reg, created }) => {
        const socket = hijack(req, res);
        if (!socket) {
          abandon(ctx, reg, created);
          fail(new PtthError('PTTH_ERR_UNSUPPORTED_UPGRADE', 'This node version cannot take over the connection: send Connection: Upgrade with Upgrade: PTTH/1.0.'));
          return;
        }
        socket.on('error', noop);
        if (socket.readableLength > 0) {
          socket.destroy();
          abandon(ctx, reg, created);
          return;
        }
        accept(ctx, req, socket, reg, how, created);
      },
      (err: unknown) => fail(isPtthError(err) ? err : new PtthError('PTTH_ERR_BAD_PARAMS')),
    );
  });
}

function alpnHeader(req: IncomingMessage): string | undefined {
  const v = req.headers['alpn'];
  return Array.isArray(v) ? v.join(',') : v;
}

function noop(): void {}
