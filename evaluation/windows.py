"""Several purchase windows in one run: the personal and recommend sections per (cutoff, end), then pooled."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, Mapping, Sequence

from evaluation.client import ApiClient, open_client
from evaluation.harness import EvalOptions, report_value, run_evaluation
from evaluation.report import text_table
from vitrina.config import Config
from vitrina.errors import BadInput

WINDOW_SECTIONS = ("personal", "recommend")
BASELINE = "buy_again_then_popular"


def parse_windows(text: str) -> list[tuple[str, str]]:
    """"CUTOFF:END,CUTOFF:END" (days as YYYY-MM-DD, each cutoff before its end) as a list of pairs."""
    out: list[tuple[str, str]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        cutoff, sep, end = part.partition(":")
        try:
            for day in (cutoff, end):
                datetime.strptime(day, "%Y-%m-%d")
        except ValueError as e:
            raise BadInput(f"window {part!r} is not CUTOFF:END",
                           "days as YYYY-MM-DD, e.g. 2020-01-01:2020-05-01") from e
        if not sep or not cutoff < end:
            raise BadInput(f"window {part!r}: the cutoff must be before the end")
        out.append((cutoff, end))
    if not out:
        raise BadInput("--windows needs at least one CUTOFF:END")
    return out


def pool(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-window figures and the pooled ones: warm HR@10 hits with and without the user summed over windows
    (hits = HR@10 x purchases) and their lift; the summed blend MAP@12 over the summed baseline MAP@12."""
    rows: list[dict[str, Any]] = []
    hits_base = hits_user = 0.0
    map_blend = map_base = 0.0
    for r in reports:
        row: dict[str, Any] = {"cutoff": report_value(r, "options", "cutoff"), "end": report_value(r, "options", "end")}
        warm = report_value(r, "personal", "warm")
        if warm and warm.get("purchases"):
            n = int(warm["purchases"])
            base, user = float(warm["base"]["hr@10"]), float(warm["personal"]["hr@10"])
            row.update(warm_purchases=n, hr_base=base, hr_user=user, lift=user / base - 1 if base > 0 else None)
            hits_base += round(base * n)
            hits_user += round(user * n)
        every = report_value(r, "recommend", "all")
        if every and "blend" in every and BASELINE in every:
            blend, baseline = float(every["blend"]["map@12"]), float(every[BASELINE]["map@12"])
            row.update(map_blend=blend, map_baseline=baseline, ratio=blend / baseline if baseline > 0 else None)
            map_blend += blend
            map_base += baseline
        rows.append(row)
    return {
        "windows": rows,
        "pooled": {"warm_hits_base": hits_base, "warm_hits_user": hits_user,
                   "lift": hits_user / hits_base - 1 if hits_base > 0 else None,
                   "map_ratio": map_blend / map_base if map_base > 0 else None},
    }


def run_windows(cfg: Config, opts: EvalOptions, windows: Sequence[tuple[str, str]],
                client: ApiClient | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """run_evaluation once per window (the personal and recommend sections among opts.sections), one client."""
    sections = tuple(s for s in opts.sections if s in WINDOW_SECTIONS) or WINDOW_SECTIONS
    if client is None:
        own = open_client(cfg, opts.url, opts.api_key)
        try:
            return run_windows(cfg, opts, windows, own)
        finally:
            own.close()
    reports = [run_evaluation(cfg, dataclasses.replace(opts, sections=sections, cutoff=c, end=e), client)
               for c, e in windows]
    return reports, pool(reports)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def format_windows(summary: Mapping[str, Any]) -> str:
    """The per-window and pooled figures as an aligned table."""
    rows = [[f"{w['cutoff']}..{w['end']}", w.get("warm_purchases"), w.get("hr_base"), w.get("hr_user"),
             _pct(w.get("lift")), w.get("map_blend"), w.get("map_baseline"), _num(w.get("ratio"), ".2f")]
            for w in summary["windows"]]
    p = summary["pooled"]
    rows.append(["pooled", None, f"{p['warm_hits_base']:.0f} hits", f"{p['warm_hits_user']:.0f} hits",
                 _pct(p["lift"]), None, None, _num(p["map_ratio"], ".2f")])
    return "\n".join(text_table(["window", "warm", "HR@10 base", "HR@10 user", "lift", "MAP blend", "MAP baseline",
                                  "ratio"], rows))
