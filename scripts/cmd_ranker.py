"""`vitrina train-ranker`: training groups from purchases or the click log -> a versioned model file with its card."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vitrina.config import Config
from vitrina.errors import BadInput

log = logging.getLogger(__name__)

HELD_BACK = "2020-06-01"  # purchases from this day on are held back for evaluation (the data set's own split)
NEGATIVES = ("the other candidates of the hand-tuned blend's top-N for the same search (what the engine would "
             "have shown the shopper then), labelled 0")


@dataclass(frozen=True)
class TrainOptions:
    source: str = "purchases"  # purchases (replayed against the engine) | log (logged impressions and feedback)
    kind: str = "lambdarank"  # lambdarank | logistic
    until: str = HELD_BACK  # nothing on or after this day is read (labels, history or log records)
    months: int = 2  # purchases: length of each training window
    windows: int = 3  # purchases: how many windows back from `until`
    query_field: str = "product_type_name"
    candidates: int = 0  # 0: [ranker].candidates
    valid: float = 0.2
    out: Path | None = None
    seed: int = 0
    recommend: bool = False  # purchases: also train the recommendations ranker (<out>.recommend.json)


def month_windows(until: str, months: int, count: int) -> list[tuple[str, str]]:
    """`count` windows of `months` months each, the last one ending at `until`, oldest first."""
    end = datetime.strptime(until, "%Y-%m-%d")
    out = []
    for _ in range(count):
        m = end.month - months
        start = end.replace(year=end.year + (m - 1) // 12, month=(m - 1) % 12 + 1)
        out.append((start.strftime("%Y-%m-%d"), end.strftime("%Y-%m-%d")))
        end = start
    return out[::-1]


def train(cfg: Config, opts: TrainOptions, client: Any = None) -> tuple[Path, dict[str, Any]]:
    """Build the groups, fit, write the model and its card; returns (path, card)."""
    from scripts.eval_client import InProcessClient, api_key_for
    from scripts.eval_data import load_catalogue, load_purchases
    from scripts.ranker_data import Groups, from_log, replay_purchases
    from scripts.train_ranker import fit_lambdarank, fit_logistic
    from search.features import SEARCH_FEATURES
    from search.learned import save_model

    if opts.source == "purchases" and opts.until > HELD_BACK:
        raise BadInput(f"--until {opts.until} reaches into the held-back period", f"at most {HELD_BACK}")
    start = time.perf_counter()
    candidates = opts.candidates or cfg.ranker.candidates
    card: dict[str, Any] = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "config": cfg.source, "source": opts.source, "until": opts.until,
                            "candidates": candidates, "command": " ".join(["vitrina"] + sys.argv[1:])}
    if opts.source == "purchases":
        windows = month_windows(opts.until, opts.months, opts.windows)
        path = Path(cfg.catalogue.path).parent / "transactions.csv"
        own = client is None
        client = client or InProcessClient(cfg, api_key_for(cfg))
        rec_groups = Groups() if opts.recommend else None
        try:
            groups = replay_purchases(client, load_catalogue(cfg), load_purchases(path), windows,
                                      opts.query_field, candidates, recommend=rec_groups)
        finally:
            if own:
                client.close()
        card.update(windows=[f"{a}..{b}" for a, b in windows], transactions=str(path), query_field=opts.query_field,
                    queries=f"the bought article's {opts.query_field}, searched as the shopper (as the personal "
                            "evaluation does)", negatives=NEGATIVES, labels="1 for the bought article(s)")
    elif opts.source == "log":
        from search.impressions import open_log

        until = datetime.strptime(opts.until, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
        groups = from_log(open_log(cfg.data_dir).read(until=until), until=until, groups=Groups())
        card.update(labels="click 1, cart 2, purchase 3 (the deepest per shown item)",
                    negatives="shown items nobody acted on, in responses with some feedback",
                    position_bias="shown positions given to LightGBM's unbiased lambdarank")
    else:
        raise BadInput(f"unknown --source {opts.source!r}", "purchases or log")
    if len(groups.y) < 10:
        raise BadInput(f"only {len(groups.y)} training groups", "need at least 10 searches with a positive")
    features = list(SEARCH_FEATURES)
    card["data"] = {**dict(groups.stats), "groups": len(groups.y), "rows": int(sum(len(y) for y in groups.y))}
    if opts.kind == "lambdarank":
        booster, metrics = fit_lambdarank(groups, features, opts.valid, opts.source == "log", opts.seed)
        logistic = None
    elif opts.kind == "logistic":
        booster = None
        logistic, metrics = fit_logistic(groups, features, cfg.ranker.online_l2, opts.valid, opts.seed)
    else:
        raise BadInput(f"unknown --kind {opts.kind!r}", "lambdarank or logistic")
    out = opts.out or cfg.data_dir / "models" / f"ranker-{opts.kind}-{opts.until}.json"
    if opts.source == "purchases" and rec_groups is not None:
        card["recommend_model"] = str(_recommend_model(rec_groups, card, opts, out))
    card.update(metrics=metrics, seconds=round(time.perf_counter() - start, 1))
    model = save_model(out, opts.kind, "search", features, card, booster=booster, logistic=logistic)
    return out, model.card


def _recommend_model(groups: Any, card: dict[str, Any], opts: TrainOptions, out: Path) -> Path:
    """The recommendations ranker from the same replay (lambdarank over RECOMMEND_FEATURES): <out>.recommend.json."""
    from scripts.train_ranker import fit_lambdarank
    from search.features import RECOMMEND_FEATURES
    from search.learned import save_model

    if len(groups.y) < 10:
        raise BadInput(f"only {len(groups.y)} recommendation groups", "need at least 10 shoppers with a positive")
    booster, metrics = fit_lambdarank(groups, list(RECOMMEND_FEATURES), opts.valid, False, opts.seed)
    path = out.with_suffix(".recommend.json")
    rec_card = {k: v for k, v in card.items() if k not in ("queries", "query_field", "data")}
    rec_card.update(data={**dict(groups.stats), "groups": len(groups.y), "rows": int(sum(len(y) for y in groups.y))},
                    metrics=metrics, labels="1 for each article the shopper bought in the window",
                    negatives="the other candidates of the recommendation blend's top-N for the shopper at the cutoff")
    save_model(path, "lambdarank", "recommend", list(RECOMMEND_FEATURES), rec_card, booster=booster)
    return path


def register(sub: Any) -> None:
    d = TrainOptions()
    p = sub.add_parser("train-ranker", help="learn the search ranking from purchases or the click log",
                       description="Train a learned ranker (LightGBM lambdarank or a logistic click model) over the "
                                   "features the engine computes, and write it with its model card.")
    p.add_argument("--source", default=d.source, choices=("purchases", "log"))
    p.add_argument("--kind", default=d.kind, choices=("lambdarank", "logistic"))
    p.add_argument("--until", default=d.until, help="read nothing from this day on (YYYY-MM-DD)")
    p.add_argument("--months", type=int, default=d.months, help="purchases: months per training window")
    p.add_argument("--windows", type=int, default=d.windows, help="purchases: training windows before --until")
    p.add_argument("--query-field", default=d.query_field)
    p.add_argument("--candidates", type=int, default=0, help="top-N of the blend per search (0: [ranker])")
    p.add_argument("--out", type=Path, help="model file (default <data dir>/models/ranker-<kind>-<until>.json)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--recommend", action="store_true", help="purchases: also train the recommendations ranker")
    p.set_defaults(func=run)


def options(args: argparse.Namespace) -> TrainOptions:
    try:
        datetime.strptime(args.until, "%Y-%m-%d")
    except ValueError as e:
        raise BadInput("--until must be a day as YYYY-MM-DD", f"got {args.until!r}") from e
    if args.months < 1 or args.windows < 1:
        raise BadInput("--months and --windows must be >= 1")
    return TrainOptions(source=args.source, kind=args.kind, until=args.until, months=args.months,
                        windows=args.windows, query_field=args.query_field, candidates=args.candidates,
                        out=args.out, seed=args.seed, recommend=args.recommend)


def run(cfg: Config, args: argparse.Namespace) -> int:
    path, card = train(cfg, options(args))
    print(json.dumps({"model": str(path), "version": card["version"], "data": card["data"],
                      "metrics": {k: v for k, v in card["metrics"].items() if k != "params"}}, indent=1))
    return 0
