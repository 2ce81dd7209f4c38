"""Dead letters: what the pipeline cannot process is kept byte for byte, with why and where.

Every dead letter is counted in ``rscf_dead_letters_total{stage,reason}`` so a
spike of one reason (say ``unknown_schema_id`` after a bad deploy) alerts
before anyone reads the topic.

A dead letter must never be larger than its producer may write: one undecodable ~1 MB
prompt made a dead letter above the job sink's ``max.request.size``, the sink failed and
the job restarted in a loop (19 restarts in 40 s, issue #13). `with_claim_check` keeps
such a payload in object storage and leaves a preview and the object's URI in the dead
letter (``payload_status`` claim_check); with object storage down the dead letter still
goes out, with the preview and ``payload_status`` not_kept (its ``error`` says why).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from typing import Any, Protocol

from prometheus_client import Counter

MAX_ERROR_CHARS = 2000
PREVIEW_BYTES = 4096  # of a payload kept in object storage, inline in the dead letter
CLAIM_CHECK_PREFIX = "dead-letters"

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
    tenant_id: str | None = None,
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
        "tenant_id": tenant_id or None,
        "original_size": None,
        "payload_status": "inline",
        "payload_uri": None,
        "failed_at": _now_ms(),
    }


class PayloadStore(Protocol):
    """Where payloads too large for a dead letter are kept (object storage in the job)."""

    def put(self, key: str, data: bytes) -> str:
        """Store `data` under `key`; returns its URI (s3://bucket/key); raises when it cannot."""
        ...


def claim_check_key(dl: dict[str, Any]) -> str:
    """``dead-letters/<yyyy-mm-dd>/<topic>-<partition>-<offset>-<sha256/16>.bin``: the same input dead
    again (a replay after a restore) lands on the same object."""
    failed = dl.get("failed_at")
    day = (failed if isinstance(failed, datetime) else datetime.now(timezone.utc)).strftime("%Y-%m-%d")
    topic = re.sub(r"[^A-Za-z0-9._-]", "_", str(dl.get("source_topic") or "unknown"))
    digest = hashlib.sha256(bytes(dl["original"])).hexdigest()[:16]
    return f"{CLAIM_CHECK_PREFIX}/{day}/{topic}-{dl['source_partition']}-{dl['source_offset']}-{digest}.bin"


def with_claim_check(dl: dict[str, Any], store: PayloadStore | None, preview_bytes: int = PREVIEW_BYTES) -> dict[str, Any]:
    """`dl` with its payload in `store` and only a preview inline (claim check); when the store fails
    (or there is none) the preview still goes out, ``payload_status`` not_kept and ``error`` says why."""
    original = bytes(dl["original"])
    out = dict(dl, original=original[:preview_bytes], original_size=len(original))
    try:
        if store is None:
            raise RuntimeError("no object store configured")
        out.update(payload_status="claim_check", payload_uri=store.put(claim_check_key(dl), original))
    except Exception as exc:  # noqa: BLE001 - object storage down: the dead letter goes out all the same
        note = f" [payload of {len(original)} bytes not kept: object storage unavailable: {type(exc).__name__}: {exc}"
        error = str(dl.get("error") or "")[: MAX_ERROR_CHARS - 400] + note[:398] + "]"
        out.update(payload_status="not_kept", payload_uri=None, error=error)
    return out
