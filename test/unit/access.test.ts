import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  AccessConfigError,
  AccessControl,
  bearerKey,
  createKeyEntry,
  generateKey,
  hashKey,
  loadAccessConfig,
  parseAccessConfig,
  readAccessFile,
  validateAccessConfig,
  type AccessConfig,
} from '../../src/table/access.js';
import { PtthError } from '../../src/http/errors.js';
import { madeUpToken, normalizeName } from '../../src/table/names.js';
import { MemoryTable } from '../../src/table/table.js';

/*
 * Access keys and reserved names (README "Access keys"): the file format and its validation, the
 * name patterns, key hashing, and the per-key names limit in the table.
 */

const KEY_A = 'ptth_alice-key-for-tests-000000000000';
const KEY_B = 'ptth_bob-key-for-tests-00000000000000';

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return e instanceof PtthError ? e.code : `not a PtthError: ${String(e)}`;
  }
  return undefined;
}

function configError(value: unknown): string {
  try {
    validateAccessConfig(value, 'keys.json');
  } catch (e) {
    expect(e).toBeInstanceOf(AccessConfigError);
    return (e as Error).message;
  }
  throw new Error('the config was accepted');
}

const entry = (over: Record<string, unknown> = {}): Record<string, unknown> => ({
  id: 'alice',
  sha256: hashKey(KEY_A),
  names: ['*'],
  ...over,
});

describe('key hashing and generation', () => {
  it('hashes a key as the hex SHA-256 of its UTF-8 bytes', () => {
    expect(hashKey('abc')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    expect(hashKey(KEY_A)).toBe(createHash('sha256').update(KEY_A).digest('hex'));
  });

  it('generates ptth_ keys with 192 random bits and their hash', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 50; i++) {
      const { key, sha256 } = generateKey();
      expect(key).toMatch(/^ptth_[A-Za-z0-9_-]{32}$/);
      expect(Buffer.from(key.slice(5), 'base64url').length).toBe(24);
      expect(sha256).toBe(hashKey(key));
      seen.add(key);
    }
    expect(seen.size).toBe(50);
  });

  it('creates a key entry that the access file accepts, with defaults', () => {
    const { key, entry: e } = createKeyEntry();
    expect(e.id).toMatch(/^key-[0-9a-f]{8}$/);
    expect(e.names).toEqual(['*']);
    expect(e.sha256).toBe(hashKey(key));
    expect(e).not.toHaveProperty('maxNames');
    const made = createKeyEntry({ id: 'ci', names: ['CI-*', 'docs'], maxNames: 3, maxChannels: 9 });
    expect(made.entry).toEqual({
      id: 'ci',
      sha256: hashKey(made.key),
      names: ['ci-*', 'docs'],
      maxNames: 3,
      maxChannels: 9,
    });
    expect(new AccessControl({ keys: [made.entry] }).authorize(made.key, 'ci-1').keyId).toBe('ci');
  });

  it('refuses a key entry with a bad id or pattern', () => {
    expect(() => createKeyEntry({ id: 'has space' })).toThrow(AccessConfigError);
    expect(() => createKeyEntry({ names: ['a.b'] })).toThrow(/names\[0\].*"a\.b" is not a valid name or pattern/);
    expect(() => createKeyEntry({ names: [] })).toThrow(/names must be a non-empty array/);
  });

  it('reads the key of an Authorization: Bearer header only', () => {
    expect(bearerKey(`Bearer ${KEY_A}`)).toBe(KEY_A);
    expect(bearerKey(`bearer   ${KEY_A} `)).toBe(KEY_A);
    for (const bad of [
      undefined,
      '',
      'Bearer',
      'Bearer ',
      `Basic ${KEY_A}`,
      `Bearer a b`,
      `Bearer\u00a0x`,
      `Bearer t\u00f6k`,
    ]) {
      expect(bearerKey(bad)).toBeUndefined();
    }
  });
});

