// Test support: a real `ruststacker all` on free ports with a fresh data dir, started, stopped
// and restarted by the tests; and waiting for events with a deadline. No part of the server is
// mocked.
//
// The binary is RUSTSTACKER_BIN, else the cargo target dir's debug build (CARGO_TARGET_DIR, else
// the workspace's target/).
import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '../../..');

/** How long one wait may take (a reconnect after a restart waits for the backoff). */
export const WAIT_MS = 30_000;

function binary() {
  if (process.env.RUSTSTACKER_BIN) return process.env.RUSTSTACKER_BIN;
  const target = process.env.CARGO_TARGET_DIR || join(ROOT, 'target');
  return join(target, 'debug', 'ruststacker');
}

/** Four distinct free ports on 127.0.0.1 (held together while picked, then released). */
async function freePorts(n) {
  const servers = [];
  const ports = [];
  for (let i = 0; i < n; i += 1) {
    const s = createServer();
    await new Promise((ok, fail) => {
      s.once('error', fail);
      s.listen(0, '127.0.0.1', ok);
    });
    servers.push(s);
    ports.push(s.address().port);
  }
  await Promise.all(servers.map((s) => new Promise((ok) => s.close(ok))));
  return ports;
}

export class Server {
  /** @param {Record<string, string>} [env] extra config, as RUSTSTACKER_* variables */
  constructor(env = {}) {
    this.env = env;
    this.dir = mkdtempSync(join(tmpdir(), 'ruststacker-sdk-'));
    this.log = join(this.dir, 'server.log');
    this.child = null;
  }

  get metaUrl() {
    return `http://127.0.0.1:${this.ports[0]}`;
  }

  get sendUrl() {
    return `http://127.0.0.1:${this.ports[1]}`;
  }

  /** Starts the server (on the same ports and data after a stop) and waits until it is healthy. */
  async start() {
    const bin = binary();
    if (!existsSync(bin)) throw new Error(`no server binary at ${bin}: set RUSTSTACKER_BIN`);
    if (!this.ports) this.ports = await freePorts(4);
    const [meta, send, gateway, registry] = this.ports;
    const out = createWriteStream(this.log, { flags: 'a' });
    const child = spawn(bin, ['all'], {
      env: {
        ...process.env,
        RUSTSTACKER_DATA_DIR: join(this.dir, 'data'),
        RUSTSTACKER_RATE_LIMITS__ENABLED: 'false',
        RUSTSTACKER_META__PORT: String(meta),
        RUSTSTACKER_SEND__PORT: String(send),
        RUSTSTACKER_GATEWAY__PORT: String(gateway),
        RUSTSTACKER_REGISTRY__PORT: String(registry),
        ...this.env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout.pipe(out);
    child.stderr.pipe(out);
    child.exited = new Promise((ok) => child.on('exit', ok));
    this.child = child;
    const until = Date.now() + WAIT_MS;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`the server exited with ${child.exitCode}:\n${this.tail()}`);
      const ok = await Promise.all(this.ports.map((p) => fetch(`http://127.0.0.1:${p}/health`)
        .then((r) => r.ok, () => false)));
      if (ok.every(Boolean)) return;
      if (Date.now() > until) throw new Error(`the server did not become healthy:\n${this.tail()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Stops it gracefully (SIGTERM: gateways close their sockets with 1001). */
  async stop() {
    const child = this.child;
    this.child = null;
    if (!child || child.exitCode !== null) return;
    child.kill('SIGTERM');
    await child.exited;
  }

  /** Kills it (SIGKILL): its sockets end without a close frame, as in a crash. */
  async kill() {
    const child = this.child;
    this.child = null;
    if (!child || child.exitCode !== null) return;
    child.kill('SIGKILL');
    await child.exited;
  }

  /** Stops it and removes its data dir. */
  async dispose() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  tail() {
    try {
      return readFileSync(this.log, 'utf8').split('\n').slice(-40).join('\n');
    } catch {
      return '(no log)';
    }
  }
}

/** A name unique to this run (usernames are 3-32 of [A-Za-z0-9_.-]). */
export function uniqueName(prefix) {
  uniqueName.n = (uniqueName.n || 0) + 1;
  return `${prefix}_${process.pid.toString(36)}${uniqueName.n}`;
}

/**
 * Resolves with the first `event` of `emitter` for which `pred` holds; rejects after `ms`.
 * @template T
 * @param {{on: Function}} emitter @param {string} event
 * @param {(v: T) => boolean} [pred] @param {number} [ms]
 * @returns {Promise<T>}
 */
export function next(emitter, event, pred = () => true, ms = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no "${event}" event within ${ms} ms`));
    }, ms);
    const off = emitter.on(event, (v) => {
      if (!pred(v)) return;
      clearTimeout(timer);
      off();
      resolve(v);
    });
  });
}

/** Waits until `cond()` holds (checked every 20 ms); rejects after `ms` saying `what`. */
export async function until(cond, what, ms = WAIT_MS) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Every `message` a client emits, in order. */
export function record(client) {
  const got = [];
  client.on('message', (m) => got.push(m));
  return got;
}
