"""The item write API on a real index (tiny image tower, real MiniLM, embedded store, the Flask app): write, read
your write, patch without re-embedding, delete everywhere, per-item errors, bad writes that change nothing."""

from __future__ import annotations

import http.server
import io
import json
import threading
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from indexer.changelog import Change, ChangeLog
from indexer.pipeline import reindex
from search.store.interface import ItemRecord
from tests.helpers import draw_product, make_config, product_rows, write_catalogue
from tests.tiny_models import write_tiny_checkpoint
from vitrina.config import Config

KEY = "write-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}


def product(item_id: str, **fields: Any) -> dict[str, Any]:
    base = {"id": item_id, "title": f"Women Green Caps zebracorn {item_id}", "gender": "Women",
            "articleType": "Caps", "baseColour": "Green", "price": "19.90", "image": "images/1000.jpg"}
    return {**base, **fields}


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Config, Flask]]:
    from web import create_app
    from web.api_write import close_writer

    root = tmp_path_factory.mktemp("write")
    catalogue = write_catalogue(root / "shop", product_rows(48))
    (root / "shop" / "images" / "fake.jpg").write_text("not a picture")
    cfg = make_config(root, catalogue, web={"api_keys": (KEY,)})
    write_tiny_checkpoint(Path(cfg.image_encoder.checkpoint))
    reindex(cfg, progress=False)
    app = create_app(cfg, TESTING=True)
    yield cfg, app
    close_writer(app)
    app.extensions["vitrina"].close()


@pytest.fixture(scope="module")
def client(shop: tuple[Config, Flask]) -> FlaskClient:
    return shop[1].test_client()


def store_of(shop: tuple[Config, Flask]) -> Any:
    return shop[1].extensions["vitrina"].store


def ids(resp: Any) -> list[str]:
    return [r["id"] for r in resp.get_json()["results"]]


def test_write_read_search_patch_delete(client: FlaskClient, shop: tuple[Config, Flask]) -> None:
    cfg, _ = shop
    store = store_of(shop)
    resp = client.post("/api/items", json=product("w1"), headers=AUTH)
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["items"] == [{"id": "w1", "status": "created", "error": None}]
    item = client.get("/api/items/w1").get_json()  # read your write at once
    assert item["title"] == "Women Green Caps zebracorn w1" and item["attributes"]["price"] == 19.9
    assert "w1" in ids(client.get("/api/search", query_string={"q": "zebracorn", "mode": "keyword"}))
    assert "w1" in ids(client.get("/api/search", query_string={"q": "zebracorn w1"}))
    before = store.retrieve(cfg.store.alias, ["w1"], with_vectors=True)[0]
    assert set(before.vectors) == {"text", "image", "fused"}

    again = client.put("/api/items", json=product("w1"), headers=AUTH)
    assert again.status_code == 200 and again.get_json()["items"][0]["status"] == "unchanged"
    renamed = client.post("/api/items", json=product("w1", title="Women Green Caps quokka"), headers=AUTH)
    assert renamed.get_json()["items"][0]["status"] == "updated"
    assert "w1" in ids(client.get("/api/search", query_string={"q": "quokka", "mode": "keyword"}))
    assert "w1" not in ids(client.get("/api/search", query_string={"q": "zebracorn", "mode": "keyword"}))
    renamed_vec = store.retrieve(cfg.store.alias, ["w1"], with_vectors=True)[0].vectors["text"]
    assert not np.allclose(renamed_vec, before.vectors["text"], atol=1e-3)

    patched = client.patch("/api/items/w1", json={"price": 7.5, "stock": 3, "season": "Summer"}, headers=AUTH)
    assert patched.status_code == 200 and patched.get_json()["items"][0]["status"] == "updated"
    after = store.retrieve(cfg.store.alias, ["w1"], with_vectors=True)[0]
    assert after.payload["price"] == 7.5 and after.payload["stock"] == 3 and after.payload["season"] == "Summer"
    assert np.array_equal(after.vectors["text"], renamed_vec)  # not embedded again
    assert client.get("/api/search", query_string={"q": "quokka", "mode": "keyword", "price_max": "8"}
                      ).status_code == 200
    same = client.patch("/api/items/w1", json={"stock": 3}, headers=AUTH)
    assert same.get_json()["items"][0]["status"] == "unchanged"
    gone = client.patch("/api/items/w1", json={"stock": None}, headers=AUTH)
    assert gone.status_code == 200 and "stock" not in client.get("/api/items/w1").get_json()["attributes"]

    deleted = client.delete("/api/items/w1", headers=AUTH)
    assert deleted.status_code == 200 and deleted.get_json()["items"][0]["status"] == "deleted"
    assert client.get("/api/items/w1").status_code == 404
    assert "w1" not in ids(client.get("/api/search", query_string={"q": "quokka", "mode": "keyword"}))
    missing = client.delete("/api/items/w1", headers=AUTH)
    assert missing.status_code == 404 and missing.get_json()["error"] == "unknown item"


