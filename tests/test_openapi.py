"""/openapi.json is generated from the code and covers every route and method the app serves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vitrina.config import Config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def app(cfg: Config) -> Any:
    from web import create_app

    return create_app(cfg)


def test_every_api_route_is_documented(app: Any) -> None:
    doc = app.test_client().get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    seen = 0
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api") and rule.rule not in ("/health", "/metrics", "/openapi.json"):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        assert path in doc["paths"], path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            op = doc["paths"][path][method.lower()]
            seen += 1
            assert op["summary"] and op["responses"] and op["operationId"]
            names = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert names == set(re.findall(r"\{([^}]+)\}", path)), (path, names)
    assert seen >= 10


def test_documented_details(app: Any) -> None:
    doc = app.test_client().get("/openapi.json").get_json()
    search = doc["paths"]["/api/search"]
    params = {p["name"]: p for p in search["get"]["parameters"]}
    assert {"q", "k", "offset", "mode", "user_id", "facets", "filter.<field>"} <= set(params)
    assert params["mode"]["schema"]["enum"] == ["hybrid", "vector", "text", "image", "keyword"]
    assert "multipart/form-data" in search["post"]["requestBody"]["content"]
    assert doc["paths"]["/api/feedback"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in search["get"]
    assert "delete" in doc["paths"]["/api/users/{user_id}/profile"]
    refs = re.findall(r'"\$ref": "#/components/schemas/(\w+)"', __import__("json").dumps(doc))
    assert refs and set(refs) <= set(doc["components"]["schemas"])
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_new_routes_appear_without_editing_the_document(app: Any) -> None:
    from flask import Blueprint

    from web.openapi import build_openapi

    bp = Blueprint("extra", __name__)

    @bp.get("/api/extra/<thing>")
    def extra(thing: str) -> str:
        """An extra route added by someone else."""
        return thing

    app.register_blueprint(bp)
    doc = build_openapi(app)
    op = doc["paths"]["/api/extra/{thing}"]["get"]
    assert op["summary"] == "An extra route added by someone else."
    assert op["parameters"][0]["name"] == "thing"


def test_flask_cli_finds_the_app(tmp_path: Path) -> None:
    env = {**os.environ, "VITRINA_DATA__DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "flask", "--app", "web", "routes"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "/api/search" in out.stdout and "/api/feedback" in out.stdout
