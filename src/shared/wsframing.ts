/*
 * The WebSocket channel's framing (docs/PROTOCOL.md section 6.2, and the README's "WebSocket
 * channel framing"), shared by the gateway's channel (src/channels/websocket.ts) and the browser
 * library (src/client/browser/ptth.ts), so the two sides cannot drift apart.
 */

/** The subprotocol both sides name in the handshake (`Sec-WebSocket-Protocol`). */
export const WS_PROTOCOL = 'ptth.v1';
/** Bit 0 of a binary frame's flags byte: the last frame of this body. */
export const FLAG_END = 0x01;
/** A binary frame's header: 1 byte of flags, then the stream id as a 32-bit big-endian integer. */
export const FRAME_HEADER = 5;
/** The most payload one binary frame carries. */
export const MAX_CHUNK = 64 * 1024;
