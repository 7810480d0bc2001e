"""The experiment report: log records -> per-shopper totals per variant (and segment) -> metrics, intervals, verdict."""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from search.online.impressions import FEEDBACK, IMPRESSION
from search.online.interleaving import A, B, credit, outcome
from search.online.stats import Ratio, always_valid_radius, difference, mixture_scale, ratio
from vitrina.config import ExperimentsConfig

ENGAGED = ("click", "cart", "purchase")  # a click, or a deeper step (one can buy from a card without a click)
COUNTS = ("impressions", "clicked", "carted", "purchased", "revenue")
METRIC_OF = {"ctr": "clicked", "cart_rate": "carted", "conversion": "purchased", "revenue": "revenue"}
INTERLEAVE_TAU = 0.05  # mixture scale of the interleaving preference (a share in [-1, 1])

Prices = Callable[[Sequence[str]], Mapping[str, float]]


@dataclass
class Shown:
    """One logged response of the experiment and what came of it."""

    request_id: str
    user_id: str
    variant: str
    ts: float
    items: list[str]
    offset: int
    segment: int | None
    teams: list[str] | None
    events: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))  # event -> positions shown
    bought: list[str] = field(default_factory=list)


def _position(shown: Shown, record: Mapping[str, Any]) -> int:
    """0-based index in the shown list of the item a feedback record names (its position, else its id)."""
    pos = record.get("position")
    item = record.get("item_id")
    if isinstance(pos, int) and not isinstance(pos, bool):
        i = pos - shown.offset
        if 0 <= i < len(shown.items) and (item is None or shown.items[i] == item):
            return i
    return shown.items.index(item) if item in shown.items else -1


def collect(records: Iterable[Mapping[str, Any]], name: str, attribution_s: float
            ) -> tuple[list[Shown], dict[str, int]]:
    """The experiment's responses with their attributed feedback: an event naming a request id goes to that
    response; one without goes to the shopper's latest response in the experiment at most attribution_s before
    it (last touch). Returns the responses and counts of what was matched."""
    shown: dict[str, Shown] = {}
    feedback: list[Mapping[str, Any]] = []
    for r in records:
        kind = r.get("kind")
        if kind == IMPRESSION and r.get("experiment") == name and r.get("user_id") and r.get("variant"):
            shown[r["request_id"]] = Shown(r["request_id"], r["user_id"], r["variant"], float(r["ts"]),
                                           list(r.get("items") or []), int(r.get("offset") or 0), r.get("segment"),
                                           r.get("teams"))
        elif kind == FEEDBACK and r.get("event") in ENGAGED:
            feedback.append(r)
    by_user: dict[str, list[Shown]] = defaultdict(list)
    for s in shown.values():
        by_user[s.user_id].append(s)
    times = {}
    for user, mine in by_user.items():
        mine.sort(key=lambda s: s.ts)
        times[user] = [s.ts for s in mine]
    counts = {"by_request_id": 0, "last_touch": 0, "unattributed": 0}
    for r in feedback:
        target = shown.get(r.get("request_id") or "")
        if target is not None and target.user_id != r.get("user_id"):
            target = None  # a request id of someone else's response does not count
        if target is not None:
            counts["by_request_id"] += 1
        elif not r.get("request_id") and r.get("user_id") in times:
            ts = float(r.get("ts", 0.0))
            i = bisect.bisect_right(times[r["user_id"]], ts) - 1
            if i >= 0 and ts - times[r["user_id"]][i] <= attribution_s:
                target = by_user[r["user_id"]][i]
                counts["last_touch"] += 1
        if target is None:
            counts["unattributed"] += 1
            continue
        target.events[r["event"]].add(_position(target, r))
        if r["event"] == "purchase":
            target.bought.append(str(r.get("item_id")))
    return list(shown.values()), counts


def outcomes(s: Shown, prices: Mapping[str, float]) -> tuple[float, float, float, float, float]:
    """One response's row of COUNTS: 1 impression; clicked, carted, purchased (0/1: at least one); revenue."""
    clicked = float(any(s.events.get(e) for e in ENGAGED))
    carted = float(bool(s.events.get("cart")) or bool(s.events.get("purchase")))
    purchased = float(bool(s.events.get("purchase")))
    revenue = float(sum(prices.get(i, 0.0) for i in s.bought))
    return 1.0, clicked, carted, purchased, revenue


class Totals:
    """Per group (e.g. the variant) and shopper, the sums of COUNTS over their responses, added incrementally."""

    def __init__(self) -> None:
        self._sums: dict[Any, dict[str, np.ndarray]] = defaultdict(dict)

    def add(self, group: Any, user_id: str, row: Sequence[float]) -> None:
        users = self._sums[group]
        if user_id in users:
            users[user_id] += row
        else:
            users[user_id] = np.array(row, dtype=np.float64)

    def arrays(self) -> dict[Any, dict[str, np.ndarray]]:
        """group -> {count name: one value per shopper}."""
        out = {}
        for group, users in self._sums.items():
            matrix = np.stack(list(users.values())) if users else np.zeros((0, len(COUNTS)))
            out[group] = {name: matrix[:, j] for j, name in enumerate(COUNTS)}
        return out


