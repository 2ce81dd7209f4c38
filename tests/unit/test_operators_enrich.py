"""RAG enrichment, chunking, ingest and the in-memory vector index."""

import json

import numpy as np
import pytest

from operators.embedding import Embedder
from operators.enrich import (
    CONTEXT_HEADER,
    approx_tokens,
    chunk_text,
    enrich,
    ingest_knowledge_base,
    read_passages,
)
from operators.vector_index import InMemoryIndex

KB = "operators/data/knowledge_base.jsonl"


@pytest.fixture(scope="module")
def embedder():
    return Embedder.shared()


@pytest.fixture(scope="module")
def kb_index(embedder):
    index = InMemoryIndex(embedder.dim)
    assert ingest_knowledge_base(KB, embedder, index) == 30
    return index


def rec(prompt, modality="TEXT"):
    return {"request_id": "r", "modality": modality, "prompt": prompt, "metadata": {"k": "v"}}


def test_in_memory_index_cosine_order_and_replace():
    idx = InMemoryIndex(3)
    idx.add(["a", "b", "c"], np.array([[1, 0, 0], [1, 1, 0], [-1, 0, 0]], dtype=np.float32),
            [{"text": "a"}, {"text": "b"}, {"text": "c"}])
    hits = idx.search(np.array([2.0, 0, 0]), 2)
    assert [h[0] for h in hits] == ["a", "b"]
    assert hits[0][1] == pytest.approx(1.0) and hits[1][1] == pytest.approx(0.7071, abs=1e-3)
    idx.add(["a"], np.array([[0, 0, 1]], dtype=np.float32), [{"text": "a2"}])
    assert idx.count() == 3 and idx.search(np.array([0, 0, 1.0]), 1)[0][2] == {"text": "a2"}
    assert InMemoryIndex(3).search(np.ones(3), 5) == []


def test_embedder_normalised_batch(embedder):
    v = embedder.embed(["one", "two words"])
    assert v.shape == (2, 384) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert embedder.embed([]).shape == (0, 384)


def test_retrieval_finds_the_right_passage(embedder, kb_index):
    hits = kb_index.search(embedder.embed_one("how often should I replace the air purifier filter"), 3)
    assert hits[0][0] == "kb-005"


def test_enrich_adds_context_within_budget(embedder, kb_index):
    prompt = "How long is the warranty and can I return a kettle?"
    for budget in (40, 80, 200):
        out = enrich(rec(prompt), {"rag"}, embedder, kb_index, token_budget=budget, k=5)
        context = out["prompt"].split("\n\nRequest: ")[0]
        added = int(out["metadata"]["rag_tokens"])
        if out["metadata"]["rag_passages"]:
            assert out["prompt"].startswith(CONTEXT_HEADER) and out["prompt"].endswith(prompt)
            assert approx_tokens(context) <= budget and added <= budget
        else:
            assert out["prompt"] == prompt and added == 0
    big = enrich(rec(prompt), {"rag"}, embedder, kb_index, token_budget=200, k=5)
    small = enrich(rec(prompt), {"rag"}, embedder, kb_index, token_budget=60, k=5)
    assert len(big["metadata"]["rag_passages"].split(",")) > len(small["metadata"]["rag_passages"].split(","))
    assert "kb-011" in big["metadata"]["rag_passages"]  # the warranty passage
    assert big["metadata"]["k"] == "v"


def test_budget_too_small_leaves_prompt_alone(embedder, kb_index):
    out = enrich(rec("warranty?"), {"rag"}, embedder, kb_index, token_budget=5)
    assert out["prompt"] == "warranty?" and out["metadata"]["rag_passages"] == ""


def test_enrich_only_for_text_with_rag_feature(embedder, kb_index):
    r = rec("warranty?")
    assert enrich(r, set(), embedder, kb_index) is r
    img = rec("warranty?", modality="IMAGE")
    assert enrich(img, {"rag"}, embedder, kb_index) is img


def test_unrelated_prompt_gets_no_context(embedder, kb_index):
    out = enrich(rec("Translate 'good night' into Japanese"), {"rag"}, embedder, kb_index, token_budget=500)
    assert out["metadata"]["rag_passages"] == ""


def test_chunking_paragraphs_and_long_text(tmp_path):
    assert chunk_text("a b\n\n\n c d \n") == ["a b", "c d"]
    long = " ".join(f"w{i}." for i in range(300))
    chunks = chunk_text(long, max_words=100)
    assert [len(c.split()) for c in chunks] == [100, 100, 100]
    (tmp_path / "notes.md").write_text("First para.\n\nSecond para.\n")
    (tmp_path / "kb.jsonl").write_text(json.dumps({"id": "x", "text": long}) + "\n")
    passages = list(read_passages([tmp_path / "notes.md", tmp_path / "kb.jsonl"]))
    assert [p.id for p in passages][:2] == ["notes#0", "notes#1"]
    assert [p.id for p in passages][2:] == ["x#0", "x#1", "x#2"]
