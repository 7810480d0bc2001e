"""Items sent to the write API or `vitrina upsert`: catalogue columns checked field by field, extra scalar fields
kept as payload, images limited to http(s) URLs and files under the image root (or saved uploads)."""

from __future__ import annotations

import hashlib
import math
import os
import re
from io import BytesIO
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from indexer.reader import Product, Skipped, image_base, mapped_columns, parse_row
from search.query.request import parse_item_id
from search.store.interface import ID_FIELD, PRICE_FIELD
from vitrina.config import Config
from vitrina.errors import BadInput

# Payload keys that Product.payload() fills from the mapping: an extra field may not take one of them.
PAYLOAD_KEYS = frozenset({ID_FIELD, "title", "description", "category", "brand", "image", "split", PRICE_FIELD})
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_URL = re.compile(r"^https?://", re.IGNORECASE)
_SCALARS = (str, int, float, bool)


@dataclass(frozen=True)
class ItemInput:
    """A valid item: the Product to embed, payload fields beyond the mapping, and the item as the log keeps it."""

    product: Product
    extra: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.product.id


class ItemError(BadInput):
    """One item of a write is invalid; `item_id` names it (may be '') and `status` is the HTTP status."""

    def __init__(self, item_id: str, message: str, detail: str | None = None, status: int = 400) -> None:
        super().__init__(message, detail)
        self.item_id = item_id
        self.status = status


def _kind(value: Any) -> str:
    return {dict: "object", list: "array"}.get(type(value), type(value).__name__)


def item_id_of(record: Any, cfg: Config) -> str:
    """The id a record names (for error reports), '' when it has none."""
    if not isinstance(record, Mapping):
        return ""
    raw = record.get(cfg.catalogue.id, record.get("id"))
    return str(raw).strip() if isinstance(raw, (str, int, float)) and not isinstance(raw, bool) else ""


def check_price(item_id: str, value: Any) -> float | None:
    """A price as a non-negative finite number (numbers or numeric strings); None for null or ''."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ItemError(item_id, f"bad price {value!r}", "give a non-negative number")
    try:
        price = float(value)
    except ValueError:
        raise ItemError(item_id, f"bad price {str(value)[:40]!r}", "give a non-negative number") from None
    if not math.isfinite(price) or price < 0:
        raise ItemError(item_id, f"bad price {str(value)[:40]!r}", "give a non-negative number")
    return price


def check_scalar(item_id: str, name: str, value: Any) -> Any:
    """A field's value as a string (stripped), a finite number or a boolean; None stays None."""
    if value is not None and not isinstance(value, _SCALARS):
        raise ItemError(item_id, f"field {name!r} has an unsupported type ({_kind(value)})",
                        "give a string, a number or a boolean")
    if isinstance(value, float) and not math.isfinite(value):
        raise ItemError(item_id, f"field {name!r} is not a finite number")
    return value.strip() if isinstance(value, str) else value


def check_extra(item_id: str, name: str, value: Any) -> Any:
    """A field beyond the catalogue mapping: a plain name and a scalar value."""
    if name in PAYLOAD_KEYS or not _NAME.match(name):
        raise ItemError(item_id, f"field {name!r} cannot be used",
                        "extra fields need a name of letters, digits, '_' or '-' (starting with a letter) that is "
                        f"not one of {sorted(PAYLOAD_KEYS)} unless the catalogue maps it")
    return check_scalar(item_id, name, value)


def upload_dir(cfg: Config) -> Path:
    """Where photos uploaded with an item are kept (the log and the payload refer to them by path)."""
    return cfg.data_dir / "uploads"


def check_image(cfg: Config, item_id: str, image: str, trusted: bool) -> str:
    """The image as stored: an http(s) URL, or a path that resolves under the image root or the upload folder
    (any path when `trusted`, i.e. from the command line)."""
    if not image or _URL.match(image) or trusted:
        return image
    if "://" in image[:16]:
        raise ItemError(item_id, "only http(s) image URLs are accepted", f"got {image[:80]!r}")
    base = image_base(cfg)
    path = Path(image) if Path(image).is_absolute() else base / image
    resolved = path.resolve()
    roots = [base.resolve(), upload_dir(cfg).resolve()]
    if not any(resolved.is_relative_to(r) for r in roots):
        raise ItemError(item_id, "image path outside the image root",
                        f"give an http(s) URL, a path under {base}, or upload the photo")
    return image