def test_a_batch_reports_each_item_and_bad_ones_fail_alone(client: FlaskClient, shop: tuple[Config, Flask]) -> None:
    cfg, _ = shop
    store = store_of(shop)
    n0 = store.count(cfg.store.alias)
    batch = [product("b1"), {"title": "no id"}, product("b2", colour={"r": 1}), product("b3", price="cheap"),
             product("b4", image="images/fake.jpg"), product("b5", image="/etc/passwd"),
             product("b6", image="http://127.0.0.1:9/x.jpg"), product("b1", title="twice"), product("b7", year="x")]
    resp = client.post("/api/items", json=batch, headers=AUTH)
    assert resp.status_code == 200
    body = resp.get_json()
    got = [(r["id"], r["status"], r.get("code")) for r in body["items"]]
    assert got == [("b1", "created", None), ("", "error", 400), ("b2", "error", 400), ("b3", "error", 400),
                   ("b4", "error", 422), ("b5", "error", 400), ("b6", "error", 422), ("b1", "error", 400),
                   ("b7", "created", None)]
    assert body["errors"] is True and body["counts"] == {"created": 2, "error": 7}
    reasons = [r["error"] for r in body["items"]]
    assert "missing id" in reasons[1] and "unsupported type (object)" in reasons[2] and "bad price" in reasons[3]
    assert "not an image" in reasons[4] and "outside the image root" in reasons[5]
    assert "loopback" in reasons[6] and "duplicate" in reasons[7]
    assert store.count(cfg.store.alias) == n0 + 2
    lines = "\n".join(json.dumps(product(f"j{i}")) for i in range(3)) + "\n{not json\n"
    jl = client.post("/api/items", data=lines, content_type="application/x-ndjson", headers=AUTH).get_json()
    assert [r["status"] for r in jl["items"]] == ["created"] * 3 + ["error"] and "line 4" in jl["items"][3]["error"]
    bulk = client.patch("/api/items", json=[{"id": "j0", "stock": 1}, {"id": "j1", "title": "x"},
                                            {"id": "nope", "stock": 2}, {"stock": 3}], headers=AUTH).get_json()
    assert [(r["status"], r.get("code")) for r in bulk["items"]] == [("updated", None), ("error", 400),
                                                                   ("error", 404), ("error", 400)]
    dele = client.delete("/api/items", json={"ids": ["j0", "j1", "nope"]}, headers=AUTH).get_json()
    assert [r["status"] for r in dele["items"]] == ["deleted", "deleted", "error"]
    assert store.count(cfg.store.alias) == n0 + 3


