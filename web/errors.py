"""The one place errors become JSON: VitrinaError and HTTP errors keep their status, anything else is a logged 500."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from vitrina.errors import VitrinaError

log = logging.getLogger(__name__)


def error_response(status: int, error: str, detail: str | None = None) -> Response:
    """{"error": short message, "detail": what to change} with the given status."""
    resp = jsonify({"error": error, "detail": detail or ""})
    resp.status_code = status
    return resp


def _vitrina(e: VitrinaError) -> Response:
    if e.status >= 500:
        log.warning("%s on %s %s: %s (%s)", type(e).__name__, request.method, request.path, e.message, e.detail)
    return error_response(e.status, e.message, e.detail)


def _too_large(e: RequestEntityTooLarge) -> Response:
    limit = request.max_content_length
    return error_response(413, "request too large",
                          f"the body is over {limit} bytes" if limit else "the body is over the limit")


def _http(e: HTTPException) -> Response:
    resp = error_response(e.code or 500, (e.name or "error").lower(), e.description)
    if e.code == 405 and e.valid_methods:  # type: ignore[attr-defined]
        resp.headers["Allow"] = ", ".join(e.valid_methods)  # type: ignore[attr-defined]
    return resp


def _unexpected(e: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal error", type(e).__name__)


def register_error_handlers(app: Flask) -> None:
    """Map every error to JSON {"error", "detail"} (the page's HTML routes too: the client reads JSON)."""
    app.register_error_handler(VitrinaError, _vitrina)
    app.register_error_handler(RequestEntityTooLarge, _too_large)
    app.register_error_handler(HTTPException, _http)
    app.register_error_handler(Exception, _unexpected)
