// Shared fixtures for the end-to-end tests: an isolated RabbitMQ vhost per
// test file, a real bin/edge child process bound to it, HS256 tokens, STOMP
// clients (@stomp/stompjs over `ws`) and a waitFor poller. Everything a
// fixture starts is stopped by its close(), and every wait is bounded.
import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { Client } from '@stomp/stompjs';
import amqp from 'amqplib';
import WebSocket from 'ws';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const EDGE_BIN = process.env.EDGE_BIN || path.join(ROOT, 'bin', 'edge');
export const MGMT_URL = process.env.RABBITMQ_MGMT_URL || 'http://127.0.0.1:15672';
export const AMQP_HOST = process.env.RABBITMQ_AMQP_HOST || '127.0.0.1:5672';
export const BROKER_ADDRS = process.env.EDGE_E2E_BROKER_ADDRS || '127.0.0.1:61613';
const MGMT_AUTH = 'Basic ' + Buffer.from('guest:guest').toString('base64');

/** The Origin every Node client sends; the edge is started with it allowed. */
export const ORIGIN = 'http://localhost:5173';
export const SUBPROTOCOLS = ['v12.stomp', 'v11.stomp', 'v10.stomp'];

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Polls fn until it returns a truthy value without throwing, and returns that
 * value. After timeout ms it throws the last error (or a timeout error), so
 * an assertion inside fn surfaces with its own message.
 */
export async function waitFor(fn, { timeout = 5000, interval = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let lastErr;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      lastErr = undefined;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() >= deadline) {
      if (lastErr) {
        lastErr.message = `waitFor(${what}) timed out after ${timeout}ms: ${lastErr.message}`;
        throw lastErr;
      }
      throw new Error(`waitFor(${what}) timed out after ${timeout}ms`);
    }
    await sleep(interval);
  }
}

