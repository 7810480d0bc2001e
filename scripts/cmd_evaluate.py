"""The `vitrina evaluate` subcommand: options to EvalOptions, run, print the table, write JSON + PNG."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from evaluation.harness import SECTIONS, EvalOptions, run_evaluation, write_report
from vitrina.config import Config
from vitrina.errors import BadInput

log = logging.getLogger(__name__)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def register(sub: Any) -> None:
    d = EvalOptions()
    p = sub.add_parser("evaluate", help="measure search quality against qrels, photos and purchases",
                       description="Run the evaluation sections through the search API (in-process by default, "
                                   "or a running service with --url); print a table, write evaluate.json and "
                                   "evaluate.png.")
    p.add_argument("--url", help="evaluate a running service, e.g. http://127.0.0.1:8000 (default: in-process)")
    p.add_argument("--api-key", help="key for feedback writes (default: first configured key)")
    p.add_argument("--out", type=Path, help="output folder (default: <data dir>/eval)")
    p.add_argument("--limit", type=int, default=0, help="at most this many queries/photos/purchases per section")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list from {','.join(SECTIONS)}")
    p.add_argument("--modes", default=",".join(d.modes), help="search modes for the text queries")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--queries", type=Path, help="queries CSV (default: queries_dev.csv next to the catalogue)")
    p.add_argument("--qrels", type=Path, help="qrels CSV (default: qrels_dev.csv next to the catalogue)")
    p.add_argument("--natural", type=Path, help="natural-query CSV (default: evaluation/natural_queries.csv)")
    p.add_argument("--natural-modes", default=",".join(d.natural_modes), help="search modes for the natural queries")
    p.add_argument("--image-queries", type=int, default=d.image_queries, help="photos to sample")
    p.add_argument("--image-split", default=d.image_split, help="split the photos are drawn from")
    p.add_argument("--image-match", default=",".join(d.image_match),
                   help="attributes a photo result must share with the query product to count")
    p.add_argument("--image-modes", default=",".join(d.image_modes))
    p.add_argument("--robust-queries", type=int, default=d.robust_queries,
                   help="dev photos to alter in each way of evaluation/alterations.py (0: skip the robustness check)")
    p.add_argument("--cross-catalogue", type=Path, metavar="CONFIG",
                   help="another shop's config (e.g. configs/hm.toml): its photos searched in this index, relevant "
                        "when the type map (evaluation/hm_fashion_types.json) says same kind")
    p.add_argument("--cross-queries", type=int, default=d.cross_queries, help="photos of the other shop to ask")
    p.add_argument("--transactions", type=Path, help="purchases CSV (default: transactions.csv next to the "
                                                      "catalogue)")
    p.add_argument("--cutoff", default=d.cutoff, help="profiles from purchases before this day (YYYY-MM-DD)")
    p.add_argument("--end", default=d.end, help="later purchases up to (not including) this day")
    p.add_argument("--personal-query", default=d.personal_query, help="catalogue column the queries come from")
    p.add_argument("--personal-mode", default=d.personal_mode)
    p.add_argument("--keep-profiles", action="store_true", help="do not forget the evaluation shoppers after")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG")
    p.add_argument("--record-card", action="store_true",
                   help="write the photo figures (clean, altered, cross-catalogue) into the image tower's model card")
    p.add_argument("--windows", help="CUTOFF:END,CUTOFF:END...: run the personal and recommend sections once per "
                                     "window (instead of --cutoff/--end) and print pooled figures")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    if args.limit < 0 or args.image_queries < 1 or args.robust_queries < 0 or args.cross_queries < 1:
        raise BadInput("--limit and --robust-queries must be >= 0, --image-queries and --cross-queries >= 1")
    if args.cross_catalogue is not None and not args.cross_catalogue.is_file():
        raise BadInput(f"--cross-catalogue: no config file at {args.cross_catalogue}")
    for name in ("cutoff", "end"):
        try:
            datetime.strptime(getattr(args, name), "%Y-%m-%d")
        except ValueError as e:
            raise BadInput(f"--{name} must be a day as YYYY-MM-DD", f"got {getattr(args, name)!r}") from e
    if not args.cutoff < args.end:
        raise BadInput("--cutoff must be before --end", f"got {args.cutoff} and {args.end}")
    if args.image_split == "test":
        log.warning("photo queries from the test split: report these figures, never tune on them")
    return EvalOptions(
        sections=_csv(args.sections), out=args.out, url=args.url, api_key=args.api_key, limit=args.limit,
        seed=args.seed, queries=args.queries, qrels=args.qrels, modes=_csv(args.modes),
        natural=args.natural, natural_modes=_csv(args.natural_modes),
        image_queries=args.image_queries, image_split=args.image_split, image_match=_csv(args.image_match),
        image_modes=_csv(args.image_modes), robust_queries=args.robust_queries, cross_catalogue=args.cross_catalogue,
        cross_queries=args.cross_queries, transactions=args.transactions, cutoff=args.cutoff, end=args.end,
        personal_query=args.personal_query, personal_mode=args.personal_mode,
        keep_profiles=args.keep_profiles, chart=not args.no_chart,
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    from evaluation.report import format_report

    opts = options_from_args(args)
    out = opts.out or cfg.data_dir / "eval"
    if args.windows:
        return _run_windows(cfg, opts, args.windows, out)
    report = {"command": " ".join(["vitrina"] + sys.argv[1:]), **run_evaluation(cfg, opts)}
    written = write_report(report, out, chart=opts.chart)
    if args.record_card:
        written.append(record_in_card(cfg, report))
    print(format_report(report))
    print()
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _run_windows(cfg: Config, opts: EvalOptions, text: str, out: Path) -> int:
    """--windows: each window's report in <out>/<cutoff>_<end>/, the pooled summary in <out>/windows.json."""
    from evaluation.windows import format_windows, parse_windows, run_windows

    windows = parse_windows(text)
    reports, summary = run_windows(cfg, opts, windows)
    command = " ".join(["vitrina"] + sys.argv[1:])
    for (cutoff, end), report in zip(windows, reports):
        write_report({"command": command, **report}, out / f"{cutoff}_{end}", chart=opts.chart)
    out.mkdir(parents=True, exist_ok=True)
    (out / "windows.json").write_text(json.dumps({"command": command, **summary}, indent=2), encoding="utf-8")
    print(format_windows(summary))
    print()
    print(f"wrote {out / 'windows.json'} and a report per window under {out}")
    return 0


