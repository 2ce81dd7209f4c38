"""The read-back of exactly-once delivery against the real broker: what `read_written` counts."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Producer

from jobs.replay_filter import IDENTITY_HEADER, fingerprint, read_written
from rscf import kafka_clients
from rscf.settings import SETTINGS

pytestmark = pytest.mark.integration


@pytest.fixture()
def topics(stack):
    names = [f"{SETTINGS.topics.content}.readback-{uuid.uuid4().hex[:8]}", f"{SETTINGS.topics.audit}.readback-{uuid.uuid4().hex[:8]}"]
    kafka_clients.create_topics(names, 2)
    yield names
    kafka_clients.delete_topics(names)


def test_counts_identities_written_since_the_window_start_in_every_partition(topics):
    content, audit = topics
    p = Producer(kafka_clients.producer_config())
    now = int(time.time() * 1000)
    old = now - 600_000  # before the window: not counted
    p.produce(content, b"v", key=b"t\x1fold", headers=[(IDENTITY_HEADER, b"content/0@0:1")], timestamp=old)
    for i in range(40):  # both partitions, by key
        p.produce(content, b"v", key=f"t\x1fr{i}".encode(), headers=[(IDENTITY_HEADER, b"content/0@0:%d" % i)])
    p.produce(content, b"v", key=b"t\x1fr0", headers=[(IDENTITY_HEADER, b"content/0@0:0")])  # a copy: counted twice
    p.produce(content, b"v", key=b"t\x1fnone")  # no identity: not counted
    p.produce(audit, b"v", key=b"t\x1fr1", headers=[(IDENTITY_HEADER, b"audit/0@0:1")])
    p.flush(10)
    config = kafka_clients.client_config(kafka_clients.JOB, **{"group.id": f"rscf-test-read-back-{uuid.uuid4().hex[:6]}"})
    written = read_written(config, [content, audit, f"{content}.absent"], now - 300_000, timeout_s=30)
    assert written[fingerprint(content, b"t\x1fr0", b"content/0@0:0")] == 2
    assert all(written[fingerprint(content, f"t\x1fr{i}".encode(), b"content/0@0:%d" % i)] == 1 for i in range(1, 40))
    assert written[fingerprint(audit, b"t\x1fr1", b"audit/0@0:1")] == 1
    assert fingerprint(content, b"t\x1fold", b"content/0@0:1") not in written
    assert sum(written.values()) == 42
    assert read_written(config, [content], now + 60_000, timeout_s=30) == {}  # nothing since then
