// @ruststacker/client: a JavaScript client of RustStacker's public API and WebSocket protocol.
export { Client, newClientMsgId } from './client.js';
export { ApiError, SessionEndedError } from './errors.js';
export { NO_RECONNECT, TOKEN_REVOKED } from './live.js';