def record_in_card(cfg: Config, report: dict[str, Any]) -> Path:
    """Put the report's photo figures into the image tower's model card (key "evaluation"), atomically."""
    from encoders.image import card_path

    image = report.get("image") or {}
    if "rows" not in image:
        raise BadInput("--record-card needs the image section (--sections image)")
    card_file = card_path(cfg.image_encoder.checkpoint)
    if not card_file.is_file():
        raise BadInput(f"--record-card: no model card at {card_file}")
    card = json.loads(card_file.read_text(encoding="utf-8"))
    card["evaluation"] = {
        "created": report.get("created"), "commit": report.get("commit"), "command": report.get("command"),
        "photo_queries": {"split": image.get("split"), "match": image.get("match"), "queries": image.get("queries"),
                          "p@10": {n: r.get("p@10") for n, r in image["rows"].items()}},
        "robustness": {k: v for k, v in (image.get("robustness") or {}).items() if k != "rows"}
        | {"p@10": {n: r["p@10"] for n, r in (image.get("robustness") or {}).get("rows", {}).items()}},
        "cross_catalogue": {k: v for k, v in (image.get("cross") or {}).items() if k not in {"per_type", "asked"}},
    }
    tmp = card_file.with_name(card_file.name + ".tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, card_file)
    return card_file
