"""Gate: what a tenant's prompt passes before it is routed: moderate, admit, enrich.

Input moderation runs first, so a blocked prompt costs no token; then the tenant's
token bucket (`operators.admit`, kept by the Flink glue in state keyed by tenant);
then RAG enrichment for tenants with the `rag` feature, which degrades to no
context when the embedding service is down. A refusal is a REJECTED final
(`Finished`) that goes on to the orchestrator like any other input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from jobs.envelopes import Admitted, Finished, PromptIn
from operators import correlate
from operators.admit import TenantPolicy, TokenBucket, admit
from operators.enrich import RAG_FEATURE, enrich
from operators.moderate import Moderator, moderate_input

Enricher = Callable[[dict, frozenset[str]], dict]


@dataclass(frozen=True)
class GateResult:
    bucket: TokenBucket | None  # new token bucket state (unchanged when moderation refused)
    out: Admitted | Finished
    counters: tuple[str, ...] = ()


def gate(
    prompt: PromptIn, policy: TenantPolicy, bucket: TokenBucket | None, now_ms: int,
    moderator: Moderator, enricher: Enricher | None = None,
) -> GateResult:
    """Moderate input, then spend a token, then enrich. A blocked prompt costs no token."""
    record = prompt.record
    mod = moderate_input(record["prompt"], policy, moderator.classifier(policy), moderator.blocked_terms)
    verdicts = list(mod.verdicts)
    if mod.blocked:
        state = correlate.finished_early(record, "REJECTED", mod.reason or "moderation", now_ms,
                                         prompt.sanitized_prompt, verdicts)
        return GateResult(bucket, Finished(state, policy.features), ("rejected_moderation",))
    ok, new_bucket, _retry_after = admit(bucket, policy, now_ms)
    if not ok:
        state = correlate.finished_early(record, "REJECTED", "quota_exceeded", now_ms,
                                         prompt.sanitized_prompt, verdicts)
        return GateResult(new_bucket, Finished(state, policy.features), ("rejected_quota",))
    record = dict(record, prompt=mod.prompt)
    counters: tuple[str, ...] = ()
    if enricher is not None and RAG_FEATURE in policy.features and record.get("modality") == "TEXT":
        try:
            record = enricher(record, policy.features)
            counters = ("rag_enriched",)
        except Exception as exc:  # noqa: BLE001 - RAG is an improvement, not a requirement: go on without it
            metadata = dict(record.get("metadata") or {})
            metadata["rag_error"] = f"{type(exc).__name__}: {exc}"[:200]
            record = dict(record, metadata=metadata)
            counters = ("rag_failed",)
    admitted = Admitted(record, prompt.sanitized_prompt, verdicts, policy.tier, policy.features, now_ms)
    return GateResult(new_bucket, admitted, counters)


class EnricherNotReady(RuntimeError):
    pass


def rag_enricher(embedder_source: Callable[[], Any], index) -> Enricher:
    """RAG through the embedding service; raises EnricherNotReady while it is down (gate records why)."""
    def run(record: dict, features: frozenset[str]) -> dict:
        embedder = embedder_source()
        if embedder is None:
            raise EnricherNotReady("embedding service unavailable")
        return enrich(record, features, embedder, index)
    return run
