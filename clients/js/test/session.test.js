// Sessions against a real `ruststacker all` whose access tokens live 3 s: renewal ahead of the
// expiry, renewal after a 401 (once, however many calls were refused at the same time), reuse
// detection ending the session, and log-out.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Client, SessionEndedError } from '../src/index.js';
import { Server, next, uniqueName, until } from './server.js';

const PASSWORD = 'password-123';
let server;

before(async () => {
  server = new Server({ RUSTSTACKER_JWT__EXPIRE_SECS: '3' });
  await server.start();
});

after(async () => {
  if (server) await server.dispose();
});

function newClient(extra = {}) {
  return new Client({ metaUrl: server.metaUrl, ...extra });
}

async function loggedIn(prefix) {
  const c = newClient();
  const username = uniqueName(prefix);
  await c.register({ username, password: PASSWORD, nickname: prefix });
  await c.login(username, PASSWORD);
  return { c, username };
}

test('the access token is renewed before it expires, with a new refresh token each time', async (t) => {
  const { c } = await loggedIn('renew');
  t.after(() => c.close());
  const first = c.session;
  assert.ok(first.token && first.refresh_token && first.expires_at);
  const sessions = [];
  c.on('session', (s) => sessions.push(s));
  // Two renewals (3 s tokens, renewed 1.5 s ahead), and the API answers all along.
  await until(() => sessions.length >= 2, 'two renewals');
  assert.notEqual(sessions[1].token, first.token);
  assert.notEqual(sessions[0].refresh_token, first.refresh_token);
  assert.notEqual(sessions[1].refresh_token, sessions[0].refresh_token);
  const me = await c.me();
  assert.equal(me.user_id, first.user_id);

  // The first refresh token was spent: presented again it is a stolen copy, and the whole
  // session is revoked; the client's next renewal is refused and its session ends.
  const ended = next(c, 'session_ended');
  const reuse = await fetch(`${server.metaUrl}/api/user/refresh`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ refresh_token: first.refresh_token }),
  });
  assert.equal(reuse.status, 401);
  assert.equal((await reuse.json()).error, 'refresh_token_reused');
  assert.match((await ended).error, /refresh_token/);
  assert.equal(c.session, null);
  await assert.rejects(c.me(), SessionEndedError);
});

test('a 401 renews the token once and the call is made again', async (t) => {
  const { c: owner, username } = await loggedIn('stale');
  const saved = owner.session;
  owner.close();
  // A saved session whose access token is refused although it does not look expired (e.g. a
  // server's secret changed): three calls at once are refused, one refresh serves them all.
  const c = newClient({
    session: { ...saved, token: `${saved.token}x`, expires_at: new Date(Date.now() + 3_600_000).toISOString() },
  });
  t.after(() => c.close());
  const sessions = [];
  c.on('session', (s) => sessions.push(s));
  const [me, rooms, again] = await Promise.all([c.me(), c.joinedRooms(), c.me()]);
  assert.equal(me.username, username.toLowerCase());
  assert.deepEqual(rooms.room_ids, []);
  assert.equal(again.user_id, me.user_id);
  assert.equal(sessions.length, 1, 'one refresh for the three refused calls');
  assert.notEqual(c.session.refresh_token, saved.refresh_token);

  // Two renewals asked for at once spend the refresh token once: the second finds the pair the
  // first got (spending it twice would revoke the session).
  const [a, b] = await Promise.all([c.renew(), c.renew()]);
  assert.deepEqual([a, b], [true, true]);
  assert.equal(sessions.length, 2);
  assert.equal((await c.me()).user_id, me.user_id);
});

test('log-out revokes the session: its refresh token is refused from then on', async () => {
  const { c } = await loggedIn('bye');
  const { refresh_token: refreshToken } = c.session;
  const ended = next(c, 'session_ended');
  await c.logout();
  assert.equal((await ended).error, 'logged_out');
  assert.equal(c.session, null);
  const r = await fetch(`${server.metaUrl}/api/user/refresh`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ refresh_token: refreshToken }),
  });
  assert.equal(r.status, 401);
  c.close();
});

test('wrong credentials are an ApiError with the API\'s error name', async () => {
  const c = newClient();
  await assert.rejects(c.login('nobody_here', 'wrong-password'), (e) => e.status === 401 && typeof e.name === 'string' && e.name !== 'Error');
  await assert.rejects(c.register({ username: 'x', password: 'short' }), (e) => e.status === 400);
  c.close();
});
