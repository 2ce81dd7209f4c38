"""Validation at the edge: the request body, the tenant from the credential, the job's own validate step.

The body is strict (unknown fields refused, types checked) and is then run through
`operators.validate.validate_prompt`, the very check the Flink job applies, so a prompt the
job would reject as invalid is refused here with the same reason code and never costs a
Kafka round trip. The tenant is the caller's: a body naming another tenant is refused
(``tenant_mismatch``), never rewritten. What goes to Kafka is the record as built here; the
job validates and sanitises it again (it does not trust its producers).
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from operators.templates import TemplateStore
from operators.validate import validate_prompt
from schemas.prompt_input import InvalidPrompt, prompt_request

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class EdgeError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class ParamsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    width: Optional[int] = None
    height: Optional[int] = None
    steps: Optional[int] = None
    seed: Optional[int] = None
    voice: Optional[str] = Field(default=None, max_length=64)


class PromptIn(BaseModel):
    """A prompt as a tenant submits it; the tenant comes from the credential."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(max_length=16_000, description="the prompt (text to speak for audio)")
    modality: Literal["text", "image", "audio", "TEXT", "IMAGE", "AUDIO"]
    priority: Literal["low", "normal", "high", "LOW", "NORMAL", "HIGH"] = "normal"
    params: ParamsIn = Field(default_factory=ParamsIn)
    request_id: Optional[str] = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
                                      description="unique per tenant; a uuid4 when omitted")
    tenant_id: Optional[str] = Field(default=None, max_length=64,
                                     description="optional; must equal the caller's tenant")
    template_id: Optional[str] = Field(default=None, max_length=128)
    template_vars: dict[str, str] = Field(default_factory=dict, max_length=64)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=64)


class Accepted(BaseModel):
    request_id: str
    tenant_id: str
    result_url: str


def describe_invalid(errors: list[dict[str, Any]]) -> tuple[int, str, str]:
    """(status, code, detail) for a body that failed the strict model: 400 malformed_json, 422 unknown_field
    or invalid_body with the first ten problems (field path: message)."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "malformed_json", "the body is not valid JSON"
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}" for e in errors[:10]]
    code = "unknown_field" if any(e.get("type") == "extra_forbidden" for e in errors) else "invalid_body"
    return 422, code, "; ".join(parts)


def check_request_id(request_id: str) -> str:
    """Ids in paths: a fixed character set, no `..`, at most 128 characters (path tricks get 400)."""
    if not REQUEST_ID_RE.fullmatch(request_id) or ".." in request_id:
        raise EdgeError(400, "invalid_request_id",
                        "request ids are 1-128 characters of A-Z a-z 0-9 . _ : - starting with a letter or digit")
    return request_id


def build_record(body: PromptIn, tenant: str, templates: TemplateStore | None) -> dict[str, Any]:
    """The PromptRequest to produce, or EdgeError (403 tenant_mismatch, 422 with the job's reason code)."""
    if body.tenant_id is not None and body.tenant_id != tenant:
        raise EdgeError(403, "tenant_mismatch", "tenant_id in the body differs from the caller's tenant")
    if body.request_id is not None:
        check_request_id(body.request_id)
    obj = body.model_dump(exclude_none=True)
    obj["tenant_id"] = tenant
    obj["params"] = body.params.model_dump()
    try:
        record = prompt_request(obj)
    except InvalidPrompt as exc:
        raise EdgeError(422, "invalid_prompt", str(exc)) from None
    outcome = validate_prompt(record, templates)
    if not outcome.ok and outcome.reason != "templates_unavailable":  # the job decides that one (FAILED)
        raise EdgeError(422, outcome.reason or "invalid_prompt", outcome.detail or "")
    return record
