"""Dead letters: what the pipeline cannot process is kept byte for byte, with why and where.

Every dead letter is counted in ``rscf_dead_letters_total{stage,reason}`` so a
spike of one reason (say ``unknown_schema_id`` after a bad deploy) alerts
before anyone reads the topic.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from prometheus_client import Counter

MAX_ERROR_CHARS = 2000

DEAD_LETTERS = Counter(
    "rscf_dead_letters",
    "Records sent to the dead-letter topic, by pipeline stage and stable reason code.",
    ["stage", "reason"],
)


def _now_ms() -> datetime:
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def dead_letter(
    original: bytes | bytearray | memoryview | None,
    *,
    stage: str,
    reason: str,
    error: str,
    source_topic: str,
    source_partition: int,
    source_offset: int,
    request_id: str | None = None,
) -> dict[str, Any]:
    """A DeadLetter record (schemas/dead_letter.avsc) for one failed input, and count it.

    ``error`` is cut to MAX_ERROR_CHARS so one pathological exception cannot bloat the topic;
    partition/offset of -1 mean unknown.
    """
    error = str(error)
    if len(error) > MAX_ERROR_CHARS:
        error = error[: MAX_ERROR_CHARS - 15] + "... [truncated]"
    DEAD_LETTERS.labels(stage=stage, reason=reason).inc()
    return {
        "original": b"" if original is None else bytes(original),
        "source_topic": source_topic,
        "source_partition": int(source_partition),
        "source_offset": int(source_offset),
        "stage": stage,
        "reason": reason,
        "error": error,
        "request_id": request_id,
        "failed_at": _now_ms(),
    }
