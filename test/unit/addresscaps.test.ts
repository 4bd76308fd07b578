import { describe, expect, it } from 'vitest';
import { AddressCaps } from '../../src/gateway/addresscaps.js';
import { isLoopback } from '../../src/gateway/ratelimit.js';
import { MemoryTable } from '../../src/table/table.js';

/* What one client address holds, keyed as the rate limiter keys it: IPv6 per /64, IPv4-mapped as IPv4. */
function caps(limits = { connections: 2, names: 1, channels: 1 }): AddressCaps {
  const table = new MemoryTable({ defaultLease: 300, queueLimit: 1, queueTimeout: 1000, reconnectWait: 100 });
  return new AddressCaps(limits, table);
}

describe('AddressCaps', () => {
  it('counts IPv6 addresses of one /64 together, and another /64 apart', () => {
    const c = caps();
    expect(c.connect('2001:db8:0:1::a').ok).toBe(true);
    expect(c.connect('2001:db8:0:1:ffff::b').ok).toBe(true);
    expect(c.connect('2001:DB8:0:1::c').ok).toBe(false);
    expect(c.connect('2001:db8:0:2::a').ok).toBe(true);
    expect(c.held('2001:db8:0:1::1').connections).toBe(3);
  });

  it('counts an IPv4-mapped address as its IPv4 address, and releases each connection once', () => {
    const c = caps();
    const a = c.connect('::ffff:192.0.2.1');
    const b = c.connect('192.0.2.1');
    expect(c.held('192.0.2.1').connections).toBe(2);
    a.release();
    a.release();
    expect(c.held('192.0.2.1').connections).toBe(1);
    b.release();
    expect(c.held('192.0.2.1')).toEqual({ connections: 0, names: 0, channels: 0 });
  });

  it('never refuses or counts an exempt address, and 0 is no cap', () => {
    const c = caps({ connections: 1, names: 1, channels: 1 });
    c.exempt(isLoopback);
    for (let i = 0; i < 3; i++) expect(c.connect('127.0.0.1').ok).toBe(true);
    expect(c.held('127.0.0.1').connections).toBe(0);
    const open = caps({ connections: 0, names: 0, channels: 0 });
    for (let i = 0; i < 3; i++) expect(open.connect('192.0.2.9').ok).toBe(true);
    expect(() => open.checkNames('192.0.2.9')).not.toThrow();
    expect(() => open.checkChannels('192.0.2.9')).not.toThrow();
  });
});
