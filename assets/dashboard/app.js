// vpd in the browser: the dashboard (one EventSource on /events keeps it current) and, where the
// server serves the web application (/api/), sign-in, uploads, controls, charts, the player and
// history. No framework, no external requests.
// Events: `snapshot` (every job and the broker link, sent first and after falling behind),
// `job` (one job changed), `frame` (a job has a new thumbnail), `link` (the broker link).
'use strict';

const jobs = new Map();     // id -> job view, as /jobs/{id} gives it
let order = [];             // ids, newest first
let selected = null;        // the job whose detail is shown
let chosen = false;         // whether the user picked it (else the newest running job is followed)
let link = {};
let source = null;
let me = null;              // /api/me, where the web application is served
let catalogue = null;       // /api/catalogue
const details = new Map();  // id -> /api/jobs/{id}: record, charts, files
const samples = new Map();  // id -> throughput samples [seconds, fps] of the live chart
const loading = new Set();  // ids whose detail is being fetched
let steps = [];             // the chain being built: [{def, values}]
let historyNext = null;

const $ = (selector) => document.querySelector(selector);
const el = (tag, props = {}, ...children) => {
  const e = document.createElement(tag);
  Object.assign(e, props);
  e.append(...children);
  return e;
};

// ---- the server's API --------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers);
  if (options.method && options.method !== 'GET' && me && me.csrf) headers['X-CSRF-Token'] = me.csrf;
  const response = await fetch(path, Object.assign({ credentials: 'same-origin' }, options, { headers }));
  const type = response.headers.get('content-type') || '';
  const body = type.includes('json') ? await response.json() : await response.text();
  if (!response.ok) {
    const message = (body && body.error) || String(body).trim() || response.statusText;
    throw Object.assign(new Error(message), { status: response.status });
  }
  return body;
}

async function boot() {
  try {
    me = await api('api/me');
  } catch (e) {
    me = null;  // a dashboard without the web application (vpd preview), or signed out of it
  }
  if (me && me.tokens_required && !me.signed_in) {
    showSignIn();
    return;
  }
  start();
}

function showSignIn() {
  $('#signin').hidden = false;
  document.querySelector('main').hidden = true;
  $('#token').focus();
}

function start() {
  $('#signin').hidden = true;
  document.querySelector('main').hidden = false;
  if (me) {
    $('#who').hidden = !me.tokens_required;
    $('#who-name').textContent = `signed in as ${me.name}`;
    $('#history-section').hidden = false;
    loadHistory(true);
    if (me.may_change) loadCatalogue();
  }
  connect();
}

$('#signin-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const error = $('#signin-error');
  error.hidden = true;
  try {
    const body = new URLSearchParams({ token: $('#token').value });
    await api('api/login', { method: 'POST', body });
    $('#token').value = '';
    me = await api('api/me');
    start();
  } catch (e) {
    error.textContent = e.status === 401 ? 'That token is not right.' : e.message;
    error.hidden = false;
    // Selected: what is typed next replaces it.
    $('#token').select();
  }
});

$('#signout').addEventListener('click', async () => {
  try { await api('api/logout', { method: 'POST' }); } catch (e) { /* signed out anyway */ }
  location.reload();
});

// ---- the live board ----------------------------------------------------------------------

function connect() {
  source = new EventSource('events');
  source.addEventListener('open', () => setStream('live'));
  source.addEventListener('error', () => {
    setStream('reconnecting');
    // The browser retries by itself unless the stream is closed for good (a bad response).
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
  });
  source.addEventListener('snapshot', (e) => {
    const data = JSON.parse(e.data);
    jobs.clear();
    order = [];
    for (const job of data.jobs) {
      jobs.set(job.id, job);
      order.push(job.id);
    }
    link = data.link;
    if (selected && !jobs.has(selected) && !details.has(selected)) {
      selected = null;
      chosen = false;
    }
    renderAll();
  });
  source.addEventListener('job', (e) => {
    const job = JSON.parse(e.data);
    const before = jobs.get(job.id);
    if (!before) order.unshift(job.id);
    jobs.set(job.id, job);
    sample(job);
    if (before && before.status !== job.status) {
      // Its files and final charts: ask again once it ends; history shows it.
      if (FINAL.includes(job.status)) {
        if (job.id === selected) loadDetail(job.id);
        if (me) loadHistory(true);
      }
    }
    renderAll();
  });
  source.addEventListener('frame', (e) => {
    const frame = JSON.parse(e.data);
    const job = jobs.get(frame.job);
    if (job) job.frame_index = frame.index;
    if (frame.job === selected) showFrame(job);
  });
  source.addEventListener('link', (e) => {
    link = JSON.parse(e.data);
    renderLink();
  });
}

