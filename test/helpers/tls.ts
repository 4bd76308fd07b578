import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestCert {
  /** PEM certificate (self-signed, so it is its own CA). */
  cert: Buffer;
  key: Buffer;
  certPath: string;
  keyPath: string;
  dir: string;
  remove(): void;
}

/**
 * A self-signed certificate made at test time with openssl, valid for `localhost`, `*.DOMAIN`
 * and 127.0.0.1. Node refuses wildcards on the last two labels (`*.localhost`), so tests use a
 * three-label domain such as `tls.localhost`.
 */
export function makeCert(domain = 'tls.localhost', cn = 'ptth-proxy test'): TestCert {
  const dir = mkdtempSync(join(tmpdir(), 'ptth-tls-'));
  const certPath = join(dir, 'cert.pem');
  const keyPath = join(dir, 'key.pem');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      keyPath,
      '-out',
      certPath,
      '-days',
      '2',
      '-subj',
      `/CN=${cn}`,
      '-addext',
      `subjectAltName=DNS:localhost,DNS:${domain},DNS:*.${domain},IP:127.0.0.1`,
    ],
    { stdio: 'ignore' },
  );
  return {
    cert: readFileSync(certPath),
    key: readFileSync(keyPath),
    certPath,
    keyPath,
    dir,
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
