// kobo dashboard: logs in (API key → session cookie), then renders the
// cluster status pushed over Server-Sent Events (/v1/events). Every value
// from the server goes into the page as text, never as HTML.
'use strict';

const MAP_W = 1000;
const MAP_H = 500;
const $ = (id) => document.getElementById(id);

let world = null;
let last = null;
let events = null;
let seenJobs = new Set();
let openJob = null;
let clockSkew = 0;
let plotSpan = 'hour';

// ---- DOM helpers ---------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// ---- formatting ----------------------------------------------------------

const now = () => Date.now() + clockSkew;

function age(ms) {
  ms = Math.max(0, ms);
  if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 1 : 0) + 's';
  const s = Math.floor(ms / 1000);
  if (s < 3600) return Math.floor(s / 60) + 'm ' + String(s % 60).padStart(2, '0') + 's';
  if (s < 86400) return Math.floor(s / 3600) + 'h ' + String(Math.floor((s % 3600) / 60)).padStart(2, '0') + 'm';
  return Math.floor(s / 86400) + 'd ' + Math.floor((s % 86400) / 3600) + 'h';
}

function ms(v) {
  if (v === null || v === undefined) return '–';
  return v >= 10000 ? (v / 1000).toFixed(1) + ' s' : Math.round(v) + ' ms';
}

function pct(part, whole) {
  return whole > 0 ? Math.round((100 * part) / whole) + '%' : '–';
}

function bytes(n) {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(n >= 10 || i === 0 ? 0 : 1) + ' ' + units[i];
}

function utc(at) {
  return at ? new Date(at).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC') : '–';
}

function bar(ratio) {
  const r = Math.max(0, Math.min(1, ratio || 0));
  return h('span', { class: 'bar' + (r >= 0.95 ? ' full' : r >= 0.75 ? ' hot' : '') },
    h('i', { style: null, dataset: { w: r } }));
}

// CSP forbids inline styles set through attributes; widths go through CSSOM.
function applyBarWidths(root) {
  root.querySelectorAll('.bar i, .qbar i').forEach((i) => {
    i.style.width = (Number(i.dataset.w) * 100).toFixed(1) + '%';
  });
}

const project = (lat, lon) => [((lon + 180) / 360) * MAP_W, ((90 - lat) / 180) * MAP_H];

// ---- login ---------------------------------------------------------------

function showLogin(message) {
  if (events) { events.close(); events = null; }
  document.body.dataset.state = 'login';
  $('app').hidden = true;
  $('logout').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message || '';
  $('api-key').focus();
}

async function login(event) {
  event.preventDefault();
  const key = $('api-key').value.trim();
  $('login-submit').disabled = true;
  $('login-error').textContent = '';
  try {
    const res = await fetch('/v1/session', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ api_key: key }),
      credentials: 'same-origin',
    });
    if (res.status === 201) {
      $('api-key').value = '';
      await start();
      return;
    }
    let message = 'Login failed (' + res.status + ')';
    try { message = (await res.json()).error.message; } catch (_) { /* keep the status */ }
    $('login-error').textContent = message;
  } catch (err) {
    $('login-error').textContent = 'Cannot reach the coordinator: ' + err.message;
  } finally {
    $('login-submit').disabled = false;
  }
}

async function logout() {
  await fetch('/v1/session/logout', { method: 'POST', credentials: 'same-origin' }).catch(() => {});
  showLogin('Logged out.');
}

// ---- start and live updates ---------------------------------------------

async function start() {
  const res = await fetch('/v1/status', { credentials: 'same-origin' });
  if (res.status === 401 || res.status === 403) {
    const expired = new URLSearchParams(location.search).get('login_link') === 'expired';
    showLogin(expired ? 'That login link was used already or has expired. Log in with an API key.' : '');
    return;
  }
  if (!res.ok) {
    showLogin('The coordinator answered ' + res.status + '.');
    return;
  }
  if (location.search) history.replaceState(null, '', '/');
  $('login').hidden = true;
  $('app').hidden = false;
  $('logout').hidden = false;
  render(await res.json());
  connect();
}

