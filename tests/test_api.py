"""The JSON API end to end on a real index: every endpoint, personalisation, profiles, concurrency, metrics."""

from __future__ import annotations

import io
import re
import threading
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.helpers import draw_product
from tests.test_engine import build_index

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cfg, store, rows = build_index(tmp_path_factory.mktemp("api"), web={"api_keys": (KEY,)})
    yield cfg, store, rows
    store.close()


@pytest.fixture(scope="module")
def client(indexed: Any) -> FlaskClient:
    from web import create_app

    cfg, store, _ = indexed
    app = create_app(cfg, store=store, TESTING=True)
    return app.test_client()


@pytest.fixture(scope="module")
def rows(indexed: Any) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in indexed[2]}


def ids(resp: Any) -> list[str]:
    return [r["id"] for r in resp.get_json()["results"]]


def test_search_get(client: FlaskClient, rows: dict[str, Any]) -> None:
    resp = client.get("/api/search", query_string={"q": "Men Black Watches", "k": 3})
    assert resp.status_code == 200 and resp.is_json
    body = resp.get_json()
    assert set(body) >= {"results", "total", "took_ms"} and len(body["results"]) == 3
    top = body["results"][0]
    assert set(top) >= {"id", "score", "title", "image_url", "attributes", "explain"}
    assert rows[top["id"]]["articleType"] == "Watches" and rows[top["id"]]["baseColour"] == "Black"
    assert isinstance(top["id"], str) and top["id"] in rows


def test_search_modes_filters_facets(client: FlaskClient, rows: dict[str, Any]) -> None:
    for mode in ("hybrid", "vector", "text", "image", "keyword"):
        resp = client.get("/api/search", query_string={"q": "blue jeans", "k": 5, "mode": mode})
        assert resp.status_code == 200, (mode, resp.get_json())
        assert len(ids(resp)) == 5
    resp = client.get("/api/search?q=shoes&k=20&filter.gender=Men&filter.articleType=Shoes&facets=baseColour")
    body = resp.get_json()
    assert body["results"] and all(rows[r["id"]]["gender"] == "Men" and rows[r["id"]]["articleType"] == "Shoes"
                                   for r in body["results"])
    want = sum(1 for r in rows.values() if r["gender"] == "Men" and r["articleType"] == "Shoes")
    assert sum(body["facets"]["baseColour"].values()) == want == body["total"]


def test_search_post_json_and_form(client: FlaskClient) -> None:
    get = ids(client.get("/api/search?q=red+caps&k=5"))
    as_json = client.post("/api/search", json={"q": "red caps", "k": 5})
    assert as_json.status_code == 200 and ids(as_json) == get
    as_form = client.post("/api/search", data={"q": "red caps", "k": "5"})
    assert as_form.status_code == 200 and ids(as_form) == get
    filtered = client.post("/api/search", json={"q": "caps", "k": 5, "filters": {"gender": ["Women"]}})
    assert filtered.status_code == 200


def test_photo_search_without_tower_is_503_json(client: FlaskClient) -> None:
    buf = io.BytesIO()
    draw_product("Red", "Shoes").save(buf, "JPEG")
    resp = client.post("/api/search", data={"image": (io.BytesIO(buf.getvalue()), "q.jpg")},
                       content_type="multipart/form-data")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["error"] and "detail" in body
    assert client.get("/api/search?q=red").status_code == 200


def test_items_similar_image(client: FlaskClient, rows: dict[str, Any]) -> None:
    resp = client.get("/api/items/1007")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["id"] == "1007" and body["title"] == rows["1007"]["title"]
    assert body["attributes"]["gender"] == rows["1007"]["gender"]
    sim = client.get("/api/items/1007/similar?k=4")
    assert sim.status_code == 200 and len(ids(sim)) == 4 and "1007" not in ids(sim)
    img = client.get(body["image_url"])
    assert img.status_code == 200 and img.mimetype == "image/jpeg" and img.data[:2] == b"\xff\xd8"
    assert client.get("/api/items/nope").status_code == 404
    assert client.get("/api/items/nope/similar").status_code == 404
    assert client.get("/api/items/nope/image").status_code == 404


