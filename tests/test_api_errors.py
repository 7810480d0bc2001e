"""Every bad input gets a 4xx JSON {"error", "detail"} and the service keeps answering; no input gives a 5xx."""

from __future__ import annotations

import io
import random
import string
from typing import Any

import pytest
from flask.testing import FlaskClient
from PIL import Image

from tests.helpers import draw_product
from tests.test_engine import build_index

KEY = "secret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_UPLOAD = 200_000


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from web import create_app

    cfg, store, _ = build_index(tmp_path_factory.mktemp("errors"), web={"api_keys": (KEY,)},
                                search={"max_upload_bytes": MAX_UPLOAD, "max_image_pixels": 2_000_000})
    app = create_app(cfg, store=store)
    yield app.test_client()
    store.close()


def jpeg(size: tuple[int, int] = (60, 80)) -> bytes:
    buf = io.BytesIO()
    draw_product("Blue", "Shoes", size).save(buf, "JPEG")
    return buf.getvalue()


def upload(client: FlaskClient, data: bytes, **fields: str) -> Any:
    return client.post("/api/search", data={"image": (io.BytesIO(data), "photo.jpg"), **fields},
                       content_type="multipart/form-data")


def assert_error(resp: Any, status: int, fragment: str = "") -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True)[:300])
    assert resp.is_json
    body = resp.get_json()
    assert isinstance(body["error"], str) and body["error"] and isinstance(body["detail"], str)
    assert fragment.lower() in f"{body['error']} {body['detail']}".lower()
    return body


@pytest.mark.parametrize("query, fragment", [
    ({"q": ""}, "empty query"),
    ({"q": "   "}, "empty query"),
    ({"q": "x" * 513}, "too long"),
    ({"q": "red", "k": "0"}, "'k'"),
    ({"q": "red", "k": "1000"}, "'k'"),
    ({"q": "red", "k": "abc"}, "'k'"),
    ({"q": "red", "offset": "-3"}, "'offset'"),
    ({"q": "red", "mode": "semantic"}, "unknown mode"),
    ({"q": "red", "filter.material": "cotton"}, "unknown filter field"),
    ({"q": "red", "facets": "material"}, "unknown facet"),
    ({"q": "red", "price_min": "abc"}, "number"),
    ({"q": "red", "image_weight": "-0.1"}, "image_weight"),
    ({"q": "red", "user_id": "bad user"}, "shopper id"),
    ({"q": "red", "qq": "typo"}, "unknown parameter"),
])
def test_bad_search_parameters(client: FlaskClient, query: dict[str, str], fragment: str) -> None:
    assert_error(client.get("/api/search", query_string=query), 400, fragment)


def test_bad_uploads(client: FlaskClient) -> None:
    assert_error(upload(client, b"this is not an image at all"), 422)
    assert_error(upload(client, jpeg((200, 200))[:300]), 422)  # truncated JPEG
    assert_error(upload(client, b""), 400, "empty")
    big = b"\xff\xd8" + bytes(MAX_UPLOAD + 10_000)
    assert_error(upload(client, big), 413)
    bigger = b"\xff\xd8" + bytes(MAX_UPLOAD * 3)  # over MAX_CONTENT_LENGTH: rejected while reading the body
    assert_error(upload(client, bigger), 413)


def test_decompression_bomb(client: FlaskClient) -> None:
    buf = io.BytesIO()
    Image.new("L", (2000, 2000), 0).save(buf, "PNG")  # 4 Mpx in a few KB, over the 2 Mpx limit
    assert len(buf.getvalue()) < 50_000
    assert_error(upload(client, buf.getvalue()), 422, "pixels")


def test_image_url_to_a_private_address_is_refused(client: FlaskClient) -> None:
    resp = client.post("/api/search", json={"image_url": "http://127.0.0.1:9/photo.jpg"})
    assert_error(resp, 422, "refusing")


def test_bad_post_bodies(client: FlaskClient) -> None:
    assert_error(client.post("/api/search", data="q=red", content_type="text/plain"), 400, "content type")
    assert_error(client.post("/api/search", data="{not json", content_type="application/json"), 400)
    assert_error(client.post("/api/search", json=["red"]), 400, "object")
    assert_error(client.post("/api/search", json={"q": "red", "image_url": "ftp://x/y.jpg"}), 400, "http")
    assert_error(client.post("/api/search", json={"q": {"nested": 1}}), 400)
    two = {"image": [(io.BytesIO(jpeg()), "a.jpg"), (io.BytesIO(jpeg()), "b.jpg")]}
    assert_error(client.post("/api/search", data=two, content_type="multipart/form-data"), 400, "more than one")


