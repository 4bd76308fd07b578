import { describe, expect, it } from 'vitest';
import { AccessControl, AccessConfigError, generateKey, validateAccessConfig } from '../../src/table/access.js';
import { PtthError } from '../../src/http/errors.js';

const k = generateKey();
const entry = (relay: unknown): Record<string, unknown> => ({ id: 'r', sha256: k.sha256, names: ['*'], relay });

describe('relay lists in the keys file', () => {
  it('keeps a valid list, normalised, and leaves it out when absent', () => {
    const c = validateAccessConfig({ keys: [entry(['API.example.com', '*.Example.net:8443', '[::1]:9'])] });
    expect(c.keys?.[0]?.relay).toEqual(['API.example.com', '*.Example.net:8443', '[::1]:9']);
    const none = validateAccessConfig({ keys: [{ id: 'n', sha256: k.sha256, names: ['*'] }] });
    expect(none.keys?.[0]).not.toHaveProperty('relay');
  });

  it.each([
    ['not an array', 'api.example.com', /keys\[0\] \(id "r"\): relay must be an array/],
    ['a bad pattern', ['ok.example.com', 'bad host'], /keys\[0\] \(id "r"\): relay\[1\]: "bad host"/],
    ['a number', [80], /relay\[0\]: a relay pattern is a non-empty/],
    ['a port out of range', ['a.example.com:0'], /relay\[0\]: .*port must be 1 to 65535/],
  ])('refuses %s, naming the entry', (_what, relay, message) => {
    expect(() => validateAccessConfig({ keys: [entry(relay)] })).toThrow(AccessConfigError);
    expect(() => validateAccessConfig({ keys: [entry(relay)] })).toThrow(message);
  });

  it("looks up a key's relay rights by the key; unknown keys and key-less gateways get 401 PTTH_ERR_KEY_INVALID", () => {
    const access = new AccessControl(validateAccessConfig({ keys: [entry(['*.example.com'])] }));
    const rights = access.relayKey(k.key);
    expect(rights.id).toBe('r');
    expect(rights.patterns.map((p) => p.text)).toEqual(['*.example.com']);
    const unknown = (() => {
      try {
        access.relayKey('nope');
      } catch (e) {
        return e;
      }
    })();
    expect(unknown).toBeInstanceOf(PtthError);
    expect((unknown as PtthError).code).toBe('PTTH_ERR_KEY_INVALID');
    expect(() => new AccessControl().relayKey(k.key)).toThrow(/no access keys/);
    // A key without a list has no targets.
    expect(new AccessControl({ keys: [{ id: 'n', sha256: k.sha256, names: ['*'] }] }).relayKey(k.key).patterns).toEqual(
      [],
    );
  });
});