/// A throughput point for the live chart, from a progress update.
function sample(job) {
  if (job.status !== 'running' || !(job.fps > 0)) return;
  const points = samples.get(job.id) || [];
  const t = job.progress.elapsed_ms / 1000;
  if (points.length && points[points.length - 1][0] >= t) return;
  points.push([t, job.fps]);
  if (points.length > 600) points.splice(0, points.length, ...points.filter((_, i) => i % 2 === 0));
  samples.set(job.id, points);
}

function setStream(state) {
  const pill = $('#stream');
  pill.dataset.state = state;
  pill.textContent = state === 'live' ? 'live' : 'reconnecting…';
  $('#banner').hidden = state === 'live';
}

function renderLink() {
  const pill = $('#broker');
  if (link.broker_connected === null || link.broker_connected === undefined) {
    pill.dataset.state = 'none';
    pill.textContent = '';
    return;
  }
  pill.dataset.state = link.broker_connected ? 'up' : 'down';
  if (!link.broker_connected) {
    pill.textContent = 'RabbitMQ lost — reconnecting…';
  } else {
    const depth = link.queue_depth;
    pill.textContent = 'RabbitMQ connected' + (depth === null || depth === undefined ? '' : ` · ${depth} tasks queued`);
  }
}

function renderAll() {
  if (!chosen) {
    selected = order.find((id) => jobs.get(id).status === 'running') || order[0] || null;
    if (selected && me && !details.has(selected)) loadDetail(selected);
  }
  renderJobs();
  renderDetail();
  renderLink();
}

function renderJobs() {
  const rows = order.map((id) => jobRow(jobs.get(id)));
  $('#jobs tbody').replaceChildren(...rows);
  $('#no-jobs').hidden = order.length > 0;
}

/// A row the keyboard can reach: Tab to it, Enter or Space opens the job.
function pickable(tr, id) {
  tr.tabIndex = 0;
  const pick = () => select(id);
  tr.addEventListener('click', pick);
  tr.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      pick();
    }
  });
}

function select(id) {
  selected = id;
  chosen = true;
  if (me) loadDetail(id);
  renderAll();
  $('#detail').scrollIntoView({ block: 'nearest' });
}

function jobRow(job) {
  const tr = document.createElement('tr');
  tr.dataset.job = job.id;
  tr.dataset.status = job.status;
  tr.dataset.percent = String(Math.floor(job.percent));
  if (job.id === selected) tr.className = 'selected';
  pickable(tr, job.id);
  const p = job.progress;
  const total = p.total === null ? '?' : p.total;
  cells(tr, [
    [job.id, ''],
    [(job.filters || '—').replaceAll(',', ',\u200b'), 'filters'],  // breaks between filters only
    [job.status, `status ${job.status}`],
    [progressBar(job), ''],
    [`${p.done} / ${total}`, 'num'],
    [job.fps.toFixed(1), 'num'],
    [job.status === 'running' ? eta(job.eta_seconds) : '—', 'num'],
    [String(p.retries), 'num'],
    [String(p.failed), p.failed > 0 ? 'num bad' : 'num'],
  ]);
  return tr;
}

function cells(tr, specs) {
  for (const [content, className] of specs) {
    const td = document.createElement('td');
    if (className) td.className = className;
    if (typeof content === 'string') td.textContent = content;
    else td.append(content);
    tr.append(td);
  }
}

function progressBar(job) {
  const fill = el('div');
  fill.style.width = `${job.percent}%`;
  const label = el('span', { className: 'percent', textContent: `${Math.floor(job.percent)}%` });
  return el('div', { className: 'bar' }, fill, label);
}