/** Resolves with p, or rejects after ms with a message naming what. */
export function withTimeout(p, ms, what) {
  let timer;
  return Promise.race([
    p,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms}ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** A promise plus its resolve/reject, for callback-style events. */
export function deferred() {
  let resolve, reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

// ---------------------------------------------------------------- tokens

const b64url = (buf) => Buffer.from(buf).toString('base64url');

/**
 * Permissions the tests' users get unless a test passes its own `scope`:
 * topics and queues, and the reply queues RabbitMQ hands out for
 * /temp-queue/ request/reply (SPEC §3 scope entries).
 */
export const DEFAULT_SCOPE = 'subscribe:/topic/# send:/topic/# subscribe:/queue/# send:/queue/# send:/reply-queue/#';

/**
 * Signs claims as an HS256 JWT. sub and exp default to a random subject and
 * one hour from now, scope to DEFAULT_SCOPE; pass exp explicitly (seconds
 * since the epoch) to test expiry.
 */
export function mintToken(secret, claims = {}) {
  const now = Math.floor(Date.now() / 1000);
  const payload = { sub: claims.sub ?? 'user-' + randomBytes(3).toString('hex'), iat: now, exp: now + 3600, scope: DEFAULT_SCOPE, ...claims };
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' })) + '.' + b64url(JSON.stringify(payload));
  return head + '.' + createHmac('sha256', secret).update(head).digest('base64url');
}

// ------------------------------------------------------- RabbitMQ management

/** Calls the RabbitMQ management API; returns parsed JSON (or null for 204). */
export async function mgmt(method, apiPath, body) {
  const res = await fetch(MGMT_URL + apiPath, {
    method,
    headers: { authorization: MGMT_AUTH, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  if (!res.ok && !(method === 'DELETE' && res.status === 404)) {
    throw new Error(`${method} ${apiPath}: HTTP ${res.status} ${await res.text()}`);
  }
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

const enc = encodeURIComponent;

/**
 * Deletes e2e vhosts left behind by test processes that died before their
 * cleanup ran (the name carries the owner's pid; live owners are kept).
 */
async function reapStaleVhosts() {
  const all = await mgmt('GET', '/api/vhosts?columns=name');
  for (const { name } of all) {
    const m = /^e2e-.+-(\d+)-[0-9a-f]{6}$/.exec(name);
    if (!m) continue;
    try {
      process.kill(Number(m[1]), 0);
      continue; // owner still running
    } catch (err) {
      if (err.code === 'EPERM') continue;
    }
    await deleteVhost(name).catch(() => {});
  }
}

/** Creates a fresh vhost with full permissions for guest. */
export async function createVhost(prefix) {
  await reapStaleVhosts();
  const name = `e2e-${prefix}-${process.pid}-${randomBytes(3).toString('hex')}`;
  await mgmt('PUT', `/api/vhosts/${enc(name)}`, { description: 'stompgate e2e (safe to delete)' });
  await mgmt('PUT', `/api/permissions/${enc(name)}/guest`, { configure: '.*', write: '.*', read: '.*' });
  // Vhost creation is asynchronous on the nodes; wait until it accepts AMQP.
  await waitFor(async () => {
    const c = await amqp.connect(amqpURL(name));
    await c.close();
    return true;
  }, { timeout: 10000, interval: 100, what: `vhost ${name} ready` });
  return name;
}

export async function deleteVhost(name) {
  await mgmt('DELETE', `/api/vhosts/${enc(name)}`);
}

export const amqpURL = (vhost) => `amqp://guest:guest@${AMQP_HOST}/${enc(vhost)}`;

/** The management API's view of a queue, or null when it does not exist. */
export async function queueInfo(vhost, queue) {
  const res = await fetch(`${MGMT_URL}/api/queues/${enc(vhost)}/${enc(queue)}`, {
    headers: { authorization: MGMT_AUTH },
    signal: AbortSignal.timeout(5000),
  });
  if (res.status === 404) return null;
  if (!res.ok) throw new Error(`GET queue ${queue}: HTTP ${res.status}`);
  return res.json();
}

export async function vhostConnections(vhost) {
  return mgmt('GET', `/api/vhosts/${enc(vhost)}/connections`);
}

// ------------------------------------------------------------------ edge

// Edges still running when this process exits (a crash, a cancelled run)
// are killed rather than left listening.
const liveChildren = new Set();
process.once('exit', () => {
  for (const c of liveChildren) c.kill('SIGKILL');
});

/** A free TCP port on 127.0.0.1 (there is a small race until the edge binds). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts bin/edge on a free port against vhost and waits for "listening on".
 * Returns { port, httpURL, wsURL, secret, output(), metrics(), stop() }.
 * port and secret, when given, restart an edge where clients already point
 * (same URL, their tokens still valid).
 */
export async function startEdge({ vhost, env = {}, origins = [], port: fixedPort, secret } = {}) {
  if (!existsSync(EDGE_BIN)) {
    throw new Error(`${EDGE_BIN} is missing: run \`make build\` (or go build -o bin/ ./cmd/...) first`);
  }
  let lastErr;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = fixedPort ?? (await freePort());
    try {
      return await spawnEdge(port, vhost, env, origins, secret);
    } catch (err) {
      lastErr = err;
      if (!/address already in use/.test(err.message)) throw err;
      if (fixedPort) await sleep(300); // the previous edge on it is still closing
    }
  }
  throw lastErr;
}

async function spawnEdge(port, vhost, env, origins, secret = 'e2e-' + randomBytes(24).toString('hex')) {
  const listen = `127.0.0.1:${port}`;
  const childEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    EDGE_LISTEN: listen,
    EDGE_JWT_HS256_SECRET: secret,
    EDGE_ALLOWED_ORIGINS: [ORIGIN, `http://127.0.0.1:${port}`, ...origins].join(','),
    EDGE_BROKER_ADDRS: BROKER_ADDRS,
    EDGE_BROKER_LOGIN: 'guest',
    EDGE_BROKER_PASSCODE: 'guest',
    EDGE_BROKER_VHOST: vhost,
    EDGE_HEARTBEAT: '2s',
    EDGE_DRAIN_DELAY: '0s',
    EDGE_DRAIN_PERIOD: '0s',
    LOG_LEVEL: process.env.E2E_EDGE_LOG_LEVEL || 'info',
    ...env,
  };
  const child = spawn(EDGE_BIN, [], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  liveChildren.add(child);
  child.once('exit', () => liveChildren.delete(child));
  let out = '';
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const ready = deferred();
  const onData = (chunk) => {
    out += chunk;
    if (out.length > 1 << 20) out = out.slice(-(1 << 19)); // keep the tail for diagnostics
    if (/^listening on \S+/m.test(out)) ready.resolve();
  };
  child.stdout.setEncoding('utf8').on('data', onData);
  child.stderr.setEncoding('utf8').on('data', onData);
  exited.then(({ code, signal }) => ready.reject(new Error(`edge exited (code ${code}, signal ${signal}) before listening:\n${out}`)));
  try {
    await withTimeout(ready.promise, 10000, 'the edge to print "listening on"');
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  let stopped;
  const edge = {
    port,
    httpURL: `http://${listen}`,
    wsURL: `ws://${listen}/ws`,
    secret,
    vhost,
    /** Everything the edge printed so far (logs included). */
    output: () => out,
    token: (claims) => mintToken(secret, claims),
    /** One sample of a Prometheus series: metric('stompgate_broker_connections'). */
    async metric(name, labels = '') {
      const res = await fetch(`${edge.httpURL}/metrics`, { signal: AbortSignal.timeout(5000) });
      const text = await res.text();
      const want = labels ? `${name}{${labels}}` : name;
      for (const line of text.split('\n')) {
        const i = line.lastIndexOf(' ');
        if (i > 0 && line.slice(0, i) === want) return Number(line.slice(i + 1));
      }
      return undefined;
    },
    /** SIGTERM, then SIGKILL if the edge has not exited within 5 s. */
    stop() {
      stopped ??= (async () => {
        if (child.exitCode !== null || child.signalCode !== null) return exited;
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        const r = await exited;
        clearTimeout(timer);
        return r;
      })();
      return stopped;
    },
  };
  return edge;
}

// --------------------------------------------------------------- fixture

/**
 * Sets up one test file: a vhost, an edge on it, and a list of things to
 * close. Use with node:test before()/after():
 *
 *   let fx; before(async () => { fx = await setup('stompjs'); }); after(() => fx?.close());
 */
export async function setup(name, edgeOpts = {}) {
  const closers = [];
  const vhost = await createVhost(name);
  closers.push(() => deleteVhost(vhost));
  let edge;
  try {
    edge = await startEdge({ vhost, ...edgeOpts });
  } catch (err) {
    await deleteVhost(vhost).catch(() => {});
    throw err;
  }
  closers.push(() => edge.stop());
  const fx = {
    vhost,
    edge,
    /** Registers fn to run at close(), before the edge stops. */
    defer(fn) {
      closers.push(fn);
    },
    async amqp() {
      const conn = await amqp.connect(amqpURL(vhost));
      conn.on('error', () => {}); // closes are reported through close()
      closers.push(() => conn.close().catch(() => {}));
      return conn;
    },
    /** A connected stompjs client (see connectStomp), closed at close(). */
    async stomp(opts = {}) {
      const c = await connectStomp(edge, opts);
      closers.push(() => c.close());
      return c;
    },
    async close() {
      const errors = [];
      for (const fn of closers.reverse()) {
        try {
          await withTimeout(Promise.resolve().then(fn), 10000, 'cleanup');
        } catch (err) {
          errors.push(err);
        }
      }
      closers.length = 0;
      if (errors.length) throw new AggregateError(errors, 'cleanup failed');
    },
  };
  return fx;
}

// ---------------------------------------------------------------- STOMP

/**
 * Opens a `ws` WebSocket to the edge the way a browser would (Origin set,
 * STOMP subprotocols offered). Extra: { origin, headers, query }.
 */
export function openWS(edge, { origin = ORIGIN, headers = {}, query = '', protocols = SUBPROTOCOLS } = {}) {
  const h = { ...headers };
  if (origin) h.Origin = origin;
  return new WebSocket(edge.wsURL + query, protocols, { headers: h, handshakeTimeout: 5000 });
}

/**
 * Connects a @stomp/stompjs Client through `ws` and resolves when CONNECTED
 * arrives. Options: token (sent as CONNECT Authorization unless tokenIn says
 * otherwise: 'connect-authorization' | 'passcode' | 'query' | 'upgrade'),
 * connectHeaders, clientOptions. Returns a handle with the client, the
 * CONNECTED frame, every raw WebSocket message seen ({ data, isBinary }),
 * the errors, and close() which deactivates (DISCONNECT with receipt).
 */
export async function connectStomp(edge, { token, tokenIn = 'connect-authorization', connectHeaders = {}, clientOptions = {}, timeout = 5000 } = {}) {
  const headers = { ...connectHeaders };
  const wsOpts = {};
  switch (tokenIn) {
    case 'connect-authorization':
      if (token) headers.Authorization = 'Bearer ' + token;
      break;
    case 'passcode':
      headers.login = 'ignored';
      headers.passcode = token;
      break;
    case 'query':
      wsOpts.query = '?access_token=' + encodeURIComponent(token);
      break;
    case 'upgrade':
      wsOpts.headers = { Authorization: 'Bearer ' + token };
      break;
    default:
      throw new Error('unknown tokenIn ' + tokenIn);
  }
  const raw = [];
  const stompErrors = [];
  const connected = deferred();
  let socket;
  const client = new Client({
    webSocketFactory: () => {
      socket = openWS(edge, wsOpts);
      socket.on('message', (data, isBinary) => raw.push({ data: Buffer.from(data), isBinary }));
      return socket;
    },
    connectHeaders: headers,
    reconnectDelay: 0, // a failed connect must fail the test, not retry
    heartbeatIncoming: 0,
    heartbeatOutgoing: 0,
    connectionTimeout: timeout,
    onConnect: (frame) => connected.resolve(frame),
    onStompError: (frame) => {
      stompErrors.push(frame);
      connected.reject(new Error(`ERROR ${frame.headers['x-error-code']}: ${frame.headers.message}`));
    },
    onWebSocketClose: (evt) => connected.reject(new Error(`WebSocket closed before CONNECTED (code ${evt?.code})`)),
    onWebSocketError: () => connected.reject(new Error('WebSocket error before CONNECTED')),
    debug: process.env.E2E_STOMP_DEBUG ? (s) => console.error('[stomp]', s) : () => {},
    ...clientOptions,
  });
  client.activate();
  let frame;
  try {
    frame = await withTimeout(connected.promise, timeout + 1000, 'CONNECTED');
  } catch (err) {
    await client.deactivate({ force: true }).catch(() => {});
    throw err;
  }
  return {
    client,
    connected: frame,
    raw,
    stompErrors,
    socket: () => socket,
    /** Subscribes and collects messages; returns { sub, messages, next(pred) }. */
    collect(destination, headers = {}) {
      const messages = [];
      const sub = client.subscribe(destination, (m) => messages.push(m), headers);
      return {
        sub,
        messages,
        next: (pred = () => true, ms = 5000) =>
          waitFor(() => messages.find(pred), { timeout: ms, interval: 10, what: `a MESSAGE on ${destination}` }),
      };
    },
    async close() {
      if (client.active) await withTimeout(client.deactivate(), 6000, 'stompjs deactivate');
    },
  };
}

/** Parses one STOMP frame from a WebSocket message (tests of raw frames). */
export function parseFrame(buf) {
  const b = Buffer.isBuffer(buf) ? buf : Buffer.from(buf);
  let i = 0;
  while (i < b.length && (b[i] === 0x0a || b[i] === 0x0d)) i++; // heart-beats
  if (i >= b.length) return null;
  const end = b.indexOf('\n\n', i);
  const head = b.subarray(i, end === -1 ? b.length : end).toString('utf8').split('\n');
  const command = head.shift().replace(/\r$/, '');
  const headers = {};
  for (const line of head) {
    const c = line.indexOf(':');
    if (c > 0 && !(line.slice(0, c) in headers)) headers[line.slice(0, c)] = line.slice(c + 1).replace(/\r$/, '');
  }
  let body = end === -1 ? Buffer.alloc(0) : b.subarray(end + 2);
  const nul = headers['content-length'] !== undefined ? Number(headers['content-length']) : body.indexOf(0);
  if (nul >= 0) body = body.subarray(0, nul);
  return { command, headers, body };
}

/** Encodes a STOMP frame (body a string or Buffer) as a Buffer. */
export function frameBytes(command, headers = {}, body = '') {
  const head = [command, ...Object.entries(headers).map(([k, v]) => `${k}:${v}`)].join('\n') + '\n\n';
  return Buffer.concat([Buffer.from(head), Buffer.isBuffer(body) ? body : Buffer.from(body), Buffer.from([0])]);
}

/**
 * Opens a raw WebSocket, sends data once open, and records every frame and
 * the close. Resolves when the socket has closed (or the timeout passed)
 * with { frames, close: {code, reason}|null, order: ['frame:ERROR', 'close'] }.
 */
export function rawSession(edge, send, { timeout = 5000, ...wsOpts } = {}) {
  return new Promise((resolve, reject) => {
    const ws = openWS(edge, wsOpts);
    const frames = [];
    const order = [];
    let closeInfo = null;
    const timer = setTimeout(() => {
      ws.terminate();
      resolve({ frames, close: closeInfo, order, timedOut: true });
    }, timeout);
    ws.on('unexpected-response', (_req, res) => {
      clearTimeout(timer);
      reject(Object.assign(new Error(`upgrade refused: HTTP ${res.statusCode}`), { statusCode: res.statusCode }));
      res.resume();
      ws.terminate();
    });
    ws.on('error', () => {}); // 'close' follows
    ws.on('open', () => {
      for (const chunk of [].concat(send)) ws.send(chunk);
    });
    ws.on('message', (data, isBinary) => {
      const f = parseFrame(Buffer.from(data));
      if (f) {
        f.isBinary = isBinary;
        frames.push(f);
        order.push('frame:' + f.command);
      }
    });
    ws.on('close', (code, reason) => {
      clearTimeout(timer);
      closeInfo = { code, reason: reason.toString() };
      order.push('close');
      resolve({ frames, close: closeInfo, order, timedOut: false });
    });
  });
}

/**
 * A TCP proxy in front of the broker's STOMP port that records when each
 * connection was opened, so a test can tell whether the edge dialled the
 * broker. Start the edge with EDGE_BROKER_ADDRS: proxy.addr.
 */
export async function brokerProxy(target = BROKER_ADDRS.split(',')[0]) {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const opened = [];
  const sockets = new Set();
  const srv = net.createServer((client) => {
    opened.push(Date.now());
    const upstream = net.connect(port, host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', resolve);
  });
  return {
    addr: `127.0.0.1:${srv.address().port}`,
    opened,
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        srv.close(() => resolve());
      }),
  };
}

// ------------------------------------------------------------- persister

export const PERSISTER_BIN = process.env.PERSISTER_BIN || path.join(ROOT, 'bin', 'persister');
export const PG_HOST = process.env.E2E_PG_HOST || '127.0.0.1';
export const PG_PORT = process.env.E2E_PG_PORT || '5432';
export const PG_USER = process.env.E2E_PG_USER || 'postgres';

/**
 * Runs one statement with psql against database db (unaligned, tuples only,
 * stops on error) and resolves with its stdout. Bounded to 10 s.
 */
export async function psql(db, sql) {
  const { execFile } = await import('node:child_process');
  return new Promise((resolve, reject) => {
    execFile(
      'psql',
      ['-h', PG_HOST, '-p', PG_PORT, '-U', PG_USER, '-d', db, '-X', '-At', '-v', 'ON_ERROR_STOP=1', '-c', sql],
      { timeout: 10000, env: { ...process.env, PGCONNECT_TIMEOUT: '5' } },
      (err, stdout, stderr) => (err ? reject(new Error(`psql ${db}: ${err.message}\n${stderr}`)) : resolve(stdout)),
    );
  });
}

/** Drops database name (if it exists), disconnecting its sessions. */
export async function dropDatabase(name) {
  await psql('postgres', `DROP DATABASE IF EXISTS "${name.replace(/"/g, '""')}" WITH (FORCE)`);
}

/**
 * Drops e2e databases (sg_e2e_<pid>_<hex>) left behind by test processes
 * that died before their cleanup ran; live owners' databases are kept.
 */
async function reapStaleDatabases() {
  const names = (await psql('postgres', "select datname from pg_database where datname like 'sg\\_e2e\\_%'")).split('\n');
  for (const name of names) {
    const m = /^sg_e2e_(\d+)_[0-9a-f]{6}$/.exec(name);
    if (!m) continue;
    try {
      process.kill(Number(m[1]), 0);
      continue;
    } catch (err) {
      if (err.code === 'EPERM') continue;
    }
    await dropDatabase(name).catch(() => {});
  }
}

/**
 * Starts bin/persister against vhost and a fresh Postgres database (which
 * the persister creates and migrates), and waits until it logs "consuming"
 * (its archive queue is declared and bound) and /healthz answers.
 * Returns { db, metricsURL, output(), psql(sql), metric(name), stop(), close() }:
 * stop() sends SIGTERM (SIGKILL after 10 s) and resolves with { code, signal };
 * close() stops it and drops the database.
 */
export async function startPersister({ vhost, env = {} } = {}) {
  if (!existsSync(PERSISTER_BIN)) {
    throw new Error(`${PERSISTER_BIN} is missing: run \`make build\` (or go build -o bin/ ./cmd/...) first`);
  }
  await reapStaleDatabases();
  const db = `sg_e2e_${process.pid}_${randomBytes(3).toString('hex')}`;
  let lastErr;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    try {
      return await spawnPersister(db, port, vhost, env);
    } catch (err) {
      lastErr = err;
      if (!/address already in use/.test(err.message)) break;
    }
  }
  await dropDatabase(db).catch(() => {});
  throw lastErr;
}

async function spawnPersister(db, port, vhost, env) {
  const listen = `127.0.0.1:${port}`;
  const childEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    PERSIST_AMQP_URL: amqpURL(vhost),
    PERSIST_DATABASE_URL: `postgres://${PG_USER}@${PG_HOST}:${PG_PORT}/${db}?sslmode=disable`,
    PERSIST_METRICS_LISTEN: listen,
    PERSIST_BATCH_WAIT: '20ms',
    PERSIST_CONNECTION_NAME: `stompgate-persister-e2e-${process.pid}`,
    ...env,
  };
  const child = spawn(PERSISTER_BIN, [], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  liveChildren.add(child);
  child.once('exit', () => liveChildren.delete(child));
  let out = '';
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const consuming = deferred();
  const onData = (chunk) => {
    out += chunk;
    if (out.length > 1 << 20) out = out.slice(-(1 << 19));
    if (/\bmsg="?consuming\b/.test(out)) consuming.resolve();
  };
  child.stdout.setEncoding('utf8').on('data', onData);
  child.stderr.setEncoding('utf8').on('data', onData);
  exited.then(({ code, signal }) => consuming.reject(new Error(`persister exited (code ${code}, signal ${signal}) before consuming:\n${out}`)));
  const metricsURL = `http://${listen}`;
  try {
    await withTimeout(consuming.promise, 15000, 'the persister to log "consuming"');
    await waitFor(async () => (await fetch(`${metricsURL}/healthz`, { signal: AbortSignal.timeout(2000) })).ok, {
      timeout: 5000,
      what: 'persister /healthz',
    });
  } catch (err) {
    child.kill('SIGKILL');
    await exited;
    throw err;
  }
  let stopped;
  const p = {
    db,
    vhost,
    metricsURL,
    output: () => out,
    psql: (sql) => psql(db, sql),
    /** One sample of an unlabelled Prometheus series, or undefined. */
    async metric(name) {
      const text = await (await fetch(`${metricsURL}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
      for (const line of text.split('\n')) {
        const i = line.lastIndexOf(' ');
        if (i > 0 && line.slice(0, i) === name) return Number(line.slice(i + 1));
      }
      return undefined;
    },
    stop() {
      stopped ??= (async () => {
        if (child.exitCode !== null || child.signalCode !== null) return exited;
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 10000);
        const r = await exited;
        clearTimeout(timer);
        return r;
      })();
      return stopped;
    },
    async close() {
      try {
        await p.stop();
      } finally {
        await dropDatabase(db);
      }
    },
  };
  return p;
}

// ------------------------------------------------------- stompjs receipts

/** A name unique to this run, for queues, ids and markers. */
export const uniq = (p) => `${p}-${randomBytes(4).toString('hex')}`;

/**
 * Subscribes through h (a connectStomp handle) with a receipt and resolves
 * once the broker has the subscription.
 */
export async function subscribeReady(h, destination, headers = {}) {
  const receipt = uniq('sub');
  const got = deferred();
  h.client.watchForReceipt(receipt, got.resolve);
  const s = h.collect(destination, { ...headers, receipt });
  await withTimeout(got.promise, 5000, `RECEIPT for SUBSCRIBE ${destination}`);
  return s;
}

/** Publishes through h with a receipt and resolves with the RECEIPT frame. */
export async function publishConfirmed(h, params) {
  const receipt = uniq('pub');
  const got = deferred();
  h.client.watchForReceipt(receipt, got.resolve);
  h.client.publish({ ...params, headers: { ...(params.headers || {}), receipt } });
  return withTimeout(got.promise, 5000, `RECEIPT for SEND to ${params.destination}`);
}
