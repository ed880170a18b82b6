// RustStacker web chat. Plain JavaScript, no framework, no build step: a module built on the
// JavaScript SDK (clients/js, served next to this file as /web/index.js and its modules), which
// does the session and its renewal, placement, the WebSocket and reconnecting, ordered and
// deduplicated delivery with its gaps filled, acknowledgements, send retries and history paging.
// This file is the page: rooms, messages, people, and what is shown of the SDK's state.
//
// Message content is only ever put into the page as text (text nodes and `textContent`), never
// as HTML; links in it become anchors to http(s) URLs only.
import { Client, newClientMsgId } from './index.js';

const $ = (id) => document.getElementById(id);

/** Messages per history page: the latest ones when a room opens, then older ones on scrolling up. */
const HISTORY_PAGE = 50;
/** How close to the top of the message list (px) the next older page is loaded. */
const LOAD_OLDER_AT_PX = 80;
const SESSION_KEY = 'ruststacker.session';
const TITLE = 'RustStacker chat';

const state = {
  /** @type {Client | null} */
  client: null,
  userId: null,
  /** room_id -> room record (see `room()`). */
  rooms: new Map(),
  /** The open room's id, or null. */
  current: null,
  /** user_id -> {username, nickname} */
  users: new Map(),
  /** client_msg_id -> message record of mine not yet confirmed by Send. */
  pending: new Map(),
  /** Ids of my messages whose ACK frame came before the message. */
  acked: new Set(),
};

// ---- storage: the session, and per user what was read and which room was open ----

function readSession() {
  try {
    return JSON.parse(localStorage.getItem(SESSION_KEY));
  } catch {
    return null;
  }
}

function stored(name) {
  try {
    return JSON.parse(localStorage.getItem(`ruststacker.${name}.${state.userId}`));
  } catch {
    return null;
  }
}

function store(name, value) {
  localStorage.setItem(`ruststacker.${name}.${state.userId}`, JSON.stringify(value));
}

function saveReadSeq(roomId, seq) {
  const all = stored('read') || {};
  if ((all[roomId] || 0) >= seq) return;
  all[roomId] = seq;
  store('read', all);
}

// ---- errors: shown until dismissed ----

/** Shows an error: on the login form, or in the error list above the chat until dismissed. */
function showError(text) {
  if ($('app-view').hidden) {
    $('login-error').textContent = text;
    return;
  }
  const list = $('errors');
  // The same error again is not stacked.
  for (const li of list.children) if (li.dataset.text === text) return;
  const li = document.createElement('li');
  li.className = 'error-item';
  li.dataset.text = text;
  const msg = document.createElement('span');
  msg.textContent = text;
  const close = document.createElement('button');
  close.type = 'button';
  close.className = 'dismiss small secondary';
  close.textContent = '✕';
  close.setAttribute('aria-label', 'Dismiss');
  close.addEventListener('click', () => li.remove());
  li.append(msg, close);
  list.append(li);
}

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
      rememberUser(await state.client.request('meta', 'GET', `/api/user/${id}`));
    } catch {
      // A name is cosmetic: the id stays on show.
    }
  }));
}

// ---- rooms ----

/** The record of a room: its view, its messages by key (id, or client_msg_id while sending). */
function room(roomId) {
  let r = state.rooms.get(roomId);
  if (!r) {
    r = {
      id: roomId,
      view: null,
      title: `Room ${roomId}`,
      messages: new Map(),
      lastSeq: 0,
      readSeq: (stored('read') || {})[roomId] || 0,
      membersLoaded: false,
      /** The latest page was read: the messages shown run without holes from `oldest()` up. */
      loaded: false,
      /** No message before the oldest one shown (the room's start was reached). */
      complete: false,
      loadingOlder: false,
      /** The latest message known (the room list's preview). */
      last: null,
    };
    state.rooms.set(roomId, r);
  }
  return r;
}

function oldest(r) {
  let s = Infinity;
  for (const m of r.messages.values()) if (m.seq) s = Math.min(s, m.seq);
  return s === Infinity ? null : s;
}

