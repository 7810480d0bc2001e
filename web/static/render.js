// DOM builders for the page: product cards, small strip tiles, score breakdowns and facet filters.

// Score parts the engine reports, in display order. `unit` parts live in [0, 1] (or [-1, 1]) and get a bar.
const PARTS = [
  ["keyword", "Keywords (BM25)", "num"],
  ["keyword_rank", "Keywords", "rank"],
  ["vector", "Meaning (cosine)", "unit"],
  ["vector_rank", "Meaning", "rank"],
  ["dense", "Vector similarity", "unit"],
  ["dense_rank", "Vector similarity", "rank"],
  ["rrf", "Rank fusion", "num"],
  ["attributes", "Attributes named", "unit"],
  ["relevance", "Relevance", "num"],
  ["relevance_norm", "Relevance (scaled)", "unit"],
  ["personal", "Your taste", "unit"],
  ["blend", "Taste weight", "pct"],
  ["popularity", "Popular now", "unit"],
  ["demotion", "Already bought", "unit"],
  ["source", "Why it is here", "text"],
];
const KNOWN = new Map(PARTS.map(([key, label, kind]) => [key, { label, kind }]));
const HIDDEN_PARTS = new Set(["final", "ranker", "team", "user_cosine", "shared", "item_popularity", "bought"]);
const MAX_CONTRIBUTIONS = 6;

export function prettyName(name) {
  const spaced = String(name).replace(/([a-z0-9])([A-Z])/g, "$1 $2").replace(/[_-]+/g, " ").trim();
  return spaced.charAt(0).toUpperCase() + spaced.slice(1).toLowerCase();
}

export function imageUrl(item) {
  return item.image_url || `/api/items/${encodeURIComponent(item.id)}/image`;
}

export function priceOf(item) {
  const raw = item.price ?? (item.attributes || {}).price;
  const value = typeof raw === "number" ? raw : Number.parseFloat(raw);
  return Number.isFinite(value) ? value : null;
}

const money = new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
export const formatPrice = (value) => (value === null ? "" : money.format(value));

function setImage(img, item) {
  img.alt = item.title || `Product ${item.id}`;
  img.addEventListener("error", () => img.closest("[data-img]")?.classList.add("no-image"), { once: true });
  img.src = imageUrl(item);
}

export function metaLine(item, fields) {
  const attrs = item.attributes || {};
  return fields.map((f) => attrs[f] ?? item[f]).filter((v) => v !== undefined && v !== null && v !== "")
    .map(String).join(" · ");
}

export function buildCard(item, fields) {
  const node = document.getElementById("card-template").content.firstElementChild.cloneNode(true);
  node.dataset.id = item.id;
  const media = node.querySelector(".card-media");
  media.dataset.img = "";
  setImage(media.querySelector("img"), item);
  const open = node.querySelector(".card-open");
  open.textContent = item.title || item.id;
  open.setAttribute("aria-label", `View details: ${item.title || item.id}`);
  node.querySelector(".card-meta").textContent = metaLine(item, fields);
  const price = priceOf(item);
  const priceEl = node.querySelector(".card-price");
  priceEl.textContent = price === null ? "" : formatPrice(price);
  node.querySelector(".explain").id = `explain-${cssSafe(item.id)}`;
  node.querySelector(".explain-toggle").setAttribute("aria-controls", `explain-${cssSafe(item.id)}`);
  return node;
}

export function buildMini(item) {
  const node = document.getElementById("mini-template").content.firstElementChild.cloneNode(true);
  node.dataset.id = item.id;
  node.dataset.img = "";
  setImage(node.querySelector("img"), item);
  node.querySelector(".mini-title").textContent = item.title || item.id;
  node.setAttribute("aria-label", `View details: ${item.title || item.id}`);
  return node;
}

// Which experiment variant served the result (and, interleaved, which team placed it).
function servedBy(item) {
  const ctx = item._ctx || {};
  const out = [];
  if (ctx.variant) {
    out.push({ label: "Variant", text: ctx.experiment ? `${ctx.variant} (experiment ${ctx.experiment})` : ctx.variant, bar: null });
  }
  const team = (item.explain || {}).team;
  if (team) out.push({ label: "Placed by", text: team, bar: null });
  return out;
}

