"""web.json_provider: the app's JSON written by orjson is the document the standard provider writes."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from flask import Flask

from web.json_provider import OrjsonProvider, use_fast_json

pytest.importorskip("orjson")

DOC = {"results": [{"id": "0042", "score": 0.123456, "title": "Café crème ☕", "attributes": {"year": 2016.0},
                    "explain": {"keyword": None, "rank": 3, "vector": np.float32(0.5), "n": np.int64(7)}}],
       "total": 1, "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), "facets": {}}


def test_orjson_writes_the_same_document() -> None:
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    plain = json.loads(app.json.dumps({**DOC, "results": [{**DOC["results"][0], "explain": {"keyword": None}}]}))
    use_fast_json(app)
    assert isinstance(app.json, OrjsonProvider) and app.json.sort_keys is False  # type: ignore[attr-defined]
    with app.app_context():
        resp = app.json.response(DOC)
    got = json.loads(resp.get_data())
    assert resp.mimetype == "application/json" and resp.get_data().endswith(b"\n")
    assert got["results"][0]["explain"] == {"keyword": None, "rank": 3, "vector": 0.5, "n": 7}
    assert got["when"] == "2026-01-02T03:04:05+00:00"
    assert list(got) == list(DOC) and got["results"][0]["title"] == plain["results"][0]["title"]
    assert json.loads(app.json.dumps({"b": 1, "a": [1.5]})) == {"b": 1, "a": [1.5]}
    app.json.compact = False  # type: ignore[attr-defined]
    with app.app_context():
        assert b"\n  " in app.json.response({"a": 1}).get_data()  # pretty printing still works
