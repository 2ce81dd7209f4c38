"""`rscf submit|produce|results`: prompts into the pipeline, decoded records out of any of its topics."""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from cli.commands.schemas import registry_args
from cli.main import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, json_parent
from rscf.kafka_clients import client_security, producer_config
from rscf.settings import SETTINGS


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"cannot serialise {type(value).__name__}")


def dumps(record: Any) -> str:
    return json.dumps(record, default=_json_default, ensure_ascii=False)


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def _kafka_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", default=SETTINGS.kafka_bootstrap, help="Kafka bootstrap servers")


def _kafka_reachable(bootstrap: str, timeout: float = 5.0) -> str | None:
    """None when the cluster answers, else why not."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": bootstrap, **client_security()}).list_topics(timeout=timeout)
    except KafkaException as exc:
        return f"Kafka at {bootstrap} is not reachable: {exc}"
    return None


def _producer(bootstrap: str) -> Any:
    """Idempotent producer: retries never duplicate or reorder a partition's records."""
    from confluent_kafka import Producer

    return Producer(producer_config(bootstrap))


def _serde_or_exit(topic: str, registry_url: str, schema_name: str | None = None) -> Any:
    """A TopicSerde whose writer schema id is known, or None after printing why the registry failed."""
    from schemas.serde import TopicSerde

    serde = TopicSerde(topic, registry_url, schema_name=schema_name)
    try:
        serde.writer_id
    except Exception as exc:
        _err(f"schema registry at {registry_url} refused or unreachable: {type(exc).__name__}: {exc}")
        return None
    return serde


# ---------------------------------------------------------------- submit / produce
def _produce_records(
    records: Any, topic: str, bootstrap: str, serde: Any, progress: Any = None
) -> tuple[int, list[str], list[tuple[str, int, int]]]:
    """Produce prompt records keyed by tenant_id, the job's key for them (a prompt under another key
    costs the job one more trip through Kafka); returns (delivered, errors, [(request_id, partition, offset)])."""
    producer = _producer(bootstrap)
    delivered: list[tuple[str, int, int]] = []
    errors: list[str] = []

    def delivery_report(request_id: str):
        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(f"{request_id}: {err}")
            else:
                delivered.append((request_id, msg.partition(), msg.offset()))
            if progress is not None:
                progress.update(1)
        return on_delivery

    for record in records:
        value = serde.encode(record)
        key = str(record.get("tenant_id") or record["request_id"]).encode()
        on_delivery = delivery_report(str(record["request_id"]))
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.2)
        producer.poll(0)
    remaining = producer.flush(60)
    if remaining:
        errors.append(f"{remaining} record(s) still undelivered after 60 s")
    return len(delivered), errors, delivered


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _prompt_serde_if_reachable(args: argparse.Namespace) -> Any:
    """The prompt serde when Kafka and the registry answer; None (reason printed) otherwise."""
    why = _kafka_reachable(args.bootstrap)
    if why:
        _err(why)
        return None
    return _serde_or_exit(args.topic, args.registry_url, "prompt_request")


def cmd_submit(args: argparse.Namespace) -> int:
    from schemas.prompt_input import InvalidPrompt, prompt_request

    obj: dict[str, Any] = {
        "tenant_id": args.tenant,
        "modality": args.modality,
        "prompt": args.prompt,
        "priority": args.priority,
        "params": {
            k: getattr(args, k)
            for k in ("max_tokens", "temperature", "top_p", "width", "height", "steps", "seed", "voice")
            if getattr(args, k) is not None
        },
    }
    if args.request_id:
        obj["request_id"] = args.request_id
    if args.template_id:
        obj["template_id"] = args.template_id
    try:
        obj["template_vars"] = _pairs(args.var, "--var")
        obj["metadata"] = _pairs(args.meta, "--meta")
        record = prompt_request(obj)
    except (InvalidPrompt, ValueError) as exc:
        _err(f"invalid request: {exc}")
        return EXIT_BAD_INPUT
    serde = _prompt_serde_if_reachable(args)
    if serde is None:
        return EXIT_UNAVAILABLE
    count, errors, where = _produce_records([record], args.topic, args.bootstrap, serde)
    if errors:
        _err("; ".join(errors))
        return EXIT_FAILED
    if args.json:
        _, partition, offset = where[0]
        print(json.dumps({"request_id": record["request_id"], "topic": args.topic, "partition": partition, "offset": offset}))
    else:
        print(record["request_id"])
    return EXIT_OK