function newest(r) {
  let s = 0;
  for (const m of r.messages.values()) if (m.seq) s = Math.max(s, m.seq);
  return s;
}

/** Unread: the room's messages after what was read, less my own among them. */
function unreadCount(r) {
  let mine = 0;
  for (const m of r.messages.values()) {
    if (m.seq > r.readSeq && m.sender_id === state.userId) mine += 1;
  }
  return Math.max(0, r.lastSeq - r.readSeq - mine);
}

function viewing(r) {
  return r.id === state.current && document.visibilityState === 'visible';
}

async function loadMembers(r) {
  const data = await state.client.members(r.id);
  for (const m of data.members) rememberUser(m);
  r.membersLoaded = true;
  if (r.view && !r.view.is_group) {
    const peer = data.members.find((m) => m.user_id !== state.userId);
    if (peer) r.title = peer.nickname || peer.username;
  }
}

/** Reads my rooms, names them, and the latest message of each (for the list's preview). */
async function loadRooms() {
  const data = await state.client.joinedRooms();
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
      if (r.lastSeq > 0 && (!r.last || r.last.seq < r.lastSeq)) {
        const page = await state.client.historyBefore(r.id, r.lastSeq + 1, 1);
        for (const m of page.messages) addMessage(m, 'history');
      }
    } catch {
      // The list still shows the room; opening it tries again.
    }
  }));
  await learnUsers([...state.rooms.values()].filter((r) => r.last).map((r) => r.last.sender_id));
  renderRooms();
}

/**
 * Reads the room's latest page, whatever came live before it (a reconnect's resync may have
 * brought a burst of the newest messages first): the page ends at the newest message known, so
 * with the live ones after it the messages shown run without holes.
 */
async function loadLatest(r) {
  const top = Math.max(r.lastSeq, newest(r));
  const page = await state.client.historyBefore(r.id, top + 1, HISTORY_PAGE);
  for (const m of page.messages) addMessage(m, 'history');
  r.loaded = true;
  const low = oldest(r);
  r.complete = low === null || low <= 1 || page.messages.length === 0;
}

/** Reads the page before the oldest message shown (scrolling up), keeping the view in place. */
async function loadOlder() {
  const r = state.current === null ? null : state.rooms.get(state.current);
  if (!r || !r.loaded || r.complete || r.loadingOlder) return;
  const low = oldest(r);
  if (low === null || low <= 1) {
    r.complete = true;
    return;
  }
  r.loadingOlder = true;
  $('messages').dataset.loading = 'older';
  try {
    const page = await state.client.historyBefore(r.id, low, HISTORY_PAGE);
    for (const m of page.messages) addMessage(m, 'history');
    if (page.messages.length === 0 || !page.has_more) r.complete = true;
    await learnUsers(page.messages.map((m) => m.sender_id));
  } catch (e) {
    showError(e.message);
  } finally {
    r.loadingOlder = false;
    delete $('messages').dataset.loading;
  }
  if (state.current === r.id) renderMessages('keep');
}

function renderRooms() {
  const list = $('room-list');
  const rooms = [...state.rooms.values()].sort((a, b) => latest(b) - latest(a) || b.id - a.id);
  let total = 0;
  list.replaceChildren(...rooms.map((r) => {
    const li = document.createElement('li');
    li.className = 'room';
    li.dataset.roomId = String(r.id);
    li.classList.toggle('active', r.id === state.current);
    const top = document.createElement('div');
    top.className = 'room-top';
    const name = document.createElement('span');
    name.className = 'room-name';
    name.textContent = r.title;
    const kind = document.createElement('span');
    kind.className = 'room-kind';
    kind.textContent = r.view && r.view.is_group ? 'group' : 'direct';
    const unread = document.createElement('span');
    unread.className = 'unread';
    const n = viewing(r) ? 0 : unreadCount(r);
    total += n;
    unread.textContent = String(n);
    unread.hidden = n === 0;
    top.append(name, kind, unread);
    const preview = document.createElement('div');
    preview.className = 'preview';
    if (r.last) {
      const who = r.last.sender_id === state.userId ? 'You' : displayName(r.last.sender_id);
      preview.textContent = `${who}: ${r.last.content.replace(/\s+/g, ' ')}`;
    }
    li.append(top, preview);
    li.addEventListener('click', () => openRoom(r.id));
    return li;
  }));
  $('no-rooms').hidden = rooms.length > 0;
  document.title = total > 0 ? `(${total}) ${TITLE}` : TITLE;
}

