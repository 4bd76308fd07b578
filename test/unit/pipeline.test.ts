import { describe, expect, it, vi } from 'vitest';
import { acceptsPipeline } from '../../src/gateway/comet.js';
import { InvalidMessageError, parseResponses } from '../../src/http/message.js';

/* The pieces of pipelined Comet polls (docs/PROTOCOL.md section 5.7) that need no sockets. */

describe('acceptsPipeline', () => {
  it('is true only when Accept names application/http with a q above 0', () => {
    expect(acceptsPipeline('application/http')).toBe(true);
    expect(acceptsPipeline('message/http, Application/HTTP; q=0.5')).toBe(true);
    expect(acceptsPipeline(undefined)).toBe(false);
    expect(acceptsPipeline('*/*')).toBe(false);
    expect(acceptsPipeline('application/*')).toBe(false);
    expect(acceptsPipeline('message/http')).toBe(false);
    expect(acceptsPipeline('application/http;q=0')).toBe(false);
    expect(acceptsPipeline('application/https')).toBe(false);
  });
});

describe('parseResponses (llhttp)', () => {
  const ok = (body: string): string => `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`;

  it('reads a pipeline of responses in order, whatever their framing, skipping interim 1xx', () => {
    const bytes = Buffer.from(
      `${ok('a')}HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nb\r\n0\r\n\r\nHTTP/1.0 404 Not Found\r\n\r\nto the end`,
    );
    const { responses } = parseResponses(bytes, ['GET', 'POST', 'GET']);
    expect(responses.map((r) => [r.status, r.statusMessage, r.body.toString()])).toEqual([
      [200, 'OK', 'a'],
      [201, 'Created', 'b'],
      [404, 'Not Found', 'to the end'],
    ]);
    expect(responses[1]?.rawHeaders).toEqual(['Transfer-Encoding', 'chunked']);
  });

  it('keeps header lists longer than llhttp hands over at once', () => {
    const many = Array.from({ length: 100 }, (_, i) => `H${i}: ${i}\r\n`).join('');
    const { responses } = parseResponses(Buffer.from(`HTTP/1.1 200 OK\r\n${many}Content-Length: 0\r\n\r\n${ok('z')}`), [
      'GET',
      'GET',
    ]);
    expect(responses[0]?.rawHeaders).toHaveLength(202);
    expect(responses[1]?.body.toString()).toBe('z');
  });

  it('takes a response that says Connection: close as the end of that message only', () => {
    const close = 'HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nc';
    expect(parseResponses(Buffer.from(close + ok('d')), ['GET', 'GET']).responses).toHaveLength(2);
  });

  it('fewer responses than requests is no error; none at all neither', () => {
    expect(parseResponses(Buffer.from(ok('a')), ['GET', 'GET', 'GET']).responses).toHaveLength(1);
    expect(parseResponses(Buffer.alloc(0), ['GET']).responses).toHaveLength(0);
  });

  it('refuses more responses, garbage, truncation, 101 and other versions', () => {
    const bad = [
      [ok('a') + ok('b'), 'more responses'],
      [`${ok('a')}junk\r\n\r\n`, 'HPE_'],
      ['HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab', 'shorter'],
      ['HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n', '101'],
      ['HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n', 'HTTP/2'],
    ] as const;
    for (const [bytes, why] of bad) {
      expect(() => parseResponses(Buffer.from(bytes), ['GET'])).toThrow(InvalidMessageError);
      expect(() => parseResponses(Buffer.from(bytes), ['GET'])).toThrow(why);
    }
  });
});

describe('a node without the llhttp binding (_http_common, deprecated in the documentation)', () => {
  it('offers no pipelines: pipelineParserAvailable is false and a reply pipeline is refused, not a crash', async () => {
    vi.resetModules();
    vi.doMock('node:module', async (load) => {
      const real = await load<typeof import('node:module')>();
      return {
        ...real,
        createRequire: (from: string | URL) => {
          const req = real.createRequire(from);
          return Object.assign((id: string): unknown => {
            if (id === '_http_common') throw new Error(`Cannot find module '${id}'`);
            return req(id);
          }, req);
        },
      };
    });
    try {
      const fresh = await import('../../src/http/message.js');
      expect(fresh.pipelineParserAvailable()).toBe(false);
      expect(() => fresh.parseResponses(Buffer.from('HTTP/1.1 200 OK\r\n\r\n'), ['GET'])).toThrow(
        fresh.InvalidMessageError,
      );
    } finally {
      vi.doUnmock('node:module');
      vi.resetModules();
    }
  });
});
