// wsgate dashboard: renders the admin listener's live feed (/api/live) and
// acts through the admin API. Hand-written, no dependencies, no build step.
'use strict';

const HISTORY = 300;      // chart points kept: five minutes at one a second
const PAGE_SIZE = 50;     // connections shown a page (the table is paged)
const TOKEN_KEY = 'wsgate.admin.token';

const $ = (sel) => document.querySelector(sel);
const state = {
  conns: new Map(), sort: { key: 'id', dir: 1 }, page: 0,
  series: { active: [], ok: [], c4: [], c5: [], other: [], mUp: [], mDown: [], bUp: [], bDown: [] },
  upstreams: [], feeds: 0, retry: 0,
};

// === token ===
const token = () => sessionStorage.getItem(TOKEN_KEY) || '';
function b64url(s) {
  const bytes = new TextEncoder().encode(s);
  let bin = '';
  bytes.forEach((b) => { bin += String.fromCharCode(b); });
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}
async function api(method, path) {
  const headers = token() ? { Authorization: 'Bearer ' + token() } : {};
  const res = await fetch(path, { method, headers });
  let body = null;
  try { body = await res.json(); } catch (_) { /* an empty or non-JSON answer */ }
  return { status: res.status, body };
}

// === formatting ===
function fmtBytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? Math.round(n) : n.toFixed(1)) + ' ' + units[i];
}
const fmtRate = (n) => (n >= 100 ? Math.round(n) : Math.round(n * 10) / 10).toString();
function fmtAge(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return s + 's';
  if (s < 3600) return Math.floor(s / 60) + 'm' + (s % 60) + 's';
  return Math.floor(s / 3600) + 'h' + Math.floor((s % 3600) / 60) + 'm';
}
function el(tag, props, ...children) {
  const e = document.createElement(tag);
  Object.entries(props || {}).forEach(([k, v]) => {
    if (k === 'class') e.className = v;
    else if (k === 'data') Object.entries(v).forEach(([dk, dv]) => { e.dataset[dk] = dv; });
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  });
  children.flat().forEach((c) => e.append(c instanceof Node ? c : document.createTextNode(String(c))));
  return e;
}
const numCell = (value, text, cls) => el('td', { class: 'num ' + (cls || ''), data: { value: String(value) } }, text);

