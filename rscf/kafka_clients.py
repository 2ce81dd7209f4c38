"""Kafka client configuration and topic creation, named once for every producer and admin of RSCF."""

from __future__ import annotations

from typing import Any, Iterable

from rscf import kafka_security
from rscf.kafka_security import (  # noqa: F401 - re-exported: call sites import from here
    ADMIN, CONTROLLER, GATEWAY, JOB, credentials_env, tenant_principal, worker_principal,
)
from rscf.settings import SETTINGS


class TopicCreationError(RuntimeError):
    """A topic could not be created (other than because it already exists)."""


def client_security(principal: str = ADMIN, data: Any = None, tls: bool | None = None) -> dict[str, Any]:
    """The librdkafka keys that authenticate as ``principal`` ({} on a broker without authentication).
    Every confluent-kafka client of RSCF adds these; the Flink job's DDL: `flink_security`. ``data``:
    the data dir of another stack (a test's private one); ``tls``: for the TLS listener (default
    ``RSCF_KAFKA_TLS``, which also moves ``SETTINGS.kafka_bootstrap`` there)."""
    return kafka_security.librdkafka_security(principal, data, tls)


def flink_security(principal: str = kafka_security.JOB) -> dict[str, str]:
    """The Flink SQL Kafka connector's ``properties.*`` options for ``principal``."""
    return kafka_security.flink_security(principal)


def client_config(principal: str = ADMIN, bootstrap: str | None = None, **extra: Any) -> dict[str, Any]:
    """bootstrap.servers + credentials + ``extra``: a consumer's or an admin client's config."""
    return {"bootstrap.servers": bootstrap or SETTINGS.kafka_bootstrap, **client_security(principal), **extra}


def admin_client(bootstrap: str | None = None, principal: str = ADMIN, **extra: Any) -> Any:
    return admin_from_config(client_config(principal, bootstrap, **extra))


