"""Small helpers shared by the operators: moderation verdicts, degradations, time conversion, params.

Records are plain dicts as fastavro reads and writes them, so these helpers only
normalise the few fields whose Python shape varies (timestamps come back as
tz-aware datetimes but may be written as int millis).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal, TypedDict

ACTIONS = ("ALLOW", "REDACT", "BLOCK")  # ordered by severity

Stage = Literal["INPUT", "OUTPUT"]
Action = Literal["ALLOW", "REDACT", "BLOCK"]

PARAM_FIELDS = ("max_tokens", "temperature", "top_p", "width", "height", "steps", "seed", "voice")


class ModerationVerdict(TypedDict):
    stage: str
    check: str
    action: str
    score: float
    reason: str


def verdict(stage: Stage, check: str, action: Action, score: float, reason: str) -> ModerationVerdict:
    return {"stage": stage, "check": check, "action": action, "score": float(score), "reason": reason}


class Degradation(TypedDict):
    """A step skipped, replaced or refused because a dependency was down (the `degraded` list of finals)."""

    stage: str  # input_classifier, output_classifier, rag, templates, artifacts
    outcome: str  # skipped, fallback, failed_closed, failed
    dependency: str  # embedding_service, redis, object_storage, classifier
    reason: str


def degradation(stage: str, outcome: str, dependency: str, reason: str) -> Degradation:
    return {"stage": stage, "outcome": outcome, "dependency": dependency, "reason": str(reason)[:200]}


def worst_action(actions: list[str] | tuple[str, ...]) -> Action:
    """The most severe action of several (BLOCK > REDACT > ALLOW); ALLOW for none."""
    best = 0
    for a in actions:
        best = max(best, ACTIONS.index(a))
    return ACTIONS[best]  # type: ignore[return-value]


def to_ms(value: Any) -> int:
    """Millis since the epoch from an int, float or datetime (naive means UTC)."""
    if value is None:
        raise ValueError("timestamp missing")
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return int(value.timestamp() * 1000)
    return int(value)


def full_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """GenerationParams with every field present (None where unset), as the Avro record wants."""
    params = params or {}
    return {name: params.get(name) for name in PARAM_FIELDS}
