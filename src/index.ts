/**
 * ptth-proxy: a reverse HTTP gateway (PTTH/1.0, draft-lentczner-rhttp-00) and its Node client.
 *
 * Gateway: `createGateway(options).listen(port)`. App side: `listen(serverOrHandler, { gateway })`.
 */
export { createGateway, Gateway, type GatewayOptions, type GatewayEvents } from './gateway/server.js';
export type { GatewaySettings } from './gateway/context.js';
export type { BrowserOptions } from './gateway/browser.js';
export { listen, Tunnel, ClaimError, type ListenOptions, type TunnelEvents } from './client/node.js';
export { createLocalProxy, parseTarget, type LocalProxyOptions } from './client/proxy.js';
export { MemoryTable, Registration, type RouteTable, type TableOptions } from './routes/table.js';
export type { Channel, Transport } from './channels/channel.js';
export { ERRORS, PtthError, isPtthError, type ErrorCode } from './http/errors.js';
export { VERSION } from './version.js';
