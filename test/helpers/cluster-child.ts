import { ClusterStore } from '../../src/cluster/store.js';
import { ClusterTable } from '../../src/cluster/table.js';
import type { Channel } from '../../src/channels/channel.js';

/*
 * A cluster node's table in a process of its own, for tests that kill it with SIGKILL (a node that
 * vanishes without a goodbye): `cluster-child.ts REDIS_URL PREFIX NODE_ID NAME HEARTBEAT DEAD_AFTER`
 * claims NAME with one channel, prints `holding NAME`, and waits to be killed.
 */
const [url = '', prefix = '', id = '', name = '', heartbeat = '100', deadAfter = '600'] = process.argv.slice(2);
const store = new ClusterStore({
  redis: url,
  prefix,
  nodeId: id,
  heartbeat: Number(heartbeat),
  deadAfter: Number(deadAfter),
  commandTimeout: 1000,
});
await store.connect();
await store.join(`http://127.0.0.1:9/${id}`);
const table = new ClusterTable(
  store,
  {
    defaultLease: 30,
    queueLimit: 1,
    queueTimeout: 1000,
    reconnectWait: 1000,
    retry: 200,
    secret: 'a cluster secret for tests',
  },
  () => {
    throw new Error('this child routes nowhere');
  },
);
const decision = await table.decide({ name, token: 't', lease: 30, channels: { perName: 4, perKey: undefined } });
if (!decision.ok) throw decision.refusal;
const channel = {
  id: 1,
  transport: 'http1',
  remote: '127.0.0.1:1',
  openedAt: Date.now(),
  active: 0,
  served: 0,
  available: true,
  upgradable: true,
  closed: false,
  events: undefined,
  dispatch() {},
  upgrade() {},
  close() {},
} satisfies Channel;
decision.lease.join(channel);
console.log(`holding ${name}`);
setInterval(() => {}, 60_000);
