// Unit tests of /client/stompgate.js under Node: pure logic with a fake
// stompjs Client, a manual clock and a fake fetch. No network, no
// dependencies: `node --test web/js-test/*.test.mjs`.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  FATAL_CODES,
  PresenceRoster,
  SeqBuffer,
  StompgateClient,
  backoffDelay,
  parsePresence,
  parseRetryAfter,
  refreshDelay,
  tokenExpiry,
} from '../static/client/stompgate.js';
import { FakeClock, fakeFetch, fakeStompClass, flush, jwt } from './fakes.mjs';

// ------------------------------------------------------------ pure logic

describe('backoffDelay (full jitter)', () => {
  it('stays in [0, min(max, base·2^n)) for every attempt and random value', () => {
    const opts = { baseDelayMs: 500, maxDelayMs: 30000 };
    for (let n = 0; n < 40; n++) {
      const window = Math.min(30000, 500 * 2 ** n);
      assert.equal(backoffDelay(n, opts, () => 0), 0, `attempt ${n}, random 0`);
      assert.ok(backoffDelay(n, opts, () => 0.999999) < window, `attempt ${n} below its window ${window}`);
      assert.ok(backoffDelay(n, opts, () => 0.999999) >= window - 1, `attempt ${n} reaches its window`);
      for (let i = 0; i < 50; i++) {
        const d = backoffDelay(n, opts);
        assert.ok(d >= 0 && d < window && Number.isInteger(d), `attempt ${n}: ${d}`);
      }
    }
  });

  it('doubles the window per attempt until the cap', () => {
    const hi = (n) => backoffDelay(n, { baseDelayMs: 100, maxDelayMs: 1000 }, () => 0.5);
    assert.deepEqual([0, 1, 2, 3, 4, 5].map(hi), [50, 100, 200, 400, 500, 500]);
  });

  it('spreads: 1000 draws of one attempt cover the window, not one point', () => {
    const draws = Array.from({ length: 1000 }, () => backoffDelay(4, { baseDelayMs: 500, maxDelayMs: 30000 }));
    const window = 8000;
    assert.ok(Math.min(...draws) < window * 0.1 && Math.max(...draws) > window * 0.9);
  });
});

describe('parseRetryAfter, tokenExpiry, refreshDelay', () => {
  it('reads delta-seconds and HTTP dates, and nothing else', () => {
    const now = Date.parse('2025-01-01T00:00:00Z');
    assert.equal(parseRetryAfter('7', now), 7000);
    assert.equal(parseRetryAfter(' 0 ', now), 0);
    assert.equal(parseRetryAfter('Wed, 01 Jan 2025 00:00:30 GMT', now), 30000);
    assert.equal(parseRetryAfter('Tue, 31 Dec 2024 00:00:00 GMT', now), 0, 'a past date is now');
    assert.equal(parseRetryAfter(null, now), null);
    assert.equal(parseRetryAfter('soon', now), null);
    assert.equal(parseRetryAfter('-3', now), null);
  });

  it('reads exp from a JWT payload (base64url), null otherwise', () => {
    assert.equal(tokenExpiry(jwt({ sub: 'a', exp: 1700000123 })), 1700000123000);
    assert.equal(tokenExpiry(jwt({ sub: 'ü~?>', exp: 5 })), 5000, 'base64url alphabet');
    assert.equal(tokenExpiry(jwt({ sub: 'a' })), null);
    assert.equal(tokenExpiry('not-a-jwt'), null);
    assert.equal(tokenExpiry('a.!!!.c'), null);
    assert.equal(tokenExpiry(undefined), null);
  });

  it('refreshes a margin before exp, but at two thirds of a short lifetime', () => {
    const now = 1_000_000;
    assert.equal(refreshDelay(now + 3600_000, now, 30000), 3570_000);
    assert.equal(refreshDelay(now + 15_000, now, 30000), 10_000);
    assert.equal(refreshDelay(now - 1, now, 30000), 0);
  });
});

