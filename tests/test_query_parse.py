"""Pure parts of query reading: price and negation parsing (bad inputs too), spelling, fusion weights, hybrid rows."""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import pytest

from search.query.fusion_weights import FusionParams, FusionWeights, QuerySignals, fusion_weights
from search.query.query_parse import parse_constraints, parse_price, with_price
from search.query.spelling import Speller, damerau, deletes
from search.store.interface import Filters, Hit
from search.query.understand import AttributeMatcher

MATCHER = AttributeMatcher({"baseColour": ["Black", "Navy Blue", "White", "Red", "Gold"],
                            "articleType": ["Heels", "Tshirts", "Watches"], "gender": ["Men", "Women"]})


@pytest.mark.parametrize("text, price, left", [
    ("shoes under 20", (None, 20.0), "shoes"), ("jeans below 1000", (None, 1000.0), "jeans"),
    ("dress less than $49.99", (None, 49.99), "dress"), ("bag under 2k", (None, 2000.0), "bag"),
    ("kurta between 500 and 1,500 rs", (500.0, 1500.0), "kurta"), ("between 50 and 20 tops", (20.0, 50.0), "tops"),
    ("watch over 100 under 300", (100.0, 300.0), "watch"), ("shirt at least €15", (15.0, None), "shirt"),
    ("shoes for under 30 dollars", (None, 30.0), "shoes"), ("cap up to 10", (None, 10.0), "cap"),
    ("under 30 under 20 tees", (None, 20.0), "tees"), ("under ٣٠", (None, 30.0), "under ٣٠"),
])
def test_price_phrases(text: str, price: tuple[float | None, float | None], left: str) -> None:
    c = parse_constraints(text, MATCHER, prices=True)
    assert c.price == price and c.text == left
    assert [n["price"] for n in c.notes] == [{"min": price[0], "max": price[1]}]


@pytest.mark.parametrize("text", [
    "8 year old daughter", "size 10 shoes", "iphone 12 cover", "under", "under -5", "under 1e999",
    "under " + "9" * 400, "between 5 and", "top 10 watches", "2 pack socks", "under 5x", "over 3.5.1", "",
])
def test_no_price_read_where_there_is_none_or_it_is_bad(text: str) -> None:
    price, spans, said = parse_price(text)
    assert price is None and spans == [] and said == []
    c = parse_constraints(text, MATCHER, prices=True)
    assert c.price is None and c.text in (text, " ".join(text.split()))


def test_prices_only_where_the_catalogue_has_them() -> None:
    c = parse_constraints("shoes under 20", MATCHER, prices=False)
    assert c.price is None and c.text == "shoes under 20" and c.notes == ()


@pytest.mark.parametrize("text, exclude, left", [
    ("tshirts not black", {"baseColour": {"Black"}}, "tshirts"),
    ("sneakers but not white", {"baseColour": {"White"}}, "sneakers"),
    ("shoes without heels", {"articleType": {"Heels"}}, "shoes"),
    ("watch no gold", {"baseColour": {"Gold"}}, "watch"),
    ("dress but not in red", {"baseColour": {"Red"}}, "dress"),
    ("polo except navy blue", {"baseColour": {"Navy Blue"}}, "polo"),
    ("NOT BLACK watches", {"baseColour": {"Black"}}, "watches"),
    ("tops not red not white", {"baseColour": {"Red", "White"}}, "tops"),
])
def test_negations(text: str, exclude: dict[str, set[str]], left: str) -> None:
    c = parse_constraints(text, MATCHER, prices=True)
    assert {f: set(v) for f, v in c.exclude.items()} == exclude and c.text == left


@pytest.mark.parametrize("text", ["no-show socks", "not too big", "not", "without", "no", "nothing black",
                                  "notebook", "knot black", "without-", "not not", "🙂 not", "x" * 512])
def test_negation_words_without_a_value_are_left_alone(text: str) -> None:
    c = parse_constraints(text, MATCHER, prices=True)
    assert c.exclude == {} and c.text == " ".join(text.split())


def test_only_constraints_keeps_the_text() -> None:
    c = parse_constraints("not black", MATCHER, prices=True)
    assert c.exclude == {"baseColour": frozenset({"Black"})} and c.text == "not black"


def test_with_price_intersects_the_request_range() -> None:
    base = Filters(equals={"gender": ("Men",)}, ranges={"price": (10.0, 100.0), "year": (2010.0, None)})
    got = with_price(base, (None, 50.0))
    assert got.ranges == {"price": (10.0, 50.0), "year": (2010.0, None)} and got.equals == base.equals
    assert with_price(base, (20.0, 200.0)).ranges["price"] == (20.0, 100.0)
    assert with_price(Filters(), (5.0, None)).ranges == {"price": (5.0, None)}