function connect() {
  if (events) events.close();
  events = new EventSource('/v1/events');
  events.addEventListener('status', (e) => {
    document.body.dataset.state = 'live';
    $('live-text').textContent = 'live';
    render(JSON.parse(e.data));
  });
  events.onerror = async () => {
    document.body.dataset.state = 'reconnecting';
    $('live-text').textContent = 'reconnecting';
    // EventSource retries by itself; a dead session needs a new login.
    const res = await fetch('/v1/status', { credentials: 'same-origin' }).catch(() => null);
    if (res && (res.status === 401 || res.status === 403)) showLogin('Your session ended. Log in again.');
  };
}

// ---- rendering -----------------------------------------------------------

function render(status) {
  last = status;
  clockSkew = status.server_time - Date.now();
  renderChips(status);
  renderMap(status.nodes);
  renderNodes(status.nodes);
  renderQueue(status);
  renderJobs(status.latest_jobs);
  renderKeys(status.keys || []);
  renderPlots(status);
  applyBarWidths(document);
}

function renderPlots(st) {
  const win = st.series && st.series[plotSpan];
  if (!win || !win.succeeded) return;
  KoboPlots.render($('plots'), win);
}

function chooseSpan(span) {
  plotSpan = span;
  for (const b of document.querySelectorAll('.span-switch button')) b.setAttribute('aria-pressed', String(b.dataset.span === span));
  if (last) renderPlots(last);
}

function gateway(r) {
  if (!r.gateway_requests) return '–';
  return r.gateway_requests + (r.gateway_tokens_per_s === null || r.gateway_tokens_per_s === undefined ? '' : ' · ' + r.gateway_tokens_per_s.toFixed(0) + ' tok/s');
}

function chip(value, label) {
  return h('span', { class: 'chip', dataset: { kpi: label } }, h('b', {}, value), h('span', {}, label));
}

function renderChips(st) {
  const active = st.nodes.filter((n) => n.status === 'active').length;
  const busy = st.nodes.reduce((a, n) => a + n.running, 0);
  const workers = st.nodes.filter((n) => n.status === 'active').reduce((a, n) => a + n.max_workers, 0);
  const done = st.recent.succeeded + st.recent.dead;
  $('chips').replaceChildren(
    chip(active + '/' + st.nodes.length, 'nodes active'),
    chip(busy + '/' + workers, 'workers busy'),
    chip(st.totals.queued, 'queued'),
    chip(st.recent.succeeded, 'done · 1h'),
    chip(pct(st.recent.succeeded, done), 'success · 1h'),
    chip(ms(st.recent.mean_run_ms), 'mean run'),
    chip(ms(st.recent.mean_pickup_ms), 'mean pickup'),
  );
}

function drawWorld() {
  if (!world) return;
  $('land').setAttribute('d', world.land);
  const g = $('graticule');
  const lines = [];
  for (let lon = -150; lon <= 150; lon += 30) {
    const [x] = project(0, lon);
    lines.push(s('line', { x1: x, y1: 0, x2: x, y2: MAP_H }));
  }
  for (let lat = -60; lat <= 60; lat += 30) {
    const [, y] = project(lat, 0);
    lines.push(s('line', { x1: 0, y1: y, x2: MAP_W, y2: y }));
  }
  g.replaceChildren(...lines);
}

// Nodes closer on the map than NEAR_PX (same city, or Tokyo and Osaka)
// are spread on a small circle around their middle.
const NEAR_PX = 26;

function positions(nodes) {
  const clusters = [];
  for (const n of [...nodes].sort((a, b) => a.node_id.localeCompare(b.node_id))) {
    if (!n.place) continue;
    const [x, y] = project(n.place.latitude, n.place.longitude);
    const near = clusters.find((c) => Math.hypot(c.x - x, c.y - y) < NEAR_PX);
    if (near) {
      near.members.push({ n, x, y });
      near.x = near.members.reduce((a, m) => a + m.x, 0) / near.members.length;
      near.y = near.members.reduce((a, m) => a + m.y, 0) / near.members.length;
    } else {
      clusters.push({ x, y, members: [{ n, x, y }] });
    }
  }
  const out = new Map();
  for (const c of clusters) {
    const k = c.members.length;
    c.members.forEach(({ n }, i) => {
      if (k === 1) { out.set(n.node_id, [c.x, c.y]); return; }
      const spread = 11 + 4 * k;
      const a = (2 * Math.PI * i) / k - Math.PI / 2;
      out.set(n.node_id, [c.x + spread * Math.cos(a), c.y + spread * Math.sin(a)]);
    });
  }
  return out;
}

