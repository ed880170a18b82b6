// Browser test of the web chat page: two people in two browser contexts (Debian's chromium,
// driven by playwright-core) against a `ruststacker all` this script starts, stops and restarts.
//
// Run by scripts/browser-test.sh, which gives: RUSTSTACKER_BIN (the binary), WEB_TEST_DATA (a
// fresh data dir), WEB_TEST_PORTS ("meta,send,gateway,registry"), SCREENSHOTS (where to save
// them) and CHROMIUM (the browser's path). Exits non-zero when any check fails, printing the
// server's log. No fixed sleeps: every wait is on a selector, a page condition or an HTTP answer,
// each with a timeout, and the whole run has a deadline.
import { spawn } from 'node:child_process';
import { mkdirSync, createWriteStream, readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
// The SDK the page is built on, here in Node to write as another client of the same users.
import { Client } from '../../clients/js/src/index.js';

const SDK_SRC = join(dirname(fileURLToPath(import.meta.url)), '../../clients/js/src');

const BIN = need('RUSTSTACKER_BIN');
const DATA = need('WEB_TEST_DATA');
const [META, SEND, GATEWAY, REGISTRY] = need('WEB_TEST_PORTS').split(',').map(Number);
const SHOTS = need('SCREENSHOTS');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const BASE = `http://127.0.0.1:${META}`;
const LOG = join(DATA, 'server.log');
/** The whole run's deadline. */
const DEADLINE_MS = 150_000;
/** One wait's limit (a reconnect after a restart waits for the backoff, at most 10 s). */
const WAIT_MS = 30_000;
const PASSWORD = 'password-123';
/** Send's content limit in this run (bytes): a longer message is refused with a 4xx. */
const MAX_CONTENT_BYTES = 200;

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run scripts/browser-test.sh)`);
  return v;
}

// ---- the server ----

let server = null;

function startServer() {
  const log = createWriteStream(LOG, { flags: 'a' });
  const env = {
    ...process.env,
    RUSTSTACKER_DATA_DIR: DATA,
    RUSTSTACKER_RATE_LIMITS__ENABLED: 'false',
    // Access tokens of 4 s: the pages renew theirs every couple of seconds through the whole run
    // (restart included), so every check below also checks the silent renewal.
    RUSTSTACKER_JWT__EXPIRE_SECS: '4',
    RUSTSTACKER_SEND__MAX_CONTENT_BYTES: String(MAX_CONTENT_BYTES),
    RUSTSTACKER_META__PORT: String(META),
    RUSTSTACKER_SEND__PORT: String(SEND),
    RUSTSTACKER_GATEWAY__PORT: String(GATEWAY),
    RUSTSTACKER_REGISTRY__PORT: String(REGISTRY),
  };
  const child = spawn(BIN, ['all'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.pipe(log);
  child.stderr.pipe(log);
  child.exited = new Promise((resolve) => child.on('exit', resolve));
  server = child;
  return child;
}

async function stopServer() {
  const child = server;
  server = null;
  if (!child || child.exitCode !== null) return;
  child.kill('SIGTERM');
  await child.exited;
}

/** Polls every service's /health until all answer 200 (or the server exits, or time is up). */
async function waitHealthy() {
  const until = Date.now() + WAIT_MS;
  for (;;) {
    if (server.exitCode !== null) throw new Error(`the server exited with ${server.exitCode}`);
    const ok = await Promise.all([META, SEND, GATEWAY, REGISTRY].map((p) => fetch(
      `http://127.0.0.1:${p}/health`).then((r) => r.ok, () => false)));
    if (ok.every(Boolean)) return;
    if (Date.now() > until) throw new Error('the server did not become healthy');
    await new Promise((r) => setTimeout(r, 100));
  }
}

// ---- checks ----

let checks = 0;

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  checks += 1;
}

const pageErrors = [];

