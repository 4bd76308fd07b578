import { randomBytes } from 'node:crypto';
import { createServer as createNetServer, type AddressInfo, type Server as NetServer } from 'node:net';
import { hostname, networkInterfaces } from 'node:os';
import type { RedisOptions } from 'ioredis';
import { createGateway, settingsFrom, type Gateway, type GatewayOptions } from '../gateway/server.js';
import { HopClient, HopSigner, type HopClientOptions } from './hop.js';
import type { ClusterHooks } from '../gateway/context.js';
import { GatewayProxy } from './proxy.js';
import { ClusterStore } from './store.js';
import { ClusterTable } from './table.js';

/** How a gateway joins a cluster (`serve --redis`). */
export interface ClusterOptions {
  /** A redis:// or rediss:// URL, a unix socket path, or ioredis options (Sentinel included). */
  readonly redis: string | RedisOptions;
  /** Where the other nodes reach this one (default: http on this machine's first non-internal IPv4 and the gateway's port). */
  readonly nodeUrl?: string | undefined;
  /** This node's id (default: host name and random hex); unique in the cluster. */
  readonly nodeId?: string | undefined;
  /** The secret nodes sign the internal hop with (default: one the first node stores in Redis). */
  readonly secret?: string | undefined;
  /** Milliseconds between heartbeats (default 1000). */
  readonly heartbeat?: number | undefined;
  /** Milliseconds after its last heartbeat a node counts as dead (default 5000). */
  readonly nodeTimeout?: number | undefined;
  /** Milliseconds a Redis command may take (default 2000): past it the claim gets 503. */
  readonly commandTimeout?: number | undefined;
  /** Prefix of every Redis key (default `ptth:`): clusters sharing one Redis keep apart by it. */
  readonly prefix?: string | undefined;
  /** The internal hop's client (connect and response timeouts, CA for https node URLs). */
  readonly hop?: HopClientOptions | undefined;
}

/** A node id: host name (made safe) and 32 random bits, so a restarted node is a new one. */
export function defaultNodeId(): string {
  const host =
    hostname()
      .replace(/[^A-Za-z0-9.-]/g, '-')
      .slice(0, 40) || 'node';
  return `${host}-${randomBytes(4).toString('hex')}`;
}

/** http://<first non-internal IPv4 of this machine, or 127.0.0.1>:<port>. */
export function defaultNodeUrl(addr: AddressInfo, secure: boolean): string {
  const scheme = secure ? 'https' : 'http';
  const bound = addr.address;
  if (bound !== '0.0.0.0' && bound !== '::')
    return `${scheme}://${bound.includes(':') ? `[${bound}]` : bound}:${addr.port}`;
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return `${scheme}://${a.address}:${addr.port}`;
  }
  return `${scheme}://127.0.0.1:${addr.port}`;
}

/**
 * One gateway node of a cluster: the gateway, over a ClusterTable in Redis, with the internal hop
 * to the other nodes. `createClusterNode` connects to Redis; `listen` starts serving and joins.
 */
export class ClusterNode {
  readonly gateway: Gateway;
  readonly id: string;
  readonly store: ClusterStore;
  readonly table: ClusterTable;
  readonly hop: HopClient;
  #proxy: GatewayProxy;
  #options: ClusterOptions;
  #hopServers: NetServer[] = [];

  /** @internal use createClusterNode */
  constructor(
    gateway: Gateway,
    store: ClusterStore,
    table: ClusterTable,
    hop: HopClient,
    proxy: GatewayProxy,
    options: ClusterOptions,
  ) {
    this.gateway = gateway;
    this.#proxy = proxy;
    this.id = store.options.nodeId;
    this.store = store;
    this.table = table;
    this.hop = hop;
    this.#options = options;
  }

  /** Where other nodes reach this one (empty before listen). */
  get url(): string {
    return this.store.nodeUrl;
  }

