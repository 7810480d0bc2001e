// The search page controller: query state, photo upload, filters, results, feedback and personalisation.

import * as api from "./api.js";
import {
  buildCard, buildMini, formatPrice, metaLine, prettyName, priceOf, renderExplain, renderFacets, skeletons,
  imageUrl, understoodLine,
} from "./render.js";

const settings = JSON.parse(document.getElementById("vitrina-settings").textContent);
const $ = (id) => document.getElementById(id);
const store = {
  get: (k) => { try { return localStorage.getItem(`vitrina.${k}`) || ""; } catch { return ""; } },
  set: (k, v) => { try { localStorage.setItem(`vitrina.${k}`, v); } catch { /* private mode */ } },
};
const SUGGESTIONS = ["black watch", "red dress", "running shoes", "blue jeans", "white sneakers", "leather handbag"];

const state = {
  q: "",
  photo: null,
  photoUrl: "",
  mode: settings.default_mode,
  imageWeight: Number(settings.image_weight),
  filters: {},            // attribute -> Set of chosen values
  priceMin: "",
  priceMax: "",
  view: "search",         // "search" | "similar"
  similarOf: null,        // the item whose neighbours are shown
  results: [],
  total: 0,
  understood: null,       // how the query was read (hybrid text search)
  facets: {},
  expanded: new Set(),
  userId: "",
  personalise: true,
  dirty: false,           // feedback recorded since the results were fetched
  profileEvents: 0,       // events behind the shopper's profile (0: results are not personalised yet)
  controller: null,
  detailItem: null,
};

// ---------- messages ----------

function showError(err, context) {
  if (err && err.name === "AbortError") return;
  const box = $("error");
  box.replaceChildren();
  const title = document.createElement("strong");
  const body = document.createElement("span");
  if (err instanceof api.ApiError) {
    title.textContent = context ? `${context}: ${err.error}` : err.error;
    body.textContent = err.detail;
    if (err.status === 401) {
      body.textContent = `${err.detail ? `${err.detail} ` : ""}Enter the shop's write key under “You”.`;
      openAccount(true);
    }
  } else {
    title.textContent = context || "Something went wrong";
    body.textContent = err ? String(err.message || err) : "";
  }
  const close = document.createElement("button");
  close.type = "button";
  close.className = "chip-x";
  close.setAttribute("aria-label", "Dismiss message");
  close.textContent = "×";
  close.addEventListener("click", clearError);
  box.append(title, " ", body, close);
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

let toastTimer = 0;
function toast(text) {
  const el = $("toast");
  el.textContent = text;
  el.hidden = false;
  el.classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.classList.remove("show"); el.hidden = true; }, 2600);
}

// ---------- searching ----------

function searchParams() {
  const params = { k: settings.page_size, mode: state.mode };
  if (state.q) params.q = state.q;
  if (state.personalise && state.userId) params.user_id = state.userId;
  if (settings.filterable.length) params.facets = settings.filterable.join(",");
  for (const [name, values] of Object.entries(state.filters)) {
    if (values.size) params[`filter.${name}`] = [...values];
  }
  if (state.priceMin !== "") params.price_min = state.priceMin;
  if (state.priceMax !== "") params.price_max = state.priceMax;
  if (state.photo && state.q) params.image_weight = state.imageWeight;
  return params;
}

function hasQuery() {
  return Boolean(state.q || state.photo);
}

