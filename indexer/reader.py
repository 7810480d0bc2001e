"""Read a CSV or JSONL catalogue through the [catalogue] column mapping into Products; bad rows become Skipped."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from vitrina.config import CatalogueConfig, Config
from vitrina.errors import CatalogueError

_URL = re.compile(r"^https?://", re.IGNORECASE)
_WORD = re.compile(r"\w+", re.UNICODE)
DESCRIPTION_SEPARATOR = " — "


@dataclass(frozen=True)
class Product:
    """One catalogue row, mapped to vitrina's fields. `id` is exactly the string in the file."""

    id: str
    title: str
    description: str
    category: str
    brand: str
    price: float | None
    image: str  # as in the file: a path relative to image_base (or absolute), or an http(s) URL; "" = none
    split: str  # train | dev | test | "" (no split column)
    attributes: dict[str, str | float] = field(default_factory=dict)  # configured columns; numeric ones as float
    text: str = ""  # what the text encoder sees (text_fields; the description after " — ")
    keywords: str = ""  # the BM25 keyword document (keyword_fields joined by spaces)
    row: int = 0  # 1-based data row in the file (for reports), 0 when not from a file

    def payload(self) -> dict[str, Any]:
        """The store payload: title, image, split, description/category/brand/price when present, attributes."""
        out: dict[str, Any] = {"title": self.title}
        for key in ("description", "category", "brand", "image", "split"):
            value = getattr(self, key)
            if value:
                out[key] = value
        if self.price is not None:
            out["price"] = self.price
        for key, value in self.attributes.items():
            out.setdefault(key, value)
        return out


@dataclass(frozen=True)
class Skipped:
    """A row that was not indexed, and why. `row` is the 1-based data row (CSV record or JSONL line)."""

    id: str
    reason: str
    row: int = 0


def _clean(value: Any) -> str:
    """A cell as a stripped string; None (missing) and JSON null are ''."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def compose_text(row: Mapping[str, Any], fields: Iterable[str], long_fields: Iterable[str]) -> str:
    """Short fields joined by ', ' (a value whose words are all already there is left out), then the long
    fields (the description) after ' — ': 'Nike Men Blue T20 Indian Cricket Jersey, Tshirts, Topwear — ...'."""
    long_set = set(long_fields)
    short: list[str] = []
    seen: set[str] = set()
    tail: list[str] = []
    for name in fields:
        value = _clean(row.get(name))
        if not value:
            continue
        if name in long_set:
            tail.append(value)
            continue
        words = {w.lower() for w in _WORD.findall(value)}
        if short and words and words <= seen:
            continue
        short.append(value)
        seen |= words
    text = ", ".join(short)
    if tail:
        text = DESCRIPTION_SEPARATOR.join([text, *tail]) if text else DESCRIPTION_SEPARATOR.join(tail)
    return text


def mapped_columns(cat: CatalogueConfig) -> list[str]:
    """Every column the mapping names (the ones a CSV header must have)."""
    cols = [cat.id, cat.title, cat.description, cat.category, cat.brand, cat.price, cat.image, cat.split,
            *cat.attributes, *cat.text_fields, *cat.keyword_fields]
    return list(dict.fromkeys(c for c in cols if c))


def parse_row(cat: CatalogueConfig, row: Mapping[str, Any], rownum: int = 0) -> Product | Skipped:
    """Map one raw record (CSV dict or JSON object) to a Product, or say why it is skipped. Never raises."""
    try:
        raw_id = row.get(cat.id)
        if isinstance(raw_id, bool) or isinstance(raw_id, (dict, list)):
            return Skipped(str(raw_id), "bad id (not a string or number)", rownum)
        item_id = _clean(raw_id)
        if not item_id:
            return Skipped("", "missing id", rownum)
        title = _clean(row.get(cat.title))
        if not title:
            return Skipped(item_id, "empty title", rownum)
        price: float | None = None
        if cat.price:
            text = _clean(row.get(cat.price))
            if text:
                try:
                    price = _number(text)
                except ValueError:
                    return Skipped(item_id, f"bad price {text[:40]!r}", rownum)
                if price < 0:
                    return Skipped(item_id, f"negative price {text[:40]!r}", rownum)
        image = ""
        if cat.image:
            image = _clean(row.get(cat.image))
            if not image:
                return Skipped(item_id, "missing image", rownum)
        numeric = set(cat.numeric)
        attributes: dict[str, str | float] = {}
        for name in cat.attributes:
            text = _clean(row.get(name))
            if not text:
                continue
            if name in numeric:
                try:
                    attributes[name] = _number(text)
                except ValueError:
                    return Skipped(item_id, f"bad number in {name!r}: {text[:40]!r}", rownum)
            else:
                attributes[name] = text
        long_fields = [cat.description] if cat.description else []
        return Product(
            id=item_id, title=title,
            description=_clean(row.get(cat.description)) if cat.description else "",
            category=_clean(row.get(cat.category)) if cat.category else "",
            brand=_clean(row.get(cat.brand)) if cat.brand else "",
            price=price, image=image,
            split=_clean(row.get(cat.split)).lower() if cat.split else "",
            attributes=attributes,
            text=compose_text(row, cat.text_fields or (cat.title,), long_fields) or title,
            keywords=" ".join(v for v in (_clean(row.get(f)) for f in cat.keyword_fields) if v) or title,
            row=rownum,
        )
    except Exception as e:  # a row must never abort the catalogue
        return Skipped(_clean(row.get(cat.id)) if isinstance(row, Mapping) else "", f"unreadable row: {e}", rownum)


def catalogue_format(cat: CatalogueConfig, path: Path | None = None) -> str:
    """csv or jsonl: [catalogue].format, or by the file's extension when it is 'auto'."""
    fmt = cat.format.lower()
    if fmt in ("csv", "jsonl"):
        return fmt
    if fmt not in ("auto", ""):
        raise CatalogueError(f"[catalogue].format must be csv, jsonl or auto, got {cat.format!r}")
    suffix = (path or Path(cat.path)).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv", ".txt"):
        return "csv"
    raise CatalogueError(f"cannot tell the format of {path or cat.path}: set [catalogue].format to csv or jsonl")