function eta(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return '—';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, '0')}m`;
}

// ---- one job -----------------------------------------------------------------------------

const FINAL = ['done', 'failed', 'cancelled'];

async function loadDetail(id, tries = 0) {
  if (loading.has(id)) return;
  loading.add(id);
  try {
    const detail = await api(`api/jobs/${encodeURIComponent(id)}`);
    details.set(id, detail);
    // The board hears of a job's end a moment before its record has it: ask again shortly.
    const board = jobs.get(id);
    if (board && FINAL.includes(board.status) && detail.record.state !== board.status && tries < 20) {
      setTimeout(() => loadDetail(id, tries + 1), 250);
    }
    const kept = detail.charts && detail.charts.throughput;
    if (kept && kept.length >= (samples.get(id) || []).length) samples.set(id, kept.slice());
    if (id === selected) renderDetail();
  } catch (e) {
    if (e.status === 401) location.reload();
  } finally {
    loading.delete(id);
  }
}

/// The view of a job the board no longer holds, from its record.
function viewOf(record) {
  const s = record.summary;
  return {
    id: record.id, status: record.state, filters: record.chain,
    percent: record.state === 'done' ? 100 : 0, fps: s ? s.fps : 0, eta_seconds: null,
    width: s ? s.width : 0, height: s ? s.height : 0, video_fps: s ? s.video_fps : 0,
    progress: { done: s ? s.frames : 0, total: s ? s.frames : null, retries: s ? s.retries : 0, failed: s ? s.failed_frames : 0, in_flight: 0, elapsed_ms: s ? s.wall_seconds * 1000 : 0, latency: [] },
    workers: Object.fromEntries(Object.entries(s ? s.workers : {}).map(([w, n]) => [w, { frames: n, fps: 0 }])),
    frame_index: null, summary: s, error: record.error,
  };
}

function renderDetail() {
  const detail = selected ? details.get(selected) : null;
  const job = selected ? (jobs.get(selected) || (detail && viewOf(detail.record))) : null;
  $('#detail').hidden = !job;
  if (!job) return;
  $('#detail').dataset.job = job.id;
  $('#detail-id').textContent = job.id;
  const status = $('#detail-status');
  status.textContent = job.status;
  status.className = `status ${job.status}`;
  const p = job.progress;
  const size = job.width ? `${job.width}×${job.height} at ${job.video_fps.toFixed(2)} fps · ` : '';
  const name = detail ? `${detail.record.input_name} · ` : '';
  // A live stream: what it read, dropped to keep up and lost, and its latency, as it runs.
  const live = p.live
    ? ` · live: ${p.live.read} read, ${p.live.dropped} dropped, latency p50 ${p.live.latency_ms.p50.toFixed(0)} ms ` +
      `p99 ${p.live.latency_ms.p99.toFixed(0)} ms` + (p.live.reconnects ? `, input lost ${p.live.reconnects}×` : '')
    : '';
  $('#detail-line').textContent =
    `${name}${size}${job.filters || 'filters unknown'} · ${(p.elapsed_ms / 1000).toFixed(1)} s · ` +
    `${p.in_flight} ${p.in_flight === 1 ? 'frame' : 'frames'} in flight${live}`;
  const workers = Object.entries(job.workers).map(([id, w]) => {
    const tr = document.createElement('tr');
    cells(tr, [[id, ''], [String(w.frames), 'num'], [w.fps.toFixed(1), 'num']]);
    return tr;
  });
  $('#workers tbody').replaceChildren(...workers);
  renderSummary(job);
  const error = $('#error');
  error.hidden = !job.error;
  error.textContent = job.error || '';
  renderControls(job, detail);
  renderPlayer(job, detail);
  renderCharts(job, detail);
  showFrame(job);
}

function renderSummary(job) {
  const dl = $('#summary');
  const s = job.summary;
  dl.hidden = !s;
  if (!s) return;
  const items = [
    ['Frames', `${s.frames} (${s.failed_frames} failed, ${s.retries} retries)`],
    ['Wall time', `${s.wall_seconds.toFixed(2)} s · ${s.fps.toFixed(1)} fps`],
    ['Latency p50 / p95 / p99', `${s.latency_ms.p50.toFixed(1)} / ${s.latency_ms.p95.toFixed(1)} / ${s.latency_ms.p99.toFixed(1)} ms`],
    ['Filter time p50 / p95', `${s.filter_latency_ms.p50.toFixed(1)} / ${s.filter_latency_ms.p95.toFixed(1)} ms`],
  ];
  if (s.live) {
    const l = s.live.latency_ms;
    items.push(['Live', `${s.live.read} read, ${s.live.dropped} dropped, input lost ${s.live.reconnects}×`]);
    items.push(['Read to written p50 / p99', `${l.p50.toFixed(1)} / ${l.p99.toFixed(1)} ms`]);
  }
  dl.replaceChildren(...items.flatMap(([k, v]) => [el('dt', { textContent: k }), el('dd', { textContent: v })]));
}

function showFrame(job) {
  const img = $('#frame');
  const caption = $('#frame-caption');
  if (!job || job.frame_index === null || job.frame_index === undefined) {
    img.removeAttribute('src');
    delete img.dataset.index;
    caption.textContent = job && job.status !== 'running' ? 'no frame to show' : 'waiting for the first frame…';
    return;
  }
  const index = String(job.frame_index);
  if (img.dataset.job === job.id && img.dataset.index === index) return;
  img.dataset.job = job.id;
  img.dataset.index = index;
  img.src = `jobs/${encodeURIComponent(job.id)}/frame.jpg?frame=${index}`;
  caption.textContent = `frame ${job.frame_index + 1}`;
}

// ---- controls ----------------------------------------------------------------------------

function renderControls(job, detail) {
  const can = !!(me && me.may_change);
  const live = ['running', 'queued', 'paused'].includes(job.status);
  $('#controls').hidden = !me;
  $('#pause').hidden = !can || !['running', 'queued'].includes(job.status);
  $('#resume').hidden = !can || job.status !== 'paused';
  $('#cancel').hidden = !can || !live;
  $('#rerun').hidden = !can || live || !detail || !detail.source;
  const download = $('#download');
  download.hidden = !(detail && detail.result);
  if (detail && detail.result) download.href = `api/jobs/${encodeURIComponent(job.id)}/result?download=1`;
}

async function control(action) {
  const error = $('#control-error');
  error.hidden = true;
  try {
    const answer = await api(`api/jobs/${encodeURIComponent(selected)}/${action}`, { method: 'POST' });
    if (action === 'rerun') select(answer.job);
    loadHistory(true);
  } catch (e) {
    error.textContent = e.message;
    error.hidden = false;
  }
}
for (const action of ['pause', 'resume', 'cancel', 'rerun']) {
  $(`#${action}`).addEventListener('click', () => control(action));
}

