// Two (and more) people chatting through the SDK against a real `ruststacker all` (access tokens
// of 4 s, so every step also runs over silent renewals; at most 2 sockets per user per gateway):
// live messages and the sender's ACK, acknowledgements moving the delivery cursor, a server
// restart under connected clients, sending retried under one client_msg_id, history paging, a gap
// left by another device of the same user, and the close codes that stop reconnecting.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { Client, newClientMsgId } from '../src/index.js';
import { Server, next, record, uniqueName, until } from './server.js';

const PASSWORD = 'password-123';
let server;

before(async () => {
  server = new Server({
    RUSTSTACKER_JWT__EXPIRE_SECS: '4',
    RUSTSTACKER_GATEWAY__MAX_CONNECTIONS_PER_USER: '2',
  });
  await server.start();
});

after(async () => {
  if (server) await server.dispose();
});

const clients = [];

function newClient(extra = {}) {
  // Short reconnect delays: a restart is waited for in a second or two, not ten.
  const c = new Client({ metaUrl: server.metaUrl, reconnectMaxMs: 2000, ...extra });
  clients.push(c);
  return c;
}

after(() => {
  for (const c of clients) c.close();
});

async function user(prefix, extra = {}) {
  const c = newClient(extra);
  const username = uniqueName(prefix);
  await c.register({ username, password: PASSWORD });
  await c.login(username, PASSWORD);
  return c;
}

/** Another client of the same user (another device), with a session of its own. */
async function sameUser(c, extra = {}) {
  const other = newClient(extra);
  const { username } = await c.me();
  await other.login(username, PASSWORD);
  return other;
}

async function online(c) {
  const connected = next(c, 'connected');
  await c.connect();
  await connected;
}

/**
 * A forwarding proxy in front of the real Send (a fault at the network edge, the server is
 * untouched). `decide(req)` answers `forward`, `cut answer` (the request reaches Send, its answer
 * is dropped with the connection) or `refuse` (the connection is dropped before Send sees it).
 * Answers the URLs a client is given.
 */
async function sendProxy(t, decide) {
  const urls = await newClient().urls();
  const proxy = http.createServer((req, res) => {
    const what = decide(req);
    if (what === 'refuse') {
      req.socket.destroy();
      return;
    }
    const up = http.request(`${urls.send}${req.url}`, { method: req.method, headers: req.headers }, (upRes) => {
      if (what === 'cut answer') {
        upRes.resume();
        upRes.on('end', () => req.socket.destroy());
        return;
      }
      res.writeHead(upRes.statusCode, upRes.headers);
      upRes.pipe(res);
    });
    req.pipe(up);
  });
  await new Promise((ok) => proxy.listen(0, '127.0.0.1', ok));
  t.after(() => proxy.close());
  return { sendUrl: `http://127.0.0.1:${proxy.address().port}`, registryUrl: urls.registry };
}

function seqs(list) {
  return list.map((m) => m.seq);
}

test('two users chat live; the sender gets the ACK of each message', async () => {
  const alice = await user('alice');
  const bob = await user('bob', { deviceId: 'bob-phone' });
  const { room_id: room } = await alice.createGroup('chat', [bob.userId]);
  await Promise.all([online(alice), online(bob)]);
  const bobGot = record(bob);
  const aliceGot = record(alice);
  const acks = [];
  alice.on('ack', (a) => acks.push(a));

  // (The frames may come before the HTTP answer: everything is recorded from the start.)
  const cid = newClientMsgId();
  const sent = await alice.sendMessage(room, 'hello bob', { clientMsgId: cid });
  assert.equal(sent.duplicate, false);
  assert.equal(sent.client_msg_id, cid);
  await until(() => bobGot.length === 1, 'the message for bob');
  const [m] = bobGot;
  assert.deepEqual(
    { room: m.room_id, sender: m.sender_id, seq: m.seq, content: m.content, type: m.type, cid: m.client_msg_id },
    { room, sender: alice.userId, seq: sent.seq, content: 'hello bob', type: 'text', cid },
  );
  await until(() => aliceGot.length === 1, 'the message back to alice');
  assert.equal(aliceGot[0].id, sent.message_id, 'the sender gets its own message too');
  await until(() => acks.some((a) => a.id === sent.message_id), 'the ACK of the message');
  const ack = acks.find((a) => a.id === sent.message_id);
  assert.equal(ack.client_msg_id, cid);
  assert.equal(ack.seq, sent.seq);

  const reply = await bob.sendMessage(room, 'hi alice');
  await until(() => aliceGot.length === 2, 'the reply for alice');
  assert.deepEqual([aliceGot[1].id, aliceGot[1].content], [reply.message_id, 'hi alice']);
  await until(() => bobGot.length === 2, 'bob\'s own message back');
  assert.deepEqual(seqs(bobGot), [1, 2]);
});

