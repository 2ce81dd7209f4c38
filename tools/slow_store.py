"""Object storage made slow on demand: the stack's S3 behind a Toxiproxy proxy (`rscf evaluate`'s slow-s3).

A slow dependency hurts differently from a dead one: nothing fails, every artifact write just waits.
Every deployment of the evaluation stores its image and speech artifacts in the same object store, so
the harness puts a TCP proxy in front of it for all three alike (RSCF_S3_ENDPOINT in the environment
their processes inherit) and adds a `latency` toxic, both directions, for the middle third of the run:
each S3 request then waits about 2 x `latency_ms` (a PUT is one request; the minio client keeps its
connection). Without the toxic the proxy passes bytes through (loopback, ~0.1 ms per request).
Toxiproxy (tools/install_toxiproxy.sh) is the fault proxy `rscf chaos` already uses.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from rscf.settings import SETTINGS
from tools.faults import Toxiproxy, install_toxiproxy

PROXY = "eval-s3"
TOXIC = "slow-s3"
ENV = "RSCF_S3_ENDPOINT"


class SlowObjectStore:
    """The stack's object store behind a proxy; `slow()` adds latency to every request, `fast()` removes it."""

    def __init__(self, latency_ms: int = 500, jitter_ms: int = 100) -> None:
        self.latency_ms, self.jitter_ms = latency_ms, jitter_ms
        self.upstream = SETTINGS.s3_endpoint  # read before the environment points at the proxy
        self.proxy = Toxiproxy(install_toxiproxy(), SETTINGS.paths.logs / "eval-toxiproxy.log")
        try:
            self.endpoint = f"{SETTINGS.host}:{self.proxy.proxy(PROXY, self.upstream)}"
        except Exception:
            self.proxy.stop()
            raise
        self.is_slow = False

    def slow(self) -> None:
        for stream in ("upstream", "downstream"):
            self.proxy.add_toxic(PROXY, f"{TOXIC}-{stream}", "latency",
                                 {"latency": self.latency_ms, "jitter": self.jitter_ms}, stream)
        self.is_slow = True

    def fast(self) -> None:
        for stream in ("upstream", "downstream"):
            self.proxy.remove_toxic(PROXY, f"{TOXIC}-{stream}")
        self.is_slow = False

    def stop(self) -> None:
        self.proxy.stop()


@contextmanager
def object_store_behind_proxy(latency_ms: int = 500, jitter_ms: int = 100) -> Iterator[SlowObjectStore]:
    """A SlowObjectStore whose endpoint every process started inside the block inherits (RSCF_S3_ENDPOINT);
    the environment and the proxy are put back as they were on the way out."""
    store = SlowObjectStore(latency_ms, jitter_ms)
    before = os.environ.get(ENV)
    os.environ[ENV] = store.endpoint
    try:
        yield store
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before
        store.stop()