@pytest.fixture(scope="module")
def image_server(shop: tuple[Config, Flask]) -> Iterator[str]:
    """The shop folder over HTTP on loopback (the app under test allows private URLs for it)."""
    folder = Path(shop[0].catalogue.path).parent
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_bad_single_writes_get_4xx_json_and_change_nothing(client: FlaskClient, shop: tuple[Config, Flask],
                                                           image_server: str) -> None:
    cfg, app = shop
    store = store_of(shop)
    changelog = ChangeLog.for_config(cfg)
    snapshot = sorted((h.id, json.dumps(h.payload, sort_keys=True)) for h in store.scroll(cfg.store.alias))
    seq = changelog.max_seq()
    cases = [
        ({"json": {"title": "Red Caps", "image": "images/1000.jpg"}, "headers": AUTH}, 400, "missing id"),
        ({"json": product("x1", gender=["Men"]), "headers": AUTH}, 400, "unsupported type (array)"),
        ({"json": product("x1", price="-3"), "headers": AUTH}, 400, "negative price"),
        ({"json": product("x1", price=True), "headers": AUTH}, 400, "bad price"),
        ({"json": product("x1", image="http://no-such-host.invalid/x.jpg"), "headers": AUTH}, 422, "resolve"),
        ({"json": product("x1", image=f"{image_server}/products.csv"), "headers": AUTH}, 422, "refusing"),
        ({"json": product("x1", image="http://10.0.0.1/x.jpg"), "headers": AUTH}, 422, "private"),
        ({"json": product("x1", image="../../etc/hosts"), "headers": AUTH}, 400, "outside the image root"),
        ({"json": product("x1", image="file:///etc/hosts"), "headers": AUTH}, 400, "http(s)"),
        ({"data": b"[" + b" " * 9_000_000 + b"]", "content_type": "application/json", "headers": AUTH}, 413,
         "too large"),
        ({"json": [product(f"x{i}") for i in range(1001)], "headers": AUTH}, 413, "over the limit"),
        ({"data": "id=1", "content_type": "text/plain", "headers": AUTH}, 415, "content type"),
        ({"data": "{bad", "content_type": "application/json", "headers": AUTH}, 400, "not valid JSON"),
        ({"json": product("x1")}, 401, "API key required"),
        ({"json": product("x1"), "headers": {"Authorization": "Bearer nope"}}, 401, "invalid API key"),
    ]
    for kwargs, status, words in cases:
        resp = client.post("/api/items", **kwargs)
        body = resp.get_json()
        assert resp.status_code == status, (kwargs.get("json"), body)
        assert set(body) >= {"error", "detail"} and words in body["error"] + body["detail"], (words, body)
    assert client.patch("/api/items/1000", json={"title": "x"}, headers=AUTH).status_code == 400
    assert client.patch("/api/items/1000", json={"price": "free"}, headers=AUTH).status_code == 400
    assert client.patch("/api/items/1000", json={"id": "1001", "stock": 1}, headers=AUTH).status_code == 400
    assert client.patch("/api/items/nope", json={"stock": 1}, headers=AUTH).status_code == 404
    assert client.patch("/api/items/1000", json={"stock": 1}).status_code == 401
    assert client.delete("/api/items/1000").status_code == 401
    assert client.delete("/api/items", json={"ids": []}, headers=AUTH).status_code == 400
    assert sorted((h.id, json.dumps(h.payload, sort_keys=True)) for h in store.scroll(cfg.store.alias)) == snapshot
    assert changelog.max_seq() == seq  # nothing logged either
    changelog.close()

    # the same URL cases with private addresses allowed: a real photo is fetched, a text file is not an image
    from web import create_app

    open_cfg = cfg.replace(indexer={"allow_private_urls": True})
    other = create_app(open_cfg, store=store, TESTING=True).test_client()
    ok = other.post("/api/items", json=product("u1", image=f"{image_server}/images/1003.jpg"), headers=AUTH)
    assert ok.status_code == 201 and client.get("/api/items/u1").get_json()["image_url"].endswith("1003.jpg")
    bad = other.post("/api/items", json=product("u2", image=f"{image_server}/products.csv"), headers=AUTH)
    assert bad.status_code == 422 and "not an image" in bad.get_json()["error"]
    dead = other.post("/api/items", json=product("u3", image=f"{image_server}/images/none.jpg"), headers=AUTH)
    assert dead.status_code == 422 and "404" in dead.get_json()["error"]


def test_upload_a_photo_with_the_product(client: FlaskClient, shop: tuple[Config, Flask]) -> None:
    cfg, _ = shop
    buf = io.BytesIO()
    draw_product("Blue", "Watches", (64, 64), seed=5).save(buf, "PNG")
    form = {k: v for k, v in product("p1", title="Men Blue Watches okapi").items() if k != "image"}
    form["image"] = (io.BytesIO(buf.getvalue()), "watch.png")
    resp = client.post("/api/items", data=form, content_type="multipart/form-data", headers=AUTH)
    assert resp.status_code == 201, resp.get_json()
    item = client.get("/api/items/p1").get_json()
    photo = client.get(item["image_url"])
    assert photo.status_code == 200 and photo.data == buf.getvalue()
    hit = store_of(shop).retrieve(cfg.store.alias, ["p1"], with_vectors=True)[0]
    assert "image" in hit.vectors and hit.payload["image"].startswith(str(cfg.data_dir / "uploads"))
    form["image"] = (io.BytesIO(b"GIF89a broken"), "x.gif")
    bad = client.post("/api/items", data=form, content_type="multipart/form-data", headers=AUTH)
    assert bad.status_code == 422


