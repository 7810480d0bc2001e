"""`vitrina reindex | upsert | delete | info`: build the index, change single items, show what is live."""

from __future__ import annotations

import argparse
import json
from typing import Any

from vitrina.config import Config
from vitrina.errors import BadInput


def register(sub: Any) -> None:
    p = sub.add_parser("reindex", help="build a new collection from the catalogue, then swap the alias to it",
                       description="Encode the whole catalogue into a new versioned collection; resumes an "
                                   "interrupted run; searches use the old collection until the new one is done.")
    p.add_argument("--fresh", action="store_true", help="discard an unfinished reindex instead of resuming it")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="index only the first N catalogue rows")
    p.add_argument("--batch-size", type=int, default=0, metavar="N", help="override [indexer].batch_size")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("upsert", help="add or replace items in the live collection",
                       description="Items in catalogue schema: one JSON object (or list) as the argument, "
                                   "or --file with a JSONL or CSV file.")
    p.add_argument("item", nargs="?", help='JSON, e.g. \'{"id": "9", "title": "Red Shoes", "image": "x.jpg"}\'')
    p.add_argument("--file", help="JSONL or CSV file of items (format by extension)")
    p.set_defaults(func=cmd_upsert)

    p = sub.add_parser("delete", help="delete items from the live collection by id")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("info", help="alias, collections, point counts, image tower status")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)


def cmd_reindex(cfg: Config, args: argparse.Namespace) -> int:
    from indexer.pipeline import reindex

    if args.limit < 0 or args.batch_size < 0:
        raise BadInput("--limit and --batch-size must be >= 0")
    if args.batch_size:
        cfg = cfg.replace(indexer={"batch_size": args.batch_size})
    summary = reindex(cfg, fresh=args.fresh, limit=args.limit, progress=not args.no_progress)
    print("\n".join(summary.lines()))
    return 0


def _print_skips(skipped: list[Any]) -> None:
    for s in skipped:
        print(f"  skipped id {s.id!r}" + (f" (row {s.row})" if s.row else "") + f": {s.reason}")


def cmd_upsert(cfg: Config, args: argparse.Namespace) -> int:
    from indexer.live import parse_items, upsert_products

    products, skipped = parse_items(cfg, text=args.item, file=args.file)
    collection, written = "", 0
    if products:
        collection, written, bad = upsert_products(cfg, products)
        skipped += bad
    print(f"upserted {written} item(s)" + (f" into {collection}" if collection else "") + f", skipped {len(skipped)}")
    _print_skips(skipped)
    return 0 if not skipped else 1


def cmd_delete(cfg: Config, args: argparse.Namespace) -> int:
    from indexer.live import delete_items

    collection, deleted, missing = delete_items(cfg, args.ids)
    print(f"deleted {len(deleted)} item(s) from {collection}")
    if missing:
        print(f"  not found: {', '.join(missing)}")
    return 0 if not missing else 1


def cmd_info(cfg: Config, args: argparse.Namespace) -> int:
    from indexer.live import index_info

    info = index_info(cfg)
    if args.json:
        print(json.dumps(info, indent=1, default=str))
        return 0
    tower = info["image_tower"]
    print(f"config       {info['config']}")
    print(f"store        {info['store']['backend']} {info['store']['path']}")
    print(f"alias        {info['alias']} -> {info['collection'] or '(none: run `vitrina reindex`)'}")
    if info["collection"]:
        print(f"points       {info['points']}")
    for name, c in info["collections"].items():
        mark = "*" if name == info["collection"] else " "
        detail = c.get("error") or f"{c['points']} points, vectors {', '.join(c['vectors'])}"
        print(f"  {mark} {name}  {detail}")
    if tower.get("available"):
        print(f"image tower  trained: {tower.get('checkpoint') or tower.get('pretrained')} ({tower.get('arch')})")
    else:
        print(f"image tower  NOT TRAINED: {tower.get('reason')}")
    if info["reindex_in_progress"]:
        r = info["reindex_in_progress"]
        print(f"unfinished   reindex into {r['collection']}: {r['indexed']} written, {r['skipped']} skipped "
              "(`vitrina reindex` resumes it, --fresh discards it)")
    return 0
