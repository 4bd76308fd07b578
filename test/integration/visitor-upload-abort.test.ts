import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { rawConnect, readUntil, request, until } from '../helpers/index.js';
import { cleanup, track, useApp, useGateway } from '../helpers/fixture.js';
import { RawWsApp } from '../helpers/wsapp.js';

/*
 * A visitor that disconnects in the middle of its request body. On a WebSocket channel the app
 * gets an `abort` for that stream and the channel carries on; on an HTTP/1.1 channel the reversed
 * connection is mid-message, so it is closed (the app's request is aborted) and the app dials a
 * fresh one. Either way the gateway keeps serving.
 */
/** Starts an upload of `declared` bytes, sends `sent` of them, and returns the visitor's socket. */
async function partialUpload(port: number, host: string, declared: number, sent: number): Promise<Socket> {
  const s = await rawConnect(port);
  track(s);
  s.on('error', () => {});
  s.write(`POST /upload HTTP/1.1\r\nHost: ${host}\r\nContent-Length: ${declared}\r\n\r\n`);
  s.write(Buffer.alloc(sent, 0x78));
  return s;
}

describe('a visitor that disconnects mid-upload', () => {
  it('WebSocket channel: the app gets an abort for the stream; the channel stays and serves the next', async () => {
    const g = await useGateway({ responseTimeout: 2_000 });
    const app = await RawWsApp.connect(g.port, { name: 'wsabort' });
    cleanup(() => app.close());
    const visitor = await partialUpload(g.port, g.host('wsabort'), 10_000, 1_000);
    const req = await app.control('request');
    const id = req['id'] as number;
    expect(req['body']).toBe(true);
    // Some of the body reached the app before the visitor went away.
    await until(() => app.takeFrames(id).length > 0, 3_000, 'the first body bytes');
    visitor.destroy();
    const abort = await app.control('abort', id);
    expect(abort['id']).toBe(id);
    expect(app.closeCode).toBeUndefined();

    // The same WebSocket carries the next request.
    const next = request(g.port, { host: g.host('wsabort'), path: '/after' });
    const second = await app.control('request');
    expect(second['url']).toBe('/after');
    expect(second['id']).not.toBe(id);
    app.respond(second['id'] as number, 200, 'still here');
    const r = await next;
    expect(r.status).toBe(200);
    expect(r.body).toBe('still here');
    expect(g.gateway.table.lookup('wsabort')?.channels.length).toBe(1);
  });

  it('HTTP/1.1 channel: the app sees its request aborted, the channel is replaced, the next is served', async () => {
    const g = await useGateway({ responseTimeout: 2_000 });
    const seen: { url: string; aborted: boolean; got: number }[] = [];
    await useApp(
      g.port,
      (req: IncomingMessage, res) => {
        const rec = { url: req.url ?? '', aborted: false, got: 0 };
        seen.push(rec);
        req.on('data', (c: Buffer) => (rec.got += c.length));
        req.on('error', () => {});
        req.on('close', () => {
          if (!req.complete) rec.aborted = true;
        });
        req.on('end', () => res.end(`read ${rec.got}`));
      },
      { name: 'h1abort', http1: true, connections: 1 },
    );
    const opened: number[] = [];
    g.gateway.on('channel-open', (_reg, ch) => opened.push(ch.id));
    const closed: number[] = [];
    g.gateway.on('channel-close', (_reg, ch) => closed.push(ch.id));
    const [first] = g.gateway.table.lookup('h1abort')?.channels ?? [];

    const visitor = await partialUpload(g.port, g.host('h1abort'), 10_000, 1_000);
    await until(() => (seen[0]?.got ?? 0) > 0, 3_000, 'the first body bytes at the app');
    visitor.destroy();
    await until(() => seen[0]?.aborted === true, 3_000, "the app's request to be aborted");
    // The reversed connection was mid-message: it closed, and the app dialled a new one.
    await until(() => closed.includes(first?.id ?? -1) && opened.length >= 1, 3_000, 'the channel to be replaced');

    const r = await request(g.port, { host: g.host('h1abort'), method: 'POST', path: '/after', body: 'abc' });
    expect(r.status).toBe(200);
    expect(r.body).toBe('read 3');
    expect(seen.map((s) => [s.url, s.aborted])).toEqual([
      ['/upload', true],
      ['/after', false],
    ]);
  });

  it('a chunked body malformed mid-upload: 400 to the visitor, abort to the WebSocket app, channel kept', async () => {
    const g = await useGateway({ responseTimeout: 2_000 });
    const app = await RawWsApp.connect(g.port, { name: 'badchunk' });
    cleanup(() => app.close());
    const visitor = await rawConnect(g.port);
    track(visitor);
    visitor.write(`POST /c HTTP/1.1\r\nHost: ${g.host('badchunk')}\r\nTransfer-Encoding: chunked\r\n\r\n`);
    visitor.write('5\r\nhello\r\n');
    const req = await app.control('request');
    const id = req['id'] as number;
    let got = Buffer.alloc(0);
    await until(
      () => {
        for (const f of app.takeFrames(id)) got = Buffer.concat([got, f.payload]);
        return got.length === 5;
      },
      3_000,
      'the first chunk at the app',
    );
    expect(got.toString()).toBe('hello');
    visitor.write('zz\r\nnot a chunk\r\n');
    const answer = await readUntil(visitor, (b) => b.includes('HPE_'));
    expect(answer.toString('latin1')).toMatch(/^HTTP\/1\.1 400 [^]*HPE_INVALID_CHUNK_SIZE/);
    const abort = await app.control('abort', id);
    expect(abort['id']).toBe(id);
    const next = request(g.port, { host: g.host('badchunk'), path: '/next' });
    const second = await app.control('request');
    app.respond(second['id'] as number, 200, 'ok');
    expect((await next).status).toBe(200);
    expect(app.closeCode).toBeUndefined();
  });
});
