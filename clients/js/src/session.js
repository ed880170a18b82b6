// The session: the short-lived access token and the refresh token that renews it
// (docs/protocol.md, "Sessions"). A refresh token is spent by its use and answered with a new
// pair; presented twice it revokes the whole session, so renewals are serialized (a lock across
// tabs where the browser has Web Locks, an in-process queue otherwise) and a pair renewed by
// another tab meanwhile is adopted instead of spending the stale one.

import { ApiError, SessionEndedError } from './errors.js';

/**
 * @typedef {object} SessionData A login's (or refresh's) answer, as the API gives it.
 * @property {string} token The access token (a JWT).
 * @property {number} user_id
 * @property {string} expires_at RFC 3339: when the access token is refused.
 * @property {string} refresh_token
 * @property {string} [refresh_expires_at] RFC 3339.
 */

export class Session {
  /**
   * @param {object} o
   * @param {(path: string, body: unknown) => Promise<{status: number, envelope: any}>} o.post
   *   Posts JSON to Meta without an Authorization header; throws ApiError(0) when unreachable.
   * @param {(event: string, value: unknown) => void} o.emit
   * @param {number} o.renewAheadMs
   * @param {number} o.retryMs How soon a renewal that could not reach the server is tried again.
   * @param {((fn: () => Promise<unknown>) => Promise<unknown>) | undefined} o.lock
   * @param {(() => SessionData | null | undefined) | undefined} o.loadSession
   */
  constructor({ post, emit, renewAheadMs, retryMs, lock, loadSession }) {
    this._post = post;
    this._emit = emit;
    this._renewAheadMs = renewAheadMs;
    this._retryMs = retryMs;
    this._lock = lock || defaultLock();
    this._loadSession = loadSession;
    /** @type {SessionData | null} */
    this.data = null;
    this._renewAt = 0;
    this._timer = null;
    /** A password change under way (its answer is the session's next pair). */
    this._changing = null;
  }

  /**
   * Runs `fn`, a password change answering the session's next pair, and adopts that pair;
   * renewals meanwhile wait for it: the server revokes the old tokens, and closes the connections
   * opened with them, before its answer arrives here.
   * @param {() => Promise<SessionData>} fn
   */
  async changing(fn) {
    /** @type {(value?: unknown) => void} */
    let done = () => {};
    this._changing = new Promise((resolve) => {
      done = resolve;
    });
    try {
      this.adopt(await fn());
    } finally {
      this._changing = null;
      done();
    }
  }

  /** The access token, or null when logged out. */
  get token() {
    return this.data ? this.data.token : null;
  }

  get userId() {
    return this.data ? this.data.user_id : null;
  }

  /**
   * Takes `data` as the session (a login, a refresh, a saved one resumed) and plans its renewal.
   * @param {SessionData} data @param {boolean} [announce] emit `session` (not for a resume)
   */
  adopt(data, announce = true) {
    this.data = {
      token: data.token,
      user_id: data.user_id,
      expires_at: data.expires_at,
      refresh_token: data.refresh_token,
      refresh_expires_at: data.refresh_expires_at,
    };
    const expires = Date.parse(data.expires_at) || 0;
    const left = Math.max(0, expires - Date.now());
    // A minute ahead, or half the remaining life when the token lives shorter than two.
    this._renewAt = expires - Math.min(this._renewAheadMs, left / 2);
    if (announce) this._emit('session', { ...this.data });
    this._schedule(Math.max(0, this._renewAt - Date.now()));
  }

  _schedule(ms) {
    clearTimeout(this._timer);
    this._timer = null;
    if (!this.data) return;
    // Timers longer than 2^31-1 ms fire at once; a 30-day session is renewed well before then.
    this._timer = setTimeout(() => {
      this._timer = null;
      if (this.data) this.renew(this.data).catch(() => {});
    }, Math.min(ms, 2 ** 31 - 1));
  }

  /** Forgets the session here (no server call) and stops its renewal. */
  clear() {
    clearTimeout(this._timer);
    this._timer = null;
    this.data = null;
  }

  /**
   * The session, its access token renewed first when due. Throws SessionEndedError without one.
   * What it answers is what to hand to `renew` when that token is refused.
   * @returns {Promise<SessionData>}
   */
  async fresh() {
    if (!this.data) throw new SessionEndedError('not_logged_in', 'Not logged in.');
    if (Date.now() >= this._renewAt) await this.renew(this.data);
    if (!this.data) throw new SessionEndedError('not_logged_in', 'Not logged in.');
    return this.data;
  }

  /**
   * Renews the session `stale` (the pair whose access token is due or was refused; compared by
   * identity, and by refresh token for a saved one: two access tokens issued within the same
   * second are the same string): under the lock, a pair renewed meanwhile (by this client or,
   * through `loadSession`, another tab) is adopted as it is; otherwise the refresh token is
   * spent. Answers whether a pair newer than `stale` is held. A refused refresh ends the session (`session_ended`) and throws SessionEndedError; a server
   * out of reach leaves the session as it is (tried again shortly) and answers false.
   * @param {SessionData} stale @returns {Promise<boolean>}
   */
  async renew(stale) {
    if (this._changing) await this._changing;
    return this._lock(async () => {
      if (!this.data) throw new SessionEndedError('not_logged_in', 'Not logged in.');
      const saved = this._loadSession ? this._loadSession() : null;
      if (saved && saved.user_id === this.data.user_id && saved.token && saved.refresh_token
          && saved.refresh_token !== stale.refresh_token
          && saved.refresh_token !== this.data.refresh_token) {
        this.adopt(saved, false);
        return true;
      }
      if (this.data !== stale) return true;
      const before = this.data;
      let reply;
      try {
        reply = await this._post('/api/user/refresh', { refresh_token: before.refresh_token });
      } catch (e) {
        if (!(e instanceof ApiError) || e.status !== 0) throw e;
        this._schedule(this._retryMs);
        return false;
      }
      // Logged out (or logged in afresh) while the refresh was under way: not wanted.
      if (this.data !== before) return this.data !== null;
      const { status, envelope } = reply;
      if (status === 200 && envelope && envelope.code === 200) {
        this.adopt(envelope.data);
        return true;
      }
      if (status === 401) {
        const name = (envelope && envelope.error) || 'invalid_refresh_token';
        const message = (envelope && envelope.message) || 'The session has ended; log in again.';
        this.end(name, message);
        throw new SessionEndedError(name, message);
      }
      // Anything else (5xx, 429): the session is not over; try again shortly.
      this._schedule(this._retryMs);
      return false;
    });
  }

  /** Ends the session here because the server refused it; emits `session_ended`. */
  end(name, message) {
    if (!this.data) return;
    this.clear();
    this._emit('session_ended', { error: name, message });
  }
}

/** Web Locks where there are (one refresh at a time across a browser's tabs), else a queue. */
function defaultLock() {
  const locks = typeof navigator !== 'undefined' && navigator && navigator.locks;
  if (locks && typeof locks.request === 'function') {
    return (fn) => locks.request('ruststacker.refresh', fn);
  }
  let tail = Promise.resolve();
  return (fn) => {
    const run = tail.then(fn, fn);
    tail = run.catch(() => {});
    return run;
  };
}
