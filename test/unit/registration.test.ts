import { describe, expect, it } from 'vitest';
import {
  normalizeName,
  parseLease,
  randomName,
  randomSecret,
  readClaimParams,
  validateToken,
} from '../../src/table/names.js';
import { PtthError } from '../../src/http/errors.js';
import { MemoryTable } from '../../src/table/table.js';

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return e instanceof PtthError ? e.code : 'not a PtthError';
  }
  return undefined;
}

describe('names, tokens and leases', () => {
  it('accepts DNS labels and lower-cases them', () => {
    expect(normalizeName('Foo-1')).toBe('foo-1');
    expect(normalizeName('a')).toBe('a');
    expect(normalizeName('9lives')).toBe('9lives');
    expect(normalizeName('x'.repeat(63))).toBe('x'.repeat(63));
  });

  it('refuses anything that is not one DNS label, saying why', () => {
    for (const bad of ['', '-a', 'a-', 'a_b', 'a.b', 'x'.repeat(64), 'caf\u00e9', 'a b', 'a\r\nb']) {
      expect(code(() => normalizeName(bad))).toBe('PTTH_ERR_BAD_NAME');
    }
    expect(() => normalizeName('a_b')).toThrow(/not a valid name: a name must be one DNS label/);
  });

  it('parses leases as whole seconds and clamps them', () => {
    expect(parseLease('0', 100)).toBe(0);
    expect(parseLease('60', 100)).toBe(60);
    expect(parseLease('5000', 100)).toBe(100);
    for (const bad of ['-1', '1.5', 'abc', '', ' 5', '99999999999'])
      expect(code(() => parseLease(bad, 100))).toBe('PTTH_ERR_BAD_LEASE');
  });

  it('accepts visible-ASCII tokens only', () => {
    expect(validateToken('s3cret!~')).toBe('s3cret!~');
    for (const bad of ['', 'a b', 'x'.repeat(257), 'a\nb', 't\u00f6k'])
      expect(code(() => validateToken(bad))).toBe('PTTH_ERR_BAD_TOKEN');
  });

  it('reads claim parameters, treating empty ones as absent', () => {
    expect(readClaimParams(new URLSearchParams('name=Foo&token=t&lease=30'), 100)).toEqual({
      name: 'foo',
      token: 't',
      lease: 30,
    });
    expect(readClaimParams(new URLSearchParams('name=&token=&lease='), 100)).toEqual({
      name: undefined,
      token: undefined,
      lease: undefined,
    });
  });

  it('makes random names that are valid labels and secrets with enough entropy', () => {
    const names = new Set(Array.from({ length: 200 }, () => randomName()));
    expect(names.size).toBe(200);
    for (const n of names) expect(normalizeName(n)).toBe(n);
    expect(Buffer.from(randomSecret(128), 'base64url').length).toBe(16);
    expect(Buffer.from(randomSecret(), 'base64url').length).toBe(24);
  });

  it('compares tokens by value (their hashes, in constant time)', async () => {
    const table = new MemoryTable({ defaultLease: 60, queueLimit: 1, queueTimeout: 1000, reconnectWait: 1000 });
    const { registration } = await table.claim({ name: 'secret', token: 'abc' });
    expect(registration.tokenMatches('abc')).toBe(true);
    expect(registration.tokenMatches('abd')).toBe(false);
    expect(registration.tokenMatches('abcd')).toBe(false);
    table.close();
  });
});
