// The experiment report page: the verdict, a table per variant, a dot-and-interval plot, comparisons, segments.

import * as api from "./api.js";

const { name } = JSON.parse(document.getElementById("experiment-settings").textContent);
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const LABELS = { ctr: "CTR", cart_rate: "Add-to-cart rate", conversion: "Conversion", revenue: "Revenue / response" };

const pct = (x) => `${(100 * x).toFixed(2)}%`;
const num = (x) => x.toFixed(3);
const fmt = (metric, x) => (x === null || x === undefined ? "–" : metric === "revenue" ? num(x) : pct(x));

function cell(row, text, cls, tag = "td") {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  if (text instanceof Node) el.append(text); else el.textContent = text;
  row.append(el);
  return el;
}

function withInterval(metric, value, ci) {
  const span = document.createElement("span");
  span.append(fmt(metric, value));
  if (ci) {
    const small = document.createElement("span");
    small.className = "ci";
    small.textContent = ` [${fmt(metric, ci[0])}, ${fmt(metric, ci[1])}]`;
    span.append(small);
  }
  return span;
}

function table(el, head, rows) {
  el.replaceChildren();
  const thead = el.createTHead().insertRow();
  head.forEach((h) => cell(thead, h, "", "th"));
  const body = el.createTBody();
  rows.forEach((fill) => fill(body.insertRow()));
}

function svg(tag, attrs, parent) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (parent) parent.append(el);
  return el;
}

// Points with whiskers on a shared horizontal axis: one row per label.
function dotPlot(box, rows, format, zero) {
  box.replaceChildren();
  const finite = rows.flatMap((r) => [r.value, ...(r.ci || [])]).filter(Number.isFinite);
  if (zero !== undefined) finite.push(zero);
  if (!finite.length) return;
  let lo = Math.min(...finite);
  let hi = Math.max(...finite);
  if (hi - lo < 1e-12) { lo -= 0.5; hi += 0.5; }
  const pad = (hi - lo) * 0.08;
  lo -= pad; hi += pad;
  const W = 900, left = 170, right = 30, rowH = 34, top = 10;
  const H = top + rows.length * rowH + 28;
  const x = (v) => left + ((v - lo) / (hi - lo)) * (W - left - right);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "metric per variant with 95% intervals" }, box);
  if (zero !== undefined) svg("line", { x1: x(zero), x2: x(zero), y1: top, y2: H - 24, stroke: "#b8b2ab", "stroke-dasharray": "4 4" }, root);
  rows.forEach((r, i) => {
    const y = top + i * rowH + rowH / 2;
    svg("text", { x: 8, y: y + 4 }, root).textContent = r.label;
    if (r.ci) svg("line", { x1: x(r.ci[0]), x2: x(r.ci[1]), y1: y, y2: y, stroke: r.color || "#57534e", "stroke-width": 3, "stroke-linecap": "round", class: "whisker" }, root);
    if (Number.isFinite(r.value)) svg("circle", { cx: x(r.value), cy: y, r: 6, fill: r.color || "#d9482b", class: "dot" }, root);
  });
  for (const v of [lo + pad, (lo + hi) / 2, hi - pad]) {
    svg("text", { x: x(v), y: H - 8, "text-anchor": "middle" }, root).textContent = format(v);
  }
}

function render(rep) {
  const v = $("verdict");
  v.textContent = rep.verdict.text;
  v.classList.toggle("winner", rep.verdict.status === "winner");
  $("about").textContent = `${rep.method === "interleave" ? "Team-draft interleaving" : "A/B split by shopper"} · `
    + `primary metric ${LABELS[rep.primary] || rep.primary} · error rate ${rep.alpha} (intervals stay valid however `
    + `often this page is read) · at least ${rep.min_shoppers} shoppers and ${rep.min_impressions} responses per variant`;
  if (rep.method === "interleave") return renderInterleaving(rep.interleaving);
  const metrics = rep.metrics;
  table($("variants"), ["variant", "shoppers", "responses", ...metrics.map((m) => LABELS[m] || m)],
    rep.variants.map((r) => (row) => {
      cell(row, r.name);
      cell(row, String(r.shoppers));
      cell(row, String(r.impressions));
      metrics.forEach((m) => cell(row, r.metrics[m] ? withInterval(m, r.metrics[m].value, r.metrics[m].ci95) : "–"));
    }));
  dotPlot($("plot"), rep.variants.filter((r) => r.metrics[rep.primary]).map((r) => ({
    label: r.name, value: r.metrics[rep.primary].value, ci: r.metrics[rep.primary].ci95,
  })), (x) => fmt(rep.primary, x));
  const days = rep.timeline || [];
  $("timeline").hidden = !days.length;
  if (days.length) {
    dotPlot($("timeline"), days.map((d) => ({ label: d.day, value: d.difference, ci: d.interval, color: "#1f8a5b" })),
      (x) => fmt(rep.primary, x), 0);
    $("timeline").prepend(Object.assign(document.createElement("p"), {
      className: "muted small", textContent: "Difference against the control, day by day (always-valid interval)",
    }));
  }
  table($("comparisons"), ["variant", "metric", "difference", "relative", "interval", ""],
    rep.comparisons.map((c) => (row) => {
      cell(row, `${c.variant} vs ${c.against}`);
      cell(row, LABELS[c.metric] || c.metric);
      cell(row, fmt(c.metric, c.difference));
      cell(row, c.relative === null ? "–" : `${c.relative >= 0 ? "+" : ""}${(100 * c.relative).toFixed(1)}%`);
      cell(row, c.interval ? `[${fmt(c.metric, c.interval[0])}, ${fmt(c.metric, c.interval[1])}]` : "–");
      cell(row, c.significant ? "different" : "", c.significant ? "sig" : "");
    }));
  const segments = Object.entries(rep.segments || {});
  $("segments-box").hidden = !segments.length;
  table($("segments"), ["segment", ...rep.variants.map((r) => `${r.name}: ${LABELS[rep.primary]}`), "verdict"],
    segments.map(([seg, s]) => (row) => {
      cell(row, `#${seg}`);
      s.variants.forEach((r) => cell(row, r.metrics[rep.primary] ? withInterval(rep.primary, r.metrics[rep.primary].value, r.metrics[rep.primary].ci95) : "–"));
      cell(row, s.verdict.text);
    }));
}

function renderInterleaving(il) {
  const [a, b] = [il.teams.A, il.teams.B];
  table($("variants"), ["ranker", "responses won"], [a, b, "tie"].map((t) => (row) => {
    cell(row, t);
    cell(row, String(il.wins[t] ?? 0));
  }));
  dotPlot($("plot"), [{ label: `${a} over ${b}`, value: il.preference, ci: il.interval }], (x) => x.toFixed(2), 0);
  table($("comparisons"), ["shoppers", "responses with clicks", "preference", "interval"], [(row) => {
    cell(row, String(il.shoppers));
    cell(row, String(il.responses_with_clicks));
    cell(row, il.preference.toFixed(3));
    cell(row, il.interval ? `[${il.interval[0].toFixed(3)}, ${il.interval[1].toFixed(3)}]` : "–");
  }]);
}

api.experiment(name).then(render).catch((err) => {
  $("verdict").textContent = "";
  const box = $("error");
  box.textContent = `${err.error || "Could not load the report"}: ${err.detail || err.message || ""}`;
  box.hidden = false;
}).finally(() => { document.body.dataset.ready = "true"; });
