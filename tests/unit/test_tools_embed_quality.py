"""`rscf bench embeddings`' check of the shipped classifier on another backend's vectors (pure numpy)."""

from __future__ import annotations

import numpy as np

from tools.embed_quality import shipped_accuracy


def _save(path, labels, weights):
    np.savez(path, labels=np.array(labels), weights=weights.astype(np.float32),
             bias=np.zeros(len(labels), dtype=np.float32), examples_sha256=np.array("x"))


def test_the_shipped_classifier_is_scored_in_the_benchmarks_label_order(tmp_path):
    """The file stores its labels in its own order; the benchmark's `y` indexes sorted names."""
    x = np.eye(3)  # row i is the vector of an example of class i of the benchmark's names
    names = ("hate", "safe", "violence")
    y = np.array([0, 1, 2])
    stored = ("safe", "violence", "hate")  # column j of the weights scores stored[j]
    weights = np.zeros((3, 3))
    for i, name in enumerate(names):
        weights[i, stored.index(name)] = 5.0
    _save(tmp_path / "m.npz", stored, weights)
    assert shipped_accuracy(x, y, names, tmp_path / "m.npz") == 1.0
    assert shipped_accuracy(x, np.array([1, 2, 0]), names, tmp_path / "m.npz") == 0.0  # wrong labels score 0


def test_no_shipped_classifier_is_none_not_a_number(tmp_path):
    assert shipped_accuracy(np.eye(2), np.array([0, 1]), ("a", "b"), tmp_path / "absent.npz") is None
