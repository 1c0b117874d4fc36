// AMQP interoperability, the enterprise path (SPEC §3 Identity, §6 Archive):
// a real bin/persister and a real bin/edge on one private vhost and one
// private Postgres database. An enterprise system publishes to amq.topic
// with amqplib and a browser client (@stomp/stompjs) receives it; what
// browsers SEND through the edge reaches the archive with the identity the
// edge stamped, and a client-chosen amqp-message-id is archived once.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';

import amqp from 'amqplib';

import {
  uniq,
  subscribeReady,
  publishConfirmed,
  amqpURL,
  connectStomp,
  createVhost,
  deferred,
  deleteVhost,
  startEdge,
  startPersister,
  waitFor,
  withTimeout,
} from './helpers.mjs';

const T = { timeout: 20000 };
const ROOM = '/topic/room.7';
const ULID = /^[0-9A-HJKMNP-TV-Z]{26}$/;


/** The single archived row of (sender?, message_id), as an object, or null. */
async function archivedRow(persister, messageId, sender) {
  const esc = (s) => s.replace(/'/g, "''");
  const out = await persister.psql(
    `select json_build_object('sender', sender, 'message_id', message_id, 'exchange', exchange,
       'routing_key', routing_key, 'content_type', content_type, 'headers', headers,
       'body', convert_from(body, 'UTF8'), 'stream', stream, 'seq', seq,
       'published_at', extract(epoch from published_at))
     from stompgate_messages where message_id = '${esc(messageId)}'` + (sender ? ` and sender = '${esc(sender)}'` : ''),
  );
  const rows = out.split('\n').filter(Boolean).map((l) => JSON.parse(l));
  assert.ok(rows.length <= 1, `at most one row for ${messageId}: ${rows.length}`);
  return rows[0] ?? null;
}

const waitRow = (persister, messageId, sender) =>
  waitFor(() => archivedRow(persister, messageId, sender), { timeout: 5000, interval: 50, what: `row ${messageId} in stompgate_messages` });

describe('AMQP interoperability: amqplib, edge, persister', () => {
  const closers = [];
  let vhost, persister, edge, conn, ch, rx, sub;

  before(async () => {
    vhost = await createVhost('persist');
    closers.push(() => deleteVhost(vhost));
    persister = await startPersister({ vhost });
    closers.push(() => persister.close());
    edge = await startEdge({ vhost });
    closers.push(() => edge.stop());
    conn = await amqp.connect(amqpURL(vhost));
    conn.on('error', () => {});
    closers.push(() => conn.close().catch(() => {}));
    ch = await conn.createConfirmChannel();
    rx = await connectStomp(edge, { token: edge.token({ sub: 'room-watcher' }) });
    closers.push(() => rx.close());
    sub = await subscribeReady(rx, ROOM);
  });

  after(async () => {
    const errors = [];
    for (const fn of closers.reverse()) {
      try {
        await withTimeout(Promise.resolve().then(fn), 15000, 'cleanup');
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length) throw new AggregateError(errors, 'cleanup failed');
  });

  it('the persister created its database, migrated it and bound stompgate.archive', T, async () => {
    assert.equal(await persister.metric('stompgate_persister_consuming'), 1);
    const tables = await persister.psql("select string_agg(tablename, ',' order by tablename) from pg_tables where tablename like 'stompgate\\_%'");
    for (const t of ['stompgate_messages', 'stompgate_streams']) assert.match(tables, new RegExp(`\\b${t}\\b`));
  });

  it('an amqplib publish to amq.topic reaches a stompjs subscriber with its properties, and is archived as amqp:guest', T, async () => {
    const messageId = uniq('erp');
    const ts = Math.floor(Date.now() / 1000);
    const body = JSON.stringify({ order: 42, status: 'shipped', note: 'café ✓' });
    ch.publish('amq.topic', 'room.7', Buffer.from(body), {
      messageId,
      contentType: 'application/json',
      headers: { 'x-tenant': 'acme' },
      appId: 'erp-system',
      timestamp: ts,
      userId: 'guest', // RabbitMQ checks it against the connection's user
    });
    await withTimeout(ch.waitForConfirms(), 5000, 'publisher confirm');

    const m = await sub.next((m) => m.headers['amqp-message-id'] === messageId);
    assert.equal(m.body, body);
    assert.equal(m.headers['content-type'], 'application/json');
    assert.equal(m.headers['x-tenant'], 'acme');
    assert.equal(m.headers['app-id'], 'erp-system');
    assert.equal(m.headers.timestamp, String(ts));
    assert.equal(m.headers.destination, ROOM);

    const row = await waitRow(persister, messageId);
    assert.equal(row.sender, 'amqp:guest');
    assert.equal(row.message_id, messageId);
    assert.equal(row.exchange, 'amq.topic');
    assert.equal(row.routing_key, 'room.7');
    assert.equal(row.content_type, 'application/json');
    assert.equal(row.body, body);
    assert.equal(row.stream, null, 'archived traffic has no stream');
    assert.equal(row.seq, null);
    assert.equal(Number(row.published_at), ts, 'published_at is the AMQP timestamp');
    assert.equal(row.headers.headers['x-tenant'], 'acme');
    const props = row.headers.properties;
    assert.equal(props.message_id, messageId);
    assert.equal(props.content_type, 'application/json');
    assert.equal(props.app_id, 'erp-system');
    assert.equal(props.user_id, 'guest');
    assert.equal(Date.parse(props.timestamp) / 1000, ts, `timestamp property as RFC 3339: ${props.timestamp}`);
  });

  it('without a user_id property the archived sender is amqp:unknown', T, async () => {
    const messageId = uniq('erp');
    ch.publish('amq.topic', 'room.7', Buffer.from('{"anon":true}'), {
      messageId,
      contentType: 'application/json',
      headers: { 'x-tenant': 'acme' },
    });
    await withTimeout(ch.waitForConfirms(), 5000, 'publisher confirm');
    await sub.next((m) => m.headers['amqp-message-id'] === messageId);
    const row = await waitRow(persister, messageId);
    assert.equal(row.sender, 'amqp:unknown');
    assert.equal(row.headers.headers['x-tenant'], 'acme');
    assert.equal(row.headers.properties.user_id, undefined);
  });

  it('a browser SEND is archived with the token subject as sender (spoofed x-user-id dropped) and the edge ULID as message_id', T, async () => {
    const sub7 = 'browser-' + randomBytes(3).toString('hex');
    const tx = await connectStomp(edge, { token: edge.token({ sub: sub7 }) });
    try {
      const marker = uniq('hello');
      await publishConfirmed(tx, {
        destination: ROOM,
        body: JSON.stringify({ marker }),
        headers: { 'content-type': 'application/json', 'x-user-id': 'admin', 'x-tenant': 'acme' },
      });
      const m = await sub.next((m) => m.body.includes(marker));
      assert.equal(m.headers['x-user-id'], sub7, 'the edge replaced the spoofed x-user-id');
      const id = m.headers['amqp-message-id'];
      assert.match(id ?? '', ULID, `the edge set a ULID amqp-message-id: ${id}`);

      const row = await waitRow(persister, id);
      assert.equal(row.sender, sub7);
      assert.equal(row.message_id, id);
      assert.equal(row.routing_key, 'room.7');
      assert.equal(row.content_type, 'application/json');
      assert.equal(JSON.parse(row.body).marker, marker);
      assert.equal(row.headers.headers['x-user-id'], sub7);
      assert.equal(row.headers.headers['x-tenant'], 'acme');
      const spoofed = await persister.psql(`select count(*) from stompgate_messages where sender = 'admin'`);
      assert.equal(spoofed.trim(), '0', 'nothing archived under the spoofed identity');
    } finally {
      await tx.close();
    }
  });

  it('a client amqp-message-id is the idempotency key: sent twice, archived once per sender', T, async () => {
    const sender = 'browser-' + randomBytes(3).toString('hex');
    const other = 'other-' + randomBytes(3).toString('hex');
    const tx = await connectStomp(edge, { token: edge.token({ sub: sender }) });
    const tx2 = await connectStomp(edge, { token: edge.token({ sub: other }) });
    try {
      const dupsBefore = (await persister.metric('stompgate_persister_duplicates_total')) ?? 0;
      const send = (h, body) =>
        publishConfirmed(h, {
          destination: ROOM,
          body,
          headers: { 'content-type': 'text/plain', 'amqp-message-id': 'm-123', 'x-user-id': 'admin' },
        });
      await send(tx, 'first');
      await send(tx, 'second');
      // Both copies are delivered live; the broker does not deduplicate.
      await sub.next((m) => m.body === 'second' && m.headers['x-user-id'] === sender);
      const first = await sub.next((m) => m.body === 'first' && m.headers['x-user-id'] === sender);
      assert.equal(first.headers['amqp-message-id'], 'm-123', 'the client amqp-message-id is kept');

      const row = await waitRow(persister, 'm-123', sender);
      await waitFor(async () => (await persister.metric('stompgate_persister_duplicates_total')) >= dupsBefore + 1, {
        timeout: 5000,
        what: 'the persister to skip the second m-123 as a duplicate',
      });
      const rows = await persister.psql(`select count(*) from stompgate_messages where sender = '${sender}' and message_id = 'm-123'`);
      assert.equal(rows.trim(), '1', 'one row for (sender, m-123)');
      assert.equal(row.body, 'first', 'the first copy is the one kept');

      // The same id from another sender is another message.
      await send(tx2, 'from the other one');
      const row2 = await waitRow(persister, 'm-123', other);
      assert.equal(row2.body, 'from the other one');
      const all = await persister.psql(`select count(*) from stompgate_messages where message_id = 'm-123'`);
      assert.equal(all.trim(), '2', 'm-123 archived once per sender');
    } finally {
      await tx.close();
      await tx2.close();
    }
  });

  it('SIGTERM stops the persister cleanly (exit 0)', T, async () => {
    const r = await persister.stop();
    assert.deepEqual(r, { code: 0, signal: null }, `persister exit:\n${persister.output().slice(-4000)}`);
    assert.match(persister.output(), /persister stopped/);
  });
});
