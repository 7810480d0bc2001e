// Thin client for the vitrina JSON API: every failure becomes an ApiError carrying the API's {error, detail}.

export class ApiError extends Error {
  constructor(status, error, detail) {
    super(detail ? `${error}: ${detail}` : error);
    this.status = status;
    this.error = error;
    this.detail = detail || "";
  }
}

let apiKey = "";

export function setApiKey(key) {
  apiKey = (key || "").trim();
}

function appendParams(target, params) {
  for (const [name, value] of Object.entries(params || {})) {
    if (value === undefined || value === null || value === "") continue;
    const values = Array.isArray(value) ? value : [value];
    for (const v of values) target.append(name, String(v));
  }
}

async function request(method, path, { params, json, form, signal } = {}) {
  const url = new URL(path, window.location.origin);
  appendParams(url.searchParams, params);
  const headers = { Accept: "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  let resp;
  try {
    resp = await fetch(url, { method, headers, body, signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "network error", "The shop could not be reached. Check your connection and try again.");
  }
  const text = await resp.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!resp.ok) {
    const error = (data && data.error) || resp.statusText || `HTTP ${resp.status}`;
    const detail = (data && data.detail) || "";
    throw new ApiError(resp.status, String(error), detail ? String(detail) : "");
  }
  return data;
}

const enc = encodeURIComponent;

// Search: GET with the query string, or multipart POST when a photo is attached.
export function search(params, photo, signal) {
  if (!photo) return request("GET", "/api/search", { params, signal });
  const form = new FormData();
  appendParams(form, params);
  form.append("image", photo, photo.name || "photo");
  return request("POST", "/api/search", { form, signal });
}

export const getItem = (id) => request("GET", `/api/items/${enc(id)}`);
export const similar = (id, k, params) => request("GET", `/api/items/${enc(id)}/similar`, { params: { k, ...params } });
export const alsoBought = (id, k, user) => request("GET", `/api/items/${enc(id)}/also-bought`, { params: { k, user_id: user } });
export const recommendations = (user, k) => request("GET", `/api/users/${enc(user)}/recommendations`, { params: { k } });
export const profile = (user) => request("GET", `/api/users/${enc(user)}/profile`);
export const forget = (user) => request("DELETE", `/api/users/${enc(user)}/profile`);
export const feedback = (events) => request("POST", "/api/feedback", { json: events });
export const experiments = () => request("GET", "/api/experiments");
export const experiment = (name) => request("GET", `/api/experiments/${enc(name)}`);