// ---- the player --------------------------------------------------------------------------

function renderPlayer(job, detail) {
  const player = $('#player');
  const result = $('#result');
  const ready = !!(detail && detail.result);
  player.hidden = !ready;
  $('#live').hidden = ready;
  if (!ready) {
    if (result.dataset.job) {
      result.removeAttribute('src');
      delete result.dataset.job;
      result.load();
    }
    return;
  }
  if (result.dataset.job !== job.id) {
    result.dataset.job = job.id;
    result.src = `api/jobs/${encodeURIComponent(job.id)}/result`;
    const original = $('#original');
    if (detail.source) original.src = `api/jobs/${encodeURIComponent(job.id)}/source`;
    else original.removeAttribute('src');
    $('#compare').disabled = !detail.source;
    setCompare(detail.source ? $('#compare').value : 'off');
  }
}

function setCompare(mode) {
  $('#screens').dataset.mode = mode;
  $('#original').hidden = mode === 'off';
  $('#original').controls = mode === 'side';
  $('#slider-label').hidden = mode !== 'slider';
  clip();
}

function clip() {
  const v = Number($('#slider').value);
  $('#original').style.clipPath = $('#screens').dataset.mode === 'slider' ? `inset(0 ${100 - v}% 0 0)` : '';
}

$('#compare').addEventListener('change', (e) => setCompare(e.target.value));
$('#slider').addEventListener('input', clip);
// The original follows the result: play, pause and seek together.
for (const type of ['play', 'pause', 'seeked', 'ratechange']) {
  $('#result').addEventListener(type, () => {
    const [r, o] = [$('#result'), $('#original')];
    if (o.hidden || !o.src) return;
    if (Math.abs(o.currentTime - r.currentTime) > 0.05) o.currentTime = r.currentTime;
    o.playbackRate = r.playbackRate;
    if (type === 'play') o.play().catch(() => {});
    if (type === 'pause') o.pause();
  });
}

