// The SmartMart rules dashboard. The page holds no secret: the admin key is
// typed in, kept in `adminKey` (this tab's memory: no storage, no cookie,
// no URL) and sent as `Authorization: Bearer …` on same-origin fetches of
// the JSON endpoints. Everything is built with DOM calls and textContent,
// never innerHTML: rule names and reasons are data, not markup.
'use strict';

let adminKey = null;
let refreshTimer = null;
const REFRESH_MS = 10000;
const SVG = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child === null || child === undefined ? '' : String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  return node;
}

const short = (digest) => (typeof digest === 'string' && digest.startsWith('sha256:') ? digest.slice(0, 19) + '…' : digest || '');
const num = (value) => (value === null || value === undefined ? '–' : Number(value).toLocaleString('en-US'));
const dec = (value, digits) => (value === null || value === undefined ? '–' : Number(value).toFixed(digits));
const money = (cents) => (cents === null || cents === undefined ? '–' : (Number(cents) / 100).toFixed(2));

function cell(field, text, title) {
  return el('td', { 'data-field': field, title }, text);
}

function setStatus(text, kind) {
  const status = $('status');
  status.textContent = text;
  status.className = kind || '';
}

class Unauthorized extends Error {}

async function getJson(path) {
  const answer = await fetch(path, {
    headers: { Authorization: 'Bearer ' + adminKey, Accept: 'application/json' },
    cache: 'no-store',
    credentials: 'omit',
  });
  if (answer.status === 401) throw new Unauthorized('the admin key was refused');
  if (answer.status === 404) return null;
  if (!answer.ok) throw new Error(path + ': HTTP ' + answer.status);
  return answer.json();
}

// A rule's activation window and whether orders starting now run it.
function schedule(p) {
  if (!p.from && !p.until) return 'always';
  const window = (p.from || '…') + ' → ' + (p.until || '…');
  return window + (p.active ? ' (active)' : ' (inactive)');
}

function renderRules(plugins) {
  const body = $('rules-body');
  body.replaceChildren();
  for (const p of plugins.plugins) {
    const arm = p.experiment ? p.experiment + ' / ' + p.variant : p.variant || '';
    body.append(
      el(
        'tr',
        { 'data-file': p.file, 'data-digest': p.digest, 'data-variant': p.variant || '' },
        cell('slot', p.slot),
        cell('file', p.file),
        cell('name', p.name),
        cell('version', p.version),
        cell('digest', short(p.digest), p.digest),
        cell('config_hash', short(p.config_hash), p.config_hash),
        cell('arm', arm),
        cell('fail_mode', p.fail_mode),
        cell('channels', (p.channels || []).join(', ')),
        cell('schedule', schedule(p)),
      ),
    );
  }
  $('rules-loaded').textContent =
    'Rule set loaded ' + (plugins.plugins[0] ? plugins.plugins[0].loaded_at : '–') + '; ' +
    num(plugins.reloads) + ' reloads, ' + num(plugins.refused_reloads) + ' refused.';
}

// Horizontal bars, one per arm, of one figure; the scale is the largest arm.
function barChart(title, variants, value, format) {
  const width = 420, row = 22, label = 110, height = row * variants.length + 24;
  const chart = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', class: 'chart' });
  const caption = svg('text', { x: 0, y: 14, class: 'chart-title' });
  caption.textContent = title;
  chart.append(caption);
  const max = Math.max(1, ...variants.map((v) => Math.abs(value(v) || 0)));
  variants.forEach((v, i) => {
    const y = 22 + i * row;
    const amount = value(v) || 0;
    const name = svg('text', { x: 0, y: y + 14, class: 'chart-label' });
    name.textContent = v.name;
    const bar = svg('rect', {
      x: label, y: y + 3, height: row - 8,
      width: Math.max(1, (Math.abs(amount) / max) * (width - label - 90)),
      class: 'bar bar-' + (i % 4), 'data-variant': v.name,
    });
    const figure = svg('text', { x: label + 4 + Math.max(1, (Math.abs(amount) / max) * (width - label - 90)), y: y + 14, class: 'chart-value' });
    figure.textContent = format(amount);
    chart.append(name, bar, figure);
  });
  return chart;
}

