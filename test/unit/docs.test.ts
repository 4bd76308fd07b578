import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { envName, SERVE_OPTIONS } from '../../src/config.js';
import { ERRORS } from '../../src/http/errors.js';

/* The README is the users' reference: every serve option and every error code the gateway can answer with is in it. */
const README = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');

describe('README matches the code', () => {
  it.each(SERVE_OPTIONS.map((s) => [s.key, s] as const))(
    'documents serve option %s with its flag and environment variable',
    (_key, spec) => {
      const negated = spec.type === 'bool' && spec.default === true;
      const flag = negated ? spec.flag.replace(/^--/, '--no-') : spec.flag;
      const row = README.split('\n').find(
        (line) => line.startsWith('| `') && line.includes(`${flag}${spec.arg ? ` ${spec.arg}` : ''}\``),
      );
      expect(row, `README row for ${flag}`).toBeDefined();
      expect(row).toContain(`\`${envName(spec.key)}\``);
      if (spec.default !== undefined && spec.type !== 'bool') expect(row).toContain(`\`${String(spec.default)}\``);
    },
  );

  it.each(Object.entries(ERRORS))('lists error code %s with its status', (code, { status }) => {
    expect(README).toMatch(new RegExp(`\\| \`${code}\` \\| ${status} \\|`));
  });
});
