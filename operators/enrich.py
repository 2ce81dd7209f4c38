"""Retrieval-augmented enrichment of TEXT prompts, and the knowledge-base ingest that feeds it.

`enrich` embeds the (sanitised, moderated) prompt, takes the top-k passages from
the vector index above a similarity floor, and prepends as many as fit in the
token budget (most similar first; a passage that does not fit is skipped and a
shorter, less similar one may still fit). Tokens are approximated as
ceil(words * 1.3), which is within ~10% of the MiniLM/SmolLM tokenisers on
English prose and needs no tokenizer in the job. Only tenants with the `rag`
feature pay the ~12 ms embedding; other records pass through unchanged.
Tenant features come from the tenant's policy (ControlEvent broadcast state).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from operators.embedding import Embedder, TextEmbedder
from operators.vector_index import VectorIndex
from rscf.settings import SETTINGS

RAG_FEATURE = "rag"
CONTEXT_HEADER = "Use the following context if it is relevant.\nContext:"
MIN_SCORE = 0.25
MAX_CHUNK_WORDS = 120

__all__ = ["Embedder", "enrich", "ingest_knowledge_base", "approx_tokens", "Passage"]


def approx_tokens(text: str) -> int:
    words = len(text.split())
    return math.ceil(words * 1.3)


def _passage_line(n: int, payload: dict[str, Any]) -> str:
    title = payload.get("title")
    text = " ".join(str(payload.get("text", "")).split())
    return f"[{n}] {title}: {text}" if title else f"[{n}] {text}"


def enrich(
    record: dict[str, Any],
    features: Iterable[str],
    embedder: TextEmbedder,
    index: VectorIndex,
    token_budget: int | None = None,
    k: int | None = None,
    min_score: float = MIN_SCORE,
) -> dict[str, Any]:
    """Copy of `record` whose prompt is prefixed with retrieved context (TEXT + `rag` feature only).

    metadata gains `rag_passages` (comma-separated ids, possibly empty) and
    `rag_tokens` (approximate tokens added) when retrieval ran.
    """
    if RAG_FEATURE not in set(features) or record.get("modality") != "TEXT":
        return record
    budget = SETTINGS.limits.rag_token_budget if token_budget is None else token_budget
    k = SETTINGS.limits.rag_top_k if k is None else k
    prompt = record["prompt"]
    hits = index.search(embedder.embed([prompt])[0], k)

    used = approx_tokens(CONTEXT_HEADER)
    lines: list[str] = []
    ids: list[str] = []
    for id_, score, payload in hits:
        if score < min_score:
            continue
        line = _passage_line(len(lines) + 1, payload)
        cost = approx_tokens(line)
        if used + cost > budget:
            continue
        lines.append(line)
        ids.append(id_)
        used += cost

    out = dict(record)
    metadata = dict(record.get("metadata") or {})
    metadata["rag_passages"] = ",".join(ids)
    metadata["rag_tokens"] = str(used if lines else 0)
    out["metadata"] = metadata
    if lines:
        out["prompt"] = CONTEXT_HEADER + "\n" + "\n".join(lines) + "\n\nRequest: " + prompt
    return out


@dataclass(frozen=True)
class Passage:
    id: str
    text: str
    title: str | None = None
    source: str | None = None

    def payload(self) -> dict[str, Any]:
        data = {"text": self.text}
        if self.title:
            data["title"] = self.title
        if self.source:
            data["source"] = self.source
        return data


def chunk_text(text: str, max_words: int = MAX_CHUNK_WORDS) -> list[str]:
    """Paragraphs (blank-line separated); long ones split at sentence ends into <= max_words chunks."""
    chunks: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para:
            continue
        if len(para.split()) <= max_words:
            chunks.append(para)
            continue
        current: list[str] = []
        for sentence in re.split(r"(?<=[.!?])\s+", para):
            words = sentence.split()
            if current and len(current) + len(words) > max_words:
                chunks.append(" ".join(current))
                current = []
            current.extend(words)
            while len(current) > max_words:  # a single sentence longer than a chunk
                chunks.append(" ".join(current[:max_words]))
                current = current[max_words:]
        if current:
            chunks.append(" ".join(current))
    return chunks


def read_passages(paths: Sequence[str | Path]) -> Iterator[Passage]:
    """Passages from .jsonl files (`{"id", "text", "title"?}` per line) or text/markdown files."""
    for path in map(Path, paths):
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    base = str(row.get("id") or f"{path.stem}:{lineno}")
                    parts = chunk_text(row["text"])
                    for i, part in enumerate(parts):
                        pid = base if len(parts) == 1 else f"{base}#{i}"
                        yield Passage(pid, part, row.get("title"), str(row.get("source") or path.name))
        else:
            for i, part in enumerate(chunk_text(path.read_text(encoding="utf-8"))):
                yield Passage(f"{path.stem}#{i}", part, path.stem, path.name)


def ingest_knowledge_base(
    paths: Sequence[str | Path] | str | Path,
    embedder: TextEmbedder,
    index: VectorIndex,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Chunk, embed and add passages to `index`; returns how many were added."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    total = 0
    batch: list[Passage] = []

    def flush() -> None:
        nonlocal total
        if not batch:
            return
        vectors = embedder.embed([(p.title + ": " if p.title else "") + p.text for p in batch])
        index.add([p.id for p in batch], vectors, [p.payload() for p in batch])
        total += len(batch)
        if progress:
            progress(len(batch))
        batch.clear()

    for passage in read_passages(paths):
        batch.append(passage)
        if len(batch) >= batch_size:
            flush()
    flush()
    return total
