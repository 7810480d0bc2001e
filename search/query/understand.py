"""Query understanding: words of a query that name a value of a filterable attribute ('brown' -> baseColour=Brown),
and attribute values an image tower's label head reads from a query photo."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
MAX_PHRASE = 5  # longest attribute value matched, in words


def fold(word: str) -> str:
    """Lower case with a crude plural fold applied alike to queries and values ('watches' ~ 'watch')."""
    w = word.lower()
    if len(w) > 4 and w.endswith("es"):
        return w[:-2]
    if len(w) > 3 and w.endswith("s"):
        return w[:-1]
    return w


def surface_words(text: str) -> list[str]:
    """The words of a text, lower case, in order (letters and digits; punctuation splits)."""
    return [w.lower() for w in _WORD.findall(text)]


def words(text: str) -> tuple[str, ...]:
    return tuple(fold(w) for w in _WORD.findall(text))


class AttributeMatcher:
    """Finds attribute values named in a query, longest phrase first, each query word used once.

    Built from the values each filterable field holds (e.g. the store's facet counts). A phrase naming
    values in several fields (articleType 'Watches' and subCategory 'Watches') matches all of them.
    """

    def __init__(self, values: Mapping[str, Iterable[str]]) -> None:
        self.vocab: dict[tuple[str, ...], set[tuple[str, str]]] = defaultdict(set)
        for field, vals in values.items():
            for value in vals:
                key = words(str(value))
                if key and len(key) <= MAX_PHRASE:
                    self.vocab[key].add((field, str(value)))

    def __len__(self) -> int:
        return len(self.vocab)

    def match_at(self, tokens: Sequence[str], i: int) -> tuple[int, set[tuple[str, str]]]:
        """The longest value phrase starting at tokens[i]: (tokens it spans, its (field, value) pairs), or (0, set()).

        Words written apart that a value writes as one ('t shirts', 'hand bag', 'ear rings') match it too."""
        for n in range(min(MAX_PHRASE, len(tokens) - i), 0, -1):
            hits = self.vocab.get(tuple(tokens[i:i + n]))
            if not hits and 1 < n <= 3:
                hits = self.vocab.get(("".join(tokens[i:i + n]),))
            if hits:
                return n, hits
        return 0, set()

    def match(self, query: str) -> dict[str, set[str]]:
        """{field: values named in the query}; empty when the query names none."""
        tokens = words(query)
        found: dict[str, set[str]] = defaultdict(set)
        i = 0
        while i < len(tokens):
            n, hits = self.match_at(tokens, i)
            for field, value in hits:
                found[field].add(value)
            i += max(n, 1)
        return dict(found)


def match_share(payload: Mapping[str, Any], named: Mapping[str, set[str]]) -> float:
    """Share of the named fields whose payload value is one of the named values (0 when none named)."""
    if not named:
        return 0.0
    hits = 0
    for field, values in named.items():  # a plain loop: this runs for every candidate of every search
        if str(payload.get(field, "")) in values:
            hits += 1
    return hits / len(named)


def photo_boost(hits: Sequence[Any], explain: Sequence[dict[str, Any]], read: Mapping[str, tuple[str, float]],
                weight: float) -> tuple[list[Any], list[dict[str, Any]]]:
    """Photo queries: candidates (objects with a .payload) whose attributes agree with what the label head read
    from the photo ({field: (value, p)}) move up. Each gains weight x the relevance span of the list x the mean
    over the read fields of p where its value is the read one, so the boost means the same in every mode;
    explain gets "photo_attributes" (that mean) and the new "relevance". Stable on ties."""
    if not read or not hits or weight <= 0:
        return list(hits), list(explain)
    rel = [e["relevance"] for e in explain]
    scale = weight * ((max(rel) - min(rel)) or 1.0)
    for h, e in zip(hits, explain):
        share = sum(p for f, (v, p) in read.items() if str(h.payload.get(f, "")) == v) / len(read)
        e.update(photo_attributes=share, relevance=e["relevance"] + scale * share)
    order = sorted(range(len(hits)), key=lambda i: -explain[i]["relevance"])
    return [hits[i] for i in order], [explain[i] for i in order]