describe('the access file', () => {
  it('accepts keys and reserved names, normalised to lower case', () => {
    const upper = hashKey(KEY_A).toUpperCase();
    const c = parseAccessConfig(
      JSON.stringify({
        keys: [{ id: 'alice', sha256: upper, names: ['Alice', 'TEAM-*', '*'], maxNames: 5, maxChannels: 20 }],
        reserved: ['WWW', 'admin'],
      }),
    );
    expect(c).toEqual({
      keys: [{ id: 'alice', sha256: hashKey(KEY_A), names: ['alice', 'team-*', '*'], maxNames: 5, maxChannels: 20 }],
      reserved: ['www', 'admin'],
    });
    expect(parseAccessConfig('{}')).toEqual({});
    expect(parseAccessConfig('{"reserved":[]}')).toEqual({ reserved: [] });
    expect(parseAccessConfig('{"keys":[]}')).toEqual({ keys: [] });
  });

  it('refuses what is not JSON or not an object, naming the source', () => {
    expect(() => parseAccessConfig('{"keys": [', 'PTTH_KEYS')).toThrow(/^PTTH_KEYS: not valid JSON/);
    expect(configError([])).toMatch(/^keys\.json: must be a JSON object/);
    expect(configError('x')).toMatch(/must be a JSON object/);
    expect(configError(null)).toMatch(/must be a JSON object/);
  });

  it('refuses unknown fields, at the top and in a key entry (typos must not pass silently)', () => {
    expect(configError({ key: [] })).toBe('keys.json: unknown field "key" (expected "keys" and/or "reserved")');
    expect(configError({ keys: [entry({ maxname: 3 })] })).toMatch(
      /^keys\.json: keys\[0\] \(id "alice"\): unknown field "maxname"/,
    );
  });

  it('names the offending key entry in every key error', () => {
    const second = (over: Record<string, unknown>): string =>
      configError({ keys: [entry(), { ...entry({ id: 'bob', sha256: hashKey(KEY_B) }), ...over }] });
    expect(configError({ keys: {} })).toMatch(/"keys" must be an array/);
    expect(configError({ keys: ['x'] })).toMatch(/keys\[0\]: a key entry must be an object/);
    expect(second({ id: 'b o b' })).toMatch(/keys\[1\] \(id "b o b"\): id must be/);
    expect(second({ id: undefined })).toMatch(/keys\[1\]: id must be/);
    expect(second({ id: 'alice' })).toMatch(/keys\[1\] \(id "alice"\): the id "alice" is used by another key too/);
    expect(second({ sha256: 'abc' })).toMatch(/keys\[1\] \(id "bob"\): sha256 must be 64 hex digits.*got "abc"/);
    expect(second({ sha256: 'g'.repeat(64) })).toMatch(/sha256 must be 64 hex digits/);
    expect(second({ sha256: hashKey(KEY_A).toUpperCase() })).toMatch(
      /keys\[1\] \(id "bob"\): the same key \(sha256\) is listed twice/,
    );
    expect(second({ names: undefined })).toMatch(/keys\[1\] \(id "bob"\): names must be a non-empty array/);
    expect(second({ names: [] })).toMatch(/names must be a non-empty array/);
    expect(second({ names: 'bob' })).toMatch(/names must be a non-empty array/);
    expect(second({ names: ['bob', 7] })).toMatch(
      /keys\[1\] \(id "bob"\): names\[1\]: a pattern must be a string, got 7/,
    );
    for (const bad of [0, -1, 1.5, '3', null]) {
      expect(second({ maxNames: bad })).toMatch(/keys\[1\] \(id "bob"\): maxNames must be a whole number >= 1/);
      expect(second({ maxChannels: bad })).toMatch(/maxChannels must be a whole number >= 1/);
    }
  });

  it('accepts "*", prefix patterns and exact names, and refuses any other pattern', () => {
    for (const good of ['*', 'a*', 'team-*', `${'x'.repeat(62)}*`, 'alice', 'a-b-c', '9']) {
      expect(() => validateAccessConfig({ keys: [entry({ names: [good] })] })).not.toThrow();
    }
    for (const bad of [
      '',
      '**',
      '*foo',
      'a*b',
      '-a*',
      'foo.bar',
      'a_b',
      '-a',
      'a-',
      'x'.repeat(64),
      `${'x'.repeat(63)}*`,
      ' a',
      'caf\u00e9',
    ]) {
      expect(configError({ keys: [entry({ names: [bad] })] })).toMatch(/names\[0\]: .* is not a valid/);
    }
  });

  it('checks reserved names with the same patterns, but never "*"', () => {
    expect(configError({ reserved: 'www' })).toMatch(/"reserved" must be an array/);
    expect(configError({ reserved: ['www', '*'] })).toBe('keys.json: reserved[1]: "*" would reserve every name');
    expect(configError({ reserved: ['www', 'a.b'] })).toMatch(/reserved\[1\]: "a\.b" is not a valid name or pattern/);
    expect(configError({ reserved: [5] })).toMatch(/reserved\[0\]: a pattern must be a string/);
    expect(() => new AccessControl(undefined, ['ok', 'bad name'])).toThrow(/reserved\[1\]/);
  });

  describe('files and the environment', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ptth-access-'));
    afterAll(() => rmSync(dir, { recursive: true, force: true }));
    const file = (name: string, text: string): string => {
      const p = join(dir, name);
      writeFileSync(p, text);
      return p;
    };

    it('reads a keys file, and names the file in its errors', async () => {
      const good = file('good.json', JSON.stringify({ keys: [entry()] }));
      expect((await readAccessFile(good)).keys?.[0]?.id).toBe('alice');
      const bad = file('bad.json', JSON.stringify({ keys: [entry({ names: ['a b'] })] }));
      await expect(readAccessFile(bad)).rejects.toThrow(`${bad}: keys[0] (id "alice"): names[0]:`);
      await expect(readAccessFile(join(dir, 'missing.json'))).rejects.toThrow(
        /missing\.json: cannot read the keys file: ENOENT/,
      );
    });

    it('takes the file over PTTH_KEYS, PTTH_KEYS over nothing, and nothing means open', async () => {
      const f = file('f.json', JSON.stringify({ reserved: ['from-file'] }));
      const env = { PTTH_KEYS: JSON.stringify({ reserved: ['from-env'] }) };
      expect(await loadAccessConfig({ file: f, env })).toEqual({ reserved: ['from-file'] });
      expect(await loadAccessConfig({ env })).toEqual({ reserved: ['from-env'] });
      expect(await loadAccessConfig({ env: {} })).toBeUndefined();
      expect(await loadAccessConfig({ env: { PTTH_KEYS: '  ' } })).toBeUndefined();
      expect(await loadAccessConfig()).toBeUndefined();
      await expect(loadAccessConfig({ env: { PTTH_KEYS: '{"keys":3}' } })).rejects.toThrow(
        /^PTTH_KEYS: "keys" must be an array/,
      );
    });
  });
});

