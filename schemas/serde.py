"""Avro bodies in the Confluent wire format, resolved through the schema registry.

Every RSCF topic value is ``0x00 | schema id (4 bytes, big endian) | Avro body``.
Encoding writes with the project's schema (registered once per process under
``<topic>-value``); decoding reads the writer's schema by id and resolves it
against the project's current schema, so records from older producers still
decode.  Nothing touches the network at import time, and a ``TopicSerde``
pickles without its client, so PyFlink workers can ship or rebuild it cheaply.

The registry client's package is imported here, once, not lazily where it is used: the operator threads of a
restored job imported it at once, and one of them got a partially initialised
``confluent_kafka.serialization`` (ImportError), so a result was dead-lettered as ``registry_unavailable``
(CI on 2026-12-05, after a TaskManager kill). Cost: ~0.14-0.23 s more to import this module.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import fastavro
from confluent_kafka.schema_registry import RegisteredSchema, Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro.schema import to_parsing_canonical_form

from rscf.settings import POOLS, SETTINGS

log = logging.getLogger("rscf.serde")

SCHEMA_DIR = Path(__file__).resolve().parent
MAGIC = 0
HEADER_LEN = 5

# Stable reason codes; the dead-letter topic and metrics use them as labels.
NOT_CONFLUENT_FRAMED = "not_confluent_framed"
UNKNOWN_SCHEMA_ID = "unknown_schema_id"
AVRO_DECODE_FAILED = "avro_decode_failed"
REGISTRY_UNAVAILABLE = "registry_unavailable"

SCHEMA_NAMES = (
    "prompt_request",
    "inference_request",
    "inference_result",
    "content_result",
    "audit_record",
    "dead_letter",
    "control_event",
)

_T = SETTINGS.topics
TOPIC_SCHEMAS: dict[str, str] = {
    _T.prompts: "prompt_request",
    _T.control: "control_event",
    _T.results: "inference_result",
    _T.content: "content_result",
    _T.audit: "audit_record",
    _T.dlq: "dead_letter",
    **{lane: "inference_request" for pool in POOLS for lane in _T.lanes(_T.requests(pool))},  # every priority lane
}


class DecodeError(Exception):
    """A value that cannot be turned into a record; ``reason`` is a stable code for the DLQ."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # keep reason/detail across pickling (PyFlink ships exceptions)
        return (DecodeError, (self.reason, self.detail))


def schema_path(name: str) -> Path:
    return SCHEMA_DIR / f"{name}.avsc"


@lru_cache(maxsize=None)
def _schema_text(name: str) -> str:
    path = schema_path(name)
    if not path.is_file():
        raise KeyError(f"no schema named {name!r} in {SCHEMA_DIR}")
    return path.read_text()


def load_schema(name: str) -> dict:
    """The schema ``schemas/<name>.avsc`` as a fresh dict (callers may mutate it)."""
    return json.loads(_schema_text(name))


def schema_str(name: str) -> str:
    """Compact JSON of a schema, the form registered in the registry."""
    return json.dumps(load_schema(name), separators=(",", ":"))


@lru_cache(maxsize=None)
def parsed_schema(name: str) -> Any:
    """fastavro-parsed schema, parsed once per process."""
    return fastavro.parse_schema(load_schema(name))


def schema_for_topic(topic: str) -> str:
    """Schema stem of a topic; any ``genai.inference.requests.*`` topic carries InferenceRequest."""
    if topic in TOPIC_SCHEMAS:
        return TOPIC_SCHEMAS[topic]
    if topic.startswith(_T.request_prefix):
        return "inference_request"
    raise KeyError(f"no schema is mapped to topic {topic!r}; name the schema (schema_name= / --schema)")


def subject_for(topic: str) -> str:
    """TopicNameStrategy subject of a topic's values."""
    return f"{topic}-value"