async function runSearch({ append = false, showMoves = false } = {}) {
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  const grid = $("grid");
  const before = new Map(state.results.map((r, i) => [r.id, i]));
  if (state.view === "search" && !hasQuery()) {
    state.results = [];
    grid.replaceChildren();
    $("welcome").hidden = false;
    $("summary").textContent = "";
    $("load-more").hidden = true;
    renderActiveFilters();
    syncUrl();
    return;
  }
  $("welcome").hidden = true;
  grid.setAttribute("aria-busy", "true");
  if (!append && !showMoves) grid.replaceChildren(...skeletons(Math.min(settings.page_size, 8)));
  try {
    let data;
    if (state.view === "similar") {
      const offset = append ? state.results.length : 0;
      data = await api.similar(state.similarOf.id, settings.page_size, { offset, user_id: state.userId || undefined });
      // the endpoint returns one page; offer "load more" while pages come back full
      data.total = offset + (data.results || []).length + ((data.results || []).length === settings.page_size ? 1 : 0);
    } else {
      const params = searchParams();
      params.offset = append ? state.results.length : 0;
      data = await api.search(params, state.photo, controller.signal);
    }
    if (controller.signal.aborted) return;
    clearError();
    const results = withContext(data, append ? state.results.length : 0);
    if (!append) state.results = results;
    else state.results = state.results.concat(results);
    state.total = Number(data.total ?? state.results.length);
    if (!append) state.understood = data.understood || null;
    if (data.facets) state.facets = data.facets;
    state.dirty = false;
    renderResults(showMoves ? before : null, data.took_ms);
    renderFilters();
    syncUrl();
  } catch (err) {
    if (err.name === "AbortError") return;
    if (!append) grid.replaceChildren();
    $("summary").textContent = "";
    $("load-more").hidden = true;
    showError(err, state.view === "similar" ? "Could not load similar items" : "Search failed");
  } finally {
    if (state.controller === controller) {
      grid.setAttribute("aria-busy", "false");
      state.controller = null;
    }
  }
}

function renderResults(before, tookMs) {
  const grid = $("grid");
  const cards = state.results.map((item, i) => {
    const card = buildCard(item, settings.card_fields);
    if (before) {
      const move = card.querySelector(".rank-move");
      const was = before.get(item.id);
      if (was === undefined) { move.textContent = "New"; move.hidden = false; move.classList.add("up"); }
      else if (was !== i) {
        move.textContent = was > i ? `▲ ${was - i}` : `▼ ${i - was}`;
        move.classList.add(was > i ? "up" : "down");
        move.hidden = false;
        move.setAttribute("aria-label", was > i ? `moved up ${was - i}` : `moved down ${i - was}`);
      }
    }
    return card;
  });
  grid.replaceChildren(...cards);
  const summary = $("summary");
  summary.replaceChildren();
  if (state.view === "similar") {
    summary.append(`More like “${state.similarOf.title || state.similarOf.id}”`);
    const back = document.createElement("button");
    back.type = "button";
    back.className = "link-btn";
    back.textContent = hasQuery() ? "Back to your search" : "Back";
    back.addEventListener("click", () => { state.view = "search"; state.similarOf = null; runSearch(); });
    summary.append(" ", back);
  } else if (!state.results.length) {
    summary.textContent = "Nothing matched. Try other words, another mode, or fewer filters.";
  } else {
    const what = [state.q ? `“${state.q}”` : "", state.photo ? "your photo" : ""].filter(Boolean).join(" + ");
    const count = state.total > state.results.length ? `${state.results.length} of ${state.total}` : `${state.results.length}`;
    summary.textContent = `${count} results for ${what}`;
    if (typeof tookMs === "number") {
      const t = document.createElement("span");
      t.className = "took";
      t.textContent = ` · ${Math.round(tookMs)} ms`;
      summary.append(t);
    }
    if (state.personalise && state.userId && state.profileEvents > 0) {
      const p = document.createElement("span");
      p.className = "badge";
      p.textContent = "personalised";
      summary.append(" ", p);
    }
  }
  const understood = $("understood");
  understood.textContent = state.view === "similar" ? "" : understoodLine(state.understood);
  understood.hidden = !understood.textContent;
  const more = $("load-more");
  more.hidden = !(state.results.length && state.results.length < state.total);
}

