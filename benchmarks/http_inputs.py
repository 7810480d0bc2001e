"""What the HTTP benchmarks send: distinct shopper-like queries, catalogue titles and item ids, real product photos
and multipart bodies."""

from __future__ import annotations

import csv
import json
import random
import uuid
from pathlib import Path
from typing import Any, Sequence

from vitrina.config import Config
from vitrina.errors import BadInput

# Words added to the dev queries (and word orders swapped) to make thousands of distinct shopper-like queries.
EXTRA_WORDS = ("new", "latest", "casual", "cotton", "stylish", "online", "best", "buy", "cheap", "trendy",
               "comfortable", "branded", "original", "sale", "offer", "collection", "daily", "classic", "summer",
               "winter", "party", "office", "soft", "light", "premium", "smart", "regular", "slim", "printed", "plain")


def multipart(fields: dict[str, str], image: bytes, filename: str) -> tuple[bytes, str]:
    """A multipart/form-data body with text fields and one `image` file; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                 f"Content-Type: image/jpeg\r\n\r\n".encode() + image + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def read_queries(path: Path, limit: int) -> list[str]:
    """The `query` column of a queries CSV (query_id,query)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            queries = [row["query"].strip() for row in csv.DictReader(f) if (row.get("query") or "").strip()]
    except (OSError, KeyError) as e:
        raise BadInput(f"cannot read queries from {path}", str(e)) from e
    if not queries:
        raise BadInput(f"no queries in {path}")
    return queries[:limit] if limit > 0 else queries


def catalogue_rows(cfg: Config) -> list[dict[str, Any]]:
    """The catalogue file's rows as dicts (CSV or JSONL), unmapped."""
    path = Path(cfg.catalogue.path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            if path.suffix == ".jsonl" or cfg.catalogue.format == "jsonl":
                return [json.loads(line) for line in f if line.strip()]
            return list(csv.DictReader(f))
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read the catalogue {path}", str(e)) from e


def title_queries(cfg: Config, seed: int) -> list[str]:
    """Product titles of dev rows (else all rows), lower-cased, as extra shopper-like queries."""
    cat = cfg.catalogue
    rows = catalogue_rows(cfg)
    dev = [r for r in rows if cat.split and r.get(cat.split) == "dev"] or rows
    titles = [str(r.get(cat.title) or "").strip().lower() for r in dev]
    titles = [t for t in titles if t]
    random.Random(seed).shuffle(titles)
    return titles


def distinct_queries(base: Sequence[str], n: int, seed: int) -> list[str]:
    """`n` distinct queries: the base queries (shuffled), then variants of them with one or two extra words
    (EXTRA_WORDS) or two words swapped, so a server's query cache rarely sees one twice."""
    rng = random.Random(seed)
    out = list(dict.fromkeys(q.strip() for q in base if q.strip()))
    rng.shuffle(out)
    seen = set(out)
    words = [q.split() for q in out]
    tries = 0
    while len(out) < n and words and tries < 20 * n:
        tries += 1
        w = list(rng.choice(words))
        kind = rng.random()
        if kind < 0.15 and len(w) > 1:
            i = rng.randrange(len(w) - 1)
            w[i], w[i + 1] = w[i + 1], w[i]
        for _ in range(1 if kind < 0.7 else 2):
            w.insert(rng.randrange(len(w) + 1), rng.choice(EXTRA_WORDS))
        q = " ".join(w)
        if q not in seen:
            seen.add(q)
            out.append(q)
    return out[:n]


def catalogue_ids(cfg: Config, count: int, seed: int) -> list[str]:
    """Up to `count` item ids of the catalogue (dev rows first), for the floor endpoint."""
    cat = cfg.catalogue
    rows = catalogue_rows(cfg)
    dev = [r for r in rows if cat.split and r.get(cat.split) == "dev"]
    ids = [str(r.get(cat.id) or "") for r in (dev if len(dev) >= count else rows)]
    ids = [i for i in ids if i]
    random.Random(seed).shuffle(ids)
    return ids[:count]


def read_photos(cfg: Config, count: int, seed: int) -> list[tuple[str, bytes]]:
    """`count` real product photos of the catalogue (dev rows first), as (file name, bytes)."""
    cat = cfg.catalogue
    path = Path(cat.path)
    base = Path(cat.image_base) if cat.image_base else path.parent
    rows = [r for r in catalogue_rows(cfg)
            if str(r.get(cat.image) or "") and not str(r[cat.image]).startswith("http")]
    dev = [r for r in rows if cat.split and r.get(cat.split) == "dev"]
    pool = dev if len(dev) >= count else rows
    random.Random(seed).shuffle(pool)
    photos = []
    for row in pool:
        file = base / str(row[cat.image])
        if file.is_file():
            photos.append((file.name, file.read_bytes()))
        if len(photos) >= count:
            break
    if not photos:
        raise BadInput("no readable product photos in the catalogue", str(path))
    return photos
