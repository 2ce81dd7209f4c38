"""Registering the contracts and checking a changed contract before it ships.

Subjects follow the TopicNameStrategy (``<topic>-value``); each request topic of a
pool gets its own subject. Every subject is BACKWARD compatible: a consumer on
the new schema must read everything written with the previous one.
"""

from __future__ import annotations

import json
from pathlib import Path

import fastavro
import httpx

from rscf.settings import SETTINGS
from schemas.serde import (
    TOPIC_SCHEMAS,
    registry_client,
    schema_path,
    schema_str,
    subject_for,
)

COMPATIBILITY = "BACKWARD"


def subjects(topics: dict[str, str] | None = None) -> dict[str, str]:
    """Subject -> schema stem for every topic RSCF writes."""
    return {subject_for(topic): stem for topic, stem in (topics or TOPIC_SCHEMAS).items()}


def register_all(registry_url: str | None = None, topics: dict[str, str] | None = None) -> dict[str, int]:
    """Register every schema under its subject and set BACKWARD compatibility; safe to repeat.

    Raises the registry's SchemaRegistryError when a schema is refused (for example an
    incompatible change), and transport errors when the registry is down.
    """
    from confluent_kafka.schema_registry import Schema

    client = registry_client(registry_url)
    ids: dict[str, int] = {}
    for subject, stem in sorted(subjects(topics).items()):
        ids[subject] = client.register_schema(subject, Schema(schema_str(stem), "AVRO"))
        client.set_compatibility(subject, COMPATIBILITY)
    return ids


def _load_candidate(schema: str | Path) -> tuple[str, str]:
    """(stem, compact JSON) of a schema given by stem or by path; ValueError if it is not valid Avro."""
    path = Path(schema)
    if path.suffix != ".avsc" and not path.exists():
        path = schema_path(str(schema))
    try:
        parsed = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from exc
    try:
        fastavro.parse_schema(parsed)
    except Exception as exc:
        raise ValueError(f"{path} is not a valid Avro schema: {exc}") from exc
    return path.stem, json.dumps(parsed, separators=(",", ":"))


def _refusal_reason(registry_url: str, subject: str, text: str) -> str:
    """Why the registry refuses ``text`` under ``subject``: Confluent's verbose messages, else Apicurio's dry run."""
    from rscf.registry_security import auth_headers

    headers = {"Content-Type": "application/vnd.schemaregistry.v1+json", **auth_headers()}
    payload = {"schema": text, "schemaType": "AVRO"}
    try:
        resp = httpx.post(
            f"{registry_url}/compatibility/subjects/{subject}/versions/latest",
            params={"verbose": "true"},
            json=payload,
            headers=headers,
            timeout=10,
        )
        messages = resp.json().get("messages") if resp.status_code == 200 else None
        if messages:
            return "; ".join(str(m) for m in messages)
    except (httpx.HTTPError, ValueError):
        pass
    base = registry_url.split("/apis/ccompat/")[0]
    if base != registry_url:  # Apicurio: a dry-run version creation returns the rule violation
        try:
            resp = httpx.post(
                f"{base}/apis/registry/v3/groups/default/artifacts/{subject}/versions",
                params={"dryRun": "true"},
                json={"content": {"content": text, "contentType": "application/json"}},
                headers=auth_headers(),  # a dry run is still a write to Apicurio's authorisation
                timeout=10,
            )
            if resp.status_code >= 400:
                body = resp.json()
                return str(body.get("detail") or body.get("title") or body)
        except (httpx.HTTPError, ValueError):
            pass
    return "the registry reported the schema incompatible but gave no reason"


def check(
    schema: str | Path,
    registry_url: str | None = None,
    subjects_to_check: list[str] | None = None,
) -> tuple[bool, list[str]]:
    """Test a schema (stem or .avsc path) against the latest version of each subject that uses it.

    The subjects default to those whose topic carries a schema of the same file stem.
    Returns (ok, messages); a subject not registered yet is reported and counts as ok.
    Raises ValueError for a file that is not valid Avro.
    """
    from confluent_kafka.schema_registry import Schema
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    url = registry_url or SETTINGS.registry_url
    stem, text = _load_candidate(schema)
    targets = subjects_to_check or sorted(s for s, st in subjects().items() if st == stem)
    if not targets:
        return False, [f"no topic uses a schema named {stem!r}; pass a subject explicitly"]
    client = registry_client(url)
    known = set(client.get_subjects())
    ok, messages = True, []
    for subject in targets:
        if subject not in known:
            messages.append(f"{subject}: not registered yet, nothing to be compatible with")
            continue
        try:
            compatible = client.test_compatibility(subject, Schema(text, "AVRO"))
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                messages.append(f"{subject}: not registered yet, nothing to be compatible with")
                continue
            raise
        if compatible:
            messages.append(f"{subject}: compatible ({COMPATIBILITY})")
        else:
            ok = False
            messages.append(f"{subject}: INCOMPATIBLE: {_refusal_reason(url, subject, text)}")
    return ok, messages
