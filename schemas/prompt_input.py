"""Turning human-written prompt files (JSONL, CSV) and CLI flags into PromptRequest records.

Lenient where it costs nothing (modality and priority in any case, ``tenant`` for
``tenant_id``, generation params nested or flat, ISO or epoch-millis timestamps),
strict where a typo would silently change meaning (unknown fields, wrong types).
Every problem is reported as a ``LineError`` carrying the line number.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

from fastavro.validation import validate

from schemas.serde import load_schema, parsed_schema

_SCHEMA = load_schema("prompt_request")
_FIELD = {f["name"]: f for f in _SCHEMA["fields"]}
MODALITIES = tuple(_FIELD["modality"]["type"]["symbols"])
PRIORITIES = tuple(_FIELD["priority"]["type"]["symbols"])
PARAM_TYPES: dict[str, str] = {
    f["name"]: next(t for t in f["type"] if t != "null") for f in _FIELD["params"]["type"]["fields"]
}
TOP_FIELDS = tuple(_FIELD)
ALIASES = {"tenant": "tenant_id", "id": "request_id"}


class InvalidPrompt(ValueError):
    """A prompt record that cannot become a valid PromptRequest."""


@dataclass(frozen=True)
class LineError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


def now_utc_ms() -> datetime:
    """Current time, truncated to milliseconds so it survives an Avro round trip unchanged."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _timestamp(value: Any, name: str) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000, tz=timezone.utc)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise InvalidPrompt(f"{name}: not an ISO-8601 time or epoch millis: {value!r}") from exc
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    raise InvalidPrompt(f"{name}: expected ISO-8601 string or epoch millis, got {type(value).__name__}")


