"""`rscf bench vectors`: the Redis vector set at 10k and 100k passages: latency and recall.

Why (issue #14): retrieval runs once per RAG prompt; at stream rates the round trips, not the
search, dominate. This measures, against the stack's Redis (a scratch key, deleted after):
- recall@3 of `VSIM` against exact search (numpy, same vectors), for the job's settings
  (Q8 quantisation, default HNSW M=16) and the query EF (default, 200, 500); and how often the
  passage that answers each of the 60 retrieval questions is in the top 3 among the distractors;
- latency per query one at a time (one round trip each, what the gate did before) and in
  pipelines of `batch` queries (what the gate's micro-batch does now).

Corpus: the knowledge base's passages and the retrieval queries embedded with the int8 model,
plus `n` synthetic passages: each a real passage's vector with Gaussian noise (sigma 0.35 per
unit vector, renormalised), so the set is clustered like text and not uniform noise, which
would be an unrealistically hard case for HNSW. Queries: the 60 retrieval questions and 60
prompts of the benchmark mix.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

SCRATCH_KEY = "rscf:bench:vectors"


def corpus(n: int, seed: int = 0):
    from operators.embedding_onnx import default_embedder
    from operators.enrich import read_passages
    from operators.moderation_model import DATA_DIR
    from tools.embed_quality import load_queries
    from tools.prompt_mix import prompt_mix

    embedder = default_embedder()
    passages = list(read_passages([DATA_DIR / "knowledge_base.jsonl"]))
    base = embedder.embed([(p.title + ": " if p.title else "") + p.text for p in passages])
    extra = prompt_mix(300, 0.0, seed=5)  # more text-like anchors for the synthetic passages
    anchors = np.vstack([base, embedder.embed(extra)])
    rng = np.random.default_rng(seed)
    synth = anchors[rng.integers(0, len(anchors), n - len(base))]
    synth = synth + rng.normal(0, 0.35 / np.sqrt(synth.shape[1]), synth.shape).astype(np.float32)
    synth /= np.linalg.norm(synth, axis=1, keepdims=True)
    vectors = np.vstack([base, synth]).astype(np.float32)
    known = load_queries()
    queries = embedder.embed([q for q, _ in known] + prompt_mix(60, 0.0, seed=9))
    ids = [p.id for p in passages]
    answers = [ids.index(expected) for _, expected in known]  # row of the passage answering query i
    return vectors, queries, answers


def run(sizes=(10_000, 100_000), k: int = 3, batch: int = 64, progress=None, efs=(None, 200, 500)) -> dict:
    from operators.vector_index import RedisVectorSetIndex
    from rscf import redis_security

    client = redis_security.client(redis_security.ADMIN, socket_timeout=30)  # a scratch key: not the job's
    out = {}
    for n in sizes:
        vectors, queries, answers = corpus(n)
        index = RedisVectorSetIndex(client, key=SCRATCH_KEY)
        index.clear()
        try:
            t0 = time.perf_counter()
            for start in range(0, n, 250):  # small pipelines: Redis is single-threaded and shared
                if progress and start % 10_000 == 0:
                    progress(f"{n}: adding {start}/{n}")
                index.add([f"p{i}" for i in range(start, min(n, start + 250))], vectors[start:start + 250],
                          [{} for _ in range(start, min(n, start + 250))])
            add_s = time.perf_counter() - t0
            exact = [set(np.argsort(-(vectors @ q))[:k].tolist()) for q in queries]
            exact_answer = statistics.fmean(a in e for a, e in zip(answers, exact))
            rows = {}
            for ef in efs:
                index.ef = ef
                single, found = [], []
                for q in queries:
                    t = time.perf_counter()
                    hits = index.search(q, k)
                    single.append((time.perf_counter() - t) * 1000)
                    found.append({int(h[0][1:]) for h in hits})
                t = time.perf_counter()
                for start in range(0, len(queries), batch):
                    index.search_many(queries[start:start + batch], k)
                piped_ms = (time.perf_counter() - t) * 1000 / len(queries)
                rows[f"ef_{ef or 'default'}"] = {
                    "recall_at_3_vs_exact": round(statistics.fmean(len(f & e) / k for f, e in zip(found, exact)), 4),
                    "answer_in_top_3": round(statistics.fmean(a in f for a, f in zip(answers, found)), 4),
                    "ms_per_query_single_p50": round(statistics.median(single), 3),
                    "ms_per_query_single_p99": round(sorted(single)[int(0.99 * (len(single) - 1))], 3),
                    "ms_per_query_pipelined": round(piped_ms, 3)}
            out[str(n)] = {"passages": n, "add_s": round(add_s, 1), "queries": len(queries),
                           "answer_in_top_3_exact": round(exact_answer, 4), "pipeline_batch": batch,
                           "settings": "Q8, M=16 (default)", "by_ef": rows}
        finally:
            index.clear()
    return out
