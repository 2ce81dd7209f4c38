"""The results a replica already produced, so a re-delivered request is answered without the model.

Requests reach a worker at least once: after the job restores a checkpoint it dispatches again
what it had dispatched since (the request hop is not transactional, jobs/README.md "Delivery"),
and a worker that dies before committing hands its uncommitted requests to the next owner of
the partition. The job keeps one result per (request, attempt) and drops the rest by request id,
so a second model run for the same attempt is pure waste: a GPU-second for nothing. This cache
keeps the encoded result of the last ``capacity`` answers by (tenant, request id, attempt), and
the worker sends a hit again as it is (counted in ``rscf_worker_duplicate_requests``).

What it does not catch: a duplicate that arrives while the original is still queued or running
(it runs twice), and a duplicate that reaches another replica or a restarted one (the cache is
per process). After a TaskManager restore both are rare: the job is down for seconds, so the
originals were answered long before the re-dispatch arrives.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

DEFAULT_CAPACITY = 4096  # ~a few seconds of requests at the pipeline's ceiling; results are small (URIs, text)


def answer_key(request: dict[str, Any]) -> tuple[str, str, int]:
    """What makes two requests the same model call: the job's (tenant, request id) and the attempt."""
    return (str(request.get("tenant_id") or ""), str(request.get("request_id") or ""),
            int(request.get("attempt") or 0))


def cacheable(result: dict[str, Any]) -> bool:
    """An answer worth repeating: OK, or an error that would recur (a retryable one may not)."""
    return result.get("status") == "OK" or not result.get("retryable", True)


class AnsweredCache:
    """LRU of encoded results by `answer_key`; shared by the polling and the inference thread."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._values: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def get(self, request: dict[str, Any]) -> bytes | None:
        key = answer_key(request)
        with self._lock:
            value = self._values.get(key)
            if value is not None:
                self._values.move_to_end(key)
            return value

    def put(self, request: dict[str, Any], value: bytes) -> None:
        if self.capacity <= 0:
            return
        key = answer_key(request)
        with self._lock:
            self._values[key] = value
            self._values.move_to_end(key)
            while len(self._values) > self.capacity:
                self._values.popitem(last=False)
