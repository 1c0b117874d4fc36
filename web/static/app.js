// stompgate demo chat: @stomp/stompjs over the edge's /ws endpoint.
// Reconnects with exponential backoff and full jitter; shows ERROR frames by
// their x-error-code.
(function () {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  $('token').value = params.get('token') || localStorage.getItem('stompgate.token') || '';
  if (params.get('room')) $('room').value = params.get('room');
  if (params.has('token')) {
    // Keep the token out of the address bar and browser history.
    params.delete('token');
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + (rest ? '?' + rest : ''));
  }

  const explain = {
    unauthenticated: 'the token is missing or invalid: paste a fresh one',
    token_expired: 'the token expired: paste a fresh one',
    revoked: 'this user was revoked by an operator',
    forbidden: 'not allowed by your token\'s permissions',
    frame_too_large: 'message larger than 64 KiB',
    rate_limited: 'sending too fast',
    slow_consumer: 'this tab could not keep up',
    too_many_sessions: 'too many open tabs for this user',
    broker_unavailable: 'the message broker is unavailable; retrying',
    shutting_down: 'the server is restarting; reconnecting',
  };
  const fatal = new Set(['unauthenticated', 'token_expired', 'revoked', 'too_many_sessions']);

  let client = null;
  let attempt = 0;
  let stopped = true;

  function log(text, cls) {
    const p = document.createElement('p');
    if (cls) p.className = cls;
    p.textContent = text;
    $('log').appendChild(p);
    $('log').scrollTop = $('log').scrollHeight;
  }
  function status(state, text) {
    $('status').dataset.state = state;
    $('status').textContent = text;
  }
  function setConnected(on) {
    $('text').disabled = $('sendBtn').disabled = !on;
    $('disconnect').disabled = stopped;
    $('connect').disabled = !stopped;
  }
  // Exponential backoff with full jitter: 0.5s, 1s, 2s ... capped at 30s.
  function backoff(n) {
    const cap = Math.min(30000, 500 * Math.pow(2, n));
    return Math.random() * cap;
  }
  function wsURL() {
    return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
  }

  function connect() {
    const token = $('token').value.trim();
    const room = $('room').value.trim() || 'lobby';
    localStorage.setItem('stompgate.token', token);
    stopped = false;
    attempt = 0;
    const dest = '/topic/room.' + room;
    client = new StompJs.Client({
      brokerURL: wsURL(),
      connectHeaders: { Authorization: 'Bearer ' + token },
      heartbeatIncoming: 10000,
      heartbeatOutgoing: 10000,
      reconnectDelay: 1, // the real delay is applied in beforeConnect
      beforeConnect: async () => {
        if (attempt > 0) {
          const d = backoff(attempt);
          status('reconnecting', 'reconnecting in ' + (d / 1000).toFixed(1) + 's (attempt ' + attempt + ')');
          await new Promise((r) => setTimeout(r, d));
        }
        attempt++;
      },
      onConnect: (frame) => {
        attempt = 0;
        status('connected', 'connected as ' + (frame.headers['user-name'] || '?') + ' to ' + dest);
        log('joined ' + dest, 'sys');
        setConnected(true);
        client.subscribe(dest, (m) => {
          const who = m.headers['x-user-id'] || 'someone';
          log(who + ': ' + m.body, who === frame.headers['user-name'] ? 'me' : '');
        });
      },
      onStompError: (frame) => {
        const code = frame.headers['x-error-code'] || 'broker';
        log('error ' + code + ': ' + (explain[code] || frame.headers.message || ''), 'err');
        if (fatal.has(code)) {
          stopped = true;
          client.deactivate();
          status('idle', 'stopped: ' + code);
        }
      },
      onWebSocketClose: () => {
        setConnected(false);
        if (!stopped) status('reconnecting', 'connection lost');
      },
    });
    client.activate();
    setConnected(false);
  }

  $('connect').addEventListener('click', connect);
  $('disconnect').addEventListener('click', () => {
    stopped = true;
    if (client) client.deactivate();
    status('idle', 'not connected');
    setConnected(false);
  });
  $('send').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = $('text').value;
    if (!text || !client || !client.connected) return;
    const room = $('room').value.trim() || 'lobby';
    client.publish({ destination: '/topic/room.' + room, body: text });
    $('text').value = '';
  });
  if (params.get('autoconnect') === '1' && $('token').value) connect();
})();
