"""Read what evaluation needs from disk: catalogue rows, queries, graded qrels, purchases."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encoders.train_data import split_of
from vitrina.config import Config
from vitrina.errors import CatalogueError

csv.field_size_limit(10_000_000)


@dataclass(frozen=True)
class Catalogue:
    """Catalogue rows keyed by external id (values as strings), in file order."""

    rows: dict[str, dict[str, str]]
    folder: Path  # where relative image paths resolve

    def image_path(self, item_id: str, column: str) -> Path | None:
        """Local image file of an item, or None when it has none or it is a URL."""
        raw = self.rows[item_id].get(column, "")
        if not raw or raw.startswith(("http://", "https://")):
            return None
        path = Path(raw)
        return path if path.is_absolute() else self.folder / path


def _str(value: Any) -> str:
    return "" if value is None else str(value).strip()


def row_split(row: dict[str, str], column: str, item_id: str) -> str:
    """A catalogue row's split as training reads it (`encoders.train_data.split_of`): its `column` where the row has
    one, else sha256 of the id; so evaluation never asks a photo the tower trained on."""
    return split_of(row.get(column, "") if column else "", item_id)


def load_catalogue(cfg: Config) -> Catalogue:
    """Every row of the configured catalogue with a non-empty id (the first of a repeated id wins)."""
    path = Path(cfg.catalogue.path)
    fmt = cfg.catalogue.format
    if fmt == "auto":
        fmt = "jsonl" if path.suffix.lower() in {".jsonl", ".json", ".ndjson"} else "csv"
    try:
        with path.open(encoding="utf-8", newline="") as f:
            if fmt == "jsonl":
                raw = [json.loads(line) for line in f if line.strip()]
            else:
                raw = list(csv.DictReader(f))
    except (OSError, ValueError) as e:
        raise CatalogueError(f"cannot read catalogue {path}", str(e)) from e
    rows: dict[str, dict[str, str]] = {}
    for row in raw:
        if not isinstance(row, dict):
            continue
        item_id = _str(row.get(cfg.catalogue.id))
        if item_id and item_id not in rows:
            rows[item_id] = {k: _str(v) for k, v in row.items() if k is not None}
    folder = Path(cfg.catalogue.image_base) if cfg.catalogue.image_base else path.parent
    return Catalogue(rows, folder)


def load_queries(path: Path) -> dict[str, str]:
    """query_id -> query text, in file order."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
            return {r["query_id"]: r["query"] for r in csv.DictReader(f) if r.get("query_id")}
    except (OSError, KeyError) as e:
        raise CatalogueError(f"cannot read queries {path}", "expected columns query_id, query") from e


def load_qrels(path: Path) -> dict[str, dict[str, float]]:
    """query_id -> {product_id: relevance}."""
    qrels: dict[str, dict[str, float]] = defaultdict(dict)
    try:
        with path.open(encoding="utf-8", newline="") as f:
            for r in csv.DictReader(f):
                qrels[r["query_id"]][r["product_id"].strip()] = float(r["relevance"])
    except (OSError, KeyError, ValueError) as e:
        raise CatalogueError(f"cannot read qrels {path}",
                             "expected columns query_id, product_id, relevance") from e
    return dict(qrels)


@dataclass(frozen=True)
class Purchase:
    day: str  # YYYY-MM-DD
    user: str
    item: str


def load_purchases(path: Path) -> list[Purchase]:
    """Purchases (t_dat, customer_id, article_id) in date order; identical repeated rows kept once."""
    seen: set[tuple[str, str, str]] = set()
    out: list[Purchase] = []
    try:
        with path.open(encoding="utf-8", newline="") as f:
            for r in csv.DictReader(f):
                key = (r["t_dat"].strip(), r["customer_id"].strip(), r["article_id"].strip())
                if key not in seen:
                    seen.add(key)
                    out.append(Purchase(*key))
    except (OSError, KeyError) as e:
        raise CatalogueError(f"cannot read transactions {path}",
                             "expected columns t_dat, customer_id, article_id") from e
    out.sort(key=lambda p: p.day)
    return out
