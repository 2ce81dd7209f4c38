"""Backfill: the rows of object-storage files as prompts under the prompt contract, and their results.

Pure logic, shared by the bounded Flink job that reads the files (`jobs/backfill_ingest.py`), the
results writer (`jobs/backfill_results.py`) and the CLI. A backfill is named by what it reads and for
whom (`backfill_id`: input URI, tenant, model version, format), and each row's request id by the
backfill, its file and its row number (`request_id`), so a rerun of the same backfill asks for the
same request ids and its results replace nothing: the writer keeps the first result per request id.

A row is a JSON object (a JSON Lines line) or a record (Parquet, Avro) with the columns of
`ROW_FIELDS`; `prompt` is required. A row that cannot become a prompt is a `BadRow` with a stable
reason (`unparseable`, `schema_mismatch`, `missing_field`, `oversize`, `invalid:<validate reason>`)
that goes to the dead-letter file with its file and row number; the backfill carries on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from operators.validate import validate_prompt
from rscf.settings import SETTINGS, Limits

FORMATS = ("jsonl", "parquet", "avro")
PRIORITIES = ("LOW", "NORMAL", "HIGH")
SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".avro": "avro"}
RESULTS_DIR = "_results"  # next to the input; names starting with "_" are skipped by Flink's file source
MANIFEST = "_manifest.json"
DEAD_LETTERS_DIR = "dead-letters"
# Columns a row may carry (anything else is kept in metadata as a string, so nothing a user put in is lost).
ROW_FIELDS = ("prompt", "modality", "params", "template_id", "template_vars", "metadata", "id")
MAX_ROW_BYTES = 64 * 1024  # a JSON line above this is refused before it is parsed (oversize)
METADATA_BACKFILL = "backfill_id"


class BadInput(ValueError):
    """The backfill itself is malformed (URI, format, priority): the CLI exits 2."""


@dataclass(frozen=True)
class BackfillSpec:
    uri: str  # s3://bucket/prefix
    tenant: str
    model_version: str | None = None
    priority: str = "LOW"
    fmt: str = "jsonl"

    def __post_init__(self) -> None:
        parse_s3_uri(self.uri)
        if not self.tenant or "\x1f" in self.tenant:
            raise BadInput(f"tenant {self.tenant!r} is empty or contains U+001F")
        if self.fmt not in FORMATS:
            raise BadInput(f"format {self.fmt!r} not one of {', '.join(FORMATS)}")
        if self.priority not in PRIORITIES:
            raise BadInput(f"priority {self.priority!r} not one of {', '.join(PRIORITIES)}")

    @property
    def bucket(self) -> str:
        return parse_s3_uri(self.uri)[0]

    @property
    def prefix(self) -> str:
        return parse_s3_uri(self.uri)[1]

    @property
    def backfill_id(self) -> str:
        """Stable for the same input, tenant, model version and format: a rerun is the same backfill."""
        text = "\n".join((f"s3://{self.bucket}/{self.prefix}", self.tenant, self.model_version or "", self.fmt))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def results_prefix(self) -> str:
        """`<prefix>/_results/` in the input's bucket (the input prefix as a folder)."""
        base = self.prefix.rstrip("/")
        return f"{base}/{RESULTS_DIR}/" if base else f"{RESULTS_DIR}/"

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "tenant": self.tenant, "model_version": self.model_version,
                "priority": self.priority, "format": self.fmt, "backfill_id": self.backfill_id}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "BackfillSpec":
        return BackfillSpec(d["uri"], d["tenant"], d.get("model_version"), d.get("priority") or "LOW",
                            d.get("format") or "jsonl")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://bucket/prefix; BadInput for anything else."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise BadInput(f"input must be s3://BUCKET/PREFIX, not {uri!r}")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise BadInput(f"no bucket in {uri!r}")
    return bucket, prefix


def file_format(key: str) -> str | None:
    """The format a file's name says, None for a file a backfill skips."""
    name = key.rsplit("/", 1)[-1]
    if name.startswith(("_", ".")):
        return None
    for suffix, fmt in SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return None


def input_files(keys: list[str], spec: BackfillSpec) -> list[str]:
    """The object keys a backfill reads: files of its format directly in the PREFIX folder, no hidden files,
    nothing in sub-folders (so not `_results/`)."""
    base = spec.prefix.rstrip("/") + "/" if spec.prefix else ""
    out = []
    for key in keys:
        rel = key[len(base):] if key.startswith(base) else None
        if rel is None or "/" in rel:  # only files directly in the folder (what Flink's file source reads here)
            continue
        if file_format(key) == spec.fmt:
            out.append(key)
    return sorted(out)


def file_tag(path: str) -> str:
    """8 hex of the file's key (bucket-relative, no scheme): the file's part of a request id."""
    key = path.split("://", 1)[-1]
    key = key.split("/", 1)[1] if "/" in key else key  # drop the bucket
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def request_id(backfill_id: str, path: str, row: int) -> str:
    """`bf-<backfill>-<file>-<row>`: the same file and row of the same backfill, the same id."""
    return f"bf-{backfill_id}-{file_tag(path)}-{row}"


