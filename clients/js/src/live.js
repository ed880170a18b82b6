// The live connection: placement through the registry (leaving out gateways this client just
// lost), the gateway's WebSocket with `ack=true`, cumulative `ack` frames, keepalive, and
// reconnecting with jittered exponential backoff — except after the close codes that say not to
// (docs/protocol.md, "Failover" and "Close codes").

import { ApiError, SessionEndedError } from './errors.js';

/**
 * Close codes after which the client does not reconnect by itself: 4009 (the user opened more
 * connections than the gateway allows and this was the oldest: reconnecting would close the newer
 * one in turn), 4410 (the user removed this device: reconnecting with its `device_id` would make
 * it a new device), and the ones that say the client broke the protocol (reconnecting would break
 * it again): 1002, 1003, 1007, 1009.
 */
export const NO_RECONNECT = Object.freeze([1002, 1003, 1007, 1009, 4009, 4410]);

/** 4401: the connection's token was revoked (a password change): renew, then reconnect. */
export const TOKEN_REVOKED = 4401;

/** The WebSocket `readyState` of an open socket (the same in every implementation). */
const OPEN = 1;

export class Live {
  /**
   * @param {object} o
   * @param {import('./client.js').Client} o.client
   * @param {Record<string, any>} o.options the client's options, defaults filled in
   */
  constructor({ client, options }) {
    this._client = client;
    this._o = options;
    /** 'idle' | 'connecting' | 'online' | 'offline' | 'stopped' */
    this.state = 'idle';
    this.gateway = null;
    this._ws = null;
    this._attempt = 0;
    /** gateway_id -> when it was lost (ms). */
    this._avoid = new Map();
    this._reconnectTimer = null;
    /** When the next reconnect is due (ms), or null when none is planned. */
    this.nextReconnectAt = null;
    this._ackDue = new Map();
    this._ackTimer = null;
    this._pingTimer = null;
    this._silenceTimer = null;
    /** Resolvers of `ping()` waiting for a pong, oldest first. */
    this._pongs = [];
    this._wanted = false;
    /** Bumped by `stop()`: an attempt under way when it changed gives up. */
    this._gen = 0;
  }

  _setState(s, detail) {
    if (this.state === s) return;
    this.state = s;
    this._client._emit('state', { state: s, ...detail });
  }

  /** Starts connecting (and keeping connected) unless already. */
  start() {
    this._wanted = true;
    if (this._ws || this._reconnectTimer || this.state === 'connecting') return;
    this._attempt = 0;
    this._connect();
  }

  /** Closes the connection (after sending the acknowledgements due) and stops reconnecting. */
  stop(state = 'idle') {
    this._wanted = false;
    this._gen += 1;
    this._clearReconnect();
    this._flushAcks();
    const ws = this._ws;
    this._ws = null;
    this._stopTimers();
    this._failPongs();
    if (ws) {
      try {
        ws.close(1000);
      } catch {
        // Closing a socket that never opened may throw in some implementations.
      }
      this._client._emit('disconnected', {
        code: 1000, reason: 'closed by the client', willReconnect: false, retryInMs: null,
        gateway: this.gateway,
      });
    }
    this._setState(state);
  }

  _clearReconnect() {
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this.nextReconnectAt = null;
  }

  _stopTimers() {
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    clearTimeout(this._silenceTimer);
    this._silenceTimer = null;
    clearTimeout(this._ackTimer);
    this._ackTimer = null;
    this._ackDue.clear();
  }

  _failPongs() {
    const waiting = this._pongs;
    this._pongs = [];
    for (const p of waiting) p.reject(new ApiError(0, 'disconnected', 'The connection closed.'));
  }

  /** The delay before the next attempt: doubling from the first, capped, jittered in 0.5-1.0. */
  _delay() {
    const base = Math.min(this._o.reconnectMaxMs, this._o.reconnectFirstMs * 2 ** this._attempt);
    this._attempt += 1;
    return base / 2 + Math.random() * (base / 2);
  }

