// A real nginx (Debian's, scripts/nginx.sh) configured from docs/nginx.conf
// in front of two edges on loopback: stompjs clients connect through it,
// land on both edges and exchange a message across them, and a foreign
// Origin is refused by the edge behind it (nginx preserves Origin: were it
// dropped, the edge would take the upgrade as a non-browser client's).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  ORIGIN,
  ROOT,
  connectStomp,
  createVhost,
  deferred,
  deleteVhost,
  freePort,
  mintToken,
  openWS,
  startEdge,
  waitFor,
  withTimeout,
} from './helpers.mjs';

const T = { timeout: 20000 };
const NGINX = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((p) => existsSync(p));

/**
 * docs/nginx.conf with the lines marked "(test)" pointed at this test's
 * edges, port and prefix. Every replacement must apply, so the template and
 * this test cannot drift apart silently.
 */
function renderConfig(prefix, port, upstreams) {
  let conf = readFileSync(path.join(ROOT, 'docs', 'nginx.conf'), 'utf8');
  const tmp = path.join(prefix, 'tmp');
  const replacements = [
    ['pid /run/nginx-stompgate.pid;', `pid ${prefix}/nginx.pid;`],
    ['error_log /var/log/nginx/stompgate-error.log warn;', `error_log ${prefix}/error.log info;`],
    [
      'access_log /var/log/nginx/stompgate-access.log;',
      `access_log ${prefix}/access.log;\n` +
        ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((k) => `    ${k}_temp_path ${tmp}/${k};`).join('\n'),
    ],
    ['server 10.0.0.11:8080', `server ${upstreams[0]}`],
    ['server 10.0.0.12:8080', `server ${upstreams[1]}`],
    ['listen 80;', `listen 127.0.0.1:${port};`],
  ];
  for (const [from, to] of replacements) {
    assert.ok(conf.includes(from), `docs/nginx.conf no longer contains ${JSON.stringify(from)}`);
    conf = conf.replace(from, to);
  }
  return conf;
}

describe('behind a real nginx (docs/nginx.conf)', { skip: NGINX ? false : 'nginx is not installed: run scripts/nginx.sh' }, () => {
  let vhost;
  let edges = [];
  let nginx;
  let nginxExit;
  let prefix;
  let url; // ws:// URL of /ws through nginx
  let httpURL;
  let token;
  const clients = [];

  before(async () => {
    vhost = await createVhost('nginx');
    const secret = 'e2e-nginx-' + Math.random().toString(36).slice(2).padEnd(40, 'x');
    token = (sub) => mintToken(secret, { sub });
    edges = await Promise.all([startEdge({ vhost, secret }), startEdge({ vhost, secret })]);
    prefix = mkdtempSync(path.join(tmpdir(), 'stompgate-nginx-'));
    mkdirSync(path.join(prefix, 'tmp'));
    const port = await freePort();
    const confFile = path.join(prefix, 'nginx.conf');
    writeFileSync(confFile, renderConfig(prefix, port, edges.map((e) => `127.0.0.1:${e.port}`)));
    let out = '';
    nginx = spawn(NGINX, ['-p', prefix, '-e', path.join(prefix, 'error.log'), '-c', confFile, '-g', 'daemon off;'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    nginx.stdout.setEncoding('utf8').on('data', (c) => (out += c));
    nginx.stderr.setEncoding('utf8').on('data', (c) => (out += c));
    nginxExit = new Promise((resolve) => nginx.once('exit', (code, signal) => resolve({ code, signal })));
    httpURL = `http://127.0.0.1:${port}`;
    url = `ws://127.0.0.1:${port}/ws`;
    await waitFor(
      async () => {
        if (nginx.exitCode !== null) throw new Error(`nginx exited (${nginx.exitCode}): ${out}`);
        const res = await fetch(httpURL + '/healthz', { signal: AbortSignal.timeout(1000) });
        return res.status === 200;
      },
      { timeout: 10000, what: 'nginx to proxy /healthz' },
    );
  });

  after(async () => {
    for (const c of clients) await c.close().catch(() => {});
    if (nginx && nginx.exitCode === null && nginx.signalCode === null) {
      nginx.kill('SIGQUIT'); // graceful: workers finish, then the master exits
      const timer = setTimeout(() => nginx.kill('SIGKILL'), 5000);
      await nginxExit;
      clearTimeout(timer);
    }
    await Promise.all(edges.map((e) => e.stop()));
    if (vhost) await deleteVhost(vhost).catch(() => {});
    if (prefix) rmSync(prefix, { recursive: true, force: true });
  });

  it('keeps upgraded sockets open for an hour and forwards Upgrade, Connection and Origin', () => {
    const conf = readFileSync(path.join(ROOT, 'docs', 'nginx.conf'), 'utf8');
    const ws = conf.slice(conf.indexOf('location /ws'), conf.indexOf('}', conf.indexOf('location /ws')));
    for (const line of [
      'proxy_http_version 1.1;',
      'proxy_set_header Upgrade $http_upgrade;',
      'proxy_set_header Connection $connection_upgrade;',
      'proxy_set_header Origin $http_origin;',
      'proxy_read_timeout 3600s;',
    ]) {
      assert.ok(ws.includes(line), `location /ws lacks ${line}`);
    }
  });

  it('stompjs clients connect through nginx to both edges and exchange a message', T, async () => {
    const through = { wsURL: url };
    const sub = await connectStomp(through, { token: token('nginx-alice') });
    clients.push(sub);
    // least_conn with a shared zone: the second socket goes to the other edge.
    const pub = await connectStomp(through, { token: token('nginx-bob') });
    clients.push(pub);
    await waitFor(
      async () => {
        const counts = await Promise.all(edges.map((e) => e.metric('stompgate_sessions_active')));
        assert.deepEqual(counts, [1, 1], `sessions per edge ${counts}`);
        return true;
      },
      { timeout: 5000, what: 'one session on each edge' },
    );
    const got = deferred();
    const receipt = deferred();
    sub.client.watchForReceipt('sub-1', () => receipt.resolve());
    sub.client.subscribe('/topic/nginx.room', (m) => got.resolve(m), { receipt: 'sub-1' });
    await withTimeout(receipt.promise, 5000, 'the SUBSCRIBE receipt');
    pub.client.publish({ destination: '/topic/nginx.room', body: 'through nginx', headers: { 'content-type': 'text/plain' } });
    const m = await withTimeout(got.promise, 5000, 'the MESSAGE relayed across the two edges');
    assert.equal(m.body, 'through nginx');
    assert.equal(m.headers.destination, '/topic/nginx.room');
  });

  it('the edge behind nginx refuses a foreign Origin with 403, and takes an allowed one', T, async () => {
    const upgrade = (origin) => {
      const ws = openWS({ wsURL: url }, { origin });
      const res = deferred();
      ws.on('unexpected-response', (_req, r) => {
        r.resume();
        res.resolve(r.statusCode);
      });
      ws.on('upgrade', (r) => res.resolve(r.statusCode));
      ws.on('error', () => {});
      return withTimeout(res.promise, 5000, `the upgrade answer for Origin ${origin}`).finally(() => ws.terminate());
    };
    assert.equal(await upgrade('https://evil.example'), 403);
    assert.equal(await upgrade(ORIGIN), 101);
  });
});
