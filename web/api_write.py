"""Item writes on the running service: `POST|PUT /api/items` (one, a batch, JSONL, or a form with a photo),
`PATCH /api/items[/<id>]` (attributes only, no re-embedding) and `DELETE /api/items[/<id>]`; all need the API key."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from indexer.items import ItemError
from search.query.request import parse_item_id
from vitrina.errors import BadInput, PayloadTooLarge, UnsupportedMedia
from web.deps import get_config, get_service, requires_key
from web.openapi import Param, spec

bp = Blueprint("items_write", __name__, url_prefix="/api/items")

JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines", "application/json-seq")
_BUILD = threading.Lock()
_ID = Param("item_id", "external item id, exactly as in the catalogue", where="path", required=True)
_ITEM = {"type": "object", "description": "one product in catalogue schema: the columns of the [catalogue] mapping "
         "(id, title, image, attributes, price, ...) plus any extra field with a string, number or boolean value; "
         "image: an http(s) URL or a path under the image root", "additionalProperties": {
             "type": ["string", "number", "boolean", "null"]}}
_RESULT = {"type": "object", "required": ["id", "status", "error"], "properties": {
    "id": {"type": "string"},
    "status": {"type": "string", "enum": ["created", "updated", "unchanged", "deleted", "error"]},
    "error": {"type": ["string", "null"]}, "detail": {"type": "string"},
    "code": {"type": "integer", "description": "the HTTP status this item alone would get"}}}
_RESULTS = {"type": "object", "required": ["items", "errors"], "properties": {
    "items": {"type": "array", "items": _RESULT, "description": "one per item sent, in order"},
    "errors": {"type": "boolean", "description": "true when some item failed (the others were written)"},
    "counts": {"type": "object", "additionalProperties": {"type": "integer"}}, "took_ms": {"type": "number"}}}
_JSONL = {"schema": {"type": "string", "description": "one JSON object per line"}}
_UPSERT_BODY = {"application/json": {"schema": {"oneOf": [_ITEM, {"type": "array", "items": _ITEM}]}},
                **{t: _JSONL for t in JSONL_TYPES[:2]},
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "image": {"type": "string", "format": "binary", "description": "the product photo"}},
                    "additionalProperties": {"type": "string"},
                    "description": "one product: its fields as form fields, its photo as the file 'image'"}}}
_WRITE_ERRORS: dict[int, Any] = {200: _RESULTS, 400: None, 401: None, 404: None, 413: None, 415: None, 422: None,
                                 503: None}


def writer() -> Any:
    """The app's ItemWriter over the service's store (made on first write; see indexer.writer)."""
    found = current_app.extensions.get("vitrina_writer")
    if found is None:
        from indexer.writer import ItemWriter

        with _BUILD:
            found = current_app.extensions.get("vitrina_writer")
            if found is None:
                found = ItemWriter(get_config(), get_service().store)
                current_app.extensions["vitrina_writer"] = found
    return found


def close_writer(app: Flask) -> None:
    """Flush and checkpoint the app's writes (at shutdown)."""
    found = app.extensions.pop("vitrina_writer", None)
    if found is not None:
        found.close()


def _json_body() -> Any:
    try:
        return json.loads(request.get_data(cache=False) or b"null")
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInput("the body is not valid JSON", str(e)) from e


