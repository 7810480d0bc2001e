"""`vitrina evaluate`: runs the report sections through the API, checks the issues' targets, writes JSON + PNG."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from evaluation.client import ApiClient, ApiError, open_client
from evaluation.data import load_catalogue, load_purchases, load_qrels, load_queries
from vitrina.config import Config
from vitrina.errors import BadInput

log = logging.getLogger(__name__)

SECTIONS = ("text", "natural", "image", "personal", "recommend")


@dataclass(frozen=True)
class EvalOptions:
    """What one evaluation run measures; paths left empty are looked up next to the catalogue file."""

    sections: tuple[str, ...] = SECTIONS
    out: Path | None = None  # default: data_dir / "eval"
    url: str | None = None  # a running service; None = the app in-process
    api_key: str | None = None
    limit: int = 0  # most queries / photos / purchases per section (0 = all)
    seed: int = 0
    queries: Path | None = None  # default: queries_dev.csv next to the catalogue
    qrels: Path | None = None  # default: qrels_dev.csv next to the catalogue
    modes: tuple[str, ...] = ("keyword", "text", "image", "vector", "hybrid")
    natural: Path | None = None  # default: evaluation/natural_queries.csv of the repository
    natural_modes: tuple[str, ...] = ("keyword", "text", "vector", "hybrid")
    k: int = 100
    image_queries: int = 500
    image_split: str = "dev"
    image_match: tuple[str, ...] = ("articleType", "gender")
    image_modes: tuple[str, ...] = ("image", "vector")
    robust_queries: int = 300  # dev photos under each alteration of evaluation/alterations.py (0 = none)
    cross_catalogue: Path | None = None  # another shop's config: its photos against this index (None = none)
    cross_queries: int = 300
    transactions: Path | None = None  # default: transactions.csv next to the catalogue
    cutoff: str = "2020-05-01"
    end: str = "2020-06-01"
    personal_query: str = "product_type_name"
    personal_mode: str = "hybrid"
    keep_profiles: bool = False
    chart: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """One target of an issue: a value read from the report, and the least it should reach."""

    name: str
    at_least: float
    read: Callable[[dict[str, Any]], float | None]


def report_value(report: dict[str, Any], *keys: str) -> Any:
    """The value at report[keys[0]][keys[1]]..., or None where a key is missing."""
    node: Any = report
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _vector_margin(r: dict[str, Any]) -> float | None:
    vec, text, img = (report_value(r, "text", "rows", m, "ndcg@10") for m in ("vector", "text", "image"))
    if vec is None or text is None:
        return None
    return vec - max(text, img if img is not None else float("-inf"))


def _natural_margin(metric: str) -> Callable[[dict[str, Any]], float | None]:
    from evaluation.natural import best_single_margin

    return lambda r: best_single_margin(r["natural"], metric) if "rows" in (r.get("natural") or {}) else None


def _robust(r: dict[str, Any], name: str) -> float | None:
    return report_value(r, "image", "robustness", "rows", name, "p@10")


def _worst_single(r: dict[str, Any]) -> float | None:
    rows = report_value(r, "image", "robustness", "rows") or {}
    singles = [v["p@10"] for k, v in rows.items() if k not in {"clean", "combined"} and "p@10" in v]
    return min(singles) if singles else None


TARGETS = (
    Target("text: hybrid NDCG@10", 0.95, lambda r: report_value(r, "text", "rows", "hybrid", "ndcg@10")),
    Target("text: hybrid NDCG@10 (issue 15)", 0.975, lambda r: report_value(r, "text", "rows", "hybrid", "ndcg@10")),
    Target("natural: hybrid P@10 minus best of text, vector, keyword", 0.03, _natural_margin("p@10")),
    Target("natural: hybrid NDCG@10 minus best of text, vector, keyword", 0.03, _natural_margin("ndcg@10")),
    Target("text: keyword NDCG@10", 0.915, lambda r: report_value(r, "text", "rows", "keyword", "ndcg@10")),
    Target("text: vector NDCG@10 minus best of text, image", 0.03, _vector_margin),
    Target("text: image (text->image) NDCG@10", 0.50, lambda r: report_value(r, "text", "rows", "image", "ndcg@10")),
    Target("image query: image mode P@10", 0.90, lambda r: report_value(r, "image", "rows", "image", "p@10")),
    Target("personal: HR@10 lift, shoppers with history", 0.30,
           lambda r: report_value(r, "personal", "warm", "lift_personal")),
    Target("photos (issue 16): clean P@10", 0.80, lambda r: _robust(r, "clean")),
    Target("photos (issue 16): worst single alteration P@10", 0.70, lambda r: _worst_single(r)),
    Target("photos (issue 16): combined alterations P@10", 0.60, lambda r: _robust(r, "combined")),
    Target("photos (issue 16): cross-catalogue P@10", 0.45, lambda r: report_value(r, "image", "cross", "p@10")),
)


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value, whether it is met, and the gap when it is not."""
    out = []
    for t in TARGETS:
        value = t.read(report)
        entry: dict[str, Any] = {"target": t.name, "at_least": t.at_least, "value": value}
        if value is None:
            entry["status"] = "not measured"
        else:
            entry["status"] = "met" if value >= t.at_least else "missed"
            entry["gap"] = max(0.0, t.at_least - value)
        out.append(entry)
    return out


