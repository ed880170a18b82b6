// RustStacker web chat. Plain JavaScript, no framework, no build step.
//
// It uses the public API only: Meta (this page's origin) for accounts, rooms and people; Send for
// sending and history; the registry to find a gateway; and the gateway's WebSocket for live
// messages, delivery ACKs and resync (docs/protocol.md). Where Send and the registry are comes
// from `GET /api/web/config`.
//
// Message content is only ever put into the page with `textContent`, never as HTML.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);

  /** Most messages shown when a room opens (the latest ones; older ones stay in history). */
  const HISTORY_PAGE = 50;
  /** Reconnect backoff: first delay and ceiling, in milliseconds. */
  const BACKOFF_FIRST_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  /** A gateway lost or unreachable is left out of this page's placements this long. */
  const AVOID_MS = 30000;
  /** How long acknowledgements are gathered before one cumulative `ack` frame per room. */
  const ACK_DELAY_MS = 100;
  /**
   * The access token is renewed this long before it expires, or half its lifetime ahead when it
   * lives shorter (docs/protocol.md, "Sessions").
   */
  const RENEW_AHEAD_MS = 60000;

  const state = {
    /** The session: the access token, when it expires (ms), and the refresh token. */
    token: null,
    expiresAt: 0,
    /** When the access token is due for renewal (ms; see RENEW_AHEAD_MS). */
    renewAt: 0,
    refreshToken: null,
    renewTimer: null,
    /** The in-page queue of renewals where Web Locks are missing. */
    renewing: null,
    userId: null,
    username: null,
    sendUrl: null,
    registryUrl: null,
    /** room_id -> room record (see `room()`). */
    rooms: new Map(),
    /** The open room's id, or null. */
    current: null,
    /** user_id -> {username, nickname} */
    users: new Map(),
    /** client_msg_id -> message record of mine not yet confirmed by Send. */
    pending: new Map(),
    /** Ids of my messages whose ACK frame came before we knew the message. */
    acked: new Set(),
    ws: null,
    attempt: 0,
    /** Gateways lost lately: id -> when (see AVOID_MS). */
    avoid: new Map(),
    reconnectTimer: null,
    /** room_id -> highest seq received on the current connection (gap detection). */
    wsSeq: new Map(),
    /** room_id -> seq to acknowledge at the next flush. */
    ackDue: new Map(),
    ackTimer: null,
  };

  // ---- storage: the session and what was read, per user ----

  const SESSION_KEY = 'ruststacker.session';

  function saveSession() {
    localStorage.setItem(SESSION_KEY, JSON.stringify({
      token: state.token,
      expires_at: state.expiresAt,
      refresh_token: state.refreshToken,
      user_id: state.userId,
      username: state.username,
    }));
  }

  function readSession() {
    try {
      return JSON.parse(localStorage.getItem(SESSION_KEY));
    } catch {
      return null;
    }
  }

  /** Takes a login (or refresh) reply as the session, saves it and plans its renewal. */
  function adoptTokens(data) {
    state.token = data.token;
    state.expiresAt = Date.parse(data.expires_at) || 0;
    state.refreshToken = data.refresh_token;
    saveSession();
    scheduleRenewal();
  }

  /** Sets when the current access token is due: a minute ahead, or half its remaining life. */
  function planRenewal() {
    const left = state.expiresAt - Date.now();
    state.renewAt = state.expiresAt - Math.min(RENEW_AHEAD_MS, Math.max(0, left) / 2);
  }

  // ---- the session: silent renewal ----

  function scheduleRenewal() {
    clearTimeout(state.renewTimer);
    if (!state.token || !state.refreshToken) return;
    planRenewal();
    const wait = Math.max(0, state.renewAt - Date.now());
    state.renewTimer = setTimeout(() => {
      renew(state.token).catch(() => {});
    }, wait);
  }

  /** Serializes `fn` across this page's tabs (a refresh token must be spent once). */
  function exclusively(fn) {
    if (navigator.locks) return navigator.locks.request('ruststacker.refresh', fn);
    const run = (state.renewing || Promise.resolve()).then(fn, fn);
    state.renewing = run.catch(() => {});
    return run;
  }

  /**
   * Renews the access token `stale`: under the lock, a session another tab renewed meanwhile is
   * adopted as it is; otherwise the refresh token is spent for a new pair. A refused refresh ends
   * the session (the log-in screen); an unreachable server leaves it as it is.
   */
  function renew(stale) {
    return exclusively(async () => {
      const saved = readSession();
      if (saved && saved.user_id === state.userId && saved.token && saved.token !== stale) {
        state.token = saved.token;
        state.expiresAt = saved.expires_at || 0;
        state.refreshToken = saved.refresh_token;
        scheduleRenewal();
        return true;
      }
      if (state.token !== stale) return true;
      if (!state.refreshToken) {
        logout('Your session has ended; log in again.');
        return false;
      }
      let resp;
      try {
        resp = await fetch(`${location.origin}/api/user/refresh`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ refresh_token: state.refreshToken }),
        });
      } catch {
        // Unreachable: try again shortly; the session is not over.
        clearTimeout(state.renewTimer);
        state.renewTimer = setTimeout(() => renew(state.token).catch(() => {}), 5000);
        return false;
      }
      let envelope = null;
      try {
        envelope = await resp.json();
      } catch {
        envelope = null;
      }
      // Logged out while the refresh was under way: the answer is not wanted.
      if (state.token !== stale) return false;
      if (resp.ok && envelope && envelope.code === 200) {
        adoptTokens(envelope.data);
        return true;
      }
      if (resp.status === 401) logout('Your session has ended; log in again.');
      return false;
    });
  }

  /** Renews the access token first when it is about to expire. */
  async function freshToken() {
    if (state.token && state.refreshToken && Date.now() >= state.renewAt) {
      await renew(state.token);
    }
    return state.token;
  }

  function readSeqs() {
    try {
      return JSON.parse(localStorage.getItem(`ruststacker.read.${state.userId}`)) || {};
    } catch {
      return {};
    }
  }

  function saveReadSeq(roomId, seq) {
    const all = readSeqs();
    if ((all[roomId] || 0) >= seq) return;
    all[roomId] = seq;
    localStorage.setItem(`ruststacker.read.${state.userId}`, JSON.stringify(all));
  }

  // ---- HTTP ----

  class ApiError extends Error {
    constructor(status, name, message) {
      super(message);
      this.status = status;
      this.name = name;
    }
  }

  /**
   * Calls the API at `base` and answers the envelope's `data`; throws an ApiError otherwise. The
   * access token is renewed first when about to expire, and once more after a 401 (then the call
   * is made again); only a refused renewal logs out.
   */
  async function api(base, method, path, body, retried) {
    const headers = {};
    const sessionCall = state.token && path !== '/api/user/login';
    const token = sessionCall ? await freshToken() : null;
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let resp;
    try {
      resp = await fetch(base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new ApiError(0, 'unreachable', 'The server cannot be reached.');
    }
    let envelope = null;
    try {
      envelope = await resp.json();
    } catch {
      envelope = null;
    }
    if (!resp.ok || !envelope || envelope.code !== 200) {
      const name = (envelope && envelope.error) || `http_${resp.status}`;
      const message = (envelope && envelope.message) || `The server answered ${resp.status}.`;
      if (resp.status === 401 && token && !retried && await renew(token)) {
        return api(base, method, path, body, true);
      }
      if (resp.status === 401 && token && state.token === token) {
        logout('Your session has ended; log in again.');
      }
      throw new ApiError(resp.status, name, message);
    }
    return envelope.data;
  }

  const meta = (method, path, body) => api(location.origin, method, path, body);
  const send = (method, path, body) => api(state.sendUrl, method, path, body);

  // ---- people ----

  function rememberUser(u) {
    state.users.set(u.user_id, { username: u.username, nickname: u.nickname || u.username });
  }

  function displayName(userId) {
    const u = state.users.get(userId);
    return u ? u.nickname : `user ${userId}`;
  }

  /** Loads the profiles of `ids` that are not known yet. */
  async function learnUsers(ids) {
    const unknown = [...new Set(ids)].filter((id) => !state.users.has(id));
    await Promise.all(unknown.map(async (id) => {
      try {
        rememberUser(await meta('GET', `/api/user/${id}`));
      } catch {
        // A name is cosmetic: the id stays on show.
      }
    }));
  }

  // ---- rooms ----

  /** The record of a room: its view, its messages by id, what was read. */
  function room(roomId) {
    let r = state.rooms.get(roomId);
    if (!r) {
      r = {
        id: roomId,
        view: null,
        title: `Room ${roomId}`,
        messages: new Map(),
        lastSeq: 0,
        readSeq: readSeqs()[roomId] || 0,
        membersLoaded: false,
      };
      state.rooms.set(roomId, r);
    }
    return r;
  }

  function unreadCount(r) {
    let n = 0;
    for (const m of r.messages.values()) {
      if (m.seq > r.readSeq && m.sender_id !== state.userId) n += 1;
    }
    // Messages the page has not loaded (more than one history page behind) count too.
    const loaded = [...r.messages.values()].filter((m) => m.seq > r.readSeq).length;
    const unloaded = Math.max(0, r.lastSeq - r.readSeq - loaded);
    return n + unloaded;
  }

  async function loadMembers(r) {
    const data = await meta('GET', `/api/group/${r.id}/members`);
    for (const m of data.members) rememberUser(m);
    r.membersLoaded = true;
    if (r.view && !r.view.is_group) {
      const peer = data.members.find((m) => m.user_id !== state.userId);
      if (peer) r.title = peer.nickname || peer.username;
    }
  }

  /** Reads my rooms, names them, and loads what is unread in each (one page at most). */
  async function loadRooms() {
    const data = await meta('GET', '/api/joined_rooms');
    const ids = new Set();
    for (const view of data.rooms) {
      const r = room(view.room_id);
      ids.add(view.room_id);
      r.view = view;
      r.lastSeq = Math.max(r.lastSeq, view.last_seq);
      if (view.is_group) r.title = view.name;
    }
    for (const id of [...state.rooms.keys()]) {
      if (!ids.has(id)) state.rooms.delete(id);
    }
    if (state.current !== null && !state.rooms.has(state.current)) closeRoom();
    await Promise.all([...state.rooms.values()].map(async (r) => {
      try {
        if (!r.view.is_group && !r.membersLoaded) await loadMembers(r);
        if (r.lastSeq > r.readSeq) await loadHistory(r);
      } catch {
        // The list still shows the room; opening it tries again.
      }
    }));
    renderRooms();
  }

  /** Fetches the room's messages after the newest one the page has (at most one page). */
  async function loadHistory(r) {
    const known = Math.max(0, ...[...r.messages.values()].map((m) => m.seq));
    const after = Math.max(known, r.lastSeq - HISTORY_PAGE, 0);
    const data = await send('GET',
      `/api/chat/history?room_id=${r.id}&after_seq=${after}&limit=${HISTORY_PAGE}`);
    for (const m of data.messages) {
      addMessage({
        id: m.id, room_id: m.room_id, sender_id: m.sender_id, seq: m.seq,
        content: m.content, timestamp: m.timestamp, client_msg_id: m.client_msg_id,
      });
    }
    if (data.has_more) await loadHistory(r);
  }

  function renderRooms() {
    const list = $('room-list');
    const rooms = [...state.rooms.values()].sort((a, b) => latest(b) - latest(a) || b.id - a.id);
    list.replaceChildren(...rooms.map((r) => {
      const li = document.createElement('li');
      li.className = 'room';
      li.dataset.roomId = String(r.id);
      li.classList.toggle('active', r.id === state.current);
      const name = document.createElement('span');
      name.className = 'room-name';
      name.textContent = r.title;
      const kind = document.createElement('span');
      kind.className = 'room-kind';
      kind.textContent = r.view && r.view.is_group ? 'group' : 'direct';
      const unread = document.createElement('span');
      unread.className = 'unread';
      const n = r.id === state.current ? 0 : unreadCount(r);
      unread.textContent = String(n);
      unread.hidden = n === 0;
      li.append(name, kind, unread);
      li.addEventListener('click', () => openRoom(r.id));
      return li;
    }));
    $('no-rooms').hidden = rooms.length > 0;
  }

  function latest(r) {
    let t = 0;
    for (const m of r.messages.values()) t = Math.max(t, Date.parse(m.timestamp) || 0);
    return t;
  }

  async function openRoom(roomId) {
    const r = room(roomId);
    state.current = roomId;
    $('app-view').classList.add('in-room');
    $('room-title').textContent = r.title;
    $('empty-hint').hidden = true;
    $('composer').hidden = false;
    renderMessages();
    renderRooms();
    $('message-input').focus();
    try {
      if (!r.membersLoaded) await loadMembers(r);
      await loadHistory(r);
    } catch (e) {
      showToast(e.message);
    }
    if (state.current !== roomId) return;
    $('room-title').textContent = r.title;
    await learnUsers([...r.messages.values()].map((m) => m.sender_id));
    renderMessages();
    markRead(r);
  }

  function closeRoom() {
    state.current = null;
    $('app-view').classList.remove('in-room');
    $('room-title').textContent = '';
    $('messages').replaceChildren();
    $('composer').hidden = true;
    $('empty-hint').hidden = false;
    renderRooms();
  }

  function markRead(r) {
    const top = Math.max(r.readSeq, ...[...r.messages.values()].map((m) => m.seq || 0));
    if (top > r.readSeq) {
      r.readSeq = top;
      saveReadSeq(r.id, top);
    }
    renderRooms();
  }

  // ---- messages ----

  /** Adds a message to its room unless it is there already (by id); answers whether it was new. */
  function addMessage(m) {
    const r = room(m.room_id);
    if (m.client_msg_id && state.pending.has(m.client_msg_id) && m.sender_id === state.userId) {
      const mine = state.pending.get(m.client_msg_id);
      state.pending.delete(m.client_msg_id);
      r.messages.delete(mine.key);
      mine.id = m.id;
      mine.seq = m.seq;
      mine.timestamp = m.timestamp;
      mine.key = m.id;
      if (mine.status === 'sending' || mine.status === 'failed') mine.status = 'sent';
      if (state.acked.delete(m.id)) mine.status = 'delivered';
      r.messages.set(m.id, mine);
      r.lastSeq = Math.max(r.lastSeq, m.seq);
      return false;
    }
    if (r.messages.has(m.id)) return false;
    const record = { ...m, key: m.id, status: null };
    if (m.sender_id === state.userId) {
      record.status = state.acked.delete(m.id) ? 'delivered' : 'sent';
    }
    r.messages.set(m.id, record);
    r.lastSeq = Math.max(r.lastSeq, m.seq || 0);
    return true;
  }

  function renderMessages() {
    const r = state.current === null ? null : state.rooms.get(state.current);
    const list = $('messages');
    if (!r) {
      list.replaceChildren();
      return;
    }
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const sorted = [...r.messages.values()].sort(
      (a, b) => (a.seq || Infinity) - (b.seq || Infinity) || (a.localOrder || 0) - (b.localOrder || 0));
    list.replaceChildren(...sorted.map(messageItem));
    if (atBottom || sorted.length <= HISTORY_PAGE) list.scrollTop = list.scrollHeight;
  }

  const STATUS_TEXT = {
    sending: 'sending…', sent: 'sent ✓', delivered: 'delivered ✓✓', failed: 'not sent: tap to retry',
  };

  function messageItem(m) {
    const li = document.createElement('li');
    const mine = m.sender_id === state.userId;
    li.className = mine ? 'message mine' : 'message';
    if (m.id) li.dataset.id = String(m.id);
    if (m.seq) li.dataset.seq = String(m.seq);
    if (m.client_msg_id) li.dataset.clientMsgId = m.client_msg_id;
    const sender = document.createElement('div');
    sender.className = 'sender';
    sender.textContent = displayName(m.sender_id);
    const content = document.createElement('div');
    content.className = 'content';
    content.textContent = m.content;
    const meta = document.createElement('div');
    meta.className = 'meta';
    const time = document.createElement('time');
    const when = m.timestamp ? new Date(m.timestamp) : null;
    time.textContent = when ? when.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '';
    meta.append(time);
    if (mine && m.status) {
      const st = document.createElement('span');
      st.className = 'state';
      st.dataset.status = m.status;
      st.textContent = ` · ${STATUS_TEXT[m.status]}`;
      if (m.status === 'failed') st.addEventListener('click', () => deliver(m));
      meta.append(st);
    }
    li.append(sender, content, meta);
    return li;
  }

  let localOrder = 0;

  /** A client-chosen id that makes retries of one send idempotent. */
  function newClientMsgId() {
    const rnd = crypto.getRandomValues(new Uint32Array(2));
    return `web-${Date.now().toString(36)}-${rnd[0].toString(36)}${rnd[1].toString(36)}`;
  }

  async function sendText(text) {
    const roomId = state.current;
    if (roomId === null) return;
    const r = room(roomId);
    const cid = newClientMsgId();
    const m = {
      key: cid, id: null, room_id: roomId, sender_id: state.userId, seq: null, content: text,
      timestamp: new Date().toISOString(), client_msg_id: cid, status: 'sending',
      localOrder: (localOrder += 1),
    };
    state.pending.set(cid, m);
    r.messages.set(cid, m);
    renderMessages();
    await deliver(m);
  }

  /** Posts a message of mine (again, after a failure: the same client_msg_id stores it once). */
  async function deliver(m) {
    m.status = 'sending';
    if (m.room_id === state.current) renderMessages();
    try {
      const reply = await send('POST', '/api/chat/send_message', {
        room_id: m.room_id, content: m.content, type: 'text', client_msg_id: m.client_msg_id,
      });
      addMessage({
        id: reply.message_id, room_id: m.room_id, sender_id: state.userId, seq: reply.seq,
        content: m.content, timestamp: reply.timestamp, client_msg_id: m.client_msg_id,
      });
      const r = room(m.room_id);
      if (m.room_id === state.current) markRead(r);
    } catch (e) {
      if (state.pending.has(m.client_msg_id)) m.status = 'failed';
      showToast(e.message);
    }
    if (m.room_id === state.current) renderMessages();
  }

  // ---- the WebSocket ----

  function setStatus(s) {
    const el = $('conn-status');
    el.dataset.state = s;
    el.textContent = s;
  }

  function scheduleReconnect() {
    clearTimeout(state.reconnectTimer);
    if (!state.token) return;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** state.attempt);
    state.attempt += 1;
    // Jitter, so clients that lost the same server do not all come back at the same instant.
    const delay = base / 2 + Math.random() * (base / 2);
    state.reconnectTimer = setTimeout(connect, delay);
  }

  /** Asks the registry for a gateway and connects to it; reconnects with backoff on failure. */
  async function connect() {
    clearTimeout(state.reconnectTimer);
    if (!state.token || state.ws) return;
    setStatus('connecting');
    let gw;
    const now = Date.now();
    for (const [id, at] of state.avoid) if (now - at >= AVOID_MS) state.avoid.delete(id);
    // A gateway this page just lost is left out, so a dead one costs one attempt, not one per
    // retry until the registry notices (docs/protocol.md, "Failover").
    const exclude = [...state.avoid.keys()].slice(-8).map(encodeURIComponent).join(',');
    try {
      gw = await api(
        state.registryUrl,
        'GET',
        `/registry/gateway/available?user_id=${state.userId}${exclude ? `&exclude=${exclude}` : ''}`,
      );
    } catch {
      // No placement at all (no gateway, no registry): the next attempt starts afresh.
      state.avoid.clear();
      scheduleReconnect();
      return;
    }
    if (!state.token || state.ws) return;
    // A gateway that binds every address advertises it; the page's host reaches it then.
    let host = gw.address;
    if (host === '0.0.0.0' || host === '::') host = location.hostname;
    if (host.includes(':') && !host.startsWith('[')) host = `[${host}]`;
    // The gateway checks the token at the handshake only: a fresh one, renewed if need be.
    const token = await freshToken();
    if (!token || state.ws) return;
    const url = `ws://${host}:${gw.port}/api/ws?token=${encodeURIComponent(token)}&ack=true`;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch {
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    let opened = false;
    ws.addEventListener('open', () => {
      opened = true;
    });
    ws.addEventListener('message', (ev) => {
      if (state.ws !== ws) return;
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      onFrame(frame);
    });
    ws.addEventListener('close', (ev) => {
      if (state.ws !== ws) return;
      state.ws = null;
      setStatus('offline');
      if (ev.code === 4009) {
        // A newer connection of this user (another tab or device) took this one's place;
        // reconnecting would close that one in turn. A reload reconnects.
        setStatus('connected elsewhere');
        return;
      }
      // Unreachable, dropped without a close frame (1006) or going away (1001): it may be dead.
      if (!opened || ev.code === 1006 || ev.code === 1001) state.avoid.set(gw.gateway_id, Date.now());
      if (!opened && state.attempt >= 2) {
        // Refused at the handshake more than once: the token may be revoked or expired
        // (`meta` renews it on a 401, and logs out when that is refused).
        meta('GET', '/api/user/me').catch(() => {});
      }
      scheduleReconnect();
    });
  }

  async function onConnected() {
    state.attempt = 0;
    state.wsSeq.clear();
    setStatus('online');
    // The gateway resyncs every room from the delivery cursor by itself; the room list and the
    // open room are read again for what came while away and for rooms made meanwhile.
    try {
      await loadRooms();
      if (state.current !== null) {
        const r = room(state.current);
        await loadHistory(r);
        await learnUsers([...r.messages.values()].map((m) => m.sender_id));
        renderMessages();
        markRead(r);
      }
    } catch {
      // The next frame or reconnect tries again.
    }
  }

  function onFrame(f) {
    switch (f.type) {
      case 'system':
        onConnected();
        break;
      case 'chat':
        onChat(f);
        break;
      case 'ack':
        onAck(f);
        break;
      case 'notice':
        // Membership changed (added, removed, dissolved...): read the room list again.
        loadRooms().catch(() => {});
        break;
      default:
        break;
    }
  }

  async function onChat(f) {
    const roomId = f.room_id;
    const seen = state.wsSeq.get(roomId) || 0;
    if (seen > 0 && f.seq > seen + 1) {
      // A hole on this connection: ask for what is missing.
      wsSend({ type: 'sync', room_id: roomId, after_seq: seen });
    }
    state.wsSeq.set(roomId, Math.max(seen, f.seq));
    const known = state.rooms.has(roomId);
    const fresh = addMessage({
      id: f.id, room_id: roomId, sender_id: f.sender_id, seq: f.seq,
      content: f.payload.content, timestamp: f.payload.timestamp, client_msg_id: f.client_msg_id,
    });
    queueAck(roomId, f.seq);
    if (!known) {
      // A room made while we were not looking (groups are not announced): read the list again.
      await loadRooms().catch(() => {});
    }
    if (fresh && !state.users.has(f.sender_id)) await learnUsers([f.sender_id]);
    if (roomId === state.current) {
      renderMessages();
      if (document.visibilityState === 'visible') markRead(room(roomId));
    } else {
      renderRooms();
    }
  }

  function onAck(f) {
    const r = state.rooms.get(f.room_id);
    const m = r && r.messages.get(f.id);
    if (m) {
      m.status = 'delivered';
    } else {
      state.acked.add(f.id);
    }
    if (f.room_id === state.current) renderMessages();
  }

  function wsSend(obj) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(obj));
  }

  /** Acknowledges (cumulatively) what arrived, one frame per room per short interval. */
  function queueAck(roomId, seq) {
    state.ackDue.set(roomId, Math.max(state.ackDue.get(roomId) || 0, seq));
    if (state.ackTimer) return;
    state.ackTimer = setTimeout(() => {
      state.ackTimer = null;
      for (const [rid, s] of state.ackDue) wsSend({ type: 'ack', room_id: rid, seq: s });
      state.ackDue.clear();
    }, ACK_DELAY_MS);
  }

  // ---- the people picker ----

  let pickerMode = 'group';
  const picked = new Map();
  let searchTimer = null;

  function openPicker(mode) {
    pickerMode = mode;
    picked.clear();
    $('picker-title').textContent = mode === 'group' ? 'New group' : 'New one-to-one chat';
    $('group-name-label').hidden = mode !== 'group';
    $('picker-create').hidden = mode !== 'group';
    $('group-name').value = '';
    $('user-search').value = '';
    $('user-results').replaceChildren();
    $('picker-error').textContent = '';
    renderPicked();
    $('picker').showModal();
    (mode === 'group' ? $('group-name') : $('user-search')).focus();
    searchUsers();
  }

  function renderPicked() {
    $('picked').replaceChildren(...[...picked.values()].map((u) => {
      const chip = document.createElement('span');
      chip.className = 'chip';
      chip.dataset.userId = String(u.user_id);
      chip.textContent = `${u.nickname || u.username} ✕`;
      chip.title = 'Remove';
      chip.addEventListener('click', () => {
        picked.delete(u.user_id);
        renderPicked();
      });
      return chip;
    }));
  }

  async function searchUsers() {
    const q = $('user-search').value.trim();
    let data;
    try {
      data = await meta('GET', `/api/user/search?q=${encodeURIComponent(q)}&limit=20`);
    } catch (e) {
      $('picker-error').textContent = e.message;
      return;
    }
    if ($('user-search').value.trim() !== q) return;
    $('picker-error').textContent = '';
    const others = data.users.filter((u) => u.user_id !== state.userId);
    $('user-results').replaceChildren(...others.map((u) => {
      rememberUser(u);
      const li = document.createElement('li');
      li.className = 'result';
      li.dataset.username = u.username;
      const who = document.createElement('span');
      who.className = 'who';
      who.textContent = `${u.nickname} `;
      const handle = document.createElement('small');
      handle.textContent = `@${u.username}`;
      who.append(handle);
      const pick = document.createElement('button');
      pick.type = 'button';
      pick.className = 'small';
      pick.textContent = pickerMode === 'group' ? 'Add' : 'Chat';
      pick.addEventListener('click', () => choose(u));
      li.append(who, pick);
      return li;
    }));
  }

  async function choose(u) {
    if (pickerMode === 'group') {
      picked.set(u.user_id, u);
      renderPicked();
      return;
    }
    try {
      const made = await meta('POST', '/api/room/direct', { user_id: u.user_id });
      $('picker').close();
      await loadRooms();
      await openRoom(made.room_id);
    } catch (e) {
      $('picker-error').textContent = e.message;
    }
  }

  async function createGroup() {
    const name = $('group-name').value.trim();
    if (!name) {
      $('picker-error').textContent = 'Give the group a name.';
      return;
    }
    try {
      const made = await meta('POST', '/api/group/create', {
        name, member_ids: [...picked.keys()],
      });
      $('picker').close();
      await loadRooms();
      await openRoom(made.room_id);
    } catch (e) {
      $('picker-error').textContent = e.message;
    }
  }

  // ---- session ----

  let toastTimer = null;

  /** Shows an error briefly: on the login form, or in the open room's title bar. */
  function showToast(text) {
    if ($('app-view').hidden) {
      $('login-error').textContent = text;
      return;
    }
    const title = $('room-title');
    title.textContent = text;
    title.classList.add('error');
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => {
      title.classList.remove('error');
      const r = state.current === null ? null : state.rooms.get(state.current);
      title.textContent = r ? r.title : '';
    }, 4000);
  }

  async function startSession() {
    const cfg = await meta('GET', '/api/web/config');
    state.sendUrl = cfg.send_url;
    state.registryUrl = cfg.registry_url;
    const me = await meta('GET', '/api/user/me');
    rememberUser(me);
    $('me-name').textContent = me.nickname || me.username;
    $('login-view').hidden = true;
    $('app-view').hidden = false;
    closeRoom();
    await loadRooms();
    connect();
  }

  async function login(register) {
    const username = $('username').value.trim();
    const password = $('password').value;
    const nickname = $('nickname').value.trim();
    $('login-error').textContent = '';
    if (!$('login-form').reportValidity()) return;
    try {
      if (register) {
        await meta('POST', '/api/user/register', { username, password, nickname: nickname || null });
      }
      const data = await meta('POST', '/api/user/login', { username, password });
      state.userId = data.user_id;
      state.username = username;
      adoptTokens(data);
      await startSession();
    } catch (e) {
      $('login-error').textContent = e.message;
    }
  }

  function logout(message) {
    localStorage.removeItem(SESSION_KEY);
    state.token = null;
    state.refreshToken = null;
    state.expiresAt = 0;
    clearTimeout(state.renewTimer);
    clearTimeout(state.reconnectTimer);
    const ws = state.ws;
    state.ws = null;
    if (ws) ws.close(1000);
    state.rooms.clear();
    state.pending.clear();
    state.acked.clear();
    state.users.clear();
    state.current = null;
    setStatus('offline');
    $('app-view').hidden = true;
    $('login-view').hidden = false;
    $('password').value = '';
    $('login-error').textContent = message || '';
  }

  // ---- wiring ----

  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    login(false);
  });
  $('register-btn').addEventListener('click', () => login(true));
  $('logout-btn').addEventListener('click', () => {
    // Revokes the session on the server too; the page does not wait for the answer.
    const token = state.token;
    if (token) {
      fetch(`${location.origin}/api/user/logout`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${token}` },
      }).catch(() => {});
    }
    logout();
  });
  $('back-btn').addEventListener('click', closeRoom);
  $('new-group-btn').addEventListener('click', () => openPicker('group'));
  $('new-direct-btn').addEventListener('click', () => openPicker('direct'));
  $('picker-cancel').addEventListener('click', () => $('picker').close());
  $('picker-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (pickerMode === 'group') createGroup();
  });
  $('user-search').addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(searchUsers, 200);
  });
  $('composer').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = $('message-input');
    const text = input.value;
    if (!text.trim()) return;
    input.value = '';
    sendText(text);
  });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && state.current !== null) {
      markRead(room(state.current));
    }
  });
  window.addEventListener('online', () => {
    if (state.token && !state.ws) {
      state.attempt = 0;
      connect();
    }
  });

  // A saved session resumes (renewed first if its access token expired meanwhile); otherwise
  // the login form.
  const saved = readSession();
  if (saved && saved.token) {
    state.token = saved.token;
    state.expiresAt = saved.expires_at || 0;
    state.refreshToken = saved.refresh_token || null;
    state.userId = saved.user_id;
    state.username = saved.username;
    scheduleRenewal();
    startSession().catch((e) => logout(e.message));
  } else {
    $('login-view').hidden = false;
  }
})();
