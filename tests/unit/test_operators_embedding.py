"""The job's embedding cache: each distinct text embedded once, least recently used out first."""

from __future__ import annotations

import numpy as np
import pytest

from operators.embedding import CachingEmbedder, EmbedderUnavailable, VectorCache


class Fake:
    dim = 384

    def __init__(self, fail=False):
        self.calls, self.fail = [], fail

    def embed(self, texts):
        if self.fail:
            raise EmbedderUnavailable("down")
        self.calls.append(list(texts))
        return np.stack([np.full(384, float(len(t)), dtype=np.float32) for t in texts])


def test_each_distinct_text_is_embedded_once_and_rows_keep_their_order():
    inner = Fake()
    emb = CachingEmbedder(inner, VectorCache(10))
    a = emb.embed(["aa", "b", "aa"])
    assert inner.calls == [["aa", "b"]] and a.shape == (3, 384) and list(a[:, 0]) == [2.0, 1.0, 2.0]
    b = emb.embed(["b", "ccc"])
    assert inner.calls == [["aa", "b"], ["ccc"]] and list(b[:, 0]) == [1.0, 3.0]
    assert emb.prefetch(["aa", "b", "dddd"]) == 2 and inner.calls[-1] == ["dddd"]


def test_the_least_recently_used_text_leaves_first():
    inner = Fake()
    emb = CachingEmbedder(inner, VectorCache(2))
    emb.embed(["a", "b"])
    emb.embed(["a"])  # a is now the most recent
    emb.embed(["c"])  # b leaves
    emb.embed(["a", "b"])
    assert inner.calls[-1] == ["b"]


def test_prefetch_swallows_an_outage_and_embed_raises_it_per_text():
    """A cached text is still answered while the service is down; a new one raises for its user to record."""
    inner = Fake()
    emb = CachingEmbedder(inner)
    emb.embed(["known"])
    inner.fail = True
    assert emb.prefetch(["known", "new"]) == 1
    assert emb.embed(["known"]).shape == (1, 384)
    with pytest.raises(EmbedderUnavailable):
        emb.embed(["new"])
