"""The shopper-facing web page: one HTML shell at `/`, plain ES modules and CSS under `/assets/`."""

from __future__ import annotations

import os
from typing import Any

from flask import Blueprint, Response, current_app, render_template

from vitrina.config import Config, load_config

# Own static route (`/assets/...`) so the page never collides with the app's `/static` folder.
bp = Blueprint("page", __name__, template_folder="templates", static_folder="static",
               static_url_path="/assets")

_SEARCH_MODES = ("hybrid", "vector", "text", "image", "keyword")


def _app_config() -> Config:
    """The Config the app was built with, wherever the factory put it; else the file's defaults."""
    for value in (current_app.extensions.get("vitrina_config"), current_app.config.get("VITRINA_CONFIG"),
                  getattr(current_app.extensions.get("vitrina"), "cfg", None),
                  getattr(current_app.extensions.get("vitrina_service"), "cfg", None)):
        if isinstance(value, Config):
            return value
    return load_config(env={}) if not os.environ.get("VITRINA_CONFIG") else load_config()


def page_settings(cfg: Config, keys_required: bool | None = None) -> dict[str, Any]:
    """What the page needs to know about this catalogue and service (never any secret)."""
    cat = cfg.catalogue
    card_fields: list[str] = []
    for name in (cat.brand, *cat.filterable, cat.category):
        if name and name not in card_fields and name not in ("masterCategory", "subCategory"):
            card_fields.append(name)
    if keys_required is None:
        keys_env = os.environ.get(cfg.web.api_keys_env, "") if cfg.web.api_keys_env else ""
        keys_required = bool(cfg.web.api_keys or keys_env.strip())
    return {
        "filterable": list(cat.filterable),
        "has_price": bool(cat.price),
        "card_fields": card_fields[:3],
        "modes": list(_SEARCH_MODES),
        "default_mode": cfg.search.default_mode if cfg.search.default_mode in _SEARCH_MODES else "hybrid",
        "default_k": max(1, min(cfg.search.default_k, cfg.search.max_k)),
        "page_size": max(1, min(24, cfg.search.max_k)),
        "image_weight": cfg.search.image_weight,
        "max_upload_bytes": cfg.search.max_upload_bytes,
        "max_query_chars": cfg.search.max_query_chars,
        "keys_required": keys_required,
    }


@bp.get("/")
def index() -> Response:
    """The search page; settings travel as JSON inside it, so it needs no extra round trip."""
    keys = current_app.extensions.get("vitrina_api_keys")
    settings = page_settings(_app_config(), None if keys is None else bool(keys))
    html = render_template("index.html", settings=settings)
    resp = Response(html, mimetype="text/html")
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


@bp.get("/experiments/<name>")
def experiment(name: str) -> Response:
    """A readable experiment report: the verdict, a table per variant, a plot (the data: /api/experiments/<name>)."""
    from search.online.traffic import check_name

    html = render_template("experiment.html", name=check_name(name))
    resp = Response(html, mimetype="text/html")
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp
