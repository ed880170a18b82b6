// The client: one user's session against one RustStacker deployment. HTTP calls to Meta, Send and
// the registry (the `{code, message, data}` envelope unwrapped, the access token renewed ahead of
// its expiry and after a 401), the live connection (live.js), ordered and deduplicated delivery
// (delivery.js), sending with automatic retries under one `client_msg_id`, and history paging.

import { ApiError, SessionEndedError } from './errors.js';
import { Emitter } from './emitter.js';
import { Session } from './session.js';
import { Delivery, fromFrame } from './delivery.js';
import { Live } from './live.js';

/**
 * @typedef {object} ClientOptions
 * @property {string} metaUrl Meta's base URL, e.g. `http://127.0.0.1:8080`.
 * @property {string} [sendUrl] Send's base URL; default: what Meta's `GET /api/web/config` says.
 * @property {string} [registryUrl] The registry's base URL; default: as `sendUrl`.
 * @property {typeof fetch} [fetch] default: the global `fetch`.
 * @property {any} [WebSocket] A WebSocket constructor (browser API); default: the global one.
 * @property {string} [deviceId] Sent as `device_id` on the WebSocket URL when set.
 * @property {import('./session.js').SessionData} [session] A saved session to resume.
 * @property {() => (import('./session.js').SessionData | null | undefined)} [loadSession]
 *   Reads the saved session (another tab may have renewed it): checked before each refresh.
 * @property {(fn: () => Promise<unknown>) => Promise<unknown>} [lock] Serializes refreshes;
 *   default: the Web Lock `ruststacker.refresh` where there is one, else an in-process queue.
 * @property {Record<string, number>} [cursors] The last `seq` per room a previous run handed to
 *   the app (`client.cursors()`): gaps after them are filled.
 * @property {number} [renewAheadMs] Renew this long before the access token expires (60000; half
 *   its remaining life when it lives shorter).
 * @property {number} [reconnectFirstMs] First reconnect delay before jitter (500: 250-500 ms).
 * @property {number} [reconnectMaxMs] Reconnect delay ceiling (10000).
 * @property {number} [excludeMs] How long a lost gateway is left out of placements (30000).
 * @property {number} [ackDelayMs] Acknowledgements are gathered this long into one frame per room (100).
 * @property {number} [pingIntervalMs] A `ping` frame this often while connected (25000).
 * @property {number} [silenceTimeoutMs] Nothing heard this long: the connection is dropped (60000).
 * @property {number} [gapTimeoutMs] A gap the `sync` did not fill by then is read from history (3000).
 * @property {boolean} [catchUp] After each connect, compare the rooms' last `seq` with what was
 *   delivered and fill what is missing (true).
 * @property {number} [dedupeWindow] Message ids remembered for deduplication (10000).
 * @property {number} [sendMaxAttempts] Attempts per `sendMessage` (10).
 * @property {number} [sendTimeoutMs] No new attempt after this long (60000).
 * @property {number} [sendRetryFirstMs] First delay between attempts (250, doubling to 5000, jittered).
 * @property {number} [historyPageSize] Messages per history page (50; the server allows up to 200).
 * @property {(gateway: Gateway, token: string) => string} [gatewayUrl] Builds the WebSocket URL
 *   (e.g. behind a proxy); default `ws(s)://address:port/api/ws?token=..&ack=true[&device_id=..]`.
 */

/**
 * @typedef {object} Gateway The registry's placement.
 * @property {string} gateway_id
 * @property {string} address
 * @property {number} port
 */

const DEFAULTS = {
  renewAheadMs: 60000,
  renewRetryMs: 5000,
  reconnectFirstMs: 500,
  reconnectMaxMs: 10000,
  excludeMs: 30000,
  ackDelayMs: 100,
  pingIntervalMs: 25000,
  silenceTimeoutMs: 60000,
  gapTimeoutMs: 3000,
  catchUp: true,
  dedupeWindow: 10000,
  sendMaxAttempts: 10,
  sendTimeoutMs: 60000,
  sendRetryFirstMs: 250,
  sendRetryMaxMs: 5000,
  historyPageSize: 50,
};

