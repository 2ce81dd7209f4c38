"""Micro-batching and offset bookkeeping for inference workers, free of Kafka and clocks.

A GPU (or a CPU matmul) serves a batch of N for little more than the cost of one,
so a worker waits a few milliseconds to fill a batch. The batcher decides *which*
requests go together (only those with equal ``batch_key``), *in what order*
(HIGH before NORMAL before LOW, FIFO within a priority) and *when* (a group is full,
or its oldest request has waited ``max_wait_ms``). Requests already past their
deadline never reach the model: nobody is waiting for their answer.

Because priorities reorder work, offsets complete out of order; ``OffsetTracker``
computes, per partition, the highest offset that is safe to commit (everything
below it has been answered and acknowledged by the broker).
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Hashable, Iterable

from rscf.clock import now_ms
from rscf.pools import POOL_BY_NAME
from rscf.settings import SETTINGS

PRIORITY_RANK: dict[str, int] = {"HIGH": 0, "NORMAL": 1, "LOW": 2}
DEADLINE_EXCEEDED = "deadline_exceeded"


def batch_wait_ms(pool: str, override: float | None = None) -> float:
    """How long a batch of ``pool`` may wait for company while the model is idle: ``override``, else the pool
    table's (echo: 0, a model that costs nothing gains nothing by waiting), else the workers' setting (20 ms)."""
    row = POOL_BY_NAME.get(pool)
    wait = override if override is not None else (row.max_wait_ms if row is not None else None)
    return SETTINGS.limits.worker_max_wait_ms if wait is None else wait


def priority_rank(value: Any) -> int:
    """Rank of an Avro Priority symbol; unknown or missing symbols count as NORMAL (the enum default)."""
    return PRIORITY_RANK.get(str(value).upper() if value is not None else "NORMAL", 1)


def to_epoch_ms(value: Any) -> int | None:
    """Avro timestamp-millis as fastavro hands it over (aware datetime) or as plain millis."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


@dataclass(order=False)
class Pending:
    """One request waiting in the batcher, with whatever the runtime needs to answer it (``meta``)."""

    request: dict
    key: Hashable
    rank: int
    seq: int
    enqueued_at: float  # monotonic seconds, from the batcher's clock
    deadline_ms: int | None  # epoch millis, from the request
    meta: Any = None

    def sort_key(self) -> tuple[int, int]:
        return (self.rank, self.seq)


@dataclass
class Batch:
    """Requests that may run together, best priority first."""

    key: Hashable
    items: list[Pending]
    formed_at: float

    def __len__(self) -> int:
        return len(self.items)

    @property
    def requests(self) -> list[dict]:
        return [p.request for p in self.items]


@dataclass
class _Group:
    heap: list[tuple[int, int, Pending]] = field(default_factory=list)
    oldest: float = float("inf")  # enqueue time of the oldest member (drives max_wait)

    def push(self, item: Pending) -> None:
        heapq.heappush(self.heap, (item.rank, item.seq, item))
        self.oldest = min(self.oldest, item.enqueued_at)

    def recompute_oldest(self) -> None:
        self.oldest = min((p.enqueued_at for _, _, p in self.heap), default=float("inf"))

    def head(self) -> Pending:
        return self.heap[0][2]


