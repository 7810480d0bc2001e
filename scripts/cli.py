"""The `vitrina` command: parses global options and hands each subcommand to its module."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Callable, Sequence

from vitrina.config import Config, load_config
from vitrina.errors import VitrinaError

# Each module has `register(subparsers)`, which adds its subcommands and sets `func(cfg, args) -> int`.
COMMAND_MODULES = (
    "scripts.cmd_index",  # reindex, upsert, delete, info
    "scripts.cmd_serve",  # serve
    "scripts.cmd_finetune",  # finetune
    "scripts.cmd_evaluate",  # evaluate
    "scripts.cmd_bench",  # bench
    "scripts.cmd_signals",  # rebuild-signals
    "scripts.cmd_ranker",  # train-ranker
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitrina", description="Multimodal product search.")
    parser.add_argument("--config", help="config file (default: $VITRINA_CONFIG, else ./config.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that command is not part of this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func: Callable[[Config, argparse.Namespace], int] = args.func
    try:
        cfg = load_config(args.config)
        return func(cfg, args)
    except VitrinaError as e:
        print(f"vitrina {args.command}: error: {e.message}", file=sys.stderr)
        if e.detail:
            print(f"  {e.detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitrina {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