// Markers are updated in place (never rebuilt), so hovering one is stable.
const markerEls = new Map();

function marker(nodeId) {
  if (markerEls.has(nodeId)) return markerEls.get(nodeId);
  const parts = {
    halo: s('circle', { class: 'halo' }),
    track: s('circle', { class: 'track' }),
    load: s('circle', { class: 'load', transform: 'rotate(-90)' }),
    core: s('circle', { class: 'core' }),
    name: s('text', {}, nodeId),
    city: s('text', { class: 'city' }),
  };
  const g = s('g', { tabindex: 0, role: 'button', dataset: { nodeId } },
    parts.halo, parts.track, parts.load, parts.core, parts.name, parts.city);
  g.addEventListener('mouseenter', () => showTip(nodeId));
  g.addEventListener('focus', () => showTip(nodeId));
  g.addEventListener('mouseleave', hideTip);
  g.addEventListener('blur', hideTip);
  const m = { g, parts };
  markerEls.set(nodeId, m);
  return m;
}

function renderMap(nodes) {
  const pos = positions(nodes);
  // Sorted by latitude so labels of close nodes (Tokyo, Osaka) stack predictably.
  const placed = nodes.filter((n) => pos.has(n.node_id)).sort((a, b) => pos.get(a.node_id)[1] - pos.get(b.node_id)[1]);
  const labels = [];
  const shown = [];
  for (const n of placed) {
    const [x, y] = pos.get(n.node_id);
    const r = 5 + 1.6 * Math.sqrt(n.max_workers);
    const ring = r + 4.5;
    const circ = 2 * Math.PI * ring;
    const load = n.max_workers > 0 ? Math.min(1, n.running / n.max_workers) : 0;
    // Keep labels of nearby nodes from overlapping.
    let ly = y + 4;
    for (const other of labels) {
      if (Math.abs(other.x - x) < 120 && Math.abs(other.y - ly) < 24) ly = other.y + 24;
    }
    labels.push({ x, y: ly });
    const { g, parts } = marker(n.node_id);
    g.setAttribute('class', 'marker ' + n.status + (n.running > 0 ? ' busy' : ''));
    g.setAttribute('transform', 'translate(' + x.toFixed(1) + ' ' + y.toFixed(1) + ')');
    g.setAttribute('aria-label', n.node_id + ', ' + n.status + ', ' + n.running + ' of ' + n.max_workers + ' workers busy');
    g.dataset.status = n.status;
    parts.halo.setAttribute('r', ring + 5);
    parts.track.setAttribute('r', ring);
    parts.load.setAttribute('r', ring);
    parts.load.setAttribute('stroke-dasharray', (circ * load).toFixed(1) + ' ' + circ.toFixed(1));
    parts.core.setAttribute('r', r);
    parts.name.setAttribute('x', ring + 6);
    parts.name.setAttribute('y', ly - y - 2);
    parts.city.setAttribute('x', ring + 6);
    parts.city.setAttribute('y', ly - y + 10);
    parts.city.textContent = n.place.city + ' · ' + n.running + '/' + n.max_workers;
    shown.push(g);
  }
  const layer = $('markers');
  for (const [id, m] of markerEls) {
    if (!shown.includes(m.g)) { m.g.remove(); markerEls.delete(id); }
  }
  shown.forEach((g) => { if (g.parentNode !== layer) layer.append(g); });
  const unplaced = nodes.filter((n) => !pos.has(n.node_id));
  $('unplaced').hidden = unplaced.length === 0;
  $('unplaced').textContent = unplaced.length
    ? 'Not on the map (unknown region): ' + unplaced.map((n) => n.node_id + ' (' + n.region + ')').join(', ')
    : '';
  if (tipNode) showTip(tipNode);
}

