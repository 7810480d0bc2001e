"""`vitrina train-ranker`: training groups from purchases or the click log -> a versioned model file with its card."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from evaluation.ranker_fit import TrainOptions, train
from vitrina.config import Config
from vitrina.errors import BadInput


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
