"""Contracts against the real registry and Kafka: registration, compatibility, interop with plain clients."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from rscf.kafka_clients import client_security

pytestmark = pytest.mark.integration

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "prompt_request.avsc"
RSCF = [sys.executable, "-m", "cli.main"]


def _topic(kind: str) -> str:
    return f"test.contracts.{kind}.{uuid.uuid4().hex[:8]}"


def _create(stack, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap, **client_security()})
    for future in admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]).values():
        future.result(15)


def _consume(stack, topic: str, count: int, timeout: float = 30.0) -> list:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, **client_security(), "group.id": f"g-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got, deadline = [], time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            got.append(msg)
    consumer.close()
    return got


def _registry_client(stack):
    """A plain registry client with a read timeout, so a request the registry never answers is retried.

    Its default has no timeout: on one CI run a single request sat unanswered for the whole 900 s test
    budget while later tests reached the registry fine. The client retries timeouts (max.retries).
    """
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from rscf.registry_security import client_auth

    # an outside client that registers (an older schema below) holds a registry token, as
    # `rscf credentials registry` issues one; reads alone need none (tests/integration/test_registry_auth.py)
    return SchemaRegistryClient({"url": stack.registry_url, "timeout": 20, **client_auth("outside-producer")})


def _record(request_id: str = "r-1") -> dict:
    """A PromptRequest written by hand, as an outside producer would."""
    return {
        "request_id": request_id, "tenant_id": "acme", "modality": "TEXT", "prompt": "say hi",
        "params": {"max_tokens": 8, "temperature": None, "top_p": None, "width": None, "height": None,
                   "steps": None, "seed": None, "voice": None},
        "priority": "NORMAL", "template_id": None, "template_vars": {}, "metadata": {"from": "plain"},
        "created_at": datetime(2026, 3, 4, 5, 6, 7, 89000, tzinfo=timezone.utc), "trace": None,
    }


def test_register_all_is_idempotent_and_backward(stack):

    from schemas.registry import register_all, subjects

    first = register_all(stack.registry_url)
    assert set(first) == set(subjects())
    assert "genai.inference.requests.text-small-value" in first
    assert register_all(stack.registry_url) == first
    client = _registry_client(stack)
    for subject in ("genai.prompts-value", "genai.dlq-value", "genai.inference.requests.echo-value"):
        assert client.get_compatibility(subject) == "BACKWARD"


def test_incompatible_change_is_refused_with_the_registry_reason(stack, tmp_path):
    from schemas.registry import check, register_all

    topic = _topic("compat")
    subject = f"{topic}-value"
    register_all(stack.registry_url, topics={topic: "prompt_request"})

    schema = json.loads(SCHEMA_FILE.read_text())
    schema["fields"].append({"name": "region_code", "type": "string", "doc": "no default: breaks BACKWARD"})
    bad = tmp_path / "prompt_request.avsc"
    bad.write_text(json.dumps(schema))
    ok, messages = check(bad, stack.registry_url, [subject])
    assert not ok
    assert "INCOMPATIBLE" in messages[0] and "region_code" in messages[0]

    schema["fields"][-1] = {"name": "region_code", "type": ["null", "string"], "default": None, "doc": "optional"}
    bad.write_text(json.dumps(schema))
    assert check(bad, stack.registry_url, [subject])[0]

    schema["fields"][-1] = {"name": "region_code", "type": "string", "doc": "no default"}
    bad.write_text(json.dumps(schema))
    cli = subprocess.run(RSCF + ["schemas", "check", str(bad), "--subject", subject,
                                 "--registry-url", stack.registry_url],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1, cli.stderr
    assert "region_code" in cli.stdout


def test_plain_confluent_producer_is_decoded_by_topic_serde(stack):
    """An outside producer (SerializingProducer + AvroSerializer, default config) on an older schema."""
    from confluent_kafka import SerializingProducer
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import StringSerializer

    from schemas.serde import TopicSerde

    topic = _topic("plain-in")
    _create(stack, topic)
    older = json.loads(SCHEMA_FILE.read_text())
    older["fields"] = [f for f in older["fields"] if f["name"] not in ("metadata", "trace")]
    client = _registry_client(stack)
    producer = SerializingProducer({
        "bootstrap.servers": stack.kafka_bootstrap, **client_security(),
        "key.serializer": StringSerializer("utf_8"),
        "value.serializer": AvroSerializer(client, json.dumps(older)),
    })
    sent = {k: v for k, v in _record("plain-1").items() if k not in ("metadata", "trace")}
    producer.produce(topic, key="plain-1", value=sent)
    assert producer.flush(15) == 0

    [msg] = _consume(stack, topic, 1)
    decoded = TopicSerde(topic, stack.registry_url, schema_name="prompt_request").decode(msg.value())
    assert decoded == dict(sent, metadata={}, trace=None)


def test_topic_serde_output_is_read_by_plain_avro_deserializer(stack):
    from confluent_kafka import Producer
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from schemas.serde import TopicSerde

    topic = _topic("plain-out")
    _create(stack, topic)
    value = TopicSerde(topic, stack.registry_url, schema_name="prompt_request").encode(_record("out-1"))
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, **client_security()})
    producer.produce(topic, key=b"out-1", value=value)
    assert producer.flush(15) == 0
    [msg] = _consume(stack, topic, 1)
    deserializer = AvroDeserializer(_registry_client(stack))
    assert deserializer(msg.value(), SerializationContext(topic, MessageField.VALUE)) == _record("out-1")


def test_kcat_interop(stack, tmp_path):
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    if kcat is None:
        pytest.skip("kcat is not installed (apt-get install -y kcat)")
    import re

    found = re.search(r"librdkafka (\d+)\.(\d+)\.(\d+)", subprocess.run([kcat, "-V"], capture_output=True, text=True).stdout)
    if client_security() and found and tuple(map(int, found.groups())) < (2, 6, 1):
        # librdkafka before 2.6.1 sends a SCRAM nonce Kafka 4 refuses (confluentinc/librdkafka#4895)
        pytest.skip(f"kcat's librdkafka {'.'.join(found.groups())} cannot do SCRAM with Kafka 4 (needs >= 2.6.1)")
    from schemas.serde import TopicSerde

    topic = _topic("kcat")
    _create(stack, topic)
    serde = TopicSerde(topic, stack.registry_url, schema_name="prompt_request")
    framed = serde.encode(_record("kcat-1"))
    payload = tmp_path / "value.bin"
    payload.write_bytes(framed)
    # kcat reads the stack's credentials (if any) from a config file (librdkafka keys), not argv
    creds = tmp_path / "kcat.conf"
    creds.write_text("".join(f"{k}={v}\n" for k, v in client_security().items()))
    creds.chmod(0o600)
    # kcat produces the framed bytes untouched (one message per file) ...
    subprocess.run([kcat, "-F", str(creds), "-b", stack.kafka_bootstrap, "-P", "-t", topic, "-k", "kcat-1", str(payload)],
                   check=True, timeout=60)
    [msg] = _consume(stack, topic, 1)
    assert msg.value() == framed and serde.decode(msg.value()) == _record("kcat-1")
    # ... and consumes them byte for byte
    out = subprocess.run([kcat, "-F", str(creds), "-b", stack.kafka_bootstrap, "-C", "-t", topic, "-o", "beginning",
                          "-c", "1", "-e", "-f", "%s"], capture_output=True, check=True, timeout=60)
    assert serde.decode(out.stdout) == _record("kcat-1")
    features = subprocess.run([kcat, "-V"], capture_output=True, text=True).stdout
    if "avro" in features.lower():
        shown = subprocess.run([kcat, "-F", str(creds), "-b", stack.kafka_bootstrap, "-C", "-t", topic, "-o",
                                "beginning", "-c", "1", "-e", "-s", "value=avro", "-r", stack.registry_url], capture_output=True, text=True,
                               timeout=60)
        assert '"kcat-1"' in shown.stdout


def test_rscf_produce_keeps_good_lines_and_exits_2(stack, tmp_path):
    from schemas.serde import TopicSerde

    topic = _topic("produce")
    _create(stack, topic)
    lines = [
        {"request_id": "p-1", "tenant_id": "acme", "prompt": "one", "modality": "text"},
        {"request_id": "p-2", "tenant_id": "acme", "prompt": "two", "modality": "IMAGE", "width": 32, "height": 32},
        "this is not json",
        {"request_id": "p-4", "tenant_id": "acme", "prompt": "four", "modality": "audio", "voice": "joe"},
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    run = subprocess.run(RSCF + ["produce", str(path), "--topic", topic, "--json"],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 2, run.stderr
    summary = json.loads(run.stdout)
    assert summary["produced"] == 3
    assert summary["bad_lines"][0]["line"] == 3 and "invalid JSON" in summary["bad_lines"][0]["reason"]

    msgs = _consume(stack, topic, 3)
    serde = TopicSerde(topic, stack.registry_url, schema_name="prompt_request")
    records = [serde.decode(m.value()) for m in msgs]
    assert [r["request_id"] for r in records] == ["p-1", "p-2", "p-4"]
    assert [m.key() for m in msgs] == [b"acme", b"acme", b"acme"]  # the job keys prompts by tenant
    assert records[1]["params"]["width"] == 32 and records[2]["modality"] == "AUDIO"


def test_rscf_submit_then_results(stack):
    topic = _topic("submit")
    _create(stack, topic)
    sub = subprocess.run(RSCF + ["submit", "--tenant", "acme", "--modality", "image", "--width", "64",
                                 "--height", "64", "--steps", "10", "--seed", "3", "--topic", topic, "a red circle"],
                         capture_output=True, text=True, timeout=120)
    assert sub.returncode == 0, sub.stderr
    request_id = sub.stdout.strip()
    uuid.UUID(request_id)
    res = subprocess.run(RSCF + ["results", "--topic", topic, "--schema", "prompt_request", "--request-id",
                                 request_id, "--max", "1", "--timeout", "30", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    record = json.loads(res.stdout.splitlines()[0])
    assert record["request_id"] == request_id and record["modality"] == "IMAGE"
    assert record["params"]["steps"] == 10 and record["params"]["seed"] == 3
