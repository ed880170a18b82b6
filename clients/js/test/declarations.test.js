// The hand-written index.d.ts against the code: every export is declared, and every event the
// client emits is in `ClientEvents` (and no declared event is one the client never emits).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import * as sdk from '../src/index.js';

const dts = readFileSync(new URL('../index.d.ts', import.meta.url), 'utf8');

test('every export of src/index.js is declared in index.d.ts, and only those', () => {
  const declared = [...dts.matchAll(/^export (?:class|function|const) (\w+)/gm)].map((m) => m[1]);
  assert.deepEqual(declared.sort(), Object.keys(sdk).sort());
});

test('the events in ClientEvents are the events the client emits', () => {
  const body = dts.slice(dts.indexOf('export interface ClientEvents'));
  const block = body.slice(0, body.indexOf('\n}\n'));
  const declared = new Set([...block.matchAll(/^ {2}(\w+): /gm)].map((m) => m[1]));
  const emitted = new Set();
  const dir = new URL('../src/', import.meta.url);
  for (const f of readdirSync(dir)) {
    const src = readFileSync(new URL(f, dir), 'utf8');
    for (const m of src.matchAll(/(?:_emit|emit)\('(\w+)'/g)) emitted.add(m[1]);
  }
  assert.deepEqual([...emitted].sort(), [...declared].sort());
});

test('every option the client reads is declared in ClientOptions', () => {
  const body = dts.slice(dts.indexOf('export interface ClientOptions'));
  const block = body.slice(0, body.indexOf('\n}\n'));
  const declared = new Set([...block.matchAll(/^ {2}(\w+)\??: /gm)].map((m) => m[1]));
  const used = new Set();
  for (const f of ['client.js', 'live.js']) {
    const src = readFileSync(new URL(`../src/${f}`, import.meta.url), 'utf8');
    for (const m of src.matchAll(/this\._o\.(\w+)/g)) used.add(m[1]);
  }
  for (const name of used) assert.ok(declared.has(name), `option ${name} is not declared`);
});
