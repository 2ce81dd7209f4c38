"""Kafka keys of the pipeline's topics: a request is known by (tenant_id, request_id).

Request ids are chosen by clients and unique per tenant only, so two tenants may use the
same one (issue #13: the second tenant's prompt vanished when correlation, dedup and the
results' key used the request_id alone). Requests, results, finals and audit records are
keyed by `identity_key`: tenant_id, U+001F (the ASCII unit separator), request_id. The
separator cannot occur in a tenant_id (validation refuses one that contains it), so the
key splits back at its first separator. Prompts stay keyed by tenant_id (the job's
tenant gate is keyed by it).

A key without the separator is the request_id alone: what workers and jobs before this
change wrote, and what a request without a tenant (an invalid prompt) is keyed by.
"""

from __future__ import annotations

SEP = "\x1f"


def identity_key(tenant_id: str | None, request_id: str) -> str:
    """The Kafka (and Flink state) key of a request; the request_id alone when it has no tenant."""
    return f"{tenant_id}{SEP}{request_id}" if tenant_id else str(request_id)


def split_identity_key(key: str | bytes | None) -> tuple[str, str] | None:
    """(tenant_id, request_id) of a key (tenant "" for a bare request_id), None for no key or bad bytes."""
    if not key:
        return None
    if isinstance(key, (bytes, bytearray, memoryview)):
        try:
            key = bytes(key).decode("utf-8")
        except UnicodeDecodeError:
            return None
    tenant, sep, request_id = key.partition(SEP)
    return (tenant, request_id) if sep else ("", key)


def is_legacy_key(key: str) -> bool:
    """A key written before request identities had a tenant (the request_id alone)."""
    return SEP not in key


def tenant_object_prefix(tenant_id: str) -> str:
    """``tenants/<segment>/``: where a tenant's objects (artifacts) live in object storage, one prefix
    per tenant (issue #16) so a per-tenant S3 policy or the gateway's check is a prefix match.

    The segment is the tenant id itself when it is 1-64 characters of A-Z a-z 0-9 _ - (what
    `rscf tenants keys create` allows), otherwise ``~`` + 32 hex of its SHA-256: injective, so
    two tenants never share a prefix ("a/b" and "a_b" used to map to the same key), and no
    segment can be ``..``, absolute, or contain a separator.
    """
    import hashlib
    import re

    if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", tenant_id):
        return f"tenants/{tenant_id}/"
    return f"tenants/~{hashlib.sha256(tenant_id.encode('utf-8')).hexdigest()[:32]}/"