describe('SeqBuffer (dedup and reorder)', () => {
  it('delivers in seq order once each, holding what arrives early', () => {
    const b = new SeqBuffer(0);
    assert.deepEqual(b.push(1, 'a').ready, ['a']);
    assert.deepEqual(b.push(3, 'c').ready, []);
    assert.equal(b.hasHole, true);
    assert.equal(b.firstPending, 3);
    assert.equal(b.push(3, 'c again').dup, true);
    assert.equal(b.push(1, 'a again').dup, true);
    assert.deepEqual(b.push(2, 'b').ready, ['b', 'c']);
    assert.equal(b.lastSeq, 3);
    assert.equal(b.hasHole, false);
  });

  it('a shuffled stream with duplicates comes out as 1..n exactly once', () => {
    const b = new SeqBuffer(10);
    const input = [];
    for (let s = 5; s <= 60; s++) input.push(s, s); // 5..10 are old, everything twice
    for (let i = input.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [input[i], input[j]] = [input[j], input[i]];
    }
    const out = [];
    for (const s of input) out.push(...b.push(s, s).ready);
    assert.deepEqual(out, Array.from({ length: 50 }, (_, i) => i + 11));
  });

  it('skipTo gives up on a range and releases what follows', () => {
    const b = new SeqBuffer(2);
    b.push(6, 'f');
    b.push(7, 'g');
    assert.deepEqual(b.skipTo(6), ['f', 'g']);
    assert.equal(b.lastSeq, 7);
    assert.deepEqual(b.skipTo(3), [], 'never backwards');
  });
});

describe('PresenceRoster and parsePresence', () => {
  it('keys by (user, tab): a user stays while one tab is alive; TTL removes dead tabs', () => {
    const r = new PresenceRoster({ ttlMs: 30000 });
    assert.equal(r.apply('alice', { type: 'join', tab: 't1' }, 0), true);
    assert.equal(r.apply('alice', { type: 'join', tab: 't2' }, 0), false, 'same user, second tab');
    assert.equal(r.apply('bob', { type: 'here', tab: 'b1', ttlMs: 6000 }, 0), true);
    assert.deepEqual(r.users(), ['alice', 'bob']);
    assert.equal(r.apply('alice', { type: 'leave', tab: 't1' }, 1000), false, 'alice still has t2');
    assert.equal(r.expire(5999), false);
    assert.equal(r.expire(6000), true, 'bob\'s tab died: gone after its TTL');
    assert.deepEqual(r.users(), ['alice']);
    r.apply('alice', { type: 'here', tab: 't2' }, 20000);
    assert.equal(r.expire(49999), false, 'here renews the TTL');
    assert.equal(r.expire(50000), true);
    assert.deepEqual(r.users(), []);
  });

  it('parses only join/here/leave with a tab; every is clamped to 1–60 s; a body cannot name the user', () => {
    assert.deepEqual(parsePresence('{"type":"here","tab":"x","every":2000}'), { type: 'here', tab: 'x', every: 2000, ttlMs: 6000 });
    assert.equal(parsePresence('{"type":"join","tab":"x","every":1}').every, 1000);
    assert.equal(parsePresence('{"type":"join","tab":"x","every":1e9}').ttlMs, 180000);
    assert.equal(parsePresence('{"type":"join","tab":"x"}').every, 10000);
    assert.equal(parsePresence('{"type":"join","tab":"x","user":"mallory"}').user, undefined);
    for (const bad of ['', 'nope', '{"type":"dance","tab":"x"}', '{"type":"join"}', '{"type":"join","tab":""}', 'null', '[]']) {
      assert.equal(parsePresence(bad), null, bad);
    }
  });
});

// ---------------------------------------------------------------- client

/** A client wired to fakes. Returns { sg, clock, Stomp, stomp(), fetch, events }. */
function rig(opts = {}) {
  const clock = new FakeClock();
  const Stomp = fakeStompClass(clock);
  const events = { states: [], errors: [], stops: [] };
  const fetch = opts.fetch || fakeFetch(async () => ({ status: 400 }));
  const sg = new StompgateClient({
    url: 'ws://edge.test:8080/ws',
    token: opts.token ?? jwt({ sub: 'alice', exp: Math.floor(clock.now() / 1000) + 3600 }),
    Client: Stomp,
    fetch,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
    random: opts.random || (() => 0.5),
    onState: (s, info) => events.states.push({ s, ...info }),
    onError: (e) => events.errors.push(e.code),
    onStop: (e) => events.stops.push(e.reason),
    transport: 'websocket', // the SockJS fallback has tests of its own
    ...opts.client,
  });
  return { sg, clock, Stomp, stomp: () => Stomp.last, fetch, events };
}

