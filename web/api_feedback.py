"""`POST /api/feedback`: shoppers' view/click/cart/purchase events (needs an API key when keys are set)."""

from __future__ import annotations

import time

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from search.query.request import EVENTS, parse_events
from vitrina.errors import BadInput
from web.deps import get_config, get_traffic, requires_key
from web.openapi import spec

bp = Blueprint("feedback", __name__, url_prefix="/api")

_EVENT = {"type": "object", "required": ["user_id", "item_id", "event"], "properties": {
    "user_id": {"type": "string"}, "item_id": {"type": "string"},
    "event": {"type": "string", "enum": list(EVENTS)},
    "ts": {"type": "string", "format": "date-time", "description": "ISO-8601; default now"},
    "request_id": {"type": "string", "description": "the `request_id` of the response the shopper acted on"},
    "position": {"type": "integer", "minimum": 0, "description": "the item's 0-based place in that response"}}}


@bp.post("/feedback")
@requires_key
@spec("Record feedback events", body={"application/json": {"schema": {
    "oneOf": [_EVENT, {"type": "array", "items": _EVENT}]}}},
      responses={200: {"type": "object", "properties": {"accepted": {"type": "integer"}}},
                 400: None, 401: None, 404: None, 413: None}, tag="feedback")
def feedback() -> ResponseReturnValue:
    """One event or a list; every item must be in the index (else 404 naming the events that failed)."""
    if not request.is_json:
        raise BadInput("feedback must be JSON", f"got content type {request.mimetype or 'none'!r}")
    events = parse_events(request.get_json(), time.time(), get_config().search.max_events)
    return jsonify({"accepted": get_traffic().feedback(events)})