def unit_totals(shown: Sequence[Shown], rows: Sequence[Sequence[float]], key: Callable[[Shown], Any]
                ) -> dict[Any, dict[str, np.ndarray]]:
    """Per group (key(shown)) an array per count in COUNTS with one entry per shopper; rows = outcomes(shown)."""
    totals = Totals()
    for s, row in zip(shown, rows):
        totals.add(key(s), s.user_id, row)
    return totals.arrays()


def _interval(r: Ratio) -> list[float] | None:
    lo, hi = r.interval()
    return [lo, hi] if math.isfinite(lo) else None


def _variant_rows(order: Sequence[str], totals: Mapping[str, dict[str, np.ndarray]], metrics: Sequence[str]
                  ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Ratio]]]:
    rows, ratios = [], {}
    for name in order:
        t = totals.get(name)
        if t is None:
            rows.append({"name": name, "shoppers": 0, "impressions": 0, "metrics": {}})
            continue
        ratios[name] = {m: ratio(t[METRIC_OF[m]], t["impressions"]) for m in metrics}
        rows.append({"name": name, "shoppers": int(t["impressions"].shape[0]),
                     **{c: float(t[c].sum()) if c == "revenue" else int(t[c].sum()) for c in COUNTS},
                     "metrics": {m: {"value": r.value, "ci95": _interval(r)} for m, r in ratios[name].items()}})
    return rows, ratios


def _comparisons(order: Sequence[str], ratios: Mapping[str, dict[str, Ratio]], metrics: Sequence[str],
                 alpha: float) -> list[dict[str, Any]]:
    """Each variant against the first (the control), per metric; alpha split over the variants (Bonferroni)."""
    out = []
    others = [v for v in order[1:] if v in ratios]
    if not order or order[0] not in ratios or not others:
        return out
    a_name = order[0]
    level = alpha / len(others)
    for b_name in others:
        for m in metrics:
            a, b = ratios[a_name][m], ratios[b_name][m]
            d = difference(a, b, level, mixture_scale(a, b))
            lo, hi = d.interval
            out.append({"variant": b_name, "against": a_name, "metric": m, "difference": d.estimate,
                        "relative": d.estimate / a.value if a.value > 0 else None,
                        "interval": [lo, hi] if math.isfinite(lo) else None, "significant": d.significant})
    return out


def verdict(rows: Sequence[Mapping[str, Any]], comparisons: Sequence[Mapping[str, Any]], ec: ExperimentsConfig
            ) -> dict[str, Any]:
    """A plain sentence about the primary metric: not enough data / no difference yet / <variant> wins."""
    short = [r["name"] for r in rows if r["shoppers"] < ec.min_shoppers or r["impressions"] < ec.min_impressions]
    if short or len(rows) < 2:
        return {"status": "not enough data", "winner": None,
                "text": f"Not enough data yet: each variant needs {ec.min_shoppers} shoppers and "
                        f"{ec.min_impressions} responses (short: {', '.join(short) or 'variants'})."}
    mine = [c for c in comparisons if c["metric"] == ec.primary]
    if not mine:
        return {"status": "not measured", "winner": None,
                "text": f"{ec.primary} is not measured here (revenue needs prices in the catalogue)."}
    better = [c for c in mine if c["significant"] and c["difference"] > 0]
    worse = [c for c in mine if c["significant"] and c["difference"] < 0]
    control = rows[0]["name"]
    if better:
        best = max(better, key=lambda c: c["difference"])
        return {"status": "winner", "winner": best["variant"],
                "text": f"{best['variant']} wins on {ec.primary} against {control}."}
    if worse and len(worse) == len(mine):
        return {"status": "winner", "winner": control, "text": f"{control} wins on {ec.primary}."}
    return {"status": "no difference", "winner": None, "text": f"No difference on {ec.primary} yet."}


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d")


def timeline(shown: Sequence[Shown], rows: Sequence[Sequence[float]], order: Sequence[str],
             ec: ExperimentsConfig) -> list[dict[str, Any]]:
    """The primary metric's difference (second variant minus the first) and its always-valid interval as the
    experiment stood at the end of each day: how the evidence built up."""
    if len(order) < 2:
        return []
    out = []
    totals = Totals()
    pairs = sorted(zip(shown, rows), key=lambda t: t[0].ts)
    for i, (s, row) in enumerate(pairs):
        totals.add(s.variant, s.user_id, row)
        if i + 1 < len(pairs) and pairs[i + 1][0].ts // 86_400 == s.ts // 86_400:
            continue  # not the day's last response
        day = _day(s.ts)
        _, ratios = _variant_rows(order[:2], totals.arrays(), [ec.primary])
        comp = _comparisons(order[:2], ratios, [ec.primary], ec.alpha)
        if comp:
            out.append({"day": day, "difference": comp[0]["difference"], "interval": comp[0]["interval"]})
    return out


