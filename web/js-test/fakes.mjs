// Fakes for the unit tests of /client/stompgate.js: a manual clock (timers
// run only when the test advances it) and a stand-in for the @stomp/stompjs
// Client that records what the helper does and lets the test play the
// edge (CONNECTED, ERROR, MESSAGE, RECEIPT, socket close). No network.

/** Lets pending promise callbacks run (several turns of the queue). */
export async function flush() {
  for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
}

export class FakeClock {
  constructor(start = 1_700_000_000_000) {
    this.t = start;
    this.timers = new Map();
    this.seq = 0;
    this.now = () => this.t;
    this.setTimeout = (fn, ms) => {
      const id = ++this.seq;
      this.timers.set(id, { fn, at: this.t + Math.max(0, ms ?? 0) });
      return id;
    };
    this.clearTimeout = (id) => this.timers.delete(id);
  }

  /** Runs every timer due within ms, in time order, flushing promises between. */
  async advance(ms) {
    const end = this.t + ms;
    await flush();
    for (;;) {
      let next = null;
      for (const [id, tm] of this.timers) if (tm.at <= end && (!next || tm.at < next[1].at)) next = [id, tm];
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = Math.max(this.t, next[1].at);
      next[1].fn();
      await flush();
    }
    this.t = end;
    await flush();
  }

  /** The delays of the pending timers, from now. */
  pending() {
    return [...this.timers.values()].map((t) => t.at - this.t).sort((a, b) => a - b);
  }
}

/** Makes a Client class bound to clock; FakeStomp.last is the newest instance. */
export function fakeStompClass(clock) {
  class FakeStomp {
    constructor(conf) {
      Object.assign(this, conf);
      this.active = false;
      this.connected = false;
      this.attempts = []; // connectHeaders of each connect attempt
      this.published = [];
      this.subscriptions = [];
      this.receipts = new Map();
      this.deactivated = 0;
      FakeStomp.last = this;
    }

    activate() {
      this.active = true;
      void this._connect();
    }

    async _connect() {
      await this.beforeConnect(this);
      if (!this.active) return;
      this.attempts.push({ ...this.connectHeaders });
    }

    // ---- the edge's side

    serverConnected(headers = { 'user-name': 'alice' }) {
      this.connected = true;
      this.onConnect({ command: 'CONNECTED', headers });
    }

    serverError(code, message = 'm') {
      this.onStompError({ command: 'ERROR', headers: { 'x-error-code': code, message } });
    }

    /** The socket closes; stompjs then re-enters _connect after reconnectDelay. */
    serverClose(code = 1006) {
      this.connected = false;
      this.onWebSocketClose({ code });
      if (this.active) clock.setTimeout(() => void this._connect(), this.reconnectDelay);
    }

    message(sub, headers, body = '') {
      sub.cb({ command: 'MESSAGE', headers: { subscription: 'sub-0', destination: sub.dest, ...headers }, body });
    }

    receipt(id, headers = {}) {
      const cb = this.receipts.get(id);
      if (!cb) throw new Error('no receipt watched: ' + id);
      this.receipts.delete(id);
      cb({ command: 'RECEIPT', headers: { 'receipt-id': id, ...headers } });
    }

    // ---- the stompjs API the helper uses

    deactivate() {
      this.active = false;
      this.connected = false;
      this.deactivated++;
      return Promise.resolve();
    }

    subscribe(dest, cb, headers = {}) {
      const s = { dest, cb, headers, unsubscribed: false, unsubscribe() { this.unsubscribed = true; } };
      this.subscriptions.push(s);
      return s;
    }

    publish(p) {
      if (!this.connected) throw new TypeError('There is no underlying STOMP connection');
      this.published.push(p);
    }

    watchForReceipt(id, cb) {
      this.receipts.set(id, cb);
    }
  }
  return FakeStomp;
}

/** An unsigned JWT with the given claims (the helper only reads exp). */
export function jwt(claims) {
  const b = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return b({ alg: 'HS256', typ: 'JWT' }) + '.' + b(claims) + '.sig';
}

/** A fetch stand-in: routes(url, init) returns { status, headers, json } or throws. */
export function fakeFetch(routes) {
  const calls = [];
  const fn = async (url, init = {}) => {
    calls.push({ url: String(url), init });
    const r = await routes(String(url), init);
    const headers = new Map(Object.entries(r.headers || {}).map(([k, v]) => [k.toLowerCase(), v]));
    return {
      status: r.status ?? 200,
      ok: (r.status ?? 200) < 300,
      headers: { get: (k) => headers.get(k.toLowerCase()) ?? null },
      json: async () => r.json,
    };
  };
  fn.calls = calls;
  return fn;
}