  _scheduleReconnect(detail) {
    this._clearReconnect();
    if (!this._wanted || !this._client._session.data) {
      this._client._emit('disconnected', { ...detail, willReconnect: false, retryInMs: null });
      this._setState('idle');
      return;
    }
    const delay = detail.immediate ? 0 : this._delay();
    this.nextReconnectAt = Date.now() + delay;
    const { immediate, ...rest } = detail;
    this._client._emit('disconnected', { ...rest, willReconnect: true, retryInMs: delay });
    this._setState('offline');
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      this.nextReconnectAt = null;
      this._connect();
    }, delay);
  }

  /** Gateways to leave out of the next placement: lost within `excludeMs`, the latest 8. */
  _excluded() {
    const now = Date.now();
    for (const [id, at] of this._avoid) if (now - at >= this._o.excludeMs) this._avoid.delete(id);
    return [...this._avoid.keys()].slice(-8);
  }

  _suspect(gatewayId) {
    if (!gatewayId) return;
    this._avoid.delete(gatewayId);
    this._avoid.set(gatewayId, Date.now());
  }

  async _connect() {
    if (!this._wanted || this._ws) return;
    const gen = this._gen;
    // Whether this attempt was overtaken (stopped, or stopped and started again) while it waited.
    const stale = () => gen !== this._gen || !this._wanted || this._ws !== null;
    const client = this._client;
    this._setState('connecting', { attempt: this._attempt });
    client._emit('connecting', { attempt: this._attempt });
    let gw;
    try {
      gw = await client.placement(this._excluded());
    } catch (e) {
      if (stale()) return undefined;
      if (e instanceof SessionEndedError) return this._sessionOver();
      // No placement at all (no gateway, no registry): the next attempt starts afresh.
      this._avoid.clear();
      return this._scheduleReconnect({ code: null, reason: `no gateway: ${e.message}`, gateway: null });
    }
    if (stale()) return undefined;
    let used;
    try {
      // The gateway checks the token at the handshake only: a fresh one, renewed if due.
      used = await client._session.fresh();
    } catch (e) {
      if (stale()) return undefined;
      if (e instanceof SessionEndedError) return this._sessionOver();
      return this._scheduleReconnect({ code: null, reason: `cannot renew the session: ${e.message}`, gateway: gw.gateway_id });
    }
    if (stale()) return undefined;
    let ws;
    try {
      ws = new this._o.WebSocket(this._url(gw, used.token));
    } catch (e) {
      this._suspect(gw.gateway_id);
      return this._scheduleReconnect({ code: null, reason: `cannot open: ${e.message}`, gateway: gw.gateway_id });
    }
    this._ws = ws;
    this.gateway = gw;
    let opened = false;
    let welcomed = false;
    ws.onopen = () => {
      opened = true;
    };
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      this._heard();
      let frame;
      try {
        frame = JSON.parse(typeof ev.data === 'string' ? ev.data : String(ev.data));
      } catch {
        return;
      }
      if (!frame || typeof frame !== 'object') return;
      if (frame.type === 'system' && !welcomed) {
        welcomed = true;
        this._attempt = 0;
        this._startKeepalive(ws);
        this._setState('online', { gateway: gw });
        client._emit('connected', { gateway: gw, deviceId: this._o.deviceId || null });
      }
      if (frame.type === 'pong') {
        const p = this._pongs.shift();
        if (p) p.resolve();
      }
      client._onFrame(frame);
    };
    ws.onerror = () => {
      // The close event follows with the code; nothing to do here.
    };
    ws.onclose = (ev) => {
      if (this._ws !== ws) return;
      this._ws = null;
      this._stopTimers();
      this._failPongs();
      this._closed(ev.code, ev.reason || '', opened, used, gw);
    };
  }

  _url(gw, token) {
    if (this._o.gatewayUrl) return this._o.gatewayUrl(gw, token);
    // A gateway that binds every address advertises that; the registry's host reaches it then.
    let host = gw.address;
    if (host === '0.0.0.0' || host === '::') host = this._client._hosts.registryHost;
    if (host.includes(':') && !host.startsWith('[')) host = `[${host}]`;
    const scheme = this._client._hosts.secure ? 'wss' : 'ws';
    let url = `${scheme}://${host}:${gw.port}/api/ws?token=${encodeURIComponent(token)}&ack=true`;
    if (this._o.deviceId) url += `&device_id=${encodeURIComponent(this._o.deviceId)}`;
    return url;
  }

  async _closed(code, reason, opened, used, gw) {
    const client = this._client;
    const gen = this._gen;
    const detail = { code, reason, gateway: gw.gateway_id };
    if (!this._wanted) {
      client._emit('disconnected', { ...detail, willReconnect: false, retryInMs: null });
      this._setState('idle');
      return;
    }
    if (NO_RECONNECT.includes(code)) {
      this._wanted = false;
      this._clearReconnect();
      client._emit('disconnected', { ...detail, willReconnect: false, retryInMs: null });
      this._setState('stopped', { code, reason });
      client._emit('stopped', detail);
      return;
    }
    if (code === TOKEN_REVOKED) {
      // Revoked by a password change: a newer token (ours, if this client made the change) gets
      // a new connection; a refused renewal ends the session.
      try {
        await client._session.renew(used);
      } catch (e) {
        // (An ended session has stopped this connection already: `gen` moved.)
        if (e instanceof SessionEndedError) return this._sessionOver(detail);
        if (gen !== this._gen) return undefined;
      }
      if (gen !== this._gen) return undefined;
      return this._scheduleReconnect({ ...detail, immediate: true });
    }
    // Unreachable, dropped without a close frame (1006) or going away (1001): it may be dead.
    if (!opened || code === 1006 || code === 1001) this._suspect(gw.gateway_id);
    if (!opened && this._attempt >= 1) {
      // Refused at the handshake more than once: a browser cannot see why, and the token may
      // have been refused (401). An authenticated call renews it on a 401 and ends the session
      // when that is refused.
      try {
        await client.request('meta', 'GET', '/api/user/me');
      } catch (e) {
        // (An ended session has stopped this connection already: `gen` moved.)
        if (e instanceof SessionEndedError) return this._sessionOver(detail);
        if (gen !== this._gen) return undefined;
      }
      if (gen !== this._gen) return undefined;
    }
    return this._scheduleReconnect(detail);
  }

  _sessionOver(detail) {
    this._wanted = false;
    this._clearReconnect();
    if (detail) this._client._emit('disconnected', { ...detail, willReconnect: false, retryInMs: null });
    this._setState('idle');
  }

  _startKeepalive(ws) {
    clearInterval(this._pingTimer);
    this._pingTimer = setInterval(() => this._sendFrame({ type: 'ping' }), this._o.pingIntervalMs);
    this._heard();
  }

  /** Something arrived: the connection is alive; a long silence means it is not. */
  _heard() {
    clearTimeout(this._silenceTimer);
    const ws = this._ws;
    this._silenceTimer = setTimeout(() => {
      if (this._ws !== ws || !ws) return;
      // Nothing (not even a pong) for this long: a dead peer the network did not report.
      this._ws = null;
      this._stopTimers();
      this._failPongs();
      try {
        ws.close(4000);
      } catch {
        // It is being dropped anyway.
      }
      this._suspect(this.gateway && this.gateway.gateway_id);
      this._scheduleReconnect({ code: 1006, reason: 'the gateway went silent', gateway: this.gateway && this.gateway.gateway_id });
    }, this._o.silenceTimeoutMs);
  }

  /** Sends a client frame; answers whether the socket was open to take it. */
  _sendFrame(obj) {
    const ws = this._ws;
    if (!ws || ws.readyState !== OPEN) return false;
    ws.send(JSON.stringify(obj));
    return true;
  }

  /** Resolves on the `pong` that answers this `ping` (frames are answered in order). */
  ping() {
    // Acknowledgements due go first, so the pong also says the gateway has handled them.
    this._flushAcks();
    return new Promise((resolve, reject) => {
      if (!this._sendFrame({ type: 'ping' })) {
        reject(new ApiError(0, 'disconnected', 'Not connected.'));
        return;
      }
      this._pongs.push({ resolve, reject });
    });
  }

  /** Acknowledges `seq` of `roomId` (cumulatively) at the next flush. */
  queueAck(roomId, seq) {
    if (!this._ws) return;
    this._ackDue.set(roomId, Math.max(this._ackDue.get(roomId) || 0, seq));
    if (this._ackTimer) return;
    this._ackTimer = setTimeout(() => this._flushAcks(), this._o.ackDelayMs);
  }

  _flushAcks() {
    clearTimeout(this._ackTimer);
    this._ackTimer = null;
    for (const [room, seq] of this._ackDue) {
      if (this._sendFrame({ type: 'ack', room_id: room, seq })) {
        this._client._emit('acknowledged', { room_id: room, seq });
      }
    }
    this._ackDue.clear();
  }

  /** Sends a client frame as it is; false when not connected. */
  frame(obj) {
    return this._sendFrame(obj);
  }

  /** Asks the gateway for everything in `roomId` after `afterSeq`. */
  sync(roomId, afterSeq) {
    return this._sendFrame({ type: 'sync', room_id: roomId, after_seq: afterSeq });
  }
}
