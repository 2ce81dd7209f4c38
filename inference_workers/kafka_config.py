"""The worker's Kafka client configurations: the consumer of a lane and the shared results producer, and
the clients' error callback (`KafkaOutage`).

Split from `inference_workers.kafka_io` (which re-exports them) so that module stays about polling,
rebalances and the outbox.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError

from inference_workers.metrics import WorkerMetrics
from rscf.kafka_clients import ADMIN, client_security, producer_config
from rscf.settings import SETTINGS

log = logging.getLogger("inference_workers.kafka_io")  # the name its warnings always had
_BROKERS_DOWN = (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT)


def consumer_config(bootstrap: str, client_id: str, group_id: str, session_timeout_ms: int,
                    max_poll_interval_ms: int, extra: dict[str, Any] | None = None,
                    principal: str = ADMIN) -> dict[str, Any]:
    """Nothing is committed or stored automatically: the outbox commits what the broker acknowledged.
    ``max.poll.interval.ms`` only has to exceed the slowest expected batch (see worker.py). Cooperative-
    sticky: only moving partitions stop (eager stops every replica when a dead one expires and again
    when its replacement joins: worker-kill steady 6.8 s eager vs 4.5 s cooperative, 3 s session)."""
    return {
        "bootstrap.servers": bootstrap,
        **client_security(principal),
        "client.id": client_id,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(500, session_timeout_ms // 3),
        "max.poll.interval.ms": max_poll_interval_ms,
        "partition.assignment.strategy": "cooperative-sticky",
        **(extra or {}),
    }


def results_producer_config(bootstrap: str, client_id: str, message_timeout_ms: int,
                            principal: str = ADMIN) -> dict[str, Any]:
    """The shared idempotent, acks=all producer; a result unacknowledged after ``message_timeout_ms`` is re-sent.

    Its linger is the worker's (1 ms), not the hot path's 5: a micro-batch's results are produced together, so a
    longer linger only delays them (jobs/README.md, "The echo path on 2026-12-06")."""
    return producer_config(bootstrap, SETTINGS.limits.worker_linger_ms, principal=principal,
                           **{"client.id": client_id, "message.timeout.ms": message_timeout_ms})


class KafkaOutage:
    """Whether Kafka was last found down; each outage is counted once (rscf_worker_outages{service="kafka"})."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self.down = False

    def found_down(self) -> bool:
        """Note Kafka down; True the first time in an outage (the caller logs why, once)."""
        if self.down:
            return False
        self.down = True
        self.metrics.outages.labels(self.metrics.pool, "kafka").inc()
        return True

    def found_up(self) -> None:
        self.down = False

    def on_error(self, err: KafkaError) -> None:
        """librdkafka's ``error_cb``: it keeps retrying by itself; we count and say so."""
        if err.code() in _BROKERS_DOWN:
            if self.found_down():
                log.warning("kafka unreachable: %s (retrying)", err)
        else:
            log.warning("kafka error: %s", err)