function latest(r) {
  return r.last ? Date.parse(r.last.timestamp) || 0 : 0;
}

async function openRoom(roomId) {
  const r = room(roomId);
  state.current = roomId;
  store('open', roomId);
  $('app-view').classList.add('in-room');
  $('room-title').textContent = r.title;
  $('empty-hint').hidden = true;
  $('composer').hidden = false;
  renderMessages('bottom');
  renderRooms();
  $('message-input').focus();
  try {
    if (!r.membersLoaded) await loadMembers(r);
    if (!r.loaded) await loadLatest(r);
  } catch (e) {
    showError(e.message);
  }
  if (state.current !== roomId) return;
  $('room-title').textContent = r.title;
  await learnUsers([...r.messages.values()].map((m) => m.sender_id));
  if (state.current !== roomId) return;
  renderMessages('bottom');
  markRead(r);
  fillView();
}

function closeRoom() {
  state.current = null;
  if (state.userId !== null) store('open', null);
  $('app-view').classList.remove('in-room');
  $('room-title').textContent = '';
  $('messages').replaceChildren();
  $('composer').hidden = true;
  $('empty-hint').hidden = false;
  renderRooms();
}

function markRead(r) {
  const top = Math.max(r.readSeq, r.lastSeq, newest(r));
  if (top > r.readSeq) {
    r.readSeq = top;
    saveReadSeq(r.id, top);
  }
  renderRooms();
}

// ---- messages ----

/**
 * Adds a message (from history, or live from the SDK) to its room unless it is there already;
 * confirms a pending one of mine by its client_msg_id. Mine from history were stored by the
 * server before this page was loaded: they show as delivered.
 */
function addMessage(m, from) {
  const r = room(m.room_id);
  r.lastSeq = Math.max(r.lastSeq, m.seq || 0);
  if (!r.last || m.seq > r.last.seq) r.last = m;
  if (m.client_msg_id && m.sender_id === state.userId && state.pending.has(m.client_msg_id)) {
    confirm(state.pending.get(m.client_msg_id), m);
    return false;
  }
  const had = r.messages.get(m.id);
  if (had) {
    if (from === 'history' && had.status === 'sent' && !had.local) had.status = 'delivered';
    return false;
  }
  const record = { ...m, key: m.id, status: null, local: false };
  if (m.sender_id === state.userId) {
    record.status = from === 'history' || state.acked.delete(m.id) ? 'delivered' : 'sent';
  }
  r.messages.set(m.id, record);
  return true;
}

/** A pending message of mine was stored (`stored`: the send's answer or the message itself). */
function confirm(mine, stored) {
  const r = room(mine.room_id);
  state.pending.delete(mine.client_msg_id);
  r.messages.delete(mine.key);
  mine.id = stored.id;
  mine.seq = stored.seq;
  mine.timestamp = stored.timestamp;
  mine.key = stored.id;
  mine.status = state.acked.delete(stored.id) ? 'delivered' : 'sent';
  const there = r.messages.get(stored.id);
  if (there && there !== mine && there.status === 'delivered') mine.status = 'delivered';
  r.messages.set(stored.id, mine);
  r.lastSeq = Math.max(r.lastSeq, stored.seq);
}

