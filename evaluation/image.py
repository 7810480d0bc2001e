"""Image-query section: product photos POSTed to the API, P@10 of same-type results, pixel and random baselines."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from evaluation.client import ApiClient, ApiError
from evaluation.data import Catalogue, row_split

log = logging.getLogger(__name__)

PIXELS = 16  # side of the raw-pixel baseline's thumbnails


def sample_queries(catalogue: Catalogue, split_column: str, split: str, image_column: str, n: int,
                   seed: int) -> list[str]:
    """Up to n ids of the given split (`evaluation.data.row_split`: sha256 of the id where there is no split
    column, as training splits it) with a local image."""
    ids = [i for i, row in catalogue.rows.items()
           if row_split(row, split_column, i) == split
           and (p := catalogue.image_path(i, image_column)) is not None and p.is_file()]
    rng = random.Random(seed)
    return sorted(rng.sample(ids, n)) if n < len(ids) else sorted(ids)


def match_key(row: dict[str, str], fields: Sequence[str]) -> tuple[str, ...]:
    return tuple(row.get(f, "") for f in fields)


def precision_of(results: Sequence[str], query: str, catalogue: Catalogue, fields: Sequence[str],
                 k: int = 10) -> float:
    """P@k of results (the query item itself left out) sharing every field in `fields` with the query."""
    want = match_key(catalogue.rows[query], fields)
    top = [r for r in results if r != query][:k]
    return sum(1 for r in top if r in catalogue.rows and match_key(catalogue.rows[r], fields) == want) / k


def thumbnail(path: Path) -> np.ndarray | None:
    """The image as a flat float32 vector of PIXELS x PIXELS RGB values in [0, 1]; None when unreadable."""
    try:
        with Image.open(path) as img:
            small = img.convert("RGB").resize((PIXELS, PIXELS), Image.Resampling.BOX)  # area average
    except (OSError, UnidentifiedImageError, ValueError) as e:
        log.warning("pixel baseline: skipping %s: %s", path, e)
        return None
    return np.asarray(small, dtype=np.float32).reshape(-1) / 255.0


def pixel_matrix(catalogue: Catalogue, image_column: str, cache: Path | None) -> tuple[list[str], np.ndarray]:
    """Thumbnails of every catalogue image (cached in `cache` as .npz, keyed by the id list)."""
    ids = [i for i in catalogue.rows if catalogue.image_path(i, image_column) is not None]
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as saved:
            if list(saved["ids"]) == ids:
                keep = saved["ok"]
                return [i for i, ok in zip(ids, keep) if ok], saved["pixels"]
    vecs, ok = [], []
    for i in ids:
        path = catalogue.image_path(i, image_column)
        v = thumbnail(path) if path is not None else None
        ok.append(v is not None)
        if v is not None:
            vecs.append(v)
    pixels = np.stack(vecs) if vecs else np.zeros((0, PIXELS * PIXELS * 3), np.float32)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, ids=np.array(ids), ok=np.array(ok), pixels=pixels)
    return [i for i, good in zip(ids, ok) if good], pixels


def pixel_neighbours(ids: Sequence[str], pixels: np.ndarray, queries: Sequence[str], k: int,
                     batch: int = 256) -> dict[str, list[str]]:
    """Nearest neighbours by Euclidean distance between raw thumbnails (numpy), query item left out."""
    index = {item: n for n, item in enumerate(ids)}
    rows = [index[q] for q in queries if q in index]
    norms = (pixels * pixels).sum(1)
    k = min(k, len(ids) - 1)
    out: dict[str, list[str]] = {}
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        dist = norms[None, :] - 2.0 * (pixels[chunk] @ pixels.T)  # + |q|^2, the same for every candidate
        dist[np.arange(len(chunk)), chunk] = np.inf
        top = np.argpartition(dist, k, axis=1)[:, :k]
        for r, q in enumerate(chunk):
            best = top[r][np.argsort(dist[r, top[r]], kind="stable")]
            out[ids[q]] = [ids[j] for j in best]
    return out


def run_image_report(client: ApiClient, catalogue: Catalogue, queries: Sequence[str], image_column: str,
                     fields: Sequence[str], modes: Sequence[str], seed: int,
                     cache: Path | None = None) -> dict[str, Any]:
    """P@10 (same `fields` as the query product) for photo queries in each mode and for the baselines."""
    rows: dict[str, dict[str, Any]] = {}
    for mode in modes:
        scores, failed, start = [], 0, time.perf_counter()
        for q in queries:
            path = catalogue.image_path(q, image_column)
            assert path is not None
            try:
                body = client.post("/api/search", data={"k": 11, "mode": mode},
                                   files={"image": (path.name, path.read_bytes())})
            except ApiError as e:
                if e.status >= 500:  # e.g. 503: no image tower; the mode cannot be measured
                    rows[mode] = {"kind": "vitrina", "error": e.message}
                    break
                failed += 1  # this photo was refused (4xx): skipped and counted
                continue
            scores.append(precision_of([str(r["id"]) for r in body.get("results", [])], q, catalogue, fields))
        else:
            rows[mode] = {"kind": "vitrina", "p@10": float(np.mean(scores)) if scores else 0.0,
                          "queries": len(scores), "failed": failed,
                          "ms_per_query": 1000 * (time.perf_counter() - start) / max(len(queries), 1)}
        if mode in rows and "p@10" in rows[mode]:
            log.info("image section: %s P@10 %.4f", mode, rows[mode]["p@10"])
    rng = random.Random(seed)
    everyone = list(catalogue.rows)
    rows["random"] = {"kind": "baseline", "p@10": float(np.mean([
        precision_of(rng.sample(everyone, min(11, len(everyone))), q, catalogue, fields) for q in queries
    ])) if queries else 0.0, "queries": len(queries)}
    start = time.perf_counter()
    ids, pixels = pixel_matrix(catalogue, image_column, cache)
    found = pixel_neighbours(ids, pixels, queries, 10)
    rows[f"pixels {PIXELS}x{PIXELS} NN"] = {
        "kind": "baseline", "queries": len(found), "seconds": time.perf_counter() - start,
        "p@10": float(np.mean([precision_of(found[q], q, catalogue, fields) for q in found])) if found else 0.0,
    }
    return {"queries": len(queries), "match": list(fields), "rows": rows}