def _csv_records(path: Path, cat: CatalogueConfig, required: list[str]) -> Iterator[tuple[int, Mapping[str, Any]]]:
    try:
        f = path.open(newline="", encoding="utf-8-sig")
    except OSError as e:
        raise CatalogueError(f"cannot read the catalogue {path}: {e.strerror or e}") from e
    try:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        reader = csv.DictReader(f, delimiter=delimiter)
        try:
            header = reader.fieldnames
        except (csv.Error, UnicodeDecodeError) as e:
            raise CatalogueError(f"{path}: not a readable CSV file: {e}") from e
        if not header:
            raise CatalogueError(f"{path}: the catalogue is empty (no header row)")
        missing = [c for c in required if c not in header]
        if missing:
            raise CatalogueError(f"{path}: column(s) {missing} named in [catalogue] are not in the file",
                                 f"the file has: {', '.join(header)}")
    except BaseException:
        f.close()
        raise

    def rows() -> Iterator[tuple[int, Mapping[str, Any]]]:
        with f:
            n = 0
            while True:
                n += 1
                try:
                    record = next(reader)
                except StopIteration:
                    return
                except (csv.Error, UnicodeDecodeError) as e:
                    yield n, {"__error__": f"unreadable CSV record: {e}"}
                    continue
                yield n, record

    return rows()


def _jsonl_records(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    try:
        f = path.open("rb")
    except OSError as e:
        raise CatalogueError(f"cannot read the catalogue {path}: {e.strerror or e}") from e

    def rows() -> Iterator[tuple[int, Mapping[str, Any]]]:
        with f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except (ValueError, UnicodeDecodeError) as e:
                    yield n, {"__error__": f"not valid JSON: {e}"}
                    continue
                if not isinstance(record, dict):
                    yield n, {"__error__": "not a JSON object"}
                    continue
                yield n, record

    return rows()


def read_records(cfg: Config, path: str | Path | None = None, every_column: bool = True
                 ) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """The raw records of a CSV or JSONL file in catalogue schema with their 1-based row numbers; a record that
    cannot be read is {"__error__": why}. `path` overrides [catalogue].path (e.g. a file for `vitrina upsert`).

    Raises CatalogueError at once when the file cannot be opened, its format is unknown, or a CSV header lacks
    a mapped column (with every_column=False: the id or title column; a missing one then reads as empty)."""
    cat = cfg.catalogue
    file = Path(path) if path is not None else Path(cat.path)
    if not str(file) or str(file) == ".":
        raise CatalogueError("no catalogue file: set [catalogue].path")
    if not file.is_file():
        raise CatalogueError(f"catalogue file not found: {file}")
    fmt = catalogue_format(cat if path is None else dataclasses.replace(cat, format="auto"), file)
    required = mapped_columns(cat) if every_column else [c for c in (cat.id, cat.title) if c]
    return _csv_records(file, cat, required) if fmt == "csv" else _jsonl_records(file)


def read_catalogue(cfg: Config, path: str | Path | None = None) -> Iterator[Product | Skipped]:
    """Every row of the catalogue in file order: a Product, or a Skipped(id, reason, row) for a bad row
    (missing or duplicate id, empty title, bad price or number, no image value, unparsable record).

    Raises CatalogueError at once (before yielding) when the file cannot be opened, its format is unknown,
    or a CSV header lacks a mapped column. JSONL records have no header: a missing key reads as empty.
    `path` overrides [catalogue].path (used for upsert files in catalogue schema).
    """
    return _products(cfg.catalogue, read_records(cfg, path))


def _products(cat: CatalogueConfig, records: Iterator[tuple[int, Mapping[str, Any]]]
              ) -> Iterator[Product | Skipped]:
    seen: set[str] = set()
    for n, record in records:
        if "__error__" in record:
            yield Skipped("", str(record["__error__"]), n)
            continue
        item = parse_row(cat, record, n)
        if isinstance(item, Product):
            if item.id in seen:
                yield Skipped(item.id, "duplicate id", n)
                continue
            seen.add(item.id)
        yield item


def image_source(cfg: Config, product: Product | str) -> str:
    """Where the product's picture is: a URL unchanged, an absolute path, or a local path resolved against
    [catalogue].image_base (default: the catalogue file's folder). '' when the product has no image."""
    image = product.image if isinstance(product, Product) else str(product)
    if not image:
        return ""
    if _URL.match(image):
        return image
    path = Path(image)
    if path.is_absolute():
        return str(path)
    return str(image_base(cfg) / path)


def image_base(cfg: Config) -> Path:
    """The folder relative image paths resolve against."""
    cat = cfg.catalogue
    return Path(cat.image_base) if cat.image_base else Path(cat.path).parent