def test_unknown_items(client: FlaskClient) -> None:
    for path in ("/api/items/999999", "/api/items/999999/similar", "/api/items/999999/image"):
        assert_error(client.get(path), 404)
    assert_error(client.get("/api/items/1000/similar?k=0"), 400)
    assert_error(client.get("/api/items/1000/similar?filter.nope=1"), 400)


@pytest.mark.parametrize("body, status, fragment", [
    ({"user_id": "u1", "item_id": "1000"}, 400, "unknown event type"),
    ({"user_id": "u1", "item_id": "1000", "event": "like"}, 400, "unknown event type"),
    ({"user_id": "u1", "event": "view"}, 400, "item id"),
    ({"item_id": "1000", "event": "view"}, 400, "shopper id"),
    ({"user_id": "u1", "item_id": "1000", "event": "view", "ts": "not a time"}, 400, "ISO-8601"),
    ({"user_id": "u1", "item_id": "1000", "event": "view", "ts": "2999-01-01T00:00:00Z"}, 400, "ts"),
    ([], 400, "no events"),
    ("view", 400, "object"),
    ([{"user_id": "u1", "item_id": "1000", "event": "view"}, 7], 400, "event 1"),
    ([{"user_id": "u1", "item_id": "1000", "event": "view"}, {"user_id": "u1", "item_id": "404404",
                                                                "event": "view"}], 404, "event 1"),
])
def test_bad_feedback(client: FlaskClient, body: Any, status: int, fragment: str) -> None:
    assert_error(client.post("/api/feedback", json=body, headers=AUTH), status, fragment)


def test_feedback_not_json_and_too_many(client: FlaskClient) -> None:
    assert_error(client.post("/api/feedback", data="x", content_type="text/plain", headers=AUTH), 400, "JSON")
    many = [{"user_id": "u1", "item_id": "1000", "event": "view"}] * 1001
    assert_error(client.post("/api/feedback", json=many, headers=AUTH), 413)


def test_api_key_errors(client: FlaskClient) -> None:
    event = {"user_id": "u1", "item_id": "1000", "event": "view"}
    assert_error(client.post("/api/feedback", json=event), 401, "API key")
    assert_error(client.post("/api/feedback", json=event, headers={"Authorization": "Bearer nope"}), 401)
    assert_error(client.post("/api/feedback", json=event, headers={"Authorization": "Basic " + KEY}), 401)
    assert_error(client.delete("/api/users/u1/profile"), 401)


def test_routing_errors_are_json(client: FlaskClient) -> None:
    assert_error(client.get("/api/nothing-here"), 404)
    assert_error(client.put("/api/search"), 405)
    assert_error(client.get("/api/feedback"), 405)
    assert_error(client.get("/api/users/nobody/profile"), 401, "API key required")
    assert_error(client.get("/api/users/bad%20user/profile", headers=AUTH), 400, "shopper id")
    assert_error(client.get("/api/users/nobody/profile", headers=AUTH), 404)


def test_fuzzed_queries_never_5xx(client: FlaskClient) -> None:
    rnd = random.Random(7)
    alphabet = string.printable + "äöüß€\u200b\x00"
    keys = ["q", "k", "offset", "mode", "user_id", "image_weight", "facets", "filter.gender", "price_min",
            "price_max", "filter.", "x", "image_url"]
    for _ in range(150):
        query = [(rnd.choice(keys), "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12))))
                 for _ in range(rnd.randint(0, 4))]
        resp = client.get("/api/search", query_string=query)
        assert resp.status_code < 500, (query, resp.get_json())
        assert resp.is_json
        body = resp.get_json()
        assert ("results" in body) if resp.status_code == 200 else {"error", "detail"} <= set(body)
    for body in (None, 1, "x", [None], {"q": None}, {"q": "red", "k": None}, {"filters": {"gender": [None]}},
                 {"q": "red", "k": 1.5}, {"q": "red", "mode": ["a", "b"]}):
        resp = client.post("/api/search", json=body)
        assert resp.status_code < 500, (body, resp.get_json())


def test_service_still_answers_after_bad_inputs(client: FlaskClient) -> None:
    resp = client.get("/api/search?q=blue+shoes&k=3")
    assert resp.status_code == 200 and len(resp.get_json()["results"]) == 3
    assert client.get("/health").status_code == 200
