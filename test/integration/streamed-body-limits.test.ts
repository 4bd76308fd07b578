import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { closed, rawConnect, readUntil, request } from '../helpers/index.js';
import { track, useGateway } from '../helpers/fixture.js';
import { fetchRaw, parseLinks, rawValues, register } from '../helpers/comet.js';

/*
 * src/http/body.ts readBody: a body with no Content-Length (chunked) is counted as it arrives and
 * refused with 413 as soon as it grows past the limit, whichever endpoint reads it: the Comet
 * registration form, a private URL's PUT, and a Comet app's reply.
 */
/** Sends a chunked request head and the first chunk, then more chunks: the body grows past `limit`. */
const CRLF = Buffer.from('\r\n');

type Upload = Promise<{ socket: Socket; answer: string }>;

async function chunkedUpload(port: number, head: string, chunks: Buffer[]): Upload {
  const socket = await rawConnect(port);
  track(socket);
  socket.on('error', () => {});
  socket.write(`${head}Transfer-Encoding: chunked\r\n\r\n`);
  for (const c of chunks) socket.write(Buffer.concat([Buffer.from(`${c.length.toString(16)}\r\n`), c, CRLF]));
  const got = await readUntil(socket, (b) => {
    const end = b.indexOf('\r\n\r\n');
    if (end === -1) return false;
    const len = /content-length: (\d+)/i.exec(b.subarray(0, end).toString('latin1'));
    return len !== null && b.length >= end + 4 + Number(len[1]);
  });
  return { socket, answer: got.toString('latin1') };
}

const header = (answer: string, name: string): string | undefined =>
  new RegExp(`^${name}: ([^\\r]*)`, 'im').exec(answer.slice(0, answer.indexOf('\r\n\r\n')))?.[1];

describe('a chunked body that grows past the limit', () => {
  it('a Comet registration form: 413 PTTH_ERR_CLAIM_BODY_TOO_LARGE, connection closed, no name made', async () => {
    const g = await useGateway({ claimBodyLimit: 100 });
    const { socket, answer } = await chunkedUpload(
      g.port,
      `POST /reversehttp HTTP/1.1\r\nHost: localhost:${g.port}\r\nContent-Type: application/x-www-form-urlencoded\r\n`,
      [Buffer.from('name=grown&pad='), Buffer.alloc(60, 0x61), Buffer.alloc(60, 0x62)],
    );
    expect(answer).toMatch(/^HTTP\/1\.1 413 /);
    expect(header(answer, 'X-Ptth-Error')).toBe('PTTH_ERR_CLAIM_BODY_TOO_LARGE');
    expect(header(answer, 'Connection')).toBe('close');
    expect(await closed(socket)).toBe(true);
    expect(g.gateway.table.lookup('grown')).toBeUndefined();
    // Under the limit the same form registers.
    const ok = await register(g.origin, { name: 'grown' });
    expect(ok.status).toBe(201);
  });

  it('a PUT to a private URL: 413 PTTH_ERR_CLAIM_BODY_TOO_LARGE, and the lease is unchanged', async () => {
    const g = await useGateway({ claimBodyLimit: 64 });
    const r = await register(g.origin, { name: 'leased', lease: '30' });
    expect(r.status).toBe(201);
    const priv = new URL(r.location as string);
    const { answer } = await chunkedUpload(
      g.port,
      `PUT ${priv.pathname} HTTP/1.1\r\nHost: ${priv.host}\r\nContent-Type: application/x-www-form-urlencoded\r\n`,
      [Buffer.from('lease=99&pad='), Buffer.alloc(40, 0x61), Buffer.alloc(40, 0x62)],
    );
    expect(answer).toMatch(/^HTTP\/1\.1 413 /);
    expect(header(answer, 'X-Ptth-Error')).toBe('PTTH_ERR_CLAIM_BODY_TOO_LARGE');
    expect(g.gateway.table.lookup('leased')?.lease).toBe(30);
  });

  it('a Comet reply over --buffer-limit: 413 PTTH_ERR_BODY_TOO_LARGE to the app, 502 to its visitor', async () => {
    const g = await useGateway({ bufferLimit: 1024 });
    const r = await register(g.origin, { name: 'replier' });
    const url = r.links['first'] as string;
    const polled = fetchRaw(url);
    const visitor = request(g.port, { host: g.host('replier'), path: '/big' });
    const delivery = await polled;
    expect(delivery.status).toBe(200);
    expect(parseLinks(rawValues(delivery.rawHeaders, 'link'))['next']).toBeDefined();
    const u = new URL(url);
    // A chunked reply: its head and the first 600 bytes fit, the next 600 do not.
    const { answer } = await chunkedUpload(
      g.port,
      `POST ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\nContent-Type: message/http\r\n`,
      [Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 1200\r\n\r\n'), Buffer.alloc(600, 97), Buffer.alloc(600, 98)],
    );
    expect(answer).toMatch(/^HTTP\/1\.1 413 /);
    expect(header(answer, 'X-Ptth-Error')).toBe('PTTH_ERR_BODY_TOO_LARGE');
    const v = await visitor;
    expect(v.status).toBe(502);
    expect(v.headers['x-ptth-error']).toBe('PTTH_ERR_BAD_RESPONSE');
  });
});