function renderFilters() {
  renderFacets($("facets"), state.facets, state.filters, settings.filterable, state.expanded, (name, value, on) => {
    if (value === null) {
      if (on) state.expanded.add(name); else state.expanded.delete(name);
      renderFilters();
      return;
    }
    toggleFilter(name, value, on);
  });
  renderActiveFilters();
}

function toggleFilter(name, value, on) {
  const set = state.filters[name] || new Set();
  if (on) set.add(value); else set.delete(value);
  state.filters[name] = set;
  state.view = "search";
  runSearch();
}

function renderActiveFilters() {
  const box = $("active-filters");
  box.replaceChildren();
  let any = false;
  for (const [name, values] of Object.entries(state.filters)) {
    for (const value of values) {
      any = true;
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "active-chip";
      chip.textContent = `${prettyName(name)}: ${value}`;
      chip.setAttribute("aria-label", `Remove filter ${prettyName(name)} ${value}`);
      chip.addEventListener("click", () => toggleFilter(name, value, false));
      box.append(chip);
    }
  }
  if (state.priceMin !== "" || state.priceMax !== "") {
    any = true;
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "active-chip";
    chip.textContent = `Price ${state.priceMin || "0"}–${state.priceMax || "∞"}`;
    chip.addEventListener("click", () => {
      state.priceMin = state.priceMax = "";
      if ($("price-min")) { $("price-min").value = ""; $("price-max").value = ""; }
      runSearch();
    });
    box.append(chip);
  }
  $("clear-filters").hidden = !any;
  const n = box.children.length;
  $("filters-toggle").textContent = n ? `Filters (${n})` : "Filters";
}

function syncUrl() {
  const url = new URL(window.location.href);
  url.search = "";
  if (state.q) url.searchParams.set("q", state.q);
  if (state.mode !== settings.default_mode) url.searchParams.set("mode", state.mode);
  for (const [name, values] of Object.entries(state.filters)) {
    for (const v of values) url.searchParams.append(`filter.${name}`, v);
  }
  window.history.replaceState(null, "", url);
}

// ---------- feedback and personalisation ----------

// Each result remembers the response that showed it (request id, its place there, the variant that served it),
// so feedback can name them and the score breakdown can say which variant ranked it.
function withContext(data, offset) {
  return (data.results || []).map((r, i) => ({
    ...r, _ctx: { request_id: data.request_id, position: offset + i, variant: data.variant, experiment: data.experiment },
  }));
}

function feedbackEvent(item, event) {
  const body = { user_id: state.userId, item_id: item.id, event };
  const ctx = item._ctx || {};
  if (ctx.request_id) { body.request_id = ctx.request_id; body.position = ctx.position; }
  return body;
}

async function record(item, event) {
  if (!state.userId) {
    showError(new Error("Enter a shopper id under “You” to personalise."), "No shopper id");
    openAccount(true);
    return false;
  }
  try {
    await api.feedback(feedbackEvent(item, event));
    state.dirty = true;
    state.profileEvents += 1;
    refreshProfile();
    return true;
  } catch (err) {
    showError(err, `Could not record your ${event}`);
    return false;
  }
}

async function afterFeedback() {
  loadRecommendations();
  if (state.results.length && state.personalise) await runSearch({ showMoves: true });
}

async function buy(item) {
  if (await record(item, "purchase")) {
    toast(`Bought: ${item.title || item.id}. Your results now take it into account.`);
    await afterFeedback();
  }
}

async function refreshProfile() {
  const el = $("profile-summary");
  if (!state.userId) { state.profileEvents = 0; el.textContent = "No shopper id: results are not personalised."; return; }
  try {
    const data = await api.profile(state.userId);
    const counts = (data && data.counts) || {};
    state.profileEvents = Object.values(counts).reduce((a, n) => a + (Number(n) || 0), 0);
    const parts = Object.entries(counts).filter(([, n]) => n > 0).map(([e, n]) => `${n} ${e}${n === 1 ? "" : "s"}`);
    el.textContent = parts.length ? `Your activity: ${parts.join(", ")}.` : "No activity yet.";
  } catch (err) {
    state.profileEvents = 0;
    el.textContent = err.status === 404 ? "No activity yet: click or buy something." : "";
  }
}

