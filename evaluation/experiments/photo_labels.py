"""How well can the indexed image vectors tell a photo's labels? The ceiling of photo-query P@10, measured.

    python -m evaluation.experiments.photo_labels [--config config.toml] [--k 20] [--epochs 30]
        [--out var/exp/photo-labels]

Photo-query P@10 counts results sharing every [finetune].label_fields value with the query (articleType and
gender for the fashion catalogue), and the label head's boost puts the items it reads first, so P@10 follows how
often the labels are read right. This script reads the image vectors the live collection holds (written by
`vitrina reindex` with the configured tower and [image_encoder] settings) and the train / dev rows of the
catalogue (test rows are dropped by `training_items` before anything else; they are neither queries, neighbours
nor training data), then reports the joint accuracy (every label field right) on dev of:

- `head`: the tower's own label head (what the service uses), and the same on train (how far it overfits);
- `neighbours`: a vote of the --k nearest train photos, weighted exp(cosine / 0.05);
- `head+neighbours`: the mean of the two distributions;
- `linear`, `mlp`: probes trained on the train vectors (AdamW, --epochs, label smoothing 0.1), in case a
  stronger read-out of the same vectors is the lever rather than the vectors themselves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scripts.cmd_finetune import training_items
from search.store.factory import open_store
from vitrina.config import Config, load_config


def indexed_vectors(cfg: Config, ids: set[str]) -> dict[str, np.ndarray]:
    """The image vectors of those items in the collection behind the alias."""
    store = open_store(cfg)
    try:
        collection = store.get_alias(cfg.store.alias) or cfg.store.alias
        return {h.id: np.asarray(h.vectors["image"], dtype=np.float32)
                for h in store.scroll(collection, batch=2000, with_vectors=["image"])
                if h.id in ids and h.vectors.get("image") is not None}
    finally:
        store.close()


def neighbour_votes(queries: np.ndarray, pool: np.ndarray, pool_labels: np.ndarray, classes: int, k: int,
                    temperature: float = 0.05) -> np.ndarray:
    """(n, classes) distribution: the k nearest pool rows' labels, weighted by exp(cosine / temperature)."""
    votes = np.zeros((len(queries), classes))
    for start in range(0, len(queries), 512):
        sims = queries[start:start + 512] @ pool.T
        near = np.argpartition(-sims, k, axis=1)[:, :k]
        for row, cols in enumerate(near):
            np.add.at(votes[start + row], pool_labels[cols], np.exp(sims[row, cols] / temperature))
    return votes / np.maximum(votes.sum(axis=1, keepdims=True), 1e-12)


def probe(train_x: np.ndarray, train_y: np.ndarray, dev_x: np.ndarray, classes: int, hidden: int, epochs: int,
          seed: int = 0) -> np.ndarray:
    """Dev class probabilities of a linear (hidden 0) or one-hidden-layer probe trained on the train vectors."""
    import torch

    torch.manual_seed(seed)
    nn = torch.nn
    model = nn.Linear(train_x.shape[1], classes) if hidden == 0 else nn.Sequential(
        nn.Linear(train_x.shape[1], hidden), nn.GELU(), nn.Dropout(0.3), nn.Linear(hidden, classes))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    x, y = torch.from_numpy(train_x) * 10.0, torch.from_numpy(train_y)  # unit vectors: scaled to useful logits
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for start in range(0, len(x), 256):
            batch = order[start:start + 256]
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(dev_x) * 10.0), dim=1).numpy()


def run(cfg: Config, k: int, epochs: int) -> dict[str, Any]:
    from encoders.image import create_image_encoder

    head = create_image_encoder(cfg).labels
    if head is None:
        raise SystemExit("the configured image tower has no label head (train it with [finetune].label_fields)")
    items, _ = training_items(cfg)
    vectors = indexed_vectors(cfg, {it.id for it in items})
    index = {c: i for i, c in enumerate(head.classes)}
    known = [it for it in items if it.id in vectors and it.label_values in index]
    split = {name: [it for it in known if it.split == name] for name in ("train", "dev")}
    x = {name: np.stack([vectors[it.id] for it in rows]) for name, rows in split.items()}
    y = {name: np.array([index[it.label_values] for it in rows]) for name, rows in split.items()}
    n_cls = len(head.classes)
    head_p = {name: head.probabilities(x[name]) for name in x}
    votes = neighbour_votes(x["dev"], x["train"], y["train"], n_cls, k)
    dists = {"head": head_p["dev"], "neighbours": votes, "head+neighbours": (head_p["dev"] + votes) / 2,
             "linear": probe(x["train"], y["train"], x["dev"], n_cls, 0, epochs),
             "mlp": probe(x["train"], y["train"], x["dev"], n_cls, 1024, epochs)}
    accuracy = {name: float((p.argmax(axis=1) == y["dev"]).mean()) for name, p in dists.items()}
    accuracy["head on train"] = float((head_p["train"].argmax(axis=1) == y["train"]).mean())
    return {"label_fields": list(cfg.finetune.label_fields), "classes": n_cls, "train": len(y["train"]),
            "dev": len(y["dev"]), "k": k, "epochs": epochs, "image_encoder": str(cfg.image_encoder),
            "accuracy": accuracy}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--k", type=int, default=20, help="neighbours that vote (default 20)")
    parser.add_argument("--epochs", type=int, default=30, help="probe training epochs (default 30)")
    parser.add_argument("--out", type=Path, default=None, help="folder for result.json (default var/exp/photo-labels)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    report = run(cfg, args.k, args.epochs)
    out = args.out or cfg.data_dir / "exp" / "photo-labels"
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"{report['train']} train / {report['dev']} dev photos, {report['classes']} label combinations "
          f"({' x '.join(report['label_fields'])})")
    for name, acc in report["accuracy"].items():
        print(f"  {name:<16} {acc:.4f}")
    print(f"wrote {out / 'result.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