def _jsonl_body() -> list[Any]:
    """Each non-empty line as a JSON value; a bad line becomes an ItemError that fails only its own item."""
    records: list[Any] = []
    for n, line in enumerate(request.get_data(cache=False).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except (ValueError, UnicodeDecodeError) as e:
            records.append(ItemError("", f"line {n} is not valid JSON", str(e)))
    return records


def _form_item() -> dict[str, Any]:
    """One product from a multipart form; its uploaded photo is kept under data_dir/uploads."""
    from indexer.items import save_upload

    cfg = get_config()
    record: dict[str, Any] = {}
    for key in request.form:
        values = request.form.getlist(key)
        if len(values) > 1:
            raise BadInput(f"field {key!r} given {len(values)} times", "give each field once")
        record[key] = values[0]
    extra = [name for name in request.files if name != "image"]
    uploads = request.files.getlist("image")
    if extra or len(uploads) > 1:
        raise BadInput("send one photo, as the file field 'image'", f"got files {sorted(request.files)}")
    if uploads:
        if not cfg.catalogue.image:
            raise BadInput("this catalogue has no image column", "leave the photo out")
        data = uploads[0].read(cfg.search.max_upload_bytes + 1)
        if len(data) > cfg.search.max_upload_bytes:
            raise PayloadTooLarge(f"the photo is over {cfg.search.max_upload_bytes:,} bytes")
        record[cfg.catalogue.image] = save_upload(cfg, data)
    return record


def _records(allow_form: bool) -> tuple[list[Any], bool]:
    """The request's items and whether it sent a single one (a JSON object or a form)."""
    if request.mimetype == "application/json":
        body = _json_body()
        single = not isinstance(body, list)
        records = [body] if single else body
    elif request.mimetype in JSONL_TYPES:
        records, single = _jsonl_body(), False
    elif allow_form and request.mimetype == "multipart/form-data":
        records, single = [_form_item()], True
    else:
        accepted = "application/json, application/x-ndjson" + (" or multipart/form-data" if allow_form else "")
        raise UnsupportedMedia("unsupported content type", f"got {request.mimetype or 'none'!r}; send {accepted}")
    limit = get_config().live.max_items
    if not records:
        raise BadInput("no items in the body", "send an object, a list of objects or JSON lines")
    if len(records) > limit:
        raise PayloadTooLarge(f"{len(records):,} items in one request, over the limit of {limit:,}",
                              "split them into requests of at most [live].max_items")
    return records, single


def _answer(results: list[Any], single: bool, t0: float) -> ResponseReturnValue:
    """One item sent: its status code (the error JSON when it failed); a batch: 200 with every item's result."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    if set(counts) - {"error", "unchanged"}:
        get_service().items_written()  # /health keeps its count until the alias moves or items are written
    body = {"items": [r.as_dict() for r in results], "errors": "error" in counts, "counts": counts,
            "took_ms": round((time.perf_counter() - t0) * 1e3, 2)}
    if single and results[0].status == "error":
        first = results[0]
        return jsonify({"error": first.error, "detail": first.detail or "", **body}), first.code
    return jsonify(body), (201 if single and results[0].status == "created" else 200)


@bp.route("", methods=["POST", "PUT"])
@requires_key
@spec("Add or replace products", body=_UPSERT_BODY, responses={**_WRITE_ERRORS, 201: _RESULTS}, tag="items")
def upsert() -> ResponseReturnValue:
    """Embed, fuse and write one product or a batch (the same id overwrites); each item gets its own result
    (created, updated, unchanged or error), so one bad item never fails the others. Written items are
    returned by /api/items/<id> at once and found by search; a reindex running meanwhile keeps them."""
    from indexer.writer import write_items

    t0 = time.perf_counter()
    records, single = _records(allow_form=True)
    return _answer(write_items(writer(), records), single, t0)


@bp.patch("")
@requires_key
@spec("Change attributes of many products", body={
    "application/json": {"schema": {"type": "array", "items": {**_ITEM, "required": ["id"]}}}, JSONL_TYPES[0]: _JSONL},
      responses=_WRITE_ERRORS, tag="items")
def patch_many() -> ResponseReturnValue:
    """Attribute-only changes ([{"id", "price": 9.5, "stock": 3}, ...]): no re-embedding, so cheap for stock and
    price updates in bulk. Fields that feed the vectors or keywords (title, text fields, image) are refused for
    that item; a null value removes a field."""
    from indexer.writer import patch_items

    t0 = time.perf_counter()
    records, _ = _records(allow_form=False)
    return _answer(patch_items(writer(), records), False, t0)


@bp.patch("/<path:item_id>")
@requires_key
@spec("Change attributes of a product", (_ID,), body={"application/json": {"schema": _ITEM}},
      responses=_WRITE_ERRORS, tag="items")
def patch_one(item_id: str) -> ResponseReturnValue:
    """Set payload fields of one product (price, stock, any attribute that does not feed its vectors) without
    re-embedding; a null value removes the field."""
    from indexer.writer import patch_items

    t0 = time.perf_counter()
    iid = parse_item_id(item_id)
    records, single = _records(allow_form=False)
    if not single:
        raise BadInput("send one JSON object of fields", "use PATCH /api/items for a list")
    change = records[0]
    if isinstance(change, dict) and str(change.get("id", iid)) != iid:
        raise BadInput("the id in the body differs from the one in the path", "ids cannot be changed")
    fields = {**change, "id": iid} if isinstance(change, dict) else change
    return _answer(patch_items(writer(), [fields]), True, t0)


def _ids_body() -> list[str]:
    if request.mimetype != "application/json":
        raise UnsupportedMedia("unsupported content type", 'send application/json: {"ids": [...]} or a list')
    body = _json_body()
    ids = body.get("ids") if isinstance(body, dict) else body
    if not isinstance(ids, list) or not ids:
        raise BadInput('give the ids to delete as {"ids": [...]} or a JSON list')
    limit = get_config().live.max_items
    if len(ids) > limit:
        raise PayloadTooLarge(f"{len(ids):,} ids in one request, over the limit of {limit:,}")
    return [parse_item_id(i, "ids") for i in ids]


@bp.delete("")
@requires_key
@spec("Delete products", body={"application/json": {"schema": {"oneOf": [
    {"type": "object", "required": ["ids"], "properties": {"ids": {"type": "array", "items": {"type": "string"}}}},
    {"type": "array", "items": {"type": "string"}}]}}}, responses=_WRITE_ERRORS, tag="items")
def delete_many() -> ResponseReturnValue:
    """Delete products by id; an unknown id is an error for that id only. Deleted products never appear in
    search, similar, also-bought or recommendations afterwards."""
    t0 = time.perf_counter()
    return _answer(writer().delete(_ids_body()), False, t0)


@bp.delete("/<path:item_id>")
@requires_key
@spec("Delete a product", (_ID,), responses=_WRITE_ERRORS, tag="items")
def delete_one(item_id: str) -> ResponseReturnValue:
    """Delete one product (404 when there is no such item)."""
    t0 = time.perf_counter()
    return _answer(writer().delete([parse_item_id(item_id)]), True, t0)
