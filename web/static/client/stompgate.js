// stompgate.js: the browser client helper for a stompgate edge, on top of
// @stomp/stompjs 7 (served beside this file as /client/stomp.umd.min.js).
//
//   import { StompgateClient } from '/client/stompgate.js';
//   const sg = new StompgateClient({ token, getToken: fetchFreshToken });
//   sg.journal('/topic/room.lobby', (m) => render(m));   // in x-seq order, once each
//   await sg.start();
//   await sg.send('/app/room.lobby', 'hello');           // resolved on the edge's RECEIPT
//
// What it does for the application (docs/CLIENT.md has the full contract):
// - reconnects with exponential backoff and full jitter; after an attempt
//   that failed before CONNECTED it probes the edge with `HEAD /ws` (the
//   same admission path as an upgrade: draining, connection cap, accept
//   rate) because a browser cannot read the status of a refused upgrade,
//   and waits at least the probe's `Retry-After` when it answers 503;
// - refreshes the token before `exp` (a callback fetches a new one) with a
//   SEND to /edge/refresh, and uses the newest token for every reconnect and
//   /api/history call;
// - reacts to ERROR `x-error-code`: token_expired → new token, reconnect at
//   once; revoked, unauthenticated, too_many_sessions → stop and tell the
//   app; shutting_down → reconnect soon (jittered, to another edge behind a
//   load balancer); anything else → reconnect with backoff;
// - per journaled subscription remembers the last x-seq delivered,
//   resubscribes with x-resume-after, drops duplicates, delivers in seq
//   order, and fills holes (x-resume:gap, a RECEIPT x-seq ahead of what
//   arrived, a seq that skips) from GET /api/history;
// - send() keeps a message until its RECEIPT and sends it again after a
//   reconnect with the same amqp-message-id, which the journal deduplicates
//   (unique per sender), so a message is neither lost nor stored twice.
//
// Every dependency (stompjs Client class, fetch, timers, clock, random) can
// be passed in, so the logic is tested under Node without a network.

/** Codes after which reconnecting cannot help: the client stops. */
export const FATAL_CODES = Object.freeze(['revoked', 'unauthenticated', 'too_many_sessions']);

const DEFAULTS = Object.freeze({
  baseDelayMs: 500, // first backoff window; doubles per failed attempt
  maxDelayMs: 30000, // backoff window cap
  maxRetryAfterMs: 120000, // a Retry-After above this is capped
  stableMs: 10000, // a session up this long resets the backoff
  shutdownJitterMs: 1000, // reconnect within [0, this) after shutting_down
  refreshMarginMs: 30000, // refresh this long before exp (at most 1/3 of the lifetime)
  refreshRetryMs: 5000, // retry a failed getToken() this often until exp
  heartbeatMs: 10000, // STOMP heart-beats both ways
  connectionTimeoutMs: 10000, // an attempt without CONNECTED by then is closed
  receiptTimeoutMs: 10000, // /edge/refresh receipt wait
  probeTimeoutMs: 3000, // HEAD /ws admission probe
  historyPageSize: 500, // /api/history limit per request (≤ 1000)
  holeWaitMs: 300, // a hole not filled by the stream itself within this is fetched
  maxOutbox: 200, // unacknowledged send()s kept across reconnects
  // 'auto': WebSocket, switching to SockJS (/sockjs) for good after
  // sockjsAfterFailures attempts in a row that failed before CONNECTED
  // while the edge said it would admit them (a proxy that strips Upgrade).
  // 'websocket' or 'sockjs' fix the transport.
  transport: 'auto',
  sockjsPath: '/sockjs',
  sockjsAfterFailures: 2,
});

// ------------------------------------------------------------ pure logic

/**
 * Full-jitter backoff: a delay drawn uniformly from [0, min(maxMs,
 * baseMs·2^attempt)). attempt 0 is the first retry.
 */
export function backoffDelay(attempt, { baseDelayMs = DEFAULTS.baseDelayMs, maxDelayMs = DEFAULTS.maxDelayMs } = {}, random = Math.random) {
  const window = Math.min(maxDelayMs, baseDelayMs * 2 ** Math.min(Math.max(attempt, 0), 30));
  return Math.floor(random() * window);
}

/**
 * Parses a Retry-After value (delta-seconds or an HTTP date) into
 * milliseconds from now, or null when absent or unreadable.
 */
export function parseRetryAfter(value, nowMs = Date.now()) {
  if (value == null) return null;
  const s = String(value).trim();
  if (/^\d+$/.test(s)) return Number(s) * 1000;
  if (!/[a-z]/i.test(s)) return null; // an HTTP date names its day and month
  const t = Date.parse(s);
  if (Number.isNaN(t)) return null;
  return Math.max(0, t - nowMs);
}