def admin_from_config(conf: dict[str, Any]) -> Any:
    """An AdminClient that remembers its config: `committed_offsets` opens its group readers with it."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(conf)
    admin.rscf_conf, admin.rscf_offset_readers = dict(conf), {}
    return admin


def end_offsets(admin: Any, tps: Iterable[Any], timeout_s: float, earliest: bool = False,
                skip_missing: bool = False, committed_only: bool = False) -> dict[tuple[str, int], int]:
    """(topic, partition) -> latest (or earliest) offset, in one ListOffsets round trip per broker.
    skip_missing: leave out a partition whose topic is gone (deleted since it was listed) or that has no leader
    right now (a topic just created or being deleted: NOT_LEADER_FOR_PARTITION seen in CI) instead of raising.
    committed_only: the last stable offset, what a read_committed reader can reach (not an open transaction's)."""
    from confluent_kafka import IsolationLevel, KafkaError, KafkaException
    from confluent_kafka.admin import OffsetSpec

    spec = OffsetSpec.earliest() if earliest else OffsetSpec.latest()
    tps = list(tps)
    if not tps:
        return {}
    out: dict[tuple[str, int], int] = {}
    level = IsolationLevel.READ_COMMITTED if committed_only else IsolationLevel.READ_UNCOMMITTED
    futures = admin.list_offsets({tp: spec for tp in tps}, isolation_level=level, request_timeout=timeout_s)
    for tp, f in futures.items():
        try:
            out[(tp.topic, tp.partition)] = f.result(timeout_s).offset
        except KafkaException as exc:
            # gone: UNKNOWN_TOPIC_OR_PART, or _NOENT (no leader at all) when it was the only topic asked for;
            # leaderless for now: NOT_LEADER_FOR_PARTITION, LEADER_NOT_AVAILABLE
            if not (skip_missing and exc.args and exc.args[0].code() in (
                    KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._NOENT, KafkaError.NOT_LEADER_FOR_PARTITION,
                    KafkaError.LEADER_NOT_AVAILABLE)):
                raise
    return out


def committed_offsets(admin: Any, group: str, tps: Iterable[Any], timeout_s: float) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the group's committed offset, for the partitions it has committed.

    Read through a consumer handle of that group that never subscribes (so never joins it), kept on the
    admin (`admin_client`), not through `AdminClient.list_consumer_group_offsets`. Why: librdkafka 2.16
    segfaults in that admin call when an OffsetFetch answers NOT_COORDINATOR or COORDINATOR_NOT_AVAILABLE
    (`rd_kafka_handle_OffsetFetch` asks the client's consumer group, which an admin client lacks, to find the
    coordinator again: `rd_kafka_cgrp_op(NULL)`, "rdk:main segfault at 58" in dmesg), as it does while a
    broker shuts down: the pool controller and the backfill pacer polled lag across Kafka restarts (5 crashes
    seen on 2026-12-06; 3 of 3 when polling through a broker's shutdown, 0 of 3 this way:
    tests/integration/test_kafka_committed_offsets.py)."""
    from confluent_kafka import Consumer

    readers = getattr(admin, "rscf_offset_readers", None)
    if readers is None:
        raise TypeError("committed_offsets needs an admin from rscf.kafka_clients.admin_client or admin_from_config")
    if group not in readers:
        readers[group] = Consumer({**admin.rscf_conf, "group.id": group, "enable.auto.commit": False})
    out: dict[tuple[str, int], int] = {}
    for tp in readers[group].committed(list(tps), timeout=timeout_s):
        if tp.error is None and tp.offset >= 0:
            out[(tp.topic, tp.partition)] = tp.offset
    return out


def group_lag(admin: Any, group: str, tps: list[Any], timeout_s: float,
              committed_only: bool = False) -> tuple[int, int]:
    """(lag, sum of latest offsets) of a group on partitions: latest - committed, an uncommitted partition
    counting from its earliest offset (what the group would read); committed_only: up to the last stable offset."""
    latest = end_offsets(admin, tps, timeout_s, committed_only=committed_only)
    earliest = end_offsets(admin, tps, timeout_s, earliest=True)
    committed = committed_offsets(admin, group, tps, timeout_s)
    return sum(max(0, latest[k] - committed.get(k, earliest[k])) for k in latest), sum(latest.values())


def abort_transactions(transactional_ids: Iterable[str], bootstrap: str | None = None, principal: str = ADMIN,
                       timeout_s: float = 30.0) -> int:
    """Abort whatever transaction each id has open: a transactional producer with that id calls
    init_transactions(), so its coordinator aborts the open one and bumps the epoch, fencing the producer that
    left it (what Flink's Kafka sink does itself when the same job restarts). Never for the id of a producer
    that still runs: it would be fenced too. An id never used is created, empty (the broker forgets it after
    transactional.id.expiration.ms, 7 days). ~70 ms an id, ~0.5 s when one was open (measured here)."""
    from confluent_kafka import Producer

    n = 0
    for tid in transactional_ids:
        producer = Producer(client_config(principal, bootstrap, **{"transactional.id": tid}))
        producer.init_transactions(timeout_s)
        n += 1
    return n


def producer_config(bootstrap: str | None = None, linger_ms: float | None = None, principal: str = ADMIN,
                    **extra: Any) -> dict[str, Any]:
    """Idempotent, acks=all producer; the hot-path linger by default (the broker's CPU goes by
    requests, not records: 2 -> 5 ms measured in jobs/README.md)."""
    return {
        "bootstrap.servers": bootstrap or SETTINGS.kafka_bootstrap,
        **client_security(principal),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": SETTINGS.limits.producer_linger_ms if linger_ms is None else linger_ms,
        **extra,
    }


def create_topics(names: Iterable[str] | None = None, partitions: int | None = None,
                  bootstrap: str | None = None, single_partition: Iterable[str] = (SETTINGS.topics.control,),
                  principal: str = ADMIN) -> list[str]:
    """Create the topics that do not exist yet (all of the pipeline's by default); returns those created.

    ``single_partition`` topics get one partition (the control topic: broadcast in order)."""
    from confluent_kafka.admin import NewTopic

    admin = admin_client(bootstrap, principal)
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
    names = list(names)
    if not names:
        return
    admin = admin_client(bootstrap)
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

    admin = admin_client(bootstrap)
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
    from confluent_kafka.admin import NewPartitions

    names = list(names)
    if not names:
        return
    admin = admin_client(bootstrap)
    for fut in admin.create_partitions([NewPartitions(n, count) for n in names], operation_timeout=15).values():
        fut.result(timeout=30)


def ensure_principals(principals: Iterable[str], bootstrap: str | None = None, timeout_s: float = 30.0) -> int:
    """SCRAM credentials (from the secrets dir) and ALLOW ACLs for ``principals`` on a broker with
    authentication, as the admin; idempotent (``rscf up`` runs it each time). Returns the ACL count."""
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, ResourcePatternType,
                                       ResourceType, ScramCredentialInfo, ScramMechanism,
                                       UserScramCredentialUpsertion)

    principals = [kafka_security.check_principal(p) for p in principals if p != ADMIN]
    if kafka_security.auth_mode() == kafka_security.NONE or not principals:
        return 0
    admin = admin_client(bootstrap)
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)  # Kafka's minimum iteration count
    upserts = [UserScramCredentialUpsertion(p, info, kafka_security.password(p).encode()) for p in principals]
    for user, fut in admin.alter_user_scram_credentials(upserts, request_timeout=timeout_s).items():
        try:
            fut.result(timeout_s)
        except Exception as exc:  # noqa: BLE001 - KafkaException: say which principal
            raise TopicCreationError(f"kafka: could not set SCRAM credentials of {user}: {exc}") from exc
    bindings = [AclBinding(ResourceType[a.resource], a.name if a.resource != "CLUSTER" else "kafka-cluster",
                           ResourcePatternType[a.pattern], f"User:{a.principal}", "*",
                           AclOperation[a.operation], AclPermissionType.ALLOW)
                for p in principals for a in kafka_security.acls_for(p)]
    for binding, fut in admin.create_acls(bindings, request_timeout=timeout_s).items():
        try:
            fut.result(timeout_s)
        except Exception as exc:  # noqa: BLE001
            raise TopicCreationError(f"kafka: could not create ACL {binding}: {exc}") from exc
    _drop_stale_acls(admin, principals, set(bindings), timeout_s)
    return len(bindings)


def _drop_stale_acls(admin: Any, principals: list[str], wanted: set, timeout_s: float) -> None:
    """Delete the bindings of ``principals`` the table no longer has (a grant narrowed by an upgrade)."""
    from confluent_kafka.admin import (AclBindingFilter, AclOperation, AclPermissionType, ResourcePatternType,
                                       ResourceType)

    for p in principals:
        found = admin.describe_acls(AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, f"User:{p}",
                                                     None, AclOperation.ANY, AclPermissionType.ANY),
                                    request_timeout=timeout_s).result(timeout_s)
        stale = [b for b in found if b not in wanted]
        if stale:
            filters = [AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host,
                                        b.operation, b.permission_type) for b in stale]
            for fut in admin.delete_acls(filters, request_timeout=timeout_s).values():
                fut.result(timeout_s)