// A rate with its 95 % interval, e.g. "12.5 % [4.2, 31.0]".
const pct = (x) => (x * 100).toFixed(1);
const rate = (r) => (r ? `${pct(r.rate)} % [${pct(r.low)}, ${pct(r.high)}]` : '–');
const counted = (count, r) => (count === null || count === undefined ? '–' : num(count) + (r ? ' · ' + rate(r) : ''));
const interval = (d, format) => (d ? `${format(d.difference)} [${format(d.low)}, ${format(d.high)}]` : '–');
const km = (value) => dec(value, 1);

// The columns of each slot's figures: [heading, data-field, the arm's
// cell text, the finer row's cell text]. A discount arm shows what it gave,
// a warehouse arm where its orders shipped from, a fraud arm its verdicts.
const SLOT_COLUMNS = {
  discount: [
    ['Fired', 'fired_orders', (v) => num(v.fired_orders), (r) => num(r.fired_orders)],
    ['Discount', 'discount_cents', (v) => money(v.discount_cents), (r) => money(r.discount_cents)],
  ],
  warehouse: [
    ['Stock-outs (rate, 95 % CI)', 'stock_outs', (v) => counted(v.warehouse.stock_outs, v.warehouse.stock_out_rate), (r) => num(r.warehouse.stock_outs)],
    ['Shipped', 'shipped_orders', (v) => num(v.warehouse.shipped_orders), (r) => num(r.warehouse.shipped_orders)],
    ['Split (rate, 95 % CI)', 'split_orders', (v) => counted(v.warehouse.split_orders, v.warehouse.split_rate), (r) => num(r.warehouse.split_orders)],
    ['Mean km', 'mean_distance_km', (v) => km(v.warehouse.mean_distance_km), (r) => km(r.warehouse.mean_distance_km)],
    ['Δ km (95 % CI)', 'distance_vs_control', (v) => interval(v.warehouse.distance_vs_control, km), () => ''],
  ],
  fraud: [
    ['Escalations (rate, 95 % CI)', 'escalations', (v) => counted(v.fraud.escalations, v.fraud.escalation_rate), (r) => num(r.fraud.escalations)],
    ['Reviews (rate, 95 % CI)', 'reviews', (v) => counted(v.fraud.reviews, v.fraud.review_rate), (r) => num(r.fraud.reviews)],
  ],
};

// The charts of each slot: [title, the arm's figure, its format].
const SLOT_CHARTS = {
  discount: [
    ['Mean order value', (v) => v.mean_order_value_cents, money],
    ['Discount given', (v) => v.discount_cents, money],
  ],
  warehouse: [
    ['Stock-out rate %', (v) => (v.warehouse.stock_out_rate ? v.warehouse.stock_out_rate.rate * 100 : null), km],
    ['Split shipments %', (v) => (v.warehouse.split_rate ? v.warehouse.split_rate.rate * 100 : null), km],
    ['Mean distance km', (v) => v.warehouse.mean_distance_km, km],
  ],
  fraud: [
    ['Escalation rate %', (v) => (v.fraud.escalation_rate ? v.fraud.escalation_rate.rate * 100 : null), km],
    ['Review rate %', (v) => (v.fraud.review_rate ? v.fraud.review_rate.rate * 100 : null), km],
  ],
};