def _next_to_catalogue(cfg: Config, given: Path | None, name: str) -> Path:
    return given if given is not None else Path(cfg.catalogue.path).parent / name


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5, cwd=Path(__file__).resolve().parent.parent)
        return done.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _service_info(client: ApiClient) -> dict[str, Any]:
    try:
        return client.get("/health")
    except ApiError as e:
        return {"error": e.message}


def _text(cfg: Config, opts: EvalOptions, client: ApiClient, catalogue: Any) -> dict[str, Any]:
    from evaluation.text import run_text_report

    queries_path = _next_to_catalogue(cfg, opts.queries, "queries_dev.csv")
    qrels_path = _next_to_catalogue(cfg, opts.qrels, "qrels_dev.csv")
    if not queries_path.is_file() or not qrels_path.is_file():
        return {"skipped": f"no queries/qrels at {queries_path} and {qrels_path}"}
    queries = load_queries(queries_path)
    qrels = load_qrels(qrels_path)
    if opts.limit:
        queries = dict(list(queries.items())[:opts.limit])
    report = run_text_report(client, catalogue, queries, qrels, opts.modes, opts.k, opts.seed,
                             cfg.catalogue.title, cfg.catalogue.keyword_fields)
    return {"queries_file": str(queries_path), "qrels_file": str(qrels_path), **report}


def _natural(cfg: Config, opts: EvalOptions, client: ApiClient, catalogue: Any) -> dict[str, Any]:
    from evaluation.natural import DEFAULT_PATH, load_natural, run_natural_report

    path = opts.natural or DEFAULT_PATH
    if not path.is_file():
        return {"skipped": f"no natural queries at {path}"}
    queries = load_natural(path)
    if opts.limit:
        queries = queries[:opts.limit]
    return {"queries_file": str(path), **run_natural_report(client, catalogue, queries, opts.natural_modes)}


def _image(cfg: Config, opts: EvalOptions, client: ApiClient, catalogue: Any, out: Path) -> dict[str, Any]:
    from evaluation.image import run_image_report, sample_queries

    some_row = next(iter(catalogue.rows.values()), {})
    missing = [f for f in opts.image_match if f not in some_row]
    if missing:
        return {"skipped": f"catalogue has no column(s) {missing} to match photo results on"}
    n = min(opts.image_queries, opts.limit) if opts.limit else opts.image_queries
    queries = sample_queries(catalogue, cfg.catalogue.split, opts.image_split, cfg.catalogue.image, n, opts.seed)
    if not queries:
        return {"skipped": f"no {opts.image_split!r} products with a local image"}
    report = run_image_report(client, catalogue, queries, cfg.catalogue.image, opts.image_match,
                              opts.image_modes, opts.seed, cache=out / "pixels16.npz")
    if opts.robust_queries:
        from evaluation.robustness import run_robustness_report

        few = queries[:min(opts.robust_queries, opts.limit or opts.robust_queries)]
        report["robustness"] = run_robustness_report(client, catalogue, few, cfg.catalogue.image, opts.image_match,
                                                     seed=opts.seed)
    if opts.cross_catalogue is not None:
        report["cross"] = _cross(cfg, opts, client, catalogue)
    return {"split": opts.image_split, "seed": opts.seed, **report}