def parse_request_id(rid: str) -> tuple[str, str, int] | None:
    """(backfill_id, file tag, row) of a backfill request id, None for any other id."""
    parts = rid.split("-")
    if len(parts) != 4 or parts[0] != "bf" or not parts[3].isdigit():
        return None
    return parts[1], parts[2], int(parts[3])


@dataclass(frozen=True)
class BadRow:
    path: str
    row: int
    reason: str
    detail: str
    excerpt: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.path, "row": self.row, "reason": self.reason, "detail": self.detail,
                "excerpt": self.excerpt}


def parse_line(line: str | bytes, path: str, row: int) -> dict | BadRow:
    """One JSON Lines line as a row dict, or why not."""
    size = len(line.encode("utf-8", "replace") if isinstance(line, str) else line)
    if size > MAX_ROW_BYTES:
        return BadRow(path, row, "oversize", f"line of {size} bytes > {MAX_ROW_BYTES}", _excerpt(line))
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        return BadRow(path, row, "unparseable", f"not JSON: {exc}"[:300], _excerpt(line))
    if not isinstance(value, dict):
        return BadRow(path, row, "schema_mismatch", f"a row must be a JSON object, not {type(value).__name__}",
                      _excerpt(line))
    return value


def _excerpt(value: Any, n: int = 200) -> str:
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    return str(value)[:n]


def _strings(name: str, value: Any, path: str, row: int) -> dict[str, str] | BadRow:
    if value is None:
        return {}
    if isinstance(value, list):  # Parquet/Arrow maps read as [(key, value), ...]
        try:
            value = dict(value)
        except (TypeError, ValueError):
            pass
    if not isinstance(value, dict):
        return BadRow(path, row, "schema_mismatch", f"{name} must be an object of strings")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


def to_prompt(
    row: Mapping[str, Any], path: str, row_no: int, spec: BackfillSpec, now_ms: int, limits: Limits | None = None,
) -> dict | BadRow:
    """A PromptRequest for one row (the prompt contract), or a BadRow with the reason.

    The row's own fields are checked for type first (schema_mismatch, missing_field, oversize), then the
    live path's own `validate_prompt` decides the rest (limits, params), so a row the live job would
    refuse is refused here, into the dead-letter file, instead of becoming a REJECTED final.
    """
    limits = limits or SETTINGS.limits
    prompt = row.get("prompt")
    if prompt is None:
        return BadRow(path, row_no, "missing_field", "prompt is required", _excerpt(row))
    if not isinstance(prompt, str):
        return BadRow(path, row_no, "schema_mismatch", f"prompt must be a string, not {type(prompt).__name__}",
                      _excerpt(row))
    modality = row.get("modality") or "TEXT"
    if not isinstance(modality, str):
        return BadRow(path, row_no, "schema_mismatch", "modality must be a string", _excerpt(row))
    limit = limits.max_audio_chars if modality.upper() == "AUDIO" else limits.max_prompt_chars
    if len(prompt) > limit:
        return BadRow(path, row_no, "oversize", f"prompt of {len(prompt)} characters > {limit}", _excerpt(prompt))
    params = row.get("params")
    if params is not None and not isinstance(params, dict):
        return BadRow(path, row_no, "schema_mismatch", "params must be an object", _excerpt(row))
    template_vars = _strings("template_vars", row.get("template_vars"), path, row_no)
    metadata = _strings("metadata", row.get("metadata"), path, row_no)
    for got in (template_vars, metadata):
        if isinstance(got, BadRow):
            return got
    template_id = row.get("template_id")
    if template_id is not None and not isinstance(template_id, str):
        return BadRow(path, row_no, "schema_mismatch", "template_id must be a string", _excerpt(row))
    metadata = dict(metadata)
    for name, value in row.items():
        if name not in ROW_FIELDS and value is not None:
            metadata.setdefault(name, value if isinstance(value, str) else json.dumps(value, default=str))
    if row.get("id") is not None:
        metadata["source_id"] = str(row["id"])
    metadata.update({METADATA_BACKFILL: spec.backfill_id, "backfill_file": path, "backfill_row": str(row_no)})
    if spec.model_version:
        metadata["model_version"] = spec.model_version
    record = {
        "request_id": request_id(spec.backfill_id, path, row_no), "tenant_id": spec.tenant,
        "modality": modality.upper(), "prompt": prompt, "params": _params(params or {}),
        "priority": spec.priority, "template_id": template_id, "template_vars": template_vars,
        "metadata": metadata, "created_at": now_ms, "trace": None,
    }
    outcome = validate_prompt(record, None, limits)
    if not outcome.ok and outcome.reason != "unknown_template":  # templates are the live job's (Redis) to expand
        return BadRow(path, row_no, f"invalid:{outcome.reason}", outcome.detail or "", _excerpt(row))
    return record


