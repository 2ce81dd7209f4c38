"""Record size: a record no producer may write is cut down to fit, never sent as is.

The job's Kafka sink fails the whole job on a record above its producer's
max.request.size (measured in issue #13: one ~1 MB dead letter, 19 restarts in 40 s), so
every output is checked against `SETTINGS.limits.max_record_bytes` before it is emitted.
Dead letters keep their payload by claim check (`operators.dead_letters.with_claim_check`);
finals and audit records have their longest strings cut (`truncate_to_fit`) and say so in
their reason (`record_truncated`).
"""

from __future__ import annotations

from typing import Any, Callable

from rscf.settings import SETTINGS

TRUNCATED = "record_truncated"  # reason code added to a final or audit record cut down to fit
MARK = " ...[truncated]"
MAX_ROUNDS = 32


class RecordTooLarge(ValueError):
    """Cutting strings did not make the record fit (its bulk is elsewhere, e.g. a huge list)."""


def max_record_bytes() -> int:
    return SETTINGS.limits.max_record_bytes


def too_large(key: bytes | None, value: bytes, limit: int | None = None) -> bool:
    return len(value) + len(key or b"") > (limit if limit is not None else max_record_bytes())


def _leaves(node: Any, path: tuple = ()):
    """(path, size in bytes) of every str/bytes value in nested dicts and lists."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, path + (i,))
    elif isinstance(node, str):
        yield path, len(node.encode("utf-8"))
    elif isinstance(node, (bytes, bytearray)):
        yield path, len(node)


def _copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node


def _cut(node: Any, path: tuple, keep_bytes: int) -> None:
    parent = node
    for step in path[:-1]:
        parent = parent[step]
    value = parent[path[-1]]
    if isinstance(value, str):
        raw = value.encode("utf-8")[: max(keep_bytes - len(MARK), 0)]
        parent[path[-1]] = raw.decode("utf-8", errors="ignore") + MARK
    else:
        parent[path[-1]] = bytes(value[:keep_bytes])


def truncate_to_fit(
    record: dict[str, Any], encode: Callable[[dict], bytes], key_bytes: int = 0, limit: int | None = None,
) -> tuple[dict[str, Any], bytes, list[str]]:
    """(a copy of `record` whose encoding fits, that encoding, the paths cut), cutting the longest
    strings first; raises RecordTooLarge when that is not enough."""
    limit = limit if limit is not None else max_record_bytes()
    out = _copy(record)
    cut: list[str] = []
    for _ in range(MAX_ROUNDS):
        value = encode(out)
        over = len(value) + key_bytes - limit
        if over <= 0:
            return out, value, cut
        leaves = sorted(_leaves(out), key=lambda leaf: leaf[1], reverse=True)
        if not leaves or leaves[0][1] <= len(MARK) * 2:
            break
        path, size = leaves[0]
        _cut(out, path, max(size - over - 64, size // 2))
        name = ".".join(str(p) for p in path)
        if name not in cut:
            cut.append(name)
    raise RecordTooLarge(f"record still above {limit} bytes after cutting {', '.join(cut) or 'nothing'}")


def with_reason(record: dict[str, Any], code: str = TRUNCATED) -> dict[str, Any]:
    """`record` with `code` appended to its reason ("<reason>; record_truncated")."""
    reason = record.get("reason")
    return dict(record, reason=f"{reason}; {code}" if reason else code)