test('acknowledged messages are not sent again to the next connection (ack=true)', async () => {
  const alice = await user('alice');
  const bob = await user('bob');
  const { room_id: room } = await alice.createGroup('acks', [bob.userId]);
  await online(bob);
  const got = record(bob);
  for (const text of ['one', 'two', 'three']) await alice.sendMessage(room, text);
  await until(() => got.length === 3, 'three messages');
  // The pong answers after the gateway handled the acknowledgements sent before it.
  await bob.ping();
  const session = bob.session;
  bob.close();

  // A fresh client of the same session (nothing remembered locally): the gateway resyncs from
  // the cursor the acknowledgements moved, so the first message it gets is the next one.
  const again = newClient({ session });
  const got2 = record(again);
  await online(again);
  const four = await alice.sendMessage(room, 'four');
  await until(() => got2.length >= 1, 'the next message');
  assert.deepEqual(got2.map((m) => m.id), [four.message_id]);
});

test('a server restart: clients reconnect, a send made meanwhile is retried, nothing is lost or repeated', async () => {
  const alice = await user('alice');
  const bob = await user('bob');
  const { room_id: room } = await alice.createGroup('restart', [bob.userId]);
  await Promise.all([online(alice), online(bob)]);
  const bobGot = record(bob);
  const aliceGot = record(alice);
  const first = await alice.sendMessage(room, 'before');
  await until(() => bobGot.length === 1, 'the first message');

  const bobLost = next(bob, 'disconnected');
  const retried = next(alice, 'send_retry');
  await server.stop();
  const lost = await bobLost;
  assert.equal(lost.code, 1001, 'the gateway closed with "going away"');
  assert.equal(lost.willReconnect, true);
  // Sent while the server is down: retried until it is back.
  const during = alice.sendMessage(room, 'during');
  await retried;
  const bobBack = next(bob, 'connected');
  const aliceBack = next(alice, 'connected');
  await server.start();
  const second = await during;
  await Promise.all([bobBack, aliceBack]);
  const third = await alice.sendMessage(room, 'after');
  await until(() => bobGot.length >= 3, 'three messages for bob');
  await until(() => aliceGot.length >= 3, 'three messages for alice');
  for (const got of [bobGot, aliceGot]) {
    assert.deepEqual(got.map((m) => m.id), [first.message_id, second.message_id, third.message_id]);
    assert.deepEqual(seqs(got), [1, 2, 3]);
  }
});

