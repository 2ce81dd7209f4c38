"""`rscf evaluate`'s slow-s3: the stack's object store behind Toxiproxy, slow only while told, for every
client started inside the block (RSCF_S3_ENDPOINT), and the environment put back afterwards."""

from __future__ import annotations

import io
import os
import time
import uuid

import pytest

pytestmark = pytest.mark.integration


def test_object_storage_is_slow_only_while_the_toxic_is_on(stack):
    from rscf.s3 import ObjectStorePayloads, s3_client
    from rscf.settings import SETTINGS
    from tools.slow_store import ENV, object_store_behind_proxy

    before = os.environ.get(ENV)
    run = uuid.uuid4().hex[:8]
    with object_store_behind_proxy(latency_ms=300, jitter_ms=0) as store:
        assert os.environ[ENV] == store.endpoint != store.upstream
        objects = ObjectStorePayloads(SETTINGS.buckets.artifacts)  # no endpoint given: the environment's

        def timed_put(name: str) -> float:
            t = time.monotonic()
            objects.put(f"it/slow-store/{run}/{name}", name.encode() * 100, "text/plain")
            return time.monotonic() - t

        timed_put("warm")  # the bucket check and the connection
        fast = timed_put("fast")
        store.slow()
        slow = timed_put("slow")
        store.fast()
        again = timed_put("again")
    assert os.environ.get(ENV) == before
    assert slow >= 0.6, f"a PUT took {slow:.3f} s with 300 ms added each way"
    assert fast < 0.3 and again < 0.3, (fast, again)
    direct = s3_client(store.upstream)  # every PUT, slow or not, reached the real store
    for name in ("warm", "fast", "slow", "again"):
        body = direct.get_object(SETTINGS.buckets.artifacts, f"it/slow-store/{run}/{name}")
        assert io.BytesIO(body.read()).getvalue() == name.encode() * 100
        direct.remove_object(SETTINGS.buckets.artifacts, f"it/slow-store/{run}/{name}")
