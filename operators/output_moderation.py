"""Output moderation: the generated text of a successful request, checked before its final records.

The same checks as the input (`operators.moderate`: blocked terms, PII, the classifier for
tenants with the `moderation_model` feature) minus the injection patterns, which describe
prompts, not answers. A BLOCK turns the success into REJECTED with reason
`moderation:<check>` (or `moderation_unavailable` for a tenant whose moderation fails
closed while the classifier is down) and no text (so it costs nothing); a REDACT delivers
the redacted text. The output's verdicts follow the input's in the final records.
"""

from __future__ import annotations

from typing import NamedTuple

from operators.admit import TenantPolicy
from operators.correlate import PendingRequest
from operators.moderate import BlockedTerms, ModerationOutcome, check_text
from operators.records import Degradation, ModerationVerdict


class ModeratedFinal(NamedTuple):
    """What the final records of a finished request say once its output is moderated."""

    status: str
    reason: str | None
    output_text: str | None
    verdicts: list[ModerationVerdict]  # the input's, then the output's
    degraded: tuple[Degradation, ...] = ()  # the input's steps, then the output classifier's


def moderate_output(
    text: str, policy: TenantPolicy | None = None, classifier=None, blocked_terms: BlockedTerms | None = None
) -> ModerationOutcome:
    """Moderate generated text: same checks as the input minus injection patterns."""
    return check_text(text or "", "OUTPUT", policy, classifier, blocked_terms, check_injection=False)


def text_to_moderate(state: PendingRequest) -> str | None:
    """The generated text a finished request delivers (a success's output_text), or None."""
    if state.status != "SUCCEEDED" or not state.result:
        return None
    return state.result.get("output_text") or None


def moderated_final(state: PendingRequest, outcome: ModerationOutcome | None = None) -> ModeratedFinal:
    """Status, reason, text and verdicts of finished `state` with `outcome` (its text's moderation) applied."""
    status, reason = state.status, state.reason
    output_text = (state.result or {}).get("output_text")
    verdicts = list(state.input_verdicts)
    degraded = tuple(state.degraded)
    if outcome is not None:
        verdicts.extend(outcome.verdicts)
        degraded += outcome.degraded
        if status == "SUCCEEDED" and outcome.action == "BLOCK":
            status, reason, output_text = "REJECTED", outcome.reason, None
        elif outcome.action == "REDACT":
            output_text = outcome.prompt
    return ModeratedFinal(status, reason, output_text, verdicts, degraded)
