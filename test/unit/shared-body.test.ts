import { PassThrough } from 'node:stream';
import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { BodyPrefix, BoundedBody, declaresMoreThan, readBody, type BufferBudget } from '../../src/http/body.js';
import { fromH2Headers, toH2Headers } from '../../src/http/h2headers.js';

const b = (s: string): Buffer => Buffer.from(s);

describe('BoundedBody gathers a body within its limit and the shared budget', () => {
  it('keeps chunks up to the limit and gives them back joined', () => {
    const body = new BoundedBody(10);
    expect(body.add(b('hello'))).toBe('kept');
    expect(body.add(b(' you'))).toBe('kept');
    expect(body.size).toBe(9);
    expect(body.take().toString()).toBe('hello you');
  });

  it('gives a one-chunk body back as that chunk, not a copy', () => {
    const body = new BoundedBody(10);
    const chunk = b('one');
    body.add(chunk);
    expect(body.take()).toBe(chunk);
  });

  it('refuses the chunk that goes past the limit', () => {
    const body = new BoundedBody(5);
    expect(body.add(b('abc'))).toBe('kept');
    expect(body.add(b('def'))).toBe('too-large');
    expect(body.size).toBe(6);
  });

  it('counts kept bytes against the budget, refuses past it, and gives them back on release', () => {
    const budget: BufferBudget = { used: 90, max: 100 };
    const body = new BoundedBody(1000, budget);
    expect(body.add(b('12345'))).toBe('kept');
    expect(budget.used).toBe(95);
    expect(body.add(b('123456'))).toBe('over-budget');
    expect(budget.used).toBe(95);
    body.release();
    expect(budget.used).toBe(90);
    body.release();
    expect(budget.used).toBe(90);
  });

  it('checks the limit before the budget', () => {
    const budget: BufferBudget = { used: 100, max: 100 };
    expect(new BoundedBody(2, budget).add(b('abc'))).toBe('too-large');
  });
});

describe('BodyPrefix keeps the start of a body and counts all of it', () => {
  it('keeps whole chunks until it holds max bytes', () => {
    const prefix = new BodyPrefix(4);
    for (const c of ['ab', 'cd', 'ef']) prefix.add(b(c));
    expect(prefix.kept().toString()).toBe('abcd');
    expect(prefix.size).toBe(6);
  });

  it('keeps a chunk that crosses max whole (the caller cuts)', () => {
    const prefix = new BodyPrefix(4);
    prefix.add(b('abc'));
    prefix.add(b('defg'));
    expect(prefix.kept().toString()).toBe('abcdefg');
  });
});

function fakeRequest(headers: Record<string, string> = {}): IncomingMessage & PassThrough {
  const req = new PassThrough() as unknown as IncomingMessage & PassThrough;
  Object.assign(req, { headers, complete: false });
  return req;
}

describe('readBody', () => {
  it('refuses a declared Content-Length over the limit before reading', async () => {
    const req = fakeRequest({ 'content-length': '11' });
    expect(declaresMoreThan(req, 10)).toBe(true);
    const refused = { code: 'PTTH_ERR_BODY_TOO_LARGE', message: 'too big' };
    await expect(readBody(req, 10, 'too big')).rejects.toMatchObject(refused);
  });

  it('reads a body within the limit, its budget bytes still counted', async () => {
    const budget: BufferBudget = { used: 0, max: 100 };
    const req = fakeRequest();
    const read = readBody(req, 10, 'too big', undefined, budget);
    req.end('abcdef');
    expect((await read).toString()).toBe('abcdef');
    expect(budget.used).toBe(6);
  });

  it('refuses a body past the budget with 503 and gives the bytes back', async () => {
    const budget: BufferBudget = { used: 0, max: 4 };
    const req = fakeRequest();
    const read = readBody(req, 10, 'too big', undefined, budget);
    req.write('abc');
    req.write('def');
    await expect(read).rejects.toMatchObject({ code: 'PTTH_ERR_QUEUE_FULL', status: 503 });
    expect(budget.used).toBe(0);
  });
});

describe('HTTP/2 header objects and flat raw lists', () => {
  it('folds a raw list into an object: lower-case names, repeats as arrays', () => {
    const raw = ['X-A', '1', 'x-a', '2', 'Host', 'h', 'Cookie', 'a=1', 'cookie', 'b=2'];
    const h = toH2Headers(raw, { ':status': 200 }, false);
    expect(h).toEqual({ ':status': 200, 'x-a': ['1', '2'], host: 'h', cookie: ['a=1', 'b=2'] });
  });

  it('follows the request rules: Host left out for :authority, Cookie fields joined with "; "', () => {
    const h = toH2Headers(['Host', 'h', 'Cookie', 'a=1', 'cookie', 'b=2', 'x', 'y'], { ':path': '/' }, true);
    expect(h).toEqual({ ':path': '/', cookie: 'a=1; b=2', x: 'y' });
  });

  it('flattens an object without pseudo-headers, and without the field named in drop', () => {
    const headers = { ':status': '204', 'content-length': '0', 'set-cookie': ['a', 'b'], n: '1' };
    expect(fromH2Headers(headers)).toEqual(['content-length', '0', 'set-cookie', 'a', 'set-cookie', 'b', 'n', '1']);
    const appended = fromH2Headers(headers, ['host', 'x'], 'content-length');
    expect(appended).toEqual(['host', 'x', 'set-cookie', 'a', 'set-cookie', 'b', 'n', '1']);
  });
});
