"""Experiments without a server: the impression log, the shopper split, interleaving credit, the statistics, the
report's attribution, and the simulator finding a better ranker (and no difference between identical ones)."""

from __future__ import annotations

import hashlib
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from search.online.experiments import Experiments, Variant, assign, bucket, parse_variant, parse_variants
from search.online.impressions import (
    FEEDBACK, IMPRESSION, ImpressionLog, Position, feedback_record, features_of, impression_record,
)
from search.online.interleaving import credit, outcome, team_draft
from search.online.report import experiment_report
from search.online.simulator import Behaviour, make_shop, simulate, taste_ranker
from search.online.stats import always_valid_radius, ratio
from vitrina.config import ExperimentsConfig, load_config
from vitrina.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CFG = load_config(env={})


# ----- the impression log -----

def test_log_under_8_threads_loses_nothing(tmp_path: Path) -> None:
    log = ImpressionLog(tmp_path / "imp", sync_s=0.05)
    per_thread = 400

    def work(t: int) -> None:
        for i in range(per_thread):
            rid = f"t{t}-{i}"
            if i % 2:
                log.feedback(f"u{t}", f"item-{i}", "click", 1.0e9 + i, rid, i % 10)
            else:
                log.impression(rid, "search", [f"item-{j}" for j in range(i % 30)], user_id=f"u{t}",
                               query="red shoes " * 20, features=[[0.1 * j, 2.0] for j in range(i % 30)])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    log.close()
    records = list(ImpressionLog(tmp_path / "imp").read())
    assert len(records) == 8 * per_thread
    want = {(f"t{t}-{i}", FEEDBACK if i % 2 else IMPRESSION) for t in range(8) for i in range(per_thread)}
    assert {(r["request_id"], r["kind"]) for r in records} == want
    imp = next(r for r in records if r["request_id"] == "t3-28")
    assert imp["items"] == [f"item-{j}" for j in range(28)]
    np.testing.assert_allclose(features_of(imp)[5], [0.5, 2.0], rtol=1e-6)  # float32 in the log
    # reading resumes from a position: the rest, nothing twice
    reader = ImpressionLog(tmp_path / "imp")
    first = list(reader.read_from(Position()))
    assert len(first) == len(records)
    half = first[len(first) // 2 - 1][1]
    assert [r for r, _ in reader.read_from(half)] == records[len(records) // 2:]
    assert list(reader.read(kinds=(FEEDBACK,), since=1.0e9 + 100, until=1.0e9 + 102)) == [
        r for r in records if r["kind"] == FEEDBACK and 1.0e9 + 100 <= r["ts"] < 1.0e9 + 102]


def test_log_survives_kill_and_skips_a_torn_line(tmp_path: Path) -> None:
    folder = tmp_path / "imp"
    code = ("import os, sys; from search.online.impressions import ImpressionLog\n"
            f"log = ImpressionLog({str(folder)!r}, sync_s=60)\n"
            "for i in range(500):\n    log.impression(f'r{i}', 'search', ['a', 'b'], user_id='u')\n"
            "print('written', flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
    os.kill(proc.pid, signal.SIGKILL)  # no fsync, no close: what write() handed the kernel must be there
    proc.wait(timeout=30)
    day = next(folder.glob("*.jsonl"))
    with day.open("ab") as f:
        f.write(b'{"kind": "impression", "request_id": "torn"')  # a crash in the middle of a line
    got = [r["request_id"] for r in ImpressionLog(folder).read()]
    assert got == [f"r{i}" for i in range(500)]


# ----- the split -----

def test_split_is_stable_and_balanced() -> None:
    ids = [f"customer-{i:05d}" for i in range(10_000)]
    two = parse_variants(ExperimentsConfig(name="e", variants=("control", "learned: ranker.candidates=50")))
    got = [assign(two, "salt-1", u).name for u in ids]
    counts = np.array([got.count("control"), got.count("learned")])
    chi2 = float(((counts - 5000) ** 2 / 5000).sum())
    assert chi2 < 10.83, counts  # chi-square, 1 degree of freedom, p = 0.001
    # the same id gets the same variant every time, from the salt and the id alone (SHA-256, not hash())
    digest = hashlib.sha256(b"salt-1\x00customer-00042").digest()
    assert bucket("salt-1", "customer-00042") == int.from_bytes(digest[:8], "big") / 2 ** 64
    assert [assign(two, "salt-1", u).name for u in ids[:200]] == got[:200]
    # another salt reshuffles independently of the first split
    other = [assign(two, "salt-2", u).name for u in ids]
    table = np.array([[sum(a == x and b == y for a, b in zip(got, other)) for y in ("control", "learned")]
                      for x in ("control", "learned")], dtype=float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    assert float(((table - expected) ** 2 / expected).sum()) < 10.83, table
    # unequal shares: 50 / 30 / 20
    three = parse_variants(ExperimentsConfig(name="e", variants=("a", "b", "c"), shares=("5", "3", "2")))
    names = [assign(three, "s", u).name for u in ids]
    observed = np.array([names.count(n) for n in "abc"], dtype=float)
    want = np.array([5000.0, 3000.0, 2000.0])
    assert float(((observed - want) ** 2 / want).sum()) < 13.82, observed  # 2 degrees of freedom, p = 0.001


def test_variants_parse_and_override_the_config() -> None:
    assert parse_variant("learned: ranker.candidates=50; search.keyword_weight=2") == (
        "learned", (("ranker.candidates", "50"), ("search.keyword_weight", "2")))
    cfg = CFG.replace(experiments={"name": "e", "variants": ("control", "heavy: search.keyword_weight=3.5")})
    ex = Experiments(cfg)
    assert ex.configs["heavy"].search.keyword_weight == 3.5 and ex.configs["control"] == cfg
    shipped = load_config(ROOT / "configs" / "hm.toml", env={})
    learned = Experiments(shipped.replace(experiments={"name": "e", "variants": (
        "control", "learned: ranker.search_model=../models/ranker_hm.json")})).configs["learned"]
    assert learned.ranker.search_model == str(ROOT / "models" / "ranker_hm.json")  # beside the config file
    assert ex.assign(None) is None and isinstance(ex.assign("u1"), Variant)
    cases = ((("a", "b: store.alias=x"), "cannot differ"), (("a", "b: search.nope=1"), "unknown"),
             (("a", "b: search.rrf_k=many"), "integer"), (("a",), "two variants"), (("a", "a"), "repeated"))
    for variants, match in cases:
        with pytest.raises(ConfigError, match=match):
            Experiments(CFG.replace(experiments={"name": "e", "variants": variants}))


# ----- interleaving -----

class Coins:
    """Scripted coin flips: each value < 0.5 means team A picks first."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def test_team_draft_against_a_hand_worked_example() -> None:
    a, b = ["a", "b", "c", "d"], ["b", "e", "a", "f"]
    # round 1: a tie, the coin says B: B takes b. Round 2: A has fewer: a. Round 3: a tie, the coin says A:
    # A's next free is c (b is taken). Round 4: B has fewer: e (b is taken).
    items, teams = team_draft(a, b, 4, Coins(0.7, 0.2))  # type: ignore[arg-type]
    assert items == ["b", "a", "c", "e"] and teams == ["B", "A", "A", "B"]
    assert credit(teams, [1, 2]) == (2, 0) and outcome(2, 0) == "A"
    assert credit(teams, [0, 3, 3]) == (0, 2) and outcome(0, 2) == "B"
    assert credit(teams, [0, 1, 9]) == (1, 1) and outcome(1, 1) == "tie"
    assert outcome(0, 0) is None
    # a team whose list is used up passes its turn
    items, teams = team_draft(["x"], ["y", "z", "w"], 3, Coins(0.1, 0.1))  # type: ignore[arg-type]
    assert items == ["x", "y", "z"] and teams == ["A", "B", "B"]


# ----- statistics -----

def test_ratio_variance_matches_a_cluster_bootstrap() -> None:
    rng = np.random.default_rng(1)
    searches = rng.integers(1, 8, 400).astype(float)
    clicks = rng.binomial(searches.astype(int), rng.beta(2, 5, 400)).astype(float)
    r = ratio(clicks, searches)
    assert r.value == pytest.approx(clicks.sum() / searches.sum())
    picks = rng.integers(0, 400, (4000, 400))
    boot = clicks[picks].sum(1) / searches[picks].sum(1)
    assert math.sqrt(r.var) == pytest.approx(float(boot.std()), rel=0.08)


def test_always_valid_radius_is_where_the_msprt_crosses_one_over_alpha() -> None:
    for var, tau, alpha in ((1e-4, 0.02, 0.05), (0.003, 0.05, 0.01), (2.0, 0.5, 0.1)):
        x = always_valid_radius(var, alpha, tau)

        def msprt(est: float) -> float:  # the mixture likelihood ratio, written out
            return math.sqrt(var / (var + tau ** 2)) * math.exp(tau ** 2 * est ** 2 / (2 * var * (var + tau ** 2)))

        assert msprt(x) == pytest.approx(1 / alpha, rel=1e-9)
        assert msprt(0.99 * x) < 1 / alpha < msprt(1.01 * x)
    assert always_valid_radius(0.0, 0.05, 0.1) == math.inf


# ----- the report's bookkeeping -----

def _hand_log() -> list[dict[str, Any]]:
    imp = impression_record
    return [
        imp("r1", "search", ["i1", "i2", "i3"], user_id="u1", experiment="e", variant="control", ts=100.0),
        imp("r2", "search", ["i4", "i5"], user_id="u1", experiment="e", variant="control", ts=200.0),
        imp("r3", "search", ["i6", "i7"], user_id="u2", experiment="e", variant="new", ts=150.0, segment=1),
        imp("r4", "search", ["i1"], user_id="u3", experiment="other", variant="x", ts=150.0),
        feedback_record("u1", "i2", "click", 110.0, "r1", 1),
        feedback_record("u1", "i2", "purchase", 120.0, "r1", 1),
        feedback_record("u1", "i4", "cart", 250.0),  # no request id: the latest response before it (r2)
        feedback_record("u1", "i4", "click", 1e6),  # too long after any response: not attributed
        feedback_record("u2", "i7", "click", 160.0, "r1", 1),  # someone else's request id: ignored
        feedback_record("u2", "i6", "click", 170.0, "r3", 0),
        feedback_record("u2", "i6", "view", 170.0, "r3", 0),  # views are not engagement
    ]


def test_report_attributes_feedback_to_responses() -> None:
    ec = ExperimentsConfig(name="e", variants=("control", "new"), min_shoppers=1, min_impressions=1)
    rep = experiment_report(_hand_log(), "e", ec, ["control", "new"], prices=lambda ids: {"i2": 30.0, "i4": 5.0})
    assert rep["feedback"] == {"by_request_id": 3, "last_touch": 1, "unattributed": 2}
    control, new = rep["variants"]
    # r1: click + purchase (so carted too); r2: a cart (a step past a click, so clicked too)
    assert (control["impressions"], control["clicked"], control["carted"], control["purchased"]) == (2, 2, 2, 1)
    assert control["revenue"] == 30.0 and control["shoppers"] == 1
    assert control["metrics"]["ctr"]["value"] == 1.0 and control["metrics"]["conversion"]["value"] == 0.5
    assert control["metrics"]["revenue"]["value"] == 15.0
    assert (new["impressions"], new["clicked"], new["purchased"]) == (1, 1, 0)
    assert rep["segments"]["1"]["variants"][1]["impressions"] == 1
    assert rep["timeline"] and rep["timeline"][-1]["day"] == "1970-01-01"
    strict = ExperimentsConfig(name="e", min_shoppers=2)
    assert experiment_report(_hand_log(), "e", strict, ["control", "new"])["verdict"]["status"] == "not enough data"


# ----- the simulator: the report finds a better ranker, and no difference between identical ones -----

def _runs(seeds: range, better_noise: float, searches: int, interleave: bool) -> list[dict[str, Any]]:
    reports = []
    for seed in seeds:
        cfg = CFG.replace(experiments={"name": "sim", "salt": f"salt-{seed}", "variants": ("control", "other"),
                                       "method": "interleave" if interleave else "ab", "min_shoppers": 100,
                                       "min_impressions": 100})
        ex = Experiments(cfg)
        shop = make_shop(seed=seed)
        rankers = {"control": taste_ranker(1.0), "other": taste_ranker(better_noise)}
        records = simulate(shop, rankers, lambda u: ex.assign(u).name, searches, seed=seed,  # type: ignore[union-attr]
                           interleave=("control", "other") if interleave else None)
        reports.append(experiment_report(records, "sim", cfg.experiments, ["control", "other"], shop.price_of))
    return reports


def test_simulated_ab_finds_the_better_ranker_and_not_a_difference_between_twins() -> None:
    seeds = range(40)
    better = _runs(seeds, 0.25, 1500, interleave=False)
    found = sum(r["verdict"]["winner"] == "other" for r in better)
    assert found >= 0.95 * len(seeds), [r["verdict"] for r in better]
    assert all(r["comparisons"][0]["difference"] > 0 for r in better)  # the better ranker gets more clicks
    twins = _runs(seeds, 1.0, 1500, interleave=False)
    assert sum(r["verdict"]["winner"] is not None for r in twins) <= 0.05 * len(seeds)
    # the intervals are always valid: reading the report at the end of every day never shows a difference
    # more often than alpha
    peeked = sum(any(d["interval"] and (d["interval"][0] > 0 or d["interval"][1] < 0) for d in r["timeline"])
                 for r in twins)
    assert peeked <= 0.05 * len(seeds)


def test_simulated_interleaving_finds_the_better_ranker_with_less_traffic() -> None:
    seeds = range(20)
    better = _runs(seeds, 0.4, 1200, interleave=True)
    assert sum(r["verdict"]["winner"] == "other" for r in better) >= 0.95 * len(seeds)
    assert all(r["interleaving"]["preference"] < 0 for r in better)  # B ("other") wins more impressions
    twins = _runs(seeds, 1.0, 1200, interleave=True)
    assert sum(r["verdict"]["winner"] is not None for r in twins) <= 0.05 * len(seeds)
    ab = _runs(seeds, 0.4, 1200, interleave=False)  # the same traffic split A/B finds it less often
    assert sum(r["verdict"]["winner"] == "other" for r in ab) < 0.95 * len(seeds)


def test_simulated_shoppers_have_position_bias() -> None:
    shop = make_shop(seed=3)
    records = simulate(shop, {"a": taste_ranker(1.0)}, lambda u: "a", 3000, seed=3,
                       behaviour=Behaviour(position_bias=1.0))
    clicks = np.bincount([r["position"] for r in records if r.get("event") == "click"], minlength=10)
    assert clicks[0] > 2 * clicks[4] > 0  # the top is examined far more often