describe('AccessControl.authorize', () => {
  const keyed: AccessConfig = {
    keys: [
      { id: 'alice', sha256: hashKey(KEY_A), names: ['alice', 'Team-*'], maxNames: 2, maxChannels: 3 },
      { id: 'bob', sha256: hashKey(KEY_B), names: ['*'] },
    ],
    reserved: ['www', 'admin-*'],
  };

  it('is open without keys: any key or none, any unreserved name', () => {
    const open = new AccessControl({ reserved: ['www'] });
    expect(open.open).toBe(true);
    expect(open.authorize(undefined, 'foo')).toMatchObject({
      keyId: undefined,
      maxNames: undefined,
      maxChannels: undefined,
    });
    expect(open.authorize('whatever', 'foo').keyId).toBeUndefined();
    expect(code(() => open.authorize(undefined, 'www'))).toBe('PTTH_ERR_NAME_RESERVED');
    expect(new AccessControl().authorize(undefined, undefined).pickName).toBeUndefined();
  });

  it('needs a known key when keys are configured (401)', () => {
    const ac = new AccessControl(keyed);
    expect(ac.open).toBe(false);
    expect(code(() => ac.authorize(undefined, 'alice'))).toBe('PTTH_ERR_KEY_REQUIRED');
    expect(code(() => ac.authorize('', 'alice'))).toBe('PTTH_ERR_KEY_REQUIRED');
    expect(code(() => ac.authorize(`${KEY_A}x`, 'alice'))).toBe('PTTH_ERR_KEY_INVALID');
    expect(code(() => ac.authorize(hashKey(KEY_A), 'alice'))).toBe('PTTH_ERR_KEY_INVALID');
    expect(new PtthError('PTTH_ERR_KEY_REQUIRED').status).toBe(401);
  });

  it('an empty keys list locks every claim out', () => {
    const ac = new AccessControl({ keys: [] });
    expect(ac.open).toBe(false);
    expect(code(() => ac.authorize(undefined, 'a'))).toBe('PTTH_ERR_KEY_REQUIRED');
    expect(code(() => ac.authorize(KEY_A, 'a'))).toBe('PTTH_ERR_KEY_INVALID');
  });

  it('lets a key claim names matching its patterns, case-insensitively, and no others (403)', () => {
    const ac = new AccessControl(keyed);
    expect(ac.authorize(KEY_A, 'alice')).toMatchObject({
      keyId: 'alice',
      maxNames: 2,
      maxChannels: 3,
      pickName: undefined,
    });
    expect(ac.authorize(KEY_A, 'team-x').keyId).toBe('alice');
    expect(ac.authorize(KEY_A, 'team-').keyId).toBe('alice');
    expect(code(() => ac.authorize(KEY_A, 'alice2'))).toBe('PTTH_ERR_KEY_FORBIDDEN');
    expect(code(() => ac.authorize(KEY_A, 'team'))).toBe('PTTH_ERR_KEY_FORBIDDEN');
    expect(code(() => ac.authorize(KEY_A, 'bob'))).toBe('PTTH_ERR_KEY_FORBIDDEN');
    expect(() => ac.authorize(KEY_A, 'bob')).toThrow(
      'The access key "alice" may not claim "bob": it may claim alice, team-*.',
    );
    expect(ac.authorize(KEY_B, 'anything').keyId).toBe('bob');
  });

  it('refuses reserved names to every key, "*" included (403)', () => {
    const ac = new AccessControl(keyed);
    expect(code(() => ac.authorize(KEY_B, 'www'))).toBe('PTTH_ERR_NAME_RESERVED');
    expect(code(() => ac.authorize(KEY_B, 'admin-panel'))).toBe('PTTH_ERR_NAME_RESERVED');
    expect(ac.authorize(KEY_B, 'admin').keyId).toBe('bob');
    expect(ac.authorize(KEY_B, 'wwww').keyId).toBe('bob');
    // The key is checked first: without a valid key the answer is 401 whatever the name.
    expect(code(() => ac.authorize(undefined, 'www'))).toBe('PTTH_ERR_KEY_REQUIRED');
  });

  it('picks a name for a claim without one: random under "*", under a prefix pattern, else refuses', () => {
    const ac = new AccessControl(keyed);
    const pick = ac.authorize(KEY_A, undefined).pickName;
    expect(pick).toBeDefined();
    for (let i = 0; i < 50; i++) {
      const n = (pick as () => string)();
      expect(n).toMatch(/^team-[a-z][a-z0-9]{11}$/);
      expect(normalizeName(n)).toBe(n);
      expect(ac.authorize(KEY_A, n).keyId).toBe('alice');
    }
    const only = new AccessControl({
      keys: [{ id: 'c', sha256: hashKey(KEY_A), names: ['carol', `${'x'.repeat(56)}*`] }],
    });
    expect(() => only.authorize(KEY_A, undefined)).toThrow(
      `The access key "c" may only claim the names it lists (carol, ${'x'.repeat(56)}*): name one in the claim.`,
    );
    const long = new AccessControl({ keys: [{ id: 'c', sha256: hashKey(KEY_A), names: [`${'x'.repeat(55)}*`] }] });
    const n = (long.authorize(KEY_A, undefined).pickName as () => string)();
    expect(n).toHaveLength(63);
    expect(normalizeName(n)).toBe(n);
  });

  it('never picks a reserved random name', () => {
    // Every random name starts with a letter: reserving a-y leaves only z.
    const reserved = 'abcdefghijklmnopqrstuvwxy'.split('').map((c) => `${c}*`);
    const ac = new AccessControl({ reserved });
    const pick = ac.authorize(undefined, undefined).pickName as () => string;
    for (let i = 0; i < 30; i++) expect(pick()).toMatch(/^z/);
  });

  it('set() swaps the configuration at once; a bad one throws and the old one stays', () => {
    const ac = new AccessControl(keyed, ['fixed']);
    expect(ac.authorize(KEY_A, 'alice').keyId).toBe('alice');
    expect(() => ac.set({ keys: [{ id: 'alice', sha256: 'nope', names: ['*'] }] }, 'keys.json')).toThrow(
      /^keys\.json: keys\[0\] \(id "alice"\): sha256/,
    );
    expect(ac.authorize(KEY_A, 'alice').keyId).toBe('alice');
    expect(ac.config).toEqual(validateAccessConfig(keyed));
    ac.set({ keys: [{ id: 'bob', sha256: hashKey(KEY_B), names: ['bob'] }] });
    expect(code(() => ac.authorize(KEY_A, 'alice'))).toBe('PTTH_ERR_KEY_INVALID');
    expect(ac.authorize(KEY_B, 'bob').keyId).toBe('bob');
    // www was reserved by the old file only; `fixed` came with the constructor and stays.
    expect(code(() => ac.authorize(KEY_B, 'www'))).toBe('PTTH_ERR_KEY_FORBIDDEN');
    expect(ac.reserved('fixed')).toBe(true);
    expect(ac.limitsOf('alice')).toBeUndefined();
    ac.set(undefined);
    expect(ac.open).toBe(true);
    expect(code(() => ac.authorize(undefined, 'fixed'))).toBe('PTTH_ERR_NAME_RESERVED');
  });

  it('reports the limits of a key id under the current configuration', () => {
    const ac = new AccessControl(keyed);
    expect(ac.limitsOf('alice')).toEqual({ maxNames: 2, maxChannels: 3 });
    expect(ac.limitsOf('bob')).toEqual({ maxNames: undefined, maxChannels: undefined });
    expect(ac.limitsOf('nobody')).toBeUndefined();
    expect(ac.limitsOf(undefined)).toBeUndefined();
  });
});

