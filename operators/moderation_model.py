"""The project's own moderation classifier: MiniLM embeddings + multinomial logistic regression.

Training data is `operators/data/moderation_examples.jsonl` (short labelled
lines: safe, violence, self_harm, hate, sexual, written for this project). The
fitted weights (5 x 384 + bias, ~8 KB) are cached in
`operators/data/moderation_model.npz` together with the SHA-256 of the examples
they were fitted on, so a stale cache is detected. Rebuild with:

    .venv/bin/python -m operators.moderation_model build

The weights are fitted on the embeddings the embedding service serves (int8 ONNX MiniLM when
its export is installed, `operators.embedding_onnx`). Fitting is full-batch gradient descent with L2 in numpy: deterministic, < 1 s
after the ~2 s of embedding the examples.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from operators.embedding import Embedder, TextEmbedder

DATA_DIR = Path(__file__).resolve().parent / "data"
EXAMPLES_PATH = DATA_DIR / "moderation_examples.jsonl"
MODEL_PATH = DATA_DIR / "moderation_model.npz"
SAFE = "safe"
MAX_CHUNK_WORDS = 96  # ~125 word pieces: well inside MiniLM's 256-token window


def chunks(text: str) -> list[str]:
    """What the classifier scores: the text itself when it is one short line, else its lines (long
    ones in windows of MAX_CHUNK_WORDS words).

    Why (issue #14): a long text (an answer carrying its RAG context) was cut at MiniLM's 256
    tokens, so its tail went unchecked, and embedding it cost ~10x a prompt. Lines are scored
    one by one and the worst decides; lines that recur (retrieved passages, boilerplate) are
    embedded once and then come from the job's cache."""
    lines = text.splitlines()
    if len(lines) <= 1 and len(text.split()) <= MAX_CHUNK_WORDS:
        return [text]
    out: list[str] = []
    for line in lines:
        line = line.strip()
        words = line.split()
        if len(words) <= MAX_CHUNK_WORDS:
            if line:
                out.append(line)
            continue
        out.extend(" ".join(words[i:i + MAX_CHUNK_WORDS]) for i in range(0, len(words), MAX_CHUNK_WORDS))
    return out or [text]


def load_examples(path: Path = EXAMPLES_PATH) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                texts.append(row["text"])
                labels.append(row["label"])
    return texts, labels


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_logreg(
    x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1e-3, lr: float = 2.0, epochs: int = 600
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression, class-balanced, full-batch gradient descent. Returns (W, b)."""
    n, d = x.shape
    w = np.zeros((d, n_classes), dtype=np.float64)
    b = np.zeros(n_classes, dtype=np.float64)
    onehot = np.eye(n_classes)[y]
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    sample_w = (n / (n_classes * np.maximum(counts, 1)))[y][:, None]
    for _ in range(epochs):
        p = _softmax(x @ w + b)
        g = (p - onehot) * sample_w / n
        w -= lr * (x.T @ g + l2 * w)
        b -= lr * g.sum(axis=0)
    return w.astype(np.float32), b.astype(np.float32)


@dataclass
class ModerationClassifier:
    labels: tuple[str, ...]
    weights: np.ndarray  # (dim, n_labels)
    bias: np.ndarray  # (n_labels,)
    embedder: TextEmbedder
    block_threshold: float = 0.5

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        return _softmax(self.embedder.embed(texts) @ self.weights + self.bias)

    def classify(self, text: str) -> tuple[str, float, dict[str, float]]:
        """(worst unsafe label, its probability, all probabilities), over the text's `chunks`: the worst one."""
        rows = self.probabilities(chunks(text))
        unsafe_cols = [i for i, label in enumerate(self.labels) if label != SAFE]
        probs = rows[int(rows[:, unsafe_cols].max(axis=1).argmax())]
        by_label = {label: float(p) for label, p in zip(self.labels, probs)}
        unsafe = {k: v for k, v in by_label.items() if k != SAFE}
        worst = max(unsafe, key=unsafe.get)
        return worst, unsafe[worst], by_label

    def save(self, path: Path, examples_sha256: str) -> None:
        np.savez(
            path,
            labels=np.array(self.labels),
            weights=self.weights,
            bias=self.bias,
            examples_sha256=np.array(examples_sha256),
        )


def build(
    embedder: TextEmbedder, examples: Path = EXAMPLES_PATH, out: Path | None = MODEL_PATH
) -> ModerationClassifier:
    texts, labels = load_examples(examples)
    names = tuple(sorted(set(labels)))
    y = np.array([names.index(label) for label in labels])
    w, b = fit_logreg(embedder.embed(texts).astype(np.float64), y, len(names))
    clf = ModerationClassifier(names, w, b, embedder)
    if out is not None:
        clf.save(out, file_sha256(examples))
    return clf


def load(
    embedder: TextEmbedder | None = None, path: Path = MODEL_PATH, examples: Path | None = EXAMPLES_PATH
) -> ModerationClassifier:
    """The cached classifier; refuses a cache fitted on other examples than the ones in the repo."""
    data = np.load(path, allow_pickle=False)
    if examples is not None and str(data["examples_sha256"]) != file_sha256(examples):
        raise ValueError(f"{path.name} is stale: rebuild with `python -m operators.moderation_model build`")
    return ModerationClassifier(
        labels=tuple(str(x) for x in data["labels"]),
        weights=data["weights"],
        bias=data["bias"],
        embedder=embedder or Embedder.shared(),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m operators.moderation_model")
    parser.add_argument("action", choices=["build", "eval"])
    args = parser.parse_args(argv)
    from operators.embedding_onnx import default_embedder

    embedder = default_embedder()  # the embeddings the service serves (int8 ONNX when installed)
    if args.action == "build":
        clf = build(embedder)
        print(f"wrote {MODEL_PATH} labels={','.join(clf.labels)}")
        return 0
    # eval: leave-one-out style check is too slow; 5-fold cross-validation on the examples.
    texts, labels = load_examples()
    names = tuple(sorted(set(labels)))
    y = np.array([names.index(label) for label in labels])
    x = embedder.embed(texts).astype(np.float64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    correct = 0
    for fold in range(5):
        test = order[fold::5]
        train = np.setdiff1d(order, test)
        w, b = fit_logreg(x[train], y[train], len(names))
        correct += int(((x[test] @ w + b).argmax(axis=1) == y[test]).sum())
    print(json.dumps({"examples": len(y), "cv5_accuracy": round(correct / len(y), 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
