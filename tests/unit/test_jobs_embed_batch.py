"""Micro-batch bookkeeping and what a text's moderation and retrieval embed."""

from __future__ import annotations

from jobs.embed_batch import EmbedBatches, texts_to_embed
from operators.moderation_model import MAX_CHUNK_WORDS, chunks


class Prefetcher:
    def __init__(self, known=()):
        self.known, self.calls = set(known), []

    def prefetch(self, texts):
        self.calls.append(list(texts))
        return sum(1 for t in texts if t in self.known)


def test_every_key_waiting_flushes_at_the_same_boundary_and_the_first_flush_embeds_them_all():
    emb = Prefetcher(known={"b"})
    batches = EmbedBatches(emb, max_batch=3, wait_ms=5)
    assert batches.due(1_001) == batches.due(1_004) == 1_005 and batches.due(1_005) == 1_010
    assert batches.add("t1", ["a"]) == (True, False)
    assert batches.add("t2", ["b"]) == (True, False)
    assert batches.add("t1", ["c"]) == (False, False)
    assert batches.add("t1", ["d", "e"]) == (False, True)  # t1 holds max_batch records: flush now
    batches.take("t1")
    assert emb.calls == [["a", "b", "c", "d", "e"]] and batches.drain_counts() == (1, 4)
    batches.take("t2")  # its texts went with t1's flush: nothing left to embed
    assert emb.calls == [["a", "b", "c", "d", "e"]] and batches.add("t1", ["f"]) == (True, False)
    assert not EmbedBatches(None, 64, 5).enabled and not EmbedBatches(emb, 1, 5).enabled


def test_a_short_prompt_is_embedded_once_for_moderation_and_retrieval():
    assert texts_to_embed("how do I pair my lamp", retrieval=True) == ["how do I pair my lamp"]
    redacted = texts_to_embed("mail me at jane@example.com", retrieval=True)
    assert len(redacted) == 1 and "jane@example.com" not in redacted[0]


def test_long_and_multi_line_texts_are_scored_by_lines_and_windows():
    answer = "echo: Use the context.\nContext:\n[1] Lamp: it is bright.\n\nRequest: how bright is it?"
    assert chunks(answer) == ["echo: Use the context.", "Context:", "[1] Lamp: it is bright.", "Request: how bright is it?"]
    assert texts_to_embed(answer, retrieval=True)[-1] == answer  # RAG embeds the whole prompt as well
    long_line = " ".join(f"w{i}" for i in range(MAX_CHUNK_WORDS * 2 + 5))
    parts = chunks(long_line)
    assert [len(p.split()) for p in parts] == [MAX_CHUNK_WORDS, MAX_CHUNK_WORDS, 5]
    assert chunks("  a single line  ") == ["  a single line  "]  # unchanged: the cache key of the prompt itself