def parse_item(cfg: Config, record: Any, row: int = 0, trusted: bool = False) -> ItemInput:
    """Check one item in catalogue schema; ItemError (400) says what is wrong. Images are not read here."""
    cat = cfg.catalogue
    item_id = item_id_of(record, cfg)
    if not isinstance(record, Mapping):
        raise ItemError("", f"an item must be a JSON object, got {_kind(record)}")
    known = set(mapped_columns(cat))
    extra: dict[str, Any] = {}
    for name, value in record.items():
        if not isinstance(name, str):
            raise ItemError(item_id, f"field name {name!r} is not a string")
        if name in known:
            check_scalar(item_id, name, value)
        elif name == PRICE_FIELD:  # no price column mapped: still a price, stored under the same key
            extra[PRICE_FIELD] = check_price(item_id, value)
        elif value is not None and value != "":  # an empty cell of an unmapped CSV column is no field
            extra[name] = check_extra(item_id, name, value)
    parsed = parse_row(cat, record, row)
    if isinstance(parsed, Skipped):
        raise ItemError(parsed.id or item_id, parsed.reason, "fix the item and send it again")
    try:
        parse_item_id(parsed.id, "id")
    except BadInput as e:
        raise ItemError(parsed.id, e.message, e.detail) from e
    check_image(cfg, parsed.id, parsed.image, trusted)
    source = {k: v for k, v in record.items() if v is not None}
    return ItemInput(product=parsed, extra={k: v for k, v in extra.items() if v is not None}, source=source)


def embedded_columns(cfg: Config) -> set[str]:
    """Columns that feed an item's vectors or keywords: changing one needs the whole item again."""
    cat = cfg.catalogue
    cols = {cat.id, cat.title, cat.description, cat.image, *cat.text_fields, *cat.keyword_fields}
    return {c for c in cols if c}


def _number(item_id: str, name: str, value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ItemError(item_id, f"field {name!r} must be a number", f"got {_kind(value)}")
    try:
        number = float(value)
    except ValueError:
        raise ItemError(item_id, f"bad number in {name!r}: {str(value)[:40]!r}") from None
    if not math.isfinite(number):
        raise ItemError(item_id, f"bad number in {name!r}: {value!r}")
    return number


def parse_patch(cfg: Config, item_id: str, fields: Any) -> dict[str, Any]:
    """An attribute-only change as payload keys to set (None removes); ItemError for embedded or bad fields."""
    cat = cfg.catalogue
    if not isinstance(fields, Mapping) or not fields:
        raise ItemError(item_id, "a change must be a non-empty JSON object of fields")
    embedded = embedded_columns(cfg)
    mapped = {c for c in (*cat.attributes, cat.category, cat.brand, cat.split) if c}
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name in ("id", cat.id):
            if str(value).strip() != item_id:
                raise ItemError(item_id, "the id of an item cannot be changed", f"got {str(value)[:80]!r}")
        elif name in embedded:
            raise ItemError(item_id, f"field {name!r} feeds the item's vectors or keywords",
                            "send the whole item with POST /api/items (it is embedded again)")
        elif name in (cat.price, PRICE_FIELD):
            out[PRICE_FIELD] = check_price(item_id, value)
        elif name in cat.numeric:
            out[name] = _number(item_id, name, value)
        elif name in mapped:  # stored as text, as the catalogue reader does
            text = check_scalar(item_id, name, value)
            text = str(text).strip() or None if text is not None else None
            if name == cat.split:
                out["split"] = text.lower() if text else None
                continue
            out[name] = text
            if name == cat.category:
                out["category"] = text
            if name == cat.brand:
                out["brand"] = text
        else:
            out[name] = check_extra(item_id, name, value)
    if not out:
        raise ItemError(item_id, "the change names no field to set")
    return out


def save_upload(cfg: Config, data: bytes) -> str:
    """Keep an uploaded photo (checked to decode) as data_dir/uploads/<sha256>.<format>; returns its path."""
    from PIL import Image

    from vitrina.images import decode_image

    decode_image(data, cfg.indexer.max_image_pixels)  # ImageError (422) unless it is a whole image
    with Image.open(BytesIO(data)) as img:
        fmt = (img.format or "").lower()
    suffix = {"jpeg": "jpg"}.get(fmt, fmt) if fmt in ("jpeg", "png", "webp", "gif", "bmp") else "img"
    folder = upload_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()[:32]}.{suffix}"
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return str(path)
