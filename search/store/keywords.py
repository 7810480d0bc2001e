"""BM25 sparse vectors for the `keywords` named vector, made by the engine's own tokenizer (qdrant_edge.Bm25).

Both store backends use these functions, so a document indexed by one and a query run on the other
tokenize, stem and hash words identically. A document vector holds BM25 term-frequency weights
(k, b, avg_len); a query vector holds 1.0 per distinct term. The IDF factor is not in either: the
collection's `keywords` vector has the IDF modifier, so the engine applies IDF at query time over
the collection's current statistics.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from vitrina.errors import StoreError

DEFAULT_AVG_LEN = 16.0  # typical product keyword document (title + a few attributes), in tokens
DEFAULT_K = 1.2
DEFAULT_B = 0.75


@dataclass(frozen=True)
class Sparse:
    """A sparse vector: strictly increasing term hashes (u32) and their weights."""

    indices: tuple[int, ...]
    values: tuple[float, ...]

    def __bool__(self) -> bool:
        return bool(self.indices)


_models: dict[float, object] = {}
_models_lock = threading.Lock()


def _model(avg_len: float) -> object:
    """One shared English BM25 model (stemming, stopwords, lowercase) per avg_len."""
    with _models_lock:
        model = _models.get(avg_len)
        if model is None:
            try:
                from qdrant_edge import Bm25, Bm25Config

                model = Bm25(Bm25Config(k=DEFAULT_K, b=DEFAULT_B, avg_len=avg_len, language="english"))
            except (ImportError, ValueError) as e:
                raise StoreError(f"cannot build the BM25 model (qdrant-edge-py, avg_len={avg_len})") from e
            _models[avg_len] = model
        return model


def _sparse(raw: object) -> Sparse:
    pairs = sorted(zip(raw.indices, raw.values))  # type: ignore[attr-defined]
    return Sparse(tuple(int(i) for i, _ in pairs), tuple(float(v) for _, v in pairs))


def document_vector(text: str, avg_len: float = DEFAULT_AVG_LEN) -> Sparse:
    """BM25 document weights of `text` (empty when it has no indexable word)."""
    return _sparse(_model(avg_len).embed_document(text or ""))  # type: ignore[attr-defined]


def query_vector(text: str) -> Sparse:
    """1.0 per distinct indexable term of `text` (empty when it has none, e.g. only stopwords)."""
    return _sparse(_model(DEFAULT_AVG_LEN).embed_query(text or ""))  # type: ignore[attr-defined]
