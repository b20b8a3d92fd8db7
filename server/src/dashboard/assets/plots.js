// kobo dashboard: the plots over time, drawn as SVG from the status's
// `series` (the last hour in minutes, the last day in quarter hours). No
// library and no inline style: colours come from classes in app.css, so
// light and dark follow the theme. Each plot's figure carries
// data-points (buckets with a value) for tests and people alike.
'use strict';

const KoboPlots = (() => {
  const NS = 'http://www.w3.org/2000/svg';
  const W = 320;
  const H = 120;
  const PAD = { l: 38, r: 6, t: 8, b: 18 };
  // Node lines take these classes in turn (app.css colours s0…s5).
  const PALETTE = 6;

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
    for (const c of children) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return el;
  }

  function html(tag, cls, ...children) {
    const el = document.createElement(tag);
    if (cls) el.className = cls;
    for (const c of children) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return el;
  }

  const clock = (at) => new Date(at).toISOString().slice(11, 16);

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function short(v, unit) {
    if (unit === 'ms') return v >= 10000 ? (v / 1000).toFixed(0) + 's' : v >= 1000 ? (v / 1000).toFixed(1) + 's' : v < 1 ? v.toFixed(1) + 'ms' : Math.round(v) + 'ms';
    if (unit === '%') return Math.round(v) + '%';
    return v >= 1000 ? (v / 1000).toFixed(v >= 10000 ? 0 : 1) + 'k' : String(Math.round(v * 10) / 10);
  }

  // The frame of one plot: grid lines, y labels at 0 and max, x labels.
  function frame(win, max, unit) {
    const n = win.succeeded.length;
    const x = (i) => PAD.l + ((W - PAD.l - PAD.r) * i) / Math.max(1, n);
    const y = (v) => H - PAD.b - ((H - PAD.t - PAD.b) * Math.min(v, max)) / max;
    const g = svg('g', { class: 'axes' },
      svg('line', { x1: PAD.l, y1: y(0), x2: W - PAD.r, y2: y(0) }),
      svg('line', { class: 'mid', x1: PAD.l, y1: y(max / 2), x2: W - PAD.r, y2: y(max / 2) }),
      svg('line', { class: 'mid', x1: PAD.l, y1: y(max), x2: W - PAD.r, y2: y(max) }),
      svg('text', { x: PAD.l - 4, y: y(max) + 3, 'text-anchor': 'end' }, short(max, unit)),
      svg('text', { x: PAD.l - 4, y: y(0) + 3, 'text-anchor': 'end' }, '0'),
      svg('text', { x: PAD.l, y: H - 4 }, clock(win.start)),
      svg('text', { x: W - PAD.r, y: H - 4, 'text-anchor': 'end' }, 'now'));
    return { g, x, y, n };
  }

  // Lines (or areas) for each of `lines`: {name, cls, values, area}.
  function linePlot(win, lines, unit, fixedMax) {
    const all = lines.flatMap((l) => l.values.filter((v) => v !== null && v !== undefined));
    const max = fixedMax || niceMax(Math.max(0, ...all));
    const { g, x, y, n } = frame(win, max, unit);
    const root = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, role: 'img' }, g);
    const half = (W - PAD.l - PAD.r) / Math.max(1, n) / 2;
    for (const line of lines) {
      let d = '';
      let pen = false;
      line.values.forEach((v, i) => {
        if (v === null || v === undefined) { pen = false; return; }
        d += (pen ? 'L' : 'M') + (x(i) + half).toFixed(1) + ' ' + y(v).toFixed(1);
        pen = true;
      });
      if (line.area && d) {
        const first = line.values.findIndex((v) => v !== null && v !== undefined);
        const last = line.values.length - 1 - [...line.values].reverse().findIndex((v) => v !== null && v !== undefined);
        root.append(svg('path', { class: 'area ' + line.cls, d: d + 'L' + (x(last) + half).toFixed(1) + ' ' + y(0) + 'L' + (x(first) + half).toFixed(1) + ' ' + y(0) + 'Z' }));
      }
      if (d) root.append(svg('path', { class: 'line ' + line.cls, d }, svg('title', {}, line.name)));
      // A lone value has no segment: a dot shows it.
      line.values.forEach((v, i) => {
        if (v === null || v === undefined) return;
        const prev = line.values[i - 1];
        const next = line.values[i + 1];
        const alone = (prev === null || prev === undefined) && (next === null || next === undefined);
        if (alone) root.append(svg('circle', { class: 'dot ' + line.cls, cx: (x(i) + half).toFixed(1), cy: y(v).toFixed(1), r: 2.2 },
          svg('title', {}, line.name + ' ' + clock(win.start + i * win.step_ms) + ': ' + short(v, unit))));
      });
    }
    return root;
  }

  // Stacked bars: `stacks` [{name, cls, values}] from the bottom up.
  function barPlot(win, stacks) {
    const n = win.succeeded.length;
    const totals = Array.from({ length: n }, (_, i) => stacks.reduce((a, s) => a + s.values[i], 0));
    const max = niceMax(Math.max(0, ...totals));
    const { g, x, y } = frame(win, max, '');
    const root = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, role: 'img' }, g);
    const width = Math.max(1, (W - PAD.l - PAD.r) / n - 1);
    for (let i = 0; i < n; i++) {
      let base = 0;
      for (const s of stacks) {
        const v = s.values[i];
        if (!v) continue;
        root.append(svg('rect', { class: 'col ' + s.cls, x: x(i).toFixed(1), y: y(base + v).toFixed(1), width: width.toFixed(1), height: (y(base) - y(base + v)).toFixed(1) },
          svg('title', {}, clock(win.start + i * win.step_ms) + ' ' + s.name + ': ' + v)));
        base += v;
      }
    }
    return root;
  }

  // Buckets with a value: measured (not null), or for counts and rates, not 0.
  const measured = (v) => v !== null && v !== undefined;
  const nonZero = (v) => measured(v) && v !== 0;
  const points = (test, ...lists) => {
    const n = Math.max(0, ...lists.map((l) => l.length));
    let count = 0;
    for (let i = 0; i < n; i++) if (lists.some((l) => test(l[i]))) count++;
    return count;
  };

  function figure(name, title, legend, plot, count) {
    const fig = html('figure', 'plot');
    fig.dataset.plot = name;
    fig.dataset.points = count;
    fig.append(
      html('figcaption', null, html('b', null, title), html('span', 'keys', ...legend.map(([cls, label]) => html('span', null, html('i', 'key ' + cls), label)))),
      plot,
    );
    if (count === 0) fig.append(html('p', 'none', 'no data yet'));
    return fig;
  }

  function nodeLines(win, field) {
    return win.nodes.map((n, i) => ({ name: n.node_id, cls: 's' + (i % PALETTE), values: n[field] }));
  }

  function nodeLegend(win) {
    return win.nodes.map((n, i) => ['s' + (i % PALETTE), n.node_id]);
  }

  function render(container, win) {
    const finished = [
      { name: 'succeeded', cls: 'succeeded', values: win.succeeded },
      { name: 'dead', cls: 'dead', values: win.dead },
      { name: 'cancelled', cls: 'cancelled', values: win.cancelled },
    ];
    const cpu = nodeLines(win, 'cpu_percent');
    const mem = nodeLines(win, 'mem_percent');
    const tokens = nodeLines(win, 'tokens_per_s');
    const per = win.step_ms === 60000 ? 'minute' : (win.step_ms / 60000) + ' min';
    container.replaceChildren(
      figure('finished', 'Jobs finished per ' + per, [['succeeded', 'succeeded'], ['dead', 'dead'], ['cancelled', 'cancelled']],
        barPlot(win, finished), points(nonZero, win.succeeded, win.dead, win.cancelled)),
      figure('queue', 'Queue depth (peak)', [['queued', 'queued']],
        linePlot(win, [{ name: 'queued', cls: 'queued', values: win.queued, area: true }], ''), points(nonZero, win.queued)),
      figure('pickup', 'Pickup (ready → leased)', [['p50', 'p50'], ['p95', 'p95']],
        linePlot(win, [{ name: 'p95', cls: 'p95', values: win.pickup_p95_ms }, { name: 'p50', cls: 'p50', values: win.pickup_p50_ms }], 'ms'),
        points(measured, win.pickup_p50_ms)),
      figure('run', 'Run time (leased → reported)', [['p50', 'p50'], ['p95', 'p95']],
        linePlot(win, [{ name: 'p95', cls: 'p95', values: win.run_p95_ms }, { name: 'p50', cls: 'p50', values: win.run_p50_ms }], 'ms'),
        points(measured, win.run_p50_ms)),
      figure('tokens', 'Tokens/s', [['all', 'all nodes'], ...nodeLegend(win)],
        linePlot(win, [{ name: 'all nodes', cls: 'all', values: win.tokens_per_s, area: true }, ...tokens], ''), points(nonZero, win.tokens_per_s)),
      figure('cpu', 'CPU per node', nodeLegend(win), linePlot(win, cpu, '%', 100), points(measured, ...cpu.map((l) => l.values))),
      figure('memory', 'Memory per node', nodeLegend(win), linePlot(win, mem, '%', 100), points(measured, ...mem.map((l) => l.values))),
    );
  }

  return { render };
})();