/** Renders the open room. `where`: 'bottom' (scroll to the end), 'keep' (older ones prepended). */
function renderMessages(where) {
  const r = state.current === null ? null : state.rooms.get(state.current);
  const list = $('messages');
  if (!r) {
    list.replaceChildren();
    return;
  }
  const fromBottom = list.scrollHeight - list.scrollTop;
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  if (!r.loaded) {
    // Until the latest page is read, what came live (a reconnect's burst, say) is not the room:
    // nothing of it is shown but my own sends.
    const note = document.createElement('li');
    note.className = 'room-start';
    note.textContent = 'Loading…';
    list.replaceChildren(note, ...[...r.messages.values()].filter((m) => m.local).map(messageItem));
    return;
  }
  const sorted = [...r.messages.values()].sort(
    (a, b) => (a.seq || Infinity) - (b.seq || Infinity) || (a.localOrder || 0) - (b.localOrder || 0));
  const items = [];
  let day = null;
  for (const m of sorted) {
    const d = m.timestamp ? new Date(m.timestamp) : new Date();
    const key = d.toDateString();
    if (key !== day) {
      day = key;
      items.push(daySeparator(d));
    }
    items.push(messageItem(m));
  }
  if (r.loaded && r.complete && sorted.length > 0) {
    const start = document.createElement('li');
    start.className = 'room-start';
    start.textContent = 'The start of the conversation';
    items.unshift(start);
  }
  list.replaceChildren(...items);
  if (where === 'keep') {
    list.scrollTop = list.scrollHeight - fromBottom;
  } else if (where === 'bottom' || atBottom) {
    list.scrollTop = list.scrollHeight;
  }
}

/** Loads older pages while the messages do not fill the view (no scrolling would show more). */
async function fillView() {
  const list = $('messages');
  for (let i = 0; i < 20; i += 1) {
    const r = state.current === null ? null : state.rooms.get(state.current);
    if (!r || !r.loaded || r.complete || list.scrollHeight > list.clientHeight) return;
    await loadOlder();
  }
}

function daySeparator(d) {
  const li = document.createElement('li');
  li.className = 'day';
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (d.toDateString() === today.toDateString()) {
    li.textContent = 'Today';
  } else if (d.toDateString() === yesterday.toDateString()) {
    li.textContent = 'Yesterday';
  } else {
    li.textContent = d.toLocaleDateString([], {
      weekday: 'short', year: 'numeric', month: 'short', day: 'numeric',
    });
  }
  return li;
}

const STATUS_TEXT = {
  sending: 'sending…',
  retrying: 'sending… (trying again)',
  sent: 'sent ✓',
  delivered: 'delivered ✓✓',
  failed: 'not sent: tap to retry',
  refused: 'not sent (refused): tap to remove',
};

/** http(s) URLs in text; what ends a sentence is not part of one. */
const URL_RE = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/gi;

/** Appends `text` to `el` as text, its http(s) URLs as links opening elsewhere without referrer. */
function appendLinked(el, text) {
  let at = 0;
  for (const match of text.matchAll(URL_RE)) {
    let url = null;
    try {
      url = new URL(match[0]);
    } catch {
      url = null;
    }
    if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:')) continue;
    el.append(document.createTextNode(text.slice(at, match.index)));
    const a = document.createElement('a');
    a.href = url.href;
    a.textContent = match[0];
    a.target = '_blank';
    a.rel = 'noopener noreferrer';
    el.append(a);
    at = match.index + match[0].length;
  }
  el.append(document.createTextNode(text.slice(at)));
}

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
  appendLinked(content, m.content);
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
    if (m.status === 'refused') st.addEventListener('click', () => discard(m));
    meta.append(st);
  }
  li.append(sender, content, meta);
  return li;
}

let localOrder = 0;

function sendText(text) {
  const roomId = state.current;
  if (roomId === null) return;
  const r = room(roomId);
  const cid = newClientMsgId();
  const m = {
    key: cid, id: null, room_id: roomId, sender_id: state.userId, seq: null, content: text,
    timestamp: new Date().toISOString(), client_msg_id: cid, status: 'sending', local: true,
    localOrder: (localOrder += 1),
  };
  state.pending.set(cid, m);
  r.messages.set(cid, m);
  renderMessages('bottom');
  deliver(m);
}

