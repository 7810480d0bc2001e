"""Reading a text query: typos fixed from the catalogue's words, price and negations taken out, attribute values named
word for word, and the values the text encoder finds nearest to the query, each with a confidence."""

from __future__ import annotations

import dataclasses
import functools
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from search.query.fusion_weights import FusionParams, FusionWeights, QuerySignals, fusion_weights
from search.query.query_parse import Constraints, parse_constraints
from search.query.spelling import Speller
from search.query.understand import AttributeMatcher, fold, surface_words
from search.query.value_index import ValueIndex, text_words
from vitrina.config import Config
from vitrina.errors import ConfigError

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# English function words (and pronouns, whose gender the vectors read better than keywords do): they carry no
# product meaning, so they neither need a keyword match nor get spelling-corrected
STOPWORDS = frozenset("""a an the for to of in on at by with from as and or but so if into onto my me i we our you your
their them they he she him her his hers it its this that these those some any something anything thing things stuff
what which who whom whose where when how why is are was were be been being am do does did have has had can could
would should will shall may might must just very too also only own same other such than then there here all both each
few more most no nor not please want need looking look find buy get got new good nice one ones""".split())


@dataclass(frozen=True)
class ReaderSettings:
    """How readings are made and weighed ([understand] in config.toml)."""

    fields: tuple[str, ...]  # fields read by similarity (e.g. the category)
    temperature: float = 0.06  # softmax temperature over a field's value similarities
    threshold: float = 0.5  # similarity of the "none of these" alternative: a reading must beat it to count
    name_mix: float = 0.0  # share of the value-name vector in a value's similarity (the rest: its items' centroid)
    min_confidence: float = 0.05  # values read less surely than this are dropped
    exact_weights: Mapping[str, float] = field(default_factory=dict)  # field -> weight of an exact word (default 1)
    similar_weight: float = 1.0  # weight of a similarity reading at confidence 1
    neighbours: float = 0.5  # share of a similarity reading taken from the values of the query's nearest items
    neighbour_k: int = 10  # ... the top this many of the dense list
    spelling: bool = True
    prices: bool = False  # the catalogue has a price field: price phrases become a range filter
    cache: int = 4096  # readings kept per query text (LRU)


@dataclass(frozen=True)
class Reading:
    """What a query was read as. `text` is what keyword and vector search use."""

    query: str
    text: str
    words: tuple[str, ...]  # the content words of `text` (lower case, function words left out)
    exact: dict[str, frozenset[str]]  # field -> values named word for word
    similar: dict[str, dict[str, float]]  # field -> {value: confidence} from the encoder
    exclude: dict[str, frozenset[str]] = field(default_factory=dict)
    price: tuple[float | None, float | None] | None = None
    corrections: dict[str, str] = field(default_factory=dict)
    notes: tuple[dict[str, Any], ...] = ()  # spelling, price, exclusions and exact words, as explain shows them
    exact_weights: Mapping[str, float] = field(default_factory=dict)
    similar_weight: float = 1.0
    open_fields: tuple[str, ...] = ()  # fields read by similarity (not named word for word)
    similar_words: str = ""  # the content words no exact value explains: what the similarity reading stands for
    # the text encoder's vector of `text` when the similarity reading needed it: the search uses it rather than
    # encoding the same text again (which it would with the query cache off)
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def exact_share(self) -> float:
        """Share of the content words named word for word as attribute values (1 for 'men brown watches')."""
        if not self.words:
            return 0.0
        named = {w for n in self.notes if n.get("how") == "exact" for w in n["words"].split()}
        return sum(1 for w in self.words if w in named) / len(self.words)

    @property
    def confidence(self) -> float:
        """The surest similarity reading (0 when there is none)."""
        return max((max(v.values()) for v in self.similar.values() if v), default=0.0)

    def named(self) -> dict[str, set[str]]:
        """{field: values} read word for word (what the personal candidate list filters on)."""
        return {f: set(v) for f, v in self.exact.items()}

    @functools.cached_property
    def _share_tables(self) -> tuple[tuple[str, dict[str, float]], ...]:
        """(field, {value: what an item with it adds}) per read field, exact fields first: share's lookups."""
        exact = tuple((f, dict.fromkeys(values, self.exact_weights.get(f, 1.0))) for f, values in self.exact.items())
        return exact + tuple((f, {v: self.similar_weight * p for v, p in conf.items()})
                             for f, conf in self.similar.items())

    def share(self, payload: Mapping[str, Any]) -> float:
        """How well an item's attributes agree with the reading, 0..1: each read field adds its weight (exact) or
        the confidence of the item's value (similar), over the number of fields read."""
        tables = self._share_tables
        if not tables:
            return 0.0
        total = 0.0
        for f, table in tables:  # one lookup a field: this runs for every candidate of every search
            value = payload.get(f, "")
            total += table.get(value if type(value) is str else str(value), 0.0)
        return total / len(tables)

    def excluded(self, payload: Mapping[str, Any]) -> bool:
        for f, values in self.exclude.items():
            if str(payload.get(f, "")) in values:
                return True
        return False

    def with_neighbours(self, hits: Sequence[Any], share: float, k: int) -> Reading:
        """The similarity readings mixed with what the query's nearest items are: (1 - share) x the encoder's
        confidence + share x the part of the top k hits (objects with a .payload) holding the value."""
        top = hits[:k]
        if share <= 0 or not top or not self.open_fields:
            return self
        similar = dict(self.similar)
        for f in self.open_fields:
            counts: dict[str, int] = {}
            for h in top:
                v = h.payload.get(f)
                if v is not None and v != "":
                    counts[str(v)] = counts.get(str(v), 0) + 1
            enc = self.similar.get(f, {})
            mixed = {v: (1.0 - share) * enc.get(v, 0.0) + share * counts.get(v, 0) / len(top)
                     for v in set(enc) | set(counts)}
            similar[f] = dict(sorted(mixed.items(), key=lambda kv: (-kv[1], kv[0])))  # ties by name: no set order
        return dataclasses.replace(self, similar=similar)

    def explain(self, shown: float = 0.05, most: int = 5) -> dict[str, Any]:
        """The reading as the API shows it (response key "understood"): one entry per reading, the similarity
        ones with their values at least `shown` sure (at most `most`, surest first)."""
        notes = list(self.notes)
        for f, conf in self.similar.items():
            values = [v for v, p in conf.items() if p >= shown][:most]
            if values:
                notes.append({"words": self.similar_words, "how": "similar", "values": {f: values},
                              "confidence": round(conf[values[0]], 4)})
        out: dict[str, Any] = {"text": self.text, "readings": notes}
        if self.corrections:
            out["corrected"] = dict(self.corrections)
        return out