let tipNode = null;

function showTip(nodeId) {
  const n = last && last.nodes.find((x) => x.node_id === nodeId);
  const marker = document.querySelector('#markers [data-node-id="' + CSS.escape(nodeId) + '"]');
  if (!n || !marker) { hideTip(); return; }
  tipNode = nodeId;
  const m = n.metrics;
  const done = n.jobs_succeeded + n.jobs_failed;
  const tip = $('tooltip');
  tip.replaceChildren(
    h('h3', {}, n.node_id, h('span', { class: 'badge ' + n.status }, n.status)),
    h('div', { class: 'where' }, (n.place ? n.place.city + ' · ' : '') + n.region),
    h('div', { class: 'caps' }, n.capabilities.map((c) => h('span', { class: 'cap' }, c))),
    h('dl', {},
      h('dt', {}, 'backend'), h('dd', {}, n.backend + (n.gpu ? ' · GPU' : '') + (n.models.length ? ' · ' + n.models.slice(0, 2).join(', ') : '')),
      h('dt', {}, 'load'), h('dd', {}, bar(n.running / Math.max(1, n.max_workers)), n.running + ' / ' + n.max_workers + ' workers'),
      h('dt', {}, 'cpu'), h('dd', {}, m ? [bar(m.cpu_percent / 100), m.cpu_percent.toFixed(0) + '%'] : '–'),
      h('dt', {}, 'memory'), h('dd', {}, m ? [bar(m.mem_used_bytes / Math.max(1, m.mem_total_bytes)), bytes(m.mem_used_bytes) + ' / ' + bytes(m.mem_total_bytes)] : '–'),
      h('dt', {}, 'round trip'), h('dd', {}, n.rtt_ms === null ? '–' : n.rtt_ms + ' ms'),
      h('dt', {}, 'jobs'), h('dd', {}, n.jobs_succeeded + ' done · ' + n.jobs_failed + ' failed · ' + pct(n.jobs_succeeded, done) + ' ok'),
      h('dt', {}, 'last hour'), h('dd', {}, 'mean ' + ms(n.recent.mean_response_ms) + ' · ' + (n.recent.tokens_per_s === null ? '–' : n.recent.tokens_per_s.toFixed(0)) + ' tok/s'),
      h('dt', {}, 'gateway'), h('dd', {}, n.recent.gateway_requests ? n.recent.gateway_requests + ' requests' + (n.recent.gateway_tokens_per_s === null ? '' : ' · ' + n.recent.gateway_tokens_per_s.toFixed(0) + ' tok/s') : 'no requests'),
      h('dt', {}, 'seen'), h('dd', {}, age(now() - n.last_heartbeat_at) + ' ago'),
    ),
  );
  applyBarWidths(tip);
  tip.hidden = false;
  const wrap = $('map-wrap').getBoundingClientRect();
  const box = marker.getBoundingClientRect();
  let left = box.right - wrap.left + 10;
  if (left + 280 > wrap.width) left = box.left - wrap.left - 280;
  let top = box.top - wrap.top - 10;
  top = Math.max(4, Math.min(top, wrap.height - tip.offsetHeight - 4));
  tip.style.left = Math.max(4, left) + 'px';
  tip.style.top = top + 'px';
}

function hideTip() {
  tipNode = null;
  $('tooltip').hidden = true;
}