def _param(name: str, value: Any) -> Any:
    kind = PARAM_TYPES[name]
    if value is None:
        return None
    if kind in ("int", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise InvalidPrompt(f"params.{name}: expected an integer, got {value!r}")
        return value
    if kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidPrompt(f"params.{name}: expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise InvalidPrompt(f"params.{name}: expected a string, got {value!r}")
    return value


def _enum(value: Any, symbols: tuple[str, ...], name: str) -> str:
    if not isinstance(value, str) or value.upper() not in symbols:
        raise InvalidPrompt(f"{name}: {value!r} is not one of {', '.join(s.lower() for s in symbols)}")
    return value.upper()


def _string_map(value: Any, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidPrompt(f"{name}: expected an object of strings")
    out = {}
    for key, val in value.items():
        if isinstance(val, (dict, list)) or val is None:
            raise InvalidPrompt(f"{name}.{key}: expected a string value")
        out[str(key)] = val if isinstance(val, str) else json.dumps(val)
    return out


def prompt_request(obj: dict[str, Any]) -> dict[str, Any]:
    """A valid PromptRequest record from a loosely written mapping; raises InvalidPrompt."""
    if not isinstance(obj, dict):
        raise InvalidPrompt(f"expected a JSON object, got {type(obj).__name__}")
    src = {ALIASES.get(k, k): v for k, v in obj.items()}
    params_in = src.pop("params", None) or {}
    if not isinstance(params_in, dict):
        raise InvalidPrompt("params: expected an object")
    params_in = dict(params_in)
    for key in list(src):
        if key in PARAM_TYPES:
            params_in[key] = src.pop(key)
    unknown = sorted(set(src) - set(TOP_FIELDS)) + sorted(f"params.{k}" for k in set(params_in) - set(PARAM_TYPES))
    if unknown:
        raise InvalidPrompt(f"unknown field(s): {', '.join(unknown)}")
    for required in ("tenant_id", "prompt"):
        if not isinstance(src.get(required), str) or not src[required]:
            raise InvalidPrompt(f"{required}: required non-empty string")
    request_id = src.get("request_id") or str(uuid.uuid4())
    if not isinstance(request_id, str):
        raise InvalidPrompt("request_id: expected a string")
    template_id = src.get("template_id")
    if template_id is not None and not isinstance(template_id, str):
        raise InvalidPrompt("template_id: expected a string")
    trace = src.get("trace")
    if isinstance(trace, str):
        trace = {"traceparent": trace, "tracestate": None}
    record = {
        "request_id": request_id,
        "tenant_id": src["tenant_id"],
        "modality": _enum(src.get("modality", "UNKNOWN"), MODALITIES, "modality"),
        "prompt": src["prompt"],
        "params": {name: _param(name, params_in.get(name)) for name in PARAM_TYPES},
        "priority": _enum(src.get("priority") or "NORMAL", PRIORITIES, "priority"),
        "template_id": template_id,
        "template_vars": _string_map(src.get("template_vars"), "template_vars"),
        "metadata": _string_map(src.get("metadata"), "metadata"),
        "created_at": _timestamp(src["created_at"], "created_at") if src.get("created_at") else now_utc_ms(),
        "trace": trace,
    }
    try:  # the quiet check first (13 µs against 25: the raising one builds messages for every union branch)
        if not validate(record, parsed_schema("prompt_request"), raise_errors=False):
            validate(record, parsed_schema("prompt_request"), raise_errors=True)
    except Exception as exc:  # fastavro's ValidationError lists the offending paths
        raise InvalidPrompt(f"does not fit the PromptRequest schema: {exc}") from exc
    return record


def parse_jsonl(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | LineError]]:
    """(line number, record or LineError) per non-blank line of a JSON-lines text."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, LineError(number, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        try:
            yield number, prompt_request(obj)
        except InvalidPrompt as exc:
            yield number, LineError(number, str(exc))


def _csv_row(row: dict[str | None, Any]) -> dict[str, Any]:
    if None in row:
        raise InvalidPrompt(f"{len(row[None])} more cell(s) than header columns")
    obj: dict[str, Any] = {}
    for key, cell in row.items():
        if cell is None:
            raise InvalidPrompt(f"missing cell for column {key!r}")
        key = key.strip()
        if cell == "":
            continue
        if key.startswith("var."):
            obj.setdefault("template_vars", {})[key[4:]] = cell
        elif key.startswith("meta."):
            obj.setdefault("metadata", {})[key[5:]] = cell
        elif key in ("template_vars", "metadata", "params"):
            try:
                obj[key] = json.loads(cell)
            except json.JSONDecodeError as exc:
                raise InvalidPrompt(f"{key}: cell is not JSON: {exc.msg}") from exc
        elif key in PARAM_TYPES:
            kind = PARAM_TYPES[key]
            try:
                obj[key] = int(cell) if kind in ("int", "long") else float(cell) if kind in ("float", "double") else cell
            except ValueError as exc:
                raise InvalidPrompt(f"{key}: {cell!r} is not a {kind}") from exc
        elif key == "created_at" and cell.lstrip("-").isdigit():
            obj[key] = int(cell)
        else:
            obj[key] = cell
    return obj


def parse_csv(text_or_lines: str | Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | LineError]]:
    """(line number, record or LineError) per CSV row; the header row names PromptRequest fields.

    Generation params are plain columns (max_tokens, width, ...); ``var.NAME`` and
    ``meta.NAME`` columns fill template_vars and metadata. The line number is where the row ends.
    """
    stream = io.StringIO(text_or_lines) if isinstance(text_or_lines, str) else text_or_lines
    reader = csv.DictReader(stream)
    try:
        for row in reader:
            number = reader.line_num
            try:
                yield number, prompt_request(_csv_row(row))
            except InvalidPrompt as exc:
                yield number, LineError(number, str(exc))
    except csv.Error as exc:
        yield reader.line_num, LineError(reader.line_num, f"CSV syntax: {exc}")


def parse_file(path: str, text_lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | LineError]]:
    """Dispatch on the file suffix: .csv is CSV, anything else JSON lines."""
    if str(path).lower().endswith(".csv"):
        return parse_csv(text_lines)
    return parse_jsonl(text_lines)
