"""What query reading knows about one index build: per attribute value, a vector of its name and the centroid of its
items' text vectors, and the catalogue's word frequencies; built once per collection and kept on disk."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from search.store.interface import Store
from search.query.understand import fold, surface_words

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the saved layout changes: older files are rebuilt
Encode = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class FieldValues:
    """The values of one field, with (n, dim) L2-normalised name vectors and item-text centroids, and item counts."""

    values: tuple[str, ...]
    names: np.ndarray
    centroids: np.ndarray
    counts: np.ndarray

    def similarities(self, vector: np.ndarray, name_mix: float) -> np.ndarray:
        """Cosine of a query vector to each value: name_mix x (to its name) + (1 - name_mix) x (to its items)."""
        out = self.centroids @ vector
        if name_mix > 0:
            out = (1.0 - name_mix) * out + name_mix * (self.names @ vector)
        return out


@dataclass(frozen=True)
class ValueIndex:
    """Value vectors of the read fields and the word statistics of the items (document frequency, folded words)."""

    collection: str
    fields: dict[str, FieldValues]
    word_df: dict[str, int]  # lower-case word -> items whose keyword text holds it
    items: int
    text_fields: tuple[str, ...] = ()  # the payload fields the words were read from

    def __post_init__(self) -> None:
        folded: dict[str, int] = defaultdict(int)
        for w, n in self.word_df.items():
            folded[fold(w)] += n
        object.__setattr__(self, "_folded", dict(folded))

    def idf(self, word: str) -> float:
        """BM25-style IDF of a word (plural-folded); a word no item holds gets the rarest word's IDF."""
        df = min(self._folded.get(fold(word), 0), self.items)  # type: ignore[attr-defined]
        return math.log(1.0 + (self.items - df + 0.5) / (df + 0.5))


def item_words(payload: Mapping[str, object], text_fields: Iterable[str]) -> set[str]:
    """The lower-case words of an item's keyword text (its title and keyword fields)."""
    return text_words(payload.get(f) for f in text_fields)


def text_words(values: Iterable[object]) -> set[str]:
    """The lower-case words of some field values (empty and missing ones left out)."""
    out: set[str] = set()
    for value in values:
        if value:
            out.update(surface_words(str(value)))
    return out


def build_value_index(store: Store, alias: str, collection: str, fields: Sequence[str], text_fields: Sequence[str],
                      encode: Encode, split_field: str = "", held_out: str = "test") -> ValueIndex:
    """Scroll the collection once: centroids of the items' text vectors per value of each field, word document
    frequencies of the keyword text, then the value names encoded in one batch. Items whose `split_field` is
    `held_out` are left out, so nothing read from them shapes the reading."""
    t0 = time.perf_counter()
    sums: dict[str, dict[str, np.ndarray]] = {f: {} for f in fields}
    counts: dict[str, Counter[str]] = {f: Counter() for f in fields}
    df: Counter[str] = Counter()
    items = 0
    for hit in store.scroll(alias, batch=2000, with_vectors=("text",)):
        p = hit.payload
        if split_field and str(p.get(split_field, "")) == held_out:
            continue
        items += 1
        df.update(item_words(p, text_fields))
        vec = hit.vectors.get("text")
        if vec is None:
            continue
        for f in fields:
            value = p.get(f)
            if value is None or value == "":
                continue
            value = str(value)
            acc = sums[f].get(value)
            sums[f][value] = np.asarray(vec, dtype=np.float64) if acc is None else acc + vec
            counts[f][value] += 1
    out: dict[str, FieldValues] = {}
    for f in fields:
        values = tuple(sorted(sums[f]))
        if not values:
            continue
        cent = np.stack([sums[f][v] for v in values]).astype(np.float32)
        cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
        names = np.asarray(encode(list(values)), dtype=np.float32)
        out[f] = FieldValues(values, names, cent, np.array([counts[f][v] for v in values], dtype=np.int64))
    log.info("value index of %s: %d items, %s values, %d words in %.1fs", collection, items,
             {f: len(v.values) for f, v in out.items()}, len(df), time.perf_counter() - t0)
    return ValueIndex(collection, out, dict(df), items, tuple(text_fields))


def _file(path: Path, ext: str) -> Path:
    return path.parent / f"{path.name}{ext}"  # collection names may hold dots: never with_suffix


def save_value_index(index: ValueIndex, path: Path) -> None:
    """<path>.npz (vectors) and <path>.json (values, words); written to temporary names, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, object] = {"format": FORMAT, "collection": index.collection, "items": index.items,
                               "text_fields": list(index.text_fields), "word_df": index.word_df, "fields": {}}
    for f, fv in index.fields.items():
        meta["fields"][f] = list(fv.values)  # type: ignore[index]
        arrays[f"{f}.names"], arrays[f"{f}.centroids"], arrays[f"{f}.counts"] = fv.names, fv.centroids, fv.counts
    own = f".{os.getpid()}.tmp"  # several serving processes may save the same index at once
    tmp, tmp_json = _file(path, own + ".npz"), _file(path, own + ".json")
    np.savez(tmp, **arrays)
    tmp_json.write_text(json.dumps(meta), encoding="utf-8")
    tmp.replace(_file(path, ".npz"))
    tmp_json.replace(_file(path, ".json"))


def load_value_index(path: Path, collection: str, fields: Sequence[str], text_fields: Sequence[str] = ()
                     ) -> ValueIndex | None:
    """The saved index of `collection` with every field asked for, its words read from `text_fields`, or None
    (missing, stale or unreadable)."""
    try:
        meta = json.loads(_file(path, ".json").read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("collection") != collection or \
                not set(fields) <= set(meta["fields"]) or meta.get("text_fields") != list(text_fields):
            return None
        with np.load(_file(path, ".npz")) as z:
            out = {f: FieldValues(tuple(vals), z[f"{f}.names"], z[f"{f}.centroids"], z[f"{f}.counts"])
                   for f, vals in meta["fields"].items()}
        return ValueIndex(collection, out, {str(k): int(v) for k, v in meta["word_df"].items()}, int(meta["items"]),
                          tuple(text_fields))
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.info("value index at %s not usable (%s): rebuilding", path, e)
        return None


def value_index_for(store: Store, alias: str, collection: str, fields: Sequence[str], text_fields: Sequence[str],
                    encode: Encode, folder: Path, split_field: str = "") -> ValueIndex:
    """The saved value index of the collection, or a new one built and saved (once per index build)."""
    path = folder / f"{collection}.values"
    found = load_value_index(path, collection, fields, text_fields)
    if found is not None:
        return found
    index = build_value_index(store, alias, collection, fields, text_fields, encode, split_field)
    try:
        save_value_index(index, path)
    except OSError as e:  # a read-only data folder: keep it in memory
        log.warning("cannot save the value index at %s: %s", path, e)
    return index
