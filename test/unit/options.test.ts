/**
 * One options table for `serve` and `createGateway`: the library's defaults are the table's, and a bad
 * library option throws the error table's PTTH_ERR_BAD_OPTION (a TypeError, as node's own argument errors).
 */
import { describe, expect, it, onTestFinished } from 'vitest';
import { createGateway, type GatewayOptions } from '../../src/gateway/server.js';
import { ERRORS } from '../../src/http/errors.js';
import {
  numberOption,
  OPTION_KEYS,
  OPTIONS,
  OptionError,
  SERVE_OPTIONS,
  SHUTDOWN_GRACE_DEFAULT,
} from '../../src/options.js';

function gateway(options: GatewayOptions = {}): ReturnType<typeof createGateway> {
  const g = createGateway(options);
  onTestFinished(() => g.close(0));
  return g;
}

/** What `fn` threw. */
function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('did not throw');
}

describe('the options table', () => {
  it('serve reads every row with a flag, in order; library-only rows have none', () => {
    expect(SERVE_OPTIONS.map((s) => s.key)).toEqual(OPTION_KEYS.filter((k) => 'flag' in OPTIONS[k]));
    expect('flag' in OPTIONS.claimBodyLimit).toBe(false);
  });

  it('every whole number has a unit, and its help placeholder comes from it unless the row names one', () => {
    for (const s of SERVE_OPTIONS.filter((o) => o.type === 'int')) {
      expect(s.unit, s.key).toBeDefined();
      expect(s.arg, s.key).toMatch(/^<(ms|seconds|bytes|n|port)>$/);
    }
    expect(SERVE_OPTIONS.find((s) => s.key === 'queueTimeout')?.arg).toBe('<ms>');
    expect(SERVE_OPTIONS.find((s) => s.key === 'maxLease')?.arg).toBe('<seconds>');
  });

  it('the shutdown grace has one default, for --shutdown-grace and gateway.close()', () => {
    expect(OPTIONS.shutdownGrace.default).toBe(10_000);
    expect(SHUTDOWN_GRACE_DEFAULT).toBe(10_000);
  });
});

describe("createGateway without options takes the table's defaults", () => {
  it('for its settings', () => {
    const s = gateway().settings;
    expect(s.domain).toBe(OPTIONS.domain.default);
    expect(s.publicUrl).toBeUndefined();
    for (const key of [
      'defaultLease',
      'maxLease',
      'maxChannels',
      'claimBodyLimit',
      'claimTimeout',
      'responseTimeout',
      'queueLimit',
      'queueTimeout',
      'reconnectWait',
      'pingInterval',
      'pingTimeout',
      'maxStreams',
    ] as const) {
      expect(s[key], key).toBe(OPTIONS[key].default);
    }
    expect(s.http2).toBe(OPTIONS.http2.default);
    expect(s.cookieDomains).toEqual([OPTIONS.domain.default]);
  });

  it('for the browser transports, replyTimeout following responseTimeout', () => {
    const b = gateway().browser.settings;
    for (const key of [
      'pollTimeout',
      'bufferLimit',
      'cometIdleTimeout',
      'wsMaxStreams',
      'wsWindow',
      'wsPingInterval',
    ] as const) {
      expect(b[key], key).toBe(OPTIONS[key].default);
    }
    expect(b.replyTimeout).toBe(OPTIONS.responseTimeout.default);
    expect(gateway({ responseTimeout: 1234 }).browser.settings.replyTimeout).toBe(1234);
  });

  it('for the server it builds (head and idle limits)', () => {
    const server = gateway().server;
    expect(server.headersTimeout).toBe(OPTIONS.headersTimeout.default);
    expect(server.keepAliveTimeout).toBe(OPTIONS.keepAliveTimeout.default);
    expect(server.timeout).toBe(OPTIONS.idleTimeout.default);
    expect(server.maxHeadersCount).toBe(OPTIONS.maxHeaders.default + 1);
    expect((server as unknown as { maxHeaderSize: number }).maxHeaderSize).toBe(OPTIONS.maxHeaderSize.default);
  });

  it('accepts 0 where the table allows it (off or no cap), and fractions', () => {
    const g = gateway({
      queueLimit: 0,
      defaultLease: 0,
      bufferLimit: 0,
      idleTimeout: 0,
      maxConnectionsPerAddress: 0,
      responseTimeout: 1.5,
    });
    expect(g.settings.queueLimit).toBe(0);
    expect(g.settings.defaultLease).toBe(0);
    expect(g.browser.settings.bufferLimit).toBe(0);
    expect(g.server.timeout).toBe(0);
    expect(g.settings.responseTimeout).toBe(1.5);
  });
});

describe('a bad library option throws PTTH_ERR_BAD_OPTION', () => {
  it.each<[GatewayOptions, string, RegExp]>([
    [{ maxChannels: 0 }, 'maxChannels', /^maxChannels must be a number >= 1, got 0$/],
    [{ responseTimeout: Number.NaN }, 'responseTimeout', /^responseTimeout must be a number >= 1, got NaN$/],
    [{ queueLimit: -1 }, 'queueLimit', /^queueLimit must be a number >= 0, got -1$/],
    [{ claimBodyLimit: Number.POSITIVE_INFINITY }, 'claimBodyLimit', /claimBodyLimit must be a number >= 0/],
    [{ wsWindow: 1023 }, 'wsWindow', /^wsWindow must be a number >= 1024, got 1023$/],
    [{ replyTimeout: 0 }, 'replyTimeout', /^replyTimeout must be a number >= 1, got 0$/],
    [{ maxHeaders: 0 }, 'maxHeaders', /^maxHeaders must be a number >= 1, got 0$/],
    [{ maxHeaderSize: 100 }, 'maxHeaderSize', /^maxHeaderSize must be a number >= 1024/],
    [{ domain: 'bad domain' }, 'domain', /^domain must be a DNS name, got "bad domain"$/],
    [{ publicUrl: 'ftp://x' }, 'publicUrl', /^publicUrl must be an http or https URL, got ftp:\/\/x$/],
    [{ publicUrl: 'not a url' }, 'publicUrl', /^publicUrl must be an http or https URL, got not a url$/],
  ])('%j', (options, option, message) => {
    const e = thrown(() => createGateway(options));
    expect(e).toBeInstanceOf(TypeError);
    expect(e).toBeInstanceOf(OptionError);
    expect(e).toMatchObject({ code: 'PTTH_ERR_BAD_OPTION', option });
    expect((e as Error).message).toMatch(message);
  });

  it('the code is in the error table', () => {
    expect(ERRORS.PTTH_ERR_BAD_OPTION.status).toBe(500);
  });

  it('numberOption: the default when unset, the fallback for rows without one', () => {
    expect(numberOption('queueTimeout', undefined)).toBe(OPTIONS.queueTimeout.default);
    expect(numberOption('queueTimeout', 7)).toBe(7);
    expect(numberOption('replyTimeout', undefined, 99)).toBe(99);
  });
});
