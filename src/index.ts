/**
 * ptth-proxy: a reverse HTTP gateway (PTTH/1.0, draft-lentczner-rhttp-00) and its Node client.
 *
 * Gateway: `createGateway(options).listen(port)`. App side: `listen(serverOrHandler, { gateway })`.
 */
export { createGateway, Gateway, type GatewayOptions, type GatewayEvents, type TlsOptions } from './gateway/server.js';
export { createAdminServer } from './gateway/endpoints.js';
export { GatewayMetrics } from './gateway/metrics.js';
export type { RequestEvent } from './gateway/eventmap.js';
export {
  createLogger,
  attachLogger,
  LOG_BUFFER_DEFAULT,
  type Logger,
  type LoggerOptions,
  type LogDrops,
  type AttachOptions,
} from './log.js';
export {
  AccessControl,
  AccessConfigError,
  createKeyEntry,
  generateKey,
  hashKey,
  loadAccessConfig,
  parseAccessConfig,
  type AccessConfig,
  type AccessKey,
} from './table/access.js';
export { parseRate, type RateSpec } from './gateway/ratelimit.js';
export type { GatewaySettings } from './gateway/context.js';
export type { UrlMode } from './gateway/classify.js';
export type { BrowserOptions } from './gateway/browser.js';
export { listen, Tunnel, ClaimError, type ListenOptions, type TunnelEvents } from './client/node.js';
export { createLocalProxy, parseTarget, type LocalProxyOptions } from './client/proxy.js';
export {
  MemoryTable,
  type RouteTable,
  type TableOptions,
  type TableEvents,
  type ClaimDecision,
  type ClaimLease,
  type ClaimRequest,
  type ChannelLimits,
} from './table/table.js';
export { Registration, type QueueOptions, type RegistrationOwner } from './table/registration.js';
export type { Channel, Transport } from './channels/channel.js';
export { ERRORS, PtthError, isPtthError, type ErrorCode } from './http/errors.js';
export { OptionError } from './options.js';
export {
  createClusterNode,
  ClusterNode,
  defaultNodeId,
  defaultNodeUrl,
  type ClusterOptions,
} from './cluster/node.js';
export { ClusterTable, type ClusterTableOptions } from './cluster/table.js';
export { ClusterStore, type StoreOptions } from './cluster/store.js';
export { redisOptions, RedisUrlError } from './cluster/redisurl.js';
export { VERSION } from './version.js';
