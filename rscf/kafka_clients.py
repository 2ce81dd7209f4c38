"""Kafka client configuration and topic creation, named once for every producer and admin of RSCF."""

from __future__ import annotations

from typing import Any, Iterable

from rscf.settings import SETTINGS


class TopicCreationError(RuntimeError):
    """A topic could not be created (other than because it already exists)."""


def producer_config(bootstrap: str | None = None, linger_ms: float | None = None, **extra: Any) -> dict[str, Any]:
    """Idempotent, acks=all producer; the hot-path linger by default (the broker's CPU goes by
    requests, not records: 2 -> 5 ms measured in jobs/README.md)."""
    return {
        "bootstrap.servers": bootstrap or SETTINGS.kafka_bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": SETTINGS.limits.producer_linger_ms if linger_ms is None else linger_ms,
        **extra,
    }


def create_topics(names: Iterable[str] | None = None, partitions: int | None = None,
                  bootstrap: str | None = None, single_partition: Iterable[str] = (SETTINGS.topics.control,)) -> list[str]:
    """Create the topics that do not exist yet (all of the pipeline's by default); returns those created.

    ``single_partition`` topics get one partition (the control topic: broadcast in order)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap or SETTINGS.kafka_bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    single = set(single_partition)
    wanted = [n for n in (SETTINGS.topics.all() if names is None else names) if n not in existing]
    if not wanted:
        return []
    futures = admin.create_topics([
        NewTopic(n, num_partitions=1 if n in single else (partitions or SETTINGS.topics.partitions), replication_factor=1)
        for n in wanted
    ], operation_timeout=15)
    for name, fut in futures.items():
        try:
            fut.result(timeout=30)
        except Exception as exc:  # noqa: BLE001 - KafkaException carries the broker's error code
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise TopicCreationError(f"kafka: could not create topic {name}: {exc}") from exc
    return wanted


def delete_topics(names: Iterable[str], bootstrap: str | None = None) -> None:
    """Delete topics, ignoring those that do not exist (isolated test and benchmark runs clean up)."""
    from confluent_kafka.admin import AdminClient

    names = list(names)
    if not names:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap or SETTINGS.kafka_bootstrap})
    for fut in admin.delete_topics(names, operation_timeout=15).values():
        try:
            fut.result(timeout=30)
        except Exception:  # noqa: BLE001 - unknown topic is fine
            pass


def grow_plan(current: dict[str, int | None], count: int) -> tuple[list[str], list[str]]:
    """Which topics to grow to `count` partitions, and why the others cannot be (pure).
    Kafka adds partitions but never removes them; a missing topic is an error, not created here."""
    if count < 1:
        return [], [f"a topic needs at least 1 partition (not {count})"]
    grow, errors = [], []
    for name, n in current.items():
        if n is None:
            errors.append(f"{name}: no such topic (`rscf up` creates the pipeline's topics)")
        elif n > count:
            errors.append(f"{name}: has {n} partitions; Kafka cannot remove partitions (wanted {count})")
        elif n < count:
            grow.append(name)
    return grow, errors


def partition_counts(names: Iterable[str], bootstrap: str | None = None, timeout_s: float = 10.0) -> dict[str, int | None]:
    """Partitions per topic (None: the topic does not exist). Raises KafkaException if Kafka is away."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap or SETTINGS.kafka_bootstrap})
    md = admin.list_topics(timeout=timeout_s)
    if not md.brokers:
        raise KafkaException("no broker in the metadata")
    out: dict[str, int | None] = {}
    for n in names:
        t = md.topics.get(n)
        out[n] = len(t.partitions) if t is not None and t.error is None else None
    return out


def add_partitions(names: Iterable[str], count: int, bootstrap: str | None = None) -> None:
    """Grow each topic to `count` partitions (AdminClient.create_partitions; new keyed records hash
    anew, which the pipeline's correlation by request id does not mind)."""
    from confluent_kafka.admin import AdminClient, NewPartitions

    names = list(names)
    if not names:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap or SETTINGS.kafka_bootstrap})
    for fut in admin.create_partitions([NewPartitions(n, count) for n in names], operation_timeout=15).values():
        fut.result(timeout=30)