function renderExperiment(experiment) {
  const box = el('article', { class: 'experiment', 'data-experiment': experiment.name, 'data-slot': experiment.slot });
  box.append(el('h3', {}, experiment.name + ' ', el('span', { class: 'slot' }, experiment.slot)));
  const columns = SLOT_COLUMNS[experiment.slot] || [];
  const head = el('tr', {}, ...['Arm', 'Module', 'Digest', 'Config hash', 'Weight', experiment.slot === 'fraud' ? 'Checks' : 'Orders']
    .concat(columns.map((c) => c[0]))
    .concat(['Confirmed', 'Revenue', 'Mean order', 'Δ mean (95 % CI)', 'Payment failures', 'Rule errors', 'p50 µs', 'p99 µs'])
    .map((h) => el('th', {}, h)));
  const body = el('tbody');
  for (const v of experiment.variants) {
    body.append(
      el(
        'tr',
        { class: 'arm', 'data-variant': v.name, 'data-digest': v.digest },
        cell('name', v.name + (v.off ? ' (off)' : '')),
        cell('module', v.off ? 'none' : v.module + '@' + v.version),
        cell('digest', short(v.digest), v.digest),
        cell('config_hash', short(v.config_hash), v.config_hash),
        cell('weight', num(v.weight)),
        cell('orders', num(v.orders)),
        ...columns.map(([, field, arm]) => cell(field, arm(v))),
        cell('confirmed_orders', num(v.confirmed_orders)),
        cell('revenue_cents', money(v.revenue_cents)),
        cell('mean_order_value', money(v.mean_order_value_cents)),
        cell('vs_control', interval(v.vs_control, money)),
        cell('payment_failures', num(v.payment_failures)),
        cell('errors', num(v.errors)),
        cell('latency_p50_us', dec(v.latency_p50_us, 0)),
        cell('latency_p99_us', dec(v.latency_p99_us, 0)),
      ),
    );
    for (const r of v.rows) {
      body.append(
        el(
          'tr',
          { class: 'arm-row', 'data-variant': v.name, 'data-digest': r.module_digest, 'data-config-hash': r.config_hash },
          cell('name', '↳ ' + (r.module === 'none' ? 'off' : r.module + '@' + r.version)),
          cell('module', ''),
          cell('digest', short(r.module_digest), r.module_digest),
          cell('config_hash', short(r.config_hash), r.config_hash),
          cell('weight', ''),
          cell('orders', num(r.orders)),
          ...columns.map(([, field, , row]) => cell(field, row(r))),
          cell('confirmed_orders', num(r.confirmed_orders)),
          cell('revenue_cents', money(r.revenue_cents)),
          cell('mean_order_value', money(r.mean_order_value_cents)),
          cell('vs_control', ''),
          cell('payment_failures', num(r.payment_failures)),
          cell('errors', num(r.rule_errors)),
          cell('latency_p50_us', dec(r.latency_p50_us, 0)),
          cell('latency_p99_us', dec(r.latency_p99_us, 0)),
        ),
      );
    }
  }
  box.append(el('table', {}, el('thead', {}, head), body));
  const charts = el('div', { class: 'charts' });
  charts.append(
    barChart(experiment.slot === 'fraud' ? 'Checks' : 'Orders', experiment.variants, (v) => v.orders, num),
    ...(SLOT_CHARTS[experiment.slot] || []).map(([title, value, format]) => barChart(title, experiment.variants, value, format)),
  );
  box.append(charts);
  return box;
}

function renderExperiments(experiments) {
  const list = $('experiment-list');
  list.replaceChildren();
  const ab = experiments.filter((e) => e.kind === 'ab');
  if (ab.length === 0) list.append(el('p', { class: 'note' }, 'No A/B experiment in the loaded rule set.'));
  ab.forEach((e) => list.append(renderExperiment(e)));

  const body = $('shadows-body');
  body.replaceChildren();
  for (const e of experiments.filter((x) => x.kind === 'shadow' && x.shadow)) {
    const s = e.shadow;
    body.append(
      el(
        'tr',
        { 'data-candidate': s.candidate_module, 'data-digest': s.candidate_digest },
        cell('slot', s.slot),
        cell('active_module', s.active_module),
        cell('candidate_module', s.candidate_module),
        cell('candidate_version', s.candidate_version),
        cell('candidate_digest', short(s.candidate_digest), s.candidate_digest),
        cell('orders', num(s.orders)),
        cell('differing_orders', num(s.differing_orders)),
        cell('share_differing', dec(s.share_differing * 100, 1) + ' %'),
        cell('money_difference_cents', num(s.money_difference_cents)),
      ),
    );
  }
  if (!body.firstChild) body.append(el('tr', {}, el('td', { colspan: 9, class: 'note' }, 'No shadow runs recorded.')));
}

const moduleText = (m) => (m ? `${m.module}@${m.version} ${short(m.digest)} cfg ${short(m.config_hash)}` : '–');

