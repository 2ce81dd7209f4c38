"""Producing from asyncio: a confluent-kafka producer whose delivery reports resolve futures.

A 202 means the broker has the prompt (acks=all, idempotent): the handler awaits the delivery
report, served by one poll thread, so nothing accepted is lost. The poll thread hands the
event loop every report of one `poll()` in one wake-up, not one per record: at 1,000 records/s
a wake-up each (a self-pipe write, an epoll round) cost the gateway's loop measurably.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from rscf.kafka_clients import GATEWAY, producer_config


class DeliveryFailed(RuntimeError):
    pass


Settled = tuple[asyncio.Future, "Exception | None", Any]


class Sender:
    def __init__(self, bootstrap: str, **extra: Any) -> None:
        from confluent_kafka import Producer

        self.producer = Producer(producer_config(bootstrap, principal=GATEWAY, **extra))
        self._stop = threading.Event()
        self._reports: dict[asyncio.AbstractEventLoop, list[Settled]] = {}
        self._thread = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.1)  # runs the delivery callbacks below, which only collect
            if self._reports:
                reports, self._reports = self._reports, {}
                for loop, settled in reports.items():
                    try:
                        loop.call_soon_threadsafe(_settle_all, settled)
                    except RuntimeError:  # that loop is closed: nobody waits for these any more
                        pass

    async def send(self, topic: str, key: bytes, value: bytes) -> tuple[int, int]:
        """(partition, offset) once the broker has acknowledged the record."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def on_delivery(err: Any, msg: Any) -> None:  # on the poll thread
            report = (future, DeliveryFailed(str(err)), None) if err is not None else \
                (future, None, (msg.partition(), msg.offset()))
            self._reports.setdefault(loop, []).append(report)

        while True:
            try:
                self.producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                await asyncio.sleep(0.01)
        return await future

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(2)
        self.producer.flush(timeout_s)
        for loop, settled in self._reports.items():  # reports served by flush() on this thread
            try:
                loop.call_soon_threadsafe(_settle_all, settled)
            except RuntimeError:
                pass
        self._reports = {}


def _settle_all(settled: list[Settled]) -> None:
    for future, exc, result in settled:
        if future.done():
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
