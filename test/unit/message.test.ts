import { describe, expect, it } from 'vitest';
import { parseResponse } from '../../src/http/message.js';

/** Comet replies are parsed by llhttp (node's client over an in-memory connection); these pin what counts as one valid response. */
const ok = (raw: string, method = 'GET') => parseResponse(Buffer.from(raw, 'latin1'), method);
const why = (raw: string, method = 'GET') =>
  ok(raw, method).then(
    () => 'accepted',
    (e: Error) => e.message,
  );

describe('parseResponse', () => {
  it('accepts Content-Length, chunked and read-until-end bodies', async () => {
    expect((await ok('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi')).body.toString()).toBe('hi');
    expect(
      (await ok('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n')).body.toString(),
    ).toBe('hi');
    expect((await ok('HTTP/1.1 200 OK\r\n\r\nuntil eof')).body.toString()).toBe('until eof');
    expect((await ok('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n', 'HEAD')).body.length).toBe(0);
  });

  it('refuses trailing bytes, a second response included', async () => {
    expect(await why('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiXYZ')).toMatch(/HPE_/);
    expect(
      await why('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged'),
    ).toBe('bytes follow the response');
  });

  it('refuses short bodies, 101s, impossible statuses and other versions', async () => {
    expect(await why('HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhi')).toMatch(/shorter/);
    expect(await why('HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n')).toMatch(/101/);
    expect(await why('HTTP/1.1 999 Nope\r\nContent-Length: 0\r\n\r\n')).toMatch(/not an HTTP status code/);
    expect(await why('HTTP/0.9 200 OK\r\n\r\n')).toMatch(/not HTTP\/1\.x/);
    expect(await why('')).toMatch(/no complete response/);
  });
});
