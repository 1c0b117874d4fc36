// stompgate demo chat, on /client/stompgate.js: rooms on the journaled
// streams /app/room.<name> (read from /topic/room.<name> with resume, so a
// reload shows the conversation and a reconnect loses and repeats nothing),
// presence on /exchange/amq.direct/presence.<name> (docs/CLIENT.md), and
// every error state spelled out.
import { StompgateClient, tokenExpiry } from '/client/stompgate.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;
const presenceEvery = Math.max(1, Number(params.get('presence')) || 10) * 1000;

$('token').value = params.get('token') || localStorage.getItem('stompgate.token') || '';
const startRoom = params.get('room') || localStorage.getItem('stompgate.room') || 'lobby';
$('room').value = ROOM_RE.test(startRoom) ? startRoom : 'lobby';
if (params.has('token')) {
  // Keep the token out of the address bar and browser history.
  params.delete('token');
  syncURL();
}

const explain = {
  unauthenticated: ['bad', 'The token is missing or invalid: paste a valid one and connect.'],
  token_expired: ['warn', 'The token expired: paste a fresh one (it is picked up at the next refresh).'],
  revoked: ['bad', 'Access revoked by an operator. Ask for a new token.'],
  forbidden: ['bad', 'Not allowed by your token\'s permissions (needs subscribe:/topic/room.*, send:/app/room.* and the presence scopes).'],
  too_many_sessions: ['bad', 'Too many open tabs for this user: close one and connect again.'],
  frame_too_large: ['warn', 'That message is larger than the edge accepts (64 KiB).'],
  rate_limited: ['warn', 'Sending too fast; reconnecting.'],
  slow_consumer: ['warn', 'This tab could not keep up; reconnecting.'],
  broker_unavailable: ['warn', 'The message broker is unavailable; reconnecting.'],
  broker_busy: ['warn', 'The edge is at its broker connection cap; reconnecting.'],
  shutting_down: ['warn', 'The server is restarting; reconnecting.'],
  bad_frame: ['bad', 'The edge refused a frame.'],
  refresh_failed: ['warn', 'Could not refresh the token.'],
  history_failed: ['warn', 'History is unavailable right now; retrying.'],
};

let sg = null;
let room = null; // { name, journal, presence }
let banner = null;

function syncURL() {
  const rest = params.toString();
  history.replaceState(null, '', location.pathname + (rest ? '?' + rest : ''));
}

function setBanner(level, text, code = '') {
  const b = $('banner');
  if (!level) {
    delete b.dataset.level;
    delete b.dataset.code;
    b.textContent = '';
    banner = null;
    return;
  }
  b.dataset.level = level;
  b.dataset.code = code;
  b.textContent = text;
  banner = code;
}

function setStatus(state, text) {
  $('status').dataset.state = state;
  $('status').textContent = text;
}

function setConnected(on) {
  // Writing stays possible while reconnecting: send() keeps the message
  // until the edge acknowledges it (shown as pending meanwhile).
  $('text').disabled = $('sendBtn').disabled = !sg || !room;
  $('log').dataset.connected = String(!!on);
  $('disconnect').disabled = !sg;
  $('connect').disabled = !!sg;
}

function scrollDown() {
  const log = $('log');
  log.scrollTop = log.scrollHeight;
}

function sysLine(text) {
  const p = document.createElement('p');
  p.className = 'sys';
  p.textContent = text;
  $('log').insertBefore(p, pendingAnchor());
  scrollDown();
}

// Pending (sent, not yet journaled) lines stay below the journaled ones.
function pendingAnchor() {
  return $('log').querySelector('p.pending');
}

function render(m) {
  document.querySelector(`#log p.pending[data-id="${CSS.escape(m.messageId || '')}"]`)?.remove();
  const p = document.createElement('p');
  p.className = 'msg' + (sg && m.sender === sg.user ? ' me' : '');
  p.dataset.seq = String(m.seq);
  p.dataset.sender = m.sender || '';
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = m.sender || 'someone';
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = m.binaryBody ? `(${m.binaryBody.length} bytes of ${m.contentType})` : m.body;
  p.append(who, text);
  if (m.publishedAt) {
    const t = document.createElement('time');
    t.dateTime = m.publishedAt;
    t.textContent = new Date(m.publishedAt).toLocaleTimeString();
    p.append(t);
  }
  $('log').insertBefore(p, pendingAnchor());
  scrollDown();
}

function renderWho(users) {
  const ul = $('who');
  ul.replaceChildren(...users.map((u) => {
    const li = document.createElement('li');
    li.dataset.user = u;
    li.textContent = u + (sg && u === sg.user ? ' (you)' : '');
    return li;
  }));
}

function recentRooms(add) {
  let list = [];
  try {
    list = JSON.parse(localStorage.getItem('stompgate.rooms') || '[]').filter((r) => ROOM_RE.test(r));
  } catch {
    // ignore a broken entry
  }
  if (add) list = [add, ...list.filter((r) => r !== add)].slice(0, 6);
  localStorage.setItem('stompgate.rooms', JSON.stringify(list));
  $('rooms').replaceChildren(...list.map((r) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = '#' + r;
    b.setAttribute('aria-current', String(room?.name === r));
    b.addEventListener('click', () => join(r));
    return b;
  }));
}

