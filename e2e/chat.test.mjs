// The demo chat (GET /, on /client/stompgate.js) in real headless Chromium
// (Debian's /usr/bin/chromium through playwright-core; nothing downloaded),
// with a real persister journaling /app/room.* into Postgres and a real edge
// that is drained (SIGTERM) and restarted mid-conversation: two users in two
// browser contexts end with every message exactly once, in seq order, on
// both screens; a reload shows the conversation; presence follows joins
// and drops a frozen (dead) tab after its TTL. Bounded to 60 s.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';

import { chromium } from 'playwright-core';

import { ROOT, createVhost, deleteVhost, startEdge, startPersister, waitFor, withTimeout } from './helpers.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const RESULTS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'test-results');
/** The scopes make run gives its dev tokens (scripts/run.sh). */
const CHAT_SCOPE = 'subscribe:/topic/room.* send:/app/room.* subscribe:/exchange/amq.direct/presence.* send:/exchange/amq.direct/presence.*';
const PRESENCE_S = 2; // presence "here" every 2 s: TTL 6 s

describe('demo chat: two browsers, an edge restart, history and presence', { timeout: 60000 }, () => {
  const closers = [];
  let vhost, persister, edge, browser;
  const pageErrors = [];
  const room = 'lobby'; // the vhost and the database are this test's own
  const edgeEnv = () => ({
    EDGE_DATABASE_URL: `postgres://postgres@127.0.0.1:5432/${persister.db}?sslmode=disable`,
    EDGE_DRAIN_DELAY: '0s',
    EDGE_DRAIN_PERIOD: '300ms',
  });

  before(async () => {
    mkdirSync(RESULTS, { recursive: true });
    vhost = await createVhost('chat');
    closers.push(() => deleteVhost(vhost));
    persister = await startPersister({ vhost });
    closers.push(() => persister.close());
    edge = await startEdge({ vhost, env: edgeEnv() });
    closers.push(() => edge.stop());
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      timeout: 15000,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    closers.push(() => browser.close());
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

  async function open(sub) {
    const ctx = await browser.newContext({ viewport: { width: 1000, height: 720 } });
    ctx.setDefaultTimeout(15000);
    const page = await ctx.newPage();
    page.on('pageerror', (e) => pageErrors.push(`${sub}: ${e}`));
    const token = edge.token({ sub, scope: CHAT_SCOPE });
    await page.goto(`${edge.httpURL}/?${new URLSearchParams({ token, room, autoconnect: '1', presence: String(PRESENCE_S) })}`);
    return { ctx, page, sub };
  }

  /** The journaled lines on a screen: [seq, sender, text]. */
  const lines = (page) =>
    page.locator('#log p.msg').evaluateAll((ps) => ps.map((p) => [Number(p.dataset.seq), p.dataset.sender, p.querySelector('.text').textContent]));
  const who = (page) => page.locator('#who li').evaluateAll((lis) => lis.map((li) => li.dataset.user));

  async function say(u, text) {
    await u.page.locator('#text').fill(text);
    await u.page.locator('#text').press('Enter');
  }

  it('chats across a drained and restarted edge: every message once, in order, on both screens', async () => {
    const alice = await open('alice');
    const bob = await open('bob');
    for (const u of [alice, bob]) {
      await u.page.locator('#status[data-state=connected]').waitFor();
      assert.equal(await u.page.locator('#status').textContent(), `connected as ${u.sub}`);
      assert.ok(!u.page.url().includes('token='), 'the token leaves the address bar');
      await u.page.locator('#log p.sys[data-loaded=true]').waitFor();
    }
    // Presence: each sees both (the join of the second is answered at once).
    for (const u of [alice, bob]) await waitFor(async () => (await who(u.page)).join() === 'alice,bob', { timeout: 5000, what: `${u.sub} sees both in the room` });

    const sent = [];
    const speak = async (u, text) => {
      sent.push([u.sub, text]);
      await say(u, text);
    };
    await speak(alice, 'hi bob');
    await speak(bob, 'hi alice');
    await speak(alice, 'the edge restarts now');
    const all = (n) => Promise.all([alice, bob].map((u) => waitFor(async () => (await lines(u.page)).length >= n, { timeout: 10000, what: `${u.sub} shows ${n} messages` })));
    await all(3);

    // Mid-conversation: one message in flight as SIGTERM lands, two written
    // while no edge runs (they wait, pending, in the helper's outbox).
    await speak(bob, 'sent as the drain starts');
    const stopped = edge.stop();
    const r = await stopped;
    assert.equal(r.code, 0, `the edge drains and exits cleanly:\n${edge.output().slice(-3000)}`);
    assert.match(edge.output(), /shutting_down|draining/);
    for (const u of [alice, bob]) await u.page.locator('#status:not([data-state=connected])').waitFor();
    await speak(alice, 'written while the edge is down');
    await speak(bob, 'me too');
    assert.ok((await alice.page.locator('#log p.pending').count()) >= 1, 'a message written offline is shown as pending');

    edge = await startEdge({ vhost, env: edgeEnv(), port: edge.port, secret: edge.secret });
    closers.push(() => edge.stop());
    for (const u of [alice, bob]) await u.page.locator('#status[data-state=connected]').waitFor({ timeout: 20000 });
    await speak(alice, 'back');
    await speak(bob, 'welcome back');
    await all(sent.length);

    const screens = await Promise.all([alice, bob].map((u) => lines(u.page)));
    const texts = sent.map(([, t]) => t);
    for (const [i, screen] of screens.entries()) {
      const name = i ? 'bob' : 'alice';
      assert.deepEqual(screen.map(([s]) => s), texts.map((_, k) => k + 1), `${name}: seqs 1..${texts.length}, none missing or repeated`);
      assert.deepEqual(screen.map(([, , t]) => t).sort(), [...texts].sort(), `${name}: every message exactly once`);
      for (const who of ['alice', 'bob']) {
        assert.deepEqual(screen.filter(([, s]) => s === who).map(([, , t]) => t), sent.filter(([s]) => s === who).map(([, t]) => t), `${name}: ${who}'s messages in the order sent`);
      }
    }
    assert.deepEqual(screens[0], screens[1], 'both screens show the same conversation');
    for (const u of [alice, bob]) assert.equal(await u.page.locator('#log p.pending').count(), 0, `${u.sub}: nothing left pending`);
    const rows = await persister.psql(`select count(*), count(distinct seq), max(seq) from stompgate_messages where stream = 'room.${room}'`);
    assert.equal(rows.trim(), `${texts.length}|${texts.length}|${texts.length}`, 'the journal holds each message once');

    // Presence came back after the restart.
    for (const u of [alice, bob]) await waitFor(async () => (await who(u.page)).join() === 'alice,bob', { timeout: 5000, what: `${u.sub} sees both after the restart` });

    // A reload shows the conversation (history on join).
    await alice.page.reload();
    await alice.page.locator('#status[data-state=connected]').waitFor();
    await waitFor(async () => (await lines(alice.page)).length === texts.length, { timeout: 10000, what: 'the conversation after a reload' });
    assert.deepEqual(await lines(alice.page), screens[0]);
    await waitFor(async () => (await who(alice.page)).join() === 'alice,bob', { timeout: 5000, what: 'presence after the reload' });
    // docs/demo.png (the README's picture) is refreshed on request only, so
    // that a test run leaves the checkout clean.
    await alice.page.screenshot({ path: path.join(RESULTS, 'chat.png') });
    if (process.env.E2E_UPDATE_DEMO_PNG === '1') await alice.page.screenshot({ path: path.join(ROOT, 'docs', 'demo.png') });

    // bob's tab hangs without a word (its JavaScript paused in the
    // debugger: no leave, no here, no heart-beat): gone from alice's list
    // after the TTL (3 × 2 s), not before one period.
    const cdp = await bob.ctx.newCDPSession(bob.page);
    await cdp.send('Debugger.enable');
    await cdp.send('Debugger.pause');
    const frozenAt = Date.now();
    await waitFor(async () => (await who(alice.page)).join() === 'alice', { timeout: 3 * PRESENCE_S * 1000 + 4000, interval: 200, what: 'bob to expire from presence' });
    assert.ok(Date.now() - frozenAt >= PRESENCE_S * 1000, 'not dropped before the TTL');
    await alice.page.screenshot({ path: path.join(RESULTS, 'chat-after-ttl.png') });

    assert.deepEqual(pageErrors, []);
  });
});