/** A client-chosen id that makes retries of one send idempotent (1-64 printable ASCII). */
export function newClientMsgId() {
  const c = globalThis.crypto;
  let rnd;
  if (c && typeof c.getRandomValues === 'function') {
    const a = c.getRandomValues(new Uint32Array(2));
    rnd = a[0].toString(36) + a[1].toString(36);
  } else {
    rnd = Math.random().toString(36).slice(2) + Math.random().toString(36).slice(2);
  }
  return `js-${Date.now().toString(36)}-${rnd}`;
}

function trimSlash(u) {
  return u.replace(/\/+$/, '');
}

export class Client extends Emitter {
  /** @param {ClientOptions} options */
  constructor(options) {
    super();
    if (!options || typeof options.metaUrl !== 'string') {
      throw new TypeError('new Client({metaUrl}) needs Meta\'s base URL');
    }
    const o = { ...DEFAULTS, ...options };
    o.metaUrl = trimSlash(o.metaUrl);
    const f = o.fetch || globalThis.fetch;
    if (typeof f !== 'function') throw new TypeError('no fetch: pass one in the options');
    o.fetch = options.fetch ? f : f.bind(globalThis);
    if (!o.WebSocket) o.WebSocket = globalThis.WebSocket;
    this._o = o;
    this._urls = null;
    this._hosts = { registryHost: '127.0.0.1', secure: false };
    this._closed = false;
    this._timers = new Set();
    this._sleepers = new Set();
    this._session = new Session({
      post: (path, body) => this._raw(o.metaUrl, 'POST', path, body, null),
      emit: (e, v) => this._emit(e, v),
      renewAheadMs: o.renewAheadMs,
      retryMs: o.renewRetryMs,
      lock: o.lock,
      loadSession: o.loadSession,
    });
    this._delivery = new Delivery({
      deliver: (m) => this._emit('message', m),
      onGap: (room, after, before) => this._gap(room, after, before),
      dedupeWindow: o.dedupeWindow,
      cursors: o.cursors,
    });
    this._live = new Live({ client: this, options: o });
    this.on('session_ended', () => this._live.stop('idle'));
    if (o.session) this._session.adopt(o.session, false);
  }

  _emit(event, value) {
    this.emit(event, value);
  }

  // ---- the session ----

  /** The current session (to save), or null. */
  get session() {
    return this._session.data ? { ...this._session.data } : null;
  }

  /** The logged-in user's id, or null. */
  get userId() {
    return this._session.userId;
  }

  /** The live connection's state: `idle`, `connecting`, `online`, `offline` or `stopped`. */
  get state() {
    return this._live.state;
  }

  /** When the next reconnect is due (ms since the epoch), or null when none is planned. */
  get nextReconnectAt() {
    return this._live.nextReconnectAt;
  }

  /** Registers a user (does not log in). */
  register({ username, password, nickname }) {
    return this.request('meta', 'POST', '/api/user/register',
      { username, password, nickname: nickname == null ? null : nickname }, { auth: false });
  }

  /** Logs in: starts a session (emits `session`). */
  async login(username, password) {
    const data = await this.request('meta', 'POST', '/api/user/login', { username, password },
      { auth: false });
    this._session.adopt(data);
    return this.session;
  }

  /** Takes a saved session (e.g. from storage) as this client's; renewed when due. */
  resume(session) {
    this._session.adopt(session, false);
  }

  /** Renews the access token now (spends the refresh token). */
  async renew() {
    if (!this._session.data) throw new SessionEndedError('not_logged_in', 'Not logged in.');
    return this._session.renew(this._session.data);
  }