# ---- spelling -------------------------------------------------------------------------------------------

def naive_osa(a: str, b: str) -> int:
    """Optimal string alignment by plain recursion (the oracle)."""
    if not a or not b:
        return len(a) + len(b)
    best = min(naive_osa(a[1:], b) + 1, naive_osa(a, b[1:]) + 1, naive_osa(a[1:], b[1:]) + (a[0] != b[0]))
    if len(a) > 1 and len(b) > 1 and a[0] == b[1] and a[1] == b[0]:
        best = min(best, naive_osa(a[2:], b[2:]) + 1)
    return best


def test_damerau_matches_the_naive_oracle() -> None:
    rnd = random.Random(5)
    for _ in range(300):
        a = "".join(rnd.choice("abc") for _ in range(rnd.randint(0, 6)))
        b = "".join(rnd.choice("abc") for _ in range(rnd.randint(0, 6)))
        assert damerau(a, b, 99) == naive_osa(a, b)
    assert deletes("abc", 1) == {"abc", "bc", "ac", "ab"}
    assert len(deletes("abcd", 2)) == 1 + 4 + 6


def test_speller_corrects_from_catalogue_words() -> None:
    counts = {"sunglasses": 900, "sandals": 800, "trousers": 400, "jacket": 200, "backpack": 300, "booties": 11,
              "hoodie": 1, "jeans": 500, "rare": 1}
    sp = Speller(counts, known={"shades", "cosy"}.__contains__)
    assert sp.correct_all(["sunglases", "sandles", "trousres", "jaket", "backpak", "jeens"]) == {
        "sunglases": "sunglasses", "sandles": "sandals", "trousres": "trousers", "jaket": "jacket",
        "backpak": "backpack", "jeens": "jeans"}
    assert sp.correct("shades") is None  # the encoder knows it
    assert sp.correct("hoodies") is None  # the plural of a catalogue word
    assert sp.correct("roots") is None  # nothing near
    assert sp.correct("jens") is None  # too short to guess
    assert sp.correct("tacket") is None  # the first letter is kept
    assert sp.correct("rarr") is None and sp.correct("raree") is None  # one title's word is no candidate
    assert sp.correct("12345") is None and sp.correct("") is None


# ---- fusion weights -------------------------------------------------------------------------------------

@pytest.mark.parametrize("coverage, floor, power, share", [
    (1.0, 0.0, 1.0, 1.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.25, 1.0, 0.25), (0.5, 0.0, 1.0, 0.5),
    (0.25, 0.0, 0.5, 0.5), (0.5, 0.0, 2.0, 0.25), (0.5, 0.5, 1.0, 0.75), (1.7, 0.0, 1.0, 1.0), (-3.0, 0.1, 1.0, 0.1),
])
def test_fusion_weights_oracle_cases(coverage: float, floor: float, power: float, share: float) -> None:
    p = FusionParams(keyword=2.0, vector=1.5, attributes=5.0, keyword_floor=floor, coverage_power=power)
    w = fusion_weights(QuerySignals(words=3, keyword_coverage=coverage), p)
    assert w.keyword == pytest.approx(2.0 * share) and w.vector == 1.5 and w.attributes == 5.0


def test_fusion_weights_are_monotone_and_bounded() -> None:
    for floor, power in itertools.product((0.0, 0.2, 1.0), (0.5, 1.0, 3.0)):
        p = FusionParams(keyword_floor=floor, coverage_power=power)
        ks = [fusion_weights(QuerySignals(keyword_coverage=c / 10), p).keyword for c in range(11)]
        assert ks == sorted(ks) and ks[0] == pytest.approx(floor) and ks[-1] == pytest.approx(1.0)
        assert all(math.isfinite(k) and 0 <= k <= 1 for k in ks)


# ---- hybrid rows ----------------------------------------------------------------------------------------

def hits(ids: str, payload: dict[str, Any] | None = None) -> list[Hit]:
    return [Hit(i, 1.0 / (n + 1), {"colour": "Black" if i in "aeiou" else "Red", **(payload or {})})
            for n, i in enumerate(ids)]


