import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import type { Channel, ChannelEvents, Transport } from '../../src/channels/channel.js';
import { ClusterStore, type PeerNode } from '../../src/cluster/store.js';
import { ClusterTable } from '../../src/cluster/table.js';
import { cleanup } from '../helpers/fixture.js';
import { useRedisForFile } from '../helpers/redis.js';
import { spawnTs } from '../helpers/child.js';

const CLUSTER_CHILD = fileURLToPath(new URL('../helpers/cluster-child.ts', import.meta.url));

/*
 * The cluster's routing table against a real redis-server: several ClusterTables (one per node),
 * each with its own ClusterStore, deciding claims in the same Redis. Channels here are plain
 * objects with the Channel interface (the table only counts and closes them); the gateway-level
 * cluster tests send real traffic through real channels and the internal hop.
 */

const redis = useRedisForFile();
let prefixes = 0;
/** Every remote route the tables made, for the tests that check none is left in service or leaked. */
const made: TestChannel[] = [];

class TestChannel implements Channel {
  static next = 1;
  readonly id = TestChannel.next++;
  readonly transport: Transport;
  readonly remote = '127.0.0.1:1';
  readonly openedAt = Date.now();
  readonly active = 0;
  readonly served = 0;
  readonly available = true;
  readonly upgradable = true;
  closed = false;
  events: ChannelEvents | undefined;
  readonly peer: PeerNode | undefined;
  constructor(transport: Transport = 'http1', peer?: PeerNode) {
    this.transport = transport;
    this.peer = peer;
  }
  retired = false;
  dispatch(): void {}
  upgrade(): void {}
  retire(): void {
    this.retired = true;
  }
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.events?.closed(this);
  }
}

interface Node {
  readonly id: string;
  readonly store: ClusterStore;
  readonly table: ClusterTable;
}

const OPTIONS = { defaultLease: 30, queueLimit: 10, queueTimeout: 1000, reconnectWait: 1000, retry: 200 };

/** A test's own key prefix: the file shares one redis-server. */
function prefix(): string {
  return `t${++prefixes}:`;
}

async function node(id: string, p: string, over: { deadAfter?: number; heartbeat?: number } = {}): Promise<Node> {
  const store = new ClusterStore({
    redis: redis().url,
    prefix: p,
    nodeId: id,
    heartbeat: over.heartbeat ?? 200,
    deadAfter: over.deadAfter ?? 1500,
    commandTimeout: 1000,
  });
  await store.connect();
  await store.join(`http://127.0.0.1:9/${id}`);
  const table = new ClusterTable(store, { ...OPTIONS, secret: 'a cluster secret for tests' }, (peer) => {
    const ch = new TestChannel('node', peer);
    made.push(ch);
    return ch;
  });
  cleanup(async () => {
    table.close();
    await store.close();
  });
  return { id, store, table };
}

async function nodes(n: number): Promise<Node[]> {
  const p = prefix();
  return Promise.all(Array.from({ length: n }, (_, i) => node(`n${i + 1}`, p)));
}

const LIMITS = { perName: 4, perKey: undefined };

