"""Parse and validate search and feedback requests into typed values; every problem is a BadInput with detail."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from search.store.interface import Filters
from vitrina.config import Config
from vitrina.errors import BadInput, PayloadTooLarge

MODES = ("hybrid", "vector", "text", "image", "keyword")
EVENTS = ("view", "click", "cart", "purchase")
PRICE_FIELD = "price"  # payload key of the catalogue's price column
MAX_ID_CHARS = 256
_USER_ID = re.compile(r"^[A-Za-z0-9_.:@+\-]{1,128}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
MAX_POSITION = 10_000
EVENT_FIELDS = ("user_id", "item_id", "event", "ts", "request_id", "position")
_SCALAR_PARAMS = frozenset({"q", "k", "offset", "mode", "user_id", "image_weight", "facets", "image_url"})

Params = Mapping[str, Sequence[str]]  # every query-string / form key with all its values


@dataclass(frozen=True)
class SearchRequest:
    """One validated search: text and/or photo, paging, mode, filters, facets, shopper."""

    q: str = ""
    k: int = 10
    offset: int = 0
    mode: str = "hybrid"
    filters: Filters = field(default_factory=Filters)
    facets: tuple[str, ...] = ()
    user_id: str | None = None
    image_weight: float = 0.5
    image: bytes | None = None  # uploaded photo, still encoded
    image_url: str | None = None  # photo to fetch (JSON requests)

    @property
    def has_photo(self) -> bool:
        return self.image is not None or self.image_url is not None


@dataclass(frozen=True)
class FeedbackEvent:
    """One validated feedback event (ts in epoch seconds UTC)."""

    user_id: str
    item_id: str
    event: str
    ts: float
    request_id: str | None = None  # the response the shopper acted on (its `request_id`), when known
    position: int | None = None  # the item's 0-based place in that response's ranking


def _one(params: Params, name: str) -> str | None:
    values = params.get(name) or ()
    if len(values) > 1:
        raise BadInput(f"parameter {name!r} given {len(values)} times", f"give '{name}' at most once")
    return values[0] if values else None


def _int(params: Params, name: str, default: int, low: int, high: int) -> int:
    raw = _one(params, name)
    if raw is None or raw == "":
        return default
    try:
        value = int(str(raw).strip())
    except ValueError as e:
        raise BadInput(f"'{name}' must be an integer", f"got {raw!r}; allowed {low}..{high}") from e
    if not low <= value <= high:
        raise BadInput(f"'{name}' out of range", f"got {value}; allowed {low}..{high}")
    return value


def _float(raw: Any, name: str) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError as e:
        raise BadInput(f"'{name}' must be a number", f"got {raw!r}") from e
    if not math.isfinite(value):
        raise BadInput(f"'{name}' must be a finite number", f"got {raw!r}")
    return value


def parse_user_id(raw: Any, name: str = "user_id") -> str:
    """A shopper id: 1..128 of letters, digits and _.:@+- (hashed ids and emails fit)."""
    if not isinstance(raw, str) or not _USER_ID.match(raw):
        raise BadInput(f"'{name}' is not a valid shopper id",
                       f"got {str(raw)[:60]!r}; expected 1..128 characters of letters, digits and _.:@+-")
    return raw


def parse_item_id(raw: Any, name: str = "item_id") -> str:
    """An external item id exactly as in the catalogue (any non-empty string without control characters)."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not raw or len(raw) > MAX_ID_CHARS or not raw.isprintable():
        raise BadInput(f"'{name}' is not a valid item id",
                       f"got {str(raw)[:60]!r}; expected a non-empty printable string of at most {MAX_ID_CHARS}")
    return raw