test('a gateway that dropped the client without a close frame is excluded from the next placements', async () => {
  const alice = await user('alice');
  // Every URL the client fetches is noted (the calls themselves go to the real server).
  const fetched = [];
  const bob = await user('bob', {
    fetch: (url, init) => {
      fetched.push(String(url));
      return fetch(url, init);
    },
  });
  const { room_id: room } = await alice.createGroup('failover', [bob.userId]);
  const connected = next(bob, 'connected');
  await bob.connect();
  const { gateway } = await connected;
  const got = record(bob);
  const first = await alice.sendMessage(room, 'before the crash');
  await until(() => got.length === 1, 'the first message');

  const lost = next(bob, 'disconnected');
  await server.kill();
  const d = await lost;
  assert.equal(d.code, 1006);
  assert.equal(d.willReconnect, true);
  const seen = fetched.length;
  const back = next(bob, 'connected');
  await server.start();
  await back;
  const placements = fetched.slice(seen).filter((u) => u.includes('/registry/gateway/available'));
  assert.ok(placements.length >= 1);
  // The lost gateway is named in every placement since (the registry still offers it when, as
  // here, there is no other).
  for (const u of placements) {
    assert.equal(new URL(u).searchParams.get('exclude'), gateway.gateway_id, u);
  }
  const second = await alice.sendMessage(room, 'after the crash');
  await until(() => got.length >= 2, 'the second message');
  assert.deepEqual(got.map((m) => m.id), [first.message_id, second.message_id]);
});

test('a send whose answer was lost is retried with the same client_msg_id and stored once', async (t) => {
  // The first send's answer is cut after Send stored the message: the client does not know it.
  let dropped = 0;
  const { sendUrl, registryUrl } = await sendProxy(t, (req) => {
    if (req.url.startsWith('/api/chat/send_message') && dropped === 0) {
      dropped += 1;
      return 'cut answer';
    }
    return 'forward';
  });
  const alice = await user('alice', { sendUrl, registryUrl });
  const { room_id: room } = await alice.createGroup('once', []);
  const retries = [];
  alice.on('send_retry', (r) => retries.push(r));
  const sent = await alice.sendMessage(room, 'stored once');
  assert.equal(dropped, 1);
  assert.equal(retries.length, 1);
  assert.equal(retries[0].error.status, 0);
  assert.equal(sent.duplicate, true, 'the retry found the message the first attempt stored');
  const { messages } = await alice.history(room);
  assert.deepEqual(messages.map((m) => [m.id, m.content]), [[sent.message_id, 'stored once']]);
});

test('history pages forward and back', async () => {
  const alice = await user('alice');
  const { room_id: room } = await alice.createGroup('pages', []);
  const ids = [];
  for (let i = 1; i <= 7; i += 1) ids.push((await alice.sendMessage(room, `m${i}`)).message_id);
  const pages = [];
  for await (const page of alice.historyPages(room, { limit: 3 })) pages.push(seqs(page));
  assert.deepEqual(pages, [[1, 2, 3], [4, 5, 6], [7]]);
  const part = [];
  for await (const page of alice.historyPages(room, { afterSeq: 2, limit: 2, untilSeq: 5 })) part.push(seqs(page));
  assert.deepEqual(part, [[3, 4], [5]]);
  const newest = await alice.historyBefore(room, 8, 3);
  assert.deepEqual(seqs(newest.messages), [5, 6, 7]);
  assert.equal(newest.has_more, true);
  assert.deepEqual(newest.messages.map((m) => m.id), ids.slice(4));
  const oldest = await alice.historyBefore(room, 3, 5);
  assert.deepEqual(seqs(oldest.messages), [1, 2]);
  assert.equal(oldest.has_more, false);
  const page = await alice.history(room, { afterSeq: 5, limit: 1 });
  assert.deepEqual([seqs(page.messages), page.has_more], [[6], true]);
});