/** Resolves when `check` holds, polling every 20 ms (state that arrives over pub/sub); fails after `ms`. */
async function until(check: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('the cluster table in Redis', () => {
  it('gives a name raced for by three nodes to exactly one of them', async () => {
    const [a, b, c] = (await nodes(3)) as [Node, Node, Node];
    for (let round = 0; round < 20; round++) {
      const name = `race${round}`;
      const decisions = await Promise.all(
        [a, b, c, a, b, c].map((n, i) => n.table.decide({ name, token: `token-${i}`, channels: LIMITS })),
      );
      expect(decisions.filter((d) => d.ok)).toHaveLength(1);
      for (const d of decisions) if (!d.ok) expect(d.refusal.code).toBe('PTTH_ERR_TOKEN_MISMATCH');
    }
  });

  it('keeps the token rule on every node: the right token reclaims anywhere, a wrong one gets 403 everywhere', async () => {
    const [a, b, c] = (await nodes(3)) as [Node, Node, Node];
    const first = await a.table.decide({ name: 'app', token: 'right', channels: LIMITS });
    expect(first.ok && first.created).toBe(true);
    for (const n of [a, b, c]) {
      const wrong = await n.table.decide({ name: 'app', token: 'wrong', channels: LIMITS });
      expect(wrong.ok).toBe(false);
      if (!wrong.ok) expect([wrong.refusal.status, wrong.refusal.code]).toEqual([403, 'PTTH_ERR_TOKEN_MISMATCH']);
      const none = await n.table.decide({ name: 'app', channels: LIMITS, holder: '10.0.0.1' });
      expect(none.ok).toBe(false);
    }
    const again = await c.table.decide({ name: 'app', token: 'right', channels: LIMITS });
    expect(again.ok && !again.created).toBe(true);
  });

  it('holds a tokenless name by its address cluster-wide', async () => {
    const [a, b] = (await nodes(2)) as [Node, Node];
    expect((await a.table.decide({ name: 'open', holder: '192.0.2.1', channels: LIMITS })).ok).toBe(true);
    expect((await b.table.decide({ name: 'open', holder: '192.0.2.1', channels: LIMITS })).ok).toBe(true);
    const other = await b.table.decide({ name: 'open', holder: '192.0.2.2', channels: LIMITS });
    expect(!other.ok && other.refusal.message).toContain('another address');
    const withToken = await b.table.decide({ name: 'open', token: 't', channels: LIMITS });
    expect(!withToken.ok && withToken.refusal.message).toContain('without a token');
  });

  it('counts channels per name and per access key across the cluster', async () => {
    const [a, b, c] = (await nodes(3)) as [Node, Node, Node];
    const limits = { perName: 2, perKey: 3 };
    const claim = (n: Node, name: string) =>
      n.table.decide({ name, token: 't', keyId: 'team', maxNames: 10, channels: limits });
    for (const [n, name] of [
      [a, 'x'],
      [b, 'x'],
    ] as const) {
      const d = await claim(n, name);
      expect(d.ok).toBe(true);
      if (d.ok) d.lease.join(new TestChannel());
    }
    const third = await claim(c, 'x');
    expect(!third.ok && [third.refusal.status, third.refusal.code]).toEqual([429, 'PTTH_ERR_TOO_MANY_CHANNELS']);
    const y = await claim(c, 'y');
    expect(y.ok).toBe(true);
    if (y.ok) y.lease.join(new TestChannel());
    const overKey = await claim(a, 'z');
    expect(!overKey.ok && overKey.refusal.code).toBe('PTTH_ERR_KEY_CHANNELS');
    expect(!overKey.ok && overKey.refusal.message).toContain('3 channels');
  });

  it('counts the names of an access key across the cluster', async () => {
    const [a, b] = (await nodes(2)) as [Node, Node];
    const claim = (n: Node, name: string) => n.table.decide({ name, token: 't', keyId: 'k', maxNames: 2 });
    expect((await claim(a, 'one')).ok).toBe(true);
    expect((await claim(b, 'two')).ok).toBe(true);
    const third = await claim(a, 'three');
    expect(!third.ok && [third.refusal.status, third.refusal.code]).toEqual([429, 'PTTH_ERR_KEY_NAMES']);
    // A released name frees its place on every node.
    const reg = await b.table.fetch('one');
    b.table.release(reg as NonNullable<typeof reg>, 'deleted');
    await until(async () => (await claim(a, 'three')).ok);
  });

  it('routes to the nodes that hold channels, and follows them as they come and go', async () => {
    const [a, b, c] = (await nodes(3)) as [Node, Node, Node];
    const d = await a.table.decide({ name: 'svc', token: 't', channels: LIMITS });
    if (!d.ok) throw d.refusal;
    const ch = new TestChannel();
    d.lease.join(ch);
    const onB = await b.table.fetch('svc');
    expect(onB?.channels).toHaveLength(0);
    expect(onB?.remotes.map((r) => (r as TestChannel).peer?.id)).toEqual(['n1']);
    // c's channel appears on b through pub/sub.
    const dc = await c.table.decide({ name: 'svc', token: 't', channels: LIMITS });
    if (!dc.ok) throw dc.refusal;
    dc.lease.join(new TestChannel());
    await until(() => onB?.remotes.length === 2);
    // a's only channel goes: b stops routing there.
    ch.close();
    await until(() => onB?.remotes.length === 1);
    expect((onB?.remotes[0] as TestChannel | undefined)?.peer?.id).toBe('n3');
  });

  it('retires the remote route of a node whose channels went, every time, so churn leaves none behind', async () => {
    const [a, b] = (await nodes(2)) as [Node, Node];
    const d = await a.table.decide({ name: 'churn', token: 't', channels: LIMITS });
    if (!d.ok) throw d.refusal;
    let ch = new TestChannel();
    d.lease.join(ch);
    const onB = (await b.table.fetch('churn')) as NonNullable<Awaited<ReturnType<ClusterTable['fetch']>>>;
    const first = made.length;
    for (let i = 0; i < 20; i++) {
      ch.close();
      await until(() => onB.remotes.length === 0);
      const again = await a.table.decide({ name: 'churn', token: 't', channels: LIMITS });
      if (!again.ok) throw again.refusal;
      ch = new TestChannel();
      again.lease.join(ch);
      await until(() => onB.remotes.length === 1);
    }
    const routes = made.slice(first - 1).filter((r) => r.peer?.id === 'n1');
    expect(routes.filter((r) => !r.retired)).toEqual([onB.remotes[0]]);
  });

  it('serves a private URL on every node while Redis keeps only its hash', async () => {
    const [a, b] = (await nodes(2)) as [Node, Node];
    const d = await a.table.decide({ name: 'priv', token: 't' });
    if (!d.ok) throw d.refusal;
    const id = d.registration.privateId;
    expect((await b.table.fetchPrivate(id))?.name).toBe('priv');
    expect(await b.table.fetchPrivate(`${id.slice(0, -1)}x`)).toBeUndefined();
    const raw = new Redis(redis().url);
    cleanup(() => raw.quit());
    const dump =
      JSON.stringify(await raw.keys('*')) + JSON.stringify(await raw.hgetall(`${a.store.options.prefix}r:priv`));
    expect(dump).not.toContain(id);
    expect(dump).not.toContain('"t"');
  });

  it('changes a token through one node for all of them', async () => {
    const [a, b] = (await nodes(2)) as [Node, Node];
    const d = await a.table.decide({ name: 'rot', token: 'old' });
    if (!d.ok) throw d.refusal;
    const onB = await b.table.fetch('rot');
    await a.table.update(d.registration, { token: 'new' });
    await until(() => onB?.tokenMatches('new') === true);
    expect((await b.table.decide({ name: 'rot', token: 'old' })).ok).toBe(false);
    expect((await b.table.decide({ name: 'rot', token: 'new' })).ok).toBe(true);
  });

  it('starts the lease when the last channel anywhere goes, and ends the name everywhere when it runs out', async () => {
    const [a, b] = (await nodes(2)) as [Node, Node];
    const d = await a.table.decide({ name: 'brief', token: 't', lease: 1, channels: LIMITS });
    if (!d.ok) throw d.refusal;
    const ch = new TestChannel();
    d.lease.join(ch);
    const onB = await b.table.fetch('brief');
    const released = (n: Node) => new Promise<string>((resolve) => n.table.once('release', (_r, why) => resolve(why)));
    const both = Promise.all([released(a), released(b)]);
    ch.close();
    expect(await both).toEqual(['lease expired', 'lease expired']);
    expect(await a.table.fetch('brief')).toBeUndefined();
    expect(onB?.released).toBe(true);
  });

  it('gives the name back when a claim that made it is abandoned', async () => {
    const [a, b] = (await nodes(2)) as [Node, Node];
    const d = await a.table.decide({ name: 'gone', token: 't', channels: LIMITS });
    if (!d.ok) throw d.refusal;
    d.lease.abandon('claim refused');
    expect(await b.table.fetch('gone')).toBeUndefined();
    expect((await b.table.decide({ name: 'gone', token: 'other', channels: LIMITS })).ok).toBe(true);
  });

  it('stops routing to a node killed with SIGKILL, and starts the lease of what only it held', async () => {
    const p = prefix();
    const b = await node('b', p, { deadAfter: 600, heartbeat: 100 });
    const child = spawnTs(CLUSTER_CHILD, [redis().url, p, 'a', 'held', '100', '600']);
    cleanup(() => child.kill('SIGKILL'));
    await child.waitFor(/holding held/);
    const onB = await b.table.fetch('held');
    expect(onB?.remotes).toHaveLength(1);
    child.kill('SIGKILL');
    await until(() => onB?.remotes.length === 0, 5000);
    const raw = new Redis(redis().url);
    cleanup(() => raw.quit());
    // Its lease (30 s) started when the node was found dead.
    const ttl = await raw.pttl(`${p}r:held`);
    expect(ttl).toBeGreaterThan(20_000);
    expect(ttl).toBeLessThanOrEqual(30_000);
    // Another node may take the name up with its token.
    expect((await b.table.decide({ name: 'held', token: 't', channels: LIMITS })).ok).toBe(true);
  });

  it('does not let a node restarted under the same id inherit the channels of its previous process', async () => {
    const p = prefix();
    const b = await node('b', p, { deadAfter: 60_000 });
    const child = spawnTs(CLUSTER_CHILD, [redis().url, p, 'a', 'again', '100', '60000']);
    cleanup(() => child.kill('SIGKILL'));
    await child.waitFor(/holding again/);
    const onB = await b.table.fetch('again');
    expect(onB?.remotes).toHaveLength(1);
    child.kill('SIGKILL');
    await child.exited();
    // Back at once, long before the old process would have been found dead.
    await node('a', p, { deadAfter: 60_000 });
    await until(() => onB?.remotes.length === 0);
    const raw = new Redis(redis().url);
    cleanup(() => raw.quit());
    expect(await raw.pttl(`${p}r:again`)).toBeGreaterThan(20_000);
  });

  it('states its channels again after the others found it dead while its connection stayed up (a stall)', async () => {
    const p = prefix();
    const b = await node('b', p, { deadAfter: 600, heartbeat: 100 });
    const child = spawnTs(CLUSTER_CHILD, [redis().url, p, 'a', 'stalled', '100', '600']);
    cleanup(() => child.kill('SIGKILL'));
    await child.waitFor(/holding stalled/);
    const raw = new Redis(redis().url);
    cleanup(() => raw.quit());
    // A stall longer than the node timeout: b drops a and starts the lease.
    child.child.kill('SIGSTOP');
    await until(async () => (await raw.pttl(`${p}r:stalled`)) > 0, 5000);
    child.child.kill('SIGCONT');
    // a's next heartbeat finds itself dropped: it states its channel again, and the lease stops.
    await until(async () => (await raw.pttl(`${p}r:stalled`)) === -1, 5000);
    expect(await raw.hget(`${p}n:a:c`, 'stalled')).toBe('1');
    expect((await b.table.fetch('stalled'))?.remotes).toHaveLength(1);
  });

  it('gives back the reservation of a claim whose answer timed out while Redis stalled', async () => {
    const p = prefix();
    const a = await node('a', p, { deadAfter: 60_000 });
    const pid = redis().pid as number;
    const raw = new Redis(redis().url);
    cleanup(() => raw.quit());
    process.kill(pid, 'SIGSTOP');
    let resumed = false;
    cleanup(() => {
      if (!resumed) process.kill(pid, 'SIGCONT');
    });
    const decision = a.table.decide({ name: 'orphan', token: 't', channels: LIMITS });
    // The command timeout (1 s) answers first; Redis runs the claim when it wakes.
    const d = await decision;
    expect(!d.ok && d.refusal.code).toBe('PTTH_ERR_STORE_UNAVAILABLE');
    process.kill(pid, 'SIGCONT');
    resumed = true;
    await until(async () => (await raw.exists(`${p}res:*`)) === 0 && (await raw.hlen(`${p}n:a:c`)) === 0, 5000);
    // The name the claim made went with it (nobody ever joined a channel).
    await until(async () => (await raw.exists(`${p}r:orphan`)) === 0, 5000);
  });

  it("never counts a released registration's channels for the name's next holder", async () => {
    const [a, b, c] = (await nodes(3)) as [Node, Node, Node];
    const first = await a.table.decide({ name: 'reuse', token: 'old', channels: LIMITS });
    if (!first.ok) throw first.refusal;
    first.lease.join(new TestChannel());
    const onC = await c.table.decide({ name: 'reuse', token: 'old', channels: LIMITS });
    if (!onC.ok) throw onC.refusal;
    const oldOnC = new TestChannel();
    onC.lease.join(oldOnC);
    // Released through a (the private URL's DELETE), claimed anew on b by someone else.
    a.table.release(first.registration, 'deleted');
    await until(async () => (await b.table.decide({ name: 'reuse', token: 'new', channels: LIMITS })).ok);
    const fresh = b.table.lookup('reuse');
    // c's old channel closing later must not take one off the new holder.
    oldOnC.close();
    const onA = await until(async () => (await a.table.fetch('reuse'))?.remotes.length === 1).then(() =>
      a.table.lookup('reuse'),
    );
    expect((onA?.remotes[0] as TestChannel | undefined)?.peer?.id).toBe('n2');
    expect(fresh?.tokenMatches('new')).toBe(true);
  });

  it('refuses claims with 503 PTTH_ERR_STORE_UNAVAILABLE while Redis is down, keeps cached routes, and restates what it holds when Redis comes back empty', async () => {
    const [a, b] = (await nodes(2)) as [Node, Node];
    const d = await a.table.decide({ name: 'kept', token: 't', channels: LIMITS });
    if (!d.ok) throw d.refusal;
    d.lease.join(new TestChannel());
    const privateId = d.registration.privateId;
    await b.table.fetch('kept');
    await redis().kill();
    const refused = await b.table.decide({ name: 'new', token: 't', channels: LIMITS });
    expect(!refused.ok && [refused.refusal.status, refused.refusal.code]).toEqual([503, 'PTTH_ERR_STORE_UNAVAILABLE']);
    expect(a.table.lookup('kept')?.channels).toHaveLength(1);
    expect(b.table.lookup('kept')?.remotes).toHaveLength(1);
    await redis().restart();
    // a restates 'kept' into the empty Redis: same token, same private URL. (A claim on b before that
    // would make the name anew, as it would for anyone once Redis lost it.)
    const raw = new Redis(redis().url);
    cleanup(() => raw.quit());
    await until(
      async () => (await raw.hget(`${a.store.options.prefix}r:kept`, 'th').catch(() => null)) !== null,
      10_000,
    );
    expect((await b.table.decide({ name: 'kept', token: 't' })).ok).toBe(true);
    expect((await b.table.decide({ name: 'kept', token: 'wrong' })).ok).toBe(false);
    expect((await b.table.fetchPrivate(privateId))?.name).toBe('kept');
  });
});