async function connected(r, user = 'alice') {
  await r.sg.start();
  await flush();
  r.stomp().serverConnected({ 'user-name': user });
  return r.stomp();
}

const lastReconnect = (r) => r.events.states.filter((e) => e.s === 'reconnecting').at(-1);

describe('StompgateClient: reconnects', () => {
  it('connects with the token as CONNECT Authorization, and uses a 1 ms stompjs loop gated by its own backoff', async () => {
    const r = rig();
    const st = await connected(r);
    assert.equal(st.attempts.length, 1);
    assert.equal(st.attempts[0].Authorization, 'Bearer ' + r.sg.token);
    assert.equal(st.brokerURL, 'ws://edge.test:8080/ws');
    assert.equal(st.reconnectDelay, 1);
    assert.equal(r.sg.state, 'connected');
    assert.equal(r.sg.user, 'alice');
  });

  it('backs off with full jitter after each failure, growing until a session stays up stableMs', async () => {
    const r = rig({ random: () => 0.999 });
    const st = await connected(r);
    const delays = [];
    for (let i = 0; i < 5; i++) {
      st.serverClose();
      await r.clock.advance(1);
      delays.push(lastReconnect(r).delayMs);
      await r.clock.advance(60000);
      if (i === 0) st.serverConnected(); // up, but briefly: no reset
    }
    // 0.999 of the windows 500, 1000, 2000, 4000, 8000
    assert.deepEqual(delays, [499, 999, 1998, 3996, 7992]);
    assert.equal(st.attempts.length, 6);
    st.serverConnected();
    await r.clock.advance(10000); // stable
    st.serverClose();
    await r.clock.advance(1);
    assert.equal(lastReconnect(r).delayMs, 499, 'reset after a stable session');
  });

  it('after a failed upgrade it probes HEAD /ws and waits the 503\'s Retry-After', async () => {
    const fetch = fakeFetch(async (url, init) => {
      assert.equal(url, 'http://edge.test:8080/ws');
      assert.equal(init.method, 'HEAD');
      assert.equal(init.credentials, 'omit', 'no cookie: the probe carries no credentials');
      return { status: 503, headers: { 'Retry-After': '7' } };
    });
    const r = rig({ fetch, random: () => 0.1 });
    await r.sg.start();
    await flush();
    r.stomp().serverClose(1006); // never CONNECTED: the upgrade may have been refused
    await r.clock.advance(1);
    assert.equal(fetch.calls.length, 1);
    assert.equal(lastReconnect(r).delayMs, 7000);
    await r.clock.advance(6990);
    assert.equal(r.stomp().attempts.length, 1, 'still waiting for Retry-After');
    await r.clock.advance(20);
    assert.equal(r.stomp().attempts.length, 2);
  });

  it('a probe that is admitted, unreachable or cross-origin falls back to the plain backoff; an ERROR needs no probe', async () => {
    for (const route of [async () => ({ status: 400 }), async () => { throw new TypeError('Failed to fetch'); }]) {
      const fetch = fakeFetch(route);
      const r = rig({ fetch, random: () => 0.5 });
      await r.sg.start();
      await flush();
      r.stomp().serverClose();
      await r.clock.advance(1);
      assert.equal(fetch.calls.length, 1);
      assert.equal(lastReconnect(r).delayMs, 250);
    }
    const fetch = fakeFetch(async () => ({ status: 503, headers: { 'Retry-After': '9' } }));
    const r = rig({ fetch });
    const st = await connected(r);
    st.serverClose(); // lost after CONNECTED: the edge admitted us, no probe
    await r.clock.advance(1);
    assert.equal(fetch.calls.length, 0);
  });

  it('falls back to SockJS after two admitted attempts fail before CONNECTED (a proxy strips Upgrade), and stays there', async () => {
    const made = [];
    class FakeSockJS {
      constructor(url) {
        made.push(url);
      }
    }
    const fetch = fakeFetch(async () => ({ status: 400 })); // the edge would admit an upgrade
    const r = rig({ fetch, random: () => 0, client: { SockJS: FakeSockJS, transport: 'auto' } });
    await r.sg.start();
    await flush();
    assert.equal(r.stomp().webSocketFactory, undefined, 'WebSocket first');
    r.stomp().serverClose();
    await r.clock.advance(1);
    assert.equal(r.sg.transport, 'websocket', 'one failure is not enough');
    r.stomp().serverClose();
    await r.clock.advance(1);
    assert.equal(r.sg.transport, 'sockjs');
    assert.ok(r.events.states.some((e) => e.reason === 'sockjs_fallback'));
    assert.equal(typeof r.stomp().webSocketFactory, 'function');
    r.stomp().webSocketFactory();
    assert.deepEqual(made, ['http://edge.test:8080/sockjs']);
    r.stomp().serverConnected({ 'user-name': 'alice' });
    r.stomp().serverClose();
    await r.clock.advance(1000);
    assert.equal(r.sg.transport, 'sockjs', 'no flapping back to WebSocket');
  });

  it('a 503 or an unreachable edge never triggers the SockJS fallback; transport:websocket never does', async () => {
    for (const [route, client] of [
      [async () => ({ status: 503, headers: { 'Retry-After': '1' } }), { transport: 'auto' }],
      [async () => { throw new TypeError('Failed to fetch'); }, { transport: 'auto' }],
      [async () => ({ status: 400 }), { transport: 'websocket' }],
    ]) {
      const r = rig({ fetch: fakeFetch(route), random: () => 0, client });
      await r.sg.start();
      await flush();
      for (let i = 0; i < 4; i++) {
        r.stomp().serverClose();
        await r.clock.advance(2000);
      }
      assert.equal(r.sg.transport, 'websocket');
    }
  });

  it('a Retry-After above maxRetryAfterMs is capped', async () => {
    const fetch = fakeFetch(async () => ({ status: 503, headers: { 'Retry-After': '86400' } }));
    const r = rig({ fetch, client: { maxRetryAfterMs: 60000 } });
    await r.sg.start();
    await flush();
    r.stomp().serverClose();
    await r.clock.advance(1);
    assert.equal(lastReconnect(r).delayMs, 60000);
  });
});

