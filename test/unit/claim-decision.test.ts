import { describe, expect, it } from 'vitest';
import type { Channel, ChannelEvents, Transport } from '../../src/channels/channel.js';
import { MemoryTable, type ClaimDecision, type ClaimRequest } from '../../src/table/table.js';

/*
 * RouteTable.decide (src/table/table.ts), the one decision of a claim: the token rule, the key's
 * names, room for the claim's channel, the lease; and the ClaimLease a granted claim holds.
 */

let nextId = 5000;

class FakeChannel implements Channel {
  readonly id = nextId++;
  readonly transport: Transport = 'http1';
  readonly remote = '127.0.0.1:1';
  readonly openedAt = Date.now();
  readonly active = 0;
  readonly served = 0;
  readonly available = false;
  readonly upgradable = true;
  closed = false;
  events: ChannelEvents | undefined;
  dispatch(): void {}
  upgrade(): void {}
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.events?.closed(this);
  }
}

const table = (): MemoryTable =>
  new MemoryTable({ defaultLease: 60, queueLimit: 1, queueTimeout: 100, reconnectWait: 100 });

async function granted(t: MemoryTable, request: ClaimRequest): Promise<ClaimDecision & { ok: true }> {
  const d = await t.decide(request);
  if (!d.ok) throw new Error(`refused: ${d.refusal.code}`);
  return d;
}

async function refusal(t: MemoryTable, request: ClaimRequest): Promise<string> {
  const d = await t.decide(request);
  return d.ok ? 'granted' : d.refusal.code;
}

describe('RouteTable.decide', () => {
  it('grants a new name with its lease, then the same token gets it back with a new lease', async () => {
    const t = table();
    const first = await granted(t, { name: 'app', token: 'secret', lease: 30 });
    expect(first).toMatchObject({ created: true, registration: { name: 'app', lease: 30 } });
    expect(first.lease.registration).toBe(first.registration);
    const again = await granted(t, { name: 'app', token: 'secret', lease: 90 });
    expect(again.registration).toBe(first.registration);
    expect(again.created).toBe(false);
    expect(first.registration.lease).toBe(90);
    t.close();
  });

  it('refuses another token and changes nothing', async () => {
    const t = table();
    const { registration } = await granted(t, { name: 'app', token: 'secret', lease: 30 });
    expect(await refusal(t, { name: 'app', token: 'other', lease: 5 })).toBe('PTTH_ERR_TOKEN_MISMATCH');
    expect(registration.lease).toBe(30);
    t.close();
  });

  it("refuses a key's name past its maxNames, and a move under a key that is full", async () => {
    const t = table();
    await granted(t, { name: 'a1', token: 't', keyId: 'alice', maxNames: 1 });
    expect(await refusal(t, { name: 'a2', token: 't', keyId: 'alice', maxNames: 1 })).toBe('PTTH_ERR_KEY_NAMES');
    const b = await granted(t, { name: 'b1', token: 't', keyId: 'bob' });
    expect(await refusal(t, { name: 'b1', token: 't', keyId: 'alice', maxNames: 1 })).toBe('PTTH_ERR_KEY_NAMES');
    expect(b.registration.keyId).toBe('bob');
    expect(t.lookup('a2')).toBeUndefined();
    t.close();
  });

  it('refuses a channel past the per-name limit before touching the lease or the key', async () => {
    const t = table();
    const first = await granted(t, { name: 'app', token: 't', lease: 30, channels: { perName: 1, perKey: undefined } });
    first.lease.join(new FakeChannel());
    const d = await t.decide({
      name: 'app',
      token: 't',
      lease: 5,
      keyId: 'alice',
      channels: { perName: 1, perKey: undefined },
    });
    expect(d.ok ? undefined : d.refusal).toMatchObject({ code: 'PTTH_ERR_TOO_MANY_CHANNELS', status: 429 });
    expect(first.registration).toMatchObject({ lease: 30, keyId: undefined });
    t.close();
  });

  it("counts the key's channels across its names, a name moving under the key included, and makes no name for a refused claim", async () => {
    const t = table();
    const limits = { perName: 8, perKey: 2 };
    const a = await granted(t, { name: 'a', token: 't', keyId: 'alice', channels: limits });
    a.lease.join(new FakeChannel());
    const b = await granted(t, { name: 'b', token: 't', keyId: 'bob', channels: limits });
    b.lease.join(new FakeChannel());
    // b's channel would count under alice once b moves there: 1 + 1 = 2, the most alice may hold.
    expect(await refusal(t, { name: 'b', token: 't', keyId: 'alice', channels: limits })).toBe('PTTH_ERR_KEY_CHANNELS');
    expect(t.lookup('b')?.keyId).toBe('bob');
    a.lease.join(new FakeChannel());
    const registered: string[] = [];
    t.on('register', (reg) => registered.push(reg.name));
    expect(await refusal(t, { name: 'c', token: 't', keyId: 'alice', channels: limits })).toBe('PTTH_ERR_KEY_CHANNELS');
    expect(t.lookup('c')).toBeUndefined();
    expect(registered).toEqual([]);
    // Without channel limits (a Comet registration) the name is made; its first poll brings the channel.
    expect((await granted(t, { name: 'c', token: 't', keyId: 'alice' })).created).toBe(true);
    t.close();
  });

  it('rechecks the limits when the channel joins, and an abandoned claim releases only a name it made', async () => {
    const t = table();
    const limits = { perName: 1, perKey: undefined };
    const one = await granted(t, { name: 'app', token: 't', channels: limits });
    const two = await granted(t, { name: 'app', token: 't', channels: limits });
    expect(one.lease.recheck()).toBeUndefined();
    one.lease.join(new FakeChannel());
    expect(two.lease.recheck()).toMatchObject({ code: 'PTTH_ERR_TOO_MANY_CHANNELS' });
    two.lease.abandon('claim refused');
    expect(t.lookup('app')).toBe(one.registration);

    const reasons: string[] = [];
    t.on('release', (reg, reason) => reasons.push(`${reg.name}: ${reason}`));
    const fresh = await granted(t, { name: 'fresh', token: 't', channels: limits });
    fresh.lease.abandon('claim refused');
    expect(t.lookup('fresh')).toBeUndefined();
    expect(reasons).toEqual(['fresh: claim refused']);
    t.close();
  });
});
