// The corporate-proxy path (issue 11): a real nginx that strips Upgrade
// and Connection in front of an edge, and Debian's Chromium (playwright-
// core, nothing downloaded) running the edge's own client helper
// (/client/stompgate.js with @stomp/stompjs and the embedded sockjs-client).
// The WebSocket upgrade cannot get through; the helper notices (the edge
// answers its admission probe) and falls back to SockJS at /sockjs, which
// runs the same session code: it CONNECTs, receives what a plain stompjs
// client sends straight to the edge, and sends back.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { chromium } from 'playwright-core';

import { connectStomp, createVhost, deleteVhost, freePort, mintToken, startEdge, subscribeReady, publishConfirmed, waitFor, withTimeout } from './helpers.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const NGINX = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((p) => existsSync(p));
const T = { timeout: 45000 };

// An nginx that drops the upgrade: what some corporate proxies do.
function stripUpgradeConfig(prefix, port, upstream) {
  const tmp = path.join(prefix, 'tmp');
  return `worker_processes 1;
pid ${prefix}/nginx.pid;
error_log ${prefix}/error.log info;
events { worker_connections 256; }
http {
  access_log ${prefix}/access.log;
  ${['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((k) => `${k}_temp_path ${tmp}/${k};`).join('\n  ')}
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://${upstream};
      proxy_http_version 1.1;
      proxy_set_header Upgrade "";
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_buffering off;
      proxy_read_timeout 3600s;
    }
  }
}
`;
}

describe('SockJS fallback in Chromium behind an nginx that strips Upgrade', { skip: NGINX ? false : 'nginx is not installed: run scripts/nginx.sh' }, () => {
  let vhost, edge, nginx, nginxExit, prefix, port, browser, secret;

  before(async () => {
    vhost = await createVhost('sockjs');
    secret = 'e2e-sockjs-' + Math.random().toString(36).slice(2).padEnd(40, 'x');
    port = await freePort();
    edge = await startEdge({ vhost, secret, origins: [`http://127.0.0.1:${port}`] });
    prefix = mkdtempSync(path.join(tmpdir(), 'stompgate-sockjs-'));
    mkdirSync(path.join(prefix, 'tmp'));
    const conf = path.join(prefix, 'nginx.conf');
    writeFileSync(conf, stripUpgradeConfig(prefix, port, `127.0.0.1:${edge.port}`));
    let out = '';
    nginx = spawn(NGINX, ['-p', prefix, '-e', path.join(prefix, 'error.log'), '-c', conf, '-g', 'daemon off;'], { stdio: ['ignore', 'pipe', 'pipe'] });
    nginx.stdout.setEncoding('utf8').on('data', (c) => (out += c));
    nginx.stderr.setEncoding('utf8').on('data', (c) => (out += c));
    nginxExit = new Promise((resolve) => nginx.once('exit', resolve));
    await waitFor(
      async () => {
        if (nginx.exitCode !== null) throw new Error(`nginx exited: ${out}`);
        return (await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(1000) })).status === 200;
      },
      { timeout: 10000, what: 'nginx' },
    );
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      timeout: 30000,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
    });
  });

  after(async () => {
    await browser?.close();
    if (nginx && nginx.exitCode === null && nginx.signalCode === null) {
      nginx.kill('SIGQUIT');
      const timer = setTimeout(() => nginx.kill('SIGKILL'), 5000);
      await nginxExit;
      clearTimeout(timer);
    }
    await edge?.stop();
    if (vhost) await deleteVhost(vhost).catch(() => {});
    if (prefix) rmSync(prefix, { recursive: true, force: true });
  });

  it('the helper falls back to SockJS and relays both ways', T, async () => {
    // A plain stompjs client straight to the edge, for the other side.
    const direct = await connectStomp(edge, { token: mintToken(secret, { sub: 'direct' }) });
    const fromBrowser = await subscribeReady(direct, '/topic/sockjs.room');

    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`http://127.0.0.1:${port}/`);
    const token = mintToken(secret, { sub: 'behind-proxy' });
    const start = await page.evaluate(async (token) => {
      const { StompgateClient } = await import('/client/stompgate.js');
      const states = [];
      window.got = [];
      const sg = new StompgateClient({ token, baseDelayMs: 100, maxDelayMs: 400, onState: (s, i) => states.push(`${s}:${i.reason || ''}`) });
      window.sg = sg;
      await sg.start();
      for (let i = 0; i < 300 && !sg.connected; i++) await new Promise((r) => setTimeout(r, 50));
      return { connected: sg.connected, transport: sg.transport, user: sg.user, states };
    }, token);
    assert.deepEqual(errors, []);
    assert.equal(start.connected, true, `not connected: ${start.states.join(' ')}`);
    assert.equal(start.transport, 'sockjs');
    assert.equal(start.user, 'behind-proxy');
    assert.ok(start.states.includes('reconnecting:sockjs_fallback'), start.states.join(' '));

    // Subscribe in the browser (receipt), then the direct client sends.
    await page.evaluate(
      () =>
        new Promise((resolve) => {
          window.sg.stomp.watchForReceipt('r-sub', resolve);
          window.sg.stomp.subscribe('/topic/sockjs.room', (m) => window.got.push({ body: m.body, user: m.headers['x-user-id'] }), { receipt: 'r-sub' });
        }),
    );
    await publishConfirmed(direct, { destination: '/topic/sockjs.room', body: 'to the browser, the long way' });
    await waitFor(async () => (await page.evaluate(() => window.got.length)) >= 1, { timeout: 10000, what: 'the MESSAGE in the browser' });
    await page.evaluate(() => window.sg.send('/topic/sockjs.room', 'from behind the proxy ✓', { 'content-type': 'text/plain' }));
    const seen = await page.evaluate(() => window.got);
    assert.deepEqual(seen[0], { body: 'to the browser, the long way', user: 'direct' });
    const m = await withTimeout(
      (async () => {
        for (;;) {
          const hit = fromBrowser.messages.find((x) => x.body.startsWith('from behind'));
          if (hit) return hit;
          await new Promise((r) => setTimeout(r, 50));
        }
      })(),
      10000,
      'the browser MESSAGE at the direct client',
    );
    assert.equal(m.body, 'from behind the proxy ✓');
    assert.equal(m.headers['x-user-id'], 'behind-proxy', 'identity stamped by the edge on the SockJS path too');

    // Through this proxy no upgrade ever succeeded; SockJS requests did.
    const log = readFileSync(path.join(prefix, 'access.log'), 'utf8');
    assert.match(log, /"(GET|POST) \/sockjs\/[^ ]+ HTTP\/1\.1" 200/);
    assert.doesNotMatch(log, /" 101 /);
    await page.evaluate(() => window.sg.stop());
    await direct.close();
  });
});
