"""What tower training minimises and how dev judges it: the losses (LiT, label head, two views) and metrics."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

# the dev metrics model selection averages; the rob_ ones (altered dev photos) only when training on strong views
METRIC_KEYS = ("t2i_recall@10", "t2i_p@10", "i2i_p@10", "label_acc", "rob_i2i_p@10", "rob_label_acc")


def contrastive_loss(feats: Any, text: Any, text_ids: Any, logit_scale: Any) -> Any:
    """Symmetric InfoNCE between image features and frozen text rows; items with identical texts share
    the target mass instead of being each other's negatives."""
    import torch

    f = torch.nn.functional.normalize(feats.float(), dim=-1)
    logits = logit_scale.exp() * f @ text.T
    same = (text_ids[:, None] == text_ids[None, :]).float()
    target = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                  + torch.nn.functional.cross_entropy(logits.T, target))


def view_contrastive_loss(first: Any, second: Any, temperature: float) -> Any:
    """SimCLR's NT-Xent between two views of each photo: a view's positive is the other view of its photo,
    every other view in the batch (2n - 2 of them) a negative."""
    import torch

    z = torch.nn.functional.normalize(torch.cat([first, second]).float(), dim=-1)
    n = len(first)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return torch.nn.functional.cross_entropy(sim, target)


def label_loss(feats: Any, prototypes: Any, log_scale: Any, labels: Any, smoothing: float = 0.0) -> Any:
    """Cross-entropy of a cosine classifier: one prototype per class in the embedding space itself, so
    learning it also pulls photos of a class together. Rows labelled -1 are ignored."""
    import torch

    known = labels >= 0
    if not bool(known.any()):
        return feats.sum() * 0.0
    f = torch.nn.functional.normalize(feats[known].float(), dim=-1)
    logits = log_scale.exp() * f @ torch.nn.functional.normalize(prototypes, dim=-1).T
    return torch.nn.functional.cross_entropy(logits, labels[known], label_smoothing=smoothing)


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def retrieval_metrics(image_emb: np.ndarray, text_emb: np.ndarray, labels: Sequence[str],
                      k: int = 10) -> dict[str, float]:
    """Dev metrics over n items (rows L2-normalised): text->image Recall@k of the item's own image,
    text->image P@k and image->image P@k (self excluded) where a hit shares the query item's label."""
    n = len(image_emb)
    if n < 2:
        return {"t2i_recall@10": 0.0, "t2i_p@10": 0.0, "i2i_p@10": 0.0}
    lab = np.unique(np.asarray(labels, dtype=object), return_inverse=True)[1]
    k = min(k, n - 1)
    t2i, t2i_p, i2i_p = 0.0, 0.0, 0.0
    for start in range(0, n, 1024):
        rows = np.arange(start, min(n, start + 1024))
        top = _top_k(text_emb[rows] @ image_emb.T, k)
        t2i += float((top == rows[:, None]).any(axis=1).sum())
        t2i_p += float((lab[top] == lab[rows][:, None]).mean(axis=1).sum())
        s = image_emb[rows] @ image_emb.T
        s[np.arange(len(rows)), rows] = -np.inf
        i2i_p += float((lab[_top_k(s, k)] == lab[rows][:, None]).mean(axis=1).sum())
    return {"t2i_recall@10": t2i / n, "t2i_p@10": t2i_p / n, "i2i_p@10": i2i_p / n}


def altered_precision(query_emb: np.ndarray, query_rows: np.ndarray, gallery_emb: np.ndarray,
                      labels: Sequence[str], k: int = 10) -> float:
    """P@k of altered photos searching the clean gallery: a hit shares the label of the query's row, the
    query's own clean photo left out (as a shopper's photo of a product searches the catalogue)."""
    n = len(gallery_emb)
    if n < 2 or not len(query_rows):
        return 0.0
    lab = np.unique(np.asarray(labels, dtype=object), return_inverse=True)[1]
    k = min(k, n - 1)
    s = query_emb @ gallery_emb.T
    s[np.arange(len(query_rows)), query_rows] = -np.inf
    return float((lab[_top_k(s, k)] == lab[query_rows][:, None]).mean())


def label_accuracy(image_emb: np.ndarray, labels: np.ndarray, prototypes: Any) -> float:
    """Share of the labelled rows whose nearest prototype is their class."""
    known = labels >= 0
    if not known.any():
        return 0.0
    protos = prototypes.detach().float().cpu().numpy()
    protos /= np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
    return float(((image_emb[known] @ protos.T).argmax(axis=1) == labels[known]).mean())


def selection_score(metrics: dict[str, float]) -> float:
    """The single number dev model selection maximises: the mean of the dev metrics present (label_acc when a
    head is trained, the rob_ metrics of altered photos when training on strong views)."""
    return float(np.mean([metrics[k] for k in METRIC_KEYS if k in metrics]))
