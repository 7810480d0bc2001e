"""`/api/search` (GET with a query string; POST multipart with a photo, or JSON with an image_url)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from search.query.request import MODES, flatten_json, parse_search
from vitrina.errors import BadInput
from web.deps import args_lists, get_config, get_traffic
from web.openapi import Param, spec

bp = Blueprint("search", __name__, url_prefix="/api")

SEARCH_PARAMS = (
    Param("q", "text query (1..[search].max_query_chars characters after trimming)"),
    Param("k", "results per page", "integer", minimum=1, maximum=100),
    Param("offset", "results to skip (paging)", "integer", minimum=0),
    Param("mode", "hybrid (keyword + fused vector, then personal rerank), vector, text, image or keyword",
          enum=MODES),
    Param("user_id", "shopper whose feedback personalises the ranking"),
    Param("image_weight", "weight of the photo when text and photo are both given", "number",
          minimum=0, maximum=1),
    Param("facets", "comma-separated filterable fields to count over the ranked results (e.g. gender,articleType)"),
    Param("filter.<field>", "exact match on a filterable field; repeat for any-of", repeated=True),
    Param("price_min", "lower price bound (also <numeric field>_min)", "number"),
    Param("price_max", "upper price bound (also <numeric field>_max)", "number"),
)
_SEARCH_RESPONSES: dict[int, Any] = {200: {"$ref": "#/components/schemas/Results"}, 400: None, 413: None,
                                     422: None, 503: None}
_MULTIPART = {"type": "object", "properties": {
    "image": {"type": "string", "format": "binary", "description": "the photo to search with"},
    "q": {"type": "string"}, "k": {"type": "integer"}, "mode": {"type": "string", "enum": list(MODES)},
    "image_weight": {"type": "number"}, "user_id": {"type": "string"}}}
_JSON_BODY = {"type": "object", "properties": {
    "q": {"type": "string"}, "image_url": {"type": "string", "format": "uri"}, "k": {"type": "integer"},
    "offset": {"type": "integer"}, "mode": {"type": "string", "enum": list(MODES)},
    "image_weight": {"type": "number"}, "user_id": {"type": "string"}, "facets": {"type": "string"},
    "filters": {"type": "object", "additionalProperties": {"type": ["string", "array"]}}}}


@bp.get("/search")
@spec("Search by text", SEARCH_PARAMS, responses=_SEARCH_RESPONSES, tag="search")
def search_get() -> ResponseReturnValue:
    """Search the catalogue with a text query, filters and facets."""
    req = parse_search(args_lists(), get_config())
    return jsonify(get_traffic().search(req))


@bp.post("/search")
@spec("Search by photo and/or text", SEARCH_PARAMS[1:],
      body={"multipart/form-data": {"schema": _MULTIPART}, "application/json": {"schema": _JSON_BODY}},
      responses=_SEARCH_RESPONSES, tag="search")
def search_post() -> ResponseReturnValue:
    """Search with an uploaded photo (multipart `image`), a photo URL (JSON `image_url`), text, or both."""
    cfg = get_config()
    params = args_lists()
    image: bytes | None = None
    if request.is_json:
        body = flatten_json(request.get_json())
    elif request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        body = {k: request.form.getlist(k) for k in request.form}
        files = [name for name in request.files if name != "image"]
        if files:
            raise BadInput(f"unexpected file field(s) {files}", "send the photo as the 'image' field")
        uploads = request.files.getlist("image")
        if len(uploads) > 1:
            raise BadInput("more than one image uploaded", "send one 'image' file")
        if uploads:
            image = uploads[0].read(cfg.search.max_upload_bytes + 1)
    else:
        raise BadInput("unsupported content type",
                       f"got {request.mimetype or 'none'!r}; send multipart/form-data or application/json")
    for key, values in body.items():
        params.setdefault(key, []).extend(values)
    req = parse_search(params, cfg, image=image)
    return jsonify(get_traffic().search(req))
