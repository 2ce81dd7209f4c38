"""Moderate: cheap rule checks for everyone, a learned classifier for some (input here; the
generated text goes through the same checks in `operators.output_moderation`).

Checks, in order, each producing a ModerationVerdict dict:
- `blocked_terms`: operator-maintained terms, whole-word, case-insensitive (the
  list is replaceable at run time, e.g. from a control event).
- `injection` (input only): regexes for prompt-injection and jailbreak phrasing
  ("ignore previous instructions", "reveal your system prompt", DAN/developer
  mode role-play, ...).
- `pii`: e-mail, phone, Luhn-valid cards, mod-97-valid IBANs, US SSNs; the
  verdict is REDACT and the outcome carries the redacted text.
- `classifier`: MiniLM embedding + logistic regression (operators.moderation_model).
  When it cannot run (the embedding service is down), every text it skipped says so: an
  ALLOW verdict "classifier unavailable" and a `degraded` entry, or, for a tenant whose
  policy fails closed (`TenantPolicy.moderation_fail_closed`), a BLOCK with reason
  `moderation_unavailable`.

Trade-off: the rule checks cost microseconds per prompt; the classifier costs
one embedding, ~12 ms per prompt on one CPU thread (~3 ms each when batched),
which would cap a single-threaded operator near 80 prompts/s. So it runs only
for tenants whose policy has the `moderation_model` feature (PREMIUM by
default), and not at all once a rule check has already blocked the text. Rules
are precise but narrow; the classifier generalises (paraphrases, other wording)
at the cost of latency and some false positives near its threshold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from operators.admit import TenantPolicy
from operators.pii import redact
from operators.records import Degradation, ModerationVerdict, Stage, degradation, verdict, worst_action

MODEL_FEATURE = "moderation_model"

DEFAULT_BLOCKED_TERMS = (
    "build a bomb",
    "make a bomb",
    "pipe bomb",
    "nerve agent",
    "sarin",
    "csam",
    "child porn",
    "ransomware builder",
    "credit card dump",
    "meth recipe",
)


class BlockedTerms:
    """Whole-word, case-insensitive term matcher; `update` swaps the list atomically."""

    def __init__(self, terms: Iterable[str] = DEFAULT_BLOCKED_TERMS):
        self.update(terms)

    def update(self, terms: Iterable[str]) -> None:
        cleaned = sorted({" ".join(t.lower().split()) for t in terms if t and t.strip()}, key=len, reverse=True)
        self.terms = tuple(cleaned)
        if cleaned:
            alternation = "|".join(r"\s+".join(re.escape(w) for w in t.split(" ")) for t in cleaned)
            self._pattern: re.Pattern[str] | None = re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE)
        else:
            self._pattern = None

    def find(self, text: str) -> list[str]:
        if self._pattern is None:
            return []
        return sorted({" ".join(m.group(0).lower().split()) for m in self._pattern.finditer(text)})


_PREV = r"(?:previous|prior|preceding|above|earlier|former|all|any|your|the|these|those|initial|original)"
_RULES = r"(?:instructions?|prompts?|rules|directions|guidelines|directives|constraints|context|messages?)"
INJECTION_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(rx, re.IGNORECASE))
    for name, rx in (
        ("ignore_instructions", rf"\b(?:ignore|disregard|skip|override)\s+(?:\w+\s+){{0,3}}?{_PREV}\s+(?:\w+\s+){{0,2}}?{_RULES}\b"),
        ("forget_instructions", rf"\bforget\s+(?:everything|all|what)\b.{{0,40}}\b(?:told|said|{_RULES})\b"),
        ("reveal_system_prompt", r"\b(?:reveal|show|print|repeat|output|display|leak|tell me|give me|what (?:is|are|was|were))\b.{0,30}\b(?:system|hidden|initial|original|secret|developer)\s+(?:prompt|instructions?|message|rules)\b"),
        ("repeat_above", r"\brepeat\s+(?:the\s+)?(?:words|text|everything)\s+above\b"),
        ("dan_jailbreak", r"\b(?:DAN|do anything now)\b.{0,60}\b(?:mode|jailbreak|no (?:rules|restrictions|limits)|anything)\b|\bdo anything now\b"),
        ("developer_mode", r"\b(?:developer|god|admin|debug|sudo|unrestricted|jailbreak|jailbroken)\s+mode\b"),
        ("roleplay_no_rules", r"\b(?:pretend|act|role-?play|imagine|behave)\b.{0,60}\b(?:no|without|free from|free of|ignore)\s+(?:any\s+)?(?:restrictions|rules|filters?|limits|limitations|guidelines|censorship|ethics|morals|policies)\b"),
        ("you_are_now", r"\byou\s+are\s+(?:now|no longer)\s+(?:an?\s+)?(?:unfiltered|unrestricted|uncensored|evil|jailbroken|bound by|restricted|free)\b"),
        ("bypass_safety", r"\b(?:bypass|disable|turn off|deactivate|circumvent|switch off)\s+(?:\w+\s+){0,2}(?:safety|content|moderation|security|ethical)\s+(?:filters?|rules|guidelines|policies|settings|checks|protocols)\b"),
        ("fake_system_turn", r"(?:<\|?\s*(?:system|im_start|im_end)\s*\|?>|\[/?(?:system|INST)\]|^\s*#{2,}\s*(?:system|instruction)s?\b|^\s*system\s*:)"),
        ("new_instructions", r"\b(?:new|updated|real|actual)\s+(?:system\s+)?instructions?\s*:"),
        ("jailbreak_word", r"\bjail-?break(?:ing|ed)?\b"),
        ("opposite_day", r"\bfrom now on\b.{0,40}\b(?:no|without|ignore|never refuse|always answer|unfiltered)\b"),
    )
)


def find_injections(text: str) -> list[str]:
    return [name for name, pattern in INJECTION_PATTERNS if pattern.search(text) is not None]


UNAVAILABLE = "moderation_unavailable"  # reason of a refusal by a tenant whose moderation fails closed


@dataclass(frozen=True)
class ModerationOutcome:
    action: str  # ALLOW, REDACT, BLOCK
    prompt: str  # the text to continue with (redacted when action is REDACT)
    verdicts: list[ModerationVerdict] = field(default_factory=list)
    degraded: tuple[Degradation, ...] = ()  # the classifier skipped (fail open) or refusing (fail closed)
    failed_closed: bool = False  # blocked only because the classifier was unavailable

    @property
    def blocked(self) -> bool:
        return self.action == "BLOCK"

    @property
    def reason(self) -> str | None:
        """`moderation:<check>` of the first verdict with the outcome's action, for ContentResult.reason;
        `moderation_unavailable` when the tenant's moderation failed closed."""
        if self.action == "ALLOW":
            return None
        if self.failed_closed and self.action == "BLOCK":
            return UNAVAILABLE
        for v in self.verdicts:
            if v["action"] == self.action:
                return f"moderation:{v['check']}"
        return None