test('a gap left by another connection of the same device is filled, in order, each message once', async () => {
  const alice = await user('alice');
  // Two connections of the default device (no `device_id`) share one cursor, as two tabs do.
  // (No check after connect: the gap is found by the next message, and filled by `sync`.)
  const laptop = await user('bob', { catchUp: false });
  const phone = await sameUser(laptop, {});
  const { room_id: room } = await alice.createGroup('gap', [laptop.userId]);
  await Promise.all([online(laptop), online(phone)]);
  const onLaptop = record(laptop);
  const onPhone = record(phone);
  const gaps = [];
  laptop.on('gap', (g) => gaps.push(g));
  await alice.sendMessage(room, 'm1');
  await until(() => onLaptop.length === 1 && onPhone.length === 1, 'm1 on both devices');

  // The laptop goes away; the phone reads and acknowledges three more, moving the device's cursor.
  laptop.disconnect();
  for (const text of ['m2', 'm3', 'm4']) await alice.sendMessage(room, text);
  await until(() => onPhone.length === 4, 'm2-m4 on the phone');
  await phone.ping();

  // Back online, the gateway has nothing to resync for the laptop (the cursor is past m4); the
  // next message is ahead of what the laptop has.
  await online(laptop);
  await alice.sendMessage(room, 'm5');
  await until(() => onLaptop.length >= 5, 'five messages on the laptop');
  assert.deepEqual(onLaptop.map((m) => m.content), ['m1', 'm2', 'm3', 'm4', 'm5']);
  assert.ok(gaps.length >= 1 && gaps[0].room_id === room && gaps[0].after_seq === 1, JSON.stringify(gaps));
  assert.deepEqual(laptop.cursors(), { [room]: 5 });
});

test('named devices keep their own cursors: one that was away gets what it missed on reconnect', async () => {
  const alice = await user('alice');
  const laptop = await user('bob', { deviceId: 'laptop', catchUp: false });
  const phone = await sameUser(laptop, { deviceId: 'phone' });
  const { room_id: room } = await alice.createGroup('devices', [laptop.userId]);
  await Promise.all([online(laptop), online(phone)]);
  const onLaptop = record(laptop);
  const onPhone = record(phone);
  await alice.sendMessage(room, 'm1');
  await until(() => onLaptop.length === 1 && onPhone.length === 1, 'm1 on both devices');
  laptop.disconnect();
  for (const text of ['m2', 'm3', 'm4']) await alice.sendMessage(room, text);
  await until(() => onPhone.length === 4, 'm2-m4 on the phone');
  await phone.ping();
  // The phone's acks moved the phone's cursor only: the laptop's resync brings m2-m4.
  await online(laptop);
  await until(() => onLaptop.length >= 4, 'm2-m4 on the laptop');
  assert.deepEqual(onLaptop.map((m) => m.content), ['m1', 'm2', 'm3', 'm4']);
  assert.deepEqual(laptop.cursors(), { [room]: 4 });
});

test('a read receipt reaches the reader\'s other device and the sender; typing reaches the others', async () => {
  const alice = await user('alice');
  const laptop = await user('bob', { deviceId: 'laptop' });
  const phone = await sameUser(laptop, { deviceId: 'phone' });
  const { room_id: room } = await alice.createGroup('receipts', [laptop.userId]);
  await Promise.all([online(alice), online(laptop), online(phone)]);
  const reads = { alice: [], phone: [] };
  alice.on('read', (r) => reads.alice.push(r));
  phone.on('read', (r) => reads.phone.push(r));
  const typing = { laptop: [], alice: [] };
  laptop.on('typing', (t) => typing.laptop.push(t));
  alice.on('typing', (t) => typing.alice.push(t));
  const onLaptop = record(laptop);
  const sent = await alice.sendMessage(room, 'read me');
  await until(() => onLaptop.length === 1, 'the message on the laptop');

  assert.equal(laptop.markRead(room, sent.seq), true);
  const receipt = { room_id: room, user_id: laptop.userId, seq: sent.seq };
  await until(() => reads.alice.length >= 1 && reads.phone.length >= 1, 'the receipt on the phone and at alice');
  assert.deepEqual(reads.alice[0], receipt);
  assert.deepEqual(reads.phone[0], receipt);
  const rooms = await laptop.joinedRooms();
  const mine = (rooms.rooms || rooms).find((r) => r.room_id === room);
  assert.equal(mine.read_seq, sent.seq);

  assert.equal(alice.typing(room), true);
  await until(() => typing.laptop.length >= 1, 'typing at bob');
  assert.deepEqual(typing.laptop[0], { room_id: room, user_id: alice.userId });
  await alice.ping();
  assert.equal(typing.alice.length, 0, 'the typist does not get their own typing');
});