// === charts: a small canvas line chart ===
function drawChart(id, lines) {
  const c = document.getElementById(id);
  const ctx = c.getContext('2d');
  const css = getComputedStyle(document.documentElement);
  const w = c.width; const h = c.height;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(1, ...lines.flatMap((l) => l.data));
  ctx.strokeStyle = css.getPropertyValue('--line');
  ctx.fillStyle = css.getPropertyValue('--muted');
  ctx.font = '10px system-ui, sans-serif';
  ctx.beginPath(); ctx.moveTo(0, h - 0.5); ctx.lineTo(w, h - 0.5); ctx.stroke();
  ctx.fillText(fmtRate(max), 2, 10);
  lines.forEach((l) => {
    ctx.strokeStyle = css.getPropertyValue(l.color);
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    l.data.forEach((v, i) => {
      const x = w - (l.data.length - 1 - i) * (w / (HISTORY - 1));
      const y = h - 2 - (v / max) * (h - 14);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  });
}
function push(name, v) {
  const s = state.series[name];
  s.push(v);
  if (s.length > HISTORY) s.shift();
}

// === rendering ===
function renderTotals(t) {
  const a = t.answered_per_s || {};
  let ok = 0; let c4 = 0; let c5 = 0; let other = 0;
  Object.entries(a).forEach(([k, v]) => {
    if (k === '101') ok += v; else if (k[0] === '4') c4 += v; else if (k[0] === '5') c5 += v; else other += v;
  });
  $('#t-active').textContent = t.active;
  $('#t-ok').textContent = fmtRate(ok);
  $('#t-refused').textContent = fmtRate(c4 + c5);
  $('#t-msg-up').textContent = fmtRate(t.to_backend.messages_per_s);
  $('#t-msg-down').textContent = fmtRate(t.to_client.messages_per_s);
  $('#t-bytes-up').textContent = fmtBytes(t.to_backend.bytes_per_s);
  $('#t-bytes-down').textContent = fmtBytes(t.to_client.bytes_per_s);
  push('active', t.active); push('ok', ok); push('c4', c4); push('c5', c5); push('other', other);
  push('mUp', t.to_backend.messages_per_s); push('mDown', t.to_client.messages_per_s);
  push('bUp', t.to_backend.bytes_per_s); push('bDown', t.to_client.bytes_per_s);
  const s = state.series;
  drawChart('c-active', [{ data: s.active, color: '--up' }]);
  drawChart('c-answered', [{ data: s.ok, color: '--ok' }, { data: s.c4, color: '--warn' }, { data: s.c5, color: '--bad' }, { data: s.other, color: '--other' }]);
  drawChart('c-messages', [{ data: s.mUp, color: '--up' }, { data: s.mDown, color: '--down' }]);
  drawChart('c-bytes', [{ data: s.bUp, color: '--up' }, { data: s.bDown, color: '--down' }]);
}

function fillTable(sel, rows) {
  const body = $(sel + ' tbody');
  body.replaceChildren(...rows);
}

function renderListeners(list) {
  fillTable('#listeners', list.map((l) => el('tr', { data: { listener: l.name } },
    el('td', {}, l.name), el('td', {}, l.bind), el('td', {}, l.local || '–'),
    el('td', {}, l.tls ? 'yes' : 'no'), numCell(l.active, l.active))));
}
function renderRoutes(list) {
  fillTable('#routes', list.map((r) => el('tr', { data: { route: r.label } },
    el('td', {}, r.label), el('td', {}, r.upstream), numCell(r.active, r.active))));
}

function serverErrors(s) {
  const parts = [];
  if (s.fails) parts.push(s.fails + ' failures');
  if (s.ejections) parts.push(s.ejections + ' ejections');
  if (s.last_ejection_reason) parts.push('last: ' + s.last_ejection_reason);
  if (s.check && s.check.last_error) parts.push('check: ' + s.check.last_error);
  return parts.join(', ') || '–';
}
function renderUpstreams(list) {
  state.upstreams = list;
  $('#upstreams').replaceChildren(...list.map((u) => el('div', { class: 'upstream', data: { upstream: u.name } },
    el('h3', {}, u.name,
      el('button', { type: 'button', class: 'rebalance', onclick: () => confirmRebalance(u.name) }, 'Rebalance…')),
    el('table', {},
      el('thead', {}, el('tr', {}, [['server', ''], ['state', ''], ['active', 'num'], ['weight', 'num'], ['recent errors', ''], ['', '']].map(([h, c]) => el('th', { class: c }, h)))),
      el('tbody', {}, u.servers.map((s) => el('tr', { data: { server: s.addr } },
        el('td', {}, s.addr),
        el('td', { class: 'state state-' + s.state }, s.state + (s.slow_start ? ' (slow start)' : '')),
        numCell(s.active, s.active, 'active'), numCell(s.weight, s.weight),
        el('td', {}, serverErrors(s)),
        el('td', {},
          el('button', { type: 'button', class: 'drain', onclick: () => confirmServer(u.name, s.addr, 'drain') }, 'Drain'), ' ',
          el('button', { type: 'button', class: 'enable', onclick: () => confirmServer(u.name, s.addr, 'enable') }, 'Enable')))))))));
  renderFilters();
}
function renderRemoved(list) {
  $('#removed').replaceChildren(...(list.length ? [el('p', { class: 'meta' },
    'Removed by a reload, still draining: ' + list.map((d) => d.upstream + '/' + d.addr + ' (' + d.active + ')').join(', '))] : []));
}
function renderConfig(c) {
  $('#version').textContent = c.version;
  $('#version2').textContent = c.version;
  $('#source').textContent = c.source;
}
function changesText(r) {
  if (!r.ok) return r.problems.join('; ');
  const c = r.changes || {};
  const parts = [];
  [['routes_added', 'routes +'], ['routes_removed', 'routes −'], ['listeners_added', 'listeners +'],
    ['listeners_removed', 'listeners −'], ['servers_added', 'servers +'], ['servers_removed', 'servers −']]
    .forEach(([k, label]) => { if (c[k] && c[k].length) parts.push(label + c[k].join(' ')); });
  return parts.join('; ') || 'no routing change';
}
function renderReloads(list) {
  $('#no-reloads').hidden = list.length > 0;
  fillTable('#reloads', list.slice().reverse().map((r) => el('tr', { data: { seq: String(r.seq) } },
    el('td', {}, r.at), el('td', { class: r.ok ? 'ok-text' : 'bad-text' }, r.ok ? 'ok' : 'rejected'),
    el('td', {}, el('code', {}, r.version)), el('td', {}, changesText(r)))));
}

// === connections ===
const sortValue = {
  id: (c) => c.id, client: (c) => c.client, route: (c) => c.route, server: (c) => c.server,
  age: (c) => -c.started_ms, up_bytes: (c) => c.to_backend.bytes, down_bytes: (c) => c.to_client.bytes,
  up_msgs: (c) => c.to_backend.messages, down_msgs: (c) => c.to_client.messages,
};
function renderFilters() {
  const fill = (sel, values) => {
    const s = $(sel); const cur = s.value;
    const want = ['', ...[...values].sort()];
    const have = [...s.options].map((o) => o.value);
    if (want.join('\n') === have.join('\n')) return;
    s.replaceChildren(...want.map((v) => el('option', { value: v }, v || 'all')));
    s.value = want.includes(cur) ? cur : '';
  };
  const routes = new Set(); const servers = new Set();
  state.conns.forEach((c) => { routes.add(c.route); servers.add(c.server); });
  state.upstreams.forEach((u) => u.servers.forEach((s) => servers.add(s.addr)));
  fill('#f-route', routes); fill('#f-server', servers);
}
function renderConns() {
  const route = $('#f-route').value; const server = $('#f-server').value;
  const rows = [...state.conns.values()].filter((c) => (!route || c.route === route) && (!server || c.server === server));
  const { key, dir } = state.sort; const f = sortValue[key];
  rows.sort((a, b) => { const x = f(a); const y = f(b); return (x < y ? -1 : x > y ? 1 : 0) * dir || a.id - b.id; });
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  $('#page').textContent = (state.page + 1) + '/' + pages;
  $('#prev').disabled = state.page === 0; $('#next').disabled = state.page >= pages - 1;
  $('#conn-count').textContent = rows.length + ' shown of ' + state.conns.size;
  const now = Date.now();
  fillTable('#conns', rows.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE).map((c) => el('tr', { data: { id: String(c.id) } },
    numCell(c.id, c.id), el('td', {}, c.client), el('td', { class: 'route' }, c.route), el('td', { class: 'server' }, c.server),
    el('td', {}, fmtAge(now - c.started_ms)),
    numCell(c.to_backend.bytes, fmtBytes(c.to_backend.bytes), 'up-bytes'), numCell(c.to_client.bytes, fmtBytes(c.to_client.bytes), 'down-bytes'),
    numCell(c.to_backend.messages, c.to_backend.messages, 'up-msgs'), numCell(c.to_client.messages, c.to_client.messages, 'down-msgs'),
    el('td', {}, el('button', { type: 'button', class: 'close', onclick: () => confirmClose(c) }, 'Close…')))));
  document.querySelectorAll('#conns th button').forEach((b) => {
    if (b.dataset.sort === key) b.setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
    else b.removeAttribute('aria-sort');
  });
}

// === actions, each confirmed ===
function ask(text, extra, action) {
  const d = $('#confirm');
  $('#confirm-text').textContent = text;
  $('#confirm-extra').replaceChildren(...extra);
  $('#confirm-error').textContent = '';
  d.onclose = async () => {
    if (d.returnValue !== 'ok') return;
    const r = await action();
    toast(r.status < 300 ? 'done: ' + text : 'failed (' + r.status + '): ' + ((r.body && r.body.error) || ''));
  };
  d.returnValue = '';
  d.showModal();
}
function toast(t) { $('#toast').textContent = t; }
function confirmServer(upstream, addr, action) {
  ask((action === 'drain' ? 'Drain ' : 'Enable ') + addr + ' in ' + upstream + '?', [],
    () => api('POST', '/api/upstreams/' + encodeURIComponent(upstream) + '/servers/' + encodeURIComponent(addr) + '/' + action));
}
function confirmRebalance(upstream) {
  const input = el('input', { id: 'fraction', type: 'number', min: '0.01', max: '1', step: '0.01', value: '0.1' });
  ask('Rebalance ' + upstream + ': close this fraction of its tunnels (1012), spread over its drain_spread?',
    [el('label', { for: 'fraction' }, 'fraction '), input],
    () => api('POST', '/api/upstreams/' + encodeURIComponent(upstream) + '/rebalance?fraction=' + encodeURIComponent(input.value)));
}
function confirmClose(c) {
  const codes = [[1000, 'normal'], [1001, 'going away'], [1008, 'policy violation'], [1011, 'internal error'], [1012, 'service restart'], [1013, 'try again later'], [4000, 'application (4000)']];
  const select = el('select', { id: 'close-code' }, codes.map(([v, n]) => el('option', { value: String(v) }, v + ' ' + n)));
  select.value = '1008';
  const reason = el('input', { id: 'close-reason', maxlength: '123', value: 'closed by operator' });
  ask('Close connection ' + c.id + ' (' + c.client + ' → ' + c.server + ')?',
    [el('label', { for: 'close-code' }, 'code '), select, ' ', el('label', { for: 'close-reason' }, 'reason '), reason],
    () => api('DELETE', '/api/connections/' + c.id + '?code=' + select.value + '&reason=' + encodeURIComponent(reason.value)));
}

// === the feed ===
function apply(msg) {
  if (msg.config) renderConfig(msg.config);
  if (msg.listeners) renderListeners(msg.listeners);
  if (msg.routes) renderRoutes(msg.routes);
  if (msg.upstreams) renderUpstreams(msg.upstreams);
  if (msg.removed_draining) renderRemoved(msg.removed_draining);
  if (msg.reloads) renderReloads(msg.reloads);
  const c = msg.conns;
  if (c.reset) state.conns.clear();
  c.remove.forEach((id) => state.conns.delete(id));
  c.upsert.forEach((row) => state.conns.set(row.id, row));
  renderTotals(msg.totals);
  renderFilters();
  renderConns();
}
function setStatus(s, text) { const e = $('#status'); e.dataset.state = s; e.textContent = text; }

async function connect() {
  setStatus('connecting', 'connecting…');
  let check;
  try { check = await api('GET', '/api/config'); } catch (_) { return retry(); }
  if (check.status === 401) { askToken(token() ? 'That token was refused.' : ''); return undefined; }
  // Refused for good (another origin, or a host name without a token): say why, do not retry.
  if (check.status === 403) { setStatus('down', (check.body && check.body.error) || 'refused'); return undefined; }
  if (check.status !== 200) return retry();
  $('#forget-token').hidden = !token();
  const protocols = ['wsgate.live'];
  if (token()) protocols.push('bearer.' + b64url(token()));
  const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/api/live', protocols);
  ws.onopen = () => {
    state.retry = 0; state.feeds += 1;
    document.body.dataset.feeds = String(state.feeds);
    setStatus('live', 'live');
  };
  ws.onmessage = (e) => { try { apply(JSON.parse(e.data)); } catch (err) { toast('bad message: ' + err); } };
  ws.onclose = () => retry();
  return undefined;
}
function retry() {
  setStatus('down', 'reconnecting…');
  state.retry = Math.min(state.retry + 1, 5);
  setTimeout(connect, state.retry * 1000);
}
function askToken(message) {
  setStatus('down', 'token needed');
  $('#main').hidden = true;
  $('#token-form').hidden = false;
  $('#token-error').textContent = message;
  $('#token').focus();
}

document.addEventListener('DOMContentLoaded', () => {
  $('#token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('#token').value.trim());
    $('#token').value = '';
    $('#token-form').hidden = true; $('#main').hidden = false;
    connect();
  });
  $('#forget-token').addEventListener('click', () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); });
  document.querySelectorAll('#conns th button').forEach((b) => b.addEventListener('click', () => {
    const k = b.dataset.sort;
    state.sort = { key: k, dir: state.sort.key === k ? -state.sort.dir : 1 };
    renderConns();
  }));
  ['#f-route', '#f-server'].forEach((s) => $(s).addEventListener('change', () => { state.page = 0; renderConns(); }));
  $('#prev').addEventListener('click', () => { state.page = Math.max(0, state.page - 1); renderConns(); });
  $('#next').addEventListener('click', () => { state.page += 1; renderConns(); });
  $('#page-size').textContent = PAGE_SIZE;
  connect();
});