def similar_values(vector: np.ndarray, values: Any, s: ReaderSettings) -> dict[str, float]:
    """{value: confidence}: a softmax over the field's values and a "none of these" alternative at the threshold
    similarity, values below min_confidence dropped. A query near no value, or near many alike, reads as little."""
    sims = values.similarities(vector, s.name_mix)
    top = float(max(sims.max(), s.threshold))
    z = np.exp((sims - top) / s.temperature)
    p = z / (z.sum() + np.exp((s.threshold - top) / s.temperature))
    keep = np.flatnonzero(p >= s.min_confidence)
    return {values.values[i]: float(p[i]) for i in keep[np.argsort(-p[keep])]}


class QueryReader:
    """Reads queries against one index build (its value index, attribute words and catalogue words); readings are
    cached per query text."""

    def __init__(self, values: ValueIndex, matcher: AttributeMatcher, settings: ReaderSettings,
                 known_words: Callable[[str], bool] | None = None) -> None:
        self.values = values
        self.matcher = matcher
        self.settings = settings
        self.speller = Speller(values.word_df, known=known_words) if settings.spelling else None
        self._cache: OrderedDict[str, Reading] = OrderedDict()
        self._lock = threading.Lock()

    def parse(self, query: str) -> tuple[Constraints, dict[str, str]]:
        """Typos fixed (words neither the catalogue nor the encoder knows), then price and negations read out."""
        corrections: dict[str, str] = {}
        text = query
        if self.speller is not None:
            corrections = self.speller.correct_all(dict.fromkeys(surface_words(query)))
            if corrections:  # words replaced in place: the rest (prices, punctuation) stays as typed
                text = _WORD.sub(lambda m: corrections.get(m.group().lower(), m.group()), query)
        return parse_constraints(text, self.matcher, self.settings.prices), corrections

    def read(self, query: str, encode: Callable[[str], np.ndarray]) -> Reading:
        """The reading of a query; `encode(text)` gives the vector of the text search will use (cached by the caller)."""
        with self._lock:
            hit = self._cache.get(query)
            if hit is not None:
                self._cache.move_to_end(query)
                return hit
        reading = self._read(query, encode)
        if self.settings.cache > 0:
            with self._lock:
                self._cache[query] = reading
                while len(self._cache) > self.settings.cache:
                    self._cache.popitem(last=False)
        return reading

    def _read(self, query: str, encode: Callable[[str], np.ndarray]) -> Reading:
        s = self.settings
        cons, corrections = self.parse(query)
        notes: list[dict[str, Any]] = [{"words": w, "how": "spelling", "read_as": c} for w, c in corrections.items()]
        notes += [{**n, "how": "price" if "price" in n else "exclude"} for n in cons.notes]
        tokens = surface_words(cons.text)
        folded = [fold(t) for t in tokens]
        exact: dict[str, set[str]] = {}
        i = 0
        while i < len(folded):
            n, hits = self.matcher.match_at(folded, i)
            if n:
                fields: dict[str, list[str]] = {}
                for f, v in sorted(hits):
                    exact.setdefault(f, set()).add(v)
                    fields.setdefault(f, []).append(v)
                notes.append({"words": " ".join(tokens[i:i + n]), "how": "exact", "values": fields,
                              "confidence": 1.0})
            i += max(n, 1)
        content = tuple(w for w in tokens if w not in STOPWORDS)
        similar: dict[str, dict[str, float]] = {}
        vector = None
        unexplained = [w for w in content if not any(w in n["words"].split() for n in notes if n["how"] == "exact")]
        wanted = tuple(f for f in s.fields if f not in exact and f in self.values.fields) if unexplained else ()
        if wanted:
            vector = encode(cons.text)
            for f in wanted:
                read = similar_values(vector, self.values.fields[f], s)
                if read:
                    similar[f] = read
        return Reading(query, cons.text, content, {f: frozenset(v) for f, v in exact.items()}, similar,
                       cons.exclude, cons.price, corrections, tuple(notes), s.exact_weights, s.similar_weight,
                       wanted, " ".join(unexplained), vector)