async function newPage(browser, name, options = {}) {
  const context = await browser.newContext(options);
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/ERR_CONNECTION_REFUSED|WebSocket connection|Failed to load resource/.test(m.text())) {
      pageErrors.push(`${name} console: ${m.text()}`);
    }
  });
  await page.goto(BASE);
  return { context, page };
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: false });
}

async function register(page, username, nickname) {
  await page.fill('#username', username);
  await page.fill('#password', PASSWORD);
  await page.fill('#nickname', nickname);
  await page.click('#register-btn');
  await online(page);
}

async function login(page, username) {
  await page.fill('#username', username);
  await page.fill('#password', PASSWORD);
  await page.click('#login-btn');
  await online(page);
}

function online(page) {
  return page.waitForSelector('#conn-status[data-state="online"]');
}

/** The room's entry in the list, by its shown name. */
function roomEntry(page, name) {
  return page.locator('#room-list li.room', { has: page.locator('.room-name', { hasText: name }) });
}

async function openRoom(page, name) {
  await roomEntry(page, name).click();
  await page.waitForFunction((n) => document.getElementById('room-title').textContent === n, name);
}

async function sendText(page, text) {
  await page.fill('#message-input', text);
  await page.click('#send-btn');
}

/** Waits until a message with exactly this text is shown; answers its locator. */
async function shown(page, text, { mine = false } = {}) {
  const item = page.locator(mine ? '#messages li.message.mine' : '#messages li.message:not(.mine)', {
    has: page.locator('.content', { hasText: text }),
  }).last();
  await item.waitFor();
  return item;
}

async function delivered(page, text) {
  const item = await shown(page, text, { mine: true });
  await item.locator('.state[data-status="delivered"]').waitFor();
}

async function unreadOf(page, name) {
  const badge = roomEntry(page, name).locator('.unread');
  return (await badge.isVisible()) ? Number(await badge.textContent()) : 0;
}

async function waitUnread(page, name, n) {
  await page.waitForFunction(([room, want]) => {
    for (const li of document.querySelectorAll('#room-list li.room')) {
      if (li.querySelector('.room-name').textContent === room) {
        const b = li.querySelector('.unread');
        return (b.hidden ? 0 : Number(b.textContent)) === want;
      }
    }
    return false;
  }, [name, n]);
}

/** The seqs shown in the open room, in page order. */
function shownSeqs(page) {
  return page.$$eval('#messages li.message', (lis) => lis.map((li) => Number(li.dataset.seq)));
}

/** The open room's message texts, in page order. */
function shownTexts(page) {
  return page.$$eval('#messages li.message .content', (els) => els.map((e) => e.textContent));
}

/** Whether `seqs` run from 1 up by one. */
function fromOneWithoutHoles(seqs) {
  return seqs.length > 0 && seqs.every((s, i) => s === i + 1);
}

/**
 * Reloads a page just after it renewed its session. A refresh token is spent by its use: a reload
 * while a refresh is on its way would lose the new pair (the server's answer goes to the page
 * that is gone) and the reloaded page would present the spent token, which ends the session. With
 * 4 s access tokens renewed every 2 s that would happen now and then; a user's reload, rarely.
 */
async function reloadAfterRenewal(page) {
  const read = () => page.evaluate(() => JSON.parse(localStorage.getItem('ruststacker.session')).token);
  const token = await read();
  await page.waitForFunction((t) => JSON.parse(localStorage.getItem('ruststacker.session')).token !== t,
    token);
  await page.reload();
}

/** Revokes the session a page holds (as a log-out elsewhere would), its token read from storage. */
async function revokeSessionOf(page) {
  const until = Date.now() + WAIT_MS;
  for (;;) {
    const { token } = await page.evaluate(() => JSON.parse(localStorage.getItem('ruststacker.session')));
    const r = await fetch(`${BASE}/api/user/logout`, {
      method: 'POST', headers: { Authorization: `Bearer ${token}` },
    });
    if (r.ok) return;
    // The page renewed its 4 s token meanwhile: read it again.
    if (r.status !== 401 || Date.now() > until) throw new Error(`logout answered ${r.status}`);
  }
}