function renderNodes(nodes) {
  $('nodes-empty').hidden = nodes.length > 0;
  $('nodes').replaceChildren(...nodes.map((n) => {
    const m = n.metrics;
    const done = n.recent.succeeded + n.recent.failed;
    return h('tr', { dataset: { nodeId: n.node_id } },
      h('td', {}, h('b', {}, n.node_id)),
      h('td', { title: n.region }, n.place ? n.place.city : n.region),
      h('td', {}, h('span', { class: 'badge ' + n.status }, n.status)),
      h('td', {}, bar(n.running / Math.max(1, n.max_workers)), n.running + '/' + n.max_workers),
      h('td', {}, m ? [bar(m.cpu_percent / 100), m.cpu_percent.toFixed(0) + '%'] : '–'),
      h('td', {}, m ? [bar(m.mem_used_bytes / Math.max(1, m.mem_total_bytes)), pct(m.mem_used_bytes, m.mem_total_bytes)] : '–'),
      h('td', { class: 'num' }, n.rtt_ms === null ? '–' : n.rtt_ms + ' ms'),
      h('td', { class: 'num' }, n.recent.succeeded + ' / ' + n.recent.failed),
      h('td', { class: 'num' }, pct(n.recent.succeeded, done)),
      h('td', { class: 'num' }, ms(n.recent.mean_response_ms)),
      h('td', { class: 'num' }, n.recent.tokens_per_s === null ? '–' : n.recent.tokens_per_s.toFixed(0)),
      h('td', { class: 'num gateway', dataset: { requests: n.recent.gateway_requests || 0 } }, gateway(n.recent)),
      h('td', { class: 'num', dataset: { at: n.last_heartbeat_at } }, age(now() - n.last_heartbeat_at)),
    );
  }));
}

function renderQueue(st) {
  const t = st.totals;
  const kinds = new Map();
  for (const row of st.queue) {
    if (!kinds.has(row.kind)) kinds.set(row.kind, { queued: 0, scheduled: 0, leased: 0, oldest: null });
    const k = kinds.get(row.kind);
    k[row.state] += row.jobs;
    if (row.state === 'queued' && row.oldest_at) k.oldest = k.oldest ? Math.min(k.oldest, row.oldest_at) : row.oldest_at;
  }
  const max = Math.max(1, ...[...kinds.values()].map((k) => k.queued + k.scheduled + k.leased));
  $('queue-sub').textContent = t.submitted + ' submitted · ' + t.succeeded + ' succeeded · ' + t.dead + ' dead';
  const rows = [...kinds.entries()].sort().map(([kind, k]) => {
    const total = k.queued + k.scheduled + k.leased;
    return h('div', { class: 'qrow', dataset: { kind } },
      h('span', {}, h('b', {}, kind)),
      h('span', { class: 'meta' }, k.queued + ' queued · ' + k.scheduled + ' scheduled · ' + k.leased + ' running' + (k.oldest ? ' · oldest ' + age(now() - k.oldest) : '')),
      h('div', { class: 'qbar', title: total + ' jobs' },
        h('i', { class: 'queued', dataset: { w: k.queued / max } }),
        h('i', { class: 'scheduled', dataset: { w: k.scheduled / max } }),
        h('i', { class: 'leased', dataset: { w: k.leased / max } })),
    );
  });
  $('queue').replaceChildren(
    h('div', { class: 'totals' },
      h('div', { class: 'total' }, h('b', {}, t.queued), h('span', {}, 'queued')),
      h('div', { class: 'total' }, h('b', {}, t.leased), h('span', {}, 'running')),
      h('div', { class: 'total' }, h('b', {}, t.scheduled), h('span', {}, 'scheduled'))),
    ...(rows.length ? rows : [h('p', { class: 'empty' }, 'Nothing waiting.')]),
  );
}

// Usage per submitter over the last day: an API key by its name (and id),
// `local` and the like as they are.
function renderKeys(keys) {
  const rows = keys.map((k) => h('tr', { dataset: { key: k.key || '' } },
    h('td', {}, k.key_name ? h('span', {}, h('b', {}, k.key_name), ' ', h('span', { class: 'meta' }, k.key || '')) : (k.key || '–')),
    h('td', { class: 'num' }, String(k.requests)),
    h('td', { class: 'num' }, String(k.prompt_tokens)),
    h('td', { class: 'num' }, String(k.completion_tokens)),
    h('td', { class: 'num' }, ms(k.llm_ms))));
  $('keys').replaceChildren(...rows);
  $('keys-empty').hidden = rows.length > 0;
}

// The router's decision, when recorded: JSON such as {"chosen", "how",
// "note", "ranked": [{node, terms: {total, …}}], "excluded": {node: why}}
// (plain text is shown as it is).
function parseRoute(text) {
  if (!text) return null;
  if (typeof text === 'object') return text;
  try {
    const r = JSON.parse(text);
    return r && typeof r === 'object' ? r : null;
  } catch (_) {
    return null;
  }
}