_DEFAULT_TERMS = BlockedTerms()


def check_text(
    text: str,
    stage: Stage,
    policy: TenantPolicy | None,
    classifier,
    blocked_terms: BlockedTerms | None,
    check_injection: bool,
) -> ModerationOutcome:
    """Every check on one text; the classifier only for a tenant whose policy has the `moderation_model` feature."""
    terms = blocked_terms if blocked_terms is not None else _DEFAULT_TERMS
    verdicts: list[ModerationVerdict] = []

    hits = terms.find(text)
    verdicts.append(
        verdict(stage, "blocked_terms", "BLOCK", 1.0, "matched: " + ", ".join(hits))
        if hits
        else verdict(stage, "blocked_terms", "ALLOW", 0.0, "no blocked term")
    )
    if check_injection:
        patterns = find_injections(text)
        verdicts.append(
            verdict(stage, "injection", "BLOCK", 1.0, "patterns: " + ", ".join(patterns))
            if patterns
            else verdict(stage, "injection", "ALLOW", 0.0, "no injection pattern")
        )
    redacted, matches = redact(text)
    if matches:
        kinds = sorted({m.kind for m in matches})
        verdicts.append(verdict(stage, "pii", "REDACT", 1.0, f"redacted {len(matches)}: " + ", ".join(kinds)))
    else:
        verdicts.append(verdict(stage, "pii", "ALLOW", 0.0, "no personal data"))

    already_blocked = any(v["action"] == "BLOCK" for v in verdicts)
    degraded: tuple[Degradation, ...] = ()
    failed_closed = False
    if classifier is not None and policy is not None and MODEL_FEATURE in policy.features and not already_blocked:
        try:
            label, score, _ = classifier.classify(redacted)
        except Exception as exc:  # noqa: BLE001 - the service down (EmbedderUnavailable) or the model failing
            # Recorded on every text it could not check, in the verdicts and in `degraded`; the
            # tenant's policy says whether the rule checks above are enough meanwhile.
            verdicts.append(unavailable_verdict(stage, exc, policy.moderation_fail_closed))
            degraded = (classifier_degradation(stage, exc, policy.moderation_fail_closed),)
            failed_closed = policy.moderation_fail_closed
        else:
            if score >= classifier.block_threshold:
                verdicts.append(verdict(stage, "classifier", "BLOCK", score, f"category: {label}"))
            else:
                verdicts.append(verdict(stage, "classifier", "ALLOW", score, f"highest: {label}"))

    action = worst_action([v["action"] for v in verdicts])
    return ModerationOutcome(action=action, prompt=redacted if matches else text, verdicts=verdicts,
                             degraded=degraded, failed_closed=failed_closed)