test('after a connect, a quiet room behind what another device read is caught up', async () => {
  const alice = await user('alice');
  const laptop = await user('bob', { gapTimeoutMs: 500 });
  const phone = await sameUser(laptop);
  const { room_id: room } = await alice.createGroup('catch up', [laptop.userId]);
  await Promise.all([online(laptop), online(phone)]);
  const onLaptop = record(laptop);
  const onPhone = record(phone);
  await alice.sendMessage(room, 'm1');
  await until(() => onLaptop.length === 1 && onPhone.length === 1, 'm1 on both devices');
  laptop.disconnect();
  for (const text of ['m2', 'm3']) await alice.sendMessage(room, text);
  await until(() => onPhone.length === 3, 'm2 and m3 on the phone');
  await phone.ping();
  // Back online, and nothing more is sent: the rooms' last seq tells the laptop what it lacks.
  await online(laptop);
  await until(() => onLaptop.length >= 3, 'm2 and m3 on the laptop');
  assert.deepEqual(onLaptop.map((m) => m.content), ['m1', 'm2', 'm3']);
});

test('a gap the sync does not fill is read from history', async () => {
  // The laptop's socket loses every `sync` frame it sends (a fault at the network edge: the
  // gateway never sees them), so only history can fill the gap.
  const syncs = [];
  class NoSync extends WebSocket {
    send(data) {
      if (JSON.parse(data).type === 'sync') {
        syncs.push(data);
        return;
      }
      super.send(data);
    }
  }
  const alice = await user('alice');
  const laptop = await user('bob', { WebSocket: NoSync, gapTimeoutMs: 500, catchUp: false });
  const phone = await sameUser(laptop);
  const { room_id: room } = await alice.createGroup('history gap', [laptop.userId]);
  await Promise.all([online(laptop), online(phone)]);
  const onLaptop = record(laptop);
  const onPhone = record(phone);
  await alice.sendMessage(room, 'm1');
  await until(() => onLaptop.length === 1 && onPhone.length === 1, 'm1 on both devices');
  laptop.disconnect();
  for (const text of ['m2', 'm3', 'm4']) await alice.sendMessage(room, text);
  await until(() => onPhone.length === 4, 'm2-m4 on the phone');
  await phone.ping();
  await online(laptop);
  await alice.sendMessage(room, 'm5');
  await until(() => onLaptop.length >= 5, 'five messages on the laptop');
  assert.deepEqual(onLaptop.map((m) => m.content), ['m1', 'm2', 'm3', 'm4', 'm5']);
  assert.equal(syncs.length, 1, 'the sync was asked for (and lost)');
});

test('while history is out of reach too, the gap stays held and is filled once it answers', async (t) => {
  class NoSync extends WebSocket {
    send(data) {
      if (JSON.parse(data).type !== 'sync') super.send(data);
    }
  }
  // History reads from the laptop are refused (connection dropped) until `reachable`.
  let reachable = false;
  let refused = 0;
  const { sendUrl, registryUrl } = await sendProxy(t, (req) => {
    if (!req.url.startsWith('/api/chat/history') || reachable) return 'forward';
    refused += 1;
    return 'refuse';
  });
  const alice = await user('alice');
  const laptop = await user('bob', {
    WebSocket: NoSync, gapTimeoutMs: 300, catchUp: false, sendUrl, registryUrl,
  });
  const phone = await sameUser(laptop);
  const { room_id: room } = await alice.createGroup('no history', [laptop.userId]);
  await Promise.all([online(laptop), online(phone)]);
  const onLaptop = record(laptop);
  const onPhone = record(phone);
  await alice.sendMessage(room, 'm1');
  await until(() => onLaptop.length === 1 && onPhone.length === 1, 'm1 on both devices');
  laptop.disconnect();
  for (const text of ['m2', 'm3']) await alice.sendMessage(room, text);
  await until(() => onPhone.length === 3, 'm2 and m3 on the phone');
  await phone.ping();
  await online(laptop);
  await alice.sendMessage(room, 'm4');
  await until(() => refused >= 2, 'two refused history reads');
  assert.deepEqual(onLaptop.map((m) => m.content), ['m1'], 'nothing past the hole');
  reachable = true;
  await until(() => onLaptop.length >= 4, 'four messages on the laptop');
  assert.deepEqual(onLaptop.map((m) => m.content), ['m1', 'm2', 'm3', 'm4']);
});

