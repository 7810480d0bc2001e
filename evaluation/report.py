"""Present an evaluation report: a plain-text table for the terminal and a bar chart (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def _fmt(value: Any, width: int = 70) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    text = str(value)
    return text if len(text) <= width else text[:width - 3] + "..."  # the JSON keeps the whole text


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [list(header)] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The report's figures as aligned text tables, one per section, then the targets."""
    out: list[str] = [f"vitrina evaluate: {report.get('catalogue')} ({report.get('catalogue_rows')} rows), "
                      f"via {report.get('transport')}, commit {report.get('commit')}"]
    text = report.get("text")
    if text:
        out.append("")
        if "skipped" in text:
            out.append(f"text queries: skipped ({text['skipped']})")
        else:
            out.append(f"text queries: {text['queries']} queries, k={text['k']}")
            metrics = text["metrics"]
            rows = [[name] + ([r.get(m) for m in metrics] if "error" not in r else ["error: " + r["error"]]
                              + [None] * (len(metrics) - 1)) for name, r in text["rows"].items()]
            out += text_table(["run"] + metrics, rows)
            empty = {n: r["empty"] for n, r in text["rows"].items() if r.get("empty")}
            if empty:
                out.append("  queries with no results: " + ", ".join(f"{n} {c}" for n, c in empty.items()))
    natural = report.get("natural")
    if natural:
        from evaluation.natural import format_natural

        out.append("")
        out += format_natural(natural)
    image = report.get("image")
    if image:
        out.append("")
        if "skipped" in image:
            out.append(f"image queries: skipped ({image['skipped']})")
        else:
            out.append(f"image queries: {image['queries']} {image.get('split')} photos, relevant = same "
                       f"{' + '.join(image['match'])}")
            out += text_table(["run", "P@10"], [[n, r.get("p@10", "error: " + str(r.get("error")))]
                                                for n, r in image["rows"].items()])
            robust = image.get("robustness")
            if robust:
                out.append(f"altered photos ({robust['queries']} of them, {robust['mode']} mode, "
                           f"seed {robust['seed']}, {robust['suite']}):")
                out += text_table(["alteration", "P@10", "failed"], [[n, r["p@10"], r["failed"]]
                                                                    for n, r in robust["rows"].items()])
            cross = image.get("cross")
            if cross:
                out.append(f"another shop's photos ({cross['catalogue']}): P@10 {cross['p@10']:.4f} over "
                           f"{cross['queries']} photos (random {cross['random_p@10']:.4f}); by type: "
                           + ", ".join(f"{t} {v['p@10']:.2f} ({v['queries']})" for t, v in sorted(
                               cross["per_type"].items(), key=lambda kv: -kv[1]["queries"])[:8]))
    personal = report.get("personal")
    if personal:
        out.append("")
        if "skipped" in personal:
            out.append(f"personalisation: skipped ({personal['skipped']})")
        else:
            out.append(f"personalisation: {personal['test_purchases']} purchases {personal['cutoff']}.."
                       f"{personal['end']} (query = {personal['query_field']}, mode {personal['mode']}), "
                       f"{personal['history_events']} history events")
            rows = []
            for group in ("warm", "cold", "all"):
                g = personal[group]
                for name in ("base", "personal", "naive"):
                    if name in g:
                        lift = g.get(f"lift_{name}")
                        rows.append([f"{group} ({g['purchases']}) {name}", g[name]["hr@10"], g[name]["mrr"],
                                     None if lift is None else f"{100 * lift:+.1f}%", g[name].get("hr@depth")])
            out += text_table(["shoppers / run", "HR@10", "MRR", "HR lift", f"HR@{personal['depth']}"], rows)
    recommend = report.get("recommend")
    if recommend:
        out.append("")
        out += _nested("recommendations", recommend)
    out.append("")
    out.append("targets:")
    out += text_table(["target", "at least", "value", "status"],
                      [[t["target"], t["at_least"], t["value"],
                        t["status"] + (f" by {t['gap']:.4f}" if t.get("gap") else "")] for t in report["targets"]])
    return "\n".join(out)