function leaveRoom() {
  if (!room) return;
  room.journal.close();
  room.presence.close();
  room = null;
  $('log').replaceChildren();
  renderWho([]);
}

function join(name) {
  if (!ROOM_RE.test(name)) {
    setBanner('bad', 'A room name is 1–64 letters, digits, - or _.', 'room');
    return;
  }
  if (banner === 'room') setBanner(null);
  if (room?.name === name || !sg) {
    $('room').value = name;
    if (!sg) localStorage.setItem('stompgate.room', name);
    return;
  }
  leaveRoom();
  $('room').value = name;
  localStorage.setItem('stompgate.room', name);
  params.set('room', name);
  syncURL();
  $('roomName').textContent = '#' + name;
  sysLine('loading #' + name + '…');
  const loading = $('log').lastElementChild;
  room = {
    name,
    journal: sg.journal('/topic/room.' + name, render, {
      tail: 200,
      onCaughtUp: (seq) => {
        loading.textContent = seq ? `#${name}: history loaded` : `#${name}: no messages yet, say hello`;
        loading.dataset.loaded = 'true';
      },
      onGap: ({ after, before }) => sysLine(`messages ${after + 1}–${before - 1} are no longer in history`),
    }),
    presence: sg.presence('/exchange/amq.direct/presence.' + name, { everyMs: presenceEvery, onChange: renderWho }),
  };
  recentRooms(name);
  setConnected(sg.connected);
}

async function getToken() {
  // The demo has no identity provider: a token pasted into the box is the
  // fresh one. A real app fetches one from its backend here.
  const pasted = $('token').value.trim();
  if (pasted && pasted !== sg?.token && (tokenExpiry(pasted) ?? Infinity) > Date.now()) return pasted;
  throw new Error('no fresh token: paste one into the Session box');
}

function connect() {
  const token = $('token').value.trim();
  if (!token) {
    setBanner('bad', 'Paste a token first (make run prints one).', 'no_token');
    return;
  }
  localStorage.setItem('stompgate.token', token);
  setBanner(null);
  sg = new StompgateClient({
    token,
    getToken,
    onState: (state, info) => {
      switch (state) {
        case 'connecting':
          setStatus('connecting', 'connecting…');
          break;
        case 'connected':
          setStatus('connected', `connected as ${info.user}`);
          $('me').textContent = 'signed in as ' + info.user;
          $('session').open = false;
          if (banner && banner !== 'room') setBanner(null);
          for (const li of $('who').children) li.textContent = li.dataset.user + (li.dataset.user === info.user ? ' (you)' : '');
          break;
        case 'reconnecting':
          setStatus('reconnecting', `reconnecting in ${(info.delayMs / 1000).toFixed(1)} s` + (info.reason && info.reason !== 'retry' ? ` (${info.reason.replace(/_/g, ' ')})` : ''));
          break;
        case 'stopped':
          setStatus('stopped', info.reason === 'stopped' ? 'not connected' : 'stopped: ' + info.reason);
          break;
      }
      setConnected(state === 'connected');
    },
    onError: ({ code, message }) => {
      const [level, text] = explain[code] || ['bad', 'Error ' + code + '.'];
      setBanner(level, text + (message && (level === 'bad' || !explain[code]) ? ` (${message})` : ''), code);
    },
    onStop: () => {
      // Fatal: the banner already says why; offer a new connect.
      leaveRoom();
      sg = null;
      $('session').open = true;
      setConnected(false);
    },
  });
  sg.start().catch((err) => setBanner('bad', 'Could not start: ' + err.message, 'start'));
  join($('room').value.trim() || 'lobby');
  setConnected(false);
}

async function disconnect() {
  const c = sg;
  leaveRoom();
  sg = null;
  $('roomName').textContent = '';
  setConnected(false);
  await c?.stop();
  setStatus('idle', 'not connected');
}

$('connect').addEventListener('click', connect);
$('disconnect').addEventListener('click', () => void disconnect());
$('join').addEventListener('submit', (e) => {
  e.preventDefault();
  join($('room').value.trim());
});
$('send').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('text').value;
  if (!text.trim() || !sg || !room) return;
  $('text').value = '';
  const p = document.createElement('p');
  p.className = 'pending';
  p.textContent = 'sending: ' + text;
  const sent = sg.send('/app/room.' + room.name, text, { 'content-type': 'text/plain' });
  // The id is known synchronously: the newest entry of the outbox.
  p.dataset.id = sg.pending().at(-1)?.id || '';
  $('log').append(p);
  scrollDown();
  sent.catch((err) => {
    p.textContent = `not sent (${err.code || err.message}): ${text}`;
    p.className = 'sys';
  });
});
// Tell the room we left; if this does not get out, the TTL removes us.
addEventListener('pagehide', () => room?.presence.close());

recentRooms();
setConnected(false);
if (params.get('autoconnect') === '1' && $('token').value) connect();
