"""Learned ranker against the hand-tuned blend on purchase windows: per window a model trained only on what came
before its cutoff, both configs evaluated on the window, ratios with intervals from resampling shoppers.

    python -m evaluation.experiments.ranker --config configs/hm.toml \\
        --windows 2019-12-01:2020-04-01,2020-01-01:2020-05-01,2020-02-01:2020-06-01
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from evaluation.harness import EvalOptions, report_value, run_evaluation
from evaluation.ranker_fit import TrainOptions, train
from evaluation.report import text_table
from evaluation.windows import parse_windows
from vitrina.config import Config, load_config

log = logging.getLogger(__name__)


def cluster_ratio(num: np.ndarray, den: np.ndarray, clusters: Sequence[str], samples: int = 2000, seed: int = 0
                  ) -> tuple[float, float, float]:
    """sum(num) / sum(den) and its 95% percentile interval when whole clusters (shoppers) are resampled."""
    keys = {c: i for i, c in enumerate(dict.fromkeys(clusters))}
    idx = np.array([keys[c] for c in clusters])
    n_num = np.bincount(idx, weights=num, minlength=len(keys))
    n_den = np.bincount(idx, weights=den, minlength=len(keys))
    picks = np.random.default_rng(seed).integers(0, len(keys), size=(samples, len(keys)))
    a, b = n_num[picks].sum(1), n_den[picks].sum(1)
    ratios = a[b > 0] / b[b > 0]
    low, high = np.quantile(ratios, [0.025, 0.975]) if len(ratios) else (np.nan, np.nan)
    return float(num.sum() / den.sum()) if den.sum() > 0 else float("nan"), float(low), float(high)


def hits(ranks: Sequence[int], k: int = 10) -> np.ndarray:
    return np.array([1.0 if 0 < r <= k else 0.0 for r in ranks])


def compare(blend: Mapping[str, Any], learned: Mapping[str, Any]) -> dict[str, Any]:
    """Warm HR@10: today's base (no user), the blend and the learned ranker with the user; MAP@12 of the
    recommendations of both configs; every purchase / shopper paired between the two runs."""
    pb, pl = report_value(blend, "personal", "warm", "per_purchase"), report_value(learned, "personal", "warm",
                                                                                    "per_purchase")
    out: dict[str, Any] = {}
    if pb and pl:
        assert pb["user"] == pl["user"], "the two runs must test the same purchases"
        base, hb, hl = hits(pb["base"]), hits(pb["personal"]), hits(pl["personal"])
        out.update(purchases=len(base), users=pb["user"], base=base, blend=hb, learned=hl,
                   learned_no_user=hits(pl["base"]))
    cb, cl = report_value(blend, "personal", "cold", "per_purchase"), report_value(learned, "personal", "cold",
                                                                                    "per_purchase")
    if cb and cl:  # shoppers without history: what the blend does for them is the base
        assert cb["user"] == cl["user"]
        out.update(cold_users=cb["user"], cold_blend=hits(cb["personal"]), cold_learned=hits(cl["personal"]))
    rb, rl = report_value(blend, "recommend", "per_user"), report_value(learned, "recommend", "per_user")
    if rb and rl:
        assert rb["user"] == rl["user"]
        out.update(rec_users=rb["user"], ap_blend=np.array(rb["blend"]), ap_learned=np.array(rl["blend"]),
                   ap_baseline=np.array(rb["buy_again_then_popular"]))
    return out


def summary(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The figures of some windows together (a shopper's purchases in every window form one cluster)."""
    cat = {k: np.concatenate([p[k] for p in parts]) for k in ("base", "blend", "learned", "learned_no_user")
           if all(k in p for p in parts)}
    out: dict[str, Any] = {}
    if cat:
        users = [u for p in parts for u in p["users"]]
        out["warm_purchases"] = int(len(cat["base"]))
        out["hits"] = {k: int(v.sum()) for k, v in cat.items()}
        out["hr@10"] = {k: float(v.mean()) for k, v in cat.items()}
        for name in ("blend", "learned"):
            value, low, high = cluster_ratio(cat[name], cat["base"], users)
            out[f"lift_{name}"] = [value - 1, low - 1, high - 1]
        out["learned_over_blend"] = list(cluster_ratio(cat["learned"], cat["blend"], users))
    if all("cold_blend" in p for p in parts):
        users = [u for p in parts for u in p["cold_users"]]
        cold = {k: np.concatenate([p[k] for p in parts]) for k in ("cold_blend", "cold_learned")}
        out["cold_purchases"] = int(len(cold["cold_blend"]))
        out["cold_hr@10"] = {k[5:]: float(v.mean()) for k, v in cold.items()}
        out["cold_learned_over_blend"] = list(cluster_ratio(cold["cold_learned"], cold["cold_blend"], users))
    if all("ap_blend" in p for p in parts):
        users = [u for p in parts for u in p["rec_users"]]
        ap = {k: np.concatenate([p[k] for p in parts]) for k in ("ap_blend", "ap_learned", "ap_baseline")}
        out["map@12"] = {k[3:]: float(v.mean()) for k, v in ap.items()}
        out["map_ratio_blend"] = list(cluster_ratio(ap["ap_blend"], ap["ap_baseline"], users))
        out["map_ratio_learned"] = list(cluster_ratio(ap["ap_learned"], ap["ap_baseline"], users))
        out["map_learned_over_blend"] = list(cluster_ratio(ap["ap_learned"], ap["ap_blend"], users))
    return out