def _dependency(exc: Exception) -> str:
    from operators.embedding import EmbedderUnavailable

    return "embedding_service" if isinstance(exc, EmbedderUnavailable) else "classifier"


def unavailable_verdict(stage: Stage, exc: Exception, fail_closed: bool) -> ModerationVerdict:
    """The classifier's verdict when it could not run: ALLOW (fail open) or BLOCK (fail closed), score 0."""
    if fail_closed:
        return verdict(stage, "classifier", "BLOCK", 0.0, f"classifier unavailable, tenant fails closed: {exc}"[:200])
    return verdict(stage, "classifier", "ALLOW", 0.0, f"classifier unavailable: {exc}"[:200])


def classifier_degradation(stage: Stage, exc: Exception, fail_closed: bool) -> Degradation:
    return degradation("input_classifier" if stage == "INPUT" else "output_classifier",
                       "failed_closed" if fail_closed else "skipped", _dependency(exc), f"{type(exc).__name__}: {exc}")


def moderate_input(
    prompt: str, policy: TenantPolicy | None = None, classifier=None, blocked_terms: BlockedTerms | None = None
) -> ModerationOutcome:
    """Moderate a sanitised prompt for the tenant of `policy`."""
    return check_text(prompt, "INPUT", policy, classifier, blocked_terms, check_injection=True)


@dataclass
class Moderator:
    """What the job moderates with: the blocked terms, and the learned classifier once loaded."""

    blocked_terms: BlockedTerms = field(default_factory=BlockedTerms)
    classifier_source: Callable[[], Any] | None = None  # returns the classifier or None (not ready)

    def classifier(self, policy: TenantPolicy):
        """The classifier for this tenant: None without the feature or without a source.

        The source must not answer None while the embedding service is down: the classifier raises
        then (fast, while the service is marked down) and `check_text` records the gap on every
        text. Answering None skipped the classifier with no trace (issue #13: 18 of 21 finals
        during an outage had no record of it, only the one that found the service down did)."""
        if MODEL_FEATURE not in policy.features or self.classifier_source is None:
            return None
        return self.classifier_source()