def keyword_coverage(reading: Reading, hits: Sequence[Any], fields: Sequence[str], values: ValueIndex,
                     top: int = 3) -> float:
    """Share of the query's IDF mass the best of the top keyword hits holds (0..1; 1 when the query has no content
    word). A hit that shares only a common word with the query ('men' of 'scent for men') covers little."""
    if not reading.words:
        return 1.0
    idf = {w: values.idf(w) for w in reading.words}
    total = sum(idf.values())
    if total <= 0:
        return 1.0
    best = 0.0
    for h in hits[:top]:
        have = folded_item_words(h.payload, fields)
        best = max(best, sum(v for w, v in idf.items() if fold(w) in have) / total)
    return best


def folded_item_words(payload: Mapping[str, Any], fields: Sequence[str]) -> frozenset[str]:
    """The plural-folded words of an item's keyword text, remembered by that text: the top keyword hits of many
    queries are the same few thousand items, and folding their words anew cost ~10 us an item."""
    texts = tuple(payload.get(f) for f in fields)
    try:
        return _folded_words(texts)
    except TypeError:  # a value that cannot be a key (a list): read it every time
        return _folded_words.__wrapped__(texts)


@functools.lru_cache(maxsize=4096)
def _folded_words(texts: tuple[Any, ...]) -> frozenset[str]:
    return frozenset(fold(w) for w in text_words(texts))


def keyword_text_fields(cfg: Config) -> tuple[str, ...]:
    """The payload keys an item's keyword text is made of, title first: the indexer stores the title, description,
    category and brand columns under those names, and attribute columns under their own."""
    cat = cfg.catalogue
    stored = {cat.title: "title", cat.description: "description", cat.category: "category", cat.brand: "brand"}
    fields = [f if f in cat.attributes else stored.get(f, f) for f in cat.keyword_fields if f]
    return tuple(dict.fromkeys(["title", *fields]))


def reader_settings(cfg: Config) -> ReaderSettings:
    """[understand] (and the catalogue's category and price) as reader settings."""
    u, cat = cfg.understand, cfg.catalogue
    weights = {}
    for item in u.exact_weights:
        name, sep, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError as e:
            raise ConfigError(f"[understand].exact_weights: {item!r} is not field=weight") from e
        if not sep:
            raise ConfigError(f"[understand].exact_weights: {item!r} is not field=weight")
    if u.neighbours_using not in ("fused", "text"):  # read by the engine, checked once here with the rest
        raise ConfigError(f"[understand].neighbours_using must be fused or text, got {u.neighbours_using!r}")
    fields = u.fields or ((cat.category,) if cat.category else ())
    return ReaderSettings(fields=tuple(fields), temperature=u.temperature, threshold=u.threshold,
                          name_mix=u.name_mix, min_confidence=u.min_confidence, exact_weights=weights,
                          similar_weight=u.similar_weight, neighbours=u.neighbours, neighbour_k=u.neighbour_k,
                          spelling=u.spelling, prices=bool(cat.price), cache=u.cache)


def open_reader(cfg: Config, store: Any, alias: str, collection: str, matcher: AttributeMatcher,
                encoder: Any) -> QueryReader:
    """The reader of one collection: its value index (built once, then read from <data>/understand/), the
    attribute words and the encoder's whole words."""
    from search.query.value_index import value_index_for

    settings = reader_settings(cfg)
    cat = cfg.catalogue
    text_fields = keyword_text_fields(cfg)
    values = value_index_for(store, alias, collection, settings.fields, text_fields, encoder.encode,
                             cfg.data_dir / "understand", split_field="split" if cat.split else "")
    whole = encoder.whole_words() if hasattr(encoder, "whole_words") else None
    return QueryReader(values, matcher, settings, whole.__contains__ if whole is not None else None)


def hybrid_weights(cfg: Config, reading: Reading, keyword: Sequence[Any], values: ValueIndex
                   ) -> tuple[FusionWeights, QuerySignals]:
    """The fusion weights of a read query, and the signals they follow: [search]'s base weights, the keyword one
    following how much of the query the keyword hits cover (search.query.fusion_weights)."""
    s, u = cfg.search, cfg.understand
    params = FusionParams(s.keyword_weight, s.vector_weight, s.attribute_weight, u.keyword_floor, u.coverage_power)
    coverage = keyword_coverage(reading, keyword, keyword_text_fields(cfg), values)
    signals = QuerySignals(len(reading.words), coverage, reading.exact_share, reading.confidence)
    return fusion_weights(signals, params), signals
