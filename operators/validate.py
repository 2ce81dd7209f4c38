"""Validate and sanitise an incoming PromptRequest before anything costly happens.

Sanitising is NFKC normalisation (so look-alike characters such as full-width
letters cannot slip past the blocked-terms and injection checks), removal of
control and format characters except newline and tab, and trimming. Then the
template (if any) is expanded and the per-modality limits of `SETTINGS.limits`
are checked. A refusal carries a stable `reason` code for ContentResult/metrics
and a human `detail`.

Reason codes: missing_field, invalid_tenant_id, unknown_modality, empty_prompt,
prompt_too_long, param_out_of_range, param_not_multiple_of_8, invalid_voice,
unknown_template, template_variables; templates_unavailable when the template store
is down (the job FAILS such a request rather than rejecting it as invalid).
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from operators.records import full_params
from operators.templates import TemplateError, TemplateStore, expand
from schemas.keys import SEP
from rscf.settings import SETTINGS, Limits

_KEEP_CONTROLS = {"\n", "\t"}
_SPACES = re.compile(r"[ \u00a0]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class ValidationOutcome:
    ok: bool
    record: dict[str, Any] | None = None
    reason: str | None = None
    detail: str | None = None

    @staticmethod
    def refuse(reason: str, detail: str) -> "ValidationOutcome":
        return ValidationOutcome(ok=False, reason=reason, detail=detail)


def sanitize_text(text: str) -> str:
    """NFKC, drop control/format characters (keep \\n and \\t), trim, tame runs of blanks."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    kept = []
    for ch in text:
        if ch in _KEEP_CONTROLS:
            kept.append(ch)
            continue
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Co", "Cn"):
            continue
        if cat in ("Zl", "Zp"):
            kept.append("\n")
            continue
        kept.append(ch)
    text = "".join(kept)
    text = _SPACES.sub(" ", text)
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


def _check_range(name: str, value: Any, lo: float, hi: float, lo_open: bool = False) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be finite"
    if (value <= lo if lo_open else value < lo) or value > hi:
        left = "(" if lo_open else "["
        return f"{name}={value} outside {left}{lo}, {hi}]"
    return None


def check_params(modality: str, params: dict[str, Any], limits: Limits) -> tuple[str, str] | None:
    """(reason, detail) for the first parameter out of its modality's limits, else None."""
    if modality == "TEXT":
        checks = [
            ("max_tokens", 1, limits.max_text_tokens, False),
            ("temperature", 0.0, 2.0, False),
            ("top_p", 0.0, 1.0, True),
        ]
        for name, lo, hi, lo_open in checks:
            if params.get(name) is not None:
                problem = _check_range(name, params[name], lo, hi, lo_open)
                if problem:
                    return "param_out_of_range", problem
    elif modality == "IMAGE":
        for name in ("width", "height"):
            value = params.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                return "param_out_of_range", f"{name} must be an integer"
            problem = _check_range(name, value, limits.min_image_size, limits.max_image_size)
            if problem:
                return "param_out_of_range", problem
            if value % 8:
                return "param_not_multiple_of_8", f"{name}={value} is not a multiple of 8"
        if params.get("steps") is not None:
            problem = _check_range("steps", params["steps"], 1, limits.max_image_steps)
            if problem:
                return "param_out_of_range", problem
    elif modality == "AUDIO":
        voice = params.get("voice")
        if voice is not None and voice not in limits.voices:
            return "invalid_voice", f"voice {voice!r} not in {', '.join(limits.voices)}"
    seed = params.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0 or seed >= 2**63):
        return "param_out_of_range", "seed must be a non-negative 64-bit integer"
    return None


def max_prompt_chars(modality: str, limits: Limits) -> int:
    return limits.max_audio_chars if modality == "AUDIO" else limits.max_prompt_chars


def validate_prompt(
    record: dict[str, Any],
    templates: TemplateStore | None = None,
    limits: Limits | None = None,
) -> ValidationOutcome:
    """Sanitised copy of `record` with template expanded, or a refusal with a reason code."""
    limits = limits or SETTINGS.limits
    for name in ("request_id", "tenant_id"):
        if not isinstance(record.get(name), str) or not record[name].strip():
            return ValidationOutcome.refuse("missing_field", f"{name} is required")
    if SEP in record["tenant_id"]:
        return ValidationOutcome.refuse("invalid_tenant_id", "tenant_id contains U+001F, the Kafka key separator")
    modality = record.get("modality") or "UNKNOWN"
    if modality not in ("TEXT", "IMAGE", "AUDIO"):
        return ValidationOutcome.refuse("unknown_modality", f"modality {modality!r} is not served")
    raw_prompt = record.get("prompt")
    if not isinstance(raw_prompt, str):
        return ValidationOutcome.refuse("missing_field", "prompt must be a string")
    prompt = sanitize_text(raw_prompt)

    template_id = record.get("template_id")
    if template_id:
        if templates is None:
            return ValidationOutcome.refuse("unknown_template", "no template store configured")
        variables = {k: sanitize_text(str(v)) for k, v in (record.get("template_vars") or {}).items()}
        try:
            prompt = sanitize_text(expand(templates, template_id, variables, prompt))
        except TemplateError as exc:
            return ValidationOutcome.refuse(exc.reason, exc.detail)

    if not prompt:
        return ValidationOutcome.refuse("empty_prompt", "prompt is empty after sanitising")
    limit = max_prompt_chars(modality, limits)
    if len(prompt) > limit:
        return ValidationOutcome.refuse("prompt_too_long", f"{len(prompt)} characters > {limit} for {modality}")

    params = full_params(record.get("params"))
    problem = check_params(modality, params, limits)
    if problem:
        return ValidationOutcome.refuse(*problem)

    clean = dict(record)
    clean["prompt"] = prompt
    clean["modality"] = modality
    clean["params"] = params
    clean["priority"] = record.get("priority") or "NORMAL"
    clean["metadata"] = dict(record.get("metadata") or {})
    clean["template_vars"] = dict(record.get("template_vars") or {})
    return ValidationOutcome(ok=True, record=clean)