def interleaving_report(shown: Sequence[Shown], order: Sequence[str], ec: ExperimentsConfig) -> dict[str, Any]:
    """Team-draft credit per response (clicks at positions placed by each team); per shopper wins of A minus
    wins of B over responses with clicks; the preference Delta = (wins A - wins B) / responses with clicks."""
    per_user: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])  # wins A, wins B, ties, clicked
    for s in shown:
        if not s.teams:
            continue
        positions = [p for e in ENGAGED for p in s.events.get(e, ())]
        won = outcome(*credit(s.teams, positions))
        if won is None:
            continue
        row = per_user[s.user_id]
        row[{A: 0, B: 1, "tie": 2}[won]] += 1
        row[3] += 1
    names = {A: order[0] if order else A, B: order[1] if len(order) > 1 else B}
    m = np.array(list(per_user.values()), dtype=np.float64).reshape(-1, 4)
    pref = ratio(m[:, 0] - m[:, 1], m[:, 3])
    radius = always_valid_radius(pref.var, ec.alpha, INTERLEAVE_TAU)
    enough = m.shape[0] >= ec.min_shoppers and m[:, 3].sum() >= ec.min_impressions
    if not enough:
        status, winner = "not enough data", None
        text = (f"Not enough data yet: {ec.min_shoppers} shoppers and {ec.min_impressions} responses with clicks "
                f"needed ({m.shape[0]} and {int(m[:, 3].sum())} so far).")
    elif abs(pref.value) > radius:
        winner = names[A] if pref.value > 0 else names[B]
        status, text = "winner", f"{winner} wins the interleaved comparison."
    else:
        status, winner, text = "no difference", None, "No preference between the two rankers yet."
    return {"teams": names, "shoppers": int(m.shape[0]), "responses_with_clicks": int(m[:, 3].sum()),
            "wins": {names[A]: int(m[:, 0].sum()), names[B]: int(m[:, 1].sum()), "tie": int(m[:, 2].sum())},
            "preference": pref.value,
            "interval": [pref.value - radius, pref.value + radius] if math.isfinite(radius) else None,
            "verdict": {"status": status, "winner": winner, "text": text}}


def experiment_report(records: Iterable[Mapping[str, Any]], name: str, ec: ExperimentsConfig,
                      variants: Sequence[str] = (), prices: Prices | None = None) -> dict[str, Any]:
    """The whole report of experiment `name` from log records; `variants` gives the order (control first) when
    the experiment is the running one, else the order in which variants first appear in the log."""
    shown, matched = collect(records, name, ec.attribution_s)
    order = list(variants) or list(dict.fromkeys(s.variant for s in sorted(shown, key=lambda s: s.ts)))
    bought = sorted({i for s in shown for i in s.bought})
    price_of = dict(prices(bought)) if prices is not None and bought else {}
    metrics = ["ctr", "cart_rate", "conversion"]
    if price_of:
        metrics.append("revenue")
    interleaved = any(s.teams for s in shown)
    report: dict[str, Any] = {"experiment": name, "method": "interleave" if interleaved else "ab",
                              "primary": ec.primary, "alpha": ec.alpha, "metrics": metrics,
                              "min_shoppers": ec.min_shoppers, "min_impressions": ec.min_impressions,
                              "feedback": matched}
    if interleaved:
        report["interleaving"] = interleaving_report(shown, order, ec)
        report["verdict"] = report["interleaving"]["verdict"]
        return report
    outcome_rows = [outcomes(s, price_of) for s in shown]
    totals = unit_totals(shown, outcome_rows, lambda s: s.variant)
    rows, ratios = _variant_rows(order, totals, metrics)
    comparisons = _comparisons(order, ratios, metrics, ec.alpha)
    report.update(variants=rows, comparisons=comparisons, verdict=verdict(rows, comparisons, ec))
    segs = sorted({s.segment for s in shown if s.segment is not None})
    if segs:
        by_seg = unit_totals(shown, outcome_rows, lambda s: (s.segment, s.variant))
        report["segments"] = {}
        for seg in segs:
            seg_rows, seg_ratios = _variant_rows(order, {v: t for (g, v), t in by_seg.items() if g == seg},
                                                 metrics)
            seg_comp = _comparisons(order, seg_ratios, metrics, ec.alpha)
            report["segments"][str(seg)] = {"variants": seg_rows, "comparisons": seg_comp,
                                            "verdict": verdict(seg_rows, seg_comp, ec)}
    report["timeline"] = timeline(shown, outcome_rows, order, ec)
    return report
