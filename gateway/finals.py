"""Each tenant's final results, read from the job's read_committed finals topic (genai.content).

One reader thread per gateway decodes every final and files it under its own tenant
(`tenant_id` of the record); lookups and streams only ever see the caller's tenant's map,
so another tenant's request id is simply not there (404, the same answer as an unknown id:
existence is not leaked). At start the reader goes back `results_lookback_s` by
timestamp; each tenant keeps its newest `results_per_tenant` finals.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

from rscf.settings import SETTINGS

log = logging.getLogger(__name__)


class Subscriber:
    """A stream of one tenant's finals into an asyncio queue (fed from the reader thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int = 1000) -> None:
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)
        self.overflowed = False

    def offer(self, record: dict) -> None:
        def put() -> None:
            if self.overflowed:
                return
            try:
                self.queue.put_nowait(record)
            except asyncio.QueueFull:
                self.overflowed = True
                self.queue.put_nowait(None) if not self.queue.full() else None
        self.loop.call_soon_threadsafe(put)


class FinalsCache:
    """tenant -> request_id -> newest final; thread-safe; streams subscribe per tenant."""

    def __init__(self, per_tenant: int | None = None) -> None:
        self.per_tenant = per_tenant or SETTINGS.gateway.results_per_tenant
        self._by_tenant: dict[str, OrderedDict[str, dict]] = {}
        self._subs: dict[str, set[Subscriber]] = {}
        self._lock = threading.Lock()
        self.count = 0

    def add(self, record: dict) -> None:
        tenant, request_id = record.get("tenant_id"), record.get("request_id")
        if not isinstance(tenant, str) or not isinstance(request_id, str):
            return
        with self._lock:
            finals = self._by_tenant.setdefault(tenant, OrderedDict())
            finals.pop(request_id, None)
            finals[request_id] = record
            while len(finals) > self.per_tenant:
                finals.popitem(last=False)
            subs = list(self._subs.get(tenant, ()))
            self.count += 1
        for sub in subs:
            sub.offer(record)

    def get(self, tenant: str, request_id: str) -> dict | None:
        with self._lock:
            return self._by_tenant.get(tenant, {}).get(request_id)

    def recent(self, tenant: str, limit: int) -> list[dict]:
        with self._lock:
            finals = self._by_tenant.get(tenant)
            return list(finals.values())[-limit:] if finals else []

    def subscribe(self, tenant: str, sub: Subscriber) -> None:
        with self._lock:
            self._subs.setdefault(tenant, set()).add(sub)

    def unsubscribe(self, tenant: str, sub: Subscriber) -> None:
        with self._lock:
            self._subs.get(tenant, set()).discard(sub)


class FinalsReader(threading.Thread):
    """Reads the finals topic (read_committed) into a FinalsCache, from `lookback_s` ago on."""

    def __init__(self, cache: FinalsCache, topic: str, bootstrap: str, decode: Callable[[bytes], dict],
                 lookback_s: int | None = None) -> None:
        super().__init__(name="finals-reader", daemon=True)
        self.cache = cache
        self.topic = topic
        self.bootstrap = bootstrap
        self.decode = decode
        self.lookback_s = SETTINGS.gateway.results_lookback_s if lookback_s is None else lookback_s
        self.stopping = threading.Event()
        self.assigned = threading.Event()
        self.undecodable = 0

    def _assign(self, consumer: Any) -> None:
        from confluent_kafka import TopicPartition

        md = consumer.list_topics(self.topic, timeout=10)
        partitions = sorted(md.topics[self.topic].partitions) if self.topic in md.topics else []
        if not partitions:  # not created yet (the stack provisions topics after its services are up)
            raise LookupError(f"topic {self.topic} has no partitions yet")
        since_ms = int((time.time() - self.lookback_s) * 1000)
        wanted = [TopicPartition(self.topic, p, since_ms) for p in partitions]
        found = consumer.offsets_for_times(wanted, timeout=10) if wanted else []
        # -1: no record at or after that time: start at the end (OFFSET_END)
        consumer.assign([TopicPartition(self.topic, tp.partition, tp.offset if tp.offset >= 0 else -1)
                         for tp in found])
        self.assigned.set()

    def run(self) -> None:
        from confluent_kafka import Consumer

        from rscf.kafka_clients import GATEWAY, client_security

        consumer = Consumer({
            "bootstrap.servers": self.bootstrap,
            **client_security(GATEWAY),
            "group.id": "rscf-gateway-finals",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",  # only finals of committed transactions
            "auto.offset.reset": "earliest",
        })
        try:
            while not self.stopping.is_set() and not self.assigned.is_set():
                try:
                    self._assign(consumer)
                except Exception as exc:  # noqa: BLE001 - Kafka not there yet: try again
                    log.warning("finals reader: cannot assign %s yet: %s", self.topic, type(exc).__name__)
                    self.stopping.wait(2.0)
            while not self.stopping.is_set():
                for msg in consumer.consume(500, 0.2):
                    if msg.error():
                        continue
                    try:
                        self.cache.add(self.decode(msg.value()))
                    except Exception:  # noqa: BLE001 - undecodable final: counted, the job dead-letters its own
                        self.undecodable += 1
        finally:
            consumer.close()
