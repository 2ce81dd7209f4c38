"""`rscf bench embeddings`: quality and cost of each embedding backend on the project's own sets.

Why (issue #14): a faster embedding is only worth shipping if moderation and retrieval keep their
quality. For each backend (MiniLM in torch, also in half precision as on a GPU; the int8 ONNX export the
service runs on a CPU) this measures,
in one process, one thread:
- moderation macro-F1 and accuracy: 5-fold cross-validation of the classifier
  (`operators.moderation_model.fit_logreg`) on `operators/data/moderation_examples.jsonl`, and the
  accuracy of the shipped classifier (fitted on the int8 vectors) on this backend's vectors;
- retrieval recall@1 / @3: `operators/data/retrieval_queries.jsonl` (questions written for the
  knowledge base, each with the passage that answers it) over the knowledge base, exact search;
- ms per text at batch 1 and batch 32 (median of 3 passes over the moderation texts);
- for the ONNX backends, ms per text on the batches the service sees in the full-path benchmark
  (8 prompts of `tools.prompt_mix` and 5 echo answers, i.e. reversed prompts, per call): in one
  forward padded to the longest text, and in `length_groups` forwards (what the service runs).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np

from operators.enrich import read_passages
from operators.moderation_model import DATA_DIR, fit_logreg, load_examples
from operators.vector_index import InMemoryIndex

QUERIES_PATH = DATA_DIR / "retrieval_queries.jsonl"


def load_queries(path: Path = QUERIES_PATH) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        return [(row["query"], row["expected"]) for row in map(json.loads, f) if row]


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    scores = []
    for c in range(n_classes):
        tp = int(((y_pred == c) & (y_true == c)).sum())
        fp = int(((y_pred == c) & (y_true != c)).sum())
        fn = int(((y_pred != c) & (y_true == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
    return float(np.mean(scores))


def moderation_quality(embedder, folds: int = 5) -> dict:
    texts, labels = load_examples()
    names = tuple(sorted(set(labels)))
    y = np.array([names.index(label) for label in labels])
    x = embedder.embed(texts).astype(np.float64)
    order = np.random.default_rng(0).permutation(len(y))
    pred = np.empty_like(y)
    for fold in range(folds):
        test = order[fold::folds]
        train = np.setdiff1d(order, test)
        w, b = fit_logreg(x[train], y[train], len(names))
        pred[test] = (x[test] @ w + b).argmax(axis=1)
    return {"examples": len(y), "macro_f1": round(macro_f1(y, pred, len(names)), 3),
            "accuracy": round(float((pred == y).mean()), 3), "shipped_classifier": shipped_accuracy(x, y, names)}


def shipped_accuracy(x: np.ndarray, y: np.ndarray, names: tuple[str, ...], path: Path | None = None) -> float | None:
    """Accuracy on its own examples of the classifier the job ships (`moderation_model.npz`, fitted on the
    int8 CPU vectors) applied to this backend's vectors: what swapping the service's backend (a GPU in
    half precision) does to the decisions without refitting. None when the shipped file is absent."""
    from operators.moderation_model import MODEL_PATH

    path = path or MODEL_PATH
    if not path.exists():
        return None
    data = np.load(path, allow_pickle=False)
    order = [list(str(label) for label in data["labels"]).index(name) for name in names]
    pred = (x @ data["weights"].astype(np.float64) + data["bias"])[:, order].argmax(axis=1)
    return round(float((pred == y).mean()), 3)


def retrieval_quality(embedder) -> dict:
    passages = list(read_passages([DATA_DIR / "knowledge_base.jsonl"]))
    index = InMemoryIndex(embedder.dim)
    index.add([p.id for p in passages], embedder.embed([(p.title + ": " if p.title else "") + p.text
                                                        for p in passages]), [p.payload() for p in passages])
    queries = load_queries()
    vectors = embedder.embed([q for q, _ in queries])
    at1 = at3 = 0
    for vec, (_, expected) in zip(vectors, queries):
        ids = [h[0] for h in index.search(vec, 3)]
        at1 += ids[:1] == [expected]
        at3 += expected in ids
    return {"queries": len(queries), "recall_at_1": round(at1 / len(queries), 3),
            "recall_at_3": round(at3 / len(queries), 3)}


def cost_ms(embedder, texts: list[str]) -> dict:
    out = {}
    for batch in (1, 32):
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            for i in range(0, len(texts), batch):
                embedder.embed(texts[i:i + batch])
            runs.append((time.perf_counter() - t0) / len(texts) * 1000)
        out[f"batch_{batch}"] = round(statistics.median(runs), 2)
    return out


def mixed_batches(n: int = 60, seed: int = 3) -> list[list[str]]:
    """`n` calls of 8 prompts and 5 echo answers: what the service's batcher merges at 400 prompts/s."""
    import random

    from tools.prompt_mix import prompt_mix

    prompts = prompt_mix(n * 13, seed=seed, salt="mixed")
    rng = random.Random(seed)
    return [rng.sample(prompts, 8) + [t[::-1] for t in rng.sample(prompts, 5)] for _ in range(n)]


def grouping_cost_ms(embedder, batches: list[list[str]]) -> dict:
    """ms per text, one forward per call vs the length groups (median of 3 passes)."""
    from operators.embedding_onnx import CALL_COST_TOKENS

    out = {}
    for label, call_cost in (("mixed_one_forward", 1e9), ("mixed_length_groups", CALL_COST_TOKENS)):
        embedder.call_cost_tokens = call_cost
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            for batch in batches:
                embedder.embed(batch)
            runs.append((time.perf_counter() - t0) / sum(map(len, batches)) * 1000)
        out[label] = round(statistics.median(runs), 2)
    embedder.call_cost_tokens = CALL_COST_TOKENS
    return out