def _cross(cfg: Config, opts: EvalOptions, client: ApiClient, catalogue: Any) -> dict[str, Any]:
    """Another shop's photos against this index: the type map read in whichever direction fits the two."""
    from evaluation.robustness import TYPE_MAP_FILE, load_type_map, run_cross_report
    from vitrina.config import load_config

    other_cfg = load_config(str(opts.cross_catalogue))
    other = load_catalogue(other_cfg)
    mine, theirs = cfg.catalogue.category, other_cfg.catalogue.category
    forward = load_type_map()
    their_types = {row.get(theirs, "") for row in other.rows.values()}
    type_map = forward if len(their_types & set(forward)) >= len(their_types & set(load_type_map(reverse=True))) \
        else load_type_map(reverse=True)
    split = (other_cfg.catalogue.split, opts.image_split)
    n = min(opts.cross_queries, opts.limit) if opts.limit else opts.cross_queries
    report = run_cross_report(client, catalogue, mine, other, other_cfg.catalogue.image, theirs, type_map, n,
                              seed=opts.seed, other_split=split)
    return {"catalogue": other_cfg.catalogue.path, "type_map": str(TYPE_MAP_FILE), "photo_split": split, **report}


def _personal(cfg: Config, opts: EvalOptions, client: ApiClient, catalogue: Any) -> dict[str, Any]:
    from evaluation.personal import run_personal_report

    path = _next_to_catalogue(cfg, opts.transactions, "transactions.csv")
    if not path.is_file():
        return {"skipped": f"no transactions at {path}"}
    some_row = next(iter(catalogue.rows.values()), {})
    if opts.personal_query not in some_row:
        return {"skipped": f"catalogue has no column {opts.personal_query!r} to make queries from"}
    return {"transactions_file": str(path), **run_personal_report(
        client, catalogue, load_purchases(path), opts.cutoff, opts.end, opts.personal_query,
        mode=opts.personal_mode, limit=opts.limit, keep_profiles=opts.keep_profiles)}


def _recommend(cfg: Config, opts: EvalOptions, client: ApiClient) -> dict[str, Any]:
    try:
        module = importlib.import_module("evaluation.recommend")
    except ModuleNotFoundError as e:
        if e.name == "evaluation.recommend":
            return {"skipped": "evaluation/recommend.py is not part of this build"}
        raise
    wanted = {"end": opts.end, "limit": opts.limit, "keep_profiles": opts.keep_profiles,
              "transactions": opts.transactions}
    accepted = inspect.signature(module.run_recommend_report).parameters
    return module.run_recommend_report(cfg, client, opts.cutoff,
                                       **{k: v for k, v in wanted.items() if k in accepted})


def run_evaluation(cfg: Config, opts: EvalOptions, client: ApiClient | None = None) -> dict[str, Any]:
    """Run the chosen sections and return the report (targets included); writes nothing."""
    unknown = set(opts.sections) - set(SECTIONS)
    if unknown:
        raise BadInput(f"unknown section(s) {sorted(unknown)}", f"choose from {', '.join(SECTIONS)}")
    if client is None:
        own = open_client(cfg, opts.url, opts.api_key)
        try:
            return run_evaluation(cfg, opts, own)
        finally:
            own.close()
    out = opts.out or cfg.data_dir / "eval"
    catalogue = load_catalogue(cfg)
    report: dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": _git_commit(),
        "config": cfg.source, "catalogue": cfg.catalogue.path, "catalogue_rows": len(catalogue.rows),
        "transport": opts.url or "in-process", "service": _service_info(client),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()
                    if k not in {"api_key", "extra"}},
    }
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "text": lambda: _text(cfg, opts, client, catalogue),
        "natural": lambda: _natural(cfg, opts, client, catalogue),
        "image": lambda: _image(cfg, opts, client, catalogue, out),
        "personal": lambda: _personal(cfg, opts, client, catalogue),
        "recommend": lambda: _recommend(cfg, opts, client),
    }
    for name in SECTIONS:
        if name not in opts.sections:
            continue
        start = time.perf_counter()
        log.info("evaluate: section %s", name)
        report[name] = runners[name]()
        report[name].setdefault("seconds", time.perf_counter() - start)
    report["targets"] = check_targets(report)
    return report


def write_report(report: dict[str, Any], out: Path, chart: bool = True) -> list[Path]:
    """evaluate.json (and evaluate.png unless chart=False) under out; returns the paths written."""
    from evaluation.report import draw_chart

    out.mkdir(parents=True, exist_ok=True)
    path = out / "evaluate.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    written = [path]
    if chart:
        written.append(draw_chart(report, out / "evaluate.png"))
    return written