// The learned ranker's score and the features that moved it most (bars relative to the largest).
function learnedRows(ranker) {
  if (!ranker || typeof ranker.score !== "number") return [];
  const out = [{ label: "Learned ranker", text: `${ranker.score.toFixed(3)} · model ${ranker.model}`, bar: null }];
  const parts = Object.entries(ranker.contributions || {}).slice(0, MAX_CONTRIBUTIONS);
  const top = Math.max(1e-9, ...parts.map(([, v]) => Math.abs(v)));
  for (const [name, value] of parts) {
    out.push({ label: `  ${prettyName(name)}`, text: `${value >= 0 ? "+" : ""}${value.toFixed(3)}`, bar: value / top });
  }
  return out;
}

export function cssSafe(id) {
  return String(id).replace(/[^A-Za-z0-9_-]/g, (c) => `_${c.charCodeAt(0).toString(16)}`);
}

// The score breakdown: one row per part (label, value), with a bar for parts on a 0..1 scale.
// Ranks are folded into their part ("4.99 · #1"); parts that are zero and say nothing are left out.
export function renderExplain(container, item) {
  container.replaceChildren();
  const explain = item.explain || {};
  const rows = [];
  const fmt = (v) => (Number.isInteger(v) ? String(v) : Math.abs(v) >= 100 ? v.toFixed(1) : v.toFixed(3));
  const consumed = new Set(["final"]);
  for (const [key, label, kind] of PARTS) {
    if (!(key in explain) || consumed.has(key)) continue;
    consumed.add(key);
    const value = explain[key];
    if (kind === "rank") {
      rows.push({ label, text: value === null || value === undefined ? "not matched" : `#${value}`, bar: null });
      continue;
    }
    if ((key === "popularity" || key === "demotion") && !value) continue;
    if (key === "relevance" && "relevance_norm" in explain) continue;
    if (key === "dense" && "vector_rank" in explain) continue; // hybrid: the same cosine as "vector"
    if (key === "attributes" && !value) continue;
    let text;
    if (value === null || value === undefined) text = "not matched";
    else if (typeof value !== "number") text = typeof value === "object" ? JSON.stringify(value) : String(value);
    else text = kind === "pct" ? `${Math.round(value * 100)}%` : fmt(value);
    const rankKey = `${key}_rank`;
    if (rankKey in explain) {
      consumed.add(rankKey);
      const rank = explain[rankKey];
      text = rank === null || rank === undefined ? "not matched" : `${text} · #${rank}`;
    }
    const bar = typeof value === "number" && (kind === "unit" || kind === "pct") ? value : null;
    rows.push({ label, text, bar });
  }
  for (const [key, value] of Object.entries(explain)) {
    if (KNOWN.has(key) || consumed.has(key) || HIDDEN_PARTS.has(key) || value === null || value === undefined) continue;
    rows.push({ label: prettyName(key), text: typeof value === "number" ? fmt(value) : String(value), bar: null });
  }
  if (!rows.length) {
    const p = document.createElement("p");
    p.className = "muted small";
    p.textContent = "No breakdown for this result.";
    container.append(p);
    return;
  }
  const list = document.createElement("dl");
  list.className = "explain-list";
  const add = ({ label, text, bar }, cls) => {
    const div = document.createElement("div");
    div.className = cls ? `explain-row ${cls}` : "explain-row";
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.textContent = text;
    div.append(dt, dd);
    if (bar !== null) {
      const track = document.createElement("span");
      track.className = "bar";
      track.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.className = bar < 0 ? "bar-fill neg" : "bar-fill";
      fill.style.width = `${Math.round(Math.min(1, Math.abs(bar)) * 100)}%`;
      track.append(fill);
      div.append(track);
    }
    list.append(div);
  };
  if (typeof item.score === "number") add({ label: "Score", text: item.score.toFixed(4), bar: null }, "total");
  for (const row of servedBy(item)) add(row, "served");
  rows.forEach((r) => add(r));
  for (const row of learnedRows(explain.ranker)) add(row, "learned");
  container.append(list);
}