// GET /v1/admin/rollouts: canaries and the events of reloads, refusals,
// rollbacks and promotions, under the reload counts of GET /v1/admin/plugins.
function renderRollouts(rollouts, plugins) {
  const box = $('rollouts-body');
  box.replaceChildren(reloadSummary(plugins));
  const canaries = el('tbody');
  for (const c of rollouts.canaries || []) {
    canaries.append(
      el(
        'tr',
        { class: 'canary', 'data-entry': c.entry },
        cell('entry', c.entry),
        cell('slot', c.slot),
        cell('stable', c.stable ? moduleText(c.stable) : 'none (a new rule)'),
        cell('canary', moduleText(c.canary)),
        cell('share_percent', num(c.share_percent) + ' %'),
        cell('state', c.state),
        cell('calls', num(c.calls)),
        cell('errors', num(c.errors)),
      ),
    );
  }
  box.append(
    el('h3', {}, 'Canaries'),
    el('table', {}, el('thead', {}, el('tr', {}, ...['Entry', 'Slot', 'Stable', 'Canary', 'Share', 'State', 'Calls', 'Errors'].map((h) => el('th', {}, h)))), canaries),
  );
  const events = el('tbody');
  for (const e of (rollouts.events || []).slice().sort((a, b) => b.at_ms - a.at_ms)) {
    events.append(
      el(
        'tr',
        { class: 'event event-' + e.kind, 'data-kind': e.kind },
        cell('at', new Date(e.at_ms).toISOString()),
        cell('kind', e.kind),
        cell('entry', e.entry),
        cell('reason', e.reason),
      ),
    );
  }
  box.append(
    el('h3', {}, 'Events'),
    el('table', {}, el('thead', {}, el('tr', {}, ...['At', 'Kind', 'Entry', 'Reason'].map((h) => el('th', {}, h)))), events),
  );
}

const reloadSummary = (plugins) =>
  el(
    'p',
    { class: 'note', id: 'reload-summary' },
    `${num(plugins.reloads)} reloads, ${num(plugins.refused_reloads)} refused; last reload ${plugins.last_reload_at || '–'}.`,
  );

// A service without GET /v1/admin/rollouts (an older version behind the
// same page): the reload status of GET /v1/admin/plugins only.
function renderReloadStatus(plugins) {
  const box = $('rollouts-body');
  box.replaceChildren(reloadSummary(plugins));
  const errors = el('tbody');
  for (const e of plugins.errors) {
    errors.append(el('tr', { class: 'event event-refused', 'data-kind': 'refused' }, cell('at', e.at), cell('kind', 'refused'), cell('entry', e.file), cell('reason', e.error)));
  }
  if (!errors.firstChild) errors.append(el('tr', {}, el('td', { colspan: 4, class: 'note' }, 'No refused reload since the last good one.')));
  box.append(el('table', {}, el('thead', {}, el('tr', {}, ...['At', 'Kind', 'Entry', 'Reason'].map((h) => el('th', {}, h)))), errors));
}

async function load() {
  if (adminKey === null) return;
  setStatus('Loading…', 'busy');
  document.body.dataset.loaded = '';
  try {
    const [plugins, experiments, rollouts] = await Promise.all([
      getJson('/v1/admin/plugins'),
      getJson('/v1/admin/experiments'),
      getJson('/v1/admin/rollouts'),
    ]);
    renderRules(plugins);
    renderExperiments(experiments);
    if (rollouts) renderRollouts(rollouts, plugins);
    else renderReloadStatus(plugins);
    setStatus('Updated ' + new Date().toISOString(), 'ok');
    document.body.dataset.loaded = String(Date.now());
  } catch (error) {
    if (error instanceof Unauthorized) forget('The admin key was refused; enter it again.');
    else setStatus('Could not load: ' + error.message, 'error');
    document.body.dataset.loaded = 'error';
  }
}

function forget(message) {
  adminKey = null;
  clearInterval(refreshTimer);
  refreshTimer = null;
  $('refresh').disabled = true;
  $('forget').disabled = true;
  setStatus(message || 'Key forgotten.', message ? 'error' : '');
}

document.addEventListener('DOMContentLoaded', () => {
  $('login').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('admin-key');
    adminKey = input.value;
    input.value = '';
    $('refresh').disabled = false;
    $('forget').disabled = false;
    clearInterval(refreshTimer);
    refreshTimer = setInterval(load, REFRESH_MS);
    load();
  });
  $('refresh').addEventListener('click', load);
  $('forget').addEventListener('click', () => forget());
});
