"""`/api/users/<id>/recommendations` and `/api/items/<id>/also-bought` (issue 6), same result shape as search."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from search.query.request import parse_filters, parse_item_id, parse_user_id
from search.shopper.recommend import SOURCES
from vitrina.errors import BadInput
from web.deps import args_lists, get_config, get_traffic
from web.openapi import Param, spec

bp = Blueprint("recommend", __name__, url_prefix="/api")

_K = Param("k", "how many (default 12)", "integer", minimum=1, maximum=100)
_FILTER = Param("filter.<field>", "exact match on a filterable field (repeat = any of)", repeated=True)
_MIN = Param("price_min", "lower price bound (also <numeric field>_min)", "number")
_MAX = Param("price_max", "upper price bound (also <numeric field>_max)", "number")
_RESULTS = {"$ref": "#/components/schemas/Results"}
_USER = Param("user_id", "the shopper looking (logged with the response and assigns the experiment's variant)")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
DEFAULT_K = 12


def _params(allowed: tuple[str, ...]) -> dict[str, list[str]]:
    params = args_lists()
    unknown = [k for k in params if k not in allowed and not k.startswith(("filter.", "_"))
               and not k.endswith(("_min", "_max"))]
    if unknown:
        raise BadInput(f"unknown parameter(s) {unknown}",
                       f"known: {', '.join(allowed)}, filter.<field>, <numeric>_min/_max")
    for key in allowed:
        if len(params.get(key, [])) > 1:
            raise BadInput(f"parameter {key!r} given {len(params[key])} times", f"give '{key}' at most once")
    return params


def _k() -> int:
    raw = request.args.get("k", "").strip()
    high = get_config().search.max_k
    if not raw:
        return min(DEFAULT_K, high)
    try:
        k = int(raw)
    except ValueError as e:
        raise BadInput("'k' must be an integer", f"got {raw!r}; allowed 1..{high}") from e
    if not 1 <= k <= high:
        raise BadInput("'k' out of range", f"got {k}; allowed 1..{high}")
    return k


def _sources() -> tuple[str, ...] | None:
    raw = request.args.get("sources", "").strip()
    if not raw:
        return None
    names = tuple(dict.fromkeys(s.strip() for s in raw.split(",") if s.strip()))
    unknown = [s for s in names if s not in SOURCES]
    if unknown or not names:
        raise BadInput(f"unknown source(s) {unknown}", f"choose from {', '.join(SOURCES)}")
    return names


def _user_id() -> str | None:
    raw = request.args.get("user_id", "")
    return parse_user_id(raw) if raw else None


def _flag(name: str) -> bool | None:
    raw = request.args.get(name, "").strip().lower()
    if not raw:
        return None
    if raw in _TRUE | _FALSE:
        return raw in _TRUE
    raise BadInput(f"'{name}' must be true or false", f"got {raw!r}")


@bp.get("/users/<user_id>/recommendations")
@spec("Recommendations for a shopper", (Param("user_id", "shopper id", where="path", required=True), _K,
                                         Param("exclude_purchased", "leave out items the shopper bought",
                                               "boolean"),
                                         Param("sources", "only these sources, comma-separated: "
                                               + ", ".join(SOURCES)), _FILTER, _MIN, _MAX),
      responses={200: _RESULTS, 400: None}, tag="recommend")
def recommendations(user_id: str) -> ResponseReturnValue:
    """Vector neighbours of the shopper's taste, co-bought with their recent items, buy-again and popular,
    blended; each result's explain lists the sources that nominated it. Unknown shoppers get popular items. A feed
    these leave short of k (a shop with no events yet, narrow filters) is filled up with the catalogue's typical
    items, explained as sources ["typical"] ([recommend].fill; not when `sources` is given)."""
    uid = parse_user_id(user_id)
    params = _params(("k", "exclude_purchased", "sources"))
    filters = parse_filters(params, get_config())
    return jsonify(get_traffic().recommendations(uid, _k(), filters or None, _flag("exclude_purchased"),
                                                 sources=_sources()))


@bp.get("/items/<path:item_id>/also-bought")
@spec("Shoppers who bought this also bought", (Param("item_id", "external item id", where="path",
                                                     required=True), _K, _USER, _FILTER, _MIN, _MAX),
      responses={200: _RESULTS, 400: None, 404: None}, tag="recommend")
def also_bought(item_id: str) -> ResponseReturnValue:
    """Items co-bought (cart or purchase) with this one, normalised by each item's buyers so best-sellers do
    not win everything; vector neighbours fill the list when the item has little history."""
    iid = parse_item_id(item_id)
    params = _params(("k", "user_id"))
    filters = parse_filters(params, get_config())
    return jsonify(get_traffic().also_bought(iid, _k(), filters or None, _user_id()))
