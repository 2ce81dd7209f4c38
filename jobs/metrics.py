"""The job's metrics: Flink counters of its Python functions (group `rscf`), batched where it pays."""

from __future__ import annotations

import time
from typing import Any

from pyflink.datastream.functions import RuntimeContext

from jobs.envelopes import SinkRecord
from rscf.clock import now_ms


class Counters:
    """Flink metric counters under group `rscf`, with label groups (shown as Prometheus labels).

    The success path's per-prompt counters (`BATCHED`, name and labels) add up in Python
    and reach the Java counters at most every `FLUSH_S`: each Java counter call is a pemja
    crossing, and per-record `inc()` was ~40 us per prompt at 1000/s (py-spy). They are
    only counted in keyed functions, which call `schedule_flush` after each input, so the
    tail of a burst is flushed by a processing-time timer `FLUSH_S` later (the function's
    `on_timer` calls `on_timer`). Everything else (dead letters, rejections, duplicates,
    retries) counts at once. (A gauge read by Flink's reporter thread could flush the tail
    too, but registering a new counter while that thread waits on the interpreter lock can
    deadlock.)
    """

    FLUSH_S = 0.5
    BATCHED = frozenset({("prompts_in",), ("results_in",), ("dispatched",), ("rag_enriched",), ("final_latency_ms",),
                         ("finals", ("status", "SUCCEEDED")), ("records_out", ("role", "request")),
                         ("records_out", ("role", "content")), ("records_out", ("role", "audit"))})

    def __init__(self, ctx: RuntimeContext):
        self._group = ctx.get_metrics_group().add_group("rscf")
        self._counters: dict[tuple, Any] = {}
        self._pending: dict[tuple, int] = {}
        self._flush_at = 0.0
        self._flush_timer: int | None = None

    def inc(self, name: str, n: int = 1, **labels: str) -> None:
        key = (name, *sorted(labels.items())) if labels else (name,)
        if key not in self.BATCHED:
            self._counter(key).inc(n)
            return
        self._pending[key] = self._pending.get(key, 0) + n
        now = time.monotonic()
        if now >= self._flush_at:
            self.flush(now)

    def schedule_flush(self, ctx) -> None:
        """Make sure a timer will flush what is pending if no further input does."""
        if self._pending and self._flush_timer is None:
            self._flush_timer = now_ms() + int(self.FLUSH_S * 1000)
            ctx.timer_service().register_processing_time_timer(self._flush_timer)

    @property
    def flush_timer(self) -> int | None:
        return self._flush_timer

    def on_timer(self, timestamp: int) -> None:
        if self._flush_timer is not None and timestamp >= self._flush_timer:
            self._flush_timer = None
        if self._pending:
            self.flush()

    def flush(self, now: float | None = None) -> None:
        self._flush_at = (now if now is not None else time.monotonic()) + self.FLUSH_S
        pending, self._pending = self._pending, {}
        for key, n in pending.items():
            self._counter(key).inc(n)

    def _counter(self, key: tuple):
        counter = self._counters.get(key)
        if counter is None:
            group = self._group
            for k, v in key[1:]:
                group = group.add_group(k, str(v))
            counter = self._counters[key] = group.counter(key[0])
        return counter

    def count_dead_letter(self, sink: SinkRecord) -> None:
        if sink.role == "dlq":
            self.inc("dead_letters", stage=sink.record["stage"], reason=sink.record["reason"])
