// @stomp/stompjs v7 under Node (through `ws`) against a real edge and a real
// RabbitMQ: what an application developer using the edge sees.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { deferred, queueInfo, rawSession, frameBytes, setup, waitFor, withTimeout, uniq, subscribeReady, publishConfirmed } from './helpers.mjs';

const T = { timeout: 20000 };


describe('stompjs client through the edge', () => {
  let fx;
  before(async () => {
    fx = await setup('stompjs');
  });
  after(async () => {
    await fx?.close();
  });

  for (const tokenIn of ['connect-authorization', 'passcode', 'query', 'upgrade']) {
    it(`connects with the token in ${tokenIn}`, T, async () => {
      const h = await fx.stomp({ token: fx.edge.token({ sub: `src-${tokenIn}` }), tokenIn });
      assert.equal(h.connected.headers['user-name'], `src-${tokenIn}`);
      await h.close();
    });
  }

  it('CONNECTED carries version, user-name, server, session and heart-beat', T, async () => {
    const h = await fx.stomp({
      token: fx.edge.token({ sub: 'alice' }),
      clientOptions: { heartbeatIncoming: 1000, heartbeatOutgoing: 1000 },
    });
    const hd = h.connected.headers;
    assert.equal(hd.version, '1.2');
    assert.equal(hd['user-name'], 'alice');
    assert.match(hd.server, /^stompgate\//);
    assert.ok(hd.session && hd.session.length > 0, 'session header present');
    // The edge offers EDGE_HEARTBEAT (2s in these tests) and never less than
    // what the client asked for (1s).
    assert.equal(hd['heart-beat'], '2000,2000');
    assert.equal(h.socket().protocol, 'v12.stomp', 'subprotocol echoed');
    await h.close();
  });

  it('heart-beats flow both ways on an idle session, at least every negotiated interval', T, async () => {
    const h = await fx.stomp({
      token: fx.edge.token({ sub: 'idle' }),
      clientOptions: { heartbeatIncoming: 1000, heartbeatOutgoing: 1000 },
    });
    const sx = Number(h.connected.headers['heart-beat'].split(',')[0]);
    const t0 = Date.now();
    const arrivals = [t0];
    h.socket().on('message', () => arrivals.push(Date.now()));
    await waitFor(() => Date.now() - t0 >= 6500, { timeout: 8000, interval: 100, what: '6.5 s of idle session' });
    const end = Date.now();
    // The edge sends bare EOLs, and keeps the session up on stompjs's own.
    const beats = h.raw.filter((m) => !m.isBinary && /^\r?\n$/.test(m.data.toString())).length;
    assert.ok(beats >= 2, `heart-beats from the edge in 6.5 s: ${beats}`);
    assert.ok(h.client.connected, 'still connected after 6.5 s of heart-beats only');
    await h.close();

    // STOMP 1.2 §Heart-beating: with CONNECTED heart-beat:<sx>,<sy> the
    // server "MUST send new data over the network connection at least every
    // <sx> milliseconds". Clients give little slack (stompjs drops a server
    // silent for 2x the interval; the edge itself drops clients at 1.5x).
    // Silence up to the end of the window counts too; the RECEIPT of the
    // DISCONNECT came after it.
    const inWindow = arrivals.filter((t) => t <= end).concat(end);
    const gaps = inWindow.slice(1).map((t, i) => t - inWindow[i]);
    const worst = Math.max(...gaps);
    // 25% slack for scheduling; the bug this catches leaves gaps of ~2x.
    assert.ok(worst <= sx * 1.25,
      `EDGE BUG: CONNECTED promised heart-beat sx=${sx}ms but the edge was silent for ${worst}ms ` +
      `(gaps from CONNECTED on: ${gaps.join(', ')} ms). relay/session.go writeLoop ticks every sx and skips ` +
      'a tick when anything was written since the previous one, so silence reaches ~2*sx');
  });

  it('delivers a /topic/ message from another client with the SENDER\'s x-user-id, even when spoofed', T, async () => {
    const bob = await fx.stomp({ token: fx.edge.token({ sub: 'bob' }) });
    const carol = await fx.stomp({ token: fx.edge.token({ sub: 'carol' }) });
    const sub = await subscribeReady(bob, '/topic/x');
    await publishConfirmed(carol, {
      destination: '/topic/x',
      body: 'hello from carol',
      headers: { 'x-user-id': 'bob', 'user-id': 'bob', 'content-type': 'text/plain' },
    });
    const m = await sub.next((m) => m.body === 'hello from carol');
    assert.equal(m.headers['x-user-id'], 'carol', 'x-user-id is the sender\'s sub, not the spoofed value');
    assert.equal(m.headers.destination, '/topic/x');
    assert.match(m.headers['amqp-message-id'] || '', /^[0-9A-HJKMNP-TV-Z]{26}$/, 'edge-assigned ULID message id');
    assert.equal(m.headers['user-id'], undefined, 'client-supplied user-id dropped');
    await carol.close();
    await bob.close();
  });

  it('delivers a message published over AMQP to amq.topic', T, async () => {
    const bob = await fx.stomp({ token: fx.edge.token({ sub: 'bob' }) });
    const sub = await subscribeReady(bob, '/topic/x');
    const conn = await fx.amqp();
    const ch = await conn.createConfirmChannel();
    ch.publish('amq.topic', 'x', Buffer.from('hello from amqp'), { contentType: 'text/plain', headers: { 'x-origin': 'erp' } });
    await ch.waitForConfirms();
    const m = await sub.next((m) => m.body === 'hello from amqp');
    assert.equal(m.headers['content-type'], 'text/plain');
    assert.equal(m.headers['x-origin'], 'erp');
    await ch.close();
    await bob.close();
  });

  it('answers a SEND with a receipt (watchForReceipt)', T, async () => {
    const h = await fx.stomp({ token: fx.edge.token({ sub: 'dave' }) });
    const receipt = await publishConfirmed(h, { destination: '/topic/receipts', body: 'r' });
    assert.equal(receipt.command, 'RECEIPT');
    assert.ok(receipt.headers['receipt-id'].startsWith('pub-'));
    await h.close();
  });

  it('client-individual ACK and NACK on a /queue/: NACK redelivers, ACK empties the queue', T, async () => {
    const queue = uniq('work');
    const worker = await fx.stomp({ token: fx.edge.token({ sub: 'worker' }) });
    const producer = await fx.stomp({ token: fx.edge.token({ sub: 'producer' }) });
    const sub = await subscribeReady(worker, `/queue/${queue}`, { ack: 'client-individual' });
    await publishConfirmed(producer, { destination: `/queue/${queue}`, body: 'job-1' });

    const first = await sub.next((m) => m.body === 'job-1');
    assert.ok(first.ack, 'message is ackable');
    assert.notEqual(first.headers.redelivered, 'true', 'first delivery is not marked redelivered');
    first.nack(); // RabbitMQ requeues on NACK by default
    const again = await sub.next((m) => m !== first && m.body === 'job-1');
    assert.equal(again.headers.redelivered, 'true', 'the NACKed message comes back marked redelivered');
    assert.equal(again.headers['x-user-id'], 'producer');
    // ACK with a receipt so the broker has processed it before we look.
    const acked = deferred();
    worker.client.watchForReceipt('ack-1', acked.resolve);
    again.ack({ receipt: 'ack-1' });
    await withTimeout(acked.promise, 5000, 'RECEIPT for ACK');
    assert.equal(sub.messages.length, 2, 'no further deliveries after the ACK');
    // Closing the session would requeue anything still unacknowledged; the
    // queue must stay empty afterwards.
    await worker.close();
    await producer.close();
    const q = await waitFor(async () => {
      const q = await queueInfo(fx.vhost, queue);
      assert.ok(q, `queue ${queue} exists`);
      assert.equal(q.consumers, 0, 'consumer gone');
      assert.equal(q.messages, 0, 'messages');
      assert.equal(q.messages_unacknowledged, 0, 'messages_unacknowledged');
      return q;
    }, { timeout: 12000, interval: 250, what: 'an empty queue in the management API' });
    assert.equal(q.messages_ready, 0);
  });

  it('DISCONNECT with a receipt: the RECEIPT arrives before the socket closes', T, async () => {
    const disconnected = deferred();
    const h = await fx.stomp({
      token: fx.edge.token({ sub: 'erin' }),
      clientOptions: { disconnectHeaders: { receipt: 'bye-42' }, onDisconnect: disconnected.resolve },
    });
    await h.close(); // stompjs sends DISCONNECT and closes the socket on the RECEIPT
    const frame = await withTimeout(disconnected.promise, 1000, 'onDisconnect (RECEIPT for DISCONNECT)');
    assert.equal(frame.command, 'RECEIPT');
    assert.equal(frame.headers['receipt-id'], 'bye-42');

    // The same at the wire, with CONNECT, a SEND and the DISCONNECT in one
    // WebSocket message: the SEND is relayed, and the edge closes only after
    // the RECEIPT. (RabbitMQ itself drops a SEND's receipt when a DISCONNECT
    // follows before the publish is confirmed, so the SEND asks for none.)
    const conn = await fx.amqp();
    const ch = await conn.createChannel();
    const { queue } = await ch.assertQueue('', { exclusive: true });
    await ch.bindQueue(queue, 'amq.topic', 'bye');
    const token = fx.edge.token({ sub: 'erin' });
    const r = await rawSession(fx.edge, Buffer.concat([
      frameBytes('CONNECT', { 'accept-version': '1.2', host: '/', Authorization: `Bearer ${token}` }),
      frameBytes('SEND', { destination: '/topic/bye' }, 'last words'),
      frameBytes('DISCONNECT', { receipt: 'bye-raw' }),
    ]));
    assert.equal(r.timedOut, false, 'the edge closed the socket');
    assert.deepEqual(r.order, ['frame:CONNECTED', 'frame:RECEIPT', 'close']);
    assert.equal(r.frames[1].headers['receipt-id'], 'bye-raw');
    const got = await waitFor(() => ch.get(queue, { noAck: true }), { timeout: 5000, what: 'the pipelined SEND at the broker' });
    assert.equal(got.content.toString(), 'last words');
    assert.equal(String(got.properties.headers['x-user-id']), 'erin');
    await ch.close();
    assert.equal(r.close.code, 1000);
  });

  it('frames split across WebSocket messages, and heart-beat EOLs between frames, are accepted', T, async () => {
    const conn = await fx.amqp();
    const ch = await conn.createChannel();
    const { queue } = await ch.assertQueue('', { exclusive: true });
    await ch.bindQueue(queue, 'amq.topic', 'split');
    const token = fx.edge.token({ sub: 'frank' });
    const bytes = Buffer.concat([
      Buffer.from('\n'), // a heart-beat before CONNECT
      frameBytes('CONNECT', { 'accept-version': '1.1,1.2', host: '/', Authorization: `Bearer ${token}` }),
      Buffer.from('\r\n\n'),
      frameBytes('SEND', { destination: '/topic/split' }, 'in pieces'),
      frameBytes('DISCONNECT', { receipt: 'split-bye' }),
    ]);
    // Cut at awkward places: inside the command, a header, the body, the NUL.
    const cuts = [3, 40, bytes.indexOf('in pieces') + 2, bytes.indexOf('DISCONNECT') - 1, bytes.length - 1];
    const chunks = cuts.map((c, i) => bytes.subarray(i ? cuts[i - 1] : 0, c)).concat([bytes.subarray(cuts.at(-1))]);
    const r = await rawSession(fx.edge, chunks);
    assert.deepEqual(r.order, ['frame:CONNECTED', 'frame:RECEIPT', 'close']);
    assert.equal(r.frames[1].headers['receipt-id'], 'split-bye');
    const got = await waitFor(() => ch.get(queue, { noAck: true }), { timeout: 5000, what: 'the split SEND at the broker' });
    assert.equal(got.content.toString(), 'in pieces');
    assert.equal(String(got.properties.headers['x-user-id']), 'frank');
    await ch.close();
  });

  it('request/reply through /temp-queue/ and reply-to', T, async () => {
    const rpcQueue = `/queue/${uniq('rpc')}`;
    const server = await fx.stomp({ token: fx.edge.token({ sub: 'rpc-server' }) });
    const requests = [];
    const ready = deferred();
    const rid = uniq('rs');
    server.client.watchForReceipt(rid, ready.resolve);
    server.client.subscribe(rpcQueue, (m) => {
      requests.push(m);
      server.client.publish({
        destination: m.headers['reply-to'],
        body: 'pong:' + m.body,
        headers: { 'correlation-id': m.headers['correlation-id'] },
      });
    }, { receipt: rid });
    await withTimeout(ready.promise, 5000, 'rpc server subscribed');

    const replies = [];
    const requester = await fx.stomp({
      token: fx.edge.token({ sub: 'rpc-client' }),
      clientOptions: { onUnhandledMessage: (m) => replies.push(m) },
    });
    requester.client.publish({
      destination: rpcQueue,
      body: 'ping',
      headers: { 'reply-to': '/temp-queue/answers', 'correlation-id': 'c-1' },
    });
    const reply = await waitFor(() => replies.find((m) => m.body === 'pong:ping'), { timeout: 5000, what: 'the reply' });
    assert.equal(reply.headers['correlation-id'], 'c-1');
    assert.equal(reply.headers['x-user-id'], 'rpc-server');
    assert.match(requests[0].headers['reply-to'], /^\/reply-queue\//, 'RabbitMQ rewrote reply-to for the server');
    await requester.close();
    await server.close();
  });

  it('a binary body with invalid UTF-8 round-trips intact as a binary WebSocket message', T, async () => {
    const bytes = new Uint8Array([0x00, 0xff, 0xfe, 0xc3, 0x28, 0x80, 0x0a, 0x00, 0x41, 0xed, 0xa0, 0x80]);
    const rx = await fx.stomp({ token: fx.edge.token({ sub: 'rx' }) });
    const tx = await fx.stomp({ token: fx.edge.token({ sub: 'tx' }) });
    const sub = await subscribeReady(rx, '/topic/bin');
    await publishConfirmed(tx, {
      destination: '/topic/bin',
      binaryBody: bytes,
      headers: { 'content-type': 'application/octet-stream' },
    });
    const m = await sub.next((m) => m.headers['x-user-id'] === 'tx');
    assert.deepEqual(Buffer.from(m.binaryBody), Buffer.from(bytes));
    assert.equal(m.headers['content-type'], 'application/octet-stream');
    const wire = rx.raw.filter((w) => w.data.subarray(0, 8).toString() === 'MESSAGE\n');
    assert.equal(wire.length, 1);
    assert.equal(wire[0].isBinary, true, 'a frame with invalid UTF-8 goes out as a binary WebSocket message');
    // Text frames stay text.
    assert.ok(rx.raw.every((w) => w === wire[0] || !w.isBinary), 'other frames are text messages');
    await tx.close();
    await rx.close();
  });
});