describe('StompgateClient: x-error-code reactions', () => {
  for (const code of FATAL_CODES) {
    it(`${code}: stops, tells the app, never reconnects`, async () => {
      const r = rig();
      const st = await connected(r);
      st.serverError(code, 'no');
      st.serverClose(1000);
      await r.clock.advance(120000);
      assert.deepEqual(r.events.stops, [code]);
      assert.deepEqual(r.events.errors, [code]);
      assert.equal(r.sg.state, 'stopped');
      assert.equal(st.attempts.length, 1, 'no new attempt');
      assert.ok(st.deactivated >= 1);
    });
  }

  it('token_expired: gets a new token and reconnects at once with it', async () => {
    let n = 0;
    const fresh = () => jwt({ sub: 'alice', exp: Math.floor(Date.now() / 1000) + 7200, n: ++n });
    const r = rig({ client: { getToken: async () => fresh() } });
    const st = await connected(r);
    st.serverError('token_expired');
    st.serverClose();
    await r.clock.advance(2);
    assert.equal(lastReconnect(r).delayMs, 0);
    assert.equal(st.attempts.length, 2);
    assert.notEqual(st.attempts[1].Authorization, st.attempts[0].Authorization);
    assert.equal(st.attempts[1].Authorization, 'Bearer ' + r.sg.token);
    assert.deepEqual(r.events.stops, []);
  });

  it('token_expired without getToken: stops (nothing else can help)', async () => {
    const r = rig();
    const st = await connected(r);
    st.serverError('token_expired');
    st.serverClose();
    await r.clock.advance(60000);
    assert.deepEqual(r.events.stops, ['token_expired']);
  });

  it('shutting_down: reconnects within shutdownJitterMs and does not grow the backoff', async () => {
    const seen = [];
    for (const rnd of [0, 0.5, 0.999]) {
      const r = rig({ random: () => rnd });
      const st = await connected(r);
      st.serverError('shutting_down');
      st.serverClose(1001);
      await r.clock.advance(1);
      seen.push(lastReconnect(r).delayMs);
      assert.equal(lastReconnect(r).reason, 'shutting_down');
      assert.equal(r.sg._failures, 0);
      await r.clock.advance(1000);
      assert.equal(st.attempts.length, 2);
    }
    assert.deepEqual(seen, [0, 500, 999]);
  });

  it('other codes (e.g. forbidden, broker_unavailable) reconnect with backoff and are reported', async () => {
    const r = rig({ random: () => 0.999 });
    const st = await connected(r);
    st.serverError('broker_unavailable');
    st.serverClose();
    await r.clock.advance(1);
    assert.equal(lastReconnect(r).delayMs, 499);
    assert.equal(lastReconnect(r).reason, 'broker_unavailable');
    assert.deepEqual(r.events.errors, ['broker_unavailable']);
    await r.clock.advance(1000);
    st.serverConnected();
    st.serverError('forbidden');
    st.serverClose();
    await r.clock.advance(1);
    assert.equal(lastReconnect(r).delayMs, 999, 'a forbidden loop backs off, it does not hammer');
  });
});