// ---- the scenario ----

async function scenario(browser) {
  const tag = Date.now().toString(36).slice(-6);
  const alice = `alice_${tag}`;
  const bob = `bob_${tag}`;
  const group = `Team ${tag}`;

  // The page is built on the SDK: its modules are served as they are in clients/js/src.
  for (const name of readdirSync(SDK_SRC)) {
    const served = await fetch(`${BASE}/web/${name}`);
    check(served.ok && /javascript/.test(served.headers.get('content-type')), `${name} is served`);
    check(await served.text() === readFileSync(join(SDK_SRC, name), 'utf8'),
      `the served ${name} is the SDK's`);
  }

  const a = await newPage(browser, 'alice', { viewport: { width: 1100, height: 720 } });
  await a.page.waitForSelector('#login-form');
  await shot(a.page, '01-login');
  await register(a.page, alice, 'Alice');
  const storedSession = (page) => page.evaluate(
    () => JSON.parse(localStorage.getItem('ruststacker.session')));
  const firstSession = await storedSession(a.page);
  check(Boolean(firstSession.refresh_token), 'the page keeps a refresh token');
  const b = await newPage(browser, 'bob', { viewport: { width: 1100, height: 720 } });
  await register(b.page, bob, 'Bob');

  // Alice makes a group, picking Bob by name.
  await a.page.click('#new-group-btn');
  await a.page.fill('#group-name', group);
  await a.page.fill('#user-search', bob.slice(0, 8));
  await a.page.locator(`#user-results li[data-username="${bob}"] button`).click();
  await a.page.waitForSelector('#picked .chip');
  await a.page.click('#picker-create');
  await a.page.waitForFunction((n) => document.getElementById('room-title').textContent === n, group);
  check(await a.page.locator('#picker').evaluate((d) => !d.open), 'the picker closed');

  // Alice writes; her message gets the delivered mark; Bob's list shows the room, unread.
  await sendText(a.page, 'hello bob');
  await delivered(a.page, 'hello bob');
  await roomEntry(b.page, group).waitFor();
  await waitUnread(b.page, group, 1);

  // A one-to-one room too, from Alice, found by Bob's nickname.
  await a.page.click('#new-direct-btn');
  await a.page.fill('#user-search', 'Bob');
  await a.page.locator(`#user-results li[data-username="${bob}"] button`).click();
  await a.page.waitForFunction(() => document.getElementById('room-title').textContent === 'Bob');
  await sendText(a.page, 'just between us');
  await delivered(a.page, 'just between us');
  await sendText(a.page, 'two of them');
  await delivered(a.page, 'two of them');
  await roomEntry(b.page, 'Alice').waitFor();
  await waitUnread(b.page, 'Alice', 2);
  check(await unreadOf(b.page, group) === 1, 'the group still has one unread message');
  await shot(b.page, '02-rooms-unread');

  // Bob reads the group (its unread count goes to 0) and answers; both see it live.
  await openRoom(b.page, group);
  await shown(b.page, 'hello bob');
  await waitUnread(b.page, group, 0);
  await sendText(b.page, 'hi alice');
  await delivered(b.page, 'hi alice');
  await openRoom(a.page, group);
  await shown(a.page, 'hi alice');
  // Markup in a message is text, never HTML.
  const markup = '<img src=x onerror="window.__pwned=1"><b>bold?</b>';
  await sendText(a.page, markup);
  await delivered(a.page, markup);
  const item = await shown(b.page, markup);
  check(await item.locator('.content').textContent() === markup, 'markup is shown as text');
  check(await b.page.locator('#messages img, #messages b').count() === 0, 'no element made from a message');
  check(await b.page.evaluate(() => window.__pwned === undefined), 'no script ran from a message');
  await shot(b.page, '03-chat');

  // Bob goes away (his browser closes); Alice writes three messages; Bob comes back in a fresh
  // browser, logs in and finds them, in order, after what he had.
  await b.context.close();
  const away = ['while you were away 1', 'while you were away 2', 'while you were away 3'];
  for (const text of away) {
    await sendText(a.page, text);
    await delivered(a.page, text);
  }
  const b2 = await newPage(browser, 'bob again', { viewport: { width: 1100, height: 720 } });
  await login(b2.page, bob);
  await roomEntry(b2.page, group).waitFor();
  check(await unreadOf(b2.page, group) >= away.length, 'the missed messages count as unread');
  await openRoom(b2.page, group);
  for (const text of away) await shown(b2.page, text);
  const seqs = await shownSeqs(b2.page);
  check(seqs.every((s, i) => i === 0 || s === seqs[i - 1] + 1), `seqs in order without holes: ${seqs}`);
  check(seqs.length === 6, `the whole conversation is shown once: ${seqs}`);

  // The server restarts on the same data dir: both open pages reconnect by themselves and get
  // what is sent after the restart, live.
  await stopServer();
  await a.page.waitForSelector('#conn-status:not([data-state="online"])');
  await b2.page.waitForSelector('#conn-status:not([data-state="online"])');
  // A message written while the server is down is tried again by itself (no tap), and gets
  // through once the server is back.
  await sendText(a.page, 'sent while down');
  await a.page.locator('#messages li.message.mine', { hasText: 'sent while down' })
    .locator('.state[data-status="retrying"]').waitFor();
  startServer();
  await waitHealthy();
  await online(a.page);
  await online(b2.page);
  // Stored (its ACK may have gone to a connection of Alice's not yet made again).
  await (await shown(a.page, 'sent while down', { mine: true }))
    .locator('.state[data-status="sent"], .state[data-status="delivered"]').waitFor();
  await shown(b2.page, 'sent while down');
  await sendText(a.page, 'after the restart');
  await delivered(a.page, 'after the restart');
  await shown(b2.page, 'after the restart');
  await sendText(b2.page, 'welcome back');
  await shown(a.page, 'welcome back');
  const after = await shownSeqs(b2.page);
  check(new Set(after).size === after.length, `no message twice after the restart: ${after}`);

  // A reload right after a burst: the gateway sends the burst again first (the page's `ack`
  // frames are held back here, so the server's cursor stays before it), and the page still shows
  // the whole room, reopened by itself; Bob's own messages, stored, are delivered.
  let holdAcks = true;
  await b2.context.routeWebSocket(/\/api\/ws/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((frame) => {
      if (holdAcks && /"type"\s*:\s*"ack"/.test(String(frame))) return;
      server.send(frame);
    });
  });
  await reloadAfterRenewal(b2.page);
  await online(b2.page);
  const burst = ['burst 1', 'burst 2', 'burst 3', 'burst 4', 'burst 5'];
  for (const text of burst) await sendText(a.page, text);
  for (const text of burst) await delivered(a.page, text);
  await shown(b2.page, 'burst 5');
  await reloadAfterRenewal(b2.page);
  await online(b2.page);
  // Nothing is clicked: the messages shown are the room's that was open.
  await shown(b2.page, 'burst 5');
  check(await b2.page.textContent('#room-title') === group, 'the open room is open again after a reload');
  await shown(b2.page, 'hello bob');
  const reloaded = await shownSeqs(b2.page);
  check(fromOneWithoutHoles(reloaded), `the whole room after a reload, once: ${reloaded}`);
  const mineStates = await b2.page.$$eval('#messages li.message.mine .state',
    (els) => els.map((e) => e.dataset.status));
  check(mineStates.length === 2 && mineStates.every((st) => st === 'delivered'),
    `Bob's stored messages are delivered after a reload: ${mineStates}`);
  holdAcks = false;

  // Older history: after 60 more messages (Alice, through the SDK in Node) a reload shows the
  // latest page; scrolling up loads the earlier ones, back to the first.
  const alicesSdk = new Client({ metaUrl: BASE });
  await alicesSdk.login(alice, PASSWORD);
  const groupId = Number(await b2.page.locator('#room-list li.room.active').getAttribute('data-room-id'));
  for (let i = 1; i <= 60; i += 1) await alicesSdk.sendMessage(groupId, `older ${i}`);
  alicesSdk.close();
  await shown(b2.page, 'older 60');
  await reloadAfterRenewal(b2.page);
  await online(b2.page);
  await shown(b2.page, 'older 60');
  const firstPage = await shownSeqs(b2.page);
  check(!firstPage.includes(1) && firstPage.length >= 50, `the latest page first: ${firstPage}`);
  for (let i = 0; i < 5 && !(await shownSeqs(b2.page)).includes(1); i += 1) {
    const before = (await shownSeqs(b2.page))[0];
    await b2.page.locator('#messages').evaluate((el) => {
      el.scrollTop = 0;
    });
    await b2.page.waitForFunction((low) => {
      const first = document.querySelector('#messages li.message');
      return first && Number(first.dataset.seq) < low;
    }, before);
  }
  const scrolled = await shownSeqs(b2.page);
  check(fromOneWithoutHoles(scrolled), `scrolling up reaches the first message: ${scrolled}`);
  await b2.page.locator('#messages .room-start').waitFor();
  await b2.page.locator('#messages .room-start').scrollIntoViewIfNeeded();
  await shot(b2.page, '04-history-start');

  // Several lines (Shift+Enter), links (http/https only, opened without referrer, the text never
  // HTML), a separator for the day, the last message previewed in the room list, and the unread
  // count in the title.
  await a.page.fill('#message-input', 'line one');
  await a.page.press('#message-input', 'Shift+Enter');
  await a.page.type('#message-input', 'line two');
  await a.page.press('#message-input', 'Enter');
  await delivered(a.page, 'line two');
  const lines = await shown(b2.page, 'line two');
  check(await lines.locator('.content').textContent() === 'line one\nline two',
    'a message of two lines');
  const linky = 'see https://example.com/a?b=1, javascript:alert(1) or <a href="javascript:alert(2)">x</a>';
  await sendText(a.page, linky);
  const linked = await shown(b2.page, 'see https://example.com');
  check(await linked.locator('.content').textContent() === linky, 'the text as it was written');
  const anchors = await linked.locator('.content a').evaluateAll((els) => els.map((e) => ({
    href: e.getAttribute('href'), rel: e.rel, target: e.target, text: e.textContent,
  })));
  check(anchors.length === 1 && anchors[0].href === 'https://example.com/a?b=1'
    && anchors[0].text === 'https://example.com/a?b=1' && anchors[0].rel === 'noopener noreferrer'
    && anchors[0].target === '_blank', `one safe link: ${JSON.stringify(anchors)}`);
  const firstItem = await b2.page.$eval('#messages li:not(.room-start)', (li) => li.className);
  check(firstItem === 'day', `a day separator before the first message: ${firstItem}`);
  check(await b2.page.locator('#messages li.day').count() >= 1, 'day separators');
  await b2.page.waitForFunction(([room, text]) => [...document.querySelectorAll('#room-list li.room')]
    .some((li) => li.querySelector('.room-name').textContent === room
      && li.querySelector('.preview').textContent === text), [group, `Alice: ${linky}`]);
  check(await roomEntry(b2.page, 'Alice').locator('.preview').textContent() === 'Alice: two of them',
    'the other room previews its last message');
  const unreadDirect = await unreadOf(b2.page, 'Alice');
  check(unreadDirect === 2 && await b2.page.title() === '(2) RustStacker chat',
    `the unread count in the title: ${await b2.page.title()}`);

  // An error stays until dismissed: a message longer than Send allows is refused (4xx).
  await sendText(b2.page, 'x'.repeat(MAX_CONTENT_BYTES + 1));
  await b2.page.locator('#messages li.message.mine .state[data-status="refused"]').waitFor();
  await b2.page.locator('#errors li').waitFor();
  await sendText(b2.page, 'still here');
  await delivered(b2.page, 'still here');
  await shown(a.page, 'still here');
  check(await b2.page.locator('#errors li').count() === 1, 'the error is still shown');
  await shot(b2.page, '05-error');
  await b2.page.click('#errors li button');
  check(await b2.page.locator('#errors li').count() === 0, 'a dismissed error is gone');
  await b2.page.click('#messages .state[data-status="refused"]');
  check(await b2.page.locator('#messages .state[data-status="refused"]').count() === 0,
    'a refused message is removed on a tap');

  // A phone-sized screen: one pane at a time, nothing wider than the screen.
  const phone = await newPage(browser, 'phone', {
    viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true,
  });
  await login(phone.page, bob);
  await roomEntry(phone.page, group).waitFor();
  check(await phone.page.locator('#chat').isHidden(), 'the list alone on a phone');
  await shot(phone.page, '06-phone-rooms');
  await openRoom(phone.page, group);
  await shown(phone.page, 'line two');
  check(await phone.page.locator('#sidebar').isHidden(), 'the chat alone on a phone');
  check(await phone.page.locator('#back-btn').isVisible(), 'a way back to the list');
  const wide = await phone.page.evaluate(() => document.documentElement.scrollWidth);
  check(wide <= 390, `nothing wider than the phone: ${wide}px`);
  await shot(phone.page, '07-phone-chat');
  await phone.page.click('#back-btn');
  await phone.page.locator('#sidebar').waitFor();

  // The session ended elsewhere (revoked on the server): the page does not stay "online", it says
  // so on the log-in form.
  await revokeSessionOf(phone.page);
  await phone.page.waitForSelector('#login-view:not([hidden])');
  check(/ended/.test(await phone.page.locator('#login-error').textContent()), 'the page says the session ended');
  check(await phone.page.locator('#conn-status').getAttribute('data-state') !== 'online',
    'not online once the session ended');

  // Access tokens live 4 s here: the page renewed its session silently all along. Logging out
  // revokes the session on the server, so its refresh token is refused from then on.
  const renewed = await storedSession(a.page);
  check(renewed.token !== firstSession.token, 'the page renewed its access token');
  const loggedOut = a.page.waitForResponse((r) => r.url().endsWith('/api/user/logout'));
  await a.page.click('#logout-btn');
  check((await (await loggedOut).json()).data.revoked === true, 'the logout revoked the session');
  await a.page.waitForSelector('#login-view:not([hidden])');
  const stale = await fetch(`${BASE}/api/user/refresh`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ refresh_token: renewed.refresh_token }),
  });
  check(stale.status === 401, `a logged-out session's refresh token is refused: ${stale.status}`);

  check(pageErrors.length === 0, `no script errors: ${pageErrors.join('; ')}`);
}

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  startServer();
  let browser = null;
  let failed = null;
  const deadline = setTimeout(() => {
    failed = new Error(`the run took more than ${DEADLINE_MS / 1000} s`);
    console.error(failed.message);
    printLogAndExit();
  }, DEADLINE_MS);
  try {
    await waitHealthy();
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    await scenario(browser);
  } catch (e) {
    failed = e;
  } finally {
    clearTimeout(deadline);
    if (browser) await browser.close().catch(() => {});
    await stopServer().catch(() => {});
  }
  if (failed) {
    console.error(`FAILED after ${checks} checks: ${failed.stack || failed}`);
    printLogAndExit();
  }
  console.log(`browser test passed: ${checks} checks; screenshots in ${SHOTS}`);
}

function printLogAndExit() {
  try {
    console.error('---- server log ----');
    console.error(readFileSync(LOG, 'utf8'));
  } catch {
    console.error('(no server log)');
  }
  if (server) server.kill('SIGKILL');
  process.exit(1);
}

main();
