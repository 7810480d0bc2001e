"""The shopper page and its static files are served by the real app and hold the controls the page needs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from vitrina.config import Config
from web import create_app
from web.page import page_settings

STATIC = Path(__file__).resolve().parents[1] / "web" / "static"


class _Collect(HTMLParser):
    """Every start tag with its attributes, plus the text inside <script id="vitrina-settings">."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.settings = ""
        self._in_settings = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        self._in_settings = tag == "script" and a.get("id") == "vitrina-settings"

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_settings = False

    def handle_data(self, data: str) -> None:
        if self._in_settings:
            self.settings += data


def _parse(html: str) -> _Collect:
    p = _Collect()
    p.feed(html)
    return p


def _by_id(page: _Collect, ident: str) -> tuple[str, dict[str, str]]:
    found = [(t, a) for t, a in page.tags if a.get("id") == ident]
    assert len(found) == 1, f"expected exactly one element with id={ident!r}, found {len(found)}"
    return found[0]


@pytest.fixture
def app(cfg: Config) -> Flask:
    return create_app(cfg)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def test_page_served_with_controls(client: FlaskClient) -> None:
    resp = client.get("/")
    assert resp.status_code == 200
    assert resp.mimetype == "text/html"
    page = _parse(resp.get_data(as_text=True))
    # search box, photo picker, image-weight slider, modes, user id, write key, results, detail panel
    assert _by_id(page, "q")[1]["type"] == "search"
    tag, photo = _by_id(page, "photo-input")
    assert (tag, photo["type"], photo["accept"]) == ("input", "file", "image/*")
    assert _by_id(page, "photo-clear")[1].get("aria-label")
    weight = _by_id(page, "image-weight")[1]
    assert (weight["type"], weight["min"], weight["max"]) == ("range", "0", "1")
    modes = [a["value"] for t, a in page.tags if t == "input" and a.get("name") == "mode"]
    assert modes == ["hybrid", "vector", "text", "image", "keyword"]
    assert _by_id(page, "user-id")[0] == "input"
    assert _by_id(page, "api-key")[1]["type"] == "password"
    assert _by_id(page, "grid")
    assert _by_id(page, "load-more")
    assert _by_id(page, "detail")[0] == "dialog"
    assert _by_id(page, "error")[1]["role"] == "alert"
    assert _by_id(page, "recs")


def test_every_input_has_a_label(client: FlaskClient) -> None:
    page = _parse(client.get("/").get_data(as_text=True))
    labelled = {a["for"] for t, a in page.tags if t == "label" and a.get("for")}
    for tag, a in page.tags:
        if tag == "input" and a.get("type") not in ("radio", "checkbox", "hidden") and a.get("id") not in (
                "price-min", "price-max"):  # those two are wrapped in their <label>
            assert a.get("id") in labelled or a.get("aria-label"), f"input without a label: {a}"


def test_settings_reflect_config(client: FlaskClient, cfg: Config) -> None:
    page = _parse(client.get("/").get_data(as_text=True))
    settings = json.loads(page.settings)
    assert settings["filterable"] == list(cfg.catalogue.filterable)
    assert settings["has_price"] is True  # the test catalogue has a price column
    assert settings["default_mode"] == cfg.search.default_mode
    assert settings["keys_required"] is False
    assert _by_id(page, "price-min")  # price range inputs only when the catalogue has prices


def test_no_price_inputs_without_prices_and_keys_flagged(cfg: Config) -> None:
    cfg = cfg.replace(catalogue={"price": ""}, web={"api_keys": ("s3cret",)})
    html = create_app(cfg).test_client().get("/").get_data(as_text=True)
    page = _parse(html)
    settings = json.loads(page.settings)
    assert settings["has_price"] is False
    assert settings["keys_required"] is True
    assert not [a for _, a in page.tags if a.get("id") in ("price-min", "price-max")]
    assert "s3cret" not in html  # a key is never sent to the browser


def test_static_assets_served(client: FlaskClient) -> None:
    page = _parse(client.get("/").get_data(as_text=True))
    css = [a["href"] for t, a in page.tags if t == "link" and a.get("rel") == "stylesheet"]
    js = [a["src"] for t, a in page.tags if t == "script" and a.get("type") == "module"]
    assert css and js
    for url, kind in [(css[0], "text/css"), (js[0], "javascript")]:
        resp = client.get(url)
        assert resp.status_code == 200, url
        assert kind in resp.mimetype
    app_js = client.get(js[0]).get_data(as_text=True)
    # every module app.js imports is served too
    for rel in re.findall(r'from "\./([\w.]+)"', app_js) + re.findall(r'import \* as \w+ from "\./([\w.]+)"', app_js):
        resp = client.get(js[0].rsplit("/", 1)[0] + "/" + rel)
        assert resp.status_code == 200, rel
    assert client.get("/assets/nope.js").status_code == 404


def test_script_talks_the_contract() -> None:
    """The page calls exactly the contract's endpoints and sends writes with a Bearer key."""
    api_js = (STATIC / "api.js").read_text(encoding="utf-8")
    app_js = (STATIC / "app.js").read_text(encoding="utf-8")
    for path in ("/api/search", "/api/items/", "/similar", "/also-bought", "/recommendations", "/profile",
                 "/api/feedback"):
        assert path in api_js, path
    assert "Authorization = `Bearer ${apiKey}`" in api_js
    assert 'form.append("image"' in api_js
    for name in ('"click"', '"purchase"', "user_id", "image_weight", "facets", "filter.", "offset"):
        assert name in app_js, name
    assert "localStorage" in app_js


def test_page_import_is_torch_free() -> None:
    code = "import sys, web.page; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr


def test_page_settings_pure(cfg: Config) -> None:
    s = page_settings(cfg, keys_required=False)
    assert s["modes"] == ["hybrid", "vector", "text", "image", "keyword"]
    assert 1 <= s["page_size"] <= cfg.search.max_k
    assert "baseColour" in s["card_fields"]