def cmd_produce(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from schemas.prompt_input import LineError, parse_file

    path = Path(args.file)
    if not path.is_file():
        _err(f"no such file: {path}")
        return EXIT_BAD_INPUT
    serde = _prompt_serde_if_reachable(args)
    if serde is None:
        return EXIT_UNAVAILABLE
    with path.open(encoding="utf-8", newline="") as fh:
        total_lines = sum(1 for _ in fh)
    bad: list[LineError] = []
    progress = tqdm(total=total_lines, unit="rec", desc=f"produce {path.name}", disable=args.json or None, file=sys.stderr)

    def good_records(fh: Any) -> Any:
        for _line, item in parse_file(str(path), fh):
            if isinstance(item, LineError):
                bad.append(item)
                progress.update(1)
                if not args.json:
                    tqdm.write(f"{path}:{item}", file=sys.stderr)
                continue
            yield item

    with path.open(encoding="utf-8", newline="") as fh:
        count, errors, _ = _produce_records(good_records(fh), args.topic, args.bootstrap, serde, progress)
    progress.close()
    summary = {
        "file": str(path),
        "topic": args.topic,
        "produced": count,
        "bad_lines": [{"line": e.line, "reason": e.reason} for e in bad],
        "delivery_errors": errors,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"produced {count} record(s) to {args.topic}; {len(bad)} bad line(s); {len(errors)} delivery error(s)")
        for error in errors[:10]:
            _err(f"delivery error: {error}")
    if errors:
        return EXIT_FAILED
    return EXIT_BAD_INPUT if bad else EXIT_OK


# ---------------------------------------------------------------- results
def human_line(topic: str, record: dict[str, Any]) -> str:
    """One readable line per record; final content gets a dedicated layout."""
    if "status" in record and "latency" in record and "tenant_id" in record and "attempts" in record:
        model = f"{record.get('model_name')}@{record.get('model_version')}" if record.get("model_name") else "-"
        out = record.get("output_text")
        what = (out[:100] + ("..." if len(out) > 100 else "")).replace("\n", " ") if out else " ".join(record.get("artifact_uris") or [])
        reason = f" reason={record['reason']}" if record.get("reason") else ""
        return (
            f"{record['request_id']} {record['status']}{reason} tenant={record['tenant_id']} "
            f"model={model} pool={record.get('pool') or '-'} attempts={record['attempts']} "
            f"total_ms={record['latency']['total_ms']} | {what}"
        )
    if "worker_id" in record:  # InferenceResult
        out = record.get("output_text") or " ".join(record.get("artifact_uris") or []) or record.get("error") or ""
        return (
            f"{record['request_id']} #{record['attempt']} {record['status']} pool={record['pool']} "
            f"model={record['model_name']}@{record['model_version']} queue_ms={record['queue_ms']} "
            f"inference_ms={record['inference_ms']} batch={record['batch_size']} | {out[:100]}"
        )
    if "prompt" in record and "tenant_id" in record:  # PromptRequest / InferenceRequest
        where = f" pool={record['pool']} #{record['attempt']}" if "pool" in record else ""
        text = record["prompt"][:100].replace("\n", " ")
        return f"{record['request_id']} {record['modality']} {record['priority']} tenant={record['tenant_id']}{where} | {text}"
    if "original" in record and "stage" in record:
        return f"{record.get('request_id') or '-'} DEAD stage={record['stage']} reason={record['reason']} from {record['source_topic']}[{record['source_partition']}]@{record['source_offset']}: {record['error'][:120]}"
    return dumps({k: v for k, v in record.items()})


def cmd_results(args: argparse.Namespace) -> int:
    from confluent_kafka import Consumer, KafkaError

    from schemas.serde import DecodeError, TopicSerde

    why = _kafka_reachable(args.bootstrap)
    if why:
        _err(why)
        return EXIT_UNAVAILABLE
    try:
        serde = TopicSerde(args.topic, args.registry_url, schema_name=args.schema)
    except KeyError as exc:
        _err(str(exc.args[0]) if exc.args else str(exc))
        return EXIT_BAD_INPUT
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            **client_security(),
            "group.id": f"rscf-results-{uuid.uuid4().hex[:12]}",
            "auto.offset.reset": "latest" if args.from_end else "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            # The job's finals are committed with each checkpoint: never show an aborted transaction's
            # records (librdkafka's default too; said here because the promise depends on it).
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([args.topic])
    timeout = args.timeout if args.timeout is not None else (None if args.follow else 30.0)
    deadline = None if timeout is None else time.monotonic() + timeout
    shown, undecodable = 0, 0
    at_eof: set[int] = set()
    try:
        while deadline is None or time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_eof.add(msg.partition())
                    assigned = consumer.assignment()
                    if not args.follow and assigned and len(at_eof) >= len(assigned):
                        break
                    continue
                _err(f"consumer error: {msg.error()}")
                continue
            at_eof.discard(msg.partition())
            try:
                record = serde.decode(msg.value())
            except DecodeError as exc:
                undecodable += 1
                _err(f"{msg.topic()}[{msg.partition()}]@{msg.offset()}: {exc.reason}: {exc.detail}")
                continue
            if args.request_id and record.get("request_id") != args.request_id:
                continue
            if args.tenant and record.get("tenant_id") != args.tenant:
                continue
            print(dumps(record) if args.json else human_line(args.topic, record), flush=True)
            shown += 1
            if args.max and shown >= args.max:
                break
    finally:
        consumer.close()
    if not args.json:
        _err(f"{shown} record(s) shown, {undecodable} undecodable")
    return EXIT_OK if shown or not args.request_id else EXIT_FAILED


def register(sub: Any) -> None:
    jp = json_parent()

    p = sub.add_parser("submit", parents=[jp], help="send one prompt; prints its request_id")
    p.add_argument("prompt")
    p.add_argument("--tenant", required=True)
    p.add_argument("--modality", required=True, type=str.lower, choices=["text", "image", "audio"])
    p.add_argument("--priority", default="normal", type=str.lower, choices=["low", "normal", "high"])
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--voice")
    p.add_argument("--template-id")
    p.add_argument("--var", action="append", default=[], metavar="K=V", help="template variable (repeatable)")
    p.add_argument("--meta", action="append", default=[], metavar="K=V", help="metadata entry (repeatable)")
    p.add_argument("--request-id", help="default: a new uuid4")
    p.add_argument("--topic", default=SETTINGS.topics.prompts)
    _kafka_args(p)
    registry_args(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("produce", parents=[jp], help="produce prompts from a .jsonl or .csv file")
    p.add_argument("file")
    p.add_argument("--topic", default=SETTINGS.topics.prompts)
    _kafka_args(p)
    registry_args(p)
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("results", parents=[jp], help="read and decode a topic (final content by default)")
    p.add_argument("--topic", default=SETTINGS.topics.content)
    p.add_argument("--schema", help="schema name when the topic is not one of RSCF's (e.g. a test topic)")
    p.add_argument("--follow", action="store_true", help="keep waiting for new records")
    p.add_argument("--from-end", action="store_true", help="only records produced after start")
    p.add_argument("--request-id")
    p.add_argument("--tenant", help="only this tenant's records (request ids are unique per tenant only)")
    p.add_argument("--max", type=int, default=0, help="stop after N records (0: no limit)")
    p.add_argument("--timeout", type=float, help="stop after S seconds (default 30 without --follow)")
    _kafka_args(p)
    registry_args(p)
    p.set_defaults(func=cmd_results)