describe('StompgateClient: token refresh', () => {
  it('before exp, fetches a token and SENDs it to /edge/refresh; the next one is scheduled from the new exp', async () => {
    const clock0 = 1_700_000_000_000;
    const exp0 = clock0 / 1000 + 60;
    const tokens = [jwt({ sub: 'alice', exp: exp0 + 120 }), jwt({ sub: 'alice', exp: exp0 + 3600 })];
    let calls = 0;
    const r = rig({ token: jwt({ sub: 'alice', exp: exp0 }), client: { getToken: async () => tokens[calls++] } });
    const st = await connected(r);
    await r.clock.advance(39_000);
    assert.equal(calls, 0, 'not yet: a 60 s token refreshes at two thirds (margin ≤ lifetime/3)');
    await r.clock.advance(1_000);
    assert.equal(calls, 1);
    const p = st.published.at(-1);
    assert.equal(p.destination, '/edge/refresh');
    assert.equal(p.body, tokens[0]);
    st.receipt(p.headers.receipt);
    await flush();
    // The new token (180 s from the start, 140 s left) refreshes 30 s before its exp.
    await r.clock.advance(109_000);
    assert.equal(calls, 1);
    await r.clock.advance(1_000);
    assert.equal(calls, 2);
    assert.equal(st.published.at(-1).body, tokens[1]);
    // A reconnect now uses the newest token.
    st.serverClose();
    await r.clock.advance(1000);
    assert.equal(st.attempts.at(-1).Authorization, 'Bearer ' + tokens[1]);
  });

  it('a failing getToken is retried until exp and reported', async () => {
    const exp0 = 1_700_000_000 + 30;
    let calls = 0;
    const r = rig({ token: jwt({ sub: 'alice', exp: exp0 }), client: { getToken: async () => { calls++; throw new Error('IdP down'); } } });
    await connected(r);
    await r.clock.advance(29_000);
    assert.ok(calls >= 3, `retried: ${calls}`);
    assert.ok(r.events.errors.every((c) => c === 'refresh_failed') && r.events.errors.length === calls);
  });
});