/**
 * Sends a message of mine through the SDK, which tries again by itself (network failures, 429,
 * 5xx) under the same client_msg_id, so it is stored once. One it gave up on is tried again when
 * the connection is back, or on a tap.
 */
async function deliver(m) {
  if (m.status === 'sending' && m.inFlight) return;
  m.status = 'sending';
  m.inFlight = true;
  if (m.room_id === state.current) renderMessages();
  try {
    const reply = await state.client.sendMessage(m.room_id, m.content,
      { clientMsgId: m.client_msg_id });
    if (state.pending.get(m.client_msg_id) === m) {
      confirm(m, { id: reply.message_id, seq: reply.seq, timestamp: reply.timestamp });
    }
    const r = room(m.room_id);
    if (!r.last || reply.seq > r.last.seq) {
      r.last = {
        id: reply.message_id, room_id: m.room_id, sender_id: state.userId, seq: reply.seq,
        content: m.content, timestamp: reply.timestamp, client_msg_id: m.client_msg_id,
      };
    }
    if (viewing(r)) markRead(r);
    else renderRooms();
  } catch (e) {
    // Out of reach after the SDK's retries: tried again on reconnect or a tap. Refused (a 4xx):
    // trying again would be refused again; the error says why.
    if (state.pending.get(m.client_msg_id) === m) m.status = e.retryable ? 'failed' : 'refused';
    showError(e.message);
  } finally {
    m.inFlight = false;
  }
  if (m.room_id === state.current) renderMessages();
}

/** Tries again the sends the SDK gave up on while the server was out of reach. */
function retryFailed() {
  for (const m of state.pending.values()) {
    if (m.status === 'failed') deliver(m);
  }
}

/** Removes a refused message of mine from the page (it was never stored). */
function discard(m) {
  state.pending.delete(m.client_msg_id);
  room(m.room_id).messages.delete(m.key);
  if (m.room_id === state.current) renderMessages();
}

// ---- what the SDK tells ----

const STATUS_LABEL = {
  idle: 'offline', connecting: 'connecting', online: 'online', offline: 'offline', stopped: 'offline',
};

function setStatus(s, text) {
  const el = $('conn-status');
  el.dataset.state = s;
  el.textContent = text || STATUS_LABEL[s] || s;
}

function onLive(m) {
  const r = room(m.room_id);
  const known = Boolean(r.view);
  const fresh = addMessage(m, 'live');
  if (!known) {
    // A room made while the page was not looking (groups are not announced): read the list again.
    loadRooms().catch(() => {});
  }
  if (fresh && !state.users.has(m.sender_id)) {
    learnUsers([m.sender_id]).then(() => {
      if (m.room_id === state.current) renderMessages();
      renderRooms();
    });
  }
  if (m.room_id === state.current) {
    renderMessages();
    if (viewing(r)) markRead(r);
  } else {
    renderRooms();
  }
}

function onAck(a) {
  const r = state.rooms.get(a.room_id);
  const m = r && r.messages.get(a.id);
  if (m) {
    m.status = 'delivered';
  } else {
    state.acked.add(a.id);
  }
  if (a.room_id === state.current) renderMessages();
}

/** What is read again after each connect: rooms made meanwhile, names, previews. */
async function onConnected() {
  try {
    await loadRooms();
  } catch {
    // The next connect tries again.
  }
  retryFailed();
}