// ---- charts (plain SVG) ------------------------------------------------------------------

const NS = 'http://www.w3.org/2000/svg';
const svg = (tag, attrs, text) => {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
};
const W = 400, H = 120, L = 34, B = 18, T = 6;

function axes(chart, yMax, xLabel) {
  chart.append(
    svg('line', { class: 'axis', x1: L, y1: H - B, x2: W, y2: H - B }),
    svg('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }),
    svg('text', { x: L - 4, y: T + 8, 'text-anchor': 'end' }, fmt(yMax)),
    svg('text', { x: L - 4, y: H - B, 'text-anchor': 'end' }, '0'),
  );
  if (xLabel) chart.append(svg('text', { x: W, y: H - 4, 'text-anchor': 'end' }, xLabel));
}

function fmt(n) {
  return n >= 100 ? String(Math.round(n)) : n >= 10 ? n.toFixed(0) : n.toFixed(1);
}

function lineChart(chart, points) {
  chart.replaceChildren();
  chart.dataset.points = String(points.length);
  const tMax = Math.max(1, ...points.map((p) => p[0]));
  const yMax = Math.max(1, ...points.map((p) => p[1])) * 1.1;
  axes(chart, yMax, `${fmt(tMax)} s`);
  if (!points.length) return;
  // The first point drawn since the page loaded, for anyone timing the page (BENCHMARKS.md).
  if (!performance.getEntriesByName('vpd:first-chart-point').length) performance.mark('vpd:first-chart-point');
  const x = (t) => L + (t / tMax) * (W - L);
  const y = (v) => H - B - (v / yMax) * (H - B - T);
  const d = points.map((p, i) => `${i ? 'L' : 'M'}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(' ');
  chart.append(svg('path', { class: 'line', d }));
}

function barChart(chart, values, labels) {
  chart.replaceChildren();
  const total = values.reduce((a, b) => a + b, 0);
  chart.dataset.total = String(total);
  chart.dataset.bars = String(values.filter((v) => v > 0).length);
  const yMax = Math.max(1, ...values);
  axes(chart, yMax);
  const n = Math.max(1, values.length);
  const slot = (W - L) / n;
  values.forEach((v, i) => {
    const h = (v / yMax) * (H - B - T);
    const x = L + i * slot + slot * 0.15;
    const bar = svg('rect', { x: x.toFixed(1), y: (H - B - h).toFixed(1), width: (slot * 0.7).toFixed(1), height: h.toFixed(1) });
    bar.append(svg('title', {}, `${labels[i]}: ${v}`));
    chart.append(bar);
    if (n <= 8 || i % Math.ceil(n / 6) === 0) {
      chart.append(svg('text', { x: (L + i * slot + slot / 2).toFixed(1), y: H - 5, 'text-anchor': 'middle' }, labels[i]));
    }
  });
}

function latencyLabels(bounds) {
  const ms = (s) => (s < 1 ? `${s * 1000}ms` : `${s}s`);
  return bounds.map((b) => `≤${ms(b)}`).concat([`>${ms(bounds[bounds.length - 1])}`]);
}

function renderCharts(job, detail) {
  const kept = detail && detail.charts;
  const live = jobs.get(job.id);
  const points = samples.get(job.id) || (kept ? kept.throughput : []);
  lineChart($('#chart-throughput'), points);
  const bounds = (kept && kept.latency_bounds) || (catalogue && catalogue.latency_bounds) || [];
  let latency = live && live.progress.latency && live.progress.latency.length ? live.progress.latency : (kept ? kept.latency : []);
  if (!latency.length && bounds.length) latency = new Array(bounds.length + 1).fill(0);
  barChart($('#chart-latency'), latency, latencyLabels(bounds));
  const workers = live ? Object.entries(live.workers).map(([w, v]) => [w, v.frames]) : Object.entries(kept ? kept.workers : {});
  barChart($('#chart-workers'), workers.map((w) => w[1]), workers.map((w) => w[0].length > 14 ? `${w[0].slice(0, 13)}…` : w[0]));
}

// ---- a new job ---------------------------------------------------------------------------

async function loadCatalogue() {
  try {
    catalogue = await api('api/catalogue');
  } catch (e) {
    return;
  }
  $('#new').hidden = false;
  $('#preset').append(...catalogue.presets.map((p) => el('option', { value: p.name, textContent: `${p.name} — ${p.chain}` })));
  $('#add-filter').append(...catalogue.filters.map((f) => el('option', { value: f.name, textContent: `${f.name} — ${f.help}` })));
  $('#codec').append(...catalogue.codecs.map((c) => el('option', { value: c, textContent: c })));
  $('#container').append(...catalogue.containers.map((c) => el('option', { value: c, textContent: c })));
  renderSteps();
}

/// A value as the chain parser takes it for `range`, or the parser's own words when not.
function checkValue(def, param, raw) {
  const r = param.range;
  let ok;
  if (r.kind === 'int') {
    const n = Number(raw);
    ok = /^-?\d+$/.test(raw.trim()) && ((r.or_zero && n === 0) || (n >= r.min && n <= r.max && (!r.odd || Math.abs(n % 2) === 1)));
  } else if (r.kind === 'number') {
    const n = Number(raw);
    ok = raw.trim() !== '' && isFinite(n) && n >= r.min && n <= r.max;
  } else {
    ok = r.words.includes(raw);
  }
  return ok ? null : `${def.name}: ${param.key}=${raw} is invalid: expected ${param.expected}`;
}

function chainText() {
  return steps.map((s) => [s.def.name, ...s.def.params.filter((p) => s.values[p.key] !== p.default).map((p) => `${p.key}=${s.values[p.key]}`)].join(':')).join(',');
}

function renderSteps() {
  const items = steps.map((step, i) => {
    const params = step.def.params.map((p) => {
      const id = `step${i}-${p.key}`;
      let input;
      if (p.range.kind === 'choice') {
        input = el('select', { id }, ...p.range.words.map((w) => el('option', { value: w, textContent: w })));
        input.value = step.values[p.key];
      } else {
        input = el('input', { id, value: step.values[p.key], inputMode: p.range.kind === 'int' ? 'numeric' : 'decimal' });
      }
      const hint = el('span', { className: 'hint', id: `${id}-hint` });
      const problem = checkValue(step.def, p, step.values[p.key]);
      hint.textContent = problem || '';
      input.setAttribute('aria-invalid', problem ? 'true' : 'false');
      input.setAttribute('aria-describedby', hint.id);
      input.addEventListener('input', () => {
        step.values[p.key] = input.value;
        const problem = checkValue(step.def, p, input.value);
        hint.textContent = problem || '';
        input.setAttribute('aria-invalid', problem ? 'true' : 'false');
        updateChain();
      });
      return el('label', { title: p.note }, `${p.key} `, input, hint);
    });
    const remove = el('button', { type: 'button', className: 'small', textContent: 'Remove' });
    remove.setAttribute('aria-label', `remove ${step.def.name}`);
    remove.addEventListener('click', () => {
      steps.splice(i, 1);
      renderSteps();
    });
    return el('li', { className: 'step' }, el('strong', { textContent: step.def.name }), ` ${step.def.help} `, remove, el('div', { className: 'params' }, ...params));
  });
  $('#chain-steps').replaceChildren(...items);
  updateChain();
}

$('#add').addEventListener('click', () => {
  const def = catalogue.filters.find((f) => f.name === $('#add-filter').value);
  if (!def) return;
  if (steps.length >= catalogue.max_chain) return;
  steps.push({ def, values: Object.fromEntries(def.params.map((p) => [p.key, p.default])) });
  renderSteps();
});

$('#preset').addEventListener('change', () => {
  $('#builder').hidden = !!$('#preset').value;
  updateChain();
});

let checking = 0;
let chainOk = false;
function updateChain() {
  const preset = $('#preset').value;
  const error = $('#chain-error');
  if (preset) {
    const p = catalogue.presets.find((x) => x.name === preset);
    $('#chain-text').textContent = p ? p.chain : preset;
    chainOk = true;
    error.hidden = true;
    updateStart();
    return;
  }
  const text = chainText();
  $('#chain-text').textContent = text || '—';
  chainOk = false;
  updateStart();
  if (!text) return;
  // The parser's own verdict: the same words as the command line's.
  const ticket = ++checking;
  api(`api/check?chain=${encodeURIComponent(text)}`).then((answer) => {
    if (ticket !== checking) return;
    chainOk = true;
    error.hidden = true;
    $('#chain-text').textContent = answer.chain;
    updateStart();
  }).catch((e) => {
    if (ticket !== checking) return;
    error.textContent = e.message;
    error.hidden = false;
  });
}

function updateStart() {
  $('#start').disabled = !(chainOk && $('#file').files.length === 1);
}

$('#file').addEventListener('change', () => {
  const file = $('#file').files[0];
  $('#drop-text').textContent = file ? `${file.name} (${(file.size / 1048576).toFixed(1)} MB)` : 'Drop a video here, or choose one';
  updateStart();
});

const drop = $('#drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  if (e.dataTransfer.files.length) {
    $('#file').files = e.dataTransfer.files;
    $('#file').dispatchEvent(new Event('change'));
  }
});

$('#new-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const file = $('#file').files[0];
  if (!file || !chainOk) return;
  const error = $('#upload-error');
  error.hidden = true;
  if (me.max_upload && file.size > me.max_upload) {
    error.textContent = `${file.name} is over this server's limit of ${(me.max_upload / 1048576).toFixed(0)} MB`;
    error.hidden = false;
    return;
  }
  const query = new URLSearchParams({ name: file.name, container: $('#container').value, codec: $('#codec').value });
  if ($('#preset').value) query.set('preset', $('#preset').value);
  else query.set('chain', $('#chain-text').textContent);
  if ($('#crf').value !== '') query.set('crf', $('#crf').value);
  const xhr = new XMLHttpRequest();
  xhr.open('POST', `api/jobs?${query}`);
  xhr.setRequestHeader('X-CSRF-Token', me.csrf);
  xhr.setRequestHeader('Content-Type', 'application/octet-stream');
  const bar = $('#upload-bar');
  const label = $('#upload-label');
  $('#upload').hidden = false;
  $('#upload').dataset.state = 'uploading';
  $('#start').disabled = true;
  xhr.upload.addEventListener('progress', (e) => {
    if (!e.lengthComputable) return;
    const percent = Math.floor((100 * e.loaded) / e.total);
    bar.style.width = `${percent}%`;
    label.textContent = `${percent}%`;
    $('#upload').dataset.percent = String(percent);
  });
  xhr.addEventListener('load', () => {
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
    if (xhr.status === 201) {
      $('#upload').dataset.state = 'done';
      label.textContent = 'uploaded';
      select(body.job);
      loadHistory(true);
    } else {
      $('#upload').dataset.state = 'failed';
      error.textContent = body.error || `the upload failed (${xhr.status})`;
      error.hidden = false;
    }
    updateStart();
  });
  xhr.addEventListener('error', () => {
    $('#upload').dataset.state = 'failed';
    error.textContent = 'the upload broke off';
    error.hidden = false;
    updateStart();
  });
  xhr.send(file);
});

// ---- history -----------------------------------------------------------------------------

async function loadHistory(fresh) {
  const before = fresh ? '' : `&before=${encodeURIComponent(historyNext)}`;
  let page;
  try {
    page = await api(`api/history?limit=20${before}`);
  } catch (e) {
    return;
  }
  const rows = page.jobs.map((r) => {
    const tr = document.createElement('tr');
    tr.dataset.job = r.id;
    tr.dataset.state = r.state;
    pickable(tr, r.id);
    const s = r.summary;
    cells(tr, [
      [r.id, ''],
      [r.input_name, ''],
      [r.chain.replaceAll(',', ',\u200b'), 'filters'],
      [r.state, `status ${r.state}`],
      [s ? `${s.wall_seconds.toFixed(1)} s` : '—', 'num'],
      [s ? s.fps.toFixed(1) : '—', 'num'],
      [new Date(r.created_ms).toLocaleString(), ''],
    ]);
    return tr;
  });
  if (fresh) $('#history tbody').replaceChildren(...rows);
  else $('#history tbody').append(...rows);
  historyNext = page.next;
  $('#history-more').hidden = !historyNext;
}

$('#history-more').addEventListener('click', () => loadHistory(false));

boot();
