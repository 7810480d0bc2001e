"""OpenAPI 3.1 from the code: each view declares its parameters and responses with @spec; the url_map does the rest."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from flask import Flask

F = TypeVar("F", bound=Callable[..., Any])

ERROR_SCHEMA = {"type": "object", "required": ["error", "detail"],
                "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}}
EXPLAIN_SCHEMA = {"type": "object", "description": "the parts of the result's score (keyword, vector, "
                  "relevance, personal, blend, final, ...)", "additionalProperties": True}
RESULT_SCHEMA = {
    "type": "object", "required": ["id", "score", "title", "image_url", "attributes"],
    "properties": {"id": {"type": "string", "description": "external id, exactly as in the catalogue"},
                   "score": {"type": ["number", "null"]}, "title": {"type": ["string", "null"]},
                   "image_url": {"type": ["string", "null"]}, "attributes": {"type": "object"},
                   "explain": {"$ref": "#/components/schemas/Explain"}}}
RESULTS_SCHEMA = {
    "type": "object", "required": ["results", "total", "took_ms"],
    "properties": {"results": {"type": "array", "items": {"$ref": "#/components/schemas/Result"}},
                   "total": {"type": "integer", "description": "results the ranking holds (pages reach up to "
                             "it; at most max([search].candidates, offset + k))"},
                   "took_ms": {"type": "number"},
                   "request_id": {"type": "string", "description": "this response in the impression log; feedback "
                                  "may name it (with the item's position)"},
                   "experiment": {"type": ["string", "null"], "description": "the running experiment the shopper "
                                  "is in ([experiments]), null outside one"},
                   "variant": {"type": ["string", "null"], "description": "the variant that served it (interleaved: "
                               "'A+B', each result's explain names its team)"},
                   "facets": {"type": "object", "additionalProperties": {
                       "type": "object", "additionalProperties": {"type": "integer"}}},
                   "understood": {"type": "object", "description": "hybrid text queries: how the query was read "
                                  "(search.query.reading): the text searched, one entry per reading (spelling, "
                                  "price, exclude, exact, similar: words, values, confidence), the fusion weights and their signals",
                                  "required": ["text", "readings"],
                                  "properties": {"text": {"type": "string"},
                                                 "readings": {"type": "array", "items": {"type": "object"}},
                                                 "weights": {"type": "object"}, "signals": {"type": "object"},
                                                 "corrected": {"type": "object"}}}}}
_STATUS_TEXT = {200: "OK", 201: "Created", 400: "Bad input", 401: "Missing or wrong API key", 404: "Not found",
                413: "Too large", 415: "Unsupported media type", 422: "Image cannot be decoded",
                503: "Model or index unavailable"}


@dataclass(frozen=True)
class Param:
    """One query or path parameter."""

    name: str
    description: str
    type: str = "string"
    where: str = "query"
    required: bool = False
    enum: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    repeated: bool = False

    def to_openapi(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": self.type}
        if self.enum:
            schema["enum"] = list(self.enum)
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.repeated:
            schema = {"type": "array", "items": schema}
        return {"name": self.name, "in": self.where, "required": self.required or self.where == "path",
                "description": self.description, "schema": schema,
                **({"style": "form", "explode": True} if self.repeated else {})}


def spec(summary: str, params: tuple[Param, ...] = (), body: dict[str, Any] | None = None,
         responses: dict[int, Any] | None = None, tag: str = "") -> Callable[[F], F]:
    """Attach the OpenAPI facts of one view; `responses` maps status -> schema (or None for an error)."""

    def decorate(view: F) -> F:
        view.openapi = {"summary": summary, "params": params, "body": body,  # type: ignore[attr-defined]
                        "responses": responses or {200: {"type": "object"}}, "tag": tag}
        return view

    return decorate


def _path(rule: str) -> tuple[str, list[str]]:
    names = re.findall(r"<(?:[^:<>]+:)?([^<>]+)>", rule)
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule), names


def _operation(view: Callable[..., Any], method: str, path_names: list[str], endpoint: str) -> dict[str, Any]:
    info = getattr(view, "openapi", None) or {}
    doc = inspect.getdoc(view) or ""
    op: dict[str, Any] = {"operationId": f"{endpoint}_{method.lower()}".replace(".", "_"),
                          "summary": info.get("summary") or (doc.splitlines()[0] if doc else endpoint)}
    if doc:
        op["description"] = doc
    if info.get("tag") or "." in endpoint:
        op["tags"] = [info.get("tag") or endpoint.split(".")[0]]
    declared = {p.name: p for p in info.get("params", ())}
    params = [declared.pop(n).to_openapi() if n in declared else
              {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in path_names]
    params += [p.to_openapi() for p in declared.values()]
    if params:
        op["parameters"] = params
    body = info.get("body")
    if body and method in ("POST", "PUT", "PATCH"):
        op["requestBody"] = {"required": True, "content": body}
    responses: dict[str, Any] = {}
    for status, schema in (info.get("responses") or {200: {"type": "object"}}).items():
        entry: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "Response")}
        if status >= 400:
            entry["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        elif schema is not None:
            media = schema.get("_media", "application/json")
            entry["content"] = {media: {"schema": {k: v for k, v in schema.items() if k != "_media"}}}
        responses[str(status)] = entry
    responses.setdefault("400", {"description": "Bad input",
                                 "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
    op["responses"] = responses
    if getattr(view, "requires_key", False):
        op["security"] = [{"bearer": []}]
        op["responses"].setdefault("401", {"description": _STATUS_TEXT[401], "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
    return op


def build_openapi(app: Flask, version: str = "0.1.0") -> dict[str, Any]:
    """The whole document, from every rule in app.url_map (static file routes left out)."""
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue
        view = app.view_functions[rule.endpoint]
        path, names = _path(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(view, method, names, rule.endpoint)
    return {
        "openapi": "3.1.0",
        "info": {"title": "vitrina", "version": version,
                 "description": "Multimodal product search: text, photo or both; filters, facets, "
                                "per-result score breakdown, personalised rerank from feedback."},
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA, "Result": RESULT_SCHEMA, "Results": RESULTS_SCHEMA,
                        "Explain": EXPLAIN_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "needed for writes when [web].api_keys are set"}},
        },
    }
