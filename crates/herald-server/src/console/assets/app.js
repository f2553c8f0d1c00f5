// Herald console: a single page over Herald's public API (REST, the WebSocket stream and
// /metrics). Nothing here talks to anything but this origin, and event data is only ever
// put into the page as text (textContent, attribute values), never parsed as HTML.
'use strict';

(() => {
  const KEY_STORAGE = 'herald.console.key';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const COLORS = ['#4f46e5', '#059669', '#d97706', '#db2777', '#0891b2', '#7c3aed', '#65a30d', '#dc2626'];

  const session = {
    key: sessionStorage.getItem(KEY_STORAGE),
    returnTo: null,
    hub: null,
  };

  // ---------------------------------------------------------------- DOM helpers

  /** An element with attributes (`on*` functions become listeners) and children (text
   *  for strings and numbers; null, undefined and false are skipped). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith('on') && typeof value === 'function') {
        el.addEventListener(name.slice(2), value);
      } else if (name === 'class') {
        el.setAttribute('class', value);
      } else if (name === 'dataset') {
        Object.assign(el.dataset, value);
      } else if (value === true) {
        el.setAttribute(name, '');
      } else {
        el.setAttribute(name, String(value));
      }
    }
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  /** Replaces `el`'s children, as `h` takes them (skipping null, false, undefined). */
  function fill(el, ...children) {
    el.replaceChildren();
    append(el, children);
  }

  const byId = (id) => document.getElementById(id);

  function notice(kind, ...text) {
    return h('p', { class: 'notice ' + kind }, ...text);
  }

  /** What a failed call shows in its panel: 403 is "not allowed for this key". */
  function problem(error) {
    if (error instanceof ApiError && error.status === 403) {
      return notice('denied', 'Not allowed for this key. ', h('span', { class: 'muted' }, error.message));
    }
    return notice('error', error.message || String(error));
  }

  function panel(title, ...children) {
    return h('section', { class: 'panel' }, title ? h('h2', null, title) : null, ...children);
  }

  function pageHead(title, ...rest) {
    return h('div', { class: 'page-head' }, h('div', null, h('h1', null, title), ...rest));
  }

  function stat(label, value, id) {
    return h('div', { class: 'stat' }, h('div', { class: 'label' }, label), h('div', { class: 'value', id }, value));
  }

  function kv(pairs) {
    const dl = h('dl', { class: 'kv' });
    for (const [key, value] of pairs) {
      if (value === undefined) continue;
      dl.append(h('dt', null, key), h('dd', null, value === null ? h('span', { class: 'muted' }, '—') : value));
    }
    return dl;
  }

  function table(headers, rows, { empty = 'Nothing here.', id } = {}) {
    const head = h('tr', null, headers.map((col) => {
      const [label, cls] = Array.isArray(col) ? col : [col, null];
      return h('th', { class: cls }, label);
    }));
    const body = h('tbody', { id }, rows);
    const wrap = h('div', { class: 'table-wrap' }, h('table', null, h('thead', null, head), body));
    if (!rows.length) wrap.append(h('div', { class: 'empty' }, empty));
    return wrap;
  }

  function badge(text, kind) {
    return h('span', { class: 'badge ' + (kind || '') }, text);
  }

  // ---------------------------------------------------------------- formatting

  const pad = (n, w = 2) => String(n).padStart(w, '0');

  /** Date.parse reads at most milliseconds everywhere; Herald writes microseconds. */
  function parseTime(text) {
    if (!text) return NaN;
    return Date.parse(String(text).replace(/(\.\d{3})\d+/, '$1'));
  }

  function fmtClock(text) {
    const d = new Date(parseTime(text));
    if (isNaN(d)) return String(text || '');
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function fmtDate(text) {
    const d = new Date(parseTime(text));
    if (isNaN(d)) return String(text || '');
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${fmtClock(text)}`;
  }

  function fmtNum(n, digits = 0) {
    if (n === null || n === undefined || !isFinite(n)) return '—';
    return Number(n).toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  }

  function fmtBytes(n) {
    if (n === null || n === undefined || !isFinite(n)) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${fmtNum(n, i ? 1 : 0)} ${units[i]}`;
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return '—';
    if (Math.abs(ms) >= 1000) return `${fmtNum(ms / 1000, 2)} s`;
    if (Math.abs(ms) >= 100) return `${fmtNum(ms, 0)} ms`;
    return `${fmtNum(ms, 2)} ms`;
  }

  function preview(payload, max = 160) {
    let text;
    try { text = JSON.stringify(payload); } catch (_) { text = String(payload); }
    if (text === undefined) text = '';
    return text.length > max ? text.slice(0, max) + '…' : text;
  }

  const eventHref = (id) => '#/event/' + encodeURIComponent(id);

  // ---------------------------------------------------------------- the API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function authHeaders(key) {
    return key ? { Authorization: 'Bearer ' + key } : {};
  }

  /** One call to the API with the session's key. A 401 sends the page to the login. */
  async function api(path, { method = 'GET', body, accept, key = session.key } = {}) {
    const headers = authHeaders(key);
    if (accept) headers.Accept = accept;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
        credentials: 'omit',
      });
    } catch (error) {
      throw new ApiError(0, 'network', 'The hub cannot be reached.');
    }
    const type = response.headers.get('content-type') || '';
    let data = null;
    if (response.status !== 204 && response.status !== 304) {
      const text = await response.text();
      if (type.includes('json')) {
        try { data = JSON.parse(text); } catch (_) { data = text; }
      } else {
        data = text;
      }
    }
    if (!response.ok) {
      const error = data && data.error ? data.error : {};
      const failure = new ApiError(response.status, error.code || String(response.status),
        error.message || `${response.status} ${response.statusText}`);
      if (response.status === 401 && key === session.key) unauthenticated();
      throw failure;
    }
    return { data, headers: response.headers, status: response.status };
  }

  function unauthenticated() {
    if (session.key) sessionStorage.removeItem(KEY_STORAGE);
    session.key = null;
    if (location.hash !== '#/login') {
      session.returnTo = location.hash || '#/tail';
      location.hash = '#/login';
    }
  }

  function streamUrl(params) {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const query = new URLSearchParams(params);
    if (session.key) query.set('access_token', session.key);
    return `${scheme}//${location.host}/api/events/stream?${query}`;
  }

  async function loadIndex() {
    const { data } = await api('/');
    session.hub = data;
    byId('hub-id').textContent = `${data.hub_id} · v${data.version}`;
    return data;
  }

  /** The last `want` stored events matching `pattern` (oldest first): the query API
   *  reads forward by seq, so read windows back from the head, widening each time. */
  async function lastEvents(pattern, head, want) {
    let found = [];
    let hi = head;
    let width = 200;
    for (let round = 0; hi > 0 && found.length < want && round < 8; round++) {
      const lo = Math.max(0, hi - width);
      const query = new URLSearchParams({ after_seq: lo, limit: width });
      if (pattern) query.set('subject', pattern);
      const { data } = await api('/api/events?' + query);
      // The first window may also hold events committed since `head` was read.
      const page = round === 0 ? data : data.filter((e) => e.seq <= hi);
      found = page.concat(found);
      hi = lo;
      width = Math.min(width * 5, 1000);
    }
    return found.slice(-want);
  }

  function parseMetrics(text) {
    const samples = [];
    for (const line of text.split('\n')) {
      if (!line || line.startsWith('#')) continue;
      const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
      if (!match) continue;
      const labels = {};
      const labelText = match[3] || '';
      const labelPattern = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
      let label;
      while ((label = labelPattern.exec(labelText))) labels[label[1]] = label[2];
      samples.push({ name: match[1], labels, value: Number(match[4]) });
    }
    return samples;
  }

  function metricSum(samples, name, where = () => true) {
    let total = null;
    for (const sample of samples) {
      if (sample.name === name && where(sample.labels)) total = (total || 0) + sample.value;
    }
    return total;
  }

  // ---------------------------------------------------------------- charts

  /** A line chart of `series` ([{name, points: [[t, v]...]}]) over the time sampled so
   *  far (at least 30 s, at most `span` ms), drawn at the container's width. */
  function lineChart(container, series, { span: maxSpan = 180000, unit = '' } = {}) {
    const width = Math.max(container.clientWidth || 300, 200);
    const height = 150;
    const left = 8;
    const right = width - 8;
    const top = 18;
    const bottom = height - 20;
    const now = Date.now();
    let first = now;
    for (const one of series) if (one.points.length) first = Math.min(first, one.points[0][0]);
    const span = Math.min(maxSpan, Math.max(30000, now - first));
    const format = (v) => fmtNum(v, v < 1 ? 2 : v < 100 ? 1 : 0);
    let max = 0;
    for (const one of series) for (const [, v] of one.points) if (v !== null && v > max) max = v;
    max = niceCeiling(max);
    const x = (t) => left + ((t - (now - span)) / span) * (right - left);
    const y = (v) => bottom - (v / max) * (bottom - top);
    const chart = s('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': series.map((o) => o.name).join(', ') });
    for (const fraction of [0, 0.5, 1]) {
      const yy = y(max * fraction);
      chart.append(s('line', { class: 'grid-line', x1: left, x2: right, y1: yy, y2: yy }));
      if (fraction > 0) chart.append(s('text', { class: 'axis-label', x: left + 2, y: yy - 3 }, `${format(max * fraction)}${unit}`));
    }
    const ago = span < 120000 ? `−${Math.round(span / 1000)} s` : `−${Math.round(span / 60000)} min`;
    chart.append(s('text', { class: 'axis-label', x: left + 2, y: height - 4 }, ago));
    chart.append(s('text', { class: 'axis-label', x: right, y: height - 4, 'text-anchor': 'end' }, 'now'));
    series.forEach((one, index) => {
      const color = one.color || COLORS[index % COLORS.length];
      const runs = [];
      let run = [];
      for (const [t, v] of one.points) {
        if (t < now - span) continue;
        if (v === null || !isFinite(v)) { if (run.length) runs.push(run); run = []; continue; }
        run.push([x(t), y(v)]);
      }
      if (run.length) runs.push(run);
      for (const points of runs) {
        const line = points.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(' ');
        if (index === 0 && points.length > 1) {
          const area = `${points[0][0].toFixed(1)},${bottom} ${line} ${points[points.length - 1][0].toFixed(1)},${bottom}`;
          chart.append(s('polygon', { class: 'area', points: area, fill: color }));
        }
        if (points.length === 1) {
          chart.append(s('circle', { cx: points[0][0], cy: points[0][1], r: 2.5, fill: color }));
        } else {
          chart.append(s('polyline', { class: 'series', points: line, stroke: color }));
        }
      }
    });
    fill(container, chart);
    if (series.length > 1) {
      const legend = h('div', { class: 'legend' });
      series.forEach((one, index) => {
        const item = h('span', null, one.name);
        item.style.setProperty('--swatch', one.color || COLORS[index % COLORS.length]);
        legend.append(item);
      });
      container.append(legend);
    }
  }

  function niceCeiling(value) {
    if (!(value > 0)) return 1;
    const exponent = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (value <= step * exponent) return step * exponent;
    }
    return 10 * exponent;
  }

  // ---------------------------------------------------------------- views

  /** Each view fills `root` and may return a function that stops its timers and streams. */
  const routes = [
    [/^#\/tail$/, viewTail, 'tail'],
    [/^#\/search(?:\?(.*))?$/, viewSearch, 'search'],
    [/^#\/event\/([^/?]+)$/, viewEvent, 'search'],
    [/^#\/consumers$/, viewConsumers, 'consumers'],
    [/^#\/consumers\/([^/?]+)$/, viewConsumer, 'consumers'],
    [/^#\/rules$/, viewRules, 'rules'],
    [/^#\/rules\/([^/?]+)$/, viewRule, 'rules'],
    [/^#\/system$/, viewSystem, 'system'],
    [/^#\/metrics$/, viewMetrics, 'metrics'],
    [/^#\/login$/, viewLogin, null],
  ];

  let stopView = null;
  let rendered = null;

  function render() {
    if (stopView) { try { stopView(); } catch (_) { /* a view that failed to stop */ } }
    stopView = null;
    let hash = location.hash || '#/tail';
    let route = routes.find(([pattern]) => pattern.test(hash));
    if (!route) { hash = '#/tail'; route = routes[0]; }
    rendered = hash;
    const [pattern, view, section] = route;
    // Path parts are decoded; a query (the search's) is handed over as written.
    const args = pattern.exec(hash).slice(1).map((part) => (part === undefined || view === viewSearch ? part : decodeURIComponent(part)));
    for (const link of document.querySelectorAll('#nav a')) {
      link.classList.toggle('active', link.dataset.section === section);
    }
    byId('logout').hidden = !session.key;
    const root = byId('view');
    root.replaceChildren();
    stopView = view(root, ...args) || null;
  }

  window.addEventListener('hashchange', () => {
    if (location.hash !== rendered) render();
  });

  // ---- login

  function viewLogin(root) {
    const input = h('input', { type: 'password', id: 'login-key', autocomplete: 'current-password', placeholder: 'hrld_… or the admin key', required: true });
    const message = h('div', { id: 'login-message' });
    const button = h('button', { type: 'submit', class: 'primary', id: 'login-submit' }, 'Sign in');
    const form = h('form', {
      onsubmit: async (event) => {
        event.preventDefault();
        const key = input.value.trim();
        if (!key) return;
        button.disabled = true;
        message.replaceChildren();
        try {
          await api('/', { key });
          session.key = key;
          sessionStorage.setItem(KEY_STORAGE, key);
          await loadIndex();
          const target = session.returnTo && session.returnTo !== '#/login' ? session.returnTo : '#/tail';
          session.returnTo = null;
          location.hash = target;
        } catch (error) {
          fill(message, error.status === 401
            ? notice('error', 'This key was refused.')
            : problem(error));
          input.select();
        } finally {
          button.disabled = false;
        }
      },
    },
    h('label', { class: 'field' }, 'API key', input),
    button,
    message);
    root.append(h('div', { class: 'login' }, panel('Sign in to Herald',
      h('p', { class: 'muted' }, 'This hub requires an API key. It is kept in this tab only (session storage) and sent with each request.'),
      form)));
    input.focus();
  }

  // ---- live tail

  let tailPattern = 'hub.>';

  function viewTail(root) {
    const input = h('input', { type: 'search', id: 'tail-subject', value: tailPattern, spellcheck: 'false', autocomplete: 'off', 'aria-label': 'Subject pattern' });
    const pause = h('button', { type: 'button', id: 'tail-pause' }, 'Pause');
    const clear = h('button', { type: 'button', id: 'tail-clear' }, 'Clear');
    const status = h('span', { class: 'tail-status', id: 'tail-status' }, 'starting');
    const dot = h('span', { class: 'dot' });
    const message = h('div');
    const rows = h('tbody', { id: 'tail-rows' });
    const empty = h('div', { class: 'empty', id: 'tail-empty' }, 'Waiting for events…');

    root.append(
      pageHead('Live tail', h('p', { class: 'muted' }, 'The last 50 stored events, then every new one as it is committed. Newest first.')),
      h('section', { class: 'panel' },
        h('div', { class: 'toolbar' },
          h('label', { class: 'field grow' }, 'Subject pattern (* one token, > the rest)', input),
          h('div', { class: 'toolbar' }, pause, clear)),
        h('div', { class: 'stats', style: null },
          h('div', { class: 'stat' }, h('div', { class: 'label' }, 'Status'), h('div', { class: 'value' }, dot, status)),
          stat('Rate', '—', 'tail-rate'),
          stat('Lag', '—', 'tail-lag'),
          stat('Last seq', '—', 'tail-seq'),
          stat('Shown', '0', 'tail-count'))),
      message,
      h('section', { class: 'panel flush' },
        h('div', { class: 'table-wrap' }, h('table', null,
          h('thead', null, h('tr', null, h('th', null, 'Time'), h('th', { class: 'num' }, 'Seq'), h('th', null, 'Subject'), h('th', { class: 'wide-only' }, 'Payload'))),
          rows)),
        empty));
    // The stats row sits under the toolbar with some room.
    root.querySelector('.stats').classList.add('tail-stats');
    root.querySelector('.stats').style.marginTop = '14px';

    const MAX_ROWS = 500;
    let socket = null;
    let generation = 0;
    let paused = false;
    let lastSeq = 0;
    let arrivals = [];
    let retry = null;

    const setStatus = (text, kind) => {
      status.textContent = text;
      dot.className = 'dot ' + (kind || '');
    };

    function addRow(event, fresh) {
      const row = h('tr', { class: 'clickable' + (fresh ? ' fresh' : ''), dataset: { seq: event.seq, id: event.id }, onclick: () => { location.hash = eventHref(event.id); } },
        h('td', { class: 'time' }, fmtClock(event.timestamp)),
        h('td', { class: 'num' }, event.seq),
        h('td', { class: 'subject' }, h('a', { href: eventHref(event.id) }, event.subject)),
        h('td', { class: 'payload wide-only' }, preview(event.payload)));
      rows.prepend(row);
      while (rows.childElementCount > MAX_ROWS) rows.lastElementChild.remove();
      empty.hidden = true;
      byId('tail-count').textContent = fmtNum(rows.childElementCount);
      byId('tail-seq').textContent = fmtNum(event.seq);
    }

    function closeSocket() {
      clearTimeout(retry);
      if (socket) {
        socket.onclose = socket.onmessage = socket.onerror = socket.onopen = null;
        socket.close();
        socket = null;
      }
    }

    function connect(mine) {
      if (paused || mine !== generation) return;
      const pattern = input.value.trim() || '>';
      setStatus('connecting', 'warn');
      const ws = new WebSocket(streamUrl({ subject: pattern, from_seq: lastSeq }));
      socket = ws;
      ws.onopen = () => { if (mine === generation) setStatus('live', 'ok'); };
      ws.onmessage = (message) => {
        if (mine !== generation) return;
        let frame;
        try { frame = JSON.parse(message.data); } catch (_) { return; }
        const event = frame.data;
        if (!event || event.seq <= lastSeq) return;
        lastSeq = event.seq;
        const now = Date.now();
        arrivals.push(now);
        const lag = now - parseTime(event.timestamp);
        byId('tail-lag').textContent = fmtMs(Math.max(0, lag));
        addRow(event, true);
      };
      ws.onclose = (close) => {
        if (mine !== generation || paused) return;
        socket = null;
        setStatus('reconnecting', 'bad');
        if (close.reason) fill(message, notice('', `Stream closed: ${close.reason}`));
        // A refused upgrade (a bad key, too many streams) closes at once: ask the API why.
        api('/').catch(() => {});
        retry = setTimeout(() => connect(mine), 1500);
      };
    }

    async function start() {
      const mine = ++generation;
      closeSocket();
      rows.replaceChildren();
      empty.hidden = false;
      message.replaceChildren();
      input.classList.remove('invalid');
      lastSeq = 0;
      arrivals = [];
      byId('tail-count').textContent = '0';
      byId('tail-seq').textContent = '—';
      byId('tail-lag').textContent = '—';
      setStatus('loading', 'warn');
      const pattern = input.value.trim() || '>';
      try {
        const index = await loadIndex();
        const events = await lastEvents(pattern, index.head_seq, 50);
        if (mine !== generation) return;
        for (const event of events) addRow(event, false);
        lastSeq = Math.max(index.head_seq, events.length ? events[events.length - 1].seq : 0);
        if (!events.length) byId('tail-seq').textContent = fmtNum(index.head_seq);
      } catch (error) {
        if (mine !== generation) return;
        if (error.code === 'invalid_query') input.classList.add('invalid');
        fill(message, problem(error));
        setStatus('stopped', 'bad');
        return;
      }
      if (paused) setStatus(`paused at seq ${lastSeq}`, 'warn');
      else connect(mine);
    }

    let debounce = null;
    input.addEventListener('input', () => {
      clearTimeout(debounce);
      debounce = setTimeout(() => { tailPattern = input.value.trim(); start(); }, 350);
    });
    pause.addEventListener('click', () => {
      paused = !paused;
      pause.textContent = paused ? 'Resume' : 'Pause';
      pause.classList.toggle('primary', paused);
      if (paused) {
        closeSocket();
        setStatus(`paused at seq ${lastSeq}`, 'warn');
      } else {
        connect(generation);
      }
    });
    clear.addEventListener('click', () => {
      rows.replaceChildren();
      empty.hidden = false;
      byId('tail-count').textContent = '0';
    });

    const ticker = setInterval(() => {
      const now = Date.now();
      arrivals = arrivals.filter((t) => now - t < 5000);
      byId('tail-rate').textContent = `${fmtNum(arrivals.length / 5, 1)}/s`;
    }, 1000);

    start();
    return () => {
      generation++;
      clearInterval(ticker);
      clearTimeout(debounce);
      closeSocket();
    };
  }

  // ---- search

  const SEARCH_FIELDS = [
    ['subject', 'Subject pattern', 'hub.*.orders.>'],
    ['since', 'Since (RFC 3339)', '2026-12-01T00:00:00Z'],
    ['until', 'Until (RFC 3339)', '2026-12-31T23:59:59Z'],
    ['correlation_id', 'Correlation id', 'UUID'],
    ['aggregate_type', 'Aggregate type', 'order'],
    ['aggregate_id', 'Aggregate id', 'o-42'],
    ['after_seq', 'After seq', '0'],
    ['payload_contains', 'Payload contains', 'o-1001'],
  ];

  function searchHash(params) {
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) if (value !== '' && value !== undefined && value !== null) query.set(name, value);
    const text = query.toString();
    return '#/search' + (text ? '?' + text : '');
  }

  function viewSearch(root, rawQuery) {
    const params = Object.fromEntries(new URLSearchParams(rawQuery || ''));
    const inputs = {};
    const form = h('form', { class: 'filters', id: 'search-form' });
    for (const [name, label, placeholder] of SEARCH_FIELDS) {
      inputs[name] = h('input', { type: 'text', name, id: 'search-' + name.replace('_', '-'), value: params[name] || '', placeholder, spellcheck: 'false', autocomplete: 'off' });
      form.append(h('label', { class: 'field' }, label, inputs[name]));
    }
    const limit = h('select', { name: 'limit', id: 'search-limit' }, ['25', '50', '100', '250', '1000'].map((n) => h('option', { value: n, selected: (params.limit || '50') === n }, n)));
    form.append(h('label', { class: 'field' }, 'Page size', limit));
    form.append(h('div', { class: 'toolbar' },
      h('button', { type: 'submit', class: 'primary', id: 'search-submit' }, 'Search'),
      h('button', { type: 'button', onclick: () => { location.hash = '#/search'; } }, 'Reset')));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const next = { limit: limit.value };
      for (const [name] of SEARCH_FIELDS) next[name] = inputs[name].value.trim();
      const hash = searchHash(next);
      if (hash === location.hash) render(); else location.hash = hash;
    });

    const results = h('section', { class: 'panel flush' }, h('div', { class: 'empty' }, 'Searching…'));
    root.append(
      pageHead('Search', h('p', { class: 'muted' }, 'Every filter of GET /api/events, oldest first; page on by seq.')),
      panel(null, form),
      results);

    const query = new URLSearchParams({ limit: params.limit || '50' });
    for (const name of ['subject', 'since', 'until', 'correlation_id', 'aggregate_type', 'aggregate_id', 'payload_contains', 'after_seq']) {
      if (params[name]) query.set(name, params[name]);
    }
    let alive = true;
    api('/api/events?' + query).then(({ data, headers }) => {
      if (!alive) return;
      const shown = data;
      const next = headers.get('x-next-after-seq');
      const rows = shown.map((event) => h('tr', { class: 'clickable', dataset: { id: event.id, seq: event.seq }, onclick: () => { location.hash = eventHref(event.id); } },
        h('td', { class: 'num' }, event.seq),
        h('td', { class: 'time' }, fmtDate(event.timestamp)),
        h('td', { class: 'subject' }, h('a', { href: eventHref(event.id) }, event.subject)),
        h('td', { class: 'mono wide-only' }, h('a', { href: searchHash({ correlation_id: event.correlation_id }), onclick: (e) => e.stopPropagation() }, event.correlation_id.slice(0, 8) + '…')),
        h('td', { class: 'payload wide-only' }, preview(event.payload))));
      const summary = `${data.length} event${data.length === 1 ? '' : 's'}${params.after_seq ? ` after seq ${params.after_seq}` : ''}.`;
      const nav = h('div', { class: 'toolbar' },
        params.after_seq ? h('button', { type: 'button', onclick: () => { location.hash = searchHash({ ...params, after_seq: '' }); } }, 'First page') : null,
        // A short page is the end only when the hub read to the head: until then
        // X-Next-After-Seq moves on (a query reads a bounded number of events).
        next && next !== String(params.after_seq || '0')
          ? h('button', { type: 'button', id: 'search-next', onclick: () => { location.hash = searchHash({ ...params, after_seq: next }); } }, 'Next page →')
          : null);
      fill(results, 
        h('div', { class: 'page-head', style: null }, h('h2', null, summary), nav),
        table([['Seq', 'num'], 'Time', 'Subject', ['Correlation', 'wide-only'], ['Payload', 'wide-only']], rows,
          { id: 'search-rows', empty: 'No events match.' }));
      results.firstChild.classList.add('results-head');
      results.firstChild.style.padding = '14px 16px 0';
    }).catch((error) => {
      if (!alive) return;
      fill(results, h('div', { class: 'empty' }, problem(error)));
    });
    return () => { alive = false; };
  }

  // ---- one event

  function viewEvent(root, id) {
    let alive = true;
    const head = pageHead('Event', h('p', { class: 'muted mono' }, id));
    const details = panel('Details', h('div', { class: 'empty' }, 'Loading…'));
    const body = h('pre', { class: 'json', id: 'event-json' }, '…');
    const jsonTab = h('button', { type: 'button', class: 'active', id: 'tab-json' }, 'JSON');
    const ceTab = h('button', { type: 'button', id: 'tab-cloudevent' }, 'CloudEvent');
    const views = panel(null, h('div', { class: 'tabs', role: 'tablist' }, jsonTab, ceTab), body);
    const trace = h('section', { class: 'panel', id: 'trace' }, h('h2', null, 'Correlation trace'), h('div', { class: 'empty' }, 'Loading…'));
    root.append(head, h('div', { class: 'grid two' }, details, views), trace);

    let event = null;
    let cloudEvent = null;
    const show = async (which) => {
      jsonTab.classList.toggle('active', which === 'json');
      ceTab.classList.toggle('active', which === 'ce');
      if (which === 'json') { body.textContent = JSON.stringify(event, null, 2); return; }
      if (!cloudEvent) {
        body.textContent = '…';
        try {
          cloudEvent = (await api('/api/events/' + encodeURIComponent(id), { accept: 'application/cloudevents+json' })).data;
        } catch (error) {
          fill(body, problem(error));
          return;
        }
      }
      if (alive && ceTab.classList.contains('active')) body.textContent = JSON.stringify(cloudEvent, null, 2);
    };
    jsonTab.addEventListener('click', () => event && show('json'));
    ceTab.addEventListener('click', () => event && show('ce'));

    api('/api/events/' + encodeURIComponent(id)).then(({ data }) => {
      if (!alive) return;
      event = data;
      fill(head, h('div', null,
        h('h1', { class: 'mono', id: 'event-subject' }, data.subject),
        h('p', { class: 'muted' }, `seq ${data.seq} · ${fmtDate(data.timestamp)}`)));
      const origin = data.origin || {};
      const aggregate = data.aggregate;
      fill(details, h('h2', null, 'Details'), kv([
        ['Id', h('span', { class: 'mono' }, data.id)],
        ['Seq', String(data.seq)],
        ['Subject', h('span', { class: 'mono' }, data.subject)],
        ['Committed', `${fmtDate(data.timestamp)} (${data.timestamp})`],
        ['Correlation id', h('a', { class: 'mono', href: searchHash({ correlation_id: data.correlation_id }) }, data.correlation_id)],
        ['Origin hub', origin.hub_id || null],
        ['Origin service', origin.service || null],
        ['Origin user', origin.user || null],
        ['Tenant', data.tenant_id === undefined ? undefined : data.tenant_id],
        ['Aggregate', aggregate ? h('a', { href: searchHash({ aggregate_type: aggregate.type, aggregate_id: aggregate.id }) }, `${aggregate.type} / ${aggregate.id} v${aggregate.version}`) : undefined],
        ['Type', data.type === undefined ? undefined : data.type],
        ['Arrived as', data.cloudevent ? `CloudEvent (data: ${data.cloudevent_data_form})` : 'Herald event'],
      ]));
      show('json');
      return api('/api/events?' + new URLSearchParams({ correlation_id: data.correlation_id, limit: 1000 }));
    }).then((answer) => {
      if (!alive || !answer) return;
      drawTrace(trace, answer.data, event);
    }).catch((error) => {
      if (!alive) return;
      if (!event) {
        fill(details, h('h2', null, 'Details'), problem(error));
        body.textContent = '';
        trace.hidden = true;
      } else {
        fill(trace, h('h2', null, 'Correlation trace'), problem(error));
      }
    });
    return () => { alive = false; };
  }

  /** Every event of the correlation on a time line, one lane per subject. */
  function drawTrace(container, events, current) {
    const heading = h('div', { class: 'card-head' },
      h('h2', null, 'Correlation trace'),
      h('span', { class: 'muted' }, `${events.length} event${events.length === 1 ? '' : 's'} with correlation id ${current.correlation_id.slice(0, 8)}…`));
    fill(container, heading);
    if (!events.length) { container.append(h('div', { class: 'empty' }, 'No events.')); return; }
    const times = events.map((e) => parseTime(e.timestamp));
    const start = Math.min(...times);
    const spanMs = Math.max(...times) - start;
    const lanes = [];
    for (const e of events) if (!lanes.includes(e.subject)) lanes.push(e.subject);
    const holder = h('div');
    container.append(holder);
    const width = Math.max(holder.clientWidth || container.clientWidth - 32 || 600, 260);
    const laneHeight = 40;
    const margin = 12;
    const height = lanes.length * laneHeight + 26;
    const x = (i) => {
      const fraction = spanMs > 0 ? (times[i] - start) / spanMs : (events.length > 1 ? i / (events.length - 1) : 0.5);
      return margin + 6 + fraction * (width - 2 * margin - 12);
    };
    const chart = s('svg', { class: 'trace', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'Correlation trace' });
    lanes.forEach((subject, lane) => {
      const yy = lane * laneHeight + 30;
      chart.append(s('text', { class: 'lane', x: margin, y: yy - 12 }, subject.length > 90 ? subject.slice(0, 89) + '…' : subject));
      chart.append(s('line', { class: 'lane-line', x1: margin, x2: width - margin, y1: yy, y2: yy }));
    });
    events.forEach((e, i) => {
      const yy = lanes.indexOf(e.subject) * laneHeight + 30;
      const mark = s('circle', { class: 'mark' + (e.id === current.id ? ' current' : ''), cx: x(i), cy: yy, r: e.id === current.id ? 7 : 5.5 },
        s('title', null, `${e.subject} · seq ${e.seq} · ${fmtClock(e.timestamp)}`));
      mark.addEventListener('click', () => { location.hash = eventHref(e.id); });
      chart.append(mark);
    });
    chart.append(s('text', { class: 'tick', x: margin, y: height - 4 }, fmtClock(events[0].timestamp)));
    chart.append(s('text', { class: 'tick', x: width - margin, y: height - 4, 'text-anchor': 'end' }, `+${fmtMs(spanMs)}`));
    holder.append(chart);
    const list = h('ol', { class: 'trace-list', id: 'trace-list' }, events.map((e, i) => h('li', { class: e.id === current.id ? 'current' : null, dataset: { id: e.id, subject: e.subject } },
      h('span', { class: 'muted mono' }, `+${fmtMs(times[i] - start)}`),
      h('span', null, h('a', { class: 'mono', href: eventHref(e.id) }, e.subject), h('span', { class: 'muted' }, ` · seq ${e.seq}`)))));
    container.append(list);
  }

  // ---- consumers

  /** num_pending samples per consumer, kept while the console is open. */
  const lagHistory = new Map();
  const LAG_SPAN = 10 * 60 * 1000;

  function sampleLag(consumers) {
    const now = Date.now();
    for (const consumer of consumers) {
      const points = lagHistory.get(consumer.name) || [];
      points.push([now, consumer.state.num_pending]);
      while (points.length && points[0][0] < now - LAG_SPAN) points.shift();
      lagHistory.set(consumer.name, points);
    }
  }

  function viewConsumers(root) {
    const chart = h('div', { id: 'lag-chart' }, h('div', { class: 'empty' }, 'Sampling…'));
    const list = h('section', { class: 'panel flush' }, h('div', { class: 'empty' }, 'Loading…'));
    root.append(
      pageHead('Consumers', h('p', { class: 'muted' }, 'Durable consumers and their state, sampled every 5 s.')),
      panel('Lag (events pending)', chart),
      list);
    let alive = true;
    const refresh = async () => {
      try {
        const { data } = await api('/api/consumers');
        if (!alive) return;
        sampleLag(data.consumers);
        const rows = data.consumers.map((c) => h('tr', { class: 'clickable', dataset: { name: c.name }, onclick: () => { location.hash = '#/consumers/' + encodeURIComponent(c.name); } },
          h('td', null, h('a', { href: '#/consumers/' + encodeURIComponent(c.name) }, c.name)),
          h('td', { class: 'subject wide-only' }, c.filter_subjects.join(', ')),
          h('td', { class: 'num' }, fmtNum(c.state.num_pending)),
          h('td', { class: 'num' }, fmtNum(c.state.num_ack_pending)),
          h('td', { class: 'num wide-only' }, fmtNum(c.state.num_redelivered)),
          h('td', { class: 'num' }, c.state.num_dead_letters ? badge(fmtNum(c.state.num_dead_letters), 'bad') : '0'),
          h('td', null, c.state.stalled ? badge(c.state.stalled, 'warn') : badge('flowing', 'ok')),
          h('td', { class: 'num wide-only' }, fmtNum(c.state.last_delivered_seq))));
        fill(list, table(['Name', ['Filters', 'wide-only'], ['Pending', 'num'], ['Ack pending', 'num'], ['Redelivered', 'num wide-only'], ['Dead letters', 'num'], 'State', ['Delivered seq', 'num wide-only']], rows,
          { id: 'consumer-rows', empty: 'No consumers yet. Create one with PUT /api/consumers/{name}.' }));
        const series = data.consumers.slice(0, COLORS.length).map((c) => ({ name: c.name, points: lagHistory.get(c.name) || [] }));
        if (series.length) lineChart(chart, series, { span: LAG_SPAN });
        else fill(chart, h('div', { class: 'empty' }, 'No consumers.'));
      } catch (error) {
        if (alive) fill(list, h('div', { class: 'empty' }, problem(error)));
      }
    };
    refresh();
    const timer = setInterval(refresh, 5000);
    return () => { alive = false; clearInterval(timer); };
  }

  function viewConsumer(root, name) {
    const base = '/api/consumers/' + encodeURIComponent(name);
    const config = panel('Configuration', h('div', { class: 'empty' }, 'Loading…'));
    const state = panel('State', h('div', { class: 'empty' }, 'Loading…'));
    const chart = h('div', { id: 'lag-chart' });
    root.append(
      pageHead(name, h('p', null, h('a', { href: '#/consumers' }, '← Consumers'))),
      h('div', { class: 'grid two' }, config, state),
      panel('Lag (events pending)', chart));
    const dead = deadLetters(root, base, 'consumer');
    let alive = true;
    const refresh = async () => {
      try {
        const { data: c } = await api(base);
        if (!alive) return;
        sampleLag([c]);
        fill(config, h('h2', null, 'Configuration'), kv([
          ['Filters', h('span', { class: 'mono' }, c.filter_subjects.join(', '))],
          ['Deliver policy', c.deliver_policy + (c.opt_start_seq ? ` from seq ${c.opt_start_seq}` : '') + (c.opt_start_time ? ` from ${c.opt_start_time}` : '')],
          ['Ack wait', fmtMs(c.ack_wait_ms)],
          ['Max deliveries', c.max_deliver === -1 ? 'unlimited' : String(c.max_deliver)],
          ['Backoff', c.backoff_ms ? c.backoff_ms.map(fmtMs).join(', ') : null],
          ['Max ack pending', fmtNum(c.max_ack_pending)],
          ['Description', c.description || null],
          ['Created', fmtDate(c.created_at)],
        ]));
        const st = c.state;
        fill(state, h('h2', null, 'State'),
          h('div', { class: 'stats' },
            stat('Pending', fmtNum(st.num_pending), 'consumer-pending'),
            stat('Ack pending', fmtNum(st.num_ack_pending)),
            stat('Redelivered', fmtNum(st.num_redelivered)),
            stat('Dead letters', fmtNum(st.num_dead_letters), 'consumer-dead')),
          h('div', { class: 'kv-gap' }),
          kv([
            ['Delivered up to', `seq ${st.last_delivered_seq}`],
            ['Ack floor', `seq ${st.ack_floor}`],
            ['Skipped by retention', fmtNum(st.skipped_by_retention)],
            ['Stalled', st.stalled ? badge(st.stalled, 'warn') : badge('no', 'ok')],
          ]));
        state.querySelector('.kv-gap').style.height = '14px';
        lineChart(chart, [{ name, points: lagHistory.get(name) || [] }], { span: LAG_SPAN });
      } catch (error) {
        if (alive) fill(config, h('h2', null, 'Configuration'), problem(error));
      }
    };
    refresh();
    const timer = setInterval(refresh, 5000);
    return () => { alive = false; clearInterval(timer); dead.stop(); };
  }

  /** A browsable list of dead letters under `base` (a consumer or a rule), with redrive
   *  and discard of the selected ones through the API's own routes. */
  function deadLetters(root, base, what) {
    const message = h('div', { id: 'dl-message' });
    const redrive = h('button', { type: 'button', class: 'primary', id: 'dl-redrive', disabled: true }, 'Redrive selected');
    const discard = h('button', { type: 'button', class: 'danger', id: 'dl-discard', disabled: true }, 'Discard selected');
    const all = h('input', { type: 'checkbox', id: 'dl-all', 'aria-label': 'Select all' });
    const body = h('tbody', { id: 'dl-rows' });
    const more = h('button', { type: 'button', id: 'dl-more', hidden: true }, 'Load more');
    const empty = h('div', { class: 'empty' }, 'Loading…');
    const section = h('section', { class: 'panel flush', id: 'dead-letters' },
      h('div', { class: 'page-head' }, h('h2', null, 'Dead letters'), h('div', { class: 'toolbar' }, redrive, discard)),
      h('div', { class: 'dl-message' }, message),
      h('div', { class: 'table-wrap' }, h('table', null,
        h('thead', null, h('tr', null, h('th', null, all), h('th', { class: 'num' }, 'Seq'), h('th', null, 'Subject'), h('th', null, 'Reason'), h('th', { class: 'num wide-only' }, 'Deliveries'), h('th', null, 'Last error'), h('th', { class: 'wide-only' }, 'Dead since'))),
        body)),
      empty,
      h('div', { class: 'dl-more' }, more));
    section.querySelector('.page-head').style.padding = '14px 16px 0';
    message.parentElement.style.padding = '0 16px';
    more.parentElement.style.padding = '0 16px 14px';
    root.append(section);

    let alive = true;
    let last = 0;
    const selected = () => [...body.querySelectorAll('input[type=checkbox]:checked')].map((box) => Number(box.value));
    const update = () => {
      const n = selected().length;
      redrive.disabled = discard.disabled = n === 0;
      redrive.textContent = n ? `Redrive ${n}` : 'Redrive selected';
      discard.textContent = n ? `Discard ${n}` : 'Discard selected';
    };
    all.addEventListener('change', () => {
      for (const box of body.querySelectorAll('input[type=checkbox]')) box.checked = all.checked;
      update();
    });

    async function load(reset) {
      if (reset) { body.replaceChildren(); last = 0; all.checked = false; }
      try {
        const { data } = await api(`${base}/dead-letters?` + new URLSearchParams({ limit: 100, after_seq: last }));
        if (!alive) return;
        for (const dl of data.dead_letters) {
          const e = dl.event;
          body.append(h('tr', { dataset: { seq: e.seq } },
            h('td', null, h('input', { type: 'checkbox', value: e.seq, 'aria-label': `Select seq ${e.seq}`, onchange: update })),
            h('td', { class: 'num' }, h('a', { href: eventHref(e.id) }, e.seq)),
            h('td', { class: 'subject' }, e.subject),
            h('td', null, badge(dl.reason, dl.reason === 'term' ? 'bad' : 'warn')),
            h('td', { class: 'num wide-only' }, dl.deliveries),
            h('td', { class: 'mono' }, dl.last_error || h('span', { class: 'muted' }, '—')),
            h('td', { class: 'time wide-only' }, fmtDate(dl.dead_at))));
          last = e.seq;
        }
        more.hidden = data.count < 100;
        empty.hidden = body.childElementCount > 0;
        empty.textContent = `No dead letters: every message of this ${what} was delivered or is on its way.`;
      } catch (error) {
        if (!alive) return;
        empty.hidden = false;
        fill(empty, problem(error));
      }
      update();
    }

    redrive.addEventListener('click', async () => {
      const seqs = selected();
      if (!seqs.length) return;
      redrive.disabled = true;
      try {
        const { data } = await api(`${base}/dead-letters/redrive`, { method: 'POST', body: { seqs } });
        fill(message, notice('ok', `${data.redriven} redriven: back for delivery.`));
      } catch (error) {
        fill(message, problem(error));
      }
      load(true);
    });
    discard.addEventListener('click', async () => {
      const seqs = selected();
      if (!seqs.length || !window.confirm(`Discard ${seqs.length} dead letter${seqs.length === 1 ? '' : 's'}? This cannot be undone.`)) return;
      discard.disabled = true;
      let done = 0;
      try {
        for (const seq of seqs) {
          await api(`${base}/dead-letters/${seq}`, { method: 'DELETE' });
          done++;
        }
        fill(message, notice('ok', `${done} discarded.`));
      } catch (error) {
        fill(message, problem(error));
      }
      load(true);
    });
    more.addEventListener('click', () => load(false));
    load(true);
    return { stop: () => { alive = false; } };
  }

  // ---- rules

  function actionText(action) {
    if (!action) return '';
    if (action.type === 'webhook') return `webhook → ${action.url}`;
    if (action.type === 'republish') return `republish → ${action.subject}`;
    return action.type;
  }

  function breakerBadge(stats) {
    const breaker = stats.breaker;
    if (!breaker) return h('span', { class: 'muted' }, '—');
    return badge(breaker.state.replace('_', '-'), breaker.state === 'closed' ? 'ok' : breaker.state === 'open' ? 'bad' : 'warn');
  }

  function viewRules(root) {
    const list = h('section', { class: 'panel flush' }, h('div', { class: 'empty' }, 'Loading…'));
    root.append(pageHead('Rules', h('p', { class: 'muted' }, 'Routing rules: webhooks and republishes, with their delivery stats.')), list);
    let alive = true;
    const refresh = async () => {
      try {
        const { data } = await api('/api/rules');
        if (!alive) return;
        const rows = data.rules.map((r) => h('tr', { class: 'clickable', dataset: { id: r.id }, onclick: () => { location.hash = '#/rules/' + encodeURIComponent(r.id); } },
          h('td', null, h('a', { href: '#/rules/' + encodeURIComponent(r.id) }, r.id)),
          h('td', { class: 'subject' }, r.subject_pattern),
          h('td', { class: 'mono wide-only' }, actionText(r.action)),
          h('td', null, r.enabled ? badge('on', 'ok') : badge('off')),
          h('td', { class: 'num' }, fmtNum(r.stats.delivered)),
          h('td', { class: 'num' }, r.stats.failed ? badge(fmtNum(r.stats.failed), 'bad') : '0'),
          h('td', { class: 'num wide-only' }, fmtNum(r.stats.retries)),
          h('td', { class: 'wide-only' }, breakerBadge(r.stats))));
        fill(list, table(['Id', 'Pattern', ['Action', 'wide-only'], 'Enabled', ['Delivered', 'num'], ['Failed', 'num'], ['Retries', 'num wide-only'], ['Breaker', 'wide-only']], rows,
          { id: 'rule-rows', empty: 'No rules. Add one with POST /api/rules.' }));
      } catch (error) {
        if (alive) fill(list, h('div', { class: 'empty' }, problem(error)));
      }
    };
    refresh();
    const timer = setInterval(refresh, 5000);
    return () => { alive = false; clearInterval(timer); };
  }

  function viewRule(root, id) {
    const base = '/api/rules/' + encodeURIComponent(id);
    const config = panel('Rule', h('div', { class: 'empty' }, 'Loading…'));
    const stats = panel('Deliveries', h('div', { class: 'empty' }, 'Loading…'));
    root.append(pageHead(id, h('p', null, h('a', { href: '#/rules' }, '← Rules'))), h('div', { class: 'grid two' }, config, stats));
    const dead = deadLetters(root, base, 'rule');
    let alive = true;
    const refresh = async () => {
      try {
        const { data: r } = await api(base);
        if (!alive) return;
        const action = r.action || {};
        fill(config, h('h2', null, 'Rule'), kv([
          ['Pattern', h('span', { class: 'mono' }, r.subject_pattern)],
          ['Action', actionText(action)],
          ['Timeout', action.timeout_ms === undefined ? undefined : fmtMs(action.timeout_ms)],
          ['Max attempts', action.max_attempts === undefined ? undefined : String(action.max_attempts)],
          ['Signed', action.secret_set === undefined ? undefined : (action.secret_set ? 'yes' : 'no')],
          ['Enabled', r.enabled ? 'yes' : 'no'],
          ['Description', r.description || null],
          ['Created', fmtDate(r.created_at)],
        ]));
        const breaker = r.stats.breaker;
        fill(stats, h('h2', null, 'Deliveries'),
          h('div', { class: 'stats' },
            stat('Delivered', fmtNum(r.stats.delivered)),
            stat('Failed', fmtNum(r.stats.failed)),
            stat('Retries', fmtNum(r.stats.retries))),
          breaker ? h('div', { class: 'breaker' }, kv([
            ['Circuit breaker', breakerBadge(r.stats)],
            ['Consecutive failures', String(breaker.consecutive_failures)],
            ['Trips', String(breaker.trips)],
            ['Opened', breaker.opened_at ? fmtDate(breaker.opened_at) : null],
            ['Next probe', breaker.next_probe_at ? fmtDate(breaker.next_probe_at) : null],
          ])) : null);
        const holder = stats.querySelector('.breaker');
        if (holder) holder.style.marginTop = '14px';
      } catch (error) {
        if (alive) fill(config, h('h2', null, 'Rule'), problem(error));
      }
    };
    refresh();
    const timer = setInterval(refresh, 5000);
    return () => { alive = false; clearInterval(timer); dead.stop(); };
  }

  // ---- hubs, NATS, store

  function viewSystem(root) {
    const health = panel('Health', h('div', { class: 'empty' }, 'Loading…'));
    const nats = panel('NATS relay', h('div', { class: 'empty' }, 'Loading…'));
    const store = panel('Store', h('div', { class: 'empty' }, 'Loading…'));
    const hubs = h('section', { class: 'panel flush' }, h('h2', null, 'Hubs on the bus'), h('div', { class: 'empty' }, 'Loading…'));
    root.append(pageHead('Hubs', h('p', { class: 'muted' }, 'This hub, its store and NATS relay, and the hubs it hears on the bus.')),
      h('div', { class: 'grid' }, health, nats, store), hubs);
    let alive = true;
    const guard = (target, title, work) => work().catch((error) => {
      if (alive) fill(target, h('h2', null, title), problem(error));
    });
    const refresh = () => {
      guard(health, 'Health', async () => {
        const response = await fetch('/health', { cache: 'no-store' });
        const data = await response.json();
        if (!alive) return;
        const kind = data.status === 'healthy' ? 'ok' : data.status === 'degraded' ? 'warn' : 'bad';
        fill(health, h('h2', null, 'Health'), kv([
          ['Status', badge(data.status, kind)],
          ['Database', badge(data.database, data.database === 'healthy' ? 'ok' : 'bad')],
          ['Writable', data.details.database_writable ? 'yes' : badge('no', 'bad')],
          ['NATS', badge(data.nats, data.nats === 'healthy' ? 'ok' : data.nats === 'disabled' ? '' : 'bad')],
          ['Error', data.details.database_error === undefined ? undefined : data.details.database_error],
          ['Hub', session.hub ? `${session.hub.hub_id} · v${session.hub.version}` : null],
        ]));
      });
      guard(nats, 'NATS relay', async () => {
        const response = await fetch('/health/nats', { cache: 'no-store' });
        const data = await response.json();
        if (!alive) return;
        const relay = data.relay;
        fill(nats, h('h2', null, 'NATS relay'), kv([
          ['Connection', data.url === null ? badge('not configured') : data.connected ? badge('connected', 'ok') : badge('disconnected', 'bad')],
          ['Server', data.url ? h('span', { class: 'mono' }, data.url) : null],
          ['Relayed up to', relay ? `seq ${relay.acked_seq}` : null],
          ['Log head', relay ? `seq ${relay.head_seq}` : null],
          ['Relay lag', relay ? `${fmtNum(relay.head_seq - relay.acked_seq)} events` : null],
        ]));
      });
      guard(store, 'Store', async () => {
        const index = await loadIndex();
        let size = null;
        let denied = null;
        try {
          const { data } = await api('/metrics');
          size = metricSum(parseMetrics(data), 'herald_store_size_bytes');
        } catch (error) {
          if (error.status !== 403) throw error;
          denied = error;
        }
        if (!alive) return;
        fill(store, h('h2', null, 'Store'), kv([
          ['Log head', `seq ${fmtNum(index.head_seq)}`],
          ['Size on disk', denied ? undefined : h('span', { id: 'store-size' }, fmtBytes(size))],
        ]), denied ? problem(denied) : null);
        if (denied) store.lastChild.style.marginTop = '12px';
      });
      guard(hubs, 'Hubs on the bus', async () => {
        const { data } = await api('/api/hubs');
        if (!alive) return;
        const rows = data.hubs.map((hub) => h('tr', null,
          h('td', { class: 'mono' }, hub.hub_id),
          h('td', { class: 'mono wide-only' }, hub.instance_id),
          h('td', null, hub.version),
          h('td', { class: 'mono wide-only' }, hub.url || '—'),
          h('td', { class: 'time wide-only' }, fmtDate(hub.started_at)),
          h('td', { class: 'time' }, fmtClock(hub.last_seen))));
        fill(hubs, h('h2', null, 'Hubs on the bus'), table(['Hub', ['Instance', 'wide-only'], 'Version', ['URL', 'wide-only'], ['Started', 'wide-only'], 'Last seen'], rows,
          { empty: 'No hubs heard: presence is announced over NATS, which this hub is not connected to.' }));
      });
    };
    refresh();
    const timer = setInterval(refresh, 5000);
    return () => { alive = false; clearInterval(timer); };
  }

  // ---- metrics

  /** Samples derived from /metrics, kept while the console is open. */
  const metricHistory = { last: null, series: new Map() };
  const METRIC_SPAN = 3 * 60 * 1000;

  function record(name, t, value) {
    const points = metricHistory.series.get(name) || [];
    points.push([t, value]);
    while (points.length && points[0][0] < t - METRIC_SPAN) points.shift();
    metricHistory.series.set(name, points);
  }

  /** The q-quantile of a histogram's observations between two scrapes, interpolated
   *  linearly within its bucket (as Prometheus's histogram_quantile does). */
  function quantile(before, after, name, q) {
    const buckets = (samples) => samples.filter((m) => m.name === name + '_bucket')
      .map((m) => [m.labels.le === '+Inf' ? Infinity : Number(m.labels.le), m.value]);
    const then = new Map(buckets(before));
    const deltas = buckets(after).map(([le, v]) => [le, v - (then.get(le) || 0)]).sort((a, b) => a[0] - b[0]);
    const total = deltas.length ? deltas[deltas.length - 1][1] : 0;
    if (!(total > 0)) return null;
    const rank = q * total;
    let lower = 0;
    let below = 0;
    for (const [le, count] of deltas) {
      if (count >= rank) {
        if (!isFinite(le)) return lower;
        return lower + (le - lower) * ((rank - below) / Math.max(count - below, 1e-9));
      }
      lower = le;
      below = count;
    }
    return null;
  }

  function sampleMetrics(samples) {
    const t = Date.now();
    const previous = metricHistory.last;
    metricHistory.last = { t, samples };
    record('subscribers', t, metricSum(samples, 'herald_live_subscribers') || 0);
    record('streams', t, metricSum(samples, 'herald_ws_streams') || 0);
    if (!previous) return;
    const dt = (t - previous.t) / 1000;
    const delta = (name, where) => (metricSum(samples, name, where) || 0) - (metricSum(previous.samples, name, where) || 0);
    const stored = (labels) => labels.result === 'stored';
    record('published', t, Math.max(0, delta('herald_events_published_total', stored)) / dt);
    const commits = delta('herald_commit_batch_events_count');
    record('batch', t, commits > 0 ? delta('herald_commit_batch_events_sum') / commits : null);
    const syncs = delta('herald_commit_duration_seconds_count');
    record('sync_avg', t, syncs > 0 ? (delta('herald_commit_duration_seconds_sum') / syncs) * 1000 : null);
    const p99 = quantile(previous.samples, samples, 'herald_commit_duration_seconds', 0.99);
    record('sync_p99', t, p99 === null || !isFinite(p99) ? null : p99 * 1000);
    const publishes = delta('herald_publish_duration_seconds_count');
    record('publish_avg', t, publishes > 0 ? (delta('herald_publish_duration_seconds_sum') / publishes) * 1000 : null);
    const p99publish = quantile(previous.samples, samples, 'herald_publish_duration_seconds', 0.99);
    record('publish_p99', t, p99publish === null || !isFinite(p99publish) ? null : p99publish * 1000);
  }

  function viewMetrics(root) {
    const message = h('div');
    const cards = [
      { id: 'chart-published', title: 'Published events/s', series: [['published', 'stored']], format: (v) => fmtNum(v, 1), unit: '/s' },
      { id: 'chart-batch', title: 'Commit batch size (events per commit)', series: [['batch', 'average']], format: (v) => fmtNum(v, 1), unit: '' },
      { id: 'chart-sync', title: 'Commit and sync time', series: [['sync_avg', 'average'], ['sync_p99', 'p99']], format: (v) => fmtNum(v, 2), unit: ' ms' },
      { id: 'chart-publish', title: 'Publish latency (call to durable answer)', series: [['publish_avg', 'average'], ['publish_p99', 'p99']], format: (v) => fmtNum(v, 2), unit: ' ms' },
      { id: 'chart-subscribers', title: 'Subscribers', series: [['subscribers', 'live subscribers'], ['streams', 'WebSocket streams']], format: (v) => fmtNum(v, 0), unit: '' },
    ];
    const grid = h('div', { class: 'grid two' });
    for (const card of cards) {
      card.value = h('span', { class: 'value' }, '—');
      card.chart = h('div', { id: card.id }, h('div', { class: 'empty' }, 'Collecting…'));
      grid.append(h('section', { class: 'panel' }, h('div', { class: 'card-head' }, h('h2', null, card.title), card.value), card.chart));
    }
    const totals = h('div', { class: 'stats' },
      stat('Head seq', '—', 'metric-head'),
      stat('Stored events', '—', 'metric-stored'),
      stat('Commits', '—', 'metric-commits'),
      stat('Store size', '—', 'metric-size'));
    root.append(pageHead('Metrics', h('p', { class: 'muted' }, 'From this hub\'s /metrics, scraped every 2 s while this page is open.')), message, panel(null, totals), grid);

    let alive = true;
    let timer = null;
    const draw = () => {
      for (const card of cards) {
        const series = card.series.map(([name, label], index) => ({ name: label, color: COLORS[index], points: metricHistory.series.get(name) || [] }));
        const latest = series[0].points.length ? series[0].points[series[0].points.length - 1][1] : null;
        card.value.textContent = latest === null ? '—' : card.format(latest) + card.unit;
        if (series[0].points.length) lineChart(card.chart, series, { span: METRIC_SPAN, unit: card.unit });
      }
    };
    const refresh = async () => {
      try {
        const { data } = await api('/metrics');
        if (!alive) return;
        const samples = parseMetrics(data);
        sampleMetrics(samples);
        byId('metric-head').textContent = fmtNum(metricSum(samples, 'herald_log_head_seq'));
        byId('metric-stored').textContent = fmtNum(metricSum(samples, 'herald_events_published_total', (l) => l.result === 'stored'));
        byId('metric-commits').textContent = fmtNum(metricSum(samples, 'herald_commits_total'));
        byId('metric-size').textContent = fmtBytes(metricSum(samples, 'herald_store_size_bytes'));
        message.replaceChildren();
        draw();
      } catch (error) {
        if (!alive) return;
        fill(message, problem(error));
        if (error.status === 403) { clearInterval(timer); grid.hidden = true; totals.parentElement.hidden = true; }
      }
    };
    draw();
    refresh();
    timer = setInterval(refresh, 2000);
    return () => { alive = false; clearInterval(timer); };
  }

  // ---------------------------------------------------------------- start

  async function boot() {
    byId('logout').addEventListener('click', () => {
      sessionStorage.removeItem(KEY_STORAGE);
      session.key = null;
      session.returnTo = null;
      location.hash = '#/login';
      render();
    });
    try {
      await loadIndex();
    } catch (error) {
      if (error.status !== 401) {
        byId('view').replaceChildren(problem(error));
      }
    }
    render();
  }

  boot();
})();
