"""Vector index for retrieval: one small interface, a Redis 8 vector-set backend and an in-memory one.

Scores are cosine similarities in [-1, 1] for both backends. Redis vector sets
report similarity as (1 + cos) / 2, so the Redis backend converts. Payloads
(passage text, title, source) are stored as the element's JSON attributes
(`SETATTR`) and read back with `VSIM ... WITHATTRIBS`, one round trip per query.
Redis 8.2 syntax used: `VADD key FP32 <blob> <element> [Q8|NOQUANT] SETATTR <json>`,
`VSIM key FP32 <blob> WITHSCORES WITHATTRIBS COUNT k`.
"""

from __future__ import annotations

import json
from typing import Any, Protocol, Sequence

import numpy as np

from rscf.redis_security import KB_KEY  # noqa: F401 - named once there (its ACL users)

Hit = tuple[str, float, dict[str, Any]]


class VectorIndex(Protocol):
    def add(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]) -> None: ...

    def search(self, vector: np.ndarray, k: int) -> list[Hit]: ...

    def count(self) -> int: ...


def _unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(norms == 0, 1.0, norms)


class InMemoryIndex:
    """Exact cosine search with numpy; re-adding an id replaces it."""

    def __init__(self, dim: int):
        self.dim = dim
        self._ids: list[str] = []
        self._pos: dict[str, int] = {}
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._payloads: list[dict[str, Any]] = []

    def add(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]) -> None:
        vectors = _unit(vectors).reshape(len(ids), self.dim)
        if len(payloads) != len(ids):
            raise ValueError("ids and payloads differ in length")
        new_rows = []
        for i, (id_, payload) in enumerate(zip(ids, payloads)):
            if id_ in self._pos:
                self._vectors[self._pos[id_]] = vectors[i]
                self._payloads[self._pos[id_]] = dict(payload)
            else:
                self._pos[id_] = len(self._ids) + len(new_rows)
                new_rows.append((id_, vectors[i], dict(payload)))
        if new_rows:
            self._ids.extend(r[0] for r in new_rows)
            self._vectors = np.vstack([self._vectors, np.stack([r[1] for r in new_rows])])
            self._payloads.extend(r[2] for r in new_rows)

    def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        if not self._ids or k <= 0:
            return []
        scores = self._vectors @ _unit(vector).reshape(self.dim)
        top = np.argsort(-scores, kind="stable")[:k]
        return [(self._ids[i], float(scores[i]), dict(self._payloads[i])) for i in top]

    def count(self) -> int:
        return len(self._ids)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class RedisVectorSetIndex:
    """A Redis 8 vector set (`VADD`/`VSIM`); needs a server with vector sets built in (Redis >= 8.0)."""

    def __init__(self, client, key: str = KB_KEY, quantization: str = "Q8", ef: int | None = None):
        """`ef`: VSIM's exploration factor (None: the server's default); more finds more of the true
        nearest neighbours in a large set at some cost per query (`rscf bench vectors`)."""
        if quantization not in ("Q8", "NOQUANT", "BIN"):
            raise ValueError("quantization must be Q8, NOQUANT or BIN")
        self._client = client
        self.key = key
        self._quant = quantization
        self.ef = ef

    def add(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]) -> None:
        vectors = _unit(vectors)
        pipe = self._client.pipeline(transaction=False)
        for id_, vec, payload in zip(ids, vectors, payloads):
            pipe.execute_command(
                "VADD", self.key, "FP32", vec.astype("<f4").tobytes(), id_, self._quant,
                "SETATTR", json.dumps(payload, ensure_ascii=False),
            )
        pipe.execute()

    def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        if k <= 0:
            return []
        return self._hits(self._client.execute_command(*self._vsim(vector, k)))

    def search_many(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """One round trip for many queries (a pipeline): the gate's micro-batch (issue #14)."""
        if k <= 0 or len(vectors) == 0:
            return [[] for _ in range(len(vectors))]
        pipe = self._client.pipeline(transaction=False)
        for vector in vectors:
            pipe.execute_command(*self._vsim(vector, k))
        return [self._hits(reply) for reply in pipe.execute()]

    def _vsim(self, vector: np.ndarray, k: int) -> tuple:
        blob = _unit(vector).astype("<f4").tobytes()
        ef = ("EF", int(self.ef)) if self.ef else ()
        return ("VSIM", self.key, "FP32", blob, "WITHSCORES", "WITHATTRIBS", "COUNT", int(k), *ef)

    def _hits(self, reply) -> list[Hit]:
        hits: list[Hit] = []
        if isinstance(reply, dict):  # RESP3: {element: [score, attrs]}
            rows = [(el, *vals) for el, vals in reply.items()]
        else:  # RESP2: flat element, score, attrs triples
            rows = [tuple(reply[i : i + 3]) for i in range(0, len(reply or []), 3)]
        for element, score, attrs in rows:
            attrs_text = _text(attrs)
            payload = json.loads(attrs_text) if attrs_text else {}
            hits.append((_text(element), 2.0 * float(_text(score)) - 1.0, payload))
        return hits

    def count(self) -> int:
        return int(self._client.execute_command("VCARD", self.key) or 0)

    def clear(self) -> None:
        self._client.delete(self.key)


class PrefetchedIndex:
    """An index whose answers for a batch of query vectors were fetched at once (`prefetch`, one
    pipelined round trip); other queries go to the index itself. `forget()` after the batch, so a
    changed knowledge base is seen by the next one."""

    def __init__(self, inner):
        self.inner = inner
        self._hits: dict[tuple[bytes, int], list[Hit]] = {}

    def prefetch(self, vectors: np.ndarray, k: int) -> None:
        many = getattr(self.inner, "search_many", None)
        if many is None or len(vectors) == 0:
            return
        for vector, hits in zip(vectors, many(vectors, k)):
            self._hits[(np.asarray(vector, dtype=np.float32).tobytes(), k)] = hits

    def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        hits = self._hits.get((np.asarray(vector, dtype=np.float32).tobytes(), k))
        return [(i, s, dict(p)) for i, s, p in hits] if hits is not None else self.inner.search(vector, k)

    def add(self, ids, vectors, payloads) -> None:
        self.inner.add(ids, vectors, payloads)

    def count(self) -> int:
        return self.inner.count()

    def forget(self) -> None:
        self._hits.clear()
