"""PrefetchedIndex: a batch's queries answered from one round trip; anything else from the index."""

from __future__ import annotations

import numpy as np

from operators.vector_index import InMemoryIndex, PrefetchedIndex


class CountingIndex(InMemoryIndex):
    def __init__(self, dim):
        super().__init__(dim)
        self.single, self.many = 0, 0

    def search(self, vector, k):
        self.single += 1
        return super().search(vector, k)

    def search_many(self, vectors, k):
        self.many += 1
        return [InMemoryIndex.search(self, v, k) for v in vectors]


def test_prefetched_queries_cost_one_round_trip_and_others_go_through():
    inner = CountingIndex(4)
    inner.add(["a", "b"], np.eye(4)[:2], [{"text": "A"}, {"text": "B"}])
    index = PrefetchedIndex(inner)
    queries = np.eye(4, dtype=np.float32)[:2]
    index.prefetch(queries, 1)
    assert [index.search(q, 1)[0][0] for q in queries] == ["a", "b"]
    assert (inner.many, inner.single) == (1, 0)
    index.search(queries[0], 2)  # another k: not prefetched
    index.forget()
    index.search(queries[0], 1)
    assert (inner.many, inner.single) == (1, 2)


def test_vsim_asks_for_the_exploration_factor_only_when_one_is_set():
    from operators.vector_index import RedisVectorSetIndex

    q = np.ones(4, dtype=np.float32)
    assert "EF" not in RedisVectorSetIndex(None)._vsim(q, 3)
    assert RedisVectorSetIndex(None, ef=200)._vsim(q, 3)[-2:] == ("EF", 200)