# The ingest job's metrics (`rscf backfill status`, the Web UI, Prometheus): counters, then the pace's gauges
INGEST_METRICS = ("rows_read", "rows_dispatched", "rows_dead", "pace_rows_per_s", "yielding_to_live", "lane_lag_rows")
# One reader: rows are numbered per file in keyed state, the pace is one budget (and the sink's transactional ids
# per subtask, deploy/local/backfill_transactions.py)
INGEST_PARALLELISM = 1
PARAM_NAMES = ("max_tokens", "temperature", "top_p", "width", "height", "steps", "seed", "voice")


def _params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {name: params.get(name) for name in PARAM_NAMES}


# ----------------------------------------------------------------------------- results


RESULT_COLUMNS = ("request_id", "file", "row", "status", "reason", "output_text", "artifact_key",
                  "model_name", "model_version", "pool", "cost_units", "completed_at_ms")


def result_row(final: Mapping[str, Any], files_by_tag: Mapping[str, str]) -> dict[str, Any] | None:
    """A results-file row of a final (ContentResult) of this backfill's lane, None if not a backfill's."""
    parsed = parse_request_id(str(final.get("request_id") or ""))
    if parsed is None:
        return None
    _bf, tag, row = parsed
    uris = final.get("artifact_uris") or []
    completed = final.get("completed_at")
    if completed is not None and not isinstance(completed, int):
        completed = int(completed.timestamp() * 1000)
    return {
        "request_id": final["request_id"], "file": files_by_tag.get(tag, tag), "row": row,
        "status": final.get("status"), "reason": final.get("reason"), "output_text": final.get("output_text"),
        "artifact_key": uris[0] if uris else None, "model_name": final.get("model_name"),
        "model_version": final.get("model_version"), "pool": final.get("pool"),
        "cost_units": float(final.get("cost_units") or 0.0), "completed_at_ms": completed,
    }


@dataclass
class Manifest:
    """What a backfill read and wrote: `_results/_manifest.json` next to the input."""

    spec: dict[str, Any]
    input_files: list[dict[str, Any]] = field(default_factory=list)  # {file, bytes, sha256, rows}
    rows_total: int = 0
    job_id: str | None = None
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    counts: dict[str, int] = field(default_factory=dict)  # status -> results; "DEAD_LETTER" -> bad rows
    result_parts: list[str] = field(default_factory=list)
    dead_letter_files: list[str] = field(default_factory=list)
    state: str = "RUNNING"

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "Manifest":
        data = json.loads(text)
        return Manifest(**{k: v for k, v in data.items() if k in Manifest.__dataclass_fields__})


def done_ranges(request_ids: list[str], backfill_id: str) -> dict[str, list[list[int]]]:
    """Rows that already have a result, per file tag, as [first, last] ranges (compact for 100,000 rows):
    a rerun of the backfill skips them instead of asking the pools again."""
    rows: dict[str, list[int]] = {}
    for rid in request_ids:
        parsed = parse_request_id(rid)
        if parsed is not None and parsed[0] == backfill_id:
            rows.setdefault(parsed[1], []).append(parsed[2])
    out: dict[str, list[list[int]]] = {}
    for tag, nums in rows.items():
        ranges: list[list[int]] = []
        for n in sorted(set(nums)):
            if ranges and n == ranges[-1][1] + 1:
                ranges[-1][1] = n
            else:
                ranges.append([n, n])
        out[tag] = ranges
    return out


def in_ranges(ranges: list[list[int]] | None, row: int) -> bool:
    import bisect

    if not ranges:
        return False
    i = bisect.bisect_right(ranges, [row, float("inf")]) - 1
    return i >= 0 and ranges[i][0] <= row <= ranges[i][1]


def progress(rows_total: int, finished: int, dead: int, rate_per_s: float) -> dict[str, Any]:
    """Done fraction and ETA of a backfill: finished results and dead letters against the rows it read."""
    done = finished + dead
    left = max(rows_total - done, 0)
    eta = left / rate_per_s if rate_per_s > 0 else None
    return {"rows_total": rows_total, "done": done, "fraction": done / rows_total if rows_total else 1.0,
            "eta_s": round(eta, 1) if eta is not None else None}


def lowered_budget(state: dict, budget_rows_per_s: float | None) -> float:
    """The pace a resume reads at: the backfill's own, or another positive one up to the start's (BadInput)."""
    start = state.setdefault("start_budget_rows_per_s", state["budget_rows_per_s"])
    if budget_rows_per_s is None:
        return state["budget_rows_per_s"]
    if not 0 < budget_rows_per_s <= start:
        raise BadInput(f"--budget {budget_rows_per_s:g}: not in (0, {start:g}]; the lane's token bucket for this "
                       f"backfill was set to {start:g} rows/s at start")
    return budget_rows_per_s