  /** Changes the password: every other session is revoked; this client takes the new one. */
  async changePassword(oldPassword, newPassword) {
    await this._session.changing(() => this.request('meta', 'PUT', '/api/user/password',
      { old_password: oldPassword, new_password: newPassword }));
    return this.session;
  }

  /**
   * Logs out: revokes the session on the server (best effort), closes the connection and forgets
   * the session here (emits `session_ended` with `error: "logged_out"`).
   */
  async logout() {
    const token = this._session.token;
    this._live.stop('idle');
    if (token) {
      try {
        await this._raw(this._o.metaUrl, 'POST', '/api/user/logout', undefined, token);
      } catch {
        // Unreachable: the access token runs out by itself; the session is forgotten here.
      }
    }
    this._session.end('logged_out', 'Logged out.');
  }

  // ---- HTTP ----

  /** Send's and the registry's base URLs (from the options, else from Meta's web config). */
  async urls() {
    if (this._urls) return this._urls;
    let { sendUrl, registryUrl } = this._o;
    if (!sendUrl || !registryUrl) {
      const cfg = await this.request('meta', 'GET', '/api/web/config', undefined, { auth: false });
      sendUrl = sendUrl || cfg.send_url;
      registryUrl = registryUrl || cfg.registry_url;
    }
    this._urls = { meta: this._o.metaUrl, send: trimSlash(sendUrl), registry: trimSlash(registryUrl) };
    const reg = new URL(this._urls.registry);
    this._hosts = { registryHost: reg.hostname.replace(/^\[|\]$/g, ''), secure: reg.protocol === 'https:' };
    return this._urls;
  }

  async _base(service) {
    if (service === 'meta') return this._o.metaUrl;
    const urls = await this.urls();
    const base = urls[service];
    if (!base) throw new TypeError(`unknown service "${service}" (meta, send or registry)`);
    return base;
  }

