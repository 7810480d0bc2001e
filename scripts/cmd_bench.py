"""`vitrina bench NAME [options]`: runs the benchmark module benchmarks/NAME.py of this build."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from typing import Any

import benchmarks
from vitrina.config import Config
from vitrina.errors import BadInput

# A benchmark is a module benchmarks/<name>.py with `add_arguments(parser)` and `run(cfg, args) -> int`.
# Modules are found by file name and imported only when chosen, so a heavy benchmark never slows the CLI.


def available() -> list[str]:
    """Names of the benchmark modules present in this build (benchmarks/*.py)."""
    return sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__)
                  if not m.ispkg and m.name not in benchmarks.HELPERS)


def _load(name: str) -> Any:
    try:
        module = importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"benchmarks.{name}":
            raise BadInput(f"no benchmark {name!r}; this build has: {', '.join(available()) or 'none'}") from e
        raise
    if not (hasattr(module, "add_arguments") and hasattr(module, "run")):
        raise BadInput(f"benchmarks/{name}.py is not a `vitrina bench` module (needs add_arguments and run)")
    return module


def _bench(cfg: Config, args: argparse.Namespace) -> int:
    module = _load(args.name)
    doc = (module.__doc__ or "").strip().splitlines()
    parser = argparse.ArgumentParser(prog=f"vitrina bench {args.name}", description=doc[0] if doc else None)
    module.add_arguments(parser)
    bench_args = parser.parse_args(args.bench_args)
    return int(module.run(cfg, bench_args))


def register(subparsers: Any) -> None:
    names = available()
    parser = subparsers.add_parser(
        "bench", help="run a benchmark", description=f"Run a benchmark: {', '.join(names) or 'none available'}. "
        "`vitrina bench NAME --help` lists its options.")
    parser.add_argument("name", metavar="NAME", help=f"one of: {', '.join(names)}")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of that benchmark")
    parser.set_defaults(func=_bench)
