// The demo chat page in a real headless Chromium (playwright-core, system
// browser): what a person trying stompgate sees.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';

import { chromium } from 'playwright-core';

import { mintToken, setup } from './helpers.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const RESULTS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'test-results');
const T = { timeout: 30000 };

describe('demo chat page in Chromium', () => {
  let fx;
  let ctx;
  let profile;
  const pageErrors = [];

  before(async () => {
    fx = await setup('browser');
    mkdirSync(RESULTS, { recursive: true });
    profile = mkdtempSync(path.join(os.tmpdir(), 'stompgate-e2e-chromium-'));
    ctx = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      timeout: 15000,
      viewport: { width: 900, height: 760 },
      args: [
        '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ],
    });
    ctx.setDefaultTimeout(8000);
  });
  after(async () => {
    await ctx?.close().catch(() => {});
    if (profile) rmSync(profile, { recursive: true, force: true });
    await fx?.close();
  });

  async function open(query) {
    const page = await ctx.newPage();
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    await page.goto(`${fx.edge.httpURL}/?${new URLSearchParams(query)}`);
    return page;
  }

  it('connects with ?token&autoconnect, sends from the form and shows the echo, shows AMQP messages', T, async () => {
    const page = await open({ token: fx.edge.token({ sub: 'alice' }), room: 'e2e', autoconnect: '1' });
    await page.locator('#status[data-state=connected]').waitFor();
    assert.match(await page.locator('#status').textContent(), /connected as alice to \/topic\/room\.e2e/);
    assert.ok(!page.url().includes('token='), `the token stays in the address bar: ${page.url()}`);

    await page.locator('#text').fill('hello from chromium');
    await page.locator('#text').press('Enter');
    const mine = page.locator('#log p.me', { hasText: 'alice: hello from chromium' });
    await mine.waitFor();
    assert.equal(await page.locator('#text').inputValue(), '', 'the input is cleared after sending');

    // Since the page's own message came back, its subscription is live.
    const conn = await fx.amqp();
    const ch = await conn.createConfirmChannel();
    ch.publish('amq.topic', 'room.e2e', Buffer.from('hello from the ERP'), { contentType: 'text/plain', headers: { 'x-user-id': 'erp' } });
    ch.publish('amq.topic', 'room.e2e', Buffer.from('<b>no markup</b>'), { contentType: 'text/plain' });
    await ch.waitForConfirms();
    await page.locator('#log p', { hasText: 'erp: hello from the ERP' }).waitFor();
    const raw = page.locator('#log p', { hasText: 'someone: <b>no markup</b>' });
    await raw.waitFor();
    assert.equal(await raw.locator('b').count(), 0, 'message bodies are shown as text, not HTML');
    await ch.close();

    const lines = await page.locator('#log p').allTextContents();
    assert.deepEqual(lines, [
      'joined /topic/room.e2e',
      'alice: hello from chromium',
      'erp: hello from the ERP',
      'someone: <b>no markup</b>',
    ]);
    await page.screenshot({ path: path.join(RESULTS, 'browser.png'), fullPage: true });
    assert.deepEqual(pageErrors, []);

    await page.locator('#disconnect').click();
    await page.locator('#status[data-state=idle]').waitFor();
    assert.equal(await page.locator('#text').isDisabled(), true, 'sending is disabled after disconnect');
    await page.close();
  });

  it('shows an unauthenticated error line and stops for an invalid token', T, async () => {
    const bad = mintToken('not-the-edge-secret-0123456789abcdef', { sub: 'mallory' });
    const page = await open({ token: bad, room: 'e2e', autoconnect: '1' });
    const err = page.locator('#log p.err');
    await err.first().waitFor();
    assert.match(await err.first().textContent(), /unauthenticated/);
    await page.locator('#status[data-state=idle]').waitFor();
    assert.match(await page.locator('#status').textContent(), /stopped: unauthenticated/);
    // A fatal error does not reconnect in a loop.
    await page.waitForTimeout(1500);
    assert.equal(await err.count(), 1, 'exactly one error line, no retry storm');
    await page.screenshot({ path: path.join(RESULTS, 'browser-unauthenticated.png'), fullPage: true });
    assert.deepEqual(pageErrors, []);
    await page.close();
  });
});