def test_item_ids_with_slashes_route(tmp_path: Any) -> None:
    import numpy as np

    from tests.helpers import index_vectors, make_config, product_rows, write_catalogue
    from web import create_app

    rows = [{**r, "id": f"sku/{r['id']}"} for r in product_rows(6)]
    cfg = make_config(tmp_path, write_catalogue(tmp_path / "shop", rows))
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((6, 384)).astype(np.float32)
    store = index_vectors(cfg, rows, vecs, vecs)
    try:
        c = create_app(cfg, store=store).test_client()
        for path in ("/api/items/sku/1003", "/api/items/sku%2F1003"):
            body = c.get(path).get_json()
            assert body["id"] == "sku/1003", (path, body)
        sim = c.get("/api/items/sku/1003/similar?k=3")
        assert sim.status_code == 200 and "sku/1003" not in ids(sim) and all(i.startswith("sku/") for i in ids(sim))
        assert c.get(c.get("/api/items/sku/1003").get_json()["image_url"]).status_code == 200
        assert c.get("/api/items/sku/9999").status_code == 404
        event = {"user_id": "u1", "item_id": "sku/1003", "event": "click"}
        assert c.post("/api/feedback", json=event).status_code == 200
        assert c.get("/api/items/sku/1003/also-bought?k=3").status_code == 200
    finally:
        store.close()


def test_feedback_needs_key(client: FlaskClient) -> None:
    event = {"user_id": "k1", "item_id": "1000", "event": "view"}
    assert client.post("/api/feedback", json=event).status_code == 401
    assert client.post("/api/feedback", json=event, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/api/feedback", json=event, headers={"Authorization": KEY}).status_code == 401
    ok = client.post("/api/feedback", json=event, headers=AUTH)
    assert ok.status_code == 200 and ok.get_json() == {"accepted": 1}
    assert client.delete("/api/users/k1/profile").status_code == 401


def test_api_keys_from_env(indexed: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from web import create_app

    cfg, store, _ = indexed
    monkeypatch.setenv("VITRINA_TEST_KEYS", "alpha, beta")
    app = create_app(cfg.replace(web={"api_keys": (), "api_keys_env": "VITRINA_TEST_KEYS"}), store=store)
    c = app.test_client()
    event = {"user_id": "env1", "item_id": "1000", "event": "view"}
    assert c.post("/api/feedback", json=event).status_code == 401
    assert c.post("/api/feedback", json=event, headers={"Authorization": "Bearer beta"}).status_code == 200
    open_app = create_app(cfg.replace(web={"api_keys": (), "api_keys_env": "VITRINA_NO_SUCH_VAR"}), store=store)
    assert open_app.test_client().post("/api/feedback", json=event).status_code == 200


def test_personalisation_end_to_end(client: FlaskClient, rows: dict[str, Any]) -> None:
    """Feedback on watches moves watches up for that shopper only; others keep the plain ranking."""
    query = {"q": "Women", "k": 24}
    anon = ids(client.get("/api/search", query_string=query))
    watches = [i for i, r in rows.items() if r["articleType"] == "Watches"]
    events = [{"user_id": "fan", "item_id": i, "event": "purchase"} for i in watches[:4]]
    assert client.post("/api/feedback", json=events, headers=AUTH).get_json() == {"accepted": 4}
    fan = client.get("/api/search", query_string={**query, "user_id": "fan"})
    other = client.get("/api/search", query_string={**query, "user_id": "stranger"})
    assert ids(other) == anon  # cold start = unpersonalised

    def watch_share(order: list[str], n: int = 10) -> int:
        return sum(rows[i]["articleType"] == "Watches" for i in order[:n])

    print("watches in the top 10: anonymous", watch_share(anon), "fan", watch_share(ids(fan)))
    assert watch_share(ids(fan)) >= watch_share(anon) + 3
    e = fan.get_json()["results"][0]["explain"]
    assert e["blend"] > 0 and e["personal"] != 0
    assert e["final"] == pytest.approx(e["relevance_norm"] + e["personal"] + e["popularity"] + e["demotion"],
                                       abs=1e-5)


def test_profile_get_and_delete(client: FlaskClient) -> None:
    events = [{"user_id": "p1", "item_id": "1001", "event": "click", "ts": "2026-01-01T10:00:00Z"},
              {"user_id": "p1", "item_id": "1002", "event": "cart"},
              {"user_id": "p1", "item_id": "1002", "event": "purchase"}]
    assert client.post("/api/feedback", json=events, headers=AUTH).get_json() == {"accepted": 3}
    assert client.get("/api/users/p1/profile").status_code == 401  # a shopper's history needs the key
    prof = client.get("/api/users/p1/profile", headers=AUTH)
    assert prof.status_code == 200
    body = prof.get_json()
    assert body["user_id"] == "p1"
    assert body["counts"] == {"view": 0, "click": 1, "cart": 1, "purchase": 1}
    assert body["first_event"].startswith("2026-01-01")
    gone = client.delete("/api/users/p1/profile", headers=AUTH)
    assert gone.status_code == 200 and gone.get_json() == {"user_id": "p1", "deleted": True}
    assert client.get("/api/users/p1/profile", headers=AUTH).status_code == 404
    again = client.delete("/api/users/p1/profile", headers=AUTH)
    assert again.status_code == 200 and again.get_json()["deleted"] is False


def test_concurrent_feedback_every_event_counted(client: FlaskClient) -> None:
    threads, per_thread, batch = 8, 500, 50
    item_ids = [str(1000 + i) for i in range(48)]
    errors: list[Any] = []

    def work(t: int) -> None:
        for start in range(0, per_thread, batch):
            events = [{"user_id": "crowd" if j % 2 else f"solo{t}", "item_id": item_ids[(t + j) % 48],
                       "event": ("view", "click", "cart", "purchase")[j % 4]}
                      for j in range(start, start + batch)]
            resp = client.post("/api/feedback", json=events, headers=AUTH)
            if resp.status_code != 200 or resp.get_json() != {"accepted": batch}:
                errors.append((resp.status_code, resp.get_json()))

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert not errors
    crowd = client.get("/api/users/crowd/profile", headers=AUTH).get_json()
    assert crowd["events"] == threads * per_thread // 2
    for t in range(threads):
        assert client.get(f"/api/users/solo{t}/profile", headers=AUTH).get_json()["events"] == per_thread // 2


def test_health_and_openapi(client: FlaskClient) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.get_json()["status"] == "ok"
    assert health.get_json()["index"]["points"] == 48
    doc = client.get("/openapi.json").get_json()
    assert "/api/search" in doc["paths"]


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
                     r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*)?\})? (-?[0-9.e+]+|[+-]Inf|NaN)$')


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A strict little parser of the text exposition format: every line a comment or a valid sample."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert not line or re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$", line), line
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a valid sample line: {line!r}"
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out.setdefault(m.group(1), []).append((labels, float(m.group(4))))
    return out