/** The `exp` of a JWT in milliseconds since the epoch, or null. */
export function tokenExpiry(token) {
  if (typeof token !== 'string') return null;
  const part = token.split('.')[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (part.length % 4)) % 4);
    const claims = JSON.parse(atob(b64));
    return typeof claims.exp === 'number' ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

/**
 * How long to wait before refreshing a token that expires at expMs: its
 * remaining lifetime minus a margin of marginMs, but never more than a
 * third of that lifetime (short-lived tokens refresh at two thirds).
 */
export function refreshDelay(expMs, nowMs, marginMs = DEFAULTS.refreshMarginMs) {
  const life = expMs - nowMs;
  if (life <= 0) return 0;
  return Math.max(0, life - Math.min(marginMs, life / 3));
}

/**
 * A reorder buffer for one journaled stream: push(seq, item) returns the
 * items now deliverable in seq order (none for a duplicate or while an
 * earlier seq is missing). lastSeq is the last seq handed out.
 */
export class SeqBuffer {
  constructor(lastSeq = 0) {
    this.lastSeq = lastSeq;
    this.pending = new Map();
  }

  /** Items that became deliverable, in order; dup tells a duplicate. */
  push(seq, item) {
    if (seq <= this.lastSeq || this.pending.has(seq)) return { dup: true, ready: [] };
    this.pending.set(seq, item);
    return { dup: false, ready: this.#drain() };
  }

  /** True while something is held behind a missing seq. */
  get hasHole() {
    return this.pending.size > 0;
  }

  /** The lowest held seq (the end of the hole), or null. */
  get firstPending() {
    let min = null;
    for (const s of this.pending.keys()) if (min === null || s < min) min = s;
    return min;
  }

  /** The highest held seq, or null. */
  get lastPending() {
    let max = null;
    for (const s of this.pending.keys()) if (max === null || s > max) max = s;
    return max;
  }

  /**
   * Gives up on the seqs before seq (history no longer has them): lastSeq
   * moves to seq-1 and what is then deliverable is returned.
   */
  skipTo(seq) {
    if (seq - 1 > this.lastSeq) {
      this.lastSeq = seq - 1;
      for (const s of this.pending.keys()) if (s <= this.lastSeq) this.pending.delete(s);
    }
    return this.#drain();
  }

  #drain() {
    const out = [];
    while (this.pending.has(this.lastSeq + 1)) {
      this.lastSeq++;
      out.push(this.pending.get(this.lastSeq));
      this.pending.delete(this.lastSeq);
    }
    return out;
  }
}

/**
 * Who is in a room (the presence contract of docs/CLIENT.md): entries keyed
 * by (user, tab), refreshed by join/here, removed by leave or after ttlMs
 * without news. user always comes from the edge-stamped x-user-id.
 */
export class PresenceRoster {
  constructor({ ttlMs = 30000 } = {}) {
    this.ttlMs = ttlMs;
    this.entries = new Map();
  }

  /**
   * Applies one presence message; returns true when the set of users
   * changed. ttlMs, when given, overrides the roster's for this entry.
   */
  apply(user, { type, tab, ttlMs }, nowMs) {
    if (!user || typeof tab !== 'string' || !tab) return false;
    const before = this.users().join('\n');
    const key = user + '\n' + tab;
    if (type === 'leave') this.entries.delete(key);
    else if (type === 'join' || type === 'here') this.entries.set(key, { user, tab, until: nowMs + (ttlMs ?? this.ttlMs) });
    else return false;
    return this.users().join('\n') !== before;
  }

  /** Drops entries past their TTL; true when the set of users changed. */
  expire(nowMs) {
    const before = this.users().join('\n');
    for (const [k, e] of this.entries) if (e.until <= nowMs) this.entries.delete(k);
    return this.users().join('\n') !== before;
  }

  /** The distinct users present, sorted. */
  users() {
    return [...new Set([...this.entries.values()].map((e) => e.user))].sort();
  }

  clear() {
    this.entries.clear();
  }
}

/** Parses a presence body; null when it is not one. every is clamped to 1–60 s. */
export function parsePresence(body) {
  let m;
  try {
    m = JSON.parse(body);
  } catch {
    return null;
  }
  if (!m || typeof m !== 'object' || !['join', 'here', 'leave'].includes(m.type) || typeof m.tab !== 'string' || !m.tab || m.tab.length > 64) return null;
  const every = Math.min(60000, Math.max(1000, Number(m.every) || 10000));
  return { type: m.type, tab: m.tab, every, ttlMs: 3 * every };
}