def frame(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + body


def schema_id_of(data: bytes) -> int:
    """Schema id of a framed value, or DecodeError(not_confluent_framed)."""
    if data is None or len(data) < HEADER_LEN:
        size = "null" if data is None else f"{len(data)} bytes"
        raise DecodeError(NOT_CONFLUENT_FRAMED, f"value too short for the 5-byte header ({size})")
    if data[0] != MAGIC:
        raise DecodeError(NOT_CONFLUENT_FRAMED, f"magic byte is {data[0]:#04x}, expected 0x00")
    return int.from_bytes(data[1:5], "big")


class RegistryLike(Protocol):
    """The part of confluent_kafka's SchemaRegistryClient that the serde uses."""

    def register_schema(self, subject_name: str, schema: Any) -> int: ...

    def lookup_schema(self, subject_name: str, schema: Any) -> Any: ...

    def get_schema(self, schema_id: int) -> Any: ...


class LocalRegistry:
    """In-process registry with the client's method names: for benchmarks and offline unit tests."""

    def __init__(self) -> None:
        self._by_id: dict[int, str] = {}
        self._ids: dict[str, int] = {}
        self._subjects: dict[str, list[int]] = {}

    def register_schema(self, subject_name: str, schema: Any, normalize_schemas: bool = False) -> int:
        text = schema.schema_str
        key = to_parsing_canonical_form(json.loads(text))
        if key not in self._ids:
            self._ids[key] = len(self._by_id) + 1
            self._by_id[self._ids[key]] = text
        sid = self._ids[key]
        versions = self._subjects.setdefault(subject_name, [])
        if sid not in versions:
            versions.append(sid)
        return sid

    def lookup_schema(self, subject_name: str, schema: Any, normalize_schemas: bool = False) -> Any:
        key = to_parsing_canonical_form(json.loads(schema.schema_str))
        sid = self._ids.get(key)
        if sid is None or sid not in self._subjects.get(subject_name, []):
            raise SchemaRegistryError(404, 40403, f"schema not registered under {subject_name}")
        version = self._subjects[subject_name].index(sid) + 1
        return RegisteredSchema(subject=subject_name, version=version, schema_id=sid, guid=None, schema=schema)

    def get_schema(self, schema_id: int, *args: Any, **kwargs: Any) -> Any:
        if schema_id not in self._by_id:
            raise SchemaRegistryError(404, 40403, f"Schema {schema_id} not found.")
        return Schema(self._by_id[schema_id], "AVRO")


_CLIENTS: dict[tuple[int, str], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def registry_client(registry_url: str | None = None) -> Any:
    """One SchemaRegistryClient per registry URL per process (its own caches are shared that way)."""
    url = registry_url or SETTINGS.registry_url
    key = (os.getpid(), url)
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            from rscf.registry_security import client_auth

            client = SchemaRegistryClient({"url": url, "max.retries": 2, "retries.wait.ms": 200, "timeout": 10,
                                           **client_auth()})
            _CLIENTS[key] = client
    return client


def _registry_failure(exc: Exception, what: str) -> DecodeError:
    status = getattr(exc, "http_status_code", None)
    if status == 404:
        return DecodeError(UNKNOWN_SCHEMA_ID, f"{what}: {exc}")
    return DecodeError(REGISTRY_UNAVAILABLE, f"{what}: {type(exc).__name__}: {exc}")


class _Reader:
    """How to read bodies of one writer schema id: writer schema, and reader schema if resolution is needed."""

    __slots__ = ("writer", "reader")

    def __init__(self, writer: Any, reader: Any | None) -> None:
        self.writer = writer
        self.reader = reader


class TopicSerde:
    """Encode/decode one topic's values; cheap to build, lazy to connect, picklable.

    ``client`` may be any object with the SchemaRegistryClient methods used here
    (a ``LocalRegistry`` in tests); by default one real client per URL is shared.
    ``auto_register=False`` only looks the schema up, for producers that must not
    change the registry.
    """

    UNKNOWN_ID_RETRY_S = 10.0

    def __init__(
        self,
        topic: str,
        registry_url: str | None = None,
        *,
        schema_name: str | None = None,
        client: RegistryLike | None = None,
        auto_register: bool = True,
    ) -> None:
        self.topic = topic
        self.registry_url = registry_url or SETTINGS.registry_url
        self.schema_name = schema_name or schema_for_topic(topic)
        self.subject = subject_for(topic)
        self.auto_register = auto_register
        self._client = client
        self._pickle_client = isinstance(client, LocalRegistry)
        self._parsed = parsed_schema(self.schema_name)
        self._canonical = to_parsing_canonical_form(load_schema(self.schema_name))
        self._header: bytes | None = None
        self._writer_id: int | None = None
        self._readers: dict[int, _Reader] = {}
        self._unknown: dict[int, float] = {}
        self._lock = threading.Lock()

    # -- pickling: drop the client and caches, keep an in-process registry if one was given
    def __getstate__(self) -> dict:
        return {
            "topic": self.topic,
            "registry_url": self.registry_url,
            "schema_name": self.schema_name,
            "auto_register": self.auto_register,
            "client": self._client if self._pickle_client else None,
        }

    def __setstate__(self, state: dict) -> None:
        self.__init__(
            state["topic"],
            state["registry_url"],
            schema_name=state["schema_name"],
            client=state["client"],
            auto_register=state["auto_register"],
        )

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = registry_client(self.registry_url)
        return self._client

    @property
    def writer_id(self) -> int:
        """Registry id of the project's schema for this topic (registered or looked up once)."""
        if self._writer_id is None:
            schema = Schema(schema_str(self.schema_name), "AVRO")
            with self._lock:
                if self._writer_id is None:
                    sid = self._register_or_look_up(schema)
                    self._header = b"\x00" + int(sid).to_bytes(4, "big")
                    self._readers.setdefault(int(sid), _Reader(self._parsed, None))
                    self._writer_id = int(sid)
        return self._writer_id

    def _register_or_look_up(self, schema: Any) -> int:
        """Register (idempotent for the same schema), or only look up: when ``auto_register`` is off, and
        when the registry refuses this process a write (401/403: it holds no registry token, e.g. a
        container that the set-up step registered the subjects for; rscf/registry_security.py)."""
        if self.auto_register:
            try:
                return self.client.register_schema(self.subject, schema)
            except SchemaRegistryError as exc:
                if exc.http_status_code not in (401, 403):
                    raise
                log.info("registry refused to register %s (%s): looking the schema up instead",
                         self.subject, exc.http_status_code)
        return self.client.lookup_schema(self.subject, schema).schema_id

    def encode(self, record: dict) -> bytes:
        """Confluent-framed Avro of ``record``; raises ValueError/TypeError if it breaks the schema."""
        header = self._header
        if header is None:
            self.writer_id
            header = self._header
        buf = io.BytesIO()
        buf.write(header)
        fastavro.schemaless_writer(buf, self._parsed, record)
        return buf.getvalue()

    def _reader_for(self, schema_id: int) -> _Reader:
        reader = self._readers.get(schema_id)
        if reader is not None:
            return reader
        failed_at = self._unknown.get(schema_id)
        if failed_at is not None and time.monotonic() - failed_at < self.UNKNOWN_ID_RETRY_S:
            raise DecodeError(UNKNOWN_SCHEMA_ID, f"schema id {schema_id} is not in the registry (cached)")
        try:
            registered = self.client.get_schema(schema_id)
        except Exception as exc:  # registry errors and transport errors alike end here
            err = _registry_failure(exc, f"schema id {schema_id}")
            if err.reason == UNKNOWN_SCHEMA_ID:
                self._unknown[schema_id] = time.monotonic()
            raise err from exc
        if getattr(registered, "schema_type", "AVRO") not in (None, "AVRO"):
            raise DecodeError(AVRO_DECODE_FAILED, f"schema id {schema_id} is {registered.schema_type}, not AVRO")
        try:
            writer_dict = json.loads(registered.schema_str)
            same = to_parsing_canonical_form(writer_dict) == self._canonical
            writer = self._parsed if same else fastavro.parse_schema(writer_dict)
        except Exception as exc:
            raise DecodeError(AVRO_DECODE_FAILED, f"schema id {schema_id} does not parse: {exc}") from exc
        reader = _Reader(writer, None if same else self._parsed)
        self._readers[schema_id] = reader
        return reader

    def decode(self, data: bytes) -> dict:
        """The record in ``data``, read as the project's current schema; raises DecodeError."""
        schema_id = schema_id_of(data)
        reader = self._reader_for(schema_id)
        buf = io.BytesIO(data)
        buf.seek(HEADER_LEN)
        try:
            record = fastavro.schemaless_reader(buf, reader.writer, reader.reader)
        except Exception as exc:
            raise DecodeError(
                AVRO_DECODE_FAILED, f"body does not match schema id {schema_id}: {type(exc).__name__}: {exc}"
            ) from exc
        if buf.tell() != len(data):
            raise DecodeError(
                AVRO_DECODE_FAILED,
                f"{len(data) - buf.tell()} trailing bytes after the record (schema id {schema_id})",
            )
        return record


_SERDES: dict[tuple[int, str, str], TopicSerde] = {}


def serde_for(topic: str, registry_url: str | None = None) -> TopicSerde:
    """The process-wide TopicSerde of a topic (keyed by pid so a forked worker builds its own)."""
    url = registry_url or SETTINGS.registry_url
    key = (os.getpid(), topic, url)
    serde = _SERDES.get(key)
    if serde is None:
        serde = _SERDES.setdefault(key, TopicSerde(topic, url))
    return serde