def test_metrics_text_format(client: FlaskClient) -> None:
    client.get("/api/search?q=red&k=2")
    client.get("/api/search?q=")
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    metrics = parse_prometheus(resp.get_data(as_text=True))
    reqs = {(lab["endpoint"], lab["status"]): v for lab, v in metrics["vitrina_http_requests_total"]}
    assert reqs[("search.search_get", "200")] >= 1 and reqs[("search.search_get", "400")] >= 1
    buckets = [(lab, v) for lab, v in metrics["vitrina_http_request_duration_seconds_bucket"]
               if lab["endpoint"] == "search.search_get"]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and buckets[-1][0]["le"] == "+Inf"
    total = [v for lab, v in metrics["vitrina_http_request_duration_seconds_count"]
             if lab["endpoint"] == "search.search_get"]
    assert total == [counts[-1]]
    assert metrics["vitrina_index_items"][0][1] == 48


def test_flask_cli_discovers_the_app() -> None:
    import web

    assert callable(web.create_app)


def test_vitrina_serve_answers_over_http(tmp_path: Any) -> None:
    """`vitrina serve` (waitress) starts, answers JSON over a real socket, and stops on SIGTERM."""
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "VITRINA_DATA__DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "scripts.cli", "serve", "--port", str(port), "--threads", "1",
                             "--workers", "1", "--no-preload"], cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        body, status = None, 0
        for _ in range(150):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/search?q=", timeout=5) as r:
                    status = r.status
            except urllib.error.HTTPError as e:
                status, body = e.code, json.loads(e.read())
                break
            except OSError:
                time.sleep(0.2)
        assert status == 400 and body is not None and body["error"] == "empty query"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=5) as r:
            assert "/api/search" in json.loads(r.read())["paths"]

        def spec() -> int:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=30) as r:
                return len(r.read())

        with ThreadPoolExecutor(16) as pool:  # more at once than its one thread serves: they queue
            assert len(set(pool.map(lambda _: spec(), range(64)))) == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        # what the process loaded before serving is frozen out of the collector's passes (cmd_serve.settle_heap)
        frozen = next(line for line in metrics.splitlines() if line.startswith("vitrina_gc_frozen_objects "))
        assert int(frozen.split()[1]) > 10_000
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert "Task queue depth" not in out  # waiting in the queue is how one thread a process works: no warning
