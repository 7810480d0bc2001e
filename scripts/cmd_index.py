"""`vitrina reindex | upsert | delete | info`: build the index, change single items, show what is live."""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from typing import Any, Iterator

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

    p = sub.add_parser("upsert", help="add or replace items (through the running service when there is one)",
                       description="Items in catalogue schema: a JSONL or CSV file, or one JSON object (or list) as "
                                   "the argument. With `vitrina serve` running (found from the data dir, or --url) "
                                   "the items go through its API; else they are written here. Either way they are "
                                   "logged first, so a reindex running meanwhile keeps them.")
    p.add_argument("item", nargs="?", metavar="FILE|JSON",
                   help='a JSONL or CSV file, or JSON such as \'{"id": "9", "title": "Red Shoes", "image": "x.jpg"}\'')
    p.add_argument("--file", help="JSONL or CSV file of items (format by extension)")
    _service_options(p)
    p.add_argument("--batch-size", type=int, default=100, metavar="N", help="items per request (default 100)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_upsert)

    p = sub.add_parser("delete", help="delete items by id (through the running service when there is one)")
    p.add_argument("ids", nargs="+", metavar="ID")
    _service_options(p)
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
    from encoders import prepare_query_models

    prepare_query_models(cfg)  # the service's ONNX exports, while torch is loaded here anyway: workers need none
    return 0


def _service_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="the service to write through (default: the one `vitrina serve` runs for this "
                                 "data dir, if any)")
    p.add_argument("--api-key", help="its API key (default $VITRINA_API_KEY, else the first of [web].api_keys)")
    p.add_argument("--local", action="store_true", help="write here even when a service runs (fails while it "
                                                        "holds the embedded store)")


def _target(cfg: Config, args: argparse.Namespace) -> str | None:
    from web.client import find_service

    if args.local and args.url:
        raise BadInput("give --url or --local, not both")
    return None if args.local else find_service(cfg, args.url)


def cmd_upsert(cfg: Config, args: argparse.Namespace) -> int:
    from web.client import (ServiceClient, api_key, count_rows, file_records, in_batches, remote_sender,
                                     summary, text_records)

    if (args.item is None) == (args.file is None):
        raise BadInput("give one item as JSON or a file of items, not both or neither")
    if args.batch_size < 1:
        raise BadInput("--batch-size must be >= 1")
    text = args.item if args.item is not None and args.item.lstrip()[:1] in ("{", "[") else None
    path = args.file or (args.item if text is None else None)
    rows = text_records(text) if text is not None else file_records(cfg, path)
    total = count_rows(path) if path else len(rows)  # type: ignore[arg-type]
    url = _target(cfg, args)
    t0 = time.perf_counter()
    if url:
        client = ServiceClient(url, api_key(cfg, args.api_key))
        results = in_batches(rows, args.batch_size, total, remote_sender(client), not args.no_progress, "upsert")
        where = f"through {url}"
    else:
        with _local_writer(cfg) as writer:
            from indexer.writer import write_items

            results = in_batches(rows, args.batch_size, total,
                                 lambda recs, nums: [r.as_dict() for r in write_items(writer, recs, True, nums)],
                                 not args.no_progress, "upsert")
        where = "here (no service running)"
    lines, failed = summary("upserted", results, where, t0)
    print("\n".join(lines))
    return 1 if failed else 0


def cmd_delete(cfg: Config, args: argparse.Namespace) -> int:
    from web.client import ServiceClient, api_key

    if any(not i.strip() for i in args.ids):
        raise BadInput("give one or more non-empty item ids")
    url = _target(cfg, args)
    if url:
        results = ServiceClient(url, api_key(cfg, args.api_key)).delete(args.ids)
    else:
        with _local_writer(cfg) as writer:
            results = [r.as_dict() for r in writer.delete(args.ids)]
    deleted = [r["id"] for r in results if r["status"] == "deleted"]
    print(f"deleted {len(deleted)} item(s)" + (f" through {url}" if url else ""))
    missing = [r["id"] for r in results if r["status"] == "error"]
    if missing:
        print(f"  not found: {', '.join(missing)}")
    return 0 if not missing else 1


@contextmanager
def _local_writer(cfg: Config) -> Iterator[Any]:
    from indexer.writer import ItemWriter
    from search.store.factory import open_store

    store = open_store(cfg)
    try:
        writer = ItemWriter(cfg, store)
        try:
            yield writer
        finally:
            writer.close()
    finally:
        store.close()


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
    if info["changes"]:
        ch = info["changes"]
        print(f"write log    {ch['entries']} change(s) kept (last seq {ch['last_seq']}), {ch['path']}")
    if info["reindex_in_progress"]:
        r = info["reindex_in_progress"]
        print(f"unfinished   reindex into {r['collection']}: {r['indexed']} written, {r['skipped']} skipped "
              "(`vitrina reindex` resumes it, --fresh discards it)")
    return 0
