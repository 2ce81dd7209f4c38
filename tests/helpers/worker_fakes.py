"""Stand-ins for the worker's unit tests: a handler with scripted failures, request records,
in-process serdes, and Kafka clients that record what they were asked to do."""

from __future__ import annotations

import threading
import time
from typing import Any

from confluent_kafka import TopicPartition

from inference_workers.batching import Batch, Pending
from inference_workers.handlers.base import InferenceOutput, ModelHandler, RequestRejected
from rscf.settings import SETTINGS
from schemas.serde import LocalRegistry, TopicSerde


class ScriptedHandler(ModelHandler[None]):
    """Upper-cases prompts; "too long" is rejected, "poison" breaks tokenizing, "gpu-broken" the
    device, "soft-fail" fails alone without raising, "draw" returns a PNG artifact."""

    model_name = "unit"
    model_version = "7"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []  # the prompts of each run_inference call

    def load_model(self) -> None:
        return None

    def validate(self, request: dict) -> None:
        if request["prompt"] == "too long":
            raise RequestRejected("prompt_too_long")

    def run_inference(self, batch, model):
        self.calls.append([r["prompt"] for r in batch])
        if any(r["prompt"] == "poison" for r in batch):
            raise ValueError("cannot tokenize")
        if any(r["prompt"] == "gpu-broken" for r in batch):
            raise RuntimeError("CUDA error")
        return [self._output(r["prompt"]) for r in batch]

    @staticmethod
    def _output(prompt: str) -> InferenceOutput:
        if prompt == "soft-fail":
            return InferenceOutput(error="nsfw_output", retryable=False)
        if prompt == "draw":
            return InferenceOutput(artifact=b"png", content_type="image/png")
        return InferenceOutput(text=prompt.upper(), tokens_out=2)


def serdes() -> dict[str, TopicSerde]:
    """Request, result and dead-letter serdes on an in-process schema registry."""
    reg = LocalRegistry()
    return {
        "request_serde": TopicSerde(SETTINGS.topics.requests("echo"), client=reg),
        "result_serde": TopicSerde(SETTINGS.topics.results, client=reg),
        "dlq_serde": TopicSerde(SETTINGS.topics.dlq, client=reg),
    }


def make_request(rid: str, prompt: str, **kw) -> dict:
    now = int(time.time() * 1000)
    r = {
        "request_id": rid, "attempt": 1, "tenant_id": "t", "pool": "echo", "model_name": "unit",
        "model_version": "7", "modality": "TEXT", "prompt": prompt,
        "params": {k: None for k in ("max_tokens", "temperature", "top_p", "width", "height", "steps", "seed", "voice")},
        "priority": "NORMAL", "deadline": now + 60_000, "created_at": now - 5, "trace": None,
    }
    r.update(kw)
    return r


def batch_of(*reqs: dict) -> Batch:
    return Batch(key=None, items=[Pending(r, None, 1, i, 0.0, None, ("t", 0, i)) for i, r in enumerate(reqs)], formed_at=0.0)


class Msg:
    """The confluent_kafka.Message accessors the worker reads."""

    def __init__(self, value: bytes, key: bytes | None, offset: int = 0, error: Any = None,
                 topic: str = "genai.inference.requests.echo", partition: int = 0) -> None:
        self._v, self._k, self._o, self._err, self._t, self._p = value, key, offset, error, topic, partition

    def error(self):
        return self._err

    def value(self):
        return self._v

    def key(self):
        return self._k

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o


class FakeProducer:
    """Keeps produced records; ``poll`` acknowledges them, or fails the next ``fail_next`` deliveries."""

    def __init__(self) -> None:
        self.produced: list[tuple[str, bytes | None, bytes]] = []
        self._waiting: list[Any] = []
        self._lock = threading.Lock()  # the worker produces from both of its threads
        self.fail_next = 0

    def produce(self, topic, key=None, value=None, on_delivery=None) -> None:
        with self._lock:
            self.produced.append((topic, key, value))
            self._waiting.append(on_delivery)

    def poll(self, timeout: float = 0) -> int:
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for cb in waiting:
            if self.fail_next:
                self.fail_next -= 1
                cb("_MSG_TIMED_OUT", None)
            else:
                cb(None, None)
        return len(waiting)

    def flush(self, timeout: float = 0) -> int:
        self.poll(0)
        return 0


class FakeConsumer:
    """Hands out ``messages``; records commits, raising the queued ``errors`` first (one per commit
    call). Partition 0 of the subscribed topic is assigned on the first poll, as librdkafka does."""

    def __init__(self, messages: list[Msg] = (), errors: list[Exception] = ()) -> None:
        self.messages = list(messages)
        self.errors = list(errors)
        self.commits: list[tuple[list[tuple[str, int, int]], bool]] = []
        self._subscription: tuple[list[str], Any] | None = None
        self.closed = False

    def subscribe(self, topics: list[str], on_assign=None, on_revoke=None, on_lost=None) -> None:
        self._subscription = (topics, on_assign)

    def close(self) -> None:
        self.closed = True

    def commit(self, offsets, asynchronous: bool = True) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.commits.append(([(tp.topic, tp.partition, tp.offset) for tp in offsets], asynchronous))

    def poll(self, timeout: float = 0):
        if self._subscription is not None:
            (topic, *_), on_assign = self._subscription
            self._subscription = None
            on_assign(self, [TopicPartition(topic, 0)])
        if not self.messages:
            time.sleep(timeout)
            return None
        return self.messages.pop(0)

    def consume(self, num_messages: int = 1, timeout: float = 0) -> list[Msg]:
        taken, self.messages = self.messages[:num_messages], self.messages[num_messages:]
        return taken
