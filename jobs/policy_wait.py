"""The gate's start-up wait: a prompt does not overtake its tenant's policy.

A job that starts on a backlog reads the prompts and the control topic side by side, and the control
topic is a changelog read from its start. Without a wait, a prompt read before its tenant's policy
gets the default tier, features and quota. The gate holds a prompt whose tenant has no policy yet
until the control topic has been read up to where it ended when the gate opened (its partitions'
end offsets then), or at most `policy_wait_ms` (30 s) from the first prompt, when the ends are
unknown or the control source lags that much.

A fixed 3 s wait was not enough on a loaded 2-core CI machine: 28 of 30 backlog prompts overtook a
policy that stood behind 300 others (`test_pipeline_backlog.py`). Reading to the end waits exactly
as long as the control topic takes, and not at all when it is already read.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from jobs.config import JobConfig
from jobs.intake import POSITION
from rscf import kafka_clients

log = logging.getLogger(__name__)

POLL_MS = 100  # a held tenant looks again whether the wait is over this often


def control_ends(cfg: JobConfig, timeout_s: float = 10.0) -> dict[int, int] | None:
    """The control topic's end offset per partition now ({} when it does not exist), None when the broker
    cannot tell: then the wait lasts its whole cap."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    config = kafka_clients.client_config(kafka_clients.JOB, cfg.bootstrap, **{"group.id": f"{cfg.group_id}-policy-wait"})
    consumer = Consumer({**config, "enable.auto.commit": False})
    try:
        topic = consumer.list_topics(cfg.control, timeout=timeout_s).topics.get(cfg.control)
        if topic is None or topic.error is not None:
            return {}
        return {p: consumer.get_watermark_offsets(TopicPartition(cfg.control, p), timeout=timeout_s)[1]
                for p in topic.partitions}
    except KafkaException:
        log.warning("control topic ends unknown: prompts without a policy wait the whole policy wait", exc_info=True)
        return None
    finally:
        consumer.close()


class PolicyWait:
    """Whether the start-up wait is over: the control topic read to `ends`, or `wait_ms` past the first look."""

    def __init__(self, ends: dict[int, int] | None, wait_ms: int):
        self.ends = ends
        self.wait_ms = wait_ms
        self.positions: dict[int, int] = {}  # partition -> highest offset of the control topic applied
        self.until_ms: int | None = None
        self.over_at: int | None = 0 if wait_ms <= 0 else None

    def seen(self, partition: int, offset: int) -> None:
        if offset > self.positions.get(partition, -1):
            self.positions[partition] = offset

    def restore(self, entries: Iterable[tuple[str, Any]]) -> None:
        """Positions kept in broadcast state (checkpointed): a restored job does not wait for what it read."""
        for key, offset in entries:
            if key.startswith(POSITION):
                self.seen(int(key[len(POSITION):]), offset)

    def read_to_end(self) -> bool:
        return self.ends is not None and all(self.positions.get(p, -1) >= end - 1 for p, end in self.ends.items())

    def over(self, now_ms: int) -> bool:
        if self.over_at is not None:
            return True
        if self.until_ms is None:
            self.until_ms = now_ms + self.wait_ms
        if now_ms >= self.until_ms or self.read_to_end():
            self.over_at = now_ms
        return self.over_at is not None

    def next_look(self, now_ms: int) -> int:
        """When a held tenant should look again."""
        return min(self.until_ms if self.until_ms is not None else now_ms, now_ms + POLL_MS)