def _is_table(node: Any) -> bool:
    """{row: {column: number}}: a block another section (e.g. recommendations) reports per run."""
    return isinstance(node, dict) and bool(node) and all(
        isinstance(v, dict) and v and all(isinstance(x, (int, float)) or x is None for x in v.values())
        for v in node.values())


def _nested(title: str, section: dict[str, Any]) -> list[str]:
    """A section of unknown shape: its scalars on one line, each {run: {metric: value}} block as a table."""
    if "skipped" in section:
        return [f"{title}: skipped ({section['skipped']})"]
    scalars = {k: v for k, v in section.items() if not isinstance(v, dict) and k != "seconds"}
    lines = [f"{title}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in scalars.items())]
    for key, node in section.items():
        if _is_table(node):
            columns = list(dict.fromkeys(c for row in node.values() for c in row))
            lines += [f"  {key}:"] + ["  " + line for line in text_table(
                ["run"] + columns, [[name] + [row.get(c) for c in columns] for name, row in node.items()])]
        elif isinstance(node, dict):
            lines.append(f"  {key}: {_flat(node)}")
    return lines


def _flat(node: Any, prefix: str = "") -> str:
    if isinstance(node, dict):
        return ", ".join(_flat(v, f"{prefix}{k}.") for k, v in node.items() if k != "seconds")
    return f"{prefix.rstrip('.')}={_fmt(node)}"


def draw_chart(report: dict[str, Any], path: Path) -> Path:
    """One bar panel per measured section (text NDCG@10, photo P@10, HR@10 with and without the user)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, list[str], list[float], float | None]] = []
    text = report.get("text") or {}
    if "rows" in text:
        names = [n for n, r in text["rows"].items() if "ndcg@10" in r]
        panels.append(("Text queries: NDCG@10", names, [text["rows"][n]["ndcg@10"] for n in names], 0.95))
    natural = report.get("natural") or {}
    if "rows" in natural:
        names = [n for n, r in natural["rows"].items() if "p@10" in r]
        panels.append(("Natural queries: P@10", names, [natural["rows"][n]["p@10"] for n in names], None))
    image = report.get("image") or {}
    if "rows" in image:
        names = [n for n, r in image["rows"].items() if "p@10" in r]
        panels.append(("Photo queries: P@10", names, [image["rows"][n]["p@10"] for n in names], 0.90))
    personal = report.get("personal") or {}
    if "warm" in personal:
        w = personal["warm"]
        names = [n for n in ("base", "personal", "naive") if n in w]
        panels.append(("Later purchases, shoppers with history: HR@10", names,
                       [w[n]["hr@10"] for n in names], None))
    recommend = report.get("recommend") or {}
    table = next((v for k, v in recommend.items() if _is_table(v)), None)
    if table:
        metric = next(iter(next(iter(table.values()))))
        names = [n for n, row in table.items() if isinstance(row.get(metric), (int, float))]
        panels.append((f"Recommendations: {metric}", names, [float(table[n][metric]) for n in names], None))
    if not panels:
        panels.append(("nothing measured", [], [], None))
    cols = len(panels) if len(panels) <= 2 else 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, names, values, target) in zip(axes.flat, panels):
        colours = ["#888888" if _is_baseline(report, n) else "#3b6ea5" for n in names]
        bars = ax.bar(range(len(names)), values, color=colours)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(title, fontsize=10)
        for bar, v in zip(bars, values):
            ax.text(bar.get_x() + bar.get_width() / 2, v + 0.01, f"{v:.3f}", ha="center", fontsize=7)
        if target is not None:
            ax.axhline(target, color="#c0392b", linestyle="--", linewidth=1)
    fig.suptitle(f"vitrina evaluate ({Path(str(report.get('catalogue'))).parent.name}, "
                 f"commit {report.get('commit')}); grey = baseline outside vitrina", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _is_baseline(report: dict[str, Any], name: str) -> bool:
    for section in ("text", "image"):
        row = ((report.get(section) or {}).get("rows") or {}).get(name)
        if row is not None:
            return row.get("kind") == "baseline"
    return name == "naive"
