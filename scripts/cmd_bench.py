"""`vitrina bench NAME [options]`: runs the benchmark module scripts/bench_NAME.py of this build."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from pathlib import Path
from typing import Any, Sequence

from vitrina.config import Config
from vitrina.errors import BadInput

# A benchmark is a module scripts/bench_<name>.py with `add_arguments(parser)` and `run(cfg, args) -> int`.
# Modules are found by file name and imported only when chosen, so a heavy benchmark never slows the CLI.


def available() -> list[str]:
    """Names of the benchmark modules present in this build (scripts/bench_*.py)."""
    folder = Path(__file__).resolve().parent
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(folder)]) if m.name.startswith("bench_"))


def _load(name: str) -> Any:
    try:
        module = importlib.import_module(f"scripts.bench_{name}")
    except ModuleNotFoundError as e:
        if e.name == f"scripts.bench_{name}":
            raise BadInput(f"no benchmark {name!r}; this build has: {', '.join(available()) or 'none'}") from e
        raise
    if not (hasattr(module, "add_arguments") and hasattr(module, "run")):
        raise BadInput(f"scripts/bench_{name}.py is not a `vitrina bench` module (needs add_arguments and run)")
    return module


def _bench(cfg: Config, args: argparse.Namespace) -> int:
    module = _load(args.name)
    doc = (module.__doc__ or "").strip().splitlines()
    parser = argparse.ArgumentParser(prog=f"vitrina bench {args.name}", description=doc[0] if doc else None)
    module.add_arguments(parser)
    bench_args = parser.parse_args(args.bench_args)
    return int(module.run(cfg, bench_args))


def standalone(name: str, argv: Sequence[str] | None = None) -> int:
    """`python scripts/bench_NAME.py [--config F] [options]`: the same as `vitrina [--config F] bench NAME [options]`."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    from scripts.cli import main

    return main((["--config", known.config] if known.config else []) + ["bench", name, *rest])


def register(subparsers: Any) -> None:
    names = available()
    parser = subparsers.add_parser(
        "bench", help="run a benchmark", description=f"Run a benchmark: {', '.join(names) or 'none available'}. "
        "`vitrina bench NAME --help` lists its options.")
    parser.add_argument("name", metavar="NAME", help=f"one of: {', '.join(names)}")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of that benchmark")
    parser.set_defaults(func=_bench)
