"""The shopper page in real headless Chromium against the real app over HTTP: search, photo, feedback, explain."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from tests.helpers import make_config, product_rows, write_catalogue
from vitrina.config import Config

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("VITRINA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
KEY = "browser-test-key"
EXPERIMENT = "page-test"
N_ITEMS = 48

if not Path(CHROMIUM).is_file():
    pytest.skip(f"no chromium binary at {CHROMIUM} (Debian: apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package drives chromium")


class Server:
    """The real app behind waitress on 127.0.0.1 and a free port, in a thread of this process."""

    def __init__(self, cfg: Config) -> None:
        from waitress.server import create_server

        from web import create_app

        self.cfg = cfg
        self.app = create_app(cfg)
        self.seen: list[dict[str, Any]] = []  # what arrived at /api/search: method, query args, form fields, files
        self.app.before_request(self._remember)
        self.http = create_server(self.app, host="127.0.0.1", port=0, threads=4, ident="vitrina-test")
        self.url = f"http://127.0.0.1:{self.http.effective_port}"
        self.thread = threading.Thread(target=self.http.run, name="vitrina-waitress", daemon=True)
        self.thread.start()

    def _remember(self) -> None:
        from flask import request

        if request.path == "/api/search":
            self.seen.append({"method": request.method, "args": request.args.to_dict(flat=False),
                              "form": request.form.to_dict(flat=False), "files": list(request.files)})

    def get_json(self, path: str) -> tuple[int, Any]:
        """GET with the write key (a shopper's profile needs it)."""
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {KEY}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def close(self) -> None:
        for channel in list(self.http._map.values()):  # keep-alive connections would keep the loop running
            if channel is not self.http:
                channel.close()
        self.http.close()
        self.thread.join(timeout=10)
        self.app.extensions["vitrina"].close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """48 products with real JPEGs, indexed by the real reindex pipeline with a tiny random image tower."""
    from indexer.pipeline import reindex
    from tests.tiny_models import write_tiny_checkpoint

    tmp = tmp_path_factory.mktemp("browser")
    catalogue = write_catalogue(tmp / "shop", product_rows(N_ITEMS))
    # an A/A experiment (the twin's override changes no ranking): the page shows the variant, the report renders
    cfg = make_config(tmp, catalogue, web={"api_keys": (KEY,)},
                      experiments={"name": EXPERIMENT, "variants": ("control", "twin: search.query_cache=1024"),
                                   "min_shoppers": 1, "min_impressions": 1})
    write_tiny_checkpoint(Path(cfg.image_encoder.checkpoint))
    summary = reindex(cfg, progress=False)
    assert summary.written == N_ITEMS and summary.image_vectors
    srv = Server(cfg)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def browser(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's chromium with a fresh profile directory (no downloaded browser); closed before the server."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROME_ARGS,
            viewport={"width": 1360, "height": 900})
        context.set_default_timeout(30_000)
        yield context
        context.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    """A fresh tab on the shop page, with JS errors collected (and asserted absent at the end)."""
    tab = browser.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto(server.url + "/")
    tab.wait_for_selector("body[data-ready='true']")
    yield tab
    tab.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def search(page: Any, text: str) -> None:
    page.fill("#q", text)
    with page.expect_response(lambda r: "/api/search" in r.url) as info:
        page.press("#q", "Enter")
    assert info.value.status == 200, info.value.text()
    page.wait_for_selector("#grid .card:not(.skeleton)")


def wait_images_loaded(page: Any) -> list[list[Any]]:
    """Wait until every result image finished loading, then return [src, naturalWidth] for each."""
    states = "imgs => imgs.map(i => [i.src, i.naturalWidth, i.complete])"
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")  # images load lazily, near the viewport
    try:
        page.wait_for_function("""() => [...document.querySelectorAll('#grid .card img')]
            .every(img => img.complete && img.naturalWidth > 0)""", timeout=15_000)
    except sync_api.TimeoutError:
        pytest.fail(f"result images did not load: {page.eval_on_selector_all('#grid .card img', states)}")
    page.evaluate("window.scrollTo(0, 0)")
    return page.eval_on_selector_all("#grid .card img", "imgs => imgs.map(i => [i.src, i.naturalWidth])")


def card_titles(page: Any) -> list[str]:
    return page.eval_on_selector_all("#grid .card .card-open", "els => els.map(e => e.textContent)")


def set_key(page: Any, key: str) -> None:
    if not page.is_visible("#api-key"):
        page.click("#account-toggle")
    page.fill("#api-key", key)
    page.dispatch_event("#api-key", "change")


def test_text_search_renders_product_images(page: Any) -> None:
    search(page, "red shoes")
    images = wait_images_loaded(page)
    assert len(images) == 24  # one page of results (page size 24, 48 items)
    assert all(src.endswith("/image") and width == 60 for src, width in images)  # the real 60x80 JPEGs
    titles = card_titles(page)
    assert "Red" in titles[0] and "Shoes" in titles[0]
    assert "results for “red shoes”" in page.inner_text("#summary")
    page.click("#load-more")
    page.wait_for_function("document.querySelectorAll('#grid .card').length === 48")
    assert page.is_hidden("#load-more")


def test_the_page_says_how_the_query_was_read(page: Any) -> None:
    search(page, "shooes not red")
    page.wait_for_selector("#understood:not([hidden])")
    line = page.inner_text("#understood")
    assert "Searched for “shoes” (you typed “shooes”)" in line and "not Red" in line, line
    metas = page.eval_on_selector_all("#grid .card .card-meta", "els => els.map(e => e.textContent)")
    assert metas and "Red" not in metas[0]
    search(page, "shoes")  # nothing to say: the line goes away
    page.wait_for_selector("#understood", state="hidden")


def test_facet_chip_filters_results(page: Any) -> None:
    search(page, "shoes")
    chip = page.locator("#facets .facet-chip", has_text="Women").first
    with page.expect_response(lambda r: "/api/search" in r.url and "filter.gender=Women" in r.url) as info:
        chip.click()
    assert info.value.status == 200
    page.wait_for_function("document.querySelector('#grid').getAttribute('aria-busy') === 'false'")
    metas = page.eval_on_selector_all("#grid .card .card-meta", "els => els.map(e => e.textContent)")
    assert metas and all(m.startswith("Women") for m in metas)
    assert "Gender: Women" in page.inner_text("#active-filters")


def test_photo_upload_search(page: Any, server: Server) -> None:
    photo = Path(server.cfg.catalogue.path).parent / "images" / "1010.jpg"  # a red shoe of the catalogue
    with page.expect_response(lambda r: r.url.endswith("/api/search") and r.request.method == "POST") as info:
        page.set_input_files("#photo-input", str(photo))
    assert info.value.status == 200, info.value.text()
    assert "multipart/form-data" in info.value.request.headers["content-type"]
    assert page.is_visible("#photo-chip")
    page.wait_for_selector("#grid .card:not(.skeleton)")
    wait_images_loaded(page)
    assert "your photo" in page.inner_text("#summary")
    ids = [r["id"] for r in info.value.json()["results"]]
    assert ids[0] == "1010"  # the photo's own product is its nearest neighbour
    # text + photo: the weight slider appears and its value travels with the request
    page.fill("#q", "blue")
    assert page.is_visible("#weight-box")
    with page.expect_response(lambda r: r.url.endswith("/api/search") and r.request.method == "POST") as info:
        page.press("#q", "Enter")
    assert info.value.status == 200
    sent = server.seen[-1]
    assert sent["files"] == ["image"] and sent["form"]["q"] == ["blue"]
    assert float(sent["form"]["image_weight"][0]) == pytest.approx(server.cfg.search.image_weight)
    page.click("#photo-clear")
    assert page.is_hidden("#photo-chip")


def test_click_and_buy_are_recorded_and_rerank(page: Any, server: Server) -> None:
    user = page.input_value("#user-id")
    assert user.startswith("shopper-")
    search(page, "black watches")
    # without the write key the API refuses, and the page says so clearly
    with page.expect_response(lambda r: "/api/feedback" in r.url) as refused:
        page.click("#grid .card >> nth=0 >> [data-act=buy]")
    assert refused.value.status == 401
    page.wait_for_selector("#error:not([hidden])")
    assert "API key required" in page.inner_text("#error")
    assert page.is_visible("#api-key")
    set_key(page, KEY)
    # a click on a card opens the detail panel and records a `click`
    first = card_titles(page)[0]
    with page.expect_response(lambda r: "/api/feedback" in r.url) as clicked:
        page.click("#grid .card >> nth=0 >> .card-open")
    assert clicked.value.status == 200, clicked.value.text()
    assert json.loads(clicked.value.request.post_data)["event"] == "click"
    assert clicked.value.request.headers["authorization"] == f"Bearer {KEY}"
    page.wait_for_selector("#detail[open]")
    assert page.inner_text("#detail-title") == first
    status, profile = server.get_json(f"/api/users/{user}/profile")
    assert status == 200 and profile["counts"]["click"] == 1
    # closing the panel re-ranks with the shopper's id
    with page.expect_request(lambda r: "/api/search" in r.url and f"user_id={user}" in r.url):
        page.keyboard.press("Escape")
    page.wait_for_function("document.querySelector('#grid').getAttribute('aria-busy') === 'false'")
    # a purchase from the card
    with page.expect_response(lambda r: "/api/feedback" in r.url) as bought:
        page.click("#grid .card >> nth=1 >> [data-act=buy]")
    assert bought.value.status == 200
    status, profile = server.get_json(f"/api/users/{user}/profile")
    assert profile["counts"]["purchase"] == 1 and profile["counts"]["click"] == 1
    page.wait_for_selector("#profile-summary:has-text('1 purchase')")


def test_score_breakdown_and_more_like_this(page: Any) -> None:
    search(page, "green caps")
    toggle = page.locator("#grid .card").first.locator(".explain-toggle")
    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "true"
    box = page.locator("#grid .card").first.locator(".explain")
    assert box.is_visible()
    text = box.inner_text()
    assert "Score" in text and "Keywords (BM25)" in text and "Meaning (cosine)" in text
    toggle.click()
    assert box.is_hidden()
    first = card_titles(page)[0]
    with page.expect_response(lambda r: "/similar" in r.url) as info:
        page.click("#grid .card >> nth=0 >> [data-act=similar]")
    assert info.value.status == 200
    page.wait_for_selector("#summary:has-text('More like')")
    assert first in page.inner_text("#summary")
    assert first not in card_titles(page)  # the item itself is left out


def test_variant_in_the_breakdown_and_feedback_names_the_response(page: Any, server: Server) -> None:
    set_key(page, KEY)
    page.fill("#q", "blue jeans")
    with page.expect_response(lambda r: "/api/search" in r.url) as info:
        page.press("#q", "Enter")
    body = info.value.json()
    page.wait_for_selector("#grid .card:not(.skeleton)")
    assert body["experiment"] == EXPERIMENT and body["variant"] in ("control", "twin")
    page.locator("#grid .card").nth(1).locator(".explain-toggle").click()
    text = page.locator("#grid .card").nth(1).locator(".explain").inner_text()
    assert "Variant" in text and f"{body['variant']} (experiment {EXPERIMENT})" in text
    with page.expect_response(lambda r: "/api/feedback" in r.url) as clicked:
        page.click("#grid .card >> nth=1 >> .card-open")
    sent = json.loads(clicked.value.request.post_data)
    assert clicked.value.status == 200
    assert sent["request_id"] == body["request_id"] and sent["position"] == 1 and sent["event"] == "click"
    assert sent["item_id"] == body["results"][1]["id"]
    page.keyboard.press("Escape")


def test_experiment_report_in_the_browser(page: Any, server: Server) -> None:
    shop = server.app.test_client()  # some shoppers' traffic through the same app (and log) first
    for n in range(40):
        body = shop.get("/api/search", query_string={"q": ("red shoes", "blue jeans")[n % 2], "k": 6,
                                                     "user_id": f"visitor-{n}"}).get_json()
        if n % 3:
            pos = n % 6
            shop.post("/api/feedback", headers={"Authorization": f"Bearer {KEY}"},
                      json={"user_id": f"visitor-{n}", "item_id": body["results"][pos]["id"], "event": "click",
                            "request_id": body["request_id"], "position": pos})
    status, report = server.get_json(f"/api/experiments/{EXPERIMENT}")
    assert status == 200 and report["variants"]
    page.goto(f"{server.url}/experiments/{EXPERIMENT}")
    page.wait_for_selector("body[data-ready='true']")
    assert page.inner_text("#verdict") == report["verdict"]["text"]
    rows = page.eval_on_selector_all("#variants tbody tr", "trs => trs.map(t => t.cells[0].textContent)")
    assert rows == [v["name"] for v in report["variants"]] == ["control", "twin"]
    responses = page.eval_on_selector_all("#variants tbody tr", "trs => trs.map(t => t.cells[2].textContent)")
    assert responses == [str(v["impressions"]) for v in report["variants"]]
    with_data = [v for v in report["variants"] if v["impressions"]]
    assert page.locator("#plot svg circle.dot").count() == len(with_data) == 2
    assert page.locator("#plot svg line.whisker").count() == 2  # each with its interval
    assert page.locator("#comparisons tbody tr").count() == len(report["comparisons"]) >= 3
    assert "CTR" in page.inner_text("#variants thead")
    out = Path(os.environ.get("VITRINA_SCREENSHOT_DIR", tempfile.gettempdir())) / "vitrina-experiment.png"
    page.screenshot(path=str(out), full_page=True)
    assert out.stat().st_size > 10_000
    page.goto(f"{server.url}/experiments/no-such-experiment")
    page.wait_for_selector("body[data-ready='true']")
    assert page.is_visible("#error") and "no experiment" in page.inner_text("#error")


def test_screenshot(page: Any, server: Server) -> None:
    """A picture of a populated page (for people to look at; the test checks it was written)."""
    search(page, "red")
    wait_images_loaded(page)
    page.locator("#grid .card").first.locator(".explain-toggle").click()
    out = Path(os.environ.get("VITRINA_SCREENSHOT_DIR", tempfile.gettempdir())) / "vitrina-page.png"
    page.screenshot(path=str(out))
    assert out.stat().st_size > 10_000


def test_bench_http_against_live_server(server: Server, tmp_path: Path) -> None:
    """benchmarks/http.py drives the same live server: every phase runs and reports figures."""
    import argparse

    from benchmarks import http as bench_http

    queries = tmp_path / "queries.csv"
    queries.write_text("query_id,query\nq1,red shoes\nq2,black watches\nq3,blue jeans\n", encoding="utf-8")
    parser = argparse.ArgumentParser()
    bench_http.add_arguments(parser)
    out = tmp_path / "bench.json"
    args = parser.parse_args(["--url", server.url, "--client", "python", "--phases", "floor,text,text+user,image",
                              "--clients", "2", "--requests", "12", "--image-requests", "6", "--warmup", "2",
                              "--photos", "3", "--queries", str(queries), "--api-key", KEY, "--json", str(out),
                              "--server-pid", str(os.getpid())])
    assert bench_http.run(server.cfg, args) == 0
    rows = {r["phase"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"floor", "text", "text+user", "image"}
    assert rows["text"]["ok"] == 12 and rows["image"]["ok"] == 6 and not any(r["errors"] for r in rows.values())
    assert 0 < rows["text"]["p50_ms"] <= rows["text"]["p95_ms"] <= rows["text"]["max_ms"]
    assert rows["text"]["x_floor"] == pytest.approx(rows["text"]["rps"] / rows["floor"]["rps"])
    assert rows["text"]["cpu_ms_per_req"] > 0  # this process serves (and also sends) the requests
    if shutil.which("wrk"):  # the outside client: every phase again, for a second each
        args = parser.parse_args(["--url", server.url, "--client", "wrk", "--phases", "floor,text@2,image@1",
                                  "--duration", "1", "--warmup-s", "0", "--photos", "3", "--queries", str(queries),
                                  "--distinct", "50", "--json", str(out)])
        assert bench_http.run(server.cfg, args) == 0
        rows = {r["phase"]: r for r in json.loads(out.read_text())["rows"]}
        assert set(rows) == {"floor", "text@2", "image@1"} and all(r["client"] == "wrk" for r in rows.values())
        assert all(r["ok"] > 0 and not r["errors"] for r in rows.values())
    values = [float(v) for v in (7, 1, 3, 3, 9, 12, 0.5)]
    for q in (0, 50, 95, 99, 100):
        assert bench_http.percentile(sorted(values), q) == pytest.approx(np.percentile(values, q))
    with pytest.raises(bench_http.BadInput):
        bench_http.loopback_target("http://10.1.2.3:8000")  # never aimed at another machine