def test_deleted_items_leave_search_similar_also_bought_and_recommendations(client: FlaskClient) -> None:
    events = [{"user_id": f"s{u}", "item_id": i, "event": "purchase"} for u in range(3) for i in ("1001", "1013")]
    assert client.post("/api/feedback", json=events, headers=AUTH).status_code == 200
    q = {"q": "Women Blue Tshirts style 13", "k": 48}

    def everywhere() -> list[bool]:
        return ["1013" in ids(client.get("/api/search", query_string=q)),
                "1013" in ids(client.get("/api/items/1001/similar?k=47")),
                "1013" in ids(client.get("/api/items/1001/also-bought?k=10")),
                "1013" in ids(client.get("/api/users/s9/recommendations?k=48"))]  # a new shopper: popular items

    assert everywhere() == [True] * 4
    assert client.delete("/api/items/1013", headers=AUTH).status_code == 200
    assert everywhere() == [False] * 4
    assert client.get("/api/items/1013/also-bought").status_code == 404


def test_logged_writes_a_crash_did_not_apply_are_applied_on_recovery(shop: tuple[Config, Flask]) -> None:
    from web.api_write import writer

    cfg, app = shop
    with app.app_context():
        w = writer()
        target = w.recover()
        rec = w.store.retrieve(target, ["1002"], with_vectors=True)[0]
        record = ItemRecord("r1", rec.vectors, "recovered okapi", {**rec.payload, "title": "recovered"})
        lost = Change("upsert", "r1", record=record, stamp=w.embedder(target).stamp)
        w.log.append([lost, Change("patch", "1002", fields={"stock": 42})])  # logged, then "crashed"
        assert w.store.retrieve(target, ["r1"]) == []
        w._applied.clear()  # a new process knows only the durable checkpoint
        assert w.recover() == target
        assert w.store.retrieve(target, ["r1"])[0].payload["title"] == "recovered"
        assert w.store.retrieve(target, ["1002"])[0].payload["stock"] == 42


def test_profiles_need_the_key_and_writes_are_documented(client: FlaskClient) -> None:
    client.post("/api/feedback", json={"user_id": "pk", "item_id": "1000", "event": "view"}, headers=AUTH)
    assert client.get("/api/users/pk/profile").status_code == 401
    assert client.get("/api/users/pk/profile", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/api/users/pk/profile", headers=AUTH).status_code == 200
    doc = client.get("/openapi.json").get_json()
    items, one = doc["paths"]["/api/items"], doc["paths"]["/api/items/{item_id}"]
    assert set(items) == {"post", "put", "patch", "delete"} and set(one) == {"get", "patch", "delete"}
    for op in [*items.values(), one["patch"], one["delete"], doc["paths"]["/api/users/{user_id}/profile"]["get"]]:
        assert op["security"] == [{"bearer": []}] and "401" in op["responses"]
    post = items["post"]
    assert {"application/json", "application/x-ndjson", "multipart/form-data"} <= set(post["requestBody"]["content"])
    assert {"200", "201", "400", "413", "415", "422"} <= set(post["responses"])
    assert "security" not in one["get"]


def test_the_same_writes_on_the_qdrant_backend(tmp_path: Path) -> None:
    """Writes through qdrant-client (local mode here; a server by URL takes the same calls): each write is
    durable when answered, so the collection's checkpoint follows the log at once."""
    from tests.helpers import index_vectors
    from web import create_app
    from web.api_write import close_writer

    rows = product_rows(6)
    cfg = make_config(tmp_path, write_catalogue(tmp_path / "shop", rows), store={"backend": "qdrant",
                                                                                 "path": ":memory:"})
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((6, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store = index_vectors(cfg, rows, vecs, vecs)
    app = create_app(cfg, store=store, TESTING=True)
    c = app.test_client()
    try:
        assert c.post("/api/items", json=product("q1")).status_code == 201  # no keys configured, loopback
        assert c.get("/api/items/q1").get_json()["title"].endswith("q1")
        assert "q1" in ids(c.get("/api/search", query_string={"q": "zebracorn", "mode": "keyword"}))
        assert c.patch("/api/items/q1", json={"stock": 2}).get_json()["items"][0]["status"] == "updated"
        assert c.get("/api/items/q1").get_json()["attributes"]["stock"] == 2
        assert c.delete("/api/items", json=["q1", "1000"]).get_json()["counts"] == {"deleted": 2}
        assert store.count(cfg.store.alias) == 5
        with ChangeLog.for_config(cfg) as changelog:
            assert changelog.applied(store.get_alias(cfg.store.alias)) == changelog.max_seq() == 4
    finally:
        close_writer(app)
        store.close()