class MicroBatcher:
    """Group compatible requests into batches of at most ``max_batch``, flushing after ``max_wait_ms``.

    ``clock`` (monotonic seconds) and ``wall_ms`` (epoch millis, for deadlines) are injected so
    tests step time by hand.
    """

    def __init__(
        self,
        max_batch: int,
        max_wait_ms: float,
        batch_key: Callable[[dict], Hashable] = lambda _r: None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = now_ms,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self._batch_key = batch_key
        self._clock = clock
        self._wall_ms = wall_ms
        self._groups: dict[Hashable, _Group] = {}
        self._seq = itertools.count()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, request: dict, meta: Any = None, key: Hashable = None, *, use_key: bool = False) -> Pending:
        """Queue a request; its batch key comes from the handler unless given."""
        k = key if use_key else self._batch_key(request)
        item = Pending(
            request=request,
            key=k,
            rank=priority_rank(request.get("priority")),
            seq=next(self._seq),
            enqueued_at=self._clock(),
            deadline_ms=to_epoch_ms(request.get("deadline")),
            meta=meta,
        )
        self._groups.setdefault(k, _Group()).push(item)
        self._size += 1
        return item

    def pop_expired(self) -> list[Pending]:
        """Remove and return every queued request whose deadline has passed (answered without the model)."""
        now_ms = self._wall_ms()
        expired = self.remove_where(lambda p: p.deadline_ms is not None and p.deadline_ms <= now_ms)
        expired.sort(key=Pending.sort_key)
        return expired

    def _is_ready(self, group: _Group, now: float) -> bool:
        # 1 µs slack: float clocks must not keep a due batch waiting for one more poll
        return len(group.heap) >= self.max_batch or now - group.oldest + 1e-6 >= self.max_wait_s

    def time_until_ready(self) -> float | None:
        """Seconds until some group is due (0 when one is due now); None when nothing is queued."""
        if not self._groups:
            return None
        now = self._clock()
        waits = []
        for group in self._groups.values():
            if len(group.heap) >= self.max_batch:
                return 0.0
            waits.append(max(0.0, group.oldest + self.max_wait_s - now))
        return min(waits)

    def next_batch(self, force: bool = False) -> Batch | None:
        """The next due batch, or None. ``force`` flushes a partial batch now (shutdown, drain).

        Among due groups the one whose best request ranks highest goes first (ties: oldest
        request), so a HIGH request never waits behind a full LOW batch of another shape.
        """
        now = self._clock()
        due = [
            (g.head().sort_key(), key)
            for key, g in self._groups.items()
            if force or self._is_ready(g, now)
        ]
        if not due:
            return None
        _, key = min(due, key=lambda t: t[0])
        group = self._groups[key]
        items = [heapq.heappop(group.heap)[2] for _ in range(min(self.max_batch, len(group.heap)))]
        if group.heap:
            group.recompute_oldest()
        else:
            del self._groups[key]
        self._size -= len(items)
        return Batch(key=key, items=items, formed_at=now)

    def remove_where(self, predicate: Callable[[Pending], bool]) -> list[Pending]:
        """Drop queued requests matching ``predicate`` (e.g. of partitions lost in a rebalance)."""
        removed: list[Pending] = []
        for key in list(self._groups):
            group = self._groups[key]
            keep = [e for e in group.heap if not predicate(e[2])]
            if len(keep) != len(group.heap):
                removed.extend(e[2] for e in group.heap if predicate(e[2]))
                heapq.heapify(keep)
                group.heap = keep
                group.recompute_oldest()
                if not keep:
                    del self._groups[key]
        self._size -= len(removed)
        return removed


def bisect_failures(
    items: list[Any], run: Callable[[list[Any]], list[Any]]
) -> list[tuple[Any, Any, BaseException | None]]:
    """Run ``run`` on ``items``; when it raises, split the batch in halves until the culprit stands alone.

    Returns (item, output, error) per item in order: output for the items that ran, the
    exception for the ones that fail even alone. A batch with one poison request costs
    about 2*log2(N) extra runs, and every healthy request still gets its answer.
    """
    try:
        outputs = run(items)
        if len(outputs) != len(items):
            raise RuntimeError(f"handler returned {len(outputs)} outputs for {len(items)} requests")
        return [(item, out, None) for item, out in zip(items, outputs)]
    except Exception as exc:  # noqa: BLE001 - any model failure is isolated, never fatal
        if len(items) == 1:
            return [(items[0], None, exc)]
        mid = len(items) // 2
        return bisect_failures(items[:mid], run) + bisect_failures(items[mid:], run)


class OffsetTracker:
    """Per partition: offsets handed out, offsets answered; commit = lowest still-open offset.

    Kafka commits "everything below N is done", so with reordering we may only commit
    up to the first offset whose answer is not yet acknowledged.
    """

    def __init__(self) -> None:
        self._open: dict[tuple[str, int], set[int]] = {}
        self._high: dict[tuple[str, int], int] = {}  # highest offset seen + 1
        self._committed: dict[tuple[str, int], int] = {}

    def track(self, topic: str, partition: int, offset: int) -> None:
        tp = (topic, partition)
        self._open.setdefault(tp, set()).add(offset)
        self._high[tp] = max(self._high.get(tp, 0), offset + 1)

    def done(self, topic: str, partition: int, offset: int) -> None:
        self._open.get((topic, partition), set()).discard(offset)

    def open_count(self) -> int:
        return sum(len(s) for s in self._open.values())

    def committable(self) -> dict[tuple[str, int], int]:
        """Offsets to commit now (next offset to read), only where they moved since the last commit."""
        out: dict[tuple[str, int], int] = {}
        for tp, high in self._high.items():
            open_offsets = self._open.get(tp)
            target = min(open_offsets) if open_offsets else high
            if target > self._committed.get(tp, -1):
                out[tp] = target
        return out

    def mark_committed(self, offsets: dict[tuple[str, int], int]) -> None:
        for tp, off in offsets.items():
            self._committed[tp] = max(self._committed.get(tp, -1), off)

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Partitions revoked: their uncommitted work belongs to the next owner now."""
        for tp in partitions:
            self._open.pop(tp, None)
            self._high.pop(tp, None)
            self._committed.pop(tp, None)
