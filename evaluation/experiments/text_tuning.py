"""Locked vs lightly tuned text tower, measured: the same `vitrina finetune` run twice from one start.

    VITRINA_TEXT_ENCODER__TUNED_LAYERS= python -m evaluation.experiments.text_tuning [--config config.toml] [--layers 2]
        [--epochs 4] [--out var/exp/text-tuning]

(the empty override compares against stock MiniLM, as measured; without it both arms start from the configured
tuned layers)

Arm `locked` trains the image tower against the locked text tower (what `vitrina finetune` does); arm `tuned`
also trains the text tower's last --layers layers (encoders.text_tuning) at --text-lr. Both start from --from
(default: the shipped tower; the recorded measurement started from the stage-2 tower, shipped then) with the
same settings and seed. Reported per arm: finetune's own dev metrics at its
best epoch, and NDCG@10 / MRR of the dev queries (queries_dev.csv, qrels_dev.csv) ranking the train + dev items by
the query's text vector against their text vectors (`text` mode), image vectors (`image`) and fused vectors
(`vector`, [fusion] weights): with the tuned arm, queries and item texts go through its tuned layers. Test rows are
never read (training_items drops them; they are not candidates).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from evaluation.data import load_qrels, load_queries
from evaluation.metrics import evaluate_run
from scripts.cmd_finetune import lazy_text_encoder, text_model_id, training_items, tuned_text_side
from vitrina.config import Config, load_config

log = logging.getLogger("exp_text_tuning")
METRICS = ("ndcg@10", "mrr")


def settings(cfg: Config, args: argparse.Namespace, layers: int) -> Any:
    from encoders.finetune import FinetuneSettings

    return FinetuneSettings(**{
        **dataclasses.asdict(cfg.finetune), "label_fields": tuple(cfg.finetune.label_fields),
        "epochs": args.epochs, "lr": args.lr, "time_budget_min": 0.0, "patience": 0,
        "arch": cfg.image_encoder.arch, "start_from": args.start_from, "device": cfg.runtime.device,
        "threads": cfg.runtime.threads, "bf16": cfg.runtime.bf16, "text_layers": layers, "text_lr": args.text_lr})


def rankings(queries: np.ndarray, items: np.ndarray, qids: Sequence[str], ids: Sequence[str], k: int = 100
             ) -> dict[str, list[str]]:
    scores = queries @ items.T
    top = np.argsort(-scores, axis=1)[:, :k]
    return {q: [ids[j] for j in row] for q, row in zip(qids, top)}


def query_metrics(cfg: Config, arm: str, out: Path, items: list[Any], text_model: str, layers: int
                  ) -> dict[str, dict[str, float]]:
    """Dev-query NDCG@10 and MRR over the train + dev items for text, image and fused vectors of one arm."""
    import torch

    from encoders import create_text_encoder
    from encoders.fusion import fuse_batch
    from encoders.image import ImageEncoder, image_size_of, load_checkpoint, tower_from_checkpoint
    from encoders.photo import LabelHead
    from encoders.text_tuning import TunedTextLayers, load_text_layers, text_layers_path
    from encoders.train_data import image_cache

    items = [it for it in items if it.split == "train"] + [it for it in items if it.split == "dev"]  # cache order
    folder = Path(cfg.catalogue.path).parent
    queries, qrels = load_queries(folder / "queries_dev.csv"), load_qrels(folder / "qrels_dev.csv")
    qids = [q for q in queries if q in qrels]
    blob = load_checkpoint(out / f"{arm}.pt")
    size = image_size_of(blob["model_config"])
    pixels, ok = image_cache(items, size, cfg.data_dir / "finetune" / "cache", progress=False)
    enc = ImageEncoder(tower_from_checkpoint(blob), size, torch.device("cpu"), labels=LabelHead.from_checkpoint(blob))
    keep = np.flatnonzero(ok)
    ids = [items[i].id for i in keep]
    image = enc.encode_pixels(pixels[keep])
    texts = [items[i].text for i in keep] + [queries[q] for q in qids]
    if layers:
        side = TunedTextLayers(text_model, texts, np.arange(len(texts)), layers, torch.device("cpu"),
                               max_length=cfg.text_encoder.max_length,
                               start=load_text_layers(text_layers_path(out / f"{arm}.pt")))
        vecs = side.embed(np.arange(len(texts)))
    else:
        vecs = create_text_encoder(cfg).encode(texts)
    text, qvec = vecs[:len(keep)], vecs[len(keep):]
    fused = fuse_batch(text, image, cfg.fusion.text_weight, cfg.fusion.image_weight)
    return {mode: evaluate_run(rankings(qvec, vectors, qids, ids), {q: qrels[q] for q in qids}, METRICS)
            for mode, vectors in (("text", text), ("image", image), ("vector", fused))}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="config.toml")
    p.add_argument("--from", dest="start_from", default="models/image_tower.pt")
    p.add_argument("--layers", type=int, default=2, help="text layers tuned in arm `tuned`")
    p.add_argument("--text-lr", type=float, default=2e-5)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--arms", default="locked,tuned")
    p.add_argument("--out", default="var/exp/text-tuning")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from encoders.finetune import finetune
    from encoders.text import resolve_model_path

    cfg = load_config(args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items, _ = training_items(cfg)
    text_model = resolve_model_path(cfg.text_encoder.model)
    report: dict[str, Any] = {"command": "python " + " ".join(sys.argv), "arms": {}}
    for arm in args.arms.split(","):
        layers = args.layers if arm == "tuned" else 0
        s = settings(cfg, args, layers)
        t0 = time.time()
        res = finetune(items, lazy_text_encoder(cfg), text_model_id(cfg), s, out / f"{arm}.pt",
                       cfg.data_dir / "finetune", provenance={"command": report["command"]}, resume="never",
                       text_side=tuned_text_side(cfg, layers))
        minutes = (time.time() - t0) / 60
        report["arms"][arm] = {"text_layers": layers, "minutes": minutes, "best_epoch": res.best_epoch,
                               "train_img_per_s": res.train_img_per_s, "dev": res.best_dev_metrics,
                               "queries": query_metrics(cfg, arm, out, items, text_model, layers)}
        log.info("%s: %s", arm, json.dumps(report["arms"][arm]))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"{'arm':8} {'min':>6} {'t2i R@10':>9} {'t2i P@10':>9} {'i2i P@10':>9} {'label':>6}   "
          "NDCG@10 text / image / vector")
    for arm, r in report["arms"].items():
        d, q = r["dev"], r["queries"]
        print(f"{arm:8} {r['minutes']:6.1f} {d['t2i_recall@10']:9.3f} {d['t2i_p@10']:9.3f} {d['i2i_p@10']:9.3f} "
              f"{d.get('label_acc', 0):6.3f}   {q['text']['ndcg@10']:.4f} / {q['image']['ndcg@10']:.4f} / "
              f"{q['vector']['ndcg@10']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