function makeClient(session) {
  const client = new Client({ metaUrl: location.origin, session, loadSession: readSession });
  client.on('session', (s) => localStorage.setItem(SESSION_KEY, JSON.stringify(s)));
  client.on('session_ended', (e) => {
    if (state.client === client) {
      toLogin(e.error === 'logged_out' ? '' : 'Your session has ended; log in again.');
    }
  });
  client.on('state', ({ state: s }) => {
    if (state.client === client && s !== 'stopped') setStatus(s);
  });
  client.on('stopped', ({ code }) => {
    // 4009: a newer connection of this user (another tab or device) took this one's place;
    // reconnecting would close that one in turn. A reload reconnects.
    if (state.client === client) {
      setStatus('stopped', code === 4009 ? 'connected elsewhere' : 'offline');
    }
  });
  client.on('connected', () => onConnected());
  client.on('message', (m) => onLive(m));
  client.on('ack', (a) => onAck(a));
  client.on('notice', () => {
    // Membership changed (added, removed, dissolved...): read the room list again.
    loadRooms().catch(() => {});
  });
  client.on('send_retry', ({ client_msg_id: cid }) => {
    const m = state.pending.get(cid);
    if (m && m.status !== 'retrying') {
      m.status = 'retrying';
      if (m.room_id === state.current) renderMessages();
    }
  });
  return client;
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
    data = await state.client.request('meta', 'GET',
      `/api/user/search?q=${encodeURIComponent(q)}&limit=20`);
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
    const made = await state.client.directRoom(u.user_id);
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
    const made = await state.client.createGroup(name, [...picked.keys()]);
    $('picker').close();
    await loadRooms();
    await openRoom(made.room_id);
  } catch (e) {
    $('picker-error').textContent = e.message;
  }
}

// ---- session ----

async function startSession(client) {
  state.client = client;
  state.userId = client.userId;
  const me = await client.me();
  if (state.client !== client) return;
  rememberUser(me);
  $('me-name').textContent = me.nickname || me.username;
  $('login-view').hidden = true;
  $('app-view').hidden = false;
  // The room that was open before a reload opens again.
  const open = stored('open');
  closeRoom();
  await loadRooms();
  await client.connect();
  if (open !== null && state.rooms.has(open) && state.current === null) await openRoom(open);
}

async function login(register) {
  const username = $('username').value.trim();
  const password = $('password').value;
  const nickname = $('nickname').value.trim();
  $('login-error').textContent = '';
  if (!$('login-form').reportValidity()) return;
  const client = makeClient(null);
  try {
    if (register) await client.register({ username, password, nickname: nickname || null });
    await client.login(username, password);
    await startSession(client);
  } catch (e) {
    if (state.client === client) toLogin(e.message);
    else $('login-error').textContent = e.message;
  }
}

/** Back to the log-in form: everything of the session here is dropped (not revoked). */
function toLogin(message) {
  const client = state.client;
  state.client = null;
  if (client) client.close();
  localStorage.removeItem(SESSION_KEY);
  state.rooms.clear();
  state.pending.clear();
  state.acked.clear();
  state.users.clear();
  state.current = null;
  state.userId = null;
  setStatus('idle');
  document.title = TITLE;
  $('errors').replaceChildren();
  $('messages').replaceChildren();
  $('app-view').classList.remove('in-room');
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
$('logout-btn').addEventListener('click', async () => {
  // Revokes the session on the server, then forgets it here.
  const client = state.client;
  if (!client) return;
  await client.logout();
  if (state.client === client) toLogin('');
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
function submitComposer() {
  const input = $('message-input');
  const text = input.value;
  if (!text.trim()) return;
  input.value = '';
  sendText(text);
}
$('composer').addEventListener('submit', (ev) => {
  ev.preventDefault();
  submitComposer();
});
$('message-input').addEventListener('keydown', (ev) => {
  // Enter sends; Shift+Enter is a new line (and Enter while an input method composes is its own).
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    submitComposer();
  }
});
$('messages').addEventListener('scroll', () => {
  if ($('messages').scrollTop < LOAD_OLDER_AT_PX) loadOlder().then(fillView);
});
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible' && state.current !== null) {
    markRead(room(state.current));
  }
});

// A saved session resumes (the SDK renews it first when its access token expired meanwhile);
// otherwise the log-in form.
const saved = readSession();
if (saved && saved.token && saved.refresh_token) {
  const client = makeClient(saved);
  startSession(client).catch((e) => {
    if (state.client === client) toLogin(e.message);
  });
} else {
  $('login-view').hidden = false;
}
