"""Prompt templates with `{{var}}` placeholders and strict variable checking.

A template may also use `{{prompt}}`, which is the (sanitised) prompt of the
request itself; every other placeholder must be supplied in `template_vars`,
and every supplied variable must be used: a typo in a variable name is a client
error we report (`template_variables`) rather than a silently odd prompt.
Templates live in Redis (hash `rscf:templates`, field = template id) so they can
change without a job redeploy; an in-memory store serves tests and demos. While Redis
is down a prompt naming a template FAILS (`templates_unavailable`): sending it without
its template would change what the tenant asked for.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Mapping, Protocol

from rscf.redis_security import TEMPLATES_KEY  # noqa: F401 - named once there (its ACL users)

PROMPT_VAR = "prompt"
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class TemplateError(ValueError):
    """Raised with a stable `reason` code (`unknown_template` or `template_variables`)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class TemplateStoreUnavailable(TemplateError):
    """The store could not be read (Redis down): not the client's fault, the request FAILS with
    reason `templates_unavailable` and its final says so in `degraded`."""

    def __init__(self, detail: str):
        super().__init__("templates_unavailable", detail)


class TemplateStore(Protocol):
    def get(self, template_id: str) -> str | None: ...

    def put(self, template_id: str, text: str) -> None: ...


class InMemoryTemplateStore:
    def __init__(self, templates: Mapping[str, str] | None = None):
        self._templates = dict(templates or {})

    def get(self, template_id: str) -> str | None:
        return self._templates.get(template_id)

    def put(self, template_id: str, text: str) -> None:
        placeholders(text)  # refuse malformed templates at write time
        self._templates[template_id] = text


class RedisTemplateStore:
    """Templates in a Redis hash, with a short local cache: templates change rarely, prompts arrive often.

    While Redis is down, `get` raises `TemplateStoreUnavailable`; after a failure it does not try
    again for `backoff_s`, so an outage costs one connection timeout, not one per prompt.
    """

    def __init__(self, client, key: str = TEMPLATES_KEY, cache_ttl_s: float = 5.0, backoff_s: float = 5.0):
        self._client = client
        self._key = key
        self._ttl = cache_ttl_s
        self._backoff_s = backoff_s
        self._down_until = 0.0
        self._down_reason = ""
        self._cache: dict[str, tuple[float, str | None]] = {}

    def get(self, template_id: str) -> str | None:
        hit = self._cache.get(template_id)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        if now < self._down_until:
            raise TemplateStoreUnavailable(f"template store marked down: {self._down_reason}")
        try:
            raw = self._client.hget(self._key, template_id)
        except Exception as exc:  # noqa: BLE001 - redis ConnectionError, TimeoutError...: the store, not the request
            self._down_until = now + self._backoff_s
            self._down_reason = f"{type(exc).__name__}: {exc}"[:200]
            raise TemplateStoreUnavailable(self._down_reason) from exc
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        self._cache[template_id] = (now, text)
        return text

    def put(self, template_id: str, text: str) -> None:
        placeholders(text)
        self._client.hset(self._key, template_id, text)
        self._cache.pop(template_id, None)


@dataclass(frozen=True)
class Rendered:
    text: str
    variables: frozenset[str]


def placeholders(template: str) -> frozenset[str]:
    """Variable names a template uses; unbalanced braces make it malformed."""
    names = frozenset(_PLACEHOLDER.findall(template))
    leftover = _PLACEHOLDER.sub("", template)
    if "{{" in leftover or "}}" in leftover:
        raise TemplateError("template_variables", "malformed placeholder in template")
    return names


def render(template: str, variables: Mapping[str, str], prompt: str = "") -> Rendered:
    """Fill placeholders; missing or unused variables raise TemplateError('template_variables')."""
    used = placeholders(template)
    given = set(variables)
    needed = used - {PROMPT_VAR}
    missing = sorted(needed - given)
    extra = sorted(given - needed)
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if extra:
            parts.append("unexpected " + ", ".join(extra))
        raise TemplateError("template_variables", "; ".join(parts))
    values = dict(variables)
    values[PROMPT_VAR] = prompt
    # One pass with a callback, so a value containing "{{x}}" is never expanded again.
    text = _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
    return Rendered(text=text, variables=frozenset(used))


def expand(store: TemplateStore, template_id: str, variables: Mapping[str, str], prompt: str) -> str:
    template = store.get(template_id)
    if template is None:
        raise TemplateError("unknown_template", f"no template {template_id!r}")
    return render(template, variables, prompt).text
