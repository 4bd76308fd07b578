import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { rawConnect, readUntil, until } from '../helpers/index.js';
import { cleanup, track, useGateway } from '../helpers/fixture.js';
import { RawWsApp } from '../helpers/wsapp.js';

/*
 * src/channels/websocket.ts HIGH_WATER: when the app stops reading its WebSocket, the gateway's
 * send buffer for it grows; past 1 MiB the gateway stops reading visitors' bodies (their TCP
 * windows close) and starts again once the buffer drained. With a stream window far larger than
 * the upload, credit never holds the body back: only the high-water mark does.
 */
const TOTAL = 16 * 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe('a WebSocket-channel app that stops reading while a visitor uploads', () => {
  it('the gateway stops reading the visitor, resumes once the app reads, and the body arrives whole', async () => {
    const g = await useGateway({ wsWindow: 2 * TOTAL, responseTimeout: 5_000 });
    const app = await RawWsApp.connect(g.port, { name: 'slowws' });
    cleanup(() => app.close());
    // The gateway's side of the visitor's request, to see how much of the upload it has read.
    let upload: IncomingMessage | undefined;
    g.gateway.server.on('request', (req: IncomingMessage) => {
      if (req.method === 'PUT') upload = req;
    });
    app.ws.pause();

    const body = Buffer.alloc(TOTAL);
    for (let i = 0; i < TOTAL; i += 4) body.writeUInt32BE(i, i);
    const visitor = await rawConnect(g.port);
    track(visitor);
    visitor.on('error', () => {});
    visitor.write(`PUT /upload HTTP/1.1\r\nHost: ${g.host('slowws')}\r\nContent-Length: ${TOTAL}\r\n\r\n`);
    visitor.write(body);

    // The gateway stops reading: its count of the visitor's bytes stays put for 5 polls in a row.
    let last = -1;
    let still = 0;
    await until(
      () => {
        const read = upload?.socket.bytesRead ?? -1;
        still = read === last && read > 0 ? still + 1 : 0;
        last = read;
        return still >= 5;
      },
      10_000,
      'the gateway to stop reading the visitor',
    );
    const readWhilePaused = last;
    // Far from all of it: the app's WebSocket holds at most the high-water mark beyond what TCP buffers.
    expect(readWhilePaused).toBeLessThan(TOTAL);
    expect(visitor.writableLength).toBeGreaterThan(0);

    app.ws.resume();
    const request = await app.control('request', undefined, 5_000);
    const id = request['id'] as number;
    const got = await app.body(id, 10_000);
    expect(got.length).toBe(TOTAL);
    expect(sha(got)).toBe(sha(body));
    app.respond(id, 200, sha(got));
    const answer = await readUntil(visitor, (b) => b.includes(sha(body)), 5_000);
    expect(answer.toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    expect(upload?.socket.bytesRead).toBeGreaterThan(TOTAL);
  });
});
