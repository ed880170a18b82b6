// What reaches the app of a room's messages: each once (by id, and by `seq` per room), in `seq`
// order, without holes. The gateway sends a connection each room in order without gaps, but across
// reconnects a message may come again (at-least-once), and when another device of the same user
// moved the user's delivery cursor while this one was away, the first message after the reconnect
// is ahead of what this client has: that is a gap, filled with a `sync` frame, or from history
// when the `sync` did not fill it in time (docs/protocol.md, "Delivery cursor and resync").

/**
 * @typedef {object} Message A room message, in the shape of `GET /api/chat/history`'s.
 * @property {number} id
 * @property {number} room_id
 * @property {number} sender_id
 * @property {number} seq
 * @property {string} type `text`, `image` or `file`
 * @property {string} content
 * @property {string} timestamp RFC 3339 UTC
 * @property {string | null} client_msg_id
 */

/** The message of a `chat` frame, in history's shape. @returns {Message} */
export function fromFrame(f) {
  const p = f.payload || {};
  return {
    id: f.id,
    room_id: f.room_id,
    sender_id: f.sender_id,
    seq: f.seq,
    type: p.type || 'text',
    content: p.content,
    timestamp: p.timestamp,
    client_msg_id: f.client_msg_id == null ? null : f.client_msg_id,
  };
}

export class Delivery {
  /**
   * @param {object} o
   * @param {(m: Message) => void} o.deliver hands a message to the app
   * @param {(roomId: number, afterSeq: number, beforeSeq: number) => void} o.onGap a gap opened
   *   (messages `afterSeq < seq < beforeSeq` are missing): ask for them
   * @param {number} o.dedupeWindow how many recent message ids are remembered
   * @param {Record<string, number>} [o.cursors] the last `seq` the app has, per room (from a
   *   previous run's `cursors()`)
   */
  constructor({ deliver, onGap, dedupeWindow, cursors }) {
    this._deliver = deliver;
    this._onGap = onGap;
    this._window = dedupeWindow;
    /** room_id -> {delivered, held: Map<seq, Message>, gapFrom: number | null} */
    this._rooms = new Map();
    /** Recent ids, oldest first (a Set keeps insertion order). */
    this._seen = new Set();
    this._gone = new Set();
    for (const [room, seq] of Object.entries(cursors || {})) {
      if (Number.isSafeInteger(seq) && seq >= 0) this._room(Number(room)).delivered = seq;
    }
  }

  _room(roomId) {
    let r = this._rooms.get(roomId);
    if (!r) {
      r = { delivered: null, held: new Map(), gapFrom: null };
      this._rooms.set(roomId, r);
    }
    return r;
  }

  /** The last `seq` handed to the app per room (what to keep for the next run). */
  cursors() {
    /** @type {Record<string, number>} */
    const out = {};
    for (const [id, r] of this._rooms) if (r.delivered !== null) out[id] = r.delivered;
    return out;
  }

  /** The last `seq` of `roomId` handed to the app, or null when none was. */
  delivered(roomId) {
    const r = this._rooms.get(roomId);
    return r ? r.delivered : null;
  }

  /** Whether a gap of `roomId` waits to be filled. */
  waiting(roomId) {
    const r = this._rooms.get(roomId);
    return Boolean(r && r.gapFrom !== null);
  }

  /** The lowest `seq` held back behind a gap of `roomId` (null when none). */
  firstHeld(roomId) {
    const r = this._rooms.get(roomId);
    if (!r || r.held.size === 0) return null;
    return Math.min(...r.held.keys());
  }

  /** The room was dissolved: nothing more of it is taken. */
  drop(roomId) {
    this._rooms.delete(roomId);
    this._gone.add(roomId);
  }

  /**
   * Takes a message (from a frame or from history). Answers whether it was new.
   * @param {Message} m
   */
  take(m) {
    if (this._gone.has(m.room_id) || this._seen.has(m.id)) return false;
    const r = this._room(m.room_id);
    if (r.delivered === null) {
      // The first of a room this client knows nothing of: it starts the room's sequence (older
      // messages are history's to page through).
      this._hand(r, m);
      return true;
    }
    if (m.seq <= r.delivered || r.held.has(m.seq)) return false;
    if (m.seq === r.delivered + 1) {
      this._hand(r, m);
      this._drain(r);
      return true;
    }
    r.held.set(m.seq, m);
    if (r.gapFrom === null) {
      r.gapFrom = r.delivered;
      this._onGap(m.room_id, r.delivered, m.seq);
    }
    return true;
  }

  /**
   * Gives up on the rest of a gap of `roomId` (what could be read was taken): the held messages
   * go to the app in order over the holes that remain.
   */
  release(roomId) {
    const r = this._rooms.get(roomId);
    if (!r) return;
    const seqs = [...r.held.keys()].sort((a, b) => a - b);
    for (const s of seqs) {
      const m = r.held.get(s);
      r.held.delete(s);
      if (s > r.delivered) this._hand(r, m);
    }
    r.gapFrom = null;
  }

  _hand(r, m) {
    r.delivered = m.seq;
    this._seen.add(m.id);
    if (this._seen.size > this._window) {
      const oldest = this._seen.values().next().value;
      this._seen.delete(oldest);
    }
    this._deliver(m);
  }

  _drain(r) {
    for (;;) {
      const next = r.held.get(r.delivered + 1);
      if (!next) break;
      r.held.delete(next.seq);
      this._hand(r, next);
    }
    if (r.held.size === 0) {
      r.gapFrom = null;
    } else if (r.gapFrom !== null && r.gapFrom !== r.delivered) {
      // Part of the gap came; the rest is still asked for.
      r.gapFrom = r.delivered;
    }
  }
}
