// The SDK against docs/protocol.md: every close code the document lists is one the SDK has an
// answer for — no reconnect exactly where the document says not to, or says the client is at
// fault — and every server frame of the document has its event.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { NO_RECONNECT, TOKEN_REVOKED } from '../src/index.js';

const doc = readFileSync(new URL('../../../docs/protocol.md', import.meta.url), 'utf8');

function section(title) {
  const start = doc.indexOf(`## ${title}`);
  assert.ok(start >= 0, `docs/protocol.md has a "${title}" section`);
  const end = doc.indexOf('\n## ', start + 3);
  return doc.slice(start, end < 0 ? undefined : end);
}

test('the close codes that stop reconnecting are the ones docs/protocol.md says so of', () => {
  const rows = [...section('Close codes').matchAll(/^\| (\d{4}) \| ([^|]*) \| ([^|]*) \|$/gm)]
    .map((m) => ({ code: Number(m[1]), todo: m[3].trim() }));
  assert.ok(rows.length >= 10, `the table was read: ${rows.length} rows`);
  const stop = rows
    .filter((r) => /do not reconnect|fix the client|send text frames|send smaller frames/i.test(r.todo))
    .map((r) => r.code);
  assert.deepEqual([...NO_RECONNECT].sort(), stop.sort());
  const revoked = rows.find((r) => r.code === TOKEN_REVOKED);
  assert.ok(revoked && /log in|new token/.test(revoked.todo), 'the 4401 row says to log in again');
});

test('every server frame type of docs/protocol.md has an event', () => {
  const table = section('Server to client');
  const types = new Set([...table.matchAll(/"type":"(\w+)"/g)].map((m) => m[1]));
  assert.deepEqual([...types].sort(), ['ack', 'chat', 'notice', 'pong', 'read', 'system', 'typing']);
  const client = readFileSync(new URL('../src/client.js', import.meta.url), 'utf8');
  const handled = new Set([...client.matchAll(/case '(\w+)':/g)].map((m) => m[1]));
  for (const t of types) assert.ok(handled.has(t), `frame type ${t} is handled`);
});