describe('StompgateClient: journaled subscriptions', () => {
  const msg = (st, sub, seq, extra = {}) => st.message(sub, { 'x-seq': String(seq), 'x-user-id': 'bob', 'message-id': 'm' + seq, ...extra }, 'body ' + seq);

  it('subscribes with x-resume-after and a receipt, delivers in order once, resubscribes after a reconnect from the last seq', async () => {
    const r = rig();
    const got = [];
    r.sg.journal('/topic/room.a', (m) => got.push(m.seq));
    const st = await connected(r);
    let sub = st.subscriptions.at(-1);
    assert.equal(sub.dest, '/topic/room.a');
    assert.equal(sub.headers['x-resume-after'], '0');
    st.receipt(sub.headers.receipt, { 'x-seq': '3' });
    msg(st, sub, 1, { 'message-id': 'stompgate-replay-1' });
    msg(st, sub, 3);
    msg(st, sub, 2);
    msg(st, sub, 2);
    msg(st, sub, 1);
    assert.deepEqual(got, [1, 2, 3]);

    st.serverClose();
    await r.clock.advance(1000);
    st.serverConnected();
    sub = st.subscriptions.at(-1);
    assert.equal(st.subscriptions.length, 2);
    assert.equal(sub.headers['x-resume-after'], '3', 'resumes after the last delivered seq');
    st.receipt(sub.headers.receipt, { 'x-seq': '5' });
    msg(st, sub, 3); // a duplicate across the reconnect
    msg(st, sub, 4);
    msg(st, sub, 5);
    assert.deepEqual(got, [1, 2, 3, 4, 5]);
    await r.clock.advance(5000);
    assert.equal(r.fetch.calls.length, 0, 'no history needed');
  });

  it('x-resume:gap fills from /api/history (Bearer, after_seq, limit) in pages, then continues live in order', async () => {
    const bodies = new Map(Array.from({ length: 12 }, (_, i) => [i + 1, { seq: i + 1, message_id: 'id' + (i + 1), sender: 'carol', content_type: 'text/plain', headers: { 'x-user-id': 'carol' }, body: 'h' + (i + 1) }]));
    const fetch = fakeFetch(async (url, init) => {
      const u = new URL(url);
      assert.equal(u.pathname, '/api/history');
      assert.equal(u.searchParams.get('destination'), '/topic/room.b');
      assert.match(init.headers.Authorization, /^Bearer ey/);
      const after = Number(u.searchParams.get('after_seq'));
      const limit = Number(u.searchParams.get('limit'));
      return { json: { messages: [...bodies.values()].filter((m) => m.seq > after).slice(0, limit) } };
    });
    const r = rig({ fetch, client: { historyPageSize: 5 } });
    const got = [];
    let caught = null;
    r.sg.journal('/topic/room.b', (m) => got.push([m.seq, m.source, m.sender]), { afterSeq: 2, onCaughtUp: (s) => (caught = s) });
    const st = await connected(r);
    const sub = st.subscriptions.at(-1);
    assert.equal(sub.headers['x-resume-after'], '2');
    st.receipt(sub.headers.receipt, { 'x-seq': '12' });
    msg(st, sub, 13, { 'x-resume': 'gap' });
    msg(st, sub, 14);
    await r.clock.advance(10);
    const afters = fetch.calls.map((c) => new URL(c.url).searchParams.get('after_seq'));
    assert.deepEqual(afters, ['2', '7', '12'].slice(0, afters.length));
    assert.ok(afters.length >= 2 && afters.length <= 3, `pages: ${afters}`);
    assert.deepEqual(got.map((g) => g[0]), [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
    assert.deepEqual(got[0], [3, 'history', 'carol']);
    assert.deepEqual(got.at(-1), [14, 'live', 'bob']);
    assert.equal(caught, 14);
  });

  it('a RECEIPT x-seq ahead of what arrives, or a skipped seq, is filled from history after holeWaitMs', async () => {
    const have = [1, 2];
    const fetch = fakeFetch(async (url) => {
      const after = Number(new URL(url).searchParams.get('after_seq'));
      return { json: { messages: have.filter((s) => s > after).map((s) => ({ seq: s, sender: 'x', body: 'h' + s, headers: {} })) } };
    });
    const r = rig({ fetch });
    const got = [];
    r.sg.journal('/topic/room.c', (m) => got.push(m.seq));
    const st = await connected(r);
    const sub = st.subscriptions.at(-1);
    st.receipt(sub.headers.receipt, { 'x-seq': '2' });
    await r.clock.advance(299);
    assert.equal(fetch.calls.length, 0, 'the replay gets holeWaitMs to arrive');
    await r.clock.advance(2);
    assert.equal(fetch.calls.length, 1);
    assert.deepEqual(got, [1, 2]);
    have.push(3, 4);
    msg(st, sub, 4); // 3 never comes live
    assert.deepEqual(got, [1, 2]);
    await r.clock.advance(400);
    assert.deepEqual(got, [1, 2, 3, 4]);
  });

  it('a range history no longer holds is reported once (onGap) and skipped', async () => {
    const fetch = fakeFetch(async () => ({ json: { messages: [{ seq: 9, body: 'h9', headers: {} }] } }));
    const r = rig({ fetch });
    const got = [];
    const gaps = [];
    r.sg.journal('/topic/room.d', (m) => got.push(m.seq), { onGap: (g) => gaps.push(g) });
    const st = await connected(r);
    const sub = st.subscriptions.at(-1);
    st.receipt(sub.headers.receipt, { 'x-seq': '9' });
    msg(st, sub, 10, { 'x-resume': 'gap' });
    await r.clock.advance(10);
    assert.deepEqual(gaps, [{ after: 0, before: 9 }]);
    assert.deepEqual(got, [9, 10]);
  });

  it('tail: starting far behind, only the last N come from history', async () => {
    const fetch = fakeFetch(async (url) => {
      const after = Number(new URL(url).searchParams.get('after_seq'));
      const out = [];
      for (let s = after + 1; s <= 5000 && out.length < 500; s++) out.push({ seq: s, body: '', headers: {} });
      return { json: { messages: out } };
    });
    const r = rig({ fetch });
    const got = [];
    r.sg.journal('/topic/room.e', (m) => got.push(m.seq), { tail: 50 });
    const st = await connected(r);
    const sub = st.subscriptions.at(-1);
    st.receipt(sub.headers.receipt, { 'x-seq': '5000' });
    msg(st, sub, 5001, { 'x-resume': 'gap' });
    await r.clock.advance(10);
    assert.equal(fetch.calls.length, 1);
    assert.equal(new URL(fetch.calls[0].url).searchParams.get('after_seq'), '4951');
    assert.deepEqual(got, Array.from({ length: 50 }, (_, i) => 4952 + i), 'the last 50, the live one included');
  });

  it('a failing history request is reported and retried with backoff', async () => {
    let n = 0;
    const fetch = fakeFetch(async () => (++n < 3 ? { status: 503, json: { error: 'history_off' } } : { json: { messages: [{ seq: 1, body: 'x', headers: {} }] } }));
    const r = rig({ fetch, random: () => 0 });
    const got = [];
    r.sg.journal('/topic/room.f', (m) => got.push(m.seq));
    const st = await connected(r);
    const sub = st.subscriptions.at(-1);
    msg(st, sub, 2, { 'x-resume': 'gap' });
    await r.clock.advance(5000);
    assert.equal(n, 3);
    assert.deepEqual(r.events.errors, ['history_failed', 'history_failed']);
    assert.deepEqual(got, [1, 2]);
  });

  it('a 401 from history gets one retry with a fresh token', async () => {
    const fresh = jwt({ sub: 'alice', exp: 1_700_009_999 });
    const fetch = fakeFetch(async (url, init) => (init.headers.Authorization === 'Bearer ' + fresh ? { json: { messages: [{ seq: 1, body: 'x', headers: {} }] } } : { status: 401, json: { error: 'unauthenticated' } }));
    const r = rig({ fetch, client: { getToken: async () => fresh } });
    const got = [];
    r.sg.journal('/topic/room.g', (m) => got.push(m.seq));
    const st = await connected(r);
    msg(st, st.subscriptions.at(-1), 2, { 'x-resume': 'gap' });
    await r.clock.advance(10);
    assert.deepEqual(got, [1, 2]);
    assert.equal(fetch.calls.length, 2);
  });

  it('close() unsubscribes and stops delivery; it is not renewed after a reconnect', async () => {
    const r = rig();
    const got = [];
    const j = r.sg.journal('/topic/room.h', (m) => got.push(m.seq));
    const st = await connected(r);
    const sub = st.subscriptions.at(-1);
    j.close();
    assert.equal(sub.unsubscribed, true);
    msg(st, sub, 1);
    assert.deepEqual(got, []);
    st.serverClose();
    await r.clock.advance(1000);
    st.serverConnected();
    assert.equal(st.subscriptions.length, 1);
  });
});

describe('StompgateClient: send() across reconnects', () => {
  it('resolves on RECEIPT; unacknowledged sends are sent again with the same amqp-message-id after a reconnect', async () => {
    const r = rig();
    const st = await connected(r);
    const p1 = r.sg.send('/app/room.a', 'one');
    const p2 = r.sg.send('/app/room.a', 'two');
    assert.equal(st.published.length, 2);
    const [a, b] = st.published;
    assert.equal(a.destination, '/app/room.a');
    assert.ok(a.headers['amqp-message-id'] && a.headers.receipt);
    st.receipt(a.headers.receipt);
    assert.deepEqual(await p1, { messageId: a.headers['amqp-message-id'] });
    st.serverClose(); // "two" is in flight: no receipt
    const p3 = r.sg.send('/app/room.a', 'three'); // written while offline
    assert.equal(st.published.length, 2);
    await r.clock.advance(1000);
    st.serverConnected();
    const again = st.published.slice(2);
    assert.deepEqual(again.map((p) => p.body), ['two', 'three']);
    assert.equal(again[0].headers['amqp-message-id'], b.headers['amqp-message-id'], 'same idempotency key');
    assert.notEqual(again[0].headers.receipt, b.headers.receipt);
    for (const p of again) st.receipt(p.headers.receipt);
    await p2;
    await p3;
    assert.deepEqual(r.sg.pending(), []);
  });

  it('stop() rejects what is still pending; a full outbox refuses', async () => {
    const r = rig({ client: { maxOutbox: 2 } });
    await r.sg.start();
    const p1 = r.sg.send('/app/x', '1');
    r.sg.send('/app/x', '2').catch(() => {});
    await assert.rejects(r.sg.send('/app/x', '3'), { code: 'outbox_full' });
    await r.sg.stop();
    await assert.rejects(p1, { code: 'stopped' });
    await assert.rejects(r.sg.send('/app/x', '4'), { code: 'stopped' });
  });
});

describe('StompgateClient: presence', () => {
  const here = (st, sub, user, type, tab, every = 2000) => st.message(sub, { 'x-user-id': user }, JSON.stringify({ type, tab, every, user: 'spoofed' }));

  it('joins on (re)subscribe, says here every N, answers a join, leaves on close; roster from x-user-id with TTL 3N', async () => {
    const r = rig({ random: () => 0.5 });
    const changes = [];
    const p = r.sg.presence('/exchange/amq.direct/presence.lobby', { everyMs: 2000, onChange: (u) => changes.push(u.join(',')) });
    const st = await connected(r);
    const sub = st.subscriptions.at(-1);
    assert.equal(sub.dest, '/exchange/amq.direct/presence.lobby');
    const sent = () => st.published.map((x) => JSON.parse(x.body).type);
    assert.deepEqual(sent(), ['join']);
    const mine = JSON.parse(st.published[0].body);
    assert.equal(mine.every, 2000);
    assert.equal(mine.user, undefined, 'identity is never in the body');

    here(st, sub, 'alice', 'join', mine.tab); // our own echo
    here(st, sub, 'bob', 'join', 'bobtab');
    assert.deepEqual(p.users(), ['alice', 'bob']);
    assert.deepEqual(changes, ['alice', 'alice,bob']);
    await r.clock.advance(600); // the answer to bob's join (jittered below 1 s)
    assert.deepEqual(sent(), ['join', 'here']);
    await r.clock.advance(2000);
    assert.deepEqual(sent(), ['join', 'here', 'here'], 'periodic here');

    // bob's tab dies: gone within 3N (+ one tick).
    for (let i = 0; i < 3; i++) {
      await r.clock.advance(2000);
      here(st, sub, 'alice', 'here', mine.tab); // the broker echoes our own here
    }
    assert.deepEqual(p.users(), ['alice'], 'our own here keeps us; bob expired');
    assert.equal(changes.at(-1), p.users().join(','));

    st.serverClose();
    await r.clock.advance(1000);
    st.serverConnected();
    assert.equal(JSON.parse(st.published.at(-1).body).type, 'join', 'join again after a reconnect');
    p.close();
    assert.equal(JSON.parse(st.published.at(-1).body).type, 'leave');
    assert.equal(st.subscriptions.at(-1).unsubscribed, true);
    const n = st.published.length;
    await r.clock.advance(10000);
    assert.equal(st.published.length, n, 'nothing after leave');
  });

  it('a leave removes the tab at once; a body without a valid type or a frame without x-user-id is ignored', async () => {
    const r = rig();
    const p = r.sg.presence('/exchange/amq.direct/presence.x', { everyMs: 5000 });
    const st = await connected(r);
    const sub = st.subscriptions.at(-1);
    here(st, sub, 'bob', 'here', 'b1');
    st.message(sub, {}, JSON.stringify({ type: 'here', tab: 'z' }));
    st.message(sub, { 'x-user-id': 'eve' }, 'not json');
    assert.deepEqual(p.users(), ['bob']);
    here(st, sub, 'bob', 'leave', 'b1');
    assert.deepEqual(p.users(), []);
  });
});
