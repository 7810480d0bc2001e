"""`/api/users/<user_id>/profile`: what a shopper's personal vector is built from; DELETE forgets them."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from search.query.request import parse_user_id
from web.deps import get_service, requires_key
from web.openapi import Param, spec

bp = Blueprint("users", __name__, url_prefix="/api/users")

_USER = Param("user_id", "shopper id", where="path", required=True)


@bp.get("/<user_id>/profile")
@requires_key
@spec("A shopper's profile", (_USER,), responses={200: {"type": "object"}, 401: None, 404: None}, tag="users")
def profile(user_id: str) -> ResponseReturnValue:
    """Event counts, evidence and first/last event time behind the shopper's personal vector (a shopper's history
    is theirs: the API key is needed when keys are configured)."""
    return jsonify(get_service().profile(parse_user_id(user_id)))


@bp.delete("/<user_id>/profile")
@requires_key
@spec("Forget a shopper", (_USER,), responses={200: {"type": "object", "properties": {
    "user_id": {"type": "string"}, "deleted": {"type": "boolean"}}}, 401: None}, tag="users")
def forget(user_id: str) -> ResponseReturnValue:
    """Delete the profile, its events and its share of derived signals (privacy); deleted=false if unknown."""
    uid = parse_user_id(user_id)
    return jsonify({"user_id": uid, "deleted": bool(get_service().forget(uid))})
