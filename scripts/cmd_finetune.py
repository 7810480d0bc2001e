"""`vitrina finetune`: read the catalogue, hand (image, text, split, label) items to encoders.finetune."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vitrina.config import Config
from vitrina.errors import ConfigError

log = logging.getLogger(__name__)

SPLIT_RULE_HASH = "sha256(id) % 10: 0 test (never read), 1 dev, 2-9 train (no split column in the catalogue)"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("finetune", help="train the image tower (LiT) against frozen text embeddings",
                              description="Train the CLIP image tower on the catalogue's train rows against "
                                          "frozen text-encoder embeddings; select on dev; never reads test.")
    p.add_argument("--epochs", type=int, help="override [finetune].epochs")
    p.add_argument("--batch-size", type=int, help="override [finetune].batch_size")
    p.add_argument("--lr", type=float, help="override [finetune].lr")
    p.add_argument("--max-items", type=int, help="override [finetune].max_train_items (0 = all)")
    p.add_argument("--time-budget", type=float, metavar="MIN", help="override [finetune].time_budget_min")
    p.add_argument("--crop-scale-min", type=float, metavar="AREA", help="override [finetune].crop_scale_min")
    p.add_argument("--erase", type=float, metavar="P", help="override [finetune].erase (random erasing chance)")
    p.add_argument("--label-smoothing", type=float, metavar="EPS", help="override [finetune].label_smoothing")
    p.add_argument("--text-layers", type=int, metavar="N",
                   help="override [finetune].text_layers: also tune the text tower's last N layers (0: locked)")
    p.add_argument("--text-lr", type=float, help="override [finetune].text_lr")
    p.add_argument("--text-mix", type=float, metavar="ALPHA",
                   help="override [finetune].text_mix: write ALPHA x tuned + (1 - ALPHA) x start text layers")
    p.add_argument("--augment", choices=("mild", "strong"), help="override [finetune].augment")
    p.add_argument("--view-weight", type=float, metavar="W",
                   help="override [finetune].view_weight (NT-Xent between two views of each photo; 0: off)")
    p.add_argument("--state-every", type=float, metavar="S", help="override [finetune].state_every_s")
    p.add_argument("--arch", help="override [image_encoder].arch")
    p.add_argument("--also", action="append", type=Path, metavar="CONFIG",
                   help="also train on this other shop's train photos (its config file; repeatable); overrides "
                        "[finetune].also")
    p.add_argument("--from", dest="start_from", metavar="CKPT_OR_TAG",
                   help="start from this checkpoint (vitrina or open_clip file) or open_clip pretrained tag "
                        "instead of [image_encoder].pretrained / random init")
    p.add_argument("--output", help="override [finetune].output")
    pack = p.add_mutually_exclusive_group()
    pack.add_argument("--write-pack", metavar="FILE",
                      help="prepare the train and dev set (photos, text vectors, labels) into one portable file "
                           "and stop, for training on another machine (e.g. a GPU) with --pack")
    pack.add_argument("--pack", metavar="FILE", help="train from a pack written by --write-pack (no catalogue, "
                                                     "photos or text model needed)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue a partial run (error if there is none)")
    group.add_argument("--restart", action="store_true", help="ignore any partial run and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def training_items(cfg: Config) -> tuple[list[Any], dict[str, Any]]:
    """TrainItems for the train and dev rows (test rows are dropped before their image is looked at), then the
    train rows of each [finetune].also catalogue (ids prefixed with its config's name; their dev and test rows,
    which the cross-catalogue check asks, are dropped the same way)."""
    from vitrina.config import load_config

    items, counts = _catalogue_items(cfg, cfg.finetune.label_fields, {"train", "dev"})
    for other_file in cfg.finetune.also:
        if not Path(other_file).is_file():
            raise ConfigError(f"[finetune].also: no config file at {other_file}")
        other = load_config(other_file)
        more, other_counts = _catalogue_items(other, cfg.finetune.label_fields, {"train"},
                                              prefix=f"{Path(other_file).stem}:")
        log.info("also %s: %s", other_file, other_counts)
        items += more
        counts.setdefault("also", {})[str(other_file)] = {**other_counts, "catalogue": other.catalogue.path,
                                                          "train_items": len(more)}
    return items, counts


def _catalogue_items(cfg: Config, labels: Sequence[str], splits: set[str], prefix: str = ""
                     ) -> tuple[list[Any], dict[str, Any]]:
    from encoders.train_data import TrainItem, split_of
    from indexer.reader import Product, image_source, read_catalogue

    items: list[TrainItem] = []
    excluded = "_and_".join(sorted({"train", "dev", "test"} - splits)) + "_excluded"  # test_excluded, ...
    counts = {"products": 0, "reader_skipped": 0, excluded: 0, "no_local_image": 0, "hash_split": 0}
    for row in read_catalogue(cfg):
        if not isinstance(row, Product):
            counts["reader_skipped"] += 1
            continue
        counts["products"] += 1
        split = split_of(row.split, row.id)
        counts["hash_split"] += not row.split
        if split not in splits:
            counts[excluded] += 1
            continue
        source = image_source(cfg, row)
        if not source or source.lower().startswith(("http://", "https://")):
            counts["no_local_image"] += 1  # training reads local files only
            continue
        values = tuple(str(row.attributes.get(f, "")) for f in labels)
        label = "|".join(values) if labels else row.category
        items.append(TrainItem(id=prefix + row.id, image=source, text=row.text or row.title, split=split,
                               label=label, label_values=values))
    return items, counts


def with_also(cfg: Config, args: argparse.Namespace) -> Config:
    """cfg with --also (when given) as [finetune].also."""
    if not getattr(args, "also", None):
        return cfg
    return cfg.replace(finetune={"also": tuple(str(p.resolve()) for p in args.also)})


def settings_for(cfg: Config, args: argparse.Namespace) -> Any:
    from encoders.finetune import FinetuneSettings

    ft = cfg.finetune
    given = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "max_train_items": args.max_items,
             "time_budget_min": args.time_budget, "crop_scale_min": args.crop_scale_min, "erase": args.erase,
             "label_smoothing": args.label_smoothing, "text_layers": args.text_layers, "text_lr": args.text_lr,
             "text_mix": args.text_mix, "augment": args.augment, "view_weight": args.view_weight,
             "state_every_s": args.state_every,
             "output": str(Path(args.output).resolve()) if args.output else None}
    return FinetuneSettings(**{
        **dataclasses.asdict(ft), **{k: v for k, v in given.items() if v is not None},
        "arch": args.arch or cfg.image_encoder.arch, "label_fields": tuple(ft.label_fields),
        "start_from": args.start_from if args.start_from is not None else cfg.image_encoder.pretrained,
        "device": cfg.runtime.device, "threads": cfg.runtime.threads, "bf16": cfg.runtime.bf16})


def lazy_text_encoder(cfg: Config) -> Callable[[list[str]], np.ndarray]:
    """encode(texts) that loads the text tower only when first called (a text cache hit never loads it)."""
    holder: dict[str, Any] = {}

    def encode(texts: list[str]) -> np.ndarray:
        if "enc" not in holder:
            from encoders import create_text_encoder

            holder["enc"] = create_text_encoder(cfg)
        return holder["enc"].encode(texts)
    return encode


def text_model_id(cfg: Config) -> str:
    """What decides the text vectors training caches: the model, its length limit and any tuned layers."""
    from encoders.image import file_sha256

    tc = cfg.text_encoder
    tuned = f"|{file_sha256(tc.tuned_layers)[:16]}" if tc.tuned_layers and Path(tc.tuned_layers).is_file() else ""
    return f"{tc.model}|{tc.max_length}{tuned}"


def tuned_text_side(cfg: Config, layers: int) -> Callable[..., Any]:
    """Builds the text tower's last `layers` layers for training, going on from [text_encoder].tuned_layers."""

    def build(texts: Any, text_ids: Any, device: Any) -> Any:
        from encoders.text import resolve_model_path
        from encoders.text_tuning import TunedTextLayers, load_text_layers

        tc = cfg.text_encoder
        start = load_text_layers(tc.tuned_layers) if tc.tuned_layers else None
        return TunedTextLayers(resolve_model_path(tc.model), texts, text_ids, layers, device,
                               max_length=tc.max_length, start=start)
    return build


