import { describe, expect, it } from 'vitest';
import { errorMessage } from '../../src/shared/errormessage.js';
import { parseLinks } from '../../src/shared/link.js';
import { noop } from '../../src/shared/noop.js';
import { targetPath, targetQuery } from '../../src/shared/target.js';
import { FLAG_END, FRAME_HEADER, MAX_CHUNK, WS_PROTOCOL } from '../../src/shared/wsframing.js';

describe('targetPath and targetQuery split a request target at its first "?"', () => {
  it('splits a target with a query', () => {
    expect(targetPath('/a/b?x=1&y=2')).toBe('/a/b');
    expect(targetQuery('/a/b?x=1&y=2')).toBe('x=1&y=2');
  });

  it('keeps any further "?" in the query', () => {
    expect(targetPath('/p?q=a?b')).toBe('/p');
    expect(targetQuery('/p?q=a?b')).toBe('q=a?b');
  });

  it('gives the whole target as the path and an empty query when there is no "?"', () => {
    expect(targetPath('/plain')).toBe('/plain');
    expect(targetQuery('/plain')).toBe('');
    expect(targetPath('/empty?')).toBe('/empty');
    expect(targetQuery('/empty?')).toBe('');
  });

  it('reads a missing target as "/"', () => {
    expect(targetPath(undefined)).toBe('/');
    expect(targetQuery(undefined)).toBe('');
  });
});

describe('parseLinks reads Link header values', () => {
  it('reads several links on one comma-joined line, as node and fetch join repeated fields', () => {
    const links = parseLinks('<http://g/reversehttp/a/1>; rel="first", <http://app.g/>; rel="related"');
    expect(links.get('first')).toBe('http://g/reversehttp/a/1');
    expect(links.get('related')).toBe('http://app.g/');
  });

  it('reads separate lines', () => {
    const links = parseLinks(['<http://g/next>; rel="next"', '<http://app.g/>; rel=related']);
    expect([...links]).toEqual([
      ['next', 'http://g/next'],
      ['related', 'http://app.g/'],
    ]);
  });

  it('finds rel among other parameters, in any case, and each of several space-separated types', () => {
    const links = parseLinks('<http://a/>; title="x"; REL="Related alternate"');
    expect(links.get('related')).toBe('http://a/');
    expect(links.get('alternate')).toBe('http://a/');
  });

  it('keeps the first link of a relation type named twice, and skips links without rel', () => {
    const links = parseLinks('<http://one/>; rel=next, <http://none/>; title=x, <http://two/>; rel=next');
    expect([...links]).toEqual([['next', 'http://one/']]);
  });

  it('does not take a longer type for the one asked for', () => {
    expect(parseLinks('<http://a/>; rel="relatedness"').get('related')).toBeUndefined();
  });

  it('gives an empty map for no header', () => {
    expect(parseLinks(undefined).size).toBe(0);
    expect(parseLinks(null).size).toBe(0);
    expect(parseLinks('').size).toBe(0);
  });
});

describe('errorMessage', () => {
  it("reads an Error's message", () => {
    expect(errorMessage(new TypeError('bad value'))).toBe('bad value');
  });

  it("reads a message from an error-like object (another realm's Error fails instanceof)", () => {
    expect(errorMessage({ message: 'from elsewhere' })).toBe('from elsewhere');
  });

  it('shows anything else thrown as a string', () => {
    expect(errorMessage('plain string')).toBe('plain string');
    expect(errorMessage(42)).toBe('42');
    expect(errorMessage(undefined)).toBe('undefined');
    expect(errorMessage({ message: 7 })).toBe('[object Object]');
  });
});

describe('the shared WebSocket framing and noop', () => {
  it('frames as docs/PROTOCOL.md section 6.2 says: flags byte and 32-bit id, 64 KiB chunks, END bit 0', () => {
    expect([WS_PROTOCOL, FLAG_END, FRAME_HEADER, MAX_CHUNK]).toEqual(['ptth.v1', 1, 5, 65536]);
  });

  it('noop returns nothing', () => {
    expect(noop()).toBeUndefined();
  });
});

describe('nameFromPublicUrl', () => {
  it('reads the name from a path URL, else from the first host label', async () => {
    const { nameFromPublicUrl } = await import('../../src/shared/link.js');
    expect(nameFromPublicUrl('http://127.0.0.1:8080/my-app/')).toBe('my-app');
    expect(nameFromPublicUrl('https://tunnel.example.com/x/')).toBe('x');
    expect(nameFromPublicUrl('http://my-app.localhost:8080/')).toBe('my-app');
    expect(nameFromPublicUrl('https://my-app.tunnel.example.com/')).toBe('my-app');
  });
});