describe('the table under keys', () => {
  const table = (): MemoryTable =>
    new MemoryTable({ defaultLease: 60, queueLimit: 1, queueTimeout: 100, reconnectWait: 100 });
  const ac = new AccessControl({
    keys: [
      { id: 'alice', sha256: hashKey(KEY_A), names: ['*'], maxNames: 2 },
      { id: 'bob', sha256: hashKey(KEY_B), names: ['*'] },
    ],
  });

  it('counts the names a key holds and refuses one more past maxNames (429)', async () => {
    const t = table();
    const a = await ac.claim(t, { name: 'a1', token: 't' }, KEY_A);
    expect(a.registration.keyId).toBe('alice');
    await ac.claim(t, { token: 't' }, KEY_A);
    expect(t.heldBy('alice')).toEqual({ names: 2, channels: 0 });
    const refused = ac.claim(t, { name: 'a3', token: 't' }, KEY_A);
    await expect(refused).rejects.toMatchObject({ code: 'PTTH_ERR_KEY_NAMES', status: 429 });
    await expect(ac.claim(t, { token: 't' }, KEY_A)).rejects.toThrow(
      'The access key "alice" already holds 2 names, the most it may (maxNames 2).',
    );
    expect(t.lookup('a3')).toBeUndefined();
    // Reclaiming a name it holds is not one more name.
    expect((await ac.claim(t, { name: 'a1', token: 't' }, KEY_A)).created).toBe(false);
    t.release(a.registration, 'test');
    expect(t.heldBy('alice').names).toBe(1);
    expect((await ac.claim(t, { name: 'a3', token: 't' }, KEY_A)).created).toBe(true);
    t.close();
    expect(t.heldBy('alice')).toEqual({ names: 0, channels: 0 });
  });

  it("moves a name to another key that reclaims it with the right token, within that key's limit", async () => {
    const t = table();
    await ac.claim(t, { name: 'shared', token: 't' }, KEY_B);
    await expect(ac.claim(t, { name: 'shared', token: 'other' }, KEY_A)).rejects.toMatchObject({
      code: 'PTTH_ERR_TOKEN_MISMATCH',
    });
    const moved = await ac.claim(t, { name: 'shared', token: 't' }, KEY_A);
    expect(moved.registration.keyId).toBe('alice');
    expect(t.heldBy('bob').names).toBe(0);
    expect(t.heldBy('alice').names).toBe(1);
    await ac.claim(t, { name: 'b1', token: 't' }, KEY_B);
    await ac.claim(t, { name: 'a2', token: 't' }, KEY_A);
    await expect(ac.claim(t, { name: 'b1', token: 't' }, KEY_A)).rejects.toMatchObject({ code: 'PTTH_ERR_KEY_NAMES' });
    expect(t.lookup('b1')?.keyId).toBe('bob');
    t.close();
  });

  it('gives up on random names when the generator finds no free one', async () => {
    const t = table();
    await t.claim({ name: 'taken', token: 't' });
    await expect(t.claim({ token: 't', pickName: () => 'taken' })).rejects.toMatchObject({ code: 'PTTH_ERR_BAD_NAME' });
    t.close();
  });

  it('finds registrations by their private id, and nothing by a near miss', async () => {
    const t = table();
    const { registration } = await t.claim({ name: 'p', token: 't' });
    const id = registration.privateId;
    expect(Buffer.from(id, 'base64url').length).toBeGreaterThanOrEqual(16);
    expect(t.byPrivateId(id)).toBe(registration);
    expect(t.byPrivateId(`${id.slice(0, -1)}${id.endsWith('A') ? 'B' : 'A'}`)).toBeUndefined();
    expect(t.byPrivateId(id.slice(0, -1))).toBeUndefined();
    expect(t.byPrivateId('')).toBeUndefined();
    t.release(registration, 'test');
    expect(t.byPrivateId(id)).toBeUndefined();
  });

  it('makes up tokens with at least 128 random bits', async () => {
    expect(Buffer.from(madeUpToken(), 'base64url').length).toBeGreaterThanOrEqual(16);
    expect(madeUpToken()).not.toBe(madeUpToken());
    // Only the token's hash is kept.
    const t = table();
    const { registration } = await t.claim({ name: 'q', token: 'secret-token' });
    expect(registration.tokenHash).not.toContain('secret-token');
    expect(registration.tokenMatches('secret-token')).toBe(true);
    t.close();
  });
});