async function loadRecommendations() {
  const box = $("recs");
  if (!state.userId || !state.personalise) { box.hidden = true; return; }
  try {
    const data = await api.recommendations(state.userId, 12);
    const items = data ? withContext(data, 0) : [];
    $("recs-row").replaceChildren(...items.map(miniFor));
    box.hidden = !items.length;
  } catch (err) {
    box.hidden = true; // not available yet, or nothing to recommend: the page works without it
  }
}

function miniFor(item) {
  const node = buildMini(item);
  node.addEventListener("click", () => openItem(item));
  return node;
}

// ---------- product detail ----------

function fillDetail(item) {
  $("detail-title").textContent = item.title || item.id;
  const img = $("detail-img");
  img.alt = item.title || `Product ${item.id}`;
  img.src = imageUrl(item);
  const price = priceOf(item);
  $("detail-price").textContent = price === null ? "" : formatPrice(price);
  const desc = item.description || (item.attributes || {}).description || "";
  $("detail-desc").textContent = desc;
  $("detail-desc").hidden = !desc;
  const dl = $("detail-attrs");
  dl.replaceChildren();
  const attrs = Object.entries(item.attributes || {});
  for (const [k, v] of attrs) {
    if (v === null || v === "" || k === "description" || k === "price" || typeof v === "object") continue;
    if (k === "category" && attrs.some(([k2, v2]) => k2 !== k && v2 === v)) continue; // same as another field
    const dt = document.createElement("dt");
    dt.textContent = prettyName(k);
    const dd = document.createElement("dd");
    dd.textContent = String(v);
    dl.append(dt, dd);
  }
}

async function openItem(item) {
  record(item, "click").then((ok) => { if (ok) loadRecommendations(); });
  state.detailItem = item;
  fillDetail(item);
  $("also-bought").hidden = true;
  $("detail-similar-strip").hidden = true;
  const dialog = $("detail");
  if (!dialog.open) dialog.showModal();
  dialog.querySelector(".detail-inner").scrollTop = 0;
  const id = item.id;
  api.getItem(id).then((full) => {
    if (state.detailItem && state.detailItem.id === id && full) fillDetail({ ...item, ...(full.item || full) });
  }).catch(() => {});
  api.alsoBought(id, 8, state.userId).then((data) => {
    const items = (data ? withContext(data, 0) : []).filter((r) => r.id !== id);
    if (state.detailItem?.id !== id) return;
    $("also-row").replaceChildren(...items.map(miniFor));
    $("also-bought").hidden = !items.length;
  }).catch(() => {});
  api.similar(id, 9, { user_id: state.userId || undefined }).then((data) => {
    const items = (data ? withContext(data, 0) : []).filter((r) => r.id !== id).slice(0, 8);
    if (state.detailItem?.id !== id) return;
    $("similar-row").replaceChildren(...items.map(miniFor));
    $("detail-similar-strip").hidden = !items.length;
  }).catch(() => {});
}

function showSimilar(item) {
  state.view = "similar";
  state.similarOf = item;
  if ($("detail").open) $("detail").close();
  runSearch();
  $("results").focus({ preventScroll: true });
  window.scrollTo({ top: 0, behavior: "smooth" });
}

// ---------- photo ----------