def backends(names: list[str]):
    from operators.embedding import Embedder
    from operators.embedding_onnx import LAYERS, OnnxEmbedder, export, is_exported

    for name in names:
        if name == "torch":
            yield name, Embedder(threads=1)
        elif name in ("torch-fp16", "torch-bf16"):  # the GPU backend's precision, measured for quality on CPU
            yield name, Embedder(threads=1, dtype="float16" if name == "torch-fp16" else "bfloat16")
        elif name == "torch-cuda":  # exactly what the service serves on a GPU
            from inference_workers.embedding_service import gpu_present, make_backend

            if not gpu_present():
                raise ValueError("torch-cuda needs a CUDA GPU; torch-fp16 measures its precision on this CPU")
            yield name, make_backend("cuda")[0]
        elif name == "onnx-int8":
            if not is_exported():
                raise FileNotFoundError("no ONNX export: run `python -m operators.embedding_onnx export`")
            yield name, OnnxEmbedder(threads=1)
        elif name.removeprefix("onnx-int8-L").isdigit():  # the first K layers only: exported on first use (~10 s)
            yield name, OnnxEmbedder(export(layers=int(name.removeprefix("onnx-int8-L"))), threads=1)
        else:
            raise ValueError(f"unknown backend {name!r} (torch, torch-fp16, torch-bf16, torch-cuda, onnx-int8, "
                             f"onnx-int8-L1 .. onnx-int8-L{LAYERS})")


def run(names: list[str] = ("torch", "onnx-int8"), progress=None) -> dict:
    texts, _ = load_examples()
    out = {}
    for name, embedder in backends(list(names)):
        if progress:
            progress(name)
        embedder.embed(["warm up"])
        cost = cost_ms(embedder, texts[:96])
        if hasattr(embedder, "call_cost_tokens"):
            cost |= grouping_cost_ms(embedder, mixed_batches())
        out[name] = {"moderation": moderation_quality(embedder), "retrieval": retrieval_quality(embedder),
                     "ms_per_text_one_thread": cost}
    return out


def service_throughput(url: str, n: int = 192, seed: int = 21) -> dict:
    """Texts/s of a running embedding service, fresh texts (no cache hits), three ways of calling it:
    one text per call in sequence (the job before issue #14), the same texts as calls of 64 (the
    gate's micro-batch), and one text per call from 8 threads at once (what the service's batcher
    merges across callers). Answers "batch in the operator or across records in a stage?"."""
    import threading

    from operators.embedding import RemoteEmbedder
    from tools.prompt_mix import prompt_mix

    def fresh(tag: str) -> list[str]:
        return [f"{t} [{tag}-{time.time_ns()}]" for t in prompt_mix(n, 0.0, seed=seed)]

    out = {}
    client = RemoteEmbedder(url=url, timeout_s=60)
    client.embed(["warm up"])
    texts = fresh("single")
    t0 = time.perf_counter()
    for t in texts:
        client.embed([t])
    out["one_per_call"] = round(n / (time.perf_counter() - t0), 1)
    texts = fresh("batch")
    t0 = time.perf_counter()
    for i in range(0, n, 64):
        client.embed(texts[i:i + 64])
    out["calls_of_64"] = round(n / (time.perf_counter() - t0), 1)
    texts = fresh("threads")
    clients = [RemoteEmbedder(url=url, timeout_s=60) for _ in range(8)]

    def work(k: int) -> None:
        for t in texts[k::8]:
            clients[k].embed([t])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out["one_per_call_8_threads"] = round(n / (time.perf_counter() - t0), 1)
    return {"texts_per_s": out, "texts": n, "client_us_per_call": client_cost(url)}


def client_cost(url: str, calls: int = 500, rounds: int = 2) -> dict:
    """CPU and wall microseconds per call of the job's client (`RemoteEmbedder`: http.client, one kept-alive
    connection) against an httpx client doing the same (what the job used before), interleaved in the same run.

    Three texts per call, answered from the service's cache, so the figures are the client's and the
    wire's cost, not the model's: in the TaskManager that CPU is taken from the job's one interpreter lock."""
    import base64
    import socket

    import httpx

    from operators.embedding import RemoteEmbedder

    texts = ["how do I reset my kettle?", "Customer 1: where is my order?", "what is the warranty on the lamp?"]
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    baseline = httpx.Client(timeout=5, transport=httpx.HTTPTransport(socket_options=nodelay))

    def with_httpx() -> None:
        body = baseline.post(f"{url.rstrip('/')}/embed", json={"texts": texts}).json()
        np.frombuffer(base64.b64decode(body["vectors"]), dtype="<f4").reshape(body["n"], body["dim"])

    job_client = RemoteEmbedder(url=url)
    arms = {"http.client (the job's)": lambda: job_client.embed(texts), "httpx (before)": with_httpx}
    samples: dict[str, dict[str, list[float]]] = {name: {"cpu": [], "wall": []} for name in arms}
    for _ in range(rounds):
        for name, call in arms.items():
            call()
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(calls):
                call()
            samples[name]["cpu"].append((time.process_time() - c0) / calls * 1e6)
            samples[name]["wall"].append((time.perf_counter() - w0) / calls * 1e6)
    baseline.close()
    out = {name: {k: round(statistics.median(v)) for k, v in s.items()} for name, s in samples.items()}
    new, old = out["http.client (the job's)"], out["httpx (before)"]
    out["cpu_ratio_before_over_now"] = round(old["cpu"] / max(new["cpu"], 1), 2)
    return out