function routeSummary(text) {
  const r = parseRoute(text);
  if (!r) return text || '';
  const parts = [];
  if (r.note) parts.push(r.note);
  if (r.how) parts.push('via ' + r.how);
  const best = Array.isArray(r.ranked) ? r.ranked.find((x) => x.node === r.chosen) : null;
  if (best && best.terms && typeof best.terms.total === 'number') parts.push('score ' + best.terms.total.toFixed(2));
  const excluded = r.excluded ? Object.keys(r.excluded).length : 0;
  if (excluded) parts.push(excluded + ' excluded');
  return parts.join(' · ');
}

function why(job) {
  if (job.state === 'dead' && job.last_error) return job.last_error;
  if (job.state === 'queued' && job.queue_reason) return job.queue_reason;
  if (job.route_reason) return routeSummary(job.route_reason);
  if (job.queue_reason) return job.queue_reason;
  if (job.last_error) return 'retry: ' + job.last_error;
  return job.state === 'queued' ? 'waiting for a free worker or a node that may run it' : '';
}

function routeDetails(text) {
  const r = parseRoute(text);
  if (!r) return text ? [h('h4', {}, 'Route'), h('p', {}, text)] : [];
  const ranked = Array.isArray(r.ranked) ? r.ranked : [];
  return [
    h('h4', {}, 'Route'),
    h('p', {}, (r.chosen ? 'Chose ' + r.chosen + ': ' : '') + routeSummary(text)),
    ranked.length ? h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'node'), h('th', { class: 'num' }, 'score'), h('th', {}, 'terms'))),
      h('tbody', {}, ranked.map((x) => h('tr', {},
        h('td', {}, x.node),
        h('td', { class: 'num' }, x.terms && typeof x.terms.total === 'number' ? x.terms.total.toFixed(2) : '–'),
        h('td', { class: 'why' }, Object.entries(x.terms || {}).filter(([k, v]) => k !== 'total' && v).map(([k, v]) => k + ' ' + Number(v).toFixed(2)).join(', ') || '–'))))) : null,
    r.excluded ? h('ul', { class: 'excluded' }, Object.entries(r.excluded).map(([node, reason]) => h('li', {}, h('b', {}, node), ' ', reason))) : null,
  ];
}

// Rows are kept while their job is unchanged, so a row being clicked or
// hovered is never swapped under the pointer.
const jobRows = new Map();

function renderJobs(jobs) {
  $('jobs-empty').hidden = jobs.length > 0;
  const first = seenJobs.size === 0;
  const rows = jobs.map((j) => {
    const sig = JSON.stringify(j);
    const cached = jobRows.get(j.id);
    if (cached && cached.sig === sig) return cached.tr;
    const fresh = !first && !seenJobs.has(j.id);
    seenJobs.add(j.id);
    const reason = why(j);
    const tr = h('tr', {
      class: 'job' + (fresh ? ' fresh' : ''), tabindex: 0,
      dataset: { jobId: j.id, state: j.state, node: j.node_id || '' },
      onclick: () => openDrawer(j.id),
      onkeydown: (e) => { if (e.key === 'Enter') openDrawer(j.id); },
    },
      h('td', {}, '#' + j.id),
      h('td', {}, h('span', { class: 'badge ' + j.state }, j.state)),
      h('td', {}, j.kind, j.confidential ? h('span', { class: 'conf', title: 'confidential: prompt and result sealed' }, 'conf') : null),
      h('td', {}, j.node_id || '–'),
      h('td', { class: 'why', title: reason }, reason || '–'),
      h('td', { class: 'num', dataset: { at: j.created_at } }, age(now() - j.created_at)),
    );
    if (fresh) tr.addEventListener('animationend', () => tr.classList.remove('fresh'), { once: true });
    jobRows.set(j.id, { sig, tr });
    return tr;
  });
  const keep = new Set(jobs.map((j) => j.id));
  for (const id of jobRows.keys()) if (!keep.has(id)) jobRows.delete(id);
  const body = $('jobs');
  const same = rows.length === body.children.length && rows.every((tr, i) => body.children[i] === tr);
  if (!same) body.replaceChildren(...rows);
}

