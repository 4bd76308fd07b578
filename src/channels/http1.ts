import { Agent, request, type ClientRequest, type ClientRequestArgs, type IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import { pipeline } from 'node:stream';
import { PtthError } from '../http/errors.js';
import { clientAddress, unframedBody, withBodyFraming } from '../http/headers.js';
import { leaveOnEnd, rawHead, relay, splice } from '../http/relay.js';
import { channelId, type Channel, type ChannelEvents, type Exchange, type UpgradeExchange } from './channel.js';

export interface Http1ChannelOptions {
  /** Milliseconds from the end of the request body to the app's response head (504 past it). */
  readonly responseTimeout: number;
}

/**
 * node:http's client over the one reversed socket. `createConnection` hands the socket to the
 * first request; `keepSocketAlive` is overridden so that no idle timer (ours or a `Keep-Alive:
 * timeout` hint from the app) ever closes a channel the app keeps open.
 */
class ChannelAgent extends Agent {
  #socket: Socket | undefined;
  constructor(socket: Socket) {
    super({ keepAlive: true, maxSockets: 1, maxFreeSockets: 1, scheduling: 'fifo' });
    this.#socket = socket;
  }
  override createConnection(_options: ClientRequestArgs, callback?: (err: Error | null, stream: Duplex) => void): Duplex | undefined {
    const socket = this.#socket;
    if (!socket) {
      // The agent asks again only when a request was queued on a socket that then closed. That
      // request fails (502 to its visitor) through its 'error' event; throwing here would escape
      // from the agent's 'close' handler and end the process.
      callback?.(new Error('the reversed connection is closed'), undefined as unknown as Duplex);
      return undefined;
    }
    this.#socket = undefined;
    return socket;
  }
  override keepSocketAlive(): boolean {
    return true;
  }
}

/** A reversed HTTP/1.1 connection (PTTH/1.0): the gateway is the client, the app the server. */
export class Http1Channel implements Channel {
  readonly id = channelId();
  readonly transport = 'http1' as const;
  readonly remote: string;
  readonly openedAt = Date.now();
  readonly upgradable = true;
  events: ChannelEvents | undefined;
  #socket: Socket;
  #agent: ChannelAgent;
  #options: Http1ChannelOptions;
  #active = 0;
  #served = 0;
  #closed = false;
  #started = false;
  /** False once the app said it will close the connection after the current response. */
  #reusable = true;
  /**
   * Request bodies still going down after their exchange ended: the app answered before reading
   * the whole upload. node's agent keeps the socket until the body is sent, so a request
   * dispatched meanwhile would wait inside the agent, outside every gateway timeout.
   */
  #uploading = 0;

  constructor(socket: Socket, options: Http1ChannelOptions) {
    this.#socket = socket;
    this.#options = options;
    // One form everywhere (logs, status page, metrics): `127.0.0.1`, not `::ffff:127.0.0.1`.
    this.remote = `${clientAddress(socket.remoteAddress) || '?'}:${socket.remotePort ?? 0}`;
    this.#agent = new ChannelAgent(socket);
    socket.setNoDelay(true);
    // TCP keepalive probes find dead peers on idle channels without closing live ones.
    socket.setKeepAlive(true, 30_000);
    socket.setTimeout(0);
    socket.on('close', this.#onClose);
    socket.on('error', noop);
    // node:http servers allow half-open sockets: the app's FIN alone would leave this channel open.
    socket.on('end', () => socket.end());
    // docs/PROTOCOL.md section 2: bytes from the app before the first reversed request are a protocol error.
    socket.on('data', this.#onEarlyData);
    // The claim may have paused the socket while reading its body; the channel must see EOF and early data.
    socket.resume();
  }

  get active(): number {
    return this.#active;
  }
  get served(): number {
    return this.#served;
  }
  get available(): boolean {
    // destroyed: the channel gave up on its socket and its 'close' event has not run yet.
    return !this.#closed && this.#reusable && this.#active === 0 && this.#uploading === 0 && !this.#socket.destroyed;
  }
  get closed(): boolean {
    return this.#closed;
  }

  #onEarlyData = (): void => {
    this.#socket.destroy();
  };

  #onClose = (): void => {
    if (this.#closed) return;
    this.#closed = true;
    this.#agent.destroy();
    this.events?.closed(this);
  };

  #start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#socket.removeListener('data', this.#onEarlyData);
  }

  close(): void {
    this.#socket.destroy();
  }

  dispatch(ex: Exchange): void {
    this.#start();
    this.#active++;
    const { req, res } = ex;
    let finished = false;
    let timer: NodeJS.Timeout | undefined;
    const finish = (): void => {
      if (finished) return;
      finished = true;
      if (timer) clearTimeout(timer);
      this.#active--;
      this.#served++;
      ex.done();
      const sending = out as ClientRequest | undefined;
      if (sending && !sending.writableFinished && !sending.destroyed) {
        // The channel is free again once the rest of the body is down (or the channel is gone).
        this.#uploading++;
        let counted = true;
        const sent = (): void => {
          if (!counted) return;
          counted = false;
          this.#uploading--;
          if (this.available) this.events?.available(this);
        };
        sending.once('finish', sent);
        sending.once('close', sent);
        return;
      }
      if (this.available) this.events?.available(this);
    };

    let out: ClientRequest;
    try {
      out = request({
        agent: this.#agent,
        method: req.method,
        path: req.url,
        headers: withBodyFraming(ex.headers, unframedBody(req)),
        setHost: false,
      });
    } catch (err) {
      // node refused the header list or path; nothing was written to the channel.
      ex.fail(new PtthError('PTTH_ERR_BAD_PARAMS', `The request could not be forwarded: ${(err as Error).message}`));
      finish();
      return;
    }
    let responded = false;

    out.on('response', (appRes: IncomingMessage) => {
      responded = true;
      if (timer) clearTimeout(timer);
      // `Connection: close` (or an HTTP/1.0 answer without keep-alive): the app ends this channel.
      if (!out.shouldKeepAlive) this.#reusable = false;
      if (ex.respond(appRes.statusCode, appRes.statusMessage, appRes.rawHeaders)) {
        // The rest of this response cannot be trusted to be framed as node read it: the
        // connection carries nothing more (the app opens a fresh one).
        appRes.destroy();
        out.destroy();
        this.#socket.destroy();
        finish();
        return;
      }
      relay(appRes, res, (err) => {
        // A visitor that went away mid-response leaves the reversed connection mid-message: it
        // cannot carry another request, so it is closed and the app opens a fresh one.
        if (err) {
          if (!appRes.complete) this.#socket.destroy();
          res.destroy();
        }
        finish();
      });
    });

    // A 101 to a request that asked for no upgrade: node hands over the socket (or, with no
    // listener, destroys it without an 'error', which left the visitor waiting for the response
    // timeout). Either way the app broke the exchange and the channel is done.
    out.on('upgrade', (_appRes: IncomingMessage, socket: Duplex) => {
      socket.destroy();
      this.#socket.destroy();
      if (finished) return;
      ex.fail(new PtthError('PTTH_ERR_BAD_RESPONSE', 'The app answered 101 Switching Protocols to a request that asked for no upgrade.'));
      finish();
    });

    out.on('error', (err: NodeJS.ErrnoException) => {
      if (finished) return;
      if (!responded) {
        const parse = typeof err.code === 'string' && err.code.startsWith('HPE_');
        ex.fail(
          parse
            ? new PtthError('PTTH_ERR_BAD_RESPONSE', `The app sent an invalid response (${err.code}).`)
            : new PtthError('PTTH_ERR_CHANNEL_LOST'),
        );
        this.#socket.destroy();
        finish();
      }
      // After the head, pipeline() reports the failure and closes the visitor's connection.
    });

    // The response timer starts once the whole request body went down the channel.
    out.on('finish', () => {
      if (responded || finished) return;
      timer = setTimeout(() => {
        ex.fail(new PtthError('PTTH_ERR_APP_TIMEOUT'));
        this.#socket.destroy();
        finish();
      }, this.#options.responseTimeout);
    });

    res.on('close', () => {
      // The visitor left before the response finished: abandon the exchange.
      if (!res.writableFinished && !finished) {
        out.destroy();
        this.#socket.destroy();
        finish();
      }
    });

    if (req.headers['content-length'] === undefined && req.headers['transfer-encoding'] === undefined) {
      // No body (most requests): no stream plumbing on the hot path. A visitor that leaves is seen
      // by res 'close' above.
      req.resume();
      out.end();
      return;
    }
    relay(
      req,
      out,
      (err) => {
        if (err && !finished) {
          // The visitor's body failed (they disconnected): the channel is mid-message.
          this.#socket.destroy();
          finish();
        }
      },
      {
        // An app that takes none of the body for responseTimeout never will (the response timer
        // only starts once the body is sent, so without this the exchange would wait forever).
        ms: this.#options.responseTimeout,
        onStall: () => {
          // Mid-message either way: the connection cannot carry another request.
          this.#socket.destroy();
          if (finished) return;
          ex.fail(new PtthError('PTTH_ERR_APP_TIMEOUT', 'The app stopped reading the request body.'));
          finish();
        },
      },
    );
  }

  upgrade(ex: UpgradeExchange): void {
    this.#start();
    this.#active++;
    const { req, socket: visitor } = ex;
    let finished = false;
    const finish = (): void => {
      if (finished) return;
      finished = true;
      this.#active--;
      this.#served++;
      ex.done();
    };
    let out: ClientRequest;
    try {
      out = request({ agent: this.#agent, method: req.method, path: req.url, headers: ex.headers, setHost: false });
    } catch (err) {
      // node refused the header list or path; nothing was written to the channel.
      ex.fail(new PtthError('PTTH_ERR_BAD_PARAMS', `The upgrade could not be forwarded: ${(err as Error).message}`));
      finish();
      if (!this.#closed) this.events?.available(this);
      return;
    }
    const timer = setTimeout(() => {
      ex.fail(new PtthError('PTTH_ERR_APP_TIMEOUT'));
      this.#socket.destroy();
      finish();
    }, this.#options.responseTimeout);
    visitor.on('error', noop);
    visitor.once('close', () => {
      if (!finished) {
        clearTimeout(timer);
        out.destroy();
        this.#socket.destroy();
        finish();
      }
    });

    out.on('upgrade', (appRes: IncomingMessage, appSocket: Socket, appHead: Buffer) => {
      clearTimeout(timer);
      // The reversed connection now carries the visitor's protocol: it leaves the pool.
      this.#closed = true;
      this.#socket.removeListener('close', this.#onClose);
      this.events?.closed(this);
      appSocket.on('error', noop);
      const head = ex.check(101, appRes.statusMessage, appRes.rawHeaders);
      if (visitor.destroyed || head instanceof PtthError) {
        if (head instanceof PtthError) ex.fail(head);
        appSocket.destroy();
        finish();
        return;
      }
      // The relayed 101 is written by hand: node's client has already parsed it (docs/PROTOCOL.md section 8).
      visitor.write(rawHead(101, head.reason, head.headers));
      if (appHead.length > 0) visitor.write(appHead);
      if (ex.head.length > 0) appSocket.write(ex.head);
      splice(visitor, appSocket, finish);
    });

    out.on('response', (appRes: IncomingMessage) => {
      // The app declined the upgrade: relay its answer and close the visitor's connection.
      clearTimeout(timer);
      const head = ex.check(appRes.statusCode, appRes.statusMessage, appRes.rawHeaders);
      if (head instanceof PtthError) {
        ex.fail(head);
        appRes.destroy();
        this.#socket.destroy();
        finish();
        return;
      }
      const raw = head.headers.filter((_, i, a) => (a[i - (i % 2)] as string).toLowerCase() !== 'content-length');
      visitor.write(rawHead(head.status, head.reason, raw, 'Connection: close\r\n'));
      leaveOnEnd(visitor);
      pipeline(appRes, visitor, (err) => {
        // Only a refusal read to its end leaves the reversed connection between messages; one cut
        // short (the visitor left) leaves it mid-message, and it carries nothing more.
        if (err || !appRes.complete) this.#socket.destroy();
        finish();
        if (this.available) this.events?.available(this);
      });
    });

    out.on('error', (err: NodeJS.ErrnoException) => {
      if (finished) return;
      clearTimeout(timer);
      const parse = typeof err.code === 'string' && err.code.startsWith('HPE_');
      ex.fail(parse ? new PtthError('PTTH_ERR_BAD_RESPONSE') : new PtthError('PTTH_ERR_CHANNEL_LOST'));
      this.#socket.destroy();
      finish();
    });
    out.end();
  }
}

function noop(): void {}