def write_pack(cfg: Config, args: argparse.Namespace) -> int:
    """--write-pack: the prepared train and dev set into one file (test rows are never read)."""
    from encoders.image import image_size_of, model_config
    from encoders.train_data import prepare_data
    from encoders.train_pack import write_pack as write

    settings = settings_for(cfg, args)
    items, counts = training_items(cfg)
    log.info("catalogue: %s", counts)
    fields = settings.label_fields if settings.label_weight > 0 else ()
    data = prepare_data(items, image_size_of(model_config(settings.arch)), cfg.data_dir / "finetune" / "cache",
                        lazy_text_encoder(cfg), text_model_id(cfg), fields, settings.max_train_items, settings.seed,
                        settings.workers, not args.no_progress)
    path = write(data, args.write_pack, workers=settings.workers)
    print(f"wrote {path}: {len(data.tr_idx)} train + {len(data.dv_idx)} dev photos, "
          f"{path.stat().st_size / 1e6:.1f} MB; train from it with `vitrina finetune --pack {path}`")
    return 0


def run(cfg: Config, args: argparse.Namespace) -> int:
    from encoders.finetune import finetune
    from encoders.image import card_path, file_sha256

    cfg = with_also(cfg, args)
    if args.write_pack:
        return write_pack(cfg, args)
    output = Path(args.output).resolve() if args.output else Path(cfg.finetune.output)
    if not str(cfg.finetune.output) and not args.output:
        raise ConfigError("set [finetune].output or pass --output")
    settings = settings_for(cfg, args)
    if args.pack:
        from encoders.train_pack import read_pack

        data = read_pack(args.pack)
        items: Any = data
        counts: dict[str, Any] = {"pack": str(args.pack), "pack_sha256": file_sha256(args.pack), "rows": len(data.ids)}
    else:
        items, counts = training_items(cfg)
        log.info("catalogue: %s", counts)
    tc = cfg.text_encoder
    cat_file = Path(cfg.catalogue.path)
    provenance = {
        "trained_on": {
            "catalogue": str(cat_file), "catalogue_sha256": file_sha256(cat_file) if cat_file.is_file() else "",
            "config": cfg.source, "config_sha256": file_sha256(cfg.source) if cfg.source else "",
            "split_rule": SPLIT_RULE_HASH if counts.get("hash_split") else f"catalogue column {cfg.catalogue.split!r}",
            "text_fields": list(cfg.catalogue.text_fields), "label_fields": list(cfg.finetune.label_fields),
            "text_model": tc.model, "text_max_length": tc.max_length, "text_tuned_layers": tc.tuned_layers,
            **counts,
        },
        "command": "vitrina " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "settings_source": dataclasses.asdict(cfg.finetune),
    }
    start_card = card_path(settings.start_from) if settings.start_from else None
    if start_card is not None and start_card.is_file():  # the history behind the start, stage by stage
        provenance["started_from_card"] = json.loads(start_card.read_text(encoding="utf-8"))
    resume = "require" if args.resume else "never" if args.restart else "auto"
    result = finetune(items, lazy_text_encoder(cfg), text_model_id(cfg), settings, output,
                      cfg.data_dir / "finetune", provenance=provenance, resume=resume,
                      progress=not args.no_progress, text_side=tuned_text_side(cfg, settings.text_layers))
    m = result.best_dev_metrics
    print(f"wrote {result.output} (best epoch {result.best_epoch}/{result.epochs_run}; dev t2i R@10 "
          f"{m['t2i_recall@10']:.3f}, t2i P@10 {m['t2i_p@10']:.3f}, i2i P@10 {m['i2i_p@10']:.3f}; "
          f"{result.skipped} images skipped; {result.train_img_per_s:.0f} img/s; {result.wall_s / 60:.1f} min)")
    return 0
