"""Micro-batches of embeddings across records: the gate's prompts, the orchestrator's outputs.

Why (issue #14): one synchronous call to the embedding service per record, one text at a
time, capped the full path (classifier + RAG) at ~30 prompts/s. A keyed Flink function cannot
hold records of other keys, so each record waits in its own key's state (checkpointed, with its
timer) until a timer at the next `wait_ms` boundary; the boundary is the same for every key, so
the first timer that fires embeds the texts of every key waiting (one call, `prefetch`) and the
others find their vectors in the job's `CachingEmbedder`. A key whose buffer holds `max_batch`
records is flushed at once. After a restore the memory below is empty: each key's timer still
fires and embeds its own texts (a smaller batch, nothing lost).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from operators.moderation_model import chunks
from operators.pii import redact
from rscf.settings import SETTINGS


def moderation_text(text: str) -> str:
    """The text a prompt's (or output's) classifier and RAG embed: with personal data redacted,
    as `operators.moderate.check_text` classifies it (and the gate enriches)."""
    redacted, matches = redact(text)
    return redacted if matches else text


def texts_to_embed(text: str, retrieval: bool = False) -> list[str]:
    """What a text's moderation embeds (its `chunks`) and, for RAG, the whole (moderated) text."""
    text = moderation_text(text)
    parts = chunks(text)
    return parts if not retrieval or parts == [text] else [*parts, text]


@dataclass
class EmbedBatches:
    """Which keys hold buffered records and which texts the next prefetch embeds (memory only)."""

    embedder: Any  # operators.embedding.CachingEmbedder (prefetch) or None: no batching
    max_batch: int
    wait_ms: int
    buffered: dict[Any, int] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)
    cached: int = 0  # texts found in the cache by prefetches (the hit rate's numerator)
    embedded: int = 0  # texts a prefetch had to embed

    @property
    def enabled(self) -> bool:
        return self.embedder is not None and self.max_batch > 1

    def due(self, now_ms: int) -> int:
        """The next `wait_ms` boundary after now: every key waiting now flushes at the same time."""
        step = max(self.wait_ms, 1)
        return (now_ms // step + 1) * step

    def add(self, key: Any, texts: list[str]) -> tuple[bool, bool]:
        """Buffer one record of `key` and the texts it will need embedded.

        Returns (first, full): the key had nothing buffered (register its timer), the key's
        buffer reached `max_batch` (flush it now)."""
        n = self.buffered.get(key, 0) + 1
        self.buffered[key] = n
        self.texts.extend(texts)
        return n == 1, n >= self.max_batch

    def take(self, key: Any) -> None:
        """`key`'s buffer is being flushed: embed everything waiting first."""
        self.buffered.pop(key, None)
        self.prefetch()

    def prefetch(self) -> None:
        if not self.texts or self.embedder is None:
            self.texts.clear()
            return
        texts, self.texts = self.texts, []
        hit = self.embedder.prefetch(texts)
        self.cached += hit
        self.embedded += len(texts) - hit

    def drain_counts(self) -> tuple[int, int]:
        """(cached, embedded) since the last call: for the job's counters."""
        out = (self.cached, self.embedded)
        self.cached = self.embedded = 0
        return out


def prefetch_retrieval(index, embedder, records: list[dict]) -> None:
    """The batch's RAG queries in one pipelined Redis round trip (`PrefetchedIndex`). On an error each
    prompt's own search raises later and the gate records RAG as skipped, as before."""
    texts = [moderation_text(r["prompt"]) for r in records if r.get("modality") == "TEXT"]
    try:
        index.prefetch(embedder.embed(texts), SETTINGS.limits.rag_top_k)
    except Exception:  # noqa: BLE001 - see above
        pass