  /**
   * Starts the gateway and joins the cluster at `--node-url` (or the default for the bound
   * address). `join: false` (a worker sharing its port) joins later, with `listenHop`.
   */
  async listen(port?: number, host?: string, join = true): Promise<AddressInfo> {
    const addr = await this.gateway.listen(port, host);
    if (join) await this.store.join(this.#options.nodeUrl ?? defaultNodeUrl(addr, this.gateway.secure));
    return addr;
  }

  /**
   * A listener of its own for hop traffic, joining the cluster at its URL: each worker of
   * `serve --workers` shares the public port with the others, so the others reach it here.
   */
  async listenHop(port: number, host: string): Promise<string> {
    const server = createNetServer((socket) => this.gateway.server.emit('connection', socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      // Exclusive: in a node:cluster worker a shared listen(0) would give every worker the same port.
      server.listen({ port, host, exclusive: true }, () => resolve());
    });
    this.#hopServers.push(server);
    const addr = server.address() as AddressInfo;
    const url = defaultNodeUrl(addr, this.gateway.secure);
    await this.store.join(url);
    return url;
  }

  /** Closes the gateway (requests in flight finish within `graceMs`), leaves the cluster, disconnects. */
  async close(graceMs?: number): Promise<void> {
    for (const s of this.#hopServers) s.close();
    await this.gateway.close(graceMs);
    this.hop.close();
    this.#proxy.close();
    await this.store.close();
  }
}

function hooks(store: ClusterStore, signer: HopSigner, proxy: GatewayProxy): ClusterHooks {
  return {
    nodeId: store.options.nodeId,
    verifyHop: signer.verify,
    storeReady: () => store.ready,
    shareSession: (hash, name, expected) => store.session(hash, name, expected),
    locateSession: (hash) => store.sessionOf(hash),
    proxy: (req, res, peer, name) => proxy.proxy(req, res, peer, name),
    listRegistrations: async (limit) =>
      (await store.list(limit)).map((r) => ({
        name: r.name,
        keyId: r.keyId,
        lease: r.lease,
        createdAt: r.createdAt,
        expiresIn: r.pttl,
        holders: r.holders.map((h) => ({ node: h.id, channels: h.channels })),
      })),
    nodes: async () => (await store.nodes()).map((n) => ({ id: n.id, url: n.url.href })),
  };
}

/**
 * Connects to Redis and assembles a cluster node (not yet listening). Rejects when Redis cannot be
 * reached at start: a node that never joined has nothing to serve from.
 */
export async function createClusterNode(options: GatewayOptions, cluster: ClusterOptions): Promise<ClusterNode> {
  const nodeTimeout = cluster.nodeTimeout ?? 5000;
  const store = new ClusterStore({
    redis: cluster.redis,
    prefix: cluster.prefix ?? 'ptth:',
    nodeId: cluster.nodeId ?? defaultNodeId(),
    heartbeat: cluster.heartbeat ?? 1000,
    deadAfter: nodeTimeout,
    commandTimeout: cluster.commandTimeout ?? 2000,
  });
  try {
    await store.connect();
    const secret = cluster.secret ?? (await store.secret());
    const signer = new HopSigner(secret, store.options.nodeId);
    const hop = new HopClient(signer, cluster.hop);
    const s = settingsFrom(options);
    const table = new ClusterTable(
      store,
      {
        defaultLease: Math.min(s.defaultLease, s.maxLease),
        queueLimit: s.queueLimit,
        queueTimeout: s.queueTimeout,
        reconnectWait: s.reconnectWait,
        secret,
        retry: cluster.heartbeat ?? 1000,
      },
      (peer, name) => hop.channel(peer, name),
    );
    const proxy = new GatewayProxy(signer, cluster.hop?.connectTimeout ?? 5000);
    const gateway = createGateway({ ...options, table, cluster: hooks(store, signer, proxy) });
    return new ClusterNode(gateway, store, table, hop, proxy, cluster);
  } catch (err) {
    await store.close();
    throw err;
  }
}
