// What an attacker or a broken client sees: refused origins, missing and bad
// tokens, oversized frames; and that none of it reaches RabbitMQ.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  brokerProxy,
  connectStomp,
  deferred,
  frameBytes,
  mintToken,
  openWS,
  rawSession,
  setup,
  vhostConnections,
  waitFor,
  withTimeout,
} from './helpers.mjs';

const T = { timeout: 20000 };

describe('the edge refuses', () => {
  let fx;
  let proxy;
  let watch; // every message published to amq.topic in the test vhost
  const seen = [];

  before(async () => {
    proxy = await brokerProxy();
    fx = await setup('negative', { env: { EDGE_BROKER_ADDRS: proxy.addr }, origins: ['http://localhost:*', 'https://*.example.com'] });
    const conn = await fx.amqp();
    watch = await conn.createChannel();
    const { queue } = await watch.assertQueue('', { exclusive: true });
    await watch.bindQueue(queue, 'amq.topic', '#');
    await watch.consume(queue, (m) => seen.push(m), { noAck: true });
  });
  after(async () => {
    await fx?.close();
    await proxy?.close();
  });

  it('an upgrade from a foreign Origin with HTTP 403, before any WebSocket', T, async () => {
    const before = await fx.edge.metric('stompgate_sessions_total');
    const ws = openWS(fx.edge, { origin: 'https://evil.example', headers: { Authorization: 'Bearer ' + fx.edge.token({ sub: 'mallory' }) } });
    const res = deferred();
    ws.on('unexpected-response', (_req, r) => {
      let body = '';
      r.setEncoding('utf8').on('data', (c) => (body += c)).on('end', () => res.resolve({ status: r.statusCode, headers: r.headers, body }));
    });
    ws.on('open', () => res.reject(new Error('the WebSocket opened for a foreign Origin')));
    ws.on('error', () => {});
    const r = await withTimeout(res.promise, 5000, 'the HTTP response');
    ws.terminate();
    assert.equal(r.status, 403);
    assert.equal(r.headers.upgrade, undefined, 'no Upgrade header in the refusal');
    assert.match(r.body, /origin/i);
    assert.equal(await fx.edge.metric('stompgate_sessions_total'), before, 'no session was started');
    assert.ok((await fx.edge.metric('stompgate_upgrades_refused_total', 'reason="origin"')) >= 1);
  });

  for (const origin of [
    'null',
    'http://localhost.evil.example',
    'http://localhost:5173.evil.example',
    'https://localhost:5173',
    'https://example.com',
    'https://evil.example.com.evil.example',
    'https://a.b.example.com',
  ]) {
    it(`an upgrade from Origin ${origin} with HTTP 403 (allowed: exact, http://localhost:*, https://*.example.com)`, T, async () => {
      const err = await rawSession(fx.edge, [], { origin }).then(() => null, (e) => e);
      assert.equal(err?.statusCode, 403, `Origin ${origin} was not refused with 403`);
    });
  }

  it('an upgrade from an allowed pattern origin is accepted (control)', T, async () => {
    for (const origin of ['http://localhost:3000', 'https://app.example.com']) {
      const r = await rawSession(fx.edge, Buffer.concat([
        frameBytes('CONNECT', { 'accept-version': '1.2', host: '/', Authorization: `Bearer ${fx.edge.token({ sub: 'ok' })}` }),
        frameBytes('DISCONNECT', { receipt: 'bye' }),
      ]), { origin });
      assert.deepEqual(r.order, ['frame:CONNECTED', 'frame:RECEIPT', 'close'], `Origin ${origin}`);
    }
  });

  const badTokens = {
    'no token': () => undefined,
    'an expired token': () => fx.edge.token({ sub: 'mallory', exp: Math.floor(Date.now() / 1000) - 60 }),
    'a token signed with another secret': () => mintToken('not-the-edge-secret-0123456789abcdef', { sub: 'mallory' }),
    'an alg:none token': () => {
      const b = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
      return `${b({ alg: 'none', typ: 'JWT' })}.${b({ sub: 'mallory', exp: Math.floor(Date.now() / 1000) + 3600 })}.`;
    },
  };

  for (const [name, mint] of Object.entries(badTokens)) {
    it(`a CONNECT with ${name}: ERROR unauthenticated, then close, and a pipelined SEND goes nowhere`, T, async () => {
      const token = mint();
      const headers = { 'accept-version': '1.2', host: '/', login: 'guest', passcode: token ?? 'guest' };
      if (token) headers.Authorization = `Bearer ${token}`;
      // CONNECT and SEND in the same WebSocket message, as an eager client would.
      const r = await rawSession(fx.edge, Buffer.concat([
        frameBytes('CONNECT', headers),
        frameBytes('SEND', { destination: '/topic/leak', receipt: 'r-leak' }, `leak via ${name}`),
      ]));
        assert.equal(r.timedOut, false, 'the edge closed the socket');
      assert.deepEqual(r.order, ['frame:ERROR', 'close'], 'one ERROR frame, then the close; no CONNECTED, no RECEIPT');
      const err = r.frames[0];
      assert.equal(err.headers['x-error-code'], 'unauthenticated');
      assert.ok(err.headers.message, 'ERROR has a human message');
      assert.ok(!/eyJ/.test(err.headers.message + err.body.toString()), 'the ERROR does not echo the token');
      assert.notEqual(r.close.code, 1000, 'not a normal close');
    });
  }

  it('the same through stompjs: onStompError with unauthenticated, and no onConnect', T, async () => {
    const err = await connectStomp(fx.edge, { token: mintToken('not-the-edge-secret-0123456789abcdef', { sub: 'mallory' }) }).then(
      () => assert.fail('connected with a bad token'),
      (e) => e,
    );
    assert.match(err.message, /^ERROR unauthenticated/);
  });

  it('a 70 KiB SEND with ERROR frame_too_large, then close', T, async () => {
    const errors = [];
    const closed = deferred();
    const h = await connectStomp(fx.edge, {
      token: fx.edge.token({ sub: 'bigsender' }),
      clientOptions: { onStompError: (f) => errors.push(f), onWebSocketClose: (e) => closed.resolve(e) },
    });
    h.client.publish({ destination: '/topic/big', body: 'x'.repeat(70 * 1024) });
    const evt = await withTimeout(closed.promise, 5000, 'the close after frame_too_large');
    assert.equal(errors.length, 1, 'one ERROR frame');
    assert.equal(errors[0].headers['x-error-code'], 'frame_too_large');
    assert.equal(evt.code, 1008, 'closed with policy violation');
    await h.close();
  });

  it('nothing of the above reached RabbitMQ, and refused sessions opened no broker connection', T, async () => {
    // No refused session made the edge dial the broker. A TCP proxy in front
    // of RabbitMQ sees every dial the edge makes; the edge also dials for its
    // periodic broker probe (every 5 s), so the refusals are replayed in a
    // burst right after a probe, when no probe can overlap: zero dials.
    const n = proxy.opened.length;
    await waitFor(() => proxy.opened.length > n, { timeout: 8000, interval: 20, what: 'the edge\'s broker probe' });
    const burstStart = Date.now();
    const dialsBefore = proxy.opened.length;
    const burst = [];
    for (const mint of Object.values(badTokens)) {
      const token = mint();
      for (const auth of [{ passcode: token ?? '' }, token ? { Authorization: `Bearer ${token}` } : { login: 'guest', passcode: 'guest' }]) {
        burst.push(rawSession(fx.edge, Buffer.concat([
          frameBytes('CONNECT', { 'accept-version': '1.2', host: '/', ...auth }),
          frameBytes('SEND', { destination: '/topic/leak' }, 'leak in burst'),
        ])));
      }
    }
    const results = await Promise.all(burst);
    for (const r of results) assert.equal(r.frames[0]?.headers['x-error-code'], 'unauthenticated');
    const burstMs = Date.now() - burstStart;
    assert.ok(burstMs < 2000, `burst took ${burstMs}ms`);
    assert.equal(proxy.opened.length - dialsBefore, 0, `refused sessions dialled the broker (${burstMs}ms burst)`);
    assert.equal(await fx.edge.metric('stompgate_broker_connections'), 0, 'edge holds no broker connection');

    // A sentinel sent by a legitimate client after everything above: once it
    // has arrived, anything leaked earlier would have arrived too.
    const ok = await connectStomp(fx.edge, { token: fx.edge.token({ sub: 'sentinel' }) });
    const receipt = deferred();
    ok.client.watchForReceipt('sentinel-1', receipt.resolve);
    ok.client.publish({ destination: '/topic/sentinel', body: 'sentinel', headers: { receipt: 'sentinel-1' } });
    await withTimeout(receipt.promise, 5000, 'RECEIPT for the sentinel');
    await waitFor(() => seen.some((m) => m.content.toString() === 'sentinel'), { timeout: 5000, what: 'the sentinel at the broker' });
    await ok.close();
    assert.deepEqual(seen.map((m) => `${m.fields.routingKey}: ${m.content.toString()}`), ['sentinel: sentinel']);

    // And RabbitMQ agrees: no connection is left in the test vhost (the
    // management API lags by up to 5 s).
    await waitFor(async () => {
      const conns = await vhostConnections(fx.vhost);
      assert.deepEqual(conns.filter((c) => c.protocol?.startsWith('STOMP')).map((c) => c.name), []);
      return true;
    }, { timeout: 10000, interval: 250, what: 'no STOMP connections in the vhost' });
  });
});