// Ages tick between updates without rebuilding anything.
function tickAges() {
  document.querySelectorAll('[data-at]').forEach((el) => {
    el.textContent = age(now() - Number(el.dataset.at));
  });
}

// ---- job drawer ----------------------------------------------------------

async function openDrawer(id) {
  openJob = id;
  $('drawer').hidden = false;
  $('drawer-title').textContent = 'Job #' + id;
  $('drawer-body').replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
  const res = await fetch('/v1/jobs/' + encodeURIComponent(id), { credentials: 'same-origin' });
  if (openJob !== id) return;
  if (!res.ok) {
    $('drawer-body').replaceChildren(h('p', { class: 'error' }, 'Could not load the job (' + res.status + ').'));
    return;
  }
  const d = await res.json();
  const j = d.job;
  const out = j.output;
  $('drawer-body').replaceChildren(
    h('dl', { class: 'kv' },
      h('dt', {}, 'state'), h('dd', {}, h('span', { class: 'badge ' + j.state }, j.state)),
      h('dt', {}, 'kind'), h('dd', {}, j.kind + (j.model ? ' · ' + j.model : '')),
      h('dt', {}, 'node'), h('dd', {}, j.node_id || '–'),
      h('dt', {}, 'attempts'), h('dd', {}, j.attempts + ' / ' + j.max_attempts),
      h('dt', {}, 'priority'), h('dd', {}, j.priority),
      h('dt', {}, 'submitted'), h('dd', {}, utc(j.created_at) + (j.submitted_by ? ' by ' + j.submitted_by : '')),
      h('dt', {}, 'finished'), h('dd', {}, utc(j.finished_at)),
      j.queue_reason ? [h('dt', {}, 'waiting'), h('dd', {}, j.queue_reason)] : null,
      j.last_error ? [h('dt', {}, 'last error'), h('dd', {}, j.last_error)] : null,
      out ? [h('dt', {}, 'usage'), h('dd', {}, out.usage.prompt_tokens + ' + ' + out.usage.completion_tokens + ' tokens · ' + ms(out.usage.duration_ms))] : null,
      j.redacted ? [h('dt', {}, 'result'), h('dd', {}, 'confidential: withheld')] : null,
    ),
    d.attempts.length ? h('h4', {}, 'Attempts') : null,
    d.attempts.length ? h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, '#'), h('th', {}, 'node'), h('th', {}, 'outcome'), h('th', { class: 'num' }, 'took'))),
      h('tbody', {}, d.attempts.map((a) => h('tr', {},
        h('td', {}, a.attempt), h('td', {}, a.node_id), h('td', { title: a.error || '' }, a.outcome),
        h('td', { class: 'num' }, a.finished_at ? ms(a.finished_at - a.started_at) : '–'))))) : null,
    ...routeDetails(j.route_reason || (last && (last.latest_jobs.find((x) => x.id === j.id) || {}).route_reason)),
    h('h4', {}, 'Events'),
    h('ol', { class: 'timeline' }, d.events.map((e) => h('li', {},
      h('div', {}, h('b', {}, (e.from_state ? e.from_state + ' → ' : '') + e.to_state), e.node_id ? ' on ' + e.node_id : ''),
      h('div', { class: 't' }, utc(e.at)),
      e.detail ? h('div', { class: 'd' }, e.detail) : null))),
  );
}

function closeDrawer() {
  openJob = null;
  $('drawer').hidden = true;
}

// ---- boot ----------------------------------------------------------------

document.addEventListener('DOMContentLoaded', async () => {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('drawer-close').addEventListener('click', closeDrawer);
  for (const b of document.querySelectorAll('.span-switch button')) b.addEventListener('click', () => chooseSpan(b.dataset.span));
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape') closeDrawer(); });
  // Ages tick between updates.
  setInterval(tickAges, 1000);
  try {
    world = await (await fetch('/assets/world.json')).json();
    drawWorld();
  } catch (_) { /* the map stays blank; everything else works */ }
  await start();
});