def parse_filters(params: Params, cfg: Config) -> Filters:
    """filter.<field>=value (repeat = any of) on [catalogue].filterable; <numeric>_min/_max ranges."""
    filterable = set(cfg.catalogue.filterable)
    numeric = set(cfg.catalogue.numeric) | ({PRICE_FIELD} if cfg.catalogue.price else set())
    equals: dict[str, tuple[str, ...]] = {}
    ranges: dict[str, list[float | None]] = {}
    for key, values in params.items():
        if key.startswith("filter."):
            name = key[len("filter."):]
            if name not in filterable:
                raise BadInput(f"unknown filter field {name!r}",
                               f"filterable fields: {', '.join(sorted(filterable)) or '(none configured)'}")
            clean = tuple(str(v) for v in values if str(v) != "")
            if any(len(v) > MAX_ID_CHARS for v in clean):
                raise BadInput(f"filter value for {name!r} too long", f"at most {MAX_ID_CHARS} characters")
            if clean:
                equals[name] = tuple(dict.fromkeys(equals.get(name, ()) + clean))
        elif key.endswith(("_min", "_max")) and key not in _SCALAR_PARAMS:
            name, side = key[:-4], key[-3:]
            if name not in numeric:
                raise BadInput(f"unknown range parameter {key!r}",
                               f"numeric fields: {', '.join(sorted(numeric)) or '(none configured)'}")
            raw = _one(params, key)
            if raw is None or raw == "":
                continue
            bounds = ranges.setdefault(name, [None, None])
            bounds[0 if side == "min" else 1] = _float(raw, key)
    for name, (low, high) in ranges.items():
        if low is not None and high is not None and low > high:
            raise BadInput(f"empty range for {name!r}", f"{name}_min={low} is above {name}_max={high}")
    return Filters(equals=equals, ranges={n: (b[0], b[1]) for n, b in ranges.items()})


def _check_known(params: Params) -> None:
    for key in params:
        if key in _SCALAR_PARAMS or key.startswith(("filter.", "_")) or key.endswith(("_min", "_max")):
            continue
        raise BadInput(f"unknown parameter {key!r}",
                       "known: q, k, offset, mode, user_id, image_weight, facets, image_url, "
                       "filter.<field>, <numeric>_min, <numeric>_max")


def parse_search(params: Params, cfg: Config, image: bytes | None = None) -> SearchRequest:
    """Validate a search from its parameters (query string, form or flattened JSON) and optional photo."""
    s = cfg.search
    _check_known(params)
    q = (_one(params, "q") or "").strip()
    if len(q) > s.max_query_chars:
        raise BadInput("query too long", f"{len(q)} characters; at most {s.max_query_chars}")
    if "\x00" in q:
        raise BadInput("query contains a NUL character")
    image_url = (_one(params, "image_url") or "").strip() or None
    if image_url is not None and not re.match(r"^https?://", image_url, re.I):
        raise BadInput("'image_url' must be an http(s) URL", f"got {image_url[:80]!r}")
    if image is not None and len(image) == 0:
        raise BadInput("uploaded image is empty")
    if image is not None and len(image) > s.max_upload_bytes:
        raise PayloadTooLarge("uploaded image too large", f"{len(image)} bytes; at most {s.max_upload_bytes}")
    if image is not None and image_url is not None:
        raise BadInput("give an uploaded image or an image_url, not both")
    if not q and image is None and image_url is None:
        raise BadInput("empty query", "give 'q' (1.." f"{s.max_query_chars} characters) and/or an image")
    mode = (_one(params, "mode") or s.default_mode).strip().lower()
    if mode not in MODES:
        raise BadInput(f"unknown mode {mode!r}", f"modes: {', '.join(MODES)}")
    if mode == "keyword" and not q:
        raise BadInput("keyword mode needs a text query 'q'")
    k = _int(params, "k", s.default_k, 1, s.max_k)
    offset = _int(params, "offset", 0, 0, s.max_offset)
    raw_weight = _one(params, "image_weight")
    image_weight = s.image_weight if raw_weight in (None, "") else _float(raw_weight, "image_weight")
    if not 0.0 <= image_weight <= 1.0:
        raise BadInput("'image_weight' out of range", f"got {image_weight}; allowed 0..1")
    raw_user = _one(params, "user_id")
    user_id = parse_user_id(raw_user) if raw_user not in (None, "") else None
    facets: list[str] = []
    for value in params.get("facets") or ():
        facets += [f.strip() for f in str(value).split(",") if f.strip()]
    unknown = [f for f in facets if f not in cfg.catalogue.filterable]
    if unknown:
        raise BadInput(f"unknown facet field(s) {unknown}",
                       f"facet fields: {', '.join(cfg.catalogue.filterable) or '(none configured)'}")
    return SearchRequest(q=q, k=k, offset=offset, mode=mode, filters=parse_filters(params, cfg),
                         facets=tuple(dict.fromkeys(facets)), user_id=user_id, image_weight=image_weight,
                         image=image, image_url=image_url)