// Facet filters: one fieldset per attribute, checkbox chips with counts; chosen values always stay visible.
export function renderFacets(container, facets, selected, order, expanded, onToggle) {
  container.replaceChildren();
  const names = [...new Set([...order, ...Object.keys(facets || {})])];
  let shown = 0;
  for (const name of names) {
    const counts = { ...((facets || {})[name] || {}) };
    const chosen = selected[name] || new Set();
    for (const value of chosen) if (!(value in counts)) counts[value] = 0;
    const entries = Object.entries(counts).filter(([v]) => v !== "").sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    if (!entries.length) continue;
    shown += 1;
    const box = document.createElement("fieldset");
    box.className = "facet";
    const legend = document.createElement("legend");
    legend.textContent = prettyName(name);
    box.append(legend);
    const list = document.createElement("div");
    list.className = "facet-values";
    const limit = expanded.has(name) ? entries.length : 8;
    entries.forEach(([value, count], i) => {
      if (i >= limit && !chosen.has(value)) return;
      const label = document.createElement("label");
      label.className = "facet-chip";
      const input = document.createElement("input");
      input.type = "checkbox";
      input.name = `filter.${name}`;
      input.value = value;
      input.checked = chosen.has(value);
      input.addEventListener("change", () => onToggle(name, value, input.checked));
      const text = document.createElement("span");
      text.className = "facet-value";
      text.textContent = value;
      const num = document.createElement("span");
      num.className = "facet-count";
      num.textContent = String(count);
      label.append(input, text, num);
      list.append(label);
    });
    box.append(list);
    if (entries.length > 8) {
      const more = document.createElement("button");
      more.type = "button";
      more.className = "link-btn small";
      more.textContent = expanded.has(name) ? "Show fewer" : `Show all ${entries.length}`;
      more.setAttribute("aria-expanded", String(expanded.has(name)));
      more.addEventListener("click", () => onToggle(name, null, !expanded.has(name)));
      box.append(more);
    }
    container.append(box);
  }
  if (!shown) {
    const p = document.createElement("p");
    p.className = "muted small";
    p.textContent = "No filters for these results.";
    container.append(p);
  }
}

export function skeletons(count) {
  return Array.from({ length: count }, () => {
    const div = document.createElement("div");
    div.className = "card skeleton";
    div.setAttribute("aria-hidden", "true");
    div.innerHTML = '<div class="card-media"></div><div class="card-body"><div class="sk-line"></div><div class="sk-line short"></div></div>';
    return div;
  });
}

// One line saying how a hybrid text query was read ("understood" in the response), or "" when nothing was:
// showing Sunglasses for "shades" · searched for "sunglasses" (you typed "sunglases") · not Black · price up to 20.
export function understoodLine(understood) {
  if (!understood || !Array.isArray(understood.readings)) return "";
  const parts = [];
  for (const r of understood.readings) {
    if (r.how === "similar" && r.values) {
      const [values] = Object.values(r.values);
      if (values && values.length && r.confidence >= 0.2) parts.push(`showing ${values[0]} for “${r.words}”`);
    } else if (r.how === "spelling") {
      parts.push(`searched for “${r.read_as}” (you typed “${r.words}”)`);
    } else if (r.how === "exclude" && r.exclude) {
      parts.push(`not ${Object.values(r.exclude).flat().join(", ")}`);
    } else if (r.how === "price" && r.price) {
      const { min, max } = r.price;
      const span = min !== null && max !== null ? `${formatPrice(min)}–${formatPrice(max)}`
        : max !== null ? `up to ${formatPrice(max)}` : `from ${formatPrice(min)}`;
      parts.push(`price ${span}`);
    }
  }
  if (!parts.length) return "";
  const line = parts.join(" · ");
  return line.charAt(0).toUpperCase() + line.slice(1);
}