/** A random id (hex), from crypto.getRandomValues (works outside secure contexts too). */
export function randomId(bytes = 12) {
  const b = new Uint8Array(bytes);
  globalThis.crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

function b64decode(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** A MESSAGE frame from stompjs as a journal message. */
export function fromFrame(frame) {
  const h = frame.headers || {};
  const seq = h['x-seq'] !== undefined && /^\d+$/.test(h['x-seq']) ? Number(h['x-seq']) : null;
  const id = String(h['message-id'] || '');
  return {
    seq,
    body: frame.body,
    headers: h,
    sender: h['x-user-id'] ?? null,
    messageId: h['x-message-id'] ?? h['amqp-message-id'] ?? null,
    contentType: h['content-type'] ?? null,
    source: id.startsWith('stompgate-replay-') ? 'replay' : 'live',
  };
}

/** A message of GET /api/history as a journal message. */
export function fromHistory(m) {
  const headers = { ...(m.headers || {}) };
  let body = m.body;
  let binaryBody;
  if (m.body_encoding === 'base64') {
    binaryBody = b64decode(m.body);
    body = '';
  }
  return {
    seq: m.seq,
    body,
    binaryBody,
    headers,
    sender: m.sender ?? headers['x-user-id'] ?? null,
    messageId: m.message_id ?? null,
    contentType: m.content_type ?? null,
    publishedAt: m.published_at,
    source: 'history',
  };
}

// ---------------------------------------------------------- journal view

/**
 * One journaled subscription (/topic/<key> of an /app/<key> stream). Made
 * by StompgateClient.journal(); survives reconnects.
 */
class JournalSubscription {
  constructor(sg, destination, onMessage, opts) {
    this.sg = sg;
    this.destination = destination;
    this.onMessage = onMessage;
    this.onGap = opts.onGap || (() => {});
    this.onUnsequenced = opts.onUnsequenced || null;
    this.onCaughtUp = opts.onCaughtUp || (() => {});
    this.tail = opts.tail ?? null;
    this.buf = new SeqBuffer(opts.afterSeq ?? 0);
    this.initial = true; // no message delivered yet (tail applies)
    this.target = this.buf.lastSeq; // highest seq known to exist
    this.filling = false;
    this.holeTimer = null;
    this.failures = 0;
    this.sub = null;
    this.closed = false;
    this.caughtUp = false;
  }

  /** The last seq delivered to the app. */
  get lastSeq() {
    return this.buf.lastSeq;
  }

  _subscribe(stomp) {
    const receipt = 'sg-resume-' + randomId(6);
    stomp.watchForReceipt(receipt, (f) => this._onReceipt(f));
    this.sub = stomp.subscribe(this.destination, (f) => this._onFrame(f), {
      'x-resume-after': String(this.buf.lastSeq),
      receipt,
    });
  }

  _disconnected() {
    this.sub = null;
  }

  _onReceipt(f) {
    const last = Number(f.headers['x-seq']);
    if (Number.isFinite(last) && last > this.target) this.target = last;
    this._check();
    if (!this._behind()) this._markCaughtUp();
  }

  _onFrame(f) {
    const m = fromFrame(f);
    if (m.seq === null) {
      if (this.onUnsequenced) this.onUnsequenced(m);
      return;
    }
    this._push(m);
    if (m.headers['x-resume'] === 'gap') {
      // Nothing was replayed: everything after lastSeq before this one is
      // in history only.
      this.target = Math.max(this.target, m.seq - 1);
      this._fill();
    } else {
      this._check();
    }
  }

  _push(m) {
    if (m.seq > this.target) this.target = m.seq;
    const { ready } = this.buf.push(m.seq, m);
    this._deliver(ready);
  }

  _deliver(ready) {
    for (const m of ready) {
      this.initial = false;
      if (!this.closed) this.onMessage(m);
    }
    if (ready.length && !this._behind()) this._markCaughtUp();
  }

  _markCaughtUp() {
    if (this.caughtUp) return;
    this.caughtUp = true;
    this.onCaughtUp(this.buf.lastSeq);
  }

  /** True while seqs the edge told us about have not been delivered. */
  _behind() {
    return this.buf.lastSeq < this.target || this.buf.hasHole;
  }

  /** Schedules a history fill when a hole stays open for holeWaitMs. */
  _check() {
    if (this.closed || this.filling || this.holeTimer || !this._behind()) return;
    const from = this.buf.lastSeq;
    this.holeTimer = this.sg._setTimeout(() => {
      this.holeTimer = null;
      if (!this._behind()) return;
      // Still progressing (a replay streaming in): look again later.
      if (this.buf.lastSeq > from) this._check();
      else this._fill();
    }, this.sg.opts.holeWaitMs);
  }

  /** Fills the hole after lastSeq from /api/history, page by page. */
  async _fill() {
    if (this.filling || this.closed) return;
    if (this.holeTimer) {
      this.sg._clearTimeout(this.holeTimer);
      this.holeTimer = null;
    }
    this.filling = true;
    try {
      while (!this.closed && this._behind()) {
        if (this.initial && this.tail != null && this.target - this.tail > this.buf.lastSeq) {
          this._deliver(this.buf.skipTo(this.target - this.tail + 1));
          continue;
        }
        const from = this.buf.lastSeq;
        let page;
        try {
          page = await this.sg.history(this.destination, from, this.sg.opts.historyPageSize);
        } catch (err) {
          this.sg._error('history_failed', `history of ${this.destination} after ${from}: ${err.message}`);
          this.failures++;
          // Try again later (and at the next reconnect's receipt).
          this.holeTimer = this.sg._setTimeout(() => {
            this.holeTimer = null;
            this._fill();
          }, backoffDelay(this.failures, this.sg.opts, this.sg.random) + this.sg.opts.holeWaitMs);
          return;
        }
        this.failures = 0;
        for (const hm of page) if (typeof hm.seq === 'number') this._push(fromHistory(hm));
        if (this.buf.lastSeq === from) {
          // History does not hold seq from+1 (retention) or not yet: skip
          // to what we hold, or stop when nothing is held.
          const next = this.buf.firstPending;
          if (next === null) {
            if (page.length === 0) this.target = this.buf.lastSeq; // the receipt was ahead of history
            break;
          }
          this.onGap({ after: from, before: next });
          this._deliver(this.buf.skipTo(next));
        }
      }
    } finally {
      this.filling = false;
    }
    if (!this._behind()) this._markCaughtUp();
    else this._check();
  }

  /** Stops delivery and unsubscribes. */
  close() {
    this.closed = true;
    if (this.holeTimer) this.sg._clearTimeout(this.holeTimer);
    this.holeTimer = null;
    try {
      this.sub?.unsubscribe();
    } catch {
      // not connected: nothing to unsubscribe
    }
    this.sub = null;
    this.sg._subs.delete(this);
  }
}

/** A plain subscription, renewed after every reconnect. */
class PlainSubscription {
  constructor(sg, destination, onMessage, headers) {
    this.sg = sg;
    this.destination = destination;
    this.onMessage = onMessage;
    this.headers = headers;
    this.sub = null;
    this.closed = false;
  }

  _subscribe(stomp) {
    this.sub = stomp.subscribe(this.destination, (f) => {
      if (!this.closed) this.onMessage(f);
    }, { ...this.headers });
  }

  _disconnected() {
    this.sub = null;
  }

  close() {
    this.closed = true;
    try {
      this.sub?.unsubscribe();
    } catch {
      // not connected
    }
    this.sub = null;
    this.sg._subs.delete(this);
  }
}

// ------------------------------------------------------------- presence

/**
 * Presence in one room over a plain destination (see docs/CLIENT.md):
 * join on every (re)subscribe, here every everyMs, here again (jittered)
 * when someone joins, leave on close(); a roster with TTL 3·every.
 */
class Presence {
  constructor(sg, destination, { everyMs = 10000, onChange = () => {} } = {}) {
    this.sg = sg;
    this.destination = destination;
    this.everyMs = Math.min(60000, Math.max(1000, everyMs));
    this.onChange = onChange;
    this.tab = randomId(8);
    this.roster = new PresenceRoster({ ttlMs: 3 * this.everyMs });
    this.timer = null;
    this.answer = null;
    this.closed = false;
    this.sub = new PlainSubscription(sg, destination, (f) => this._onFrame(f), {});
    this.sub._subscribe = (stomp) => {
      PlainSubscription.prototype._subscribe.call(this.sub, stomp);
      this._announce('join');
    };
    this.sub._disconnected = () => {
      this.sub.sub = null;
      this._stopTimer();
    };
  }

  /** The distinct users present (x-user-id of each live tab). */
  users() {
    return this.roster.users();
  }

  _onFrame(f) {
    const user = f.headers['x-user-id'];
    const p = parsePresence(f.body);
    if (!user || !p) return;
    const now = this.sg.now();
    let changed = this.roster.apply(user, p, now);
    changed = this.roster.expire(now) || changed;
    if (changed) this.onChange(this.users());
    if (p.type === 'join' && p.tab !== this.tab && !this.answer) {
      // Let the newcomer see us without waiting for our next "here";
      // jittered so that a crowded room does not answer at once.
      this.answer = this.sg._setTimeout(() => {
        this.answer = null;
        this._announce('here');
      }, Math.floor(this.sg.random() * Math.min(1000, this.everyMs / 2)));
    }
  }

  _announce(type) {
    if (this.closed && type !== 'leave') return;
    this.sg._publishNow(this.destination, JSON.stringify({ type, tab: this.tab, every: this.everyMs }));
    if (type !== 'leave') this._startTimer();
  }

  _startTimer() {
    this._stopTimer();
    this.timer = this.sg._setTimeout(() => {
      this.timer = null;
      if (this.roster.expire(this.sg.now())) this.onChange(this.users());
      this._announce('here');
    }, this.everyMs);
  }

  _stopTimer() {
    if (this.timer) this.sg._clearTimeout(this.timer);
    this.timer = null;
  }

  /** Says leave (best effort) and unsubscribes. */
  close() {
    if (this.closed) return;
    this._announce('leave');
    this.closed = true;
    this._stopTimer();
    if (this.answer) this.sg._clearTimeout(this.answer);
    this.sub.close();
    this.roster.clear();
  }
}

// ---------------------------------------------------------------- client

function defaultURL() {
  const loc = globalThis.location;
  if (!loc) throw new Error('stompgate: url is required outside a browser');
  return (loc.protocol === 'https:' ? 'wss://' : 'ws://') + loc.host + '/ws';
}

async function loadSockJS() {
  if (globalThis.SockJS) return globalThis.SockJS;
  // The UMD bundle served beside this module (sockjs-client) sets globalThis.SockJS.
  await import(new URL('./sockjs.min.js', import.meta.url).href);
  if (!globalThis.SockJS) throw new Error('stompgate: sockjs-client did not load');
  return globalThis.SockJS;
}

async function loadStompClient() {
  if (globalThis.StompJs?.Client) return globalThis.StompJs.Client;
  // The UMD bundle served beside this module sets globalThis.StompJs.
  await import(new URL('./stomp.umd.min.js', import.meta.url).href);
  if (!globalThis.StompJs?.Client) throw new Error('stompgate: @stomp/stompjs did not load');
  return globalThis.StompJs.Client;
}

/**
 * A STOMP session to a stompgate edge that reconnects by itself. States:
 * idle → connecting → connected ⇄ reconnecting … → stopped.
 */
export class StompgateClient {
  constructor(options = {}) {
    const o = { ...DEFAULTS, ...options };
    this.opts = o;
    this.url = o.url || defaultURL();
    const u = new URL(this.url);
    this.httpURL = (o.httpURL || (u.protocol === 'wss:' ? 'https://' : 'http://') + u.host).replace(/\/$/, '');
    this.probeURL = this.httpURL + u.pathname;
    this.sockjsURL = this.httpURL + o.sockjsPath;
    this.SockJS = o.SockJS || null;
    this.transport = o.transport === 'sockjs' ? 'sockjs' : 'websocket'; // the one in use
    this._admittedFailures = 0; // attempts in a row that failed although the edge would admit them
    this._lastProbe = null; // status of the last admission probe (null: no answer)
    this.token = o.token || '';
    this.getToken = o.getToken || null;
    this.Client = o.Client || null;
    this.fetch = o.fetch || ((...a) => globalThis.fetch(...a));
    this._setTimeout = o.setTimeout || ((f, ms) => globalThis.setTimeout(f, ms));
    this._clearTimeout = o.clearTimeout || ((t) => globalThis.clearTimeout(t));
    this.now = o.now || (() => Date.now());
    this.random = o.random || Math.random;
    this.onState = o.onState || (() => {});
    this.onError = o.onError || (() => {});
    this.onStop = o.onStop || (() => {});
    this.onConnect = o.onConnect || (() => {});

    this.state = 'idle';
    this.user = null;
    this.stomp = null;
    this.stopped = false;
    this._subs = new Set();
    this._outbox = new Map(); // amqp-message-id → pending send
    this._failures = 0; // consecutive failed attempts (backoff exponent)
    this._attempt = null; // { connected, code, at } of the current attempt
    this._next = { delayMs: 0, probe: false, freshToken: false, reason: 'start' };
    this._sleep = null; // { timer, resolve } of the wait in beforeConnect
    this._refreshTimer = null;
    this._connectedAt = 0;
  }

  // ---- lifecycle

  /** Connects (and keeps reconnecting until stop()). */
  async start() {
    if (this.stomp) return;
    this.stopped = false;
    const Client = this.Client || (await loadStompClient());
    this.stomp = new Client({
      brokerURL: this.url,
      connectHeaders: {},
      // stompjs' own loop only re-enters beforeConnect, where the real
      // (jittered, Retry-After aware) wait happens.
      reconnectDelay: 1,
      heartbeatIncoming: this.opts.heartbeatMs,
      heartbeatOutgoing: this.opts.heartbeatMs,
      connectionTimeout: this.opts.connectionTimeoutMs,
      debug: this.opts.debug || (() => {}),
      beforeConnect: () => this._beforeConnect(),
      onConnect: (f) => this._onConnect(f),
      onStompError: (f) => this._onStompError(f),
      onWebSocketClose: (e) => this._onClose(e),
    });
    this.stomp.activate();
  }

  /** Stops for good (DISCONNECT); pending send()s are rejected. */
  async stop(reason = 'stopped', message = '') {
    if (this.stopped) return;
    this.stopped = true;
    this._cancelSleep();
    this._clearRefresh();
    for (const p of this._outbox.values()) p.reject(Object.assign(new Error('stompgate client stopped: ' + reason), { code: reason }));
    this._outbox.clear();
    this._setState('stopped', { reason, message });
    if (reason !== 'stopped') this.onStop({ reason, message });
    await this.stomp?.deactivate();
  }

  get connected() {
    return this.state === 'connected' && !!this.stomp?.connected;
  }

  _setState(state, info = {}) {
    this.state = state;
    this.onState(state, info);
  }

  _error(code, message, frame) {
    this.onError({ code, message, frame });
  }

  _sleepFor(ms) {
    return new Promise((resolve) => {
      if (ms <= 0) return resolve();
      const timer = this._setTimeout(() => {
        this._sleep = null;
        resolve();
      }, ms);
      this._sleep = { timer, resolve };
    });
  }

  _cancelSleep() {
    if (!this._sleep) return;
    this._clearTimeout(this._sleep.timer);
    const { resolve } = this._sleep;
    this._sleep = null;
    resolve();
  }

  // ---- connecting

  async _beforeConnect() {
    const next = this._next;
    this._next = { delayMs: 0, probe: false, freshToken: false, reason: 'retry' };
    let delayMs = next.delayMs;
    if (next.probe) {
      const retryAfter = await this.probeAdmission();
      if (retryAfter != null) delayMs = Math.max(delayMs, Math.min(retryAfter, this.opts.maxRetryAfterMs));
      this._maybeFallBack();
    }
    if (this.stopped) return;
    if (next.reason !== 'start') this._setState('reconnecting', { delayMs, attempt: this._failures, reason: next.reason });
    await this._sleepFor(delayMs);
    let fresh = next.freshToken;
    // A token that expires before the session could refresh it is renewed now.
    const exp = tokenExpiry(this.token);
    if (exp !== null && exp - this.now() < 2000) fresh = true;
    while (fresh && this.getToken && !this.stopped) {
      try {
        await this._newToken();
        break;
      } catch (err) {
        this._error('refresh_failed', 'getToken: ' + err.message);
        this._failures++;
        await this._sleepFor(backoffDelay(this._failures, this.opts, this.random));
      }
    }
    if (this.stopped) {
      this.stomp?.deactivate();
      return;
    }
    if (this.transport === 'sockjs' && !this.stomp.webSocketFactory) {
      try {
        const SockJS = this.SockJS || (await loadSockJS());
        this.stomp.webSocketFactory = () => new SockJS(this.sockjsURL);
      } catch (err) {
        this._error('sockjs_unavailable', err.message);
        this.transport = 'websocket';
        this.opts = { ...this.opts, transport: 'websocket' }; // no second try
      }
    }
    this._attempt = { connected: false, code: null };
    this.stomp.connectHeaders = this.token ? { Authorization: 'Bearer ' + this.token } : {};
    this._setState('connecting', { reason: next.reason });
  }

  async _newToken() {
    const t = await this.getToken();
    if (typeof t !== 'string' || !t) throw new Error('getToken returned no token');
    this.token = t;
    return t;
  }

  /**
   * Asks the edge whether it would admit an upgrade now (HEAD on the
   * WebSocket path goes through the same admission checks; a browser
   * cannot read a refused upgrade's status): the Retry-After of a 503 in
   * ms, or null (admitted, other status, unreachable, cross-origin).
   */
  async probeAdmission() {
    let timer;
    try {
      const ctl = typeof AbortController === 'function' ? new AbortController() : null;
      timer = this._setTimeout(() => ctl?.abort(), this.opts.probeTimeoutMs);
      const res = await this.fetch(this.probeURL, { method: 'HEAD', cache: 'no-store', credentials: 'omit', signal: ctl?.signal });
      this._lastProbe = res.status;
      if (res.status !== 503) return null;
      return parseRetryAfter(res.headers.get('Retry-After'), this.now()) ?? null;
    } catch {
      this._lastProbe = null;
      return null;
    } finally {
      this._clearTimeout(timer);
    }
  }

  /**
   * In 'auto' mode, switches to SockJS after sockjsAfterFailures attempts
   * in a row that failed before CONNECTED although the edge answered the
   * probe with something other than 503: the upgrade itself does not get
   * through (a proxy that strips Upgrade).
   */
  _maybeFallBack() {
    if (this.opts.transport !== 'auto' || this.transport === 'sockjs') return;
    if (this._lastProbe == null || this._lastProbe === 503) {
      this._admittedFailures = 0;
      return;
    }
    if (++this._admittedFailures >= this.opts.sockjsAfterFailures) {
      this.transport = 'sockjs';
      this._setState('reconnecting', { delayMs: 0, attempt: this._failures, reason: 'sockjs_fallback' });
    }
  }

  _onConnect(frame) {
    this._attempt = { ...(this._attempt || {}), connected: true };
    this._admittedFailures = 0;
    this._connectedAt = this.now();
    this.user = frame.headers['user-name'] || null;
    this._setState('connected', { user: this.user });
    for (const s of [...this._subs]) s._subscribe(this.stomp);
    for (const p of this._outbox.values()) this._transmit(p);
    this._scheduleRefresh();
    this.onConnect({ user: this.user, frame });
  }

  _onStompError(frame) {
    const code = frame.headers['x-error-code'] || 'broker';
    const message = frame.headers.message || '';
    if (this._attempt) this._attempt.code = code;
    this._error(code, message, frame);
    if (FATAL_CODES.includes(code) || (code === 'token_expired' && !this.getToken)) {
      void this.stop(code, message);
    }
  }

  _onClose(evt) {
    this._clearRefresh();
    for (const s of this._subs) s._disconnected();
    if (this.stopped) return;
    const a = this._attempt || { connected: false, code: null };
    this._attempt = null;
    if (a.connected && this.now() - this._connectedAt >= this.opts.stableMs) this._failures = 0;
    switch (a.code) {
      case 'token_expired':
        this._next = { delayMs: 0, probe: false, freshToken: true, reason: 'token_expired' };
        return;
      case 'shutting_down':
        this._next = { delayMs: Math.floor(this.random() * this.opts.shutdownJitterMs), probe: false, freshToken: false, reason: 'shutting_down' };
        return;
    }
    const delayMs = backoffDelay(this._failures, this.opts, this.random);
    this._failures++;
    // Failed before CONNECTED without an ERROR: maybe a refused upgrade.
    this._next = { delayMs, probe: !a.connected && !a.code, freshToken: false, reason: a.code || (a.connected ? 'connection_lost' : 'connect_failed'), closeCode: evt?.code };
  }

  // ---- token refresh

  _clearRefresh() {
    if (this._refreshTimer) this._clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
  }

  _scheduleRefresh(afterMs) {
    this._clearRefresh();
    if (!this.getToken || this.stopped) return;
    const exp = tokenExpiry(this.token);
    if (exp === null) return;
    const ms = afterMs ?? refreshDelay(exp, this.now(), this.opts.refreshMarginMs);
    this._refreshTimer = this._setTimeout(() => {
      this._refreshTimer = null;
      void this.refresh();
    }, ms);
  }

  /**
   * Fetches a new token now and hands it to the live session (SEND
   * /edge/refresh); resolves true once the edge acknowledged it.
   */
  async refresh() {
    if (!this.getToken) return false;
    let token;
    try {
      token = await this._newToken();
    } catch (err) {
      this._error('refresh_failed', 'getToken: ' + err.message);
      const exp = tokenExpiry(this.token);
      if (exp !== null && exp > this.now()) this._scheduleRefresh(Math.min(this.opts.refreshRetryMs, (exp - this.now()) / 2));
      return false;
    }
    if (!this.connected) return false; // the next CONNECT carries it
    const ok = await new Promise((resolve) => {
      const receipt = 'sg-refresh-' + randomId(6);
      const timer = this._setTimeout(() => resolve(false), this.opts.receiptTimeoutMs);
      this.stomp.watchForReceipt(receipt, () => {
        this._clearTimeout(timer);
        resolve(true);
      });
      try {
        this.stomp.publish({ destination: '/edge/refresh', body: token, headers: { receipt } });
      } catch {
        this._clearTimeout(timer);
        resolve(false);
      }
    });
    if (ok) this._scheduleRefresh();
    return ok;
  }

  // ---- subscriptions

  /**
   * Follows the journaled stream of destination (/topic/<key>): onMessage
   * gets each message once, in x-seq order, across reconnects. Options:
   * afterSeq (default 0: the whole stream), tail (deliver at most the last
   * N when starting far behind), onGap({after, before}) when history no
   * longer holds a range, onCaughtUp(lastSeq) once history is delivered,
   * onUnsequenced(msg) for messages without x-seq (default: dropped).
   */
  journal(destination, onMessage, opts = {}) {
    const s = new JournalSubscription(this, destination, onMessage, opts);
    this._subs.add(s);
    if (this.connected) s._subscribe(this.stomp);
    return s;
  }

  /** A plain subscription, renewed after each reconnect; onMessage gets stompjs frames. */
  subscribe(destination, onMessage, headers = {}) {
    const s = new PlainSubscription(this, destination, onMessage, headers);
    this._subs.add(s);
    if (this.connected) s._subscribe(this.stomp);
    return s;
  }

  /** Presence on destination (see docs/CLIENT.md); onChange(users). */
  presence(destination, opts = {}) {
    const p = new Presence(this, destination, opts);
    this._subs.add(p.sub);
    if (this.connected) p.sub._subscribe(this.stomp);
    return p;
  }

  // ---- sending

  /**
   * Sends body to destination and resolves on the edge's RECEIPT. Until
   * then the message is kept and sent again after a reconnect with the same
   * amqp-message-id (the journal stores it once). Rejects when the client
   * stops first or the outbox is full.
   */
  send(destination, body, headers = {}) {
    if (this.stopped) return Promise.reject(Object.assign(new Error('stompgate client stopped'), { code: 'stopped' }));
    if (this._outbox.size >= this.opts.maxOutbox) return Promise.reject(Object.assign(new Error('too many unacknowledged messages'), { code: 'outbox_full' }));
    const id = headers['amqp-message-id'] || randomId(12);
    return new Promise((resolve, reject) => {
      const p = { id, destination, body, headers: { ...headers, 'amqp-message-id': id }, resolve, reject };
      this._outbox.set(id, p);
      if (this.connected) this._transmit(p);
    });
  }

  /** The amqp-message-ids of send()s not yet acknowledged. */
  pending() {
    return [...this._outbox.values()].map((p) => ({ id: p.id, destination: p.destination, body: p.body }));
  }

  _transmit(p) {
    const receipt = 'sg-send-' + randomId(6);
    this.stomp.watchForReceipt(receipt, () => {
      if (this._outbox.get(p.id) === p) {
        this._outbox.delete(p.id);
        p.resolve({ messageId: p.id });
      }
    });
    try {
      this.stomp.publish({ destination: p.destination, body: p.body, headers: { ...p.headers, receipt } });
    } catch {
      // disconnected meanwhile: sent again after the reconnect
    }
  }

  /** Fire and forget (presence); dropped when not connected. */
  _publishNow(destination, body) {
    if (!this.connected) return false;
    try {
      this.stomp.publish({ destination, body, headers: { 'content-type': 'application/json' } });
      return true;
    } catch {
      return false;
    }
  }

  // ---- history

  /**
   * GET /api/history for a journaled destination: the messages with seq >
   * afterSeq, oldest first (raw JSON objects). A 401 gets one retry with a
   * new token when getToken is set.
   */
  async history(destination, afterSeq, limit = this.opts.historyPageSize) {
    const url = `${this.httpURL}/api/history?destination=${encodeURIComponent(destination)}&after_seq=${afterSeq}&limit=${limit}`;
    for (let retry = 0; ; retry++) {
      const res = await this.fetch(url, { headers: { Authorization: 'Bearer ' + this.token }, cache: 'no-store', credentials: 'omit' });
      if (res.status === 401 && retry === 0 && this.getToken) {
        await this._newToken();
        continue;
      }
      let doc = null;
      try {
        doc = await res.json();
      } catch {
        // not JSON: reported by status below
      }
      if (!res.ok) throw Object.assign(new Error(`HTTP ${res.status} ${doc?.error || ''} ${doc?.message || ''}`.trim()), { status: res.status, code: doc?.error });
      return Array.isArray(doc?.messages) ? doc.messages : [];
    }
  }
}
