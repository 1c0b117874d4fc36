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

  const CHAT_SCOPE = 'subscribe:/topic/room.* send:/app/room.* subscribe:/exchange/amq.direct/presence.* send:/exchange/amq.direct/presence.*';

  it('loads the chat and /client/stompgate.js under the CSP, strips the token, and says plainly when the edge has no journal', T, async () => {
    const res = await fetch(`${fx.edge.httpURL}/client/stompgate.js`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^text\/javascript/);
    assert.match(res.headers.get('content-security-policy'), /default-src 'self'/);
    const page = await open({ token: fx.edge.token({ sub: 'alice', scope: CHAT_SCOPE }), room: 'e2e', autoconnect: '1' });
    // This fixture's edge runs without EDGE_DATABASE_URL: resume is refused.
    const banner = page.locator('#banner[data-code=bad_frame]');
    await banner.waitFor();
    assert.match(await banner.textContent(), /x-resume-after needs the journal/);
    assert.ok(!page.url().includes('token='), `the token stays in the address bar: ${page.url()}`);
    assert.match(page.url(), /room=e2e/);
    assert.equal(await page.locator('#roomName').textContent(), '#e2e');
    await page.screenshot({ path: path.join(RESULTS, 'browser-no-journal.png'), fullPage: true });
    await page.locator('#disconnect').click();
    await page.locator('#status[data-state=idle]').waitFor();
    assert.equal(await page.locator('#text').isDisabled(), true, 'sending is disabled after disconnect');
    assert.deepEqual(pageErrors, []);
    await page.close();
  });

  it('shows an unauthenticated error and stops for an invalid token (one attempt, no retry storm)', T, async () => {
    const bad = mintToken('not-the-edge-secret-0123456789abcdef', { sub: 'mallory' });
    const page = await ctx.newPage();
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    let sockets = 0;
    page.on('websocket', () => sockets++);
    await page.goto(`${fx.edge.httpURL}/?${new URLSearchParams({ token: bad, room: 'e2e', autoconnect: '1' })}`);
    const err = page.locator('#banner[data-code=unauthenticated]');
    await err.waitFor();
    assert.match(await err.textContent(), /token is missing or invalid/);
    await page.locator('#status[data-state=stopped]').waitFor();
    assert.match(await page.locator('#status').textContent(), /stopped: unauthenticated/);
    // A fatal error does not reconnect in a loop.
    await page.waitForTimeout(1500);
    assert.equal(sockets, 1, 'exactly one WebSocket, no retry storm');
    assert.equal(await page.locator('#connect').isDisabled(), false, 'connect is offered again');
    await page.screenshot({ path: path.join(RESULTS, 'browser-unauthenticated.png'), fullPage: true });
    assert.deepEqual(pageErrors, []);
    await page.close();
  });
});