function setPhoto(file) {
  if (!file) return;
  const looksImage = (file.type || "").startsWith("image/") || /\.(jpe?g|png|gif|webp|bmp|avif)$/i.test(file.name || "");
  if (!looksImage) {
    showError(new Error(`“${file.name}” is not an image. Use a JPEG, PNG or WebP photo.`), "Cannot use that file");
    return;
  }
  if (file.size > settings.max_upload_bytes) {
    const mb = (n) => (n / 1e6).toFixed(1);
    showError(new Error(`The photo is ${mb(file.size)} MB; the limit is ${mb(settings.max_upload_bytes)} MB.`), "Photo too large");
    return;
  }
  if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
  state.photo = file;
  state.photoUrl = URL.createObjectURL(file);
  $("photo-preview").src = state.photoUrl;
  $("photo-name").textContent = file.name || "photo";
  $("photo-chip").hidden = false;
  $("dropzone").classList.add("has-photo");
  state.view = "search";
  updateWeightBox();
  runSearch();
}

function clearPhoto() {
  if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
  state.photo = null;
  state.photoUrl = "";
  $("photo-input").value = "";
  $("photo-preview").removeAttribute("src");
  $("photo-chip").hidden = true;
  $("dropzone").classList.remove("has-photo");
  updateWeightBox();
  runSearch();
  $("q").focus();
}

function updateWeightBox() {
  $("weight-box").hidden = !(state.photo && $("q").value.trim());
  $("image-weight-value").textContent = `${Math.round(state.imageWeight * 100)}% photo`;
}

// ---------- wiring ----------

function openAccount(open) {
  const panel = $("account-panel");
  panel.hidden = !open;
  $("account-toggle").setAttribute("aria-expanded", String(open));
}

function setUser(id) {
  state.userId = id.trim();
  store.set("user", state.userId);
  $("user-id").value = state.userId;
  $("avatar").textContent = (state.userId[0] || "?").toUpperCase();
  refreshProfile();
  loadRecommendations();
}

