// vpd dashboard: one EventSource on /events keeps the page current; no polling, no framework.
// Events: `snapshot` (every job and the broker link, sent first and after falling behind),
// `job` (one job changed), `frame` (a job has a new thumbnail), `link` (the broker link).
'use strict';

const jobs = new Map();   // id -> job view, as /jobs/{id} gives it
let order = [];           // ids, newest first
let selected = null;      // the job whose frame and workers are shown
let chosen = false;       // whether the user picked it (else the newest job is followed)
let link = {};
let source = null;

const $ = (selector) => document.querySelector(selector);

function connect() {
  source = new EventSource('events');
  source.addEventListener('open', () => setStream('live'));
  source.addEventListener('error', () => {
    setStream('reconnecting');
    // The browser retries by itself unless the stream is closed for good (a bad response).
    if (source.readyState === EventSource.CLOSED) {
      setTimeout(connect, 2000);
    }
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
    if (selected && !jobs.has(selected)) {
      selected = null;
      chosen = false;
    }
    renderAll();
  });
  source.addEventListener('job', (e) => {
    const job = JSON.parse(e.data);
    if (!jobs.has(job.id)) order.unshift(job.id);
    jobs.set(job.id, job);
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
  }
  renderJobs();
  renderDetail();
  renderLink();
}

function renderJobs() {
  const body = $('#jobs tbody');
  const rows = order.map((id) => jobRow(jobs.get(id)));
  body.replaceChildren(...rows);
  $('#no-jobs').hidden = order.length > 0;
}

function jobRow(job) {
  const tr = document.createElement('tr');
  tr.dataset.job = job.id;
  tr.dataset.status = job.status;
  tr.dataset.percent = String(Math.floor(job.percent));
  if (job.id === selected) tr.className = 'selected';
  tr.addEventListener('click', () => {
    selected = job.id;
    chosen = true;
    renderAll();
  });
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
  const bar = document.createElement('div');
  bar.className = 'bar';
  const fill = document.createElement('div');
  fill.style.width = `${job.percent}%`;
  const label = document.createElement('span');
  label.className = 'percent';
  label.textContent = `${Math.floor(job.percent)}%`;
  bar.append(fill, label);
  return bar;
}

function eta(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return '—';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, '0')}m`;
}

function renderDetail() {
  const job = selected ? jobs.get(selected) : null;
  $('#detail').hidden = !job;
  if (!job) return;
  $('#detail-id').textContent = job.id;
  const status = $('#detail-status');
  status.textContent = job.status;
  status.className = `status ${job.status}`;
  const p = job.progress;
  const size = job.width ? `${job.width}×${job.height} at ${job.video_fps.toFixed(2)} fps · ` : '';
  $('#detail-line').textContent =
    `${size}${job.filters || 'filters unknown'} · ${(p.elapsed_ms / 1000).toFixed(1)} s · ` +
    `${p.in_flight} ${p.in_flight === 1 ? 'frame' : 'frames'} in flight`;
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
  dl.replaceChildren(...items.flatMap(([k, v]) => {
    const dt = document.createElement('dt');
    dt.textContent = k;
    const dd = document.createElement('dd');
    dd.textContent = v;
    return [dt, dd];
  }));
}

function showFrame(job) {
  const img = $('#frame');
  const caption = $('#frame-caption');
  if (!job || job.frame_index === null || job.frame_index === undefined) {
    img.removeAttribute('src');
    delete img.dataset.index;
    caption.textContent = 'waiting for the first frame…';
    return;
  }
  const index = String(job.frame_index);
  if (img.dataset.job === job.id && img.dataset.index === index) return;
  img.dataset.job = job.id;
  img.dataset.index = index;
  img.src = `jobs/${encodeURIComponent(job.id)}/frame.jpg?frame=${index}`;
  caption.textContent = `frame ${job.frame_index + 1}`;
}

connect();
