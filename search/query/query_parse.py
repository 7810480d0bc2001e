"""Constraints a shopper types into the query: a price ("under 20", "between 10 and 30 EUR") and what they do not want
("not black", "without heels"); each is read out of the text, which keeps the rest."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from search.store.interface import PRICE_FIELD, Filters
from search.query.understand import AttributeMatcher, fold

MAX_PRICE = 1e12
_CUR = r"(?:\$|£|€|₹|rs\.?|inr|usd|eur|gbp)"
_UNIT = r"(?:\$|£|€|₹|rs\.?|inr|usd|eur|gbp|dollars?|euros?|pounds?|rupees?|bucks)"
_NUM = rf"(?:{_CUR}\s*)?(\d{{1,3}}(?:,\d{{3}})+|\d+)(?:\.(\d{{1,2}}))?\s*(k\b)?(?:\s*{_UNIT}\b)?(?![\w.,]\d|\w)"
_MAX = r"under|below|less\s+than|cheaper\s+than|at\s+most|no\s+more\s+than|max(?:imum)?|up\s*to|within|<=?"
_MIN = r"over|above|more\s+than|at\s+least|min(?:imum)?|starting\s+at|>=?"
_PRICE_WORD = r"(?:(?:priced?|costing|for|at)\s+)?"
_RANGE = re.compile(rf"\b{_PRICE_WORD}between\s+{_NUM}\s*(?:and|-|to)\s*{_NUM}", re.I)
_BOUND = re.compile(rf"(?<![\w-]){_PRICE_WORD}(?P<op>{_MAX}|{_MIN})\s*{_NUM}", re.I)
_NEGATION = re.compile(r"(?<![\w-])(?:but\s+)?(?:not|no|without|except|excluding|anything\s+but|non)(?:\s+|-)"
                       r"(?:(?:in|a|an|any|the)\s+)?", re.I)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass(frozen=True)
class Constraints:
    """What was read: the text left for search, a price range, excluded values, and the words read as each."""

    text: str
    price: tuple[float | None, float | None] | None = None
    exclude: dict[str, frozenset[str]] = field(default_factory=dict)
    notes: tuple[dict[str, Any], ...] = ()  # e.g. {"words": "not black", "exclude": {"baseColour": ["Black"]}}


def _amount(whole: str, cents: str | None, thousands: str | None) -> float | None:
    value = float(whole.replace(",", "") + ("." + cents if cents else "")) * (1000.0 if thousands else 1.0)
    return value if math.isfinite(value) and 0.0 <= value <= MAX_PRICE else None


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    """The text without the given character spans, spaces tidied."""
    out, at = [], 0
    for start, end in sorted(spans):
        out.append(text[at:start])
        at = max(at, end)
    out.append(text[at:])
    return " ".join("".join(out).split())


def parse_price(text: str) -> tuple[tuple[float | None, float | None] | None, list[tuple[int, int]], list[str]]:
    """(low, high) from the first price phrase(s) of the text, their spans and words; (None, [], []) when none.
    Bounds are inclusive; a reversed range is put right; a bound that is not a finite amount is ignored."""
    low: float | None = None
    high: float | None = None
    spans: list[tuple[int, int]] = []
    m = _RANGE.search(text)
    if m:
        a, b = _amount(*m.group(1, 2, 3)), _amount(*m.group(4, 5, 6))
        if a is not None and b is not None:
            low, high = min(a, b), max(a, b)
            spans.append(m.span())
    for m in _BOUND.finditer(text):
        if any(s <= m.start() < e for s, e in spans):
            continue
        value = _amount(*m.group(2, 3, 4))
        if value is None:
            continue
        if re.fullmatch(_MAX, m.group("op"), re.I):
            high = value if high is None else min(high, value)
        else:
            low = value if low is None else max(low, value)
        spans.append(m.span())
    if not spans:
        return None, [], []
    if low is not None and high is not None and low > high:
        low, high = high, low
    return (low, high), spans, [text[s:e].strip() for s, e in sorted(spans)]


def parse_negations(text: str, matcher: AttributeMatcher) -> tuple[dict[str, frozenset[str]], list[tuple[int, int]],
                                                                    list[tuple[str, dict[str, list[str]]]]]:
    """Values the shopper rules out: a negation word followed by a value phrase ('not black', 'without heels').
    A negation word followed by anything else ('no-show socks', 'not too big') is left alone."""
    exclude: dict[str, set[str]] = {}
    spans: list[tuple[int, int]] = []
    notes: list[tuple[str, dict[str, list[str]]]] = []
    for m in _NEGATION.finditer(text):
        after = list(_WORD.finditer(text, m.end()))
        if not after or after[0].start() != m.end():
            continue
        n, hits = matcher.match_at([fold(w.group()) for w in after[:8]], 0)
        if not n:
            continue
        end = after[n - 1].end()
        values: dict[str, list[str]] = {}
        for f, v in sorted(hits):
            exclude.setdefault(f, set()).add(v)
            values.setdefault(f, []).append(v)
        spans.append((m.start(), end))
        notes.append((text[m.start():end].strip(), values))
    return {f: frozenset(v) for f, v in exclude.items()}, spans, notes


def parse_constraints(text: str, matcher: AttributeMatcher, prices: bool) -> Constraints:
    """Price (only when the catalogue has prices) and negations read out of the text; the rest is kept. When every
    word is a constraint ('under 20'), the text stays as typed so search has something to look for."""
    notes: list[dict[str, Any]] = []
    price, spans, said = parse_price(text) if prices else (None, [], [])
    if price is not None:
        notes.append({"words": " ".join(said), "price": {"min": price[0], "max": price[1]}})
    exclude, neg_spans, neg_notes = parse_negations(text, matcher)
    notes += [{"words": words, "exclude": values} for words, values in neg_notes]
    left = _cut(text, spans + neg_spans)
    return Constraints(left if _WORD.search(left) else text, price, exclude, tuple(notes))


def with_price(filters: Filters, price: tuple[float | None, float | None]) -> Filters:
    """The request's filters with a read price range added (intersected with a price range given as parameters)."""
    low, high = price
    given = filters.ranges.get(PRICE_FIELD)
    if given is not None:
        low = given[0] if low is None else (low if given[0] is None else max(low, given[0]))
        high = given[1] if high is None else (high if given[1] is None else min(high, given[1]))
    return Filters(equals=filters.equals, ranges={**filters.ranges, PRICE_FIELD: (low, high)},
                   exclude_ids=filters.exclude_ids, only_ids=filters.only_ids)