function debounce(fn, ms) {
  let t = 0;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

function wire() {
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.q = $("q").value.trim();
    state.view = "search";
    runSearch();
  });
  $("q").addEventListener("input", updateWeightBox);
  $("photo-input").addEventListener("change", (e) => setPhoto(e.target.files[0]));
  $("photo-clear").addEventListener("click", clearPhoto);
  $("image-weight").addEventListener("input", (e) => { state.imageWeight = Number(e.target.value); updateWeightBox(); });
  $("image-weight").addEventListener("change", debounce(() => runSearch(), 150));
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => { state.mode = radio.value; if (state.view === "search") runSearch(); });
  }
  $("personalise").addEventListener("change", (e) => {
    state.personalise = e.target.checked;
    loadRecommendations();
    runSearch();
  });
  $("clear-filters").addEventListener("click", () => {
    state.filters = {};
    state.priceMin = state.priceMax = "";
    if ($("price-min")) { $("price-min").value = ""; $("price-max").value = ""; }
    runSearch();
  });
  if ($("price-apply")) {
    const apply = () => { state.priceMin = $("price-min").value; state.priceMax = $("price-max").value; runSearch(); };
    $("price-apply").addEventListener("click", apply);
    for (const id of ["price-min", "price-max"]) {
      $(id).addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); apply(); } });
    }
  }
  $("load-more").addEventListener("click", () => runSearch({ append: true }));
  $("filters-toggle").addEventListener("click", (e) => {
    const open = !$("filters").classList.contains("open");
    $("filters").classList.toggle("open", open);
    e.currentTarget.setAttribute("aria-expanded", String(open));
  });

  // cards: open, buy, more like this, why
  $("grid").addEventListener("click", (e) => {
    const card = e.target.closest(".card");
    if (!card || card.classList.contains("skeleton")) return;
    const item = state.results.find((r) => String(r.id) === card.dataset.id);
    if (!item) return;
    const act = e.target.closest("[data-act]")?.dataset.act;
    if (act === "buy") buy(item);
    else if (act === "similar") showSimilar(item);
    else if (act === "explain") {
      const box = card.querySelector(".explain");
      const open = box.hidden;
      if (open) renderExplain(box, item);
      box.hidden = !open;
      e.target.closest("[data-act]").setAttribute("aria-expanded", String(open));
    } else if (e.target.closest(".card-media, .card-open")) openItem(item);
  });

  // detail dialog
  const dialog = $("detail");
  $("detail-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (e) => { if (e.target === dialog) dialog.close(); });
  dialog.addEventListener("close", () => {
    state.detailItem = null;
    if (state.dirty && state.personalise && state.results.length) runSearch({ showMoves: true });
  });
  $("detail-buy").addEventListener("click", async () => {
    const item = state.detailItem;
    if (item && await record(item, "purchase")) { toast(`Bought: ${item.title || item.id}`); loadRecommendations(); }
  });
  $("detail-cart").addEventListener("click", async () => {
    const item = state.detailItem;
    if (item && await record(item, "cart")) toast(`Added to your bag: ${item.title || item.id}`);
  });
  $("detail-similar").addEventListener("click", () => state.detailItem && showSimilar(state.detailItem));

  // account
  $("account-toggle").addEventListener("click", () => openAccount($("account-panel").hidden));
  $("user-id").addEventListener("change", (e) => { setUser(e.target.value); if (state.results.length) runSearch(); });
  $("api-key").addEventListener("change", (e) => { store.set("key", e.target.value.trim()); api.setApiKey(e.target.value); });
  $("forget-me").addEventListener("click", async () => {
    if (!state.userId) return;
    try {
      await api.forget(state.userId);
      toast("Forgotten: your activity was deleted.");
    } catch (err) {
      if (err.status !== 404) { showError(err, "Could not forget you"); return; }
    }
    refreshProfile();
    loadRecommendations();
    if (state.results.length) runSearch();
  });

  // drag and drop anywhere, and paste
  let depth = 0;
  const overlay = $("drop-overlay");
  const hasFiles = (e) => [...(e.dataTransfer?.types || [])].includes("Files");
  document.addEventListener("dragenter", (e) => { if (hasFiles(e)) { depth += 1; overlay.hidden = false; } });
  document.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) overlay.hidden = true; });
  document.addEventListener("dragover", (e) => { if (hasFiles(e)) e.preventDefault(); });
  document.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth = 0;
    overlay.hidden = true;
    setPhoto(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const file = [...(e.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) { e.preventDefault(); setPhoto(file); }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && !["INPUT", "TEXTAREA"].includes(document.activeElement?.tagName)) {
      e.preventDefault();
      $("q").focus();
    }
  });

  const suggestions = $("suggestions");
  for (const text of SUGGESTIONS) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "suggestion";
    b.textContent = text;
    b.addEventListener("click", () => { $("q").value = text; state.q = text; state.view = "search"; runSearch(); });
    suggestions.append(b);
  }
}

function restore() {
  let user = store.get("user");
  if (!user) {
    user = `shopper-${Math.random().toString(36).slice(2, 8)}`;
    store.set("user", user);
  }
  const key = store.get("key");
  $("api-key").value = key;
  api.setApiKey(key);
  const url = new URL(window.location.href);
  state.q = (url.searchParams.get("q") || "").trim();
  $("q").value = state.q;
  const mode = url.searchParams.get("mode");
  if (mode && settings.modes.includes(mode)) {
    state.mode = mode;
    const radio = document.querySelector(`input[name="mode"][value="${mode}"]`);
    if (radio) radio.checked = true;
  }
  for (const [name, value] of url.searchParams) {
    if (!name.startsWith("filter.")) continue;
    const attr = name.slice(7);
    (state.filters[attr] = state.filters[attr] || new Set()).add(value);
  }
  if (settings.keys_required && !key) openAccount(true);
  setUser(user);
  updateWeightBox();
  document.body.dataset.ready = "true";
  if (state.q) runSearch();
}

wire();
restore();

// exposed for debugging in the console
window.vitrina = { state, runSearch, metaLine };