def test_hybrid_rows_against_a_naive_fusion() -> None:
    from search.query.hybrid import hybrid_rows

    rnd = random.Random(2)
    for _ in range(40):
        pool = list("abcdefghijklmnop")
        kw, dn = hits("".join(rnd.sample(pool, 8))), hits("".join(rnd.sample(pool, 8)))
        w = FusionWeights(rnd.uniform(0, 2), rnd.uniform(0.1, 2), rnd.uniform(0, 8))
        share = {i: rnd.random() for i in pool}
        kw = [Hit(h.id, h.score, {**h.payload, "id": h.id}) for h in kw]
        dn = [Hit(h.id, h.score, {**h.payload, "id": h.id}) for h in dn]
        rows = hybrid_rows(kw, dn, [], w, 0.0, 60, lambda p: share[p["id"]],
                           lambda p: p["colour"] == "Black")
        want: dict[str, float] = {}
        for lst, weight in ((kw, w.keyword), (dn, w.vector)):
            for r, h in enumerate(lst, 1):
                want[h.id] = want.get(h.id, 0.0) + weight / (60 + r)
        rel = {i: v + w.attributes / 61 * share[i] - (w.keyword + w.vector + 2 * w.attributes / 61
                                                      if i in "aeiou" else 0.0) for i, v in want.items()}
        got = [(h.id, e["relevance"]) for h, e in rows]
        assert {i for i, _ in got} == set(rel)
        assert all(e == pytest.approx(rel[i]) for i, e in got)
        assert [e for _, e in got] == sorted((e for _, e in got), reverse=True)
        black = [n for n, (i, _) in enumerate(got) if i in "aeiou"]
        assert not black or min(black) == len(got) - len(black)  # every ruled-out item after every other


def test_keyword_text_fields_name_payload_keys() -> None:
    from search.query.reading import keyword_text_fields
    from vitrina.config import load_config

    cfg = load_config(env={}).replace(catalogue={
        "title": "prod_name", "description": "detail_desc", "category": "product_type_name", "brand": "",
        "attributes": ("product_type_name", "colour_group_name"),
        "keyword_fields": ("prod_name", "product_type_name", "colour_group_name", "detail_desc")})
    # the indexer stores the title and description columns as "title" and "description", attributes as named
    assert keyword_text_fields(cfg) == ("title", "product_type_name", "colour_group_name", "description")


class _Idf:
    """A value index's IDF: rarer words weigh more."""

    def idf(self, word: str) -> float:
        return {"watches": 3.0, "brown": 1.0, "men": 0.5}.get(word, 2.0)


def _hit(item_id: str, **payload: Any) -> Hit:
    return Hit(item_id, 1.0, payload)


def test_keyword_coverage_reads_each_items_words_and_follows_their_changes() -> None:
    from types import SimpleNamespace

    from search.query.reading import keyword_coverage

    reading: Any = SimpleNamespace(words=("men", "brown", "watches"))
    fields = ("title", "colour", "tags")
    strap = _hit("1", title="Brown leather strap", colour="Brown")
    watch = _hit("2", title="Titan Men Watches", colour="Black")
    assert keyword_coverage(reading, [strap], fields, _Idf()) == pytest.approx(1.0 / 4.5)
    assert keyword_coverage(reading, [strap, watch], fields, _Idf()) == pytest.approx(3.5 / 4.5)
    assert keyword_coverage(reading, [strap, watch], fields, _Idf(), top=1) == pytest.approx(1.0 / 4.5)
    # the same item read again (remembered by its text), changed, or with a list value (read every time)
    assert keyword_coverage(reading, [watch], fields, _Idf()) == pytest.approx(3.5 / 4.5)
    brown = _hit("2", title="Titan Men Watches", colour="Brown")
    assert keyword_coverage(reading, [brown], fields, _Idf()) == pytest.approx(1.0)
    tagged = _hit("3", title="Leather strap", tags=["men", "watch"])
    assert keyword_coverage(reading, [tagged], fields, _Idf()) == pytest.approx(3.5 / 4.5)
    assert keyword_coverage(SimpleNamespace(words=()), [strap], fields, _Idf()) == 1.0


def test_image_urls_of_local_images_quote_the_id_only_where_needed() -> None:
    from search.query.results import image_url

    assert image_url("15970", "images/15970.jpg") == "/api/items/15970/image"
    assert image_url("AbC9", "x.jpg") == "/api/items/AbC9/image"
    assert image_url("sku 1/é", "x.jpg") == "/api/items/sku%201%2F%C3%A9/image"
    assert image_url("sku-1_a.b~", "x.jpg") == "/api/items/sku-1_a.b~/image"
    assert image_url("²", "x.jpg") == "/api/items/%C2%B2/image"  # a digit to str.isdigit, not to quote
    assert image_url("1", "HTTPS://cdn.example/1.jpg") == "HTTPS://cdn.example/1.jpg"
    assert image_url("1", "") is None