def flatten_json(body: Any) -> dict[str, list[str]]:
    """A JSON search body as parameters: scalars as strings, lists as repeated values, `filters` expanded."""
    if not isinstance(body, dict):
        raise BadInput("JSON body must be an object", f"got {type(body).__name__}")
    params: dict[str, list[str]] = {}
    for key, value in body.items():
        if key == "filters":
            if not isinstance(value, dict):
                raise BadInput("'filters' must be an object", 'e.g. {"gender": ["Men"]}')
            for name, v in value.items():
                params.setdefault(f"filter.{name}", []).extend(_strings(v, f"filters.{name}"))
        else:
            params.setdefault(str(key), []).extend(_strings(value, str(key)))
    return params


def _strings(value: Any, name: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise BadInput(f"'{name}' must be a string or number (or a list of them)", f"got {v!r}"[:120])
        out.append(str(v))
    return out


def parse_ts(raw: Any, now: float) -> float:
    """ISO-8601 (naive = UTC) or epoch seconds, not in the future by more than a day."""
    if raw is None or raw == "":
        return now
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        ts = float(raw)
    elif isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
        except ValueError as e:
            raise BadInput("'ts' is not an ISO-8601 time", f"got {raw[:60]!r}") from e
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        ts = parsed.timestamp()
    else:
        raise BadInput("'ts' must be an ISO-8601 string", f"got {raw!r}"[:120])
    if not math.isfinite(ts) or ts < 0 or ts > now + 86400:
        raise BadInput("'ts' out of range", "between 1970 and one day from now")
    return ts


def _request_id(raw: Any) -> str | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str) or not _REQUEST_ID.match(raw):
        raise BadInput("'request_id' is not a request id", "give the `request_id` of the response, as it came")
    return raw


def _position(raw: Any) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_POSITION:
        raise BadInput("'position' must be an integer", f"the item's 0-based place in the response, 0..{MAX_POSITION}")
    return raw


def parse_events(body: Any, now: float, max_events: int) -> list[FeedbackEvent]:
    """One event object or a list of them; the detail names the index of the first bad one."""
    items = body if isinstance(body, list) else [body]
    if not items:
        raise BadInput("no events", "give one event object or a non-empty list")
    if len(items) > max_events:
        raise PayloadTooLarge("too many events in one request", f"{len(items)}; at most {max_events}")
    events = []
    for i, item in enumerate(items):
        where = f"event {i}" if isinstance(body, list) else "event"
        try:
            if not isinstance(item, dict):
                raise BadInput("must be an object", f"got {type(item).__name__}")
            unknown = set(item) - set(EVENT_FIELDS)
            if unknown:
                raise BadInput(f"unknown field(s) {sorted(unknown)}", f"fields: {', '.join(EVENT_FIELDS)}")
            kind = item.get("event")
            if kind not in EVENTS:
                raise BadInput(f"unknown event type {str(kind)[:40]!r}", f"event types: {', '.join(EVENTS)}")
            events.append(FeedbackEvent(user_id=parse_user_id(item.get("user_id")),
                                        item_id=parse_item_id(item.get("item_id")),
                                        event=kind, ts=parse_ts(item.get("ts"), now),
                                        request_id=_request_id(item.get("request_id")),
                                        position=_position(item.get("position"))))
        except BadInput as e:
            raise BadInput(f"{where}: {e.message}", e.detail) from e
    return events
