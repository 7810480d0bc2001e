"""The photo-label experiment's neighbour vote, against a hand count."""

from __future__ import annotations

import numpy as np

from evaluation.experiments.photo_labels import neighbour_votes


def test_neighbour_vote_weights_the_k_nearest_by_cosine() -> None:
    pool = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    labels = np.array([0, 1, 1, 2])
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    got = neighbour_votes(query, pool, labels, classes=3, k=2, temperature=0.5)
    w0, w1 = np.exp(1.0 / 0.5), np.exp(0.8 / 0.5)  # rows 0 and 1 are the two nearest; rows 2 and 3 have no vote
    np.testing.assert_allclose(got, [[w0 / (w0 + w1), w1 / (w0 + w1), 0.0]], rtol=1e-5)
    many = neighbour_votes(np.repeat(query, 600, axis=0), pool, labels, classes=3, k=2, temperature=0.5)
    np.testing.assert_allclose(many, np.repeat(got, 600, axis=0), rtol=1e-5)  # across the 512-row blocks