test('group notices arrive as events (every frame also as "frame"), the dissolved one included', async () => {
  const alice = await user('alice');
  const bob = await user('bob');
  const carol = await user('carol');
  const { room_id: room } = await alice.createGroup('notices', [bob.userId]);
  await online(bob);
  const notices = [];
  bob.on('notice', (n) => notices.push(n));
  const frames = [];
  bob.on('frame', (f) => frames.push(f.type));
  await alice.request('meta', 'POST', `/api/group/${room}/members`, { member_ids: [carol.userId] });
  await until(() => notices.length === 1, 'the member_added notice');
  assert.deepEqual(
    [notices[0].room_id, notices[0].event, notices[0].user_ids, notices[0].by],
    [room, 'member_added', [carol.userId], alice.userId],
  );
  await alice.request('meta', 'DELETE', `/api/group/${room}`);
  await until(() => notices.length === 2, 'the dissolved notice');
  assert.deepEqual([notices[1].event, notices[1].by], ['dissolved', alice.userId]);
  assert.deepEqual(frames, ['notice', 'notice'], 'each frame is seen by "frame" too');
  await assert.rejects(alice.sendMessage(room, 'too late'), (e) => e.status === 404 && e.name === 'room_not_found');
  await bob.ping();
  assert.deepEqual(frames, ['notice', 'notice', 'pong']);
});

test('4009 (too many connections) stops reconnecting; the newer connections stay', async () => {
  const alice = await user('alice');
  const first = await user('carol');
  const second = await sameUser(first);
  const third = await sameUser(first);
  const { room_id: room } = await alice.createGroup('many', [first.userId]);
  await online(first);
  await online(second);
  const stopped = next(first, 'stopped');
  const firstLost = next(first, 'disconnected');
  await online(third);
  assert.equal((await stopped).code, 4009);
  assert.equal((await firstLost).willReconnect, false);
  assert.equal(first.state, 'stopped');
  assert.equal(first.nextReconnectAt, null, 'no reconnect planned');

  const [onFirst, onSecond, onThird] = [first, second, third].map(record);
  const sent = await alice.sendMessage(room, 'to the newer two');
  await until(() => onSecond.length === 1 && onThird.length === 1, 'the message on the newer two');
  assert.deepEqual([onSecond[0].id, onThird[0].id], [sent.message_id, sent.message_id]);
  assert.equal(second.state, 'online');
  assert.equal(third.state, 'online');
  assert.equal(first.state, 'stopped');
  assert.deepEqual(onFirst, []);
});

test('4401 (token revoked): the client that changed the password reconnects, another session ends', async () => {
  const changer = await user('dave');
  const other = await sameUser(changer);
  await Promise.all([online(changer), online(other)]);
  const revoked = next(changer, 'disconnected', (d) => d.code === 4401);
  const otherLost = next(other, 'disconnected', (d) => d.code === 4401);
  const otherEnded = next(other, 'session_ended');
  const reconnected = next(changer, 'connected');
  const { username } = await changer.me();
  await changer.changePassword(PASSWORD, 'password-456');
  const d = await revoked;
  assert.equal(d.willReconnect, true);
  await reconnected;
  assert.equal(changer.state, 'online');
  assert.equal((await otherLost).code, 4401);
  await otherEnded;
  assert.equal(other.session, null);
  await until(() => other.state === 'idle', 'the other client to give up');
  assert.equal(other.nextReconnectAt, null);
  assert.ok(username);
});
