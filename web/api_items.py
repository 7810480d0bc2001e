"""`/api/items/<id>`, its similar items and its picture."""

from __future__ import annotations

import mimetypes

from flask import Blueprint, jsonify, request, send_file
from flask.typing import ResponseReturnValue

from search.query.request import parse_filters, parse_item_id, parse_user_id
from vitrina.errors import BadInput
from web.deps import args_lists, get_config, get_service, get_traffic
from web.openapi import Param, spec

bp = Blueprint("items", __name__, url_prefix="/api/items")

_ID = Param("item_id", "external item id, exactly as in the catalogue", where="path", required=True)
_IMAGE_TYPES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise BadInput(f"'{name}' must be an integer", f"got {raw!r}; allowed {low}..{high}") from e
    if not low <= value <= high:
        raise BadInput(f"'{name}' out of range", f"got {value}; allowed {low}..{high}")
    return value


@bp.get("/<path:item_id>")
@spec("One item", (_ID,), responses={200: {"$ref": "#/components/schemas/Result"}, 404: None}, tag="items")
def item(item_id: str) -> ResponseReturnValue:
    """The item's title, image URL and attributes."""
    return jsonify(get_service().item(parse_item_id(item_id)))


@bp.get("/<path:item_id>/similar")
@spec("More like this", (_ID, Param("k", "how many", "integer", minimum=1, maximum=100),
                         Param("offset", "results to skip", "integer", minimum=0),
                         Param("user_id", "the shopper looking (logged; assigns the experiment's variant)"),
                         Param("filter.<field>", "exact match on a filterable field", repeated=True)),
      responses={200: {"$ref": "#/components/schemas/Results"}, 404: None}, tag="items")
def similar(item_id: str) -> ResponseReturnValue:
    """Nearest neighbours of the item's stored fused vector (the item itself left out)."""
    cfg = get_config()
    params = args_lists()
    unknown = [k for k in params if k not in ("k", "offset", "user_id") and not k.startswith(("filter.", "_"))
               and not k.endswith(("_min", "_max"))]
    if unknown:
        raise BadInput(f"unknown parameter(s) {unknown}",
                       "known: k, offset, user_id, filter.<field>, <numeric>_min/_max")
    k = _int_arg("k", cfg.search.default_k, 1, cfg.search.max_k)
    offset = _int_arg("offset", 0, 0, cfg.search.max_offset)
    filters = parse_filters(params, cfg)
    user = request.args.get("user_id") or None
    return jsonify(get_traffic().similar(parse_item_id(item_id), k, offset, filters,
                                         parse_user_id(user) if user else None))


@bp.get("/<path:item_id>/image")
@spec("The item's picture", (_ID,), responses={200: {"_media": "image/*", "type": "string", "format": "binary"},
                                                404: None}, tag="items")
def image(item_id: str) -> ResponseReturnValue:
    """The product image file of a local catalogue (remote images are linked directly in image_url)."""
    path = get_service().image_path(parse_item_id(item_id))
    if path.suffix.lower() not in _IMAGE_TYPES:
        raise BadInput("not an image file", path.suffix)
    mimetype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    resp = send_file(path, mimetype=mimetype, max_age=86400, conditional=True)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp
