"""Producing from asyncio: a confluent-kafka producer whose delivery reports resolve futures.

A 202 means the broker has the prompt (acks=all, idempotent): the handler awaits the delivery
report, served by one poll thread, so nothing accepted is lost.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from rscf.kafka_clients import GATEWAY, producer_config


class DeliveryFailed(RuntimeError):
    pass


class Sender:
    def __init__(self, bootstrap: str, **extra: Any) -> None:
        from confluent_kafka import Producer

        self.producer = Producer(producer_config(bootstrap, principal=GATEWAY, **extra))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.1)

    async def send(self, topic: str, key: bytes, value: bytes) -> tuple[int, int]:
        """(partition, offset) once the broker has acknowledged the record."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                loop.call_soon_threadsafe(_settle, future, DeliveryFailed(str(err)), None)
            else:
                loop.call_soon_threadsafe(_settle, future, None, (msg.partition(), msg.offset()))

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


def _settle(future: asyncio.Future, exc: Exception | None, result: Any) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
