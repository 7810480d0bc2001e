"""Photo robustness: altered dev photos and another shop's photos POSTed to the API, P@10 of the right kind.

`run_robustness_report`: each dev photo under each alteration of evaluation.alterations (seeded), uploaded as
a JPEG, P@10 of results sharing the query product's match fields (the product itself left out).
`run_cross_report`: photos of another catalogue (e.g. H&M against the fashion index), relevant when the
result's type is one the type map gives for the photo's type (evaluation/hm_fashion_types.json).
"""

from __future__ import annotations

import io
import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from evaluation.alterations import ALTERATIONS, alter
from evaluation.data import row_split

log = logging.getLogger(__name__)

TYPE_MAP_FILE = Path(__file__).resolve().parent / "hm_fashion_types.json"


def _jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _search(client: Any, photo: bytes, mode: str, k: int) -> list[str]:
    body = client.post("/api/search", data={"k": k, "mode": mode}, files={"image": ("photo.jpg", photo)})
    return [str(r["id"]) for r in body.get("results", [])]


def _precision(results: Sequence[str], query: str, relevant: Any, k: int = 10) -> float:
    top = [r for r in results if r != query][:k]
    return sum(1 for r in top if relevant(r)) / k


def run_robustness_report(client: Any, catalogue: Any, queries: Sequence[str], image_column: str,
                          fields: Sequence[str], mode: str = "image", seed: int = 0,
                          alterations: Sequence[str] = tuple(ALTERATIONS)) -> dict[str, Any]:
    """P@10 of each alteration of each query photo (same `fields` as the query product counts)."""
    rows: dict[str, dict[str, Any]] = {}
    for name in alterations:
        scores, failed, start = [], 0, time.perf_counter()
        for q in queries:
            path = catalogue.image_path(q, image_column)
            try:
                with Image.open(path) as img:
                    photo = _jpeg_bytes(alter(img.convert("RGB"), name, seed, q))
            except (OSError, UnidentifiedImageError, ValueError) as e:
                log.warning("robustness: cannot alter %s: %s", path, e)
                failed += 1
                continue
            want = tuple(catalogue.rows[q].get(f, "") for f in fields)
            try:
                found = _search(client, photo, mode, 11)
            except Exception as e:  # noqa: BLE001 - an API error (4xx/5xx) counts as a failed query
                log.warning("robustness: %s photo of %s refused: %s", name, q, e)
                failed += 1
                continue
            scores.append(_precision(found, q, lambda r: r in catalogue.rows and tuple(
                catalogue.rows[r].get(f, "") for f in fields) == want))
        rows[name] = {"p@10": float(np.mean(scores)) if scores else 0.0, "queries": len(scores), "failed": failed,
                      "ms_per_query": 1000 * (time.perf_counter() - start) / max(len(queries), 1)}
        log.info("robustness: %s P@10 %.4f", name, rows[name]["p@10"])
    return {"mode": mode, "queries": len(queries), "match": list(fields), "seed": seed, "rows": rows,
            "suite": "evaluation/alterations.py"}


def load_type_map(path: Path = TYPE_MAP_FILE, reverse: bool = False) -> dict[str, set[str]]:
    """{query type: the index types that count as the same kind}; reverse=True swaps the two catalogues."""
    raw = json.loads(path.read_text(encoding="utf-8"))["map"]
    out: dict[str, set[str]] = {}
    for src, targets in raw.items():
        for t in targets:
            if reverse:
                out.setdefault(t, set()).add(src)
            else:
                out.setdefault(src, set()).update(targets)
    return out


def run_cross_report(client: Any, index_catalogue: Any, index_type_field: str, other: Any, other_image_column: str,
                     other_type_field: str, type_map: dict[str, set[str]], n: int, seed: int = 0,
                     mode: str = "image", other_split: tuple[str, str] | None = None) -> dict[str, Any]:
    """P@10 of photos from another catalogue: a result is relevant when its `index_type_field` value is one of
    type_map[the photo's `other_type_field` value]. Photos whose type the map lacks are not asked.
    other_split=(column, value) keeps only the other catalogue's rows of that split (e.g. its dev rows), read as
    training reads it (`evaluation.data.row_split`), so a tower that also trained on the other catalogue's train
    photos is not asked them."""
    ids = [i for i, row in other.rows.items()
           if row.get(other_type_field, "") in type_map
           and (other_split is None or row_split(row, other_split[0], i) == other_split[1])
           and (p := other.image_path(i, other_image_column)) is not None and p.is_file()]
    rng = random.Random(seed)
    queries = sorted(rng.sample(ids, n)) if n < len(ids) else sorted(ids)
    scores, failed, per_type = [], 0, {}
    for q in queries:
        kinds = type_map[other.rows[q][other_type_field]]
        try:
            found = _search(client, other.image_path(q, other_image_column).read_bytes(), mode, 10)
        except Exception as e:  # noqa: BLE001 - an API error counts as a failed query
            log.warning("cross-catalogue: %s refused: %s", q, e)
            failed += 1
            continue
        p = _precision(found, "", lambda r: index_catalogue.rows.get(r, {}).get(index_type_field) in kinds)
        scores.append(p)
        per_type.setdefault(other.rows[q][other_type_field], []).append(p)
    everyone = list(index_catalogue.rows)
    random_p = float(np.mean([_precision(rng.sample(everyone, 10), "", lambda r: index_catalogue.rows[r].get(
        index_type_field) in type_map[other.rows[q][other_type_field]]) for q in queries])) if queries else 0.0
    log.info("cross-catalogue: P@10 %.4f over %d photos (random %.4f)", np.mean(scores) if scores else 0, len(scores),
             random_p)
    return {"mode": mode, "queries": len(scores), "failed": failed, "p@10": float(np.mean(scores)) if scores else 0.0,
            "random_p@10": random_p, "asked": queries,
            "per_type": {t: {"queries": len(v), "p@10": float(np.mean(v))} for t, v in sorted(per_type.items())}}