def run(cfg: Config, windows: Sequence[tuple[str, str]], opts: TrainOptions, sections: Sequence[str], out: Path
        ) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    rows, parts = [], []
    for cutoff, end in windows:
        model, card = train(cfg, dataclasses.replace(opts, until=cutoff, out=out / f"ranker-{cutoff}.json"))
        eval_opts = EvalOptions(sections=tuple(sections), cutoff=cutoff, end=end, out=out, chart=False)
        blend = run_evaluation(cfg, eval_opts)
        learned_cfg = cfg.replace(ranker={"search_model": str(model)})
        if "recommend" in sections and opts.recommend:
            learned_cfg = learned_cfg.replace(ranker={"recommend_model": str(card["recommend_model"])})
        learned = run_evaluation(learned_cfg, eval_opts)
        part = compare(blend, learned)
        parts.append(part)
        rows.append({"window": f"{cutoff}..{end}", "model": card["version"], "train": card.get("windows"),
                     "valid_ndcg": [card["metrics"].get("ndcg@10_valid_blend"), card["metrics"].get("ndcg@10_valid")],
                     **summary([part])})
    result = {"command": " ".join([sys.executable.rsplit("/", 1)[-1]] + sys.argv), "windows": rows,
              "pooled": summary(parts)}
    (out / "exp_ranker.json").write_text(json.dumps(result, indent=1, default=float), encoding="utf-8")
    return result


def _ci(v: Sequence[float] | None, fmt: str = "{:.2f}", pct: bool = False) -> str:
    if not v:
        return "-"
    f = (lambda x: f"{100 * x:+.1f}%") if pct else fmt.format
    return f"{f(v[0])} [{f(v[1])}, {f(v[2])}]"


def table(result: Mapping[str, Any]) -> str:
    body = []
    for r in [*result["windows"], {"window": "pooled", **result["pooled"]}]:
        hr = r.get("hr@10", {})
        cold = r.get("cold_hr@10", {})
        body.append([r["window"], r.get("warm_purchases"), hr.get("base"), hr.get("blend"), hr.get("learned"),
                     hr.get("learned_no_user"), _ci(r.get("lift_blend"), pct=True),
                     _ci(r.get("lift_learned"), pct=True), _ci(r.get("learned_over_blend")), r.get("cold_purchases"),
                     cold.get("blend"), cold.get("learned"), _ci(r.get("cold_learned_over_blend")),
                     _ci(r.get("map_ratio_blend")), _ci(r.get("map_ratio_learned"))])
    return "\n".join(text_table(["window", "warm", "HR base", "HR blend", "HR learned", "learned, no id",
                                 "lift blend", "lift learned", "learned/blend", "cold", "HR cold blend",
                                 "HR cold learned", "cold learned/blend", "MAP ratio blend", "MAP ratio learned"],
                                body))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/hm.toml")
    p.add_argument("--windows", default="2019-12-01:2020-04-01,2020-01-01:2020-05-01,2020-02-01:2020-06-01")
    p.add_argument("--months", type=int, default=2, help="months per training window")
    p.add_argument("--train-windows", type=int, default=3, help="training windows before each cutoff")
    p.add_argument("--kind", default="lambdarank", choices=("lambdarank", "logistic"))
    p.add_argument("--sections", default="personal,recommend")
    p.add_argument("--no-recommend-ranker", action="store_true", help="recommendations keep the hand blend")
    p.add_argument("--out", type=Path, help="default: <data dir>/exp_ranker")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    opts = TrainOptions(kind=args.kind, months=args.months, windows=args.train_windows,
                        recommend="recommend" in args.sections and not args.no_recommend_ranker)
    result = run(cfg, parse_windows(args.windows), opts, [s for s in args.sections.split(",") if s],
                 args.out or cfg.data_dir / "exp_ranker")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
