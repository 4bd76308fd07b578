import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { Http1Channel } from '../channels/http1.js';
import { PtthError, isPtthError } from '../http/errors.js';
import { sendError, writeRawError } from '../http/respond.js';
import { normalizeName, readClaimParams, type ClaimParams } from '../routes/registration.js';
import type { Registration } from '../routes/table.js';
import { privateUrlFor, publicUrlFor, type GatewayContext } from './context.js';
import { hijack, watchNextMessage } from './hijack.js';

/**
 * Native claims (PROTOCOL.md sections 2-3): `Upgrade: PTTH/1.0` on any path of the gateway host or
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

async function register(ctx: GatewayContext, params: ClaimParams): Promise<Registration> {
  const { registration } = await ctx.table.claim(params);
  if (registration.channels.length >= ctx.settings.maxChannels) {
    throw new PtthError(
      'PTTH_ERR_TOO_MANY_CHANNELS',
      `The name "${registration.name}" already has ${registration.channels.length} channels, the most this gateway allows.`,
    );
  }
  return registration;
}

/** Writes the 101 exactly as PROTOCOL.md section 3 shows it and puts the channel in service. */
function accept(ctx: GatewayContext, req: IncomingMessage, socket: Socket, reg: Registration): void {
  if (socket.destroyed) return;
  const link = publicUrlFor(ctx.settings, req, reg.name);
  const location = privateUrlFor(ctx.settings, req, reg.privateId);
  socket.write(
    'HTTP/1.1 101 Switching Protocols\r\n' +
      'Upgrade: PTTH/1.0\r\n' +
      'Connection: Upgrade\r\n' +
      `Link: <${link}>; rel="related"\r\n` +
      `Location: ${location}\r\n` +
      '\r\n',
  );
  const channel = new Http1Channel(socket, { responseTimeout: ctx.settings.responseTimeout });
  reg.addChannel(channel);
  ctx.emit('claim', { name: reg.name, url: link, transport: 'http1', remote: channel.remote });
}

function refuseRaw(ctx: GatewayContext, req: IncomingMessage, socket: Socket, err: PtthError): void {
  ctx.emit('refuse', { code: err.code, status: err.status, remote: socket.remoteAddress });
  writeRawError(socket, err, req.headers.accept);
}

/** `Upgrade: PTTH/1.0` with `Connection: Upgrade`: node's 'upgrade' event. */
export function claimFromUpgrade(ctx: GatewayContext, req: IncomingMessage, socket: Socket, head: Buffer, hostName: string | undefined): void {
  socket.on('error', noop);
  // RFC 9110 section 7.8: Upgrade in an HTTP/1.0 request is ignored, so it is never upgraded.
  if (req.httpVersionMajor !== 1 || req.httpVersionMinor < 1) {
    refuseRaw(ctx, req, socket, new PtthError('PTTH_ERR_HTTP10_UPGRADE'));
    return;
  }
  if (req.headers['transfer-encoding'] !== undefined) {
    refuseRaw(ctx, req, socket, new PtthError('PTTH_ERR_CHUNKED_CLAIM'));
    return;
  }
  const length = Number(req.headers['content-length'] ?? 0);
  if (length > ctx.settings.claimBodyLimit) {
    refuseRaw(ctx, req, socket, new PtthError('PTTH_ERR_CLAIM_BODY_TOO_LARGE'));
    return;
  }
  if (/100-continue/i.test(req.headers.expect ?? '')) socket.write('HTTP/1.1 100 Continue\r\n\r\n');

  readDeclaredBody(socket, head, length, ctx.settings.claimTimeout)
    .then(async (body) => {
      const reg = await register(ctx, claimParams(ctx, req, hostName, body));
      accept(ctx, req, socket, reg);
    })
    .catch((err: unknown) => {
      refuseRaw(ctx, req, socket, isPtthError(err) ? err : new PtthError('PTTH_ERR_BAD_PARAMS'));
    });
}

/**
 * Reads exactly `length` bytes (the body llhttp left to us with the upgrade). Bytes past it, sent
 * before the 101, are a protocol error (PROTOCOL.md section 3).
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
  const fail = (err: PtthError): void => {
    ctx.emit('refuse', { code: err.code, status: err.status, remote: req.socket.remoteAddress });
    if (!res.headersSent) sendError(res, err, req.headers.accept, true);
    req.resume();
  };
  if (req.httpVersionMajor !== 1 || req.httpVersionMinor < 1) {
    fail(new PtthError('PTTH_ERR_HTTP10_UPGRADE'));
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
    } catch (err) {
      fail(isPtthError(err) ? err : new PtthError('PTTH_ERR_BAD_PARAMS'));
      return;
    }
    register(ctx, params).then(
      (reg) => {
        const socket = hijack(req, res);
        if (!socket) {
          fail(new PtthError('PTTH_ERR_UNSUPPORTED_UPGRADE', 'This node version cannot take over the connection: send Connection: Upgrade with Upgrade: PTTH/1.0.'));
          return;
        }
        socket.on('error', noop);
        if (socket.readableLength > 0) {
          socket.destroy();
          return;
        }
        accept(ctx, req, socket, reg);
      },
      (err: unknown) => fail(isPtthError(err) ? err : new PtthError('PTTH_ERR_BAD_PARAMS')),
    );
  });
}

function noop(): void {}