  /** One HTTP call; answers the status and the parsed envelope (null when not JSON). */
  async _raw(base, method, path, body, token) {
    /** @type {Record<string, string>} */
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let resp;
    try {
      resp = await this._o.fetch(base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(0, 'unreachable', `${base} cannot be reached: ${e && e.message}`);
    }
    let envelope = null;
    try {
      envelope = await resp.json();
    } catch {
      envelope = null;
    }
    return { status: resp.status, envelope };
  }

  /**
   * Calls the API and answers the envelope's `data`; throws ApiError otherwise. With `auth` (the
   * default) the access token goes along, renewed first when due and once more after a 401 (the
   * call is then made again); a refused renewal throws SessionEndedError.
   * @param {'meta' | 'send' | 'registry'} service
   * @param {string} method @param {string} path @param {unknown} [body]
   * @param {{auth?: boolean}} [opts]
   */
  async request(service, method, path, body, { auth = true } = {}) {
    const base = await this._base(service);
    const used = auth ? await this._session.fresh() : null;
    const token = used ? used.token : null;
    let { status, envelope } = await this._raw(base, method, path, body, token);
    if (status === 401 && used) {
      if (!(await this._session.renew(used))) {
        // The refresh did not get through (Meta out of reach or failing): not the end of the
        // session, and worth trying again (sendMessage does).
        throw new ApiError(0, 'unreachable', 'The session could not be renewed: Meta is out of reach.');
      }
      ({ status, envelope } = await this._raw(base, method, path, body, this._session.token));
    }
    if (status >= 200 && status < 300 && envelope && envelope.code === 200) return envelope.data;
    const name = (envelope && envelope.error) || `http_${status}`;
    const message = (envelope && envelope.message) || `The server answered ${status}.`;
    throw new ApiError(status, name, message, envelope ? envelope.data : null);
  }

  /** Your profile. */
  me() {
    return this.request('meta', 'GET', '/api/user/me');
  }

  /** Your rooms: `{room_ids, rooms: [{room_id, name, is_group, last_seq, ...}]}`. */
  joinedRooms() {
    return this.request('meta', 'GET', '/api/joined_rooms');
  }

  /**
   * Creates a group with you as owner.
   * @param {string} name @param {number[]} memberIds @param {{open?: boolean}} [opts]
   */
  createGroup(name, memberIds, { open } = {}) {
    const body = { name, member_ids: memberIds };
    if (open !== undefined) body.open = open;
    return this.request('meta', 'POST', '/api/group/create', body);
  }

  /** The one-to-one room of you and `userId` (made on first use). */
  directRoom(userId) {
    return this.request('meta', 'POST', '/api/room/direct', { user_id: userId });
  }

  /** A room's members. */
  members(roomId) {
    return this.request('meta', 'GET', `/api/group/${roomId}/members`);
  }

  /**
   * The gateway the registry places this user on, leaving out `exclude` (unless none other is).
   * @param {string[]} [exclude] @returns {Promise<Gateway>}
   */
  async placement(exclude = []) {
    const userId = this._session.userId;
    if (userId === null) throw new SessionEndedError('not_logged_in', 'Not logged in.');
    const ex = exclude.length ? `&exclude=${exclude.map(encodeURIComponent).join(',')}` : '';
    return this.request('registry', 'GET', `/registry/gateway/available?user_id=${userId}${ex}`,
      undefined, { auth: false });
  }

  // ---- sending ----

  /**
   * Sends a message. Network failures, 429 and 5xx answers are retried (jittered backoff, up to
   * `sendMaxAttempts` attempts within `sendTimeoutMs`) with the same `client_msg_id`, so the
   * message is stored once however often it is tried; a retry of a stored one answers
   * `duplicate: true` with the original `message_id` and `seq`. Any other refusal throws at once.
   * @param {number} roomId @param {string} content
   * @param {{type?: 'text' | 'image' | 'file', clientMsgId?: string}} [opts]
   * @returns {Promise<{message_id: number, room_id: number, seq: number, timestamp: string,
   *   client_msg_id: string, duplicate: boolean}>}
   */
  async sendMessage(roomId, content, { type = 'text', clientMsgId } = {}) {
    const cid = clientMsgId || newClientMsgId();
    const body = { room_id: roomId, content, type, client_msg_id: cid };
    const started = Date.now();
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await this.request('send', 'POST', '/api/chat/send_message', body);
      } catch (e) {
        const again = e instanceof ApiError && !(e instanceof SessionEndedError) && e.retryable
          && attempt < this._o.sendMaxAttempts && Date.now() - started < this._o.sendTimeoutMs
          && !this._closed;
        if (!again) throw e;
        const base = Math.min(this._o.sendRetryMaxMs, this._o.sendRetryFirstMs * 2 ** (attempt - 1));
        const delay = base / 2 + Math.random() * (base / 2);
        this._emit('send_retry', {
          room_id: roomId, client_msg_id: cid, attempt, error: e, retryInMs: delay,
        });
        await this._sleep(delay);
      }
    }
  }

  _sleep(ms) {
    return new Promise((resolve, reject) => {
      const s = { reject };
      s.timer = setTimeout(() => {
        this._sleepers.delete(s);
        resolve();
      }, ms);
      this._sleepers.add(s);
    });
  }

  // ---- history ----

  /**
   * One page of a room's messages with `seq` after `afterSeq`, in `seq` order.
   * @param {number} roomId @param {{afterSeq?: number, limit?: number}} [opts]
   * @returns {Promise<{room_id: number, messages: import('./delivery.js').Message[], has_more: boolean}>}
   */
  history(roomId, { afterSeq = 0, limit = this._o.historyPageSize } = {}) {
    return this.request('send', 'GET',
      `/api/chat/history?room_id=${roomId}&after_seq=${afterSeq}&limit=${limit}`);
  }

  /**
   * Pages forward through a room's messages after `afterSeq` (up to `untilSeq` when given): one
   * array of messages per page, until there are no more.
   * @param {number} roomId
   * @param {{afterSeq?: number, limit?: number, untilSeq?: number}} [opts]
   * @returns {AsyncGenerator<import('./delivery.js').Message[], void, void>}
   */
  async *historyPages(roomId, { afterSeq = 0, limit = this._o.historyPageSize, untilSeq } = {}) {
    let after = afterSeq;
    for (;;) {
      const want = untilSeq === undefined ? limit : Math.min(limit, untilSeq - after);
      if (want <= 0) return;
      const page = await this.history(roomId, { afterSeq: after, limit: want });
      const messages = untilSeq === undefined
        ? page.messages : page.messages.filter((m) => m.seq <= untilSeq);
      if (messages.length) yield messages;
      if (!page.has_more || page.messages.length === 0) return;
      after = page.messages[page.messages.length - 1].seq;
    }
  }

  /**
   * The page of up to `limit` messages just before `beforeSeq` (for scrolling back), in `seq`
   * order; `has_more` says whether older ones exist.
   * @param {number} roomId @param {number} beforeSeq @param {number} [limit]
   */
  async historyBefore(roomId, beforeSeq, limit = this._o.historyPageSize) {
    const after = Math.max(0, beforeSeq - 1 - limit);
    const want = beforeSeq - 1 - after;
    if (want <= 0) return { room_id: roomId, messages: [], has_more: false };
    const page = await this.history(roomId, { afterSeq: after, limit: want });
    return {
      room_id: roomId,
      messages: page.messages.filter((m) => m.seq < beforeSeq),
      has_more: after > 0,
    };
  }

  // ---- the live connection ----

  /**
   * Connects (through the registry) and stays connected, reconnecting by itself, until
   * `disconnect()`, `close()`, `logout()`, the end of the session or a close code that says not
   * to (`stopped`). Resolves once the URLs are known; `connected` follows.
   */
  async connect() {
    if (this._closed) throw new Error('this client was closed');
    if (!this._session.data) throw new SessionEndedError('not_logged_in', 'Not logged in.');
    if (typeof this._o.WebSocket !== 'function') {
      // Node 20 without --experimental-websocket, for one.
      throw new TypeError('no WebSocket: pass a constructor as the WebSocket option');
    }
    await this.urls();
    this._live.start();
  }

  /** Closes the connection (the acknowledgements due are sent first); the session stays. */
  disconnect() {
    this._live.stop('idle');
  }

  /**
   * Stops everything: the connection, the session's renewal timer, retries and gap fills (the
   * session stays valid on the server: save `client.session` to resume it).
   */
  close() {
    this._closed = true;
    this._live.stop('idle');
    this._session.clear();
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    for (const s of this._sleepers) {
      clearTimeout(s.timer);
      s.reject(new ApiError(0, 'closed', 'The client was closed.'));
    }
    this._sleepers.clear();
  }

  /** Sends a `ping` frame; resolves on its `pong` (after the gateway handled earlier frames). */
  ping() {
    return this._live.ping();
  }

  /** Asks the gateway for everything in `roomId` after `afterSeq` (they come as `message`s). */
  sync(roomId, afterSeq) {
    return this._live.sync(roomId, afterSeq);
  }

  /**
   * Says the user has read `roomId` up to `seq` (cumulative, across their devices): the server
   * stores it, tells the user's other devices and, in small rooms, the other members (`read`
   * events). False when not connected (send it again once `connected`).
   */
  markRead(roomId, seq) {
    return this._live.frame({ type: 'read', room_id: roomId, seq });
  }

  /**
   * Says the user is typing in `roomId` (send it every few seconds while they type); the room's
   * other online members get a `typing` event. Never stored; the server drops frames past its
   * rate limit. False when not connected.
   */
  typing(roomId) {
    return this._live.frame({ type: 'typing', room_id: roomId });
  }

  /** The last `seq` handed to the app per room: keep it to pass as `cursors` next time. */
  cursors() {
    return this._delivery.cursors();
  }

  _later(ms, fn) {
    const t = setTimeout(() => {
      this._timers.delete(t);
      fn();
    }, ms);
    this._timers.add(t);
  }

  _onFrame(f) {
    this._emit('frame', f);
    switch (f.type) {
      case 'system':
        this._emit('system', f);
        if (this._o.catchUp) this._catchUp();
        break;
      case 'chat': {
        const m = fromFrame(f);
        this._delivery.take(m);
        const upTo = this._delivery.delivered(m.room_id);
        if (upTo !== null) this._live.queueAck(m.room_id, upTo);
        break;
      }
      case 'ack':
        this._emit('ack', {
          id: f.id, room_id: f.room_id, seq: f.seq,
          client_msg_id: f.client_msg_id == null ? null : f.client_msg_id,
        });
        break;
      case 'pong':
        this._emit('pong', f);
        break;
      case 'notice':
        if (f.event === 'dissolved') this._delivery.drop(f.room_id);
        this._emit('notice', f);
        break;
      case 'read':
        this._emit('read', { room_id: f.room_id, user_id: f.user_id, seq: f.seq });
        break;
      case 'typing':
        this._emit('typing', { room_id: f.room_id, user_id: f.user_id });
        break;
      default:
        // A frame of a newer server: only `frame` sees it.
        break;
    }
  }

  /** A gap opened: `sync` for it, and read history for whatever is still missing later. */
  _gap(roomId, afterSeq, beforeSeq) {
    this._emit('gap', { room_id: roomId, after_seq: afterSeq, before_seq: beforeSeq });
    this._live.sync(roomId, afterSeq);
    this._later(this._o.gapTimeoutMs, () => this._fillFromHistory(roomId));
  }

  async _fillFromHistory(roomId) {
    if (this._closed || !this._delivery.waiting(roomId)) return;
    const from = this._delivery.delivered(roomId);
    const until = this._delivery.firstHeld(roomId);
    try {
      if (until !== null) {
        for await (const page of this.historyPages(roomId, { afterSeq: from, untilSeq: until - 1 })) {
          for (const m of page) this._delivery.take(m);
        }
      }
    } catch (e) {
      if (this._closed) return;
      if (e instanceof ApiError && e.retryable) {
        // Out of reach for now: the messages after the gap stay held (none is handed over, or
        // acknowledged, past a hole that may yet be filled) and both ways are tried again.
        if (this._delivery.waiting(roomId)) this._gap(roomId, this._delivery.delivered(roomId), until);
        return;
      }
      // Refused (no longer a member, the room is gone): there is nothing to fill it with.
    }
    // What history did not have is not there to have: the held messages go out in order.
    if (this._delivery.waiting(roomId)) this._delivery.release(roomId);
    const upTo = this._delivery.delivered(roomId);
    if (upTo !== null) this._live.queueAck(roomId, upTo);
  }

  /**
   * After a connect: rooms whose last `seq` is past what was delivered and that the gateway's
   * resync did not bring up to date by `gapTimeoutMs` (another device of this user moved the
   * cursor meanwhile) are filled like a gap.
   */
  async _catchUp() {
    const known = this._delivery.cursors();
    if (Object.keys(known).length === 0) return;
    let rooms;
    try {
      ({ rooms } = await this.joinedRooms());
    } catch {
      return;
    }
    const behind = rooms.filter((r) => known[r.room_id] !== undefined && r.last_seq > known[r.room_id]);
    if (behind.length === 0) return;
    this._later(this._o.gapTimeoutMs, () => {
      for (const r of behind) {
        const at = this._delivery.delivered(r.room_id);
        if (at !== null && at < r.last_seq && !this._delivery.waiting(r.room_id)) {
          this._emit('gap', { room_id: r.room_id, after_seq: at, before_seq: r.last_seq + 1 });
          this._live.sync(r.room_id, at);
        }
      }
    });
  }
}
